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

from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from contracts import topics
from services.common.bus import batch_subscriber, partition_slices, publish
from services.common.settings import Settings
from services.routing.service import (
    CORRESPONDENCE_GROUP,
    GROUP,
    CaseNotStoredYet,
    RoutingService,
)

log = logging.getLogger(__name__)


def register_routing(broker: KafkaBroker, settings: Settings, routing: RoutingService) -> None:
    @batch_subscriber(broker, settings, topics.FEEDBACK_RECEIVED, GROUP)
    async def on_feedback_received(body: list[Any], msg: KafkaMessage) -> None:
        for (topic, partition), slice_records in partition_slices(msg).items():
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

    @batch_subscriber(broker, settings, topics.CORRESPONDENCE, CORRESPONDENCE_GROUP)
    async def on_correspondence(body: list[Any], msg: KafkaMessage) -> None:
        for (topic, partition), slice_records in partition_slices(msg).items():
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
                await asyncio.to_thread(routing.commit, work)
