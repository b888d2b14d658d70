"""Versioned classifier models in PostgreSQL (`classifier_models`), so that every machine's
services run the same model and each version's frozen-set figures are kept.

`feedback train` (services/routing/classifier/training.py) stores every candidate it
decides on: its figures, the active model's figures it was compared with, the decision,
and, for a model it activates, the model itself. At most one version is active; services
load it at start (`Classifier.trained(..., registry=...)`), else train from
config/training as before.

A model is a pickle (joblib), and unpickling runs code: whoever could write the table
could run code in every service. So each model is signed, HMAC-SHA256 under
`FEEDBACK_MODEL_SIGNING_KEY` (a key of its own: a machine that trains models needs no key
that signs staff tokens or opens personal data), over the model's bytes and the
environment it was built for; a model whose signature does not verify is never unpickled.
The environment (`model.environment_digest`: this code, the libraries, the lexicon, the
rule book) must match the running one too: a model trained with other rules read other
rule tokens, and is left unused (the service trains from config/training, and logs why).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

import joblib
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict

from services.common.database import apply_schema
from services.routing.classifier.model import TextModel, environment_digest

if TYPE_CHECKING:
    from services.common.settings import Settings

log = logging.getLogger(__name__)

SCHEMA = [
    """
    CREATE TABLE IF NOT EXISTS classifier_models (
        version integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        created_at timestamptz NOT NULL DEFAULT now(),
        created_by text NOT NULL,
        environment text NOT NULL,
        training_digest text NOT NULL,
        training_items integer NOT NULL,
        corrections integer NOT NULL,
        figures jsonb NOT NULL,
        compared_with jsonb,
        decision text NOT NULL,
        active boolean NOT NULL DEFAULT false,
        activated_at timestamptz,
        model bytea,
        signature bytea,
        CHECK (NOT active OR (model IS NOT NULL AND signature IS NOT NULL))
    )
    """,
    # At most one active version: two `feedback train` runs activating at once collide here.
    "CREATE UNIQUE INDEX IF NOT EXISTS classifier_models_one_active "
    "ON classifier_models ((true)) WHERE active",
]

_PURPOSE = b"feedback classifier model v1\0"


class SigningKeyError(ValueError):
    """The signing key is not base64 of 32 bytes."""


def signing_key(encoded: str, variable: str = "FEEDBACK_MODEL_SIGNING_KEY") -> bytes:
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as error:
        raise SigningKeyError(f"{variable} must be base64") from error
    if len(raw) != 32:
        raise SigningKeyError(f"{variable} must decode to 32 bytes")
    return raw


class NewVersion(BaseModel):
    """What `feedback train` stores about a candidate."""

    model_config = ConfigDict(frozen=True)

    created_by: str
    training_digest: str
    training_items: int
    corrections: int
    figures: dict[str, Any]
    compared_with: dict[str, Any] | None
    decision: str


class ModelVersion(NewVersion):
    """One stored version, without the model's bytes."""

    version: int
    created_at: datetime
    environment: str
    active: bool
    activated_at: datetime | None
    has_model: bool


class ActiveChanged(Exception):
    """Another run activated a model after this one was compared with the active one."""


