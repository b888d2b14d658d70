"""Stored configuration: SLA policies, the business calendar (with its extra closed and
working days) and the classification rule book, versioned in PostgreSQL and changed only
through the admin endpoints (`/v1/admin/config/{kind}`, the `config.read`/`config.write`
actions: admins).

- Every change is a new row of `config_documents` (kind, version, body, changed_by,
  changed_at, reason); nothing is updated or deleted, so the table is the audit trail.
  A change names the version it was made on: a stale one is refused with 409 (two admins
  editing at once do not overwrite each other).
- Each body is validated by the same pydantic models the YAML files are loaded with
  (`Policies`, `CalendarFile` + `calendars_from`, `RuleBook`): a bad value is a 422 whose
  `loc` names the field (`["body", "body", "clocks", "first_response", 0, "target"]`).
- Version 0 is the file in `config/`: with nothing stored, the file rules, as before.

How a version takes effect: at start a process uses the latest stored version of each kind
(else the file), for everything it builds. While running, every process polls the table
(`max(version)` per kind, one small query every `POLL_S` seconds; chosen over a Kafka
message because it needs no topic, works for every process sharing the database, and a
process that was down simply finds the newest version on its next poll) and applies a new
version where that can be done in place:
- `sla_policies`: the sla service's deadlines (clocks started or recomputed afterwards);
- `calendar`: the sla service's deadlines likewise;
- `classification`: the router classifies with the new rule book once its model is trained
  again (in a worker thread; the old rules keep working meanwhile).
Everything else built from these at start takes a new version at the next start: the
projections' handling-time measures and the callback planner (calendar), the notification
escalation timer (SLA policies), the department list behind Kafka topics, and report labels
(classification). `EFFECTS` says so, and the admin page shows it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import psycopg
import yaml
from fastapi import APIRouter, HTTPException, Query
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.access.http import require
from services.access.roles import Actor
from services.common.boundary import Checked, shown_errors
from services.routing.classifier import RuleBook, load_rulebook
from services.routing.classifier.rules import DEFAULT_RULES
from services.sla.calendar import (
    DEFAULT_CALENDAR_FILE,
    CalendarConfigError,
    CalendarFile,
    Calendars,
    calendars_from,
    load_calendars,
)
from services.sla.policies import POLICY_FILE, Policies, load_policies

if TYPE_CHECKING:
    from services.routing.classifier.registry import ModelRegistry
    from services.routing.service import RoutingService
    from services.sla.service import SlaService

log = logging.getLogger(__name__)

POLL_S = 5.0
HISTORY_LIMIT = 200

SCHEMA = [
    """
    CREATE TABLE IF NOT EXISTS config_documents (
        kind text NOT NULL,
        version integer NOT NULL CHECK (version > 0),
        body jsonb NOT NULL,
        changed_by text NOT NULL,
        changed_at timestamptz NOT NULL DEFAULT now(),
        reason text NOT NULL,
        PRIMARY KEY (kind, version)
    )
    """,
]

Kind = Literal["sla_policies", "calendar", "classification"]
KINDS: tuple[Kind, ...] = ("sla_policies", "calendar", "classification")

# What a new version changes at once in a running process, and what only at the next start.
EFFECTS: dict[str, dict[str, str]] = {
    "sla_policies": {
        "live": "deadlines of clocks started or recomputed after the change (sla service)",
        "next_start": "the notification service's timer for escalating to the head",
    },
    "calendar": {
        "live": "deadlines of clocks started or recomputed after the change (sla service)",
        "next_start": "handling-time measures in reports and the callback planner",
    },
    "classification": {
        "live": "the router's rules and model, once the model is trained again (up to a minute)",
        "next_start": "new departments (their Kafka topics) and report labels",
    },
}


class ConfigRefused(ValueError):
    """A body the loaders refuse: the pydantic errors, located in the body."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(str(e.get("msg")) for e in errors))
        self.errors = errors


def _json_safe(value: Any) -> Any:
    """YAML's dates (and anything else JSON has no word for) as ISO text."""

    def default(item: Any) -> Any:
        if isinstance(item, date | datetime):
            return item.isoformat()
        if isinstance(item, set | frozenset | tuple):
            return sorted(item, key=str)
        return str(item)

    return json.loads(json.dumps(value, default=default, ensure_ascii=False))


def _file(kind: str) -> Path:
    if kind == "sla_policies":
        return POLICY_FILE
    if kind == "calendar":
        return Path(os.environ.get("FEEDBACK_CALENDAR") or DEFAULT_CALENDAR_FILE)
    return Path(os.environ.get("FEEDBACK_CLASSIFIER_RULES") or DEFAULT_RULES)


def file_body(kind: str) -> dict[str, Any]:
    """The file's content as JSON (version 0), where nothing is stored yet."""
    data = yaml.safe_load(_file(kind).read_text(encoding="utf-8")) or {}
    return dict(_json_safe(data))


