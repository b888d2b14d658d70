"""The sla service's consumers of `feedback.events` and its scheduler loop."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from psycopg_pool import AsyncConnectionPool

from contracts import events as contract
from contracts import topics
from services.common import kafka_positions
from services.common.bus import batch_subscriber, concerns, partition_slices, publish
from services.common.settings import Settings
from services.sla.service import GROUP, OWN_EVENT_TYPES, TIMERS, SlaService, apply_timers

log = logging.getLogger(__name__)

TIMERS_GROUP = "sla-timers"


def register_sla(
    broker: KafkaBroker, settings: Settings, sla: SlaService, pool: AsyncConnectionPool
) -> None:
    @batch_subscriber(broker, settings, topics.FEEDBACK_EVENTS, GROUP)
    async def on_case_events(body: list[Any], msg: KafkaMessage) -> None:
        for (topic, partition), records in partition_slices(msg).items():
            work = await asyncio.to_thread(sla.decide, topic, partition, records)
            if work.next_offset is not None:
                await asyncio.to_thread(sla.commit, work)

    rule = sla.policies.escalation.to_head_after

    def escalate_after(breached_due: datetime) -> datetime:
        return sla.calendar.due(breached_due, rule.parsed, rule.time)

    async def apply(conn: Any, record: Any) -> None:
        if not concerns(record, OWN_EVENT_TYPES):
            return
        message = contract.case_event_adapter.validate_json(record.value or b"")
        await apply_timers(conn, message, escalate_after)

    async def publish_dead_letter(letter: contract.DeadLetter) -> None:
        await publish(broker, settings, letter)

    @batch_subscriber(broker, settings, topics.FEEDBACK_EVENTS, TIMERS_GROUP)
    async def on_clock_events(body: list[Any], msg: KafkaMessage) -> None:
        for records in partition_slices(msg).values():
            await kafka_positions.apply_slice(pool, TIMERS, records, apply, publish_dead_letter)


async def schedule_forever(sla: SlaService, idle_s: float = 0.2) -> None:
    """Fire what is due; look again at once while there is more, else after `idle_s`."""
    while True:
        try:
            fired = await asyncio.to_thread(sla.fire_due)
        except Exception:
            log.exception("the sla scheduler failed; retrying")
            fired = 0
        if not fired:
            await asyncio.sleep(idle_s)
