"""Registering feedback: the one path every channel adapter takes.

Adapters parse and map; this module numbers, pseudonymises, de-duplicates and publishes.
A feedback counts as accepted only once Kafka acknowledged `FeedbackReceived` (acks=all).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID, uuid4

from faststream.kafka import KafkaBroker
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ValidationError

from contracts.codes import Channel, Emotion, FeedbackType
from contracts.events import CustomerCorrespondence, Evidence, FeedbackReceived
from services.common.bus import Keyed, publish
from services.common.settings import Settings
from services.intake.numbering import FeedbackNumbering
from services.intake.pii_vault import Contact, PiiVault, mask_contacts

log = logging.getLogger(__name__)

SCHEMA = [
    """
    CREATE TABLE IF NOT EXISTS intake_deduplication (
        dedup_key text PRIMARY KEY,
        feedback_id uuid NOT NULL,
        feedback_number text NOT NULL,
        published boolean NOT NULL DEFAULT false,
        created_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    # Every accepted feedback: lets replies and supplements find their case by number or
    # by the Message-ID of the email that registered it.
    """
    CREATE TABLE IF NOT EXISTS intake_registry (
        feedback_number text PRIMARY KEY,
        feedback_id uuid NOT NULL UNIQUE,
        channel text NOT NULL,
        channel_reference text,
        registered_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    "CREATE INDEX IF NOT EXISTS intake_registry_reference ON intake_registry (channel, channel_reference)",
    # The durable buffer: messages accepted while Kafka may be away, published in order.
    """
    CREATE TABLE IF NOT EXISTS intake_outbox (
        id bigserial PRIMARY KEY,
        topic text NOT NULL,
        message_key bytea,
        payload bytea NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )
    """,
]


class Submission(BaseModel):
    """A feedback as an adapter understood it, before numbering. Contact stays here."""

    channel: Channel
    description: str
    contact: Contact
    receiver: str
    received_at: datetime | None = None
    channel_reference: str | None = None
    customer_tier: str = "normal"
    product_model: str | None = None
    service_type: str | None = None
    purchase_date: date | None = None
    customer_attempts: str | None = None
    occurred_at: datetime | None = None
    expectation: str | None = None
    emotion: Emotion | None = None
    stated_type: FeedbackType | None = None
    evidence: tuple[Evidence, ...] = ()
    related_feedback: str | None = None


class Accepted(BaseModel):
    feedback_id: UUID
    feedback_number: str
    duplicate: bool = False


class IntakeUnavailable(Exception):
    """The bus did not acknowledge the feedback; nothing was registered."""


class DuplicateInProgress(Exception):
    """The same delivery is being registered by a concurrent request right now."""


class UnknownFeedback(LookupError):
    """No feedback has this number."""


class _DuplicateRace(Exception):
    pass


class InvalidSubmission(ValueError):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("invalid feedback")
        self.errors = errors


class Registrar:
    def __init__(
        self,
        settings: Settings,
        pool: AsyncConnectionPool,
        broker: KafkaBroker,
        numbering: FeedbackNumbering,
        vault: PiiVault,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.broker = broker
        self.numbering = numbering
        self.vault = vault
        self.outbox_waiting = asyncio.Event()

    async def register_durably(
        self, submission: Submission, dedup_key: str | None = None
    ) -> Accepted:
        """Accept into the durable buffer (PostgreSQL) and publish when Kafka can take it.

        For channels that cannot be asked to retry (SMTP, batch files): once this returns,
        the feedback is safe even if Kafka is away; the outbox drainer publishes it later.
        """
        dedup_key = dedup_key or _delivery_key(submission)
        if dedup_key is not None:
            existing = await self._existing(dedup_key)
            if existing is not None:
                return existing
        now = datetime.now(UTC)
        feedback_id = uuid4()
        number = await self.numbering.feedback_number(now.astimezone(self.settings.zone))
        customer_ref = await self.vault.pseudonym_for(submission.contact, now)
        try:
            event = self._received(submission, feedback_id, number, customer_ref, now)
        except ValidationError as error:
            raise InvalidSubmission(error.errors(include_url=False)) from error  # type: ignore[arg-type]
        try:
            async with self.pool.connection() as conn, conn.transaction():
                if dedup_key is not None:
                    cursor = await conn.execute(
                        "INSERT INTO intake_deduplication (dedup_key, feedback_id, feedback_number, "
                        "published) VALUES (%s, %s, %s, true) ON CONFLICT (dedup_key) DO NOTHING "
                        "RETURNING dedup_key",
                        (dedup_key, feedback_id, number),
                    )
                    if await cursor.fetchone() is None:
                        raise _DuplicateRace()
                await self._remember(conn, event)
                await enqueue(conn, self.settings, event)
        except _DuplicateRace:
            # A concurrent delivery of the same message won; answer with its number.
            assert dedup_key is not None
            existing = await self._existing(dedup_key)
            if existing is None:
                raise DuplicateInProgress(dedup_key) from None
            return existing
        self.outbox_waiting.set()
        return Accepted(feedback_id=feedback_id, feedback_number=number)

    async def drain_outbox(self, limit: int = 500) -> int:
        """Publish buffered messages in order; each row goes once Kafka acknowledged it."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT id, topic, message_key, payload FROM intake_outbox ORDER BY id LIMIT %s",
                (limit,),
            )
            rows = await cursor.fetchall()
        if not rows:
            return 0
        async with asyncio.timeout(self.settings.publish_timeout_s):
            pending = [
                await self.broker.publish(
                    bytes(payload),
                    topic,
                    key=bytes(key) if key is not None else None,
                    headers={"content-type": "application/json"},
                    no_confirm=True,
                )
                for _, topic, key, payload in rows
            ]
            await asyncio.gather(*pending)
        async with self.pool.connection() as conn:
            await conn.execute(
                "DELETE FROM intake_outbox WHERE id = ANY(%s)", ([r[0] for r in rows],)
            )
        return len(rows)

    async def drain_outbox_forever(self) -> None:
        while True:
            try:
                while await self.drain_outbox():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("intake outbox not drained yet (%s); retrying", error)
                await asyncio.sleep(1.0)
                continue
            self.outbox_waiting.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.outbox_waiting.wait()

    async def buffered(self) -> int:
        async with self.pool.connection() as conn:
            cursor = await conn.execute("SELECT count(*) FROM intake_outbox")
            row: Any = await cursor.fetchone()
        return int(row[0])

    async def _remember(self, conn: Any, event: FeedbackReceived) -> None:
        await conn.execute(
            "INSERT INTO intake_registry (feedback_number, feedback_id, channel, channel_reference) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (
                event.feedback_number,
                event.feedback_id,
                event.channel.value,
                event.channel_reference,
            ),
        )

    async def find(self, feedback_number: str) -> UUID | None:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT feedback_id FROM intake_registry WHERE feedback_number = %s",
                (feedback_number,),
            )
            row: Any = await cursor.fetchone()
        return row[0] if row else None

    async def find_by_reference(self, channel: Channel, references: list[str]) -> str | None:
        """The feedback number registered from any of these channel references."""
        if not references:
            return None
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT feedback_number FROM intake_registry WHERE channel = %s "
                "AND channel_reference = ANY(%s) ORDER BY registered_at LIMIT 1",
                (channel.value, references),
            )
            row: Any = await cursor.fetchone()
        return str(row[0]) if row else None

    async def correspond(
        self,
        feedback_number: str,
        channel: Channel,
        text: str,
        *,
        supplied: dict[str, str] | None = None,
        evidence: tuple[Evidence, ...] = (),
        channel_reference: str | None = None,
        received_at: datetime | None = None,
        durable: bool = False,
    ) -> CustomerCorrespondence:
        """A customer's message about an existing feedback goes to its case."""
        feedback_id = await self.find(feedback_number)
        if feedback_id is None:
            raise UnknownFeedback(feedback_number)
        message = CustomerCorrespondence(
            correspondence_id=uuid4(),
            feedback_id=feedback_id,
            feedback_number=feedback_number,
            channel=channel,
            channel_reference=channel_reference,
            received_at=received_at or datetime.now(UTC),
            text=mask_contacts(text),
            supplied=supplied or {},
            evidence=evidence,
        )
        if durable:
            async with self.pool.connection() as conn:
                await enqueue(conn, self.settings, message)
            self.outbox_waiting.set()
            return message
        try:
            await publish(self.broker, self.settings, message)
        except Exception as error:
            raise IntakeUnavailable(str(error)) from error
        return message

    async def register(self, submission: Submission, dedup_key: str | None = None) -> Accepted:
        dedup_key = dedup_key or _delivery_key(submission)
        now = datetime.now(UTC)
        local_now = now.astimezone(self.settings.zone)
        feedback_id = uuid4()
        if dedup_key is not None:
            existing = await self._existing(dedup_key)
            if existing is not None:
                return existing
        number = await self.numbering.feedback_number(local_now)
        if dedup_key is not None and not await self._claim(dedup_key, feedback_id, number):
            existing = await self._existing(dedup_key)
            if existing is None:
                raise DuplicateInProgress(dedup_key)
            return existing
        try:
            customer_ref = await self.vault.pseudonym_for(submission.contact, now)
            event = self._received(submission, feedback_id, number, customer_ref, now)
            await publish(self.broker, self.settings, event)
        except Exception as error:
            if dedup_key is not None:
                await self._release(dedup_key, feedback_id)
            if isinstance(error, ValidationError):
                raise InvalidSubmission(error.errors(include_url=False)) from error  # type: ignore[arg-type]
            log.warning("feedback %s not accepted: %s", number, error)
            raise IntakeUnavailable(str(error)) from error
        if dedup_key is not None:
            await self._mark_published(dedup_key, feedback_id)
        async with self.pool.connection() as conn:
            await self._remember(conn, event)
        return Accepted(feedback_id=feedback_id, feedback_number=number)

    def _received(
        self,
        submission: Submission,
        feedback_id: UUID,
        number: str,
        customer_ref: str,
        now: datetime,
    ) -> FeedbackReceived:
        return FeedbackReceived(
            feedback_id=feedback_id,
            feedback_number=number,
            received_at=submission.received_at or now,
            registered_at=now,
            channel=submission.channel,
            channel_reference=submission.channel_reference,
            customer_ref=customer_ref,
            customer_tier=submission.customer_tier,
            product_model=submission.product_model,
            service_type=submission.service_type,
            purchase_date=submission.purchase_date,
            description=mask_contacts(submission.description),
            customer_attempts=_masked(submission.customer_attempts),
            occurred_at=submission.occurred_at,
            expectation=_masked(submission.expectation),
            emotion=submission.emotion,
            stated_type=submission.stated_type,
            evidence=submission.evidence,
            receiver=submission.receiver,
            related_feedback=submission.related_feedback,
        )

    async def _existing(self, dedup_key: str) -> Accepted | None:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT feedback_id, feedback_number, published FROM intake_deduplication "
                "WHERE dedup_key = %s",
                (dedup_key,),
            )
            row: Any = await cursor.fetchone()
        if row is None:
            return None
        if not row[2]:
            raise DuplicateInProgress(dedup_key)
        return Accepted(feedback_id=row[0], feedback_number=row[1], duplicate=True)

    async def _claim(self, dedup_key: str, feedback_id: UUID, number: str) -> bool:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "INSERT INTO intake_deduplication (dedup_key, feedback_id, feedback_number) "
                "VALUES (%s, %s, %s) ON CONFLICT (dedup_key) DO NOTHING RETURNING dedup_key",
                (dedup_key, feedback_id, number),
            )
            return await cursor.fetchone() is not None

    async def _release(self, dedup_key: str, feedback_id: UUID) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "DELETE FROM intake_deduplication WHERE dedup_key = %s AND feedback_id = %s",
                (dedup_key, feedback_id),
            )

    async def _mark_published(self, dedup_key: str, feedback_id: UUID) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE intake_deduplication SET published = true "
                "WHERE dedup_key = %s AND feedback_id = %s",
                (dedup_key, feedback_id),
            )


def _delivery_key(submission: Submission) -> str | None:
    """The same channel message delivered twice has the same channel reference."""
    if submission.channel_reference:
        return f"{submission.channel.value}:{submission.channel_reference}"
    return None


async def enqueue(conn: Any, settings: Settings, message: Keyed) -> None:
    """Put a contract message into the durable outbox, inside the caller's transaction;
    the drainer publishes it once Kafka acknowledges."""
    await conn.execute(
        "INSERT INTO intake_outbox (topic, message_key, payload) VALUES (%s, %s, %s)",
        (settings.topic(message.TOPIC), message.key(), message.model_dump_json().encode()),
    )


def _masked(text: str | None) -> str | None:
    return mask_contacts(text) if text else text