def parse(kind: str, body: Mapping[str, Any]) -> Any:
    """The body as the loaders read it (Policies, Calendars, RuleBook), or ConfigRefused."""
    try:
        if kind == "sla_policies":
            return Policies.model_validate(body)
        if kind == "calendar":
            CalendarFile.model_validate(body)  # located errors first
            return calendars_from(body, "calendar")
        if kind == "classification":
            return RuleBook.model_validate(body)
    except ValidationError as error:
        raise ConfigRefused([dict(e) for e in error.errors(include_url=False)]) from None
    except CalendarConfigError as error:
        raise ConfigRefused([{"loc": (), "msg": str(error), "type": "value_error"}]) from None
    raise ConfigRefused([{"loc": (), "msg": f"no configuration kind {kind}", "type": "kind"}])


def from_file(kind: str) -> Any:
    if kind == "sla_policies":
        return load_policies()
    if kind == "calendar":
        return load_calendars()
    return load_rulebook()


# -- at start ---------------------------------------------------------------------------


@dataclass
class Configured:
    """What a process runs with: each kind's parsed configuration and its version
    (0: the file)."""

    policies: Policies
    calendars: Calendars
    rulebook: RuleBook
    versions: dict[str, int] = field(default_factory=dict)


def from_files() -> Configured:
    return Configured(load_policies(), load_calendars(), load_rulebook(), dict.fromkeys(KINDS, 0))


def latest_stored(database_url: str) -> dict[str, tuple[int, dict[str, Any]]]:
    """The newest stored version of each kind; none when the table does not exist yet.

    An unreachable database is logged, and the files are used: the running process
    applies the stored versions on its first poll (see the module docstring)."""
    try:
        with psycopg.connect(database_url, autocommit=True, connect_timeout=5) as conn:
            rows = conn.execute(
                "SELECT DISTINCT ON (kind) kind, version, body FROM config_documents "
                "ORDER BY kind, version DESC"
            ).fetchall()
    except psycopg.errors.UndefinedTable:
        return {}
    except psycopg.OperationalError as error:
        log.warning("stored configuration not read (%s); starting from the files", error)
        return {}
    return {kind: (version, body) for kind, version, body in rows}


def effective(database_url: str) -> Configured:
    """The configuration at start: the latest stored version of each kind, else the file.
    A stored version the loaders now refuse stops the start, as a bad file does."""
    stored = latest_stored(database_url)
    chosen: dict[str, Any] = {}
    versions: dict[str, int] = {}
    for kind in KINDS:
        if kind in stored:
            version, body = stored[kind]
            try:
                chosen[kind] = parse(kind, body)
            except ConfigRefused as error:
                raise ValueError(f"stored {kind} version {version} is refused: {error}") from None
            versions[kind] = version
        else:
            chosen[kind] = from_file(kind)
            versions[kind] = 0
    return Configured(
        chosen["sla_policies"], chosen["calendar"], chosen["classification"], versions
    )


# -- while running ----------------------------------------------------------------------

Applier = Callable[[Any], Awaitable[None]]


def live_appliers(
    sla: SlaService | None,
    routing: RoutingService | None,
    models: ModelRegistry | None = None,
) -> dict[str, Applier]:
    """How this process applies a new version in place (see the module docstring); a new
    rule book takes the active stored model of `models` when it was made for it."""
    appliers: dict[str, Applier] = {}
    if sla is not None:
        running_sla = sla

        async def policies(parsed: Policies) -> None:
            running_sla.policies = parsed

        async def calendar(parsed: Calendars) -> None:
            running_sla.calendar = parsed.get(None)

        appliers["sla_policies"] = policies
        appliers["calendar"] = calendar
    if routing is not None:
        running_routing = routing

        async def classification(parsed: RuleBook) -> None:
            from services.routing.classifier import Classifier

            # Training takes seconds to a minute (cached by the rule book's hash): the
            # router keeps the old classifier until the new one is ready.
            classifier = await asyncio.to_thread(Classifier.trained, parsed, registry=models)
            running_routing.classifier = classifier
            running_routing.repeat_window = timedelta(days=parsed.priority.repeat_window_days)

        appliers["classification"] = classification
    return appliers


