"""The routing consumer (group `routing`): `FeedbackReceived` -> a classified, routed case.

Records come in batches; each partition's slice is written in one transaction together
with the partition position it reaches, and records below the recorded position are
skipped. Offsets are committed to Kafka only after that transaction, so a crash anywhere
redelivers, and the redelivery changes nothing.

A record that fails for a reason a retry cannot fix (`deadletters.is_permanent`) is set
aside: the slice is processed again one record at a time, and the record at fault becomes
a dead letter (table, topic, metric) that the position moves past. One bad record never
stops the partition.

Correspondence about a case routing has not stored yet (the customer wrote right after
registering, routing is behind) is retried for PARK_AFTER_S, then parked in
`routing_parked_correspondence` and the partition moves on; `retry_parked_forever` applies
parked messages once their case is stored (in order, per case), and dead-letters those
whose case has not come after DEAD_LETTER_PARKED_AFTER_S.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine
from types import SimpleNamespace
from typing import Any
from uuid import UUID

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

# Correspondence whose case is not stored yet: retried this long (every RETRY_EVERY_S), in
# place, then parked so that the partition moves on; parked messages are tried again every
# RETRY_PARKED_EVERY_S, and dead-lettered (with the reason) after the long bound.
PARK_AFTER_S = 3.0
RETRY_EVERY_S = 0.5
RETRY_PARKED_EVERY_S = 2.0
DEAD_LETTER_PARKED_AFTER_S = 24 * 3600.0

PARKED_SCHEMA = [
    """
    CREATE TABLE IF NOT EXISTS routing_parked_correspondence (
        park_id uuid PRIMARY KEY,
        feedback_id uuid,
        topic text NOT NULL,
        partition integer NOT NULL,
        "offset" bigint NOT NULL,
        payload bytea NOT NULL,
        reason text NOT NULL,
        parked_at timestamptz NOT NULL DEFAULT now(),
        attempts integer NOT NULL DEFAULT 0,
        last_attempt_at timestamptz
    )
    """,
    "CREATE INDEX IF NOT EXISTS routing_parked_correspondence_feedback "
    "ON routing_parked_correspondence (feedback_id)",
]


def _permanent(error: BaseException) -> bool:
    # A case refusing what a message asks of it refuses it on every redelivery too.
    return deadletters.is_permanent(error) or isinstance(error, CaseError)


def _feedback_id(record: Any) -> UUID | None:
    """The case a correspondence record names, read without validating the rest."""
    try:
        return UUID(str(json.loads(record.value or b"")["feedback_id"]))
    except (ValueError, TypeError, KeyError, RecursionError):
        return None


def register_routing(
    broker: KafkaBroker, settings: Settings, routing: RoutingService
) -> Callable[[], Coroutine[Any, Any, None]]:
    """Subscribe routing's consumers; returns the loop that retries parked correspondence
    (the caller runs it as a task)."""
    pool = routing.worklist.pool

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

    def parked_cases() -> set[UUID]:
        with pool.connection() as conn:
            rows = conn.execute(
                "SELECT DISTINCT feedback_id FROM routing_parked_correspondence "
                "WHERE feedback_id IS NOT NULL"
            ).fetchall()
        return {row[0] for row in rows}

    def park(record: Any, reason: str) -> Slice | None:
        """Keep the record aside; the slice that moves the position past it (None when the
        position is past it already: a redelivery). The park id is fixed by where the
        record was read, so a repeat after a crash parks nothing twice."""
        if record.offset < routing.store.next_offset(
            CORRESPONDENCE_GROUP, record.topic, record.partition
        ):
            return None
        park_id = deadletters.dead_letter_id(
            CORRESPONDENCE_GROUP, record.topic, record.partition, record.offset
        )
        with pool.connection() as conn:
            conn.execute(
                "INSERT INTO routing_parked_correspondence "
                '(park_id, feedback_id, topic, partition, "offset", payload, reason) '
                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (park_id) DO NOTHING",
                (
                    park_id,
                    _feedback_id(record),
                    record.topic,
                    record.partition,
                    record.offset,
                    record.value or b"",
                    reason,
                ),
            )
        return Slice(
            CORRESPONDENCE_GROUP, record.topic, record.partition, next_offset=record.offset + 1
        )

    async def park_and_move_on(record: Any, reason: str) -> None:
        work = await asyncio.to_thread(park, record, reason)
        if work is not None:
            log.warning(
                "correspondence %s/%s@%s parked (%s); the partition goes on",
                record.topic,
                record.partition,
                record.offset,
                reason,
            )
            await finish(work)

    async def correspond(topic: str, partition: int, records: list[Any]) -> None:
        waiting = await asyncio.to_thread(parked_cases)
        if not waiting:
            # The case is usually a moment behind (routing is busy): wait for it here a
            # little, in order, but never block the partition for longer than PARK_AFTER_S.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + PARK_AFTER_S
            while True:
                try:
                    await process(
                        CORRESPONDENCE_GROUP,
                        routing.prepare_correspondence,
                        topic,
                        partition,
                        records,
                    )
                    return
                except CaseNotStoredYet:
                    if loop.time() >= deadline:
                        break
                    await asyncio.sleep(RETRY_EVERY_S)
        # One at a time: what can be applied is, what cannot yet is parked. A case with
        # parked messages gets the later ones parked behind them, so it sees them in order.
        for record in records:
            feedback_id = _feedback_id(record)
            if feedback_id is not None and feedback_id in waiting:
                await park_and_move_on(record, "behind earlier parked correspondence of its case")
                continue
            try:
                await process(
                    CORRESPONDENCE_GROUP, routing.prepare_correspondence, topic, partition, [record]
                )
            except CaseNotStoredYet as error:
                await park_and_move_on(record, f"case of feedback {error} not stored yet")
                if feedback_id is not None:
                    waiting.add(feedback_id)

    def parked_rows(limit: int) -> list[Any]:
        with pool.connection() as conn:
            return conn.execute(
                'SELECT park_id, feedback_id, topic, partition, "offset", payload, '
                "parked_at < now() - make_interval(secs => %s) "
                'FROM routing_parked_correspondence ORDER BY topic, partition, "offset" LIMIT %s',
                (DEAD_LETTER_PARKED_AFTER_S, limit),
            ).fetchall()

    def unpark(park_id: UUID, applied: bool) -> None:
        with pool.connection() as conn:
            if applied:
                conn.execute(
                    "DELETE FROM routing_parked_correspondence WHERE park_id = %s", (park_id,)
                )
            else:
                conn.execute(
                    "UPDATE routing_parked_correspondence SET attempts = attempts + 1, "
                    "last_attempt_at = now() WHERE park_id = %s",
                    (park_id,),
                )

    async def retry_parked(limit: int = 200) -> int:
        """Apply parked correspondence whose case is stored now; returns how many left the
        park (applied or dead-lettered)."""
        done = 0
        blocked: set[UUID | None] = set()
        for (
            park_id,
            feedback_id,
            topic,
            partition,
            offset,
            payload,
            expired,
        ) in await asyncio.to_thread(parked_rows, limit):
            if feedback_id in blocked and feedback_id is not None:
                continue  # an earlier message of its case is still parked: keep the order
            record = SimpleNamespace(
                topic=topic, partition=partition, offset=offset, value=bytes(payload)
            )
            # A position of its own per parked record (not the partition's, which has moved
            # on): the case's events and this position commit together, so a crash before
            # the park row is removed applies nothing twice.
            own_position = f"{topic}#parked@{offset}"
            try:
                work = await asyncio.to_thread(
                    routing.prepare_correspondence, own_position, partition, [record]
                )
            except CaseNotStoredYet:
                blocked.add(feedback_id)
                if not expired:
                    await asyncio.to_thread(unpark, park_id, False)
                    continue
                reason = (
                    f"the case was not stored {DEAD_LETTER_PARKED_AFTER_S:.0f} s after its "
                    "correspondence arrived"
                )
                work = routing.set_aside(
                    CORRESPONDENCE_GROUP, record, deadletters.Unapplicable(reason)
                )
                work.next_offset = None  # the partition's position is past it already
            except Exception as error:
                if not _permanent(error):
                    raise
                work = routing.set_aside(CORRESPONDENCE_GROUP, record, error)
                work.next_offset = None
            await finish(work)
            await asyncio.to_thread(unpark, park_id, True)
            done += 1
        return done

    async def retry_parked_forever() -> None:
        while True:
            try:
                applied = await retry_parked()
                if applied:
                    log.info("%d parked correspondence message(s) applied", applied)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("retrying parked correspondence failed; trying again")
            await asyncio.sleep(RETRY_PARKED_EVERY_S)

    @batch_subscriber(broker, settings, topics.CORRESPONDENCE, CORRESPONDENCE_GROUP)
    async def on_correspondence(body: list[Any], msg: KafkaMessage) -> None:
        for (topic, partition), slice_records in partition_slices(msg).items():
            await correspond(topic, partition, slice_records)

    return retry_parked_forever
