"""Registering feedback: the one path every channel adapter takes.

Adapters parse and map; this module numbers, pseudonymises, de-duplicates and publishes.
A feedback counts as accepted only once Kafka acknowledged `FeedbackReceived` (acks=all).
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID, uuid4

from faststream.kafka import KafkaBroker
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ValidationError

from contracts.codes import Channel, Emotion, FeedbackType
from contracts.events import Evidence, FeedbackReceived
from services.common.bus import publish
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
    """
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


class Accepted(BaseModel):
    feedback_id: UUID
    feedback_number: str
    duplicate: bool = False


class IntakeUnavailable(Exception):
    """The bus did not acknowledge the feedback; nothing was registered."""


class DuplicateInProgress(Exception):
    """The same delivery is being registered by a concurrent request right now."""


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

    async def register(self, submission: Submission, dedup_key: str | None = None) -> Accepted:
        if dedup_key is None and submission.channel_reference:
            dedup_key = f"{submission.channel.value}:{submission.channel_reference}"
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


def _masked(text: str | None) -> str | None:
    return mask_contacts(text) if text else text