class StoredModel(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    version: int
    model: TextModel


def environment_of(fingerprint: bytes) -> str:
    return str(environment_digest(fingerprint).hexdigest())


class ModelRegistry:
    """The `classifier_models` table of one database, signing and verifying with one key."""

    def __init__(self, database_url: str, key: bytes) -> None:
        if len(key) != 32:
            raise SigningKeyError("the model signing key must be 32 bytes")
        self.database_url = database_url
        self._key = key

    @classmethod
    def of(cls, settings: Settings) -> ModelRegistry | None:
        """The services' registry; None without a signing key (no stored model is loaded)."""
        key = settings.model_signing_key
        if key is None:
            return None
        return cls(settings.database_url, signing_key(key.get_secret_value()))

    def create_schema(self) -> None:
        apply_schema(self.database_url, SCHEMA)

    def _signature(self, environment: str, blob: bytes) -> bytes:
        message = _PURPOSE + environment.encode() + b"\0" + hashlib.sha256(blob).digest()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    # -- reading ----------------------------------------------------------------------

    def versions(self, limit: int = 50) -> list[ModelVersion]:
        """The newest versions first; none when nothing was ever stored."""
        try:
            with (
                psycopg.connect(self.database_url, autocommit=True) as conn,
                conn.cursor(row_factory=dict_row) as cursor,
            ):
                cursor.execute(
                    "SELECT version, created_at, created_by, environment, training_digest, "
                    "training_items, corrections, figures, compared_with, decision, active, "
                    "activated_at, model IS NOT NULL AS has_model FROM classifier_models "
                    "ORDER BY version DESC LIMIT %s",
                    (limit,),
                )
                return [ModelVersion(**row) for row in cursor.fetchall()]
        except psycopg.errors.UndefinedTable:
            return []

    def active_version(self) -> int | None:
        try:
            with psycopg.connect(self.database_url, autocommit=True) as conn:
                row = conn.execute("SELECT version FROM classifier_models WHERE active").fetchone()
        except psycopg.errors.UndefinedTable:
            return None
        return None if row is None else int(row[0])

    def active(self, fingerprint: bytes) -> StoredModel | None:
        """The active model, when one is stored, its signature verifies and it was built for
        this environment (`fingerprint`: the rule book); else None, and the log says why."""
        return self.load(None, fingerprint)

    def load(self, version: int | None, fingerprint: bytes) -> StoredModel | None:
        """Version `version` (None: the active one), verified as `active` says."""
        try:
            with psycopg.connect(self.database_url, autocommit=True, connect_timeout=5) as conn:
                row = conn.execute(
                    "SELECT version, environment, model, signature FROM classifier_models "
                    "WHERE (%(version)s::integer IS NULL AND active) OR version = %(version)s",
                    {"version": version},
                ).fetchone()
        except psycopg.errors.UndefinedTable:
            return None
        except psycopg.OperationalError as error:
            log.warning("stored classifier models not read (%s)", error)
            return None
        if row is None:
            return None
        number, environment, blob, signature = row
        if blob is None or signature is None:
            log.warning("classifier model version %d has no stored model", number)
            return None
        blob = bytes(blob)
        # Verified before anything is unpickled: an unsigned or altered row is never loaded.
        if not hmac.compare_digest(bytes(signature), self._signature(environment, blob)):
            log.error(
                "classifier model version %d: signature does not verify (another key, or "
                "the row was altered); not loaded",
                number,
            )
            return None
        if environment != environment_of(fingerprint):
            log.warning(
                "classifier model version %d was built for other code, libraries, lexicon or "
                "rules; not used (run `feedback train` again)",
                number,
            )
            return None
        model = joblib.load(io.BytesIO(blob))
        if not isinstance(model, TextModel):
            log.error("classifier model version %d is not a model; not loaded", number)
            return None
        return StoredModel(version=number, model=model)

    # -- writing ----------------------------------------------------------------------

    def record(
        self,
        new: NewVersion,
        fingerprint: bytes,
        model: TextModel | None,
        replaces: int | None,
    ) -> int:
        """Store a version; with `model`, as the active one, in place of version `replaces`
        (None: no version was active). ActiveChanged, and nothing stored, when the active
        version is no longer `replaces`."""
        environment = environment_of(fingerprint)
        blob = signature = None
        if model is not None:
            rule_tokens, model.rule_tokens = model.rule_tokens, None  # the live rules: not stored
            try:
                buffer = io.BytesIO()
                joblib.dump(model, buffer, compress=("zlib", 3))
            finally:
                model.rule_tokens = rule_tokens
            blob = buffer.getvalue()
            signature = self._signature(environment, blob)
        values = {
            **new.model_dump(),
            "figures": Jsonb(new.figures),
            "compared_with": Jsonb(new.compared_with) if new.compared_with else None,
            "environment": environment,
            "model": blob,
            "signature": signature,
            "active": model is not None,
        }
        with psycopg.connect(self.database_url) as conn, conn.transaction():
            if model is not None:
                # The active row locked: a run that compared with another version stops here.
                row = conn.execute(
                    "SELECT version FROM classifier_models WHERE active FOR UPDATE"
                ).fetchone()
                current = None if row is None else int(row[0])
                if current != replaces:
                    raise ActiveChanged(
                        f"version {current} was activated meanwhile (this run compared with "
                        f"{'version ' + str(replaces) if replaces else 'the files'})"
                    )
                conn.execute("UPDATE classifier_models SET active = false WHERE active")
            stored = conn.execute(
                "INSERT INTO classifier_models (created_by, environment, training_digest, "
                "training_items, corrections, figures, compared_with, decision, active, "
                "activated_at, model, signature) VALUES (%(created_by)s, %(environment)s, "
                "%(training_digest)s, %(training_items)s, %(corrections)s, %(figures)s, "
                "%(compared_with)s, %(decision)s, %(active)s, "
                "CASE WHEN %(active)s THEN now() END, %(model)s, %(signature)s) "
                "RETURNING version",
                values,
            ).fetchone()
        assert stored is not None
        return int(stored[0])

    def activate(self, version: int, fingerprint: bytes) -> None:
        """Make a stored version the active one again (a roll-back), after verifying it
        loads here. ValueError when it does not."""
        if self.load(version, fingerprint) is None:
            raise ValueError(
                f"version {version} cannot be activated: no such model, no stored model, "
                "a signature that does not verify, or built for other code or rules"
            )
        with psycopg.connect(self.database_url) as conn, conn.transaction():
            conn.execute("SELECT version FROM classifier_models WHERE active FOR UPDATE")
            conn.execute("UPDATE classifier_models SET active = false WHERE active")
            conn.execute(
                "UPDATE classifier_models SET active = true, activated_at = now() "
                "WHERE version = %s",
                (version,),
            )