class ConfigWatcher:
    """Polls the stored versions and applies each newer one this process can apply."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        applied: Mapping[str, int],
        appliers: Mapping[str, Applier],
        poll_s: float = POLL_S,
    ) -> None:
        self.pool = pool
        self.applied = dict(applied)
        self.appliers = dict(appliers)
        self.poll_s = poll_s

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("checking the stored configuration failed; retrying")
            await asyncio.sleep(self.poll_s)

    async def check(self) -> list[tuple[str, int]]:
        """Apply what is newer than what runs; the (kind, version) pairs applied."""
        if not self.appliers:
            return []
        async with self.pool.connection() as conn, conn.cursor() as cursor:
            await cursor.execute(
                "SELECT kind, max(version) FROM config_documents WHERE kind = ANY(%s) "
                "GROUP BY kind",
                (list(self.appliers),),
            )
            newest = {kind: version for kind, version in await cursor.fetchall()}
        done = []
        for kind, version in newest.items():
            if version <= self.applied.get(kind, 0):
                continue
            # Marked first: a version that fails to apply is logged once, not every poll.
            self.applied[kind] = version
            async with self.pool.connection() as conn, conn.cursor() as cursor:
                await cursor.execute(
                    "SELECT body FROM config_documents WHERE kind = %s AND version = %s",
                    (kind, version),
                )
                row = await cursor.fetchone()
            assert row is not None
            try:
                await self.appliers[kind](parse(kind, row[0]))
            except Exception:
                log.exception("configuration %s version %d not applied", kind, version)
                continue
            log.info("configuration %s version %d applied", kind, version)
            done.append((kind, version))
        return done


# -- HTTP -------------------------------------------------------------------------------


class ConfigIn(Checked):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    expected_version: int = Field(
        ge=0, description="the version this change was made on (0: the file); 409 if stale"
    )
    reason: Annotated[str, Field(min_length=1, max_length=500)]
    body: dict[str, Any] = Field(description="the whole document, as its YAML file reads")


class ConfigView(BaseModel):
    kind: Kind
    version: int = Field(description="0: the file in config/, nothing stored yet")
    source: Literal["stored", "file"]
    body: dict[str, Any]
    changed_by: str | None
    changed_at: datetime | None
    reason: str | None
    effects: dict[str, str]


class ConfigChange(BaseModel):
    version: int
    changed_by: str
    changed_at: datetime
    reason: str


async def _current(pool: AsyncConnectionPool, kind: str) -> ConfigView:
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            "SELECT version, body, changed_by, changed_at, reason FROM config_documents "
            "WHERE kind = %s ORDER BY version DESC LIMIT 1",
            (kind,),
        )
        row = await cursor.fetchone()
    if row is None:
        body = await asyncio.to_thread(file_body, kind)
        return ConfigView(
            kind=kind,
            version=0,
            source="file",
            body=body,
            changed_by=None,
            changed_at=None,
            reason=None,
            effects=EFFECTS[kind],
        )
    return ConfigView(kind=kind, source="stored", effects=EFFECTS[kind], **row)


def config_router(pool: AsyncConnectionPool) -> APIRouter:
    router = APIRouter(tags=["admin"])

    @router.get("/v1/admin/config/{kind}", response_model=ConfigView)
    async def current_config(kind: Kind, _: Annotated[Actor, require("config.read")]) -> ConfigView:
        return await _current(pool, kind)

    @router.put("/v1/admin/config/{kind}", response_model=ConfigView)
    async def change_config(
        kind: Kind, change: ConfigIn, actor: Annotated[Actor, require("config.write")]
    ) -> ConfigView:
        """A new version of the whole document, validated as its YAML file is at start."""
        try:
            await asyncio.to_thread(parse, kind, change.body)
        except ConfigRefused as refused:
            located = [
                {**error, "loc": ("body", "body", *error.get("loc", ()))}
                for error in refused.errors
            ]
            raise HTTPException(422, detail=shown_errors(located)) from None
        async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            # The primary key (kind, version) makes two changes on one version collide:
            # exactly one is stored, the other finds nothing inserted (409).
            await cursor.execute(
                "INSERT INTO config_documents (kind, version, body, changed_by, reason) "
                "SELECT %(kind)s, %(expected)s + 1, %(body)s, %(by)s, %(reason)s "
                "WHERE (SELECT coalesce(max(version), 0) FROM config_documents "
                "       WHERE kind = %(kind)s) = %(expected)s "
                "ON CONFLICT DO NOTHING RETURNING version",
                {
                    "kind": kind,
                    "expected": change.expected_version,
                    "body": Jsonb(change.body),
                    "by": actor.username,
                    "reason": change.reason,
                },
            )
            stored = await cursor.fetchone()
        if stored is None:
            current = await _current(pool, kind)
            raise HTTPException(
                409,
                f"{kind} changed meanwhile: version {current.version} by "
                f"{current.changed_by or 'the file'}; reload and change that version",
                headers={"X-Config-Version": str(current.version)},
            )
        log.info("configuration %s version %d stored by %s", kind, stored["version"], actor.name)
        return await _current(pool, kind)

    @router.get("/v1/admin/config/{kind}/history", response_model=list[ConfigChange])
    async def config_history(
        kind: Kind,
        _: Annotated[Actor, require("config.read")],
        limit: Annotated[int, Query(ge=1, le=HISTORY_LIMIT)] = 50,
    ) -> list[ConfigChange]:
        async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(
                "SELECT version, changed_by, changed_at, reason FROM config_documents "
                "WHERE kind = %s ORDER BY version DESC LIMIT %s",
                (kind, limit),
            )
            return [ConfigChange(**row) for row in await cursor.fetchall()]

    return router
