"""Dead letters: the `deadletters` table every service can write, and the rule for what a
consumer sets aside instead of retrying.

A consumer that meets a message it can never apply (its data, not the database or the
bus, is at fault) keeps it here with the reason and publishes it to `feedback.deadletter`,
then moves its position past it: one bad message must never stop a partition. The id is
derived from where the message was read, so a redelivery records nothing twice and
subscribers of the topic can drop repeats.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import uuid
from datetime import UTC, date, datetime
from functools import cache
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import eventsourcing.persistence
import psycopg
import psycopg.errors
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from psycopg import AsyncConnection, Connection
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ValidationError

from contracts.events import DeadLetter
from services.common.boundary import EARLIEST, clean_text, unsupported_schema_version
from services.common.masking import mask_contacts

SCHEMA = [
    """
    CREATE TABLE IF NOT EXISTS deadletters (
        dead_letter_id uuid PRIMARY KEY,
        source text NOT NULL,
        reason text NOT NULL,
        payload bytea NOT NULL,
        metadata jsonb NOT NULL DEFAULT '{}',
        created_at timestamptz NOT NULL DEFAULT now(),
        replayed_at timestamptz,
        replay_result text
    )
    """,
    # Payloads are sealed with a key derived from the PII key (they may hold anything a
    # sender sent); rows from before sealing say so. A dead letter settled as a registered
    # feedback names it, so that erasing the customer erases their originals too.
    """
    ALTER TABLE deadletters
        ADD COLUMN IF NOT EXISTS sealed boolean NOT NULL DEFAULT false,
        ADD COLUMN IF NOT EXISTS feedback_number text
    """,
    "CREATE INDEX IF NOT EXISTS deadletters_feedback ON deadletters (feedback_number)",
]


class _Sealing:
    cipher: AESGCM | None = None


SEALING = _Sealing()


def configure_sealing(pii_key: bytes) -> None:
    """Set once at start (Platform.build) from the PII key."""
    SEALING.cipher = AESGCM(hmac.new(pii_key, b"feedback-deadletters", hashlib.sha256).digest())


def seal(letter_id: uuid.UUID, raw: bytes) -> bytes:
    if SEALING.cipher is None:
        raise RuntimeError("dead letters are never kept in clear: configure_sealing first")
    nonce = os.urandom(12)
    return nonce + SEALING.cipher.encrypt(nonce, raw, letter_id.bytes)


def unseal(letter_id: uuid.UUID, sealed: bytes) -> bytes:
    if SEALING.cipher is None:
        raise RuntimeError("configure_sealing first")
    return SEALING.cipher.decrypt(sealed[:12], sealed[12:], letter_id.bytes)


def encoding_of(raw: bytes) -> str:
    """How the opened payload reads: text, or bytes that are not UTF-8."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "base64"
    return "utf-8"


def sealed_message(letter: DeadLetter, raw: bytes) -> DeadLetter:
    """The dead letter as the topic carries it: the payload sealed, never in clear."""
    assert letter.dead_letter_id is not None
    sealed = base64.b64encode(seal(letter.dead_letter_id, raw)).decode()
    return letter.model_copy(update={"payload": sealed, "payload_encoding": "sealed"})


# Times a consumer stores must come back out: PostgreSQL keeps a year-10000 instant, but
# Python (and so every reader) cannot represent it. Well inside both ranges.
LATEST = datetime(9000, 1, 1, tzinfo=UTC)

# Above this (encoded) the topic message carries no payload, the table keeps it whole: a
# dead letter must never be too large for Kafka (1 MB by default), or publishing it would
# stop the partition.
TOPIC_MESSAGE_BYTES = 512 * 1024

_NAMESPACE = uuid.UUID("5b0f7a44-2f55-4c1e-9a55-6f1d3c7e2a10")

# Errors that a retry of the same message cannot fix: the message's data is at fault.
# Connection loss, timeouts, lock waits and serialisation failures are transient and
# still raise (the batch is redelivered). Programming errors (an undefined column) would
# fail every message, so they stop the consumer rather than dead-letter the stream.
# The event store's IntegrityError is left out on purpose: for routing it means another
# consumer recorded the same position first, which a redelivery settles.
_PERMANENT: tuple[type[BaseException], ...] = (
    psycopg.DataError,  # NUL in text, out-of-range numbers and times, bad encodings
    psycopg.IntegrityError,  # e.g. a feedback number already held by another feedback
    psycopg.errors.ProgramLimitExceeded,  # e.g. a value too large for an index entry
    eventsourcing.persistence.DataError,
    ValueError,  # includes pydantic's ValidationError and UnicodeError
    OverflowError,
)


class Unapplicable(ValueError):
    """A message this consumer refuses to apply; the message says why."""


def is_permanent(error: BaseException) -> bool:
    """Whether retrying the message that raised this can never succeed."""
    return isinstance(error, _PERMANENT)


def describe(error: BaseException) -> str:
    """The reason kept with a dead letter: printable, bounded, and storable."""
    if isinstance(error, ValidationError):
        # Without the inputs: the reason travels in clear, the message stays sealed.
        text = "ValidationError: " + "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in error.errors(include_url=False, include_input=False, include_context=False)
        )
    elif isinstance(error, Unapplicable):
        text = str(error)
    else:
        text = f"{type(error).__name__}: {error}"
    return mask_contacts(clean_text(text))[:10_000]


