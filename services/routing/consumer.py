"""The routing consumer (group `routing`): `FeedbackReceived` -> a classified, routed case.

Records come in batches; each partition's slice is written in one transaction together
with the partition position it reaches, and records below the recorded position are
skipped. Offsets are committed to Kafka only after that transaction, so a crash anywhere
redelivers, and the redelivery changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from contracts import topics
from services.common.bus import publish
from services.common.kafka_positions import by_partition
from services.common.settings import Settings
from services.routing.service import (
    CORRESPONDENCE_GROUP,
    GROUP,
    CaseNotStoredYet,
    RoutingService,
)

log = logging.getLogger(__name__)


def register_routing(broker: KafkaBroker, settings: Settings, routing: RoutingService) -> None:
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
            work = await asyncio.to_thread(routing.prepare, topic, partition, slice_records)
            # Dead letters go out before the position moves past them: at least once.
            for letter in work.dead_letters:
                log.warning(
                    "dead letter %s/%s@%s: %s",
                    topic,
                    partition,
                    letter.source_offset,
                    letter.reason[:200],
                )
                await publish(broker, settings, letter)
            if work.next_offset is not None:
                await asyncio.to_thread(routing.commit, work)

    @broker.subscriber(
        settings.topic(topics.CORRESPONDENCE),
        group_id=CORRESPONDENCE_GROUP,
        batch=True,
        max_records=settings.consumer_batch_size,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        title="routing-correspondence",
    )
    async def on_correspondence(body: list[Any], msg: KafkaMessage) -> None:
        records = msg.raw_message if isinstance(msg.raw_message, tuple) else (msg.raw_message,)
        for (topic, partition), slice_records in by_partition(records).items():
            try:
                work = await asyncio.to_thread(
                    routing.prepare_correspondence, topic, partition, slice_records
                )
            except CaseNotStoredYet:
                await asyncio.sleep(0.5)  # then redelivered (nack), by when the case exists
                raise
            for letter in work.dead_letters:
                await publish(broker, settings, letter)
            if work.next_offset is not None:
                await asyncio.to_thread(routing.commit_correspondence, work)
