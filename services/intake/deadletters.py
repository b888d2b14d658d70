"""Dead letters: what a channel received but could not read, kept with the reason.

Nothing accepted is lost: the raw payload goes to the `feedback.deadletter` topic (through
the durable outbox) and into a table an operator lists and replays (`feedback deadletter`).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from contracts.events import FEEDBACK_NUMBER_PATTERN, DeadLetter
from services.common.boundary import clean_text
from services.common.deadletters import SCHEMA as SCHEMA  # shared with the consumers
from services.common.deadletters import encoding_of, seal, sealed_message, unseal
from services.common.masking import mask_contacts
from services.common.metrics import count_dead_letters
from services.common.settings import Settings
from services.intake.registration import enqueue

NUMBER_IN_TEXT = re.compile(FEEDBACK_NUMBER_PATTERN.strip("^$"))


class DeadLetters:
    def __init__(self, pool: AsyncConnectionPool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings

    async def keep(
        self,
        source: str,
        reason: str,
        payload: bytes,
        metadata: dict[str, str] | None = None,
        settled: str | None = None,
        dead_letter_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        """Keep what could not be taken as it came. `settled` says what was done instead
        when the input was cleaned and registered anyway (e.g. "registered cleaned as
        F20261129-0001"): the original is kept for the record, not listed for replay."""
        # A caller that may keep the same thing twice names it; the second is dropped.
        dead_letter_id = dead_letter_id or uuid.uuid4()
        # The reason and metadata may quote the sender; jsonb and text cannot hold NUL.
        # Reasons and metadata travel in clear (the payload is sealed): no contact details.
        reason = mask_contacts(clean_text(reason))[:10_000]
        metadata = {
            clean_text(k): mask_contacts(clean_text(v)) for k, v in (metadata or {}).items()
        }
        # A kept mail may be 25 MiB: decoding, encrypting it twice and base64 take a CPU for
        # a while, so they run in a worker thread, off the event loop.
        message, sealed = await asyncio.to_thread(
            _sealed, dead_letter_id, source, reason, metadata, payload
        )
        settled_as = NUMBER_IN_TEXT.search(settled) if settled else None
        async with self.pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "INSERT INTO deadletters (dead_letter_id, source, reason, payload, metadata, "
                "sealed, feedback_number, replayed_at, replay_result) "
                "VALUES (%s, %s, %s, %s, %s, true, %s, "
                "CASE WHEN %s::text IS NULL THEN NULL ELSE now() END, %s) "
                "ON CONFLICT (dead_letter_id) DO NOTHING RETURNING 1",
                (
                    dead_letter_id,
                    source,
                    reason,
                    sealed,
                    Jsonb(message.metadata),
                    settled_as.group(0) if settled_as else None,
                    settled,
                    settled,
                ),
            )
            if await cursor.fetchone() is None:
                return dead_letter_id  # kept before
            await enqueue(conn, self.settings, message)
        if settled is None:  # a repaired original is a record, not a failure to read
            count_dead_letters(source)
        return dead_letter_id

    async def list(self, limit: int = 100, include_replayed: bool = False) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(
                "SELECT dead_letter_id, source, reason, length(payload) AS size, metadata, "
                "created_at, replayed_at, replay_result FROM deadletters "
                "WHERE %s OR replayed_at IS NULL ORDER BY created_at DESC LIMIT %s",
                (include_replayed, limit),
            )
            return await cursor.fetchall()

    async def get(self, dead_letter_id: uuid.UUID) -> dict[str, Any] | None:
        """The row, its payload opened (for replay; admins only)."""
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(
                "SELECT * FROM deadletters WHERE dead_letter_id = %s", (dead_letter_id,)
            )
            row = await cursor.fetchone()
        if row is not None and row["sealed"]:
            row["payload"] = unseal(dead_letter_id, bytes(row["payload"]))
        return row

    async def mark_replayed(self, dead_letter_id: uuid.UUID, result: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE deadletters SET replayed_at = now(), replay_result = %s WHERE dead_letter_id = %s",
                (result, dead_letter_id),
            )


def _sealed(
    dead_letter_id: uuid.UUID,
    source: str,
    reason: str,
    metadata: dict[str, str],
    payload: bytes,
) -> tuple[DeadLetter, bytes]:
    """The dead letter as the topic carries it and the payload as the table keeps it, both
    sealed (CPU-bound on large payloads: called in a thread)."""
    metadata = {**metadata, "payload_encoding": encoding_of(payload)}
    message = sealed_message(
        DeadLetter(
            dead_letter_id=dead_letter_id,
            source=source,
            reason=reason,
            payload="",
            metadata=metadata,
            failed_at=datetime.now(UTC),
        ),
        payload,
    )
    return message, seal(dead_letter_id, payload)