def dead_letter_id(consumer: str, topic: str, partition: int, offset: int) -> uuid.UUID:
    """The same for every delivery of one message to one consumer."""
    return uuid.uuid5(_NAMESPACE, f"{consumer}\n{topic}\n{partition}\n{offset}")


def of_record(
    consumer: str, record: Any, reason: str, metadata: dict[str, str] | None = None
) -> DeadLetter:
    """The dead letter of a Kafka consumer record this consumer cannot apply; `metadata`
    adds what else identifies it (e.g. the feedback id)."""
    raw: bytes = record.value or b""
    encoding = encoding_of(raw)
    # A newer producer's message fails validation like a broken one; the reason tells them apart.
    newer = unsupported_schema_version(raw)
    if newer is not None:
        reason = f"{newer}; {reason}"
    metadata = {
        **{clean_text(k): clean_text(v) for k, v in (metadata or {}).items()},
        "topic": str(record.topic),
        "partition": str(record.partition),
        "offset": str(record.offset),
        "payload_encoding": encoding,  # of the sealed payload, once opened
    }
    letter = sealed_message(
        DeadLetter(
            dead_letter_id=dead_letter_id(consumer, record.topic, record.partition, record.offset),
            source=consumer,
            reason=clean_text(reason)[:10_000],
            payload="",
            metadata=metadata,
            source_topic=record.topic,
            source_partition=record.partition,
            source_offset=record.offset,
            failed_at=datetime.now(UTC),
        ),
        raw,
    )
    # Base64 makes the message a third larger than the record.
    if len(letter.model_dump_json().encode()) > TOPIC_MESSAGE_BYTES:
        omitted = {**metadata, "payload_omitted_bytes": str(len(raw))}
        letter = letter.model_copy(update={"payload": "", "metadata": omitted})
    return letter


_INSERT = (
    "INSERT INTO deadletters (dead_letter_id, source, reason, payload, metadata, sealed) "
    "VALUES (%s, %s, %s, %s, %s, true) ON CONFLICT (dead_letter_id) DO NOTHING RETURNING 1"
)


def _row(letter: DeadLetter, payload: bytes) -> tuple[Any, ...]:
    assert letter.dead_letter_id is not None
    return (
        letter.dead_letter_id,
        letter.source,
        letter.reason,
        seal(letter.dead_letter_id, payload),
        Jsonb(letter.metadata),
    )


async def keep(conn: AsyncConnection[Any], letter: DeadLetter, payload: bytes) -> bool:
    """Record a dead letter with the raw message; False when it was already recorded."""
    cursor = await conn.execute(_INSERT, _row(letter, payload))
    return await cursor.fetchone() is not None


def keep_sync(conn: Connection[Any], letter: DeadLetter, payload: bytes) -> bool:
    """`keep` for the synchronous consumers."""
    return conn.execute(_INSERT, _row(letter, payload)).fetchone() is not None


@cache
def _fields_with_times(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields of a model that may hold a time: the rest are never looked at."""
    plain = (str, int, float, type(None), uuid.UUID)  # enums too: they are str or int
    return tuple(
        name
        for name, info in model.model_fields.items()
        if not all(issubclass(kind, plain) for kind in _kinds(info.annotation))
    )


def _kinds(annotation: Any) -> set[Any]:
    """The classes an annotation may hold (through Optional, Annotated, Literal, unions)."""
    origin = get_origin(annotation)
    if origin is None:
        return {annotation} if isinstance(annotation, type) else {object}
    if origin is type:
        return {object}
    if origin is Literal:
        return {type(v) for v in get_args(annotation)}
    if origin is Annotated:
        return _kinds(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return set().union(*(_kinds(a) for a in get_args(annotation)))
    return {object}  # containers: look inside


def unstorable_time(value: Any, path: str = "") -> str | None:
    """The first time in a message outside what the read side can store and show again
    (2000-01-01 up to the year 9000), as "path: why", or None."""
    if value is None or isinstance(value, str | int | float):  # most fields: nothing to see
        return None
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        # Aware comparisons never build the UTC instant, so they cannot overflow.
        if moment < EARLIEST:
            return f"{path or 'time'}: {value.isoformat()} is before 2000-01-01"
        if moment >= LATEST:
            return f"{path or 'time'}: {value.isoformat()} is after the year 9000"
        return None
    if isinstance(value, date):
        return None  # any date PostgreSQL holds, Python reads back
    if isinstance(value, BaseModel):
        for name in _fields_with_times(type(value)):
            item = getattr(value, name)
            if item is None or isinstance(item, str | int | float):
                continue
            found = unstorable_time(item, f"{path}.{name}" if path else name)
            if found:
                return found
    elif isinstance(value, dict):
        for key, item in value.items():
            found = unstorable_time(item, f"{path}.{key}" if path else str(key))
            if found:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = unstorable_time(item, f"{path}[{index}]")
            if found:
                return found
    return None
