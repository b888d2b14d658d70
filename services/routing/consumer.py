"""The routing consumer (group `routing`): `FeedbackReceived` -> a new Case in the store.

Records come in batches; each partition's slice is written in one transaction together
with the partition position it reaches, and records at or below the recorded position are
skipped. Offsets are committed to Kafka only after that transaction, so a crash anywhere
redelivers, and the redelivery changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from pydantic import ValidationError

from contracts import topics
from contracts.events import DeadLetter, FeedbackReceived
from services.cases.domain import Case
from services.cases.store import CaseStore, KafkaPosition
from services.common.bus import publish
from services.common.kafka_positions import by_partition
from services.common.settings import Settings

log = logging.getLogger(__name__)

GROUP = "routing"


@dataclass
class SliceOutcome:
    created: int = 0
    skipped: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)


class Router:
    """Turns a partition slice of received feedback into cases, exactly once."""

    def __init__(self, store: CaseStore) -> None:
        self.store = store
        self.created = 0

    def prepare(
        self, topic: str, partition: int, records: list[Any]
    ) -> tuple[list[Case], SliceOutcome, int | None]:
        outcome = SliceOutcome()
        next_offset = self.store.next_offset(GROUP, topic, partition)
        unseen = [r for r in records if r.offset >= next_offset]
        outcome.skipped = len(records) - len(unseen)
        if not unseen:
            return [], outcome, None
        received: list[FeedbackReceived] = []
        for record in unseen:
            try:
                received.append(FeedbackReceived.model_validate_json(record.value or b""))
            except ValidationError as error:
                outcome.dead_letters.append(_dead_letter(record, error))
        already = self.store.existing([r.feedback_id for r in received])
        cases: dict[UUID, Case] = {}
        for message in received:
            # The same feedback published twice (an intake retry) is still one case.
            if message.feedback_id in already or message.feedback_id in cases:
                outcome.skipped += 1
                continue
            cases[message.feedback_id] = Case.register(message.feedback_id, message)
        outcome.created = len(cases)
        return list(cases.values()), outcome, unseen[-1].offset + 1

    def commit(self, topic: str, partition: int, cases: list[Case], next_offset: int) -> None:
        self.store.record(cases, KafkaPosition(GROUP, topic, partition, next_offset))
        self.created += len(cases)


def _dead_letter(record: Any, error: Exception) -> DeadLetter:
    raw = record.value or b""
    return DeadLetter(
        source=GROUP,
        reason=str(error)[:10_000],
        payload=raw.decode("utf-8", errors="replace"),
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
        failed_at=datetime.now(UTC),
    )


def register_routing(broker: KafkaBroker, settings: Settings, router: Router) -> None:
    @broker.subscriber(
        settings.topic(topics.FEEDBACK_RECEIVED),
        group_id=GROUP,
        batch=True,
        max_records=settings.consumer_batch_size,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        title="routing",
    )
    async def on_feedback_received(body: list[Any], msg: KafkaMessage) -> None:
        records = msg.raw_message if isinstance(msg.raw_message, tuple) else (msg.raw_message,)
        for (topic, partition), slice_records in by_partition(records).items():
            cases, outcome, next_offset = await asyncio.to_thread(
                router.prepare, topic, partition, slice_records
            )
            # Dead letters go out before the position moves past them: at least once.
            for letter in outcome.dead_letters:
                log.warning(
                    "dead letter from %s/%s@%s: %s",
                    topic,
                    partition,
                    letter.source_offset,
                    letter.reason[:200],
                )
                await publish(broker, settings, letter)
            if next_offset is not None:
                await asyncio.to_thread(router.commit, topic, partition, cases, next_offset)
