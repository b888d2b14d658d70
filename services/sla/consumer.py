"""The sla service's consumers of `feedback.events` and its scheduler loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from psycopg_pool import AsyncConnectionPool

from contracts import events as contract
from contracts import topics
from services.common import kafka_positions
from services.common.bus import (
    batch_subscriber,
    concerns,
    consume_exactly_once,
    partition_slices,
)
from services.common.settings import Settings
from services.sla.service import (
    GROUP,
    OWN_EVENT_TYPES,
    TIMERS,
    SlaService,
    fold_timers,
    write_timers,
)

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

    apply, apply_all = timer_appliers(escalate_after)
    timers = kafka_positions.SliceConsumer(TIMERS, apply, apply_all)
    consume_exactly_once(broker, settings, pool, topics.FEEDBACK_EVENTS, TIMERS_GROUP, [timers])


def timer_appliers(
    escalate_after: Callable[[datetime], datetime],
) -> tuple[kafka_positions.ApplyRecord, kafka_positions.ApplyRecords]:
    """The timers' `apply_slice` pair: the whole slice (the fast path) and one record (the
    path that isolates a poison record as a dead letter)."""

    def clock_events(records: list[Any]) -> list[contract.CaseEvent]:
        # Other case events are passed over by their header, unread.
        return [
            contract.case_event_adapter.validate_json(record.value or b"")
            for record in records
            if concerns(record, OWN_EVENT_TYPES)
        ]

    async def apply_all(conn: Any, records: list[Any]) -> None:
        # The slice folded in memory, then at most two statements (see `fold_timers`).
        await write_timers(conn, fold_timers(clock_events(records), escalate_after))

    async def apply(conn: Any, record: Any) -> None:
        await apply_all(conn, [record])

    return apply, apply_all


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
