"""The routing consumer (group `routing`): `FeedbackReceived` -> a classified, routed case.

Records come in batches; each partition's slice is written in one transaction together
with the partition position it reaches, and records below the recorded position are
skipped. Offsets are committed to Kafka only after that transaction, so a crash anywhere
redelivers, and the redelivery changes nothing.

A record that fails for a reason a retry cannot fix (`deadletters.is_permanent`) is set
aside: the slice is processed again one record at a time, and the record at fault becomes
a dead letter (table, topic, metric) that the position moves past. One bad record never
stops the partition.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from contracts import topics
from services.cases.domain import CaseError
from services.common import deadletters
from services.common.bus import batch_subscriber, partition_slices, publish
from services.common.metrics import count_dead_letters
from services.common.settings import Settings
from services.routing.service import (
    CORRESPONDENCE_GROUP,
    GROUP,
    CaseNotStoredYet,
    RoutingService,
    Slice,
)

log = logging.getLogger(__name__)

Prepare = Callable[[str, int, list[Any]], Slice]


def _permanent(error: BaseException) -> bool:
    # A case refusing what a message asks of it refuses it on every redelivery too.
    return deadletters.is_permanent(error) or isinstance(error, CaseError)


def register_routing(broker: KafkaBroker, settings: Settings, routing: RoutingService) -> None:
    async def finish(work: Slice) -> None:
        """Dead letters kept and published before the position moves past them: at least
        once, and their fixed ids make repeats recognisable."""
        if work.dead_letters:
            recorded = await asyncio.to_thread(routing.keep_dead_letters, work)
            for letter, _ in work.dead_letters:
                log.warning(
                    "dead letter %s/%s@%s (%s): %s",
                    work.topic,
                    work.partition,
                    letter.source_offset,
                    work.consumer,
                    letter.reason[:200],
                )
                await publish(broker, settings, letter)
            count_dead_letters(work.consumer, recorded)
        if work.next_offset is not None:
            await asyncio.to_thread(routing.commit, work)

    async def process(
        group: str, prepare: Prepare, topic: str, partition: int, records: list[Any]
    ) -> None:
        try:
            await finish(await asyncio.to_thread(prepare, topic, partition, records))
            return
        except Exception as error:
            if not _permanent(error):
                raise
            log.warning(
                "%s: a record of %s/%s from offset %s cannot be processed (%s); one by one now",
                group,
                topic,
                partition,
                records[0].offset,
                deadletters.describe(error)[:300],
            )
        for record in records:
            # Each record on its own, so only the one at fault is set aside; the position
            # stored per record makes the repeat of those already done a no-op.
            try:
                await finish(await asyncio.to_thread(prepare, topic, partition, [record]))
            except Exception as error:
                if not _permanent(error):
                    raise
                await finish(routing.set_aside(group, record, error))

    @batch_subscriber(broker, settings, topics.FEEDBACK_RECEIVED, GROUP)
    async def on_feedback_received(body: list[Any], msg: KafkaMessage) -> None:
        for (topic, partition), slice_records in partition_slices(msg).items():
            await process(GROUP, routing.prepare, topic, partition, slice_records)

    @batch_subscriber(broker, settings, topics.CORRESPONDENCE, CORRESPONDENCE_GROUP)
    async def on_correspondence(body: list[Any], msg: KafkaMessage) -> None:
        for (topic, partition), slice_records in partition_slices(msg).items():
            try:
                await process(
                    CORRESPONDENCE_GROUP,
                    routing.prepare_correspondence,
                    topic,
                    partition,
                    slice_records,
                )
            except CaseNotStoredYet:
                await asyncio.sleep(0.5)  # then redelivered (nack), by when the case exists
                raise
