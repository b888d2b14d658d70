"""Exactly-once effects for consumers that write plain tables (not the event store).

The consumer writes its result and the Kafka position it consumed in one PostgreSQL
transaction; a redelivered record at or below the stored position is skipped. A record
that can never be applied becomes a dead letter in that same transaction (see
`apply_slice`), so one bad record never stops the partition.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from contracts.events import DeadLetter
from services.common import deadletters
from services.common.metrics import count_dead_letters

log = logging.getLogger(__name__)

# Applies one consumer record inside the slice's transaction.
ApplyRecord = Callable[[AsyncConnection[Any], Any], Awaitable[None]]
# Applies a whole slice's records at once (the fast path; `ApplyRecord` isolates failures).
ApplyRecords = Callable[[AsyncConnection[Any], list[Any]], Awaitable[None]]
# Puts a dead letter on the bus, raising unless Kafka acknowledged it.
PublishDeadLetter = Callable[[DeadLetter], Awaitable[None]]

SCHEMA = [
    """
    CREATE TABLE IF NOT EXISTS consumer_positions (
        consumer text NOT NULL,
        topic text NOT NULL,
        partition integer NOT NULL,
        next_offset bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (consumer, topic, partition)
    )
    """
]


def by_partition(records: Sequence[Any]) -> dict[tuple[str, int], list[Any]]:
    """Group consumer records by (topic, partition), keeping offset order."""
    groups: dict[tuple[str, int], list[Any]] = defaultdict(list)
    for record in records:
        groups[(record.topic, record.partition)].append(record)
    for group in groups.values():
        group.sort(key=lambda r: r.offset)
    return dict(groups)


async def claim_unseen(
    conn: AsyncConnection[Any], consumer: str, topic: str, partition: int, records: list[Any]
) -> list[Any]:
    """Lock this partition's position for the transaction and return the records after it."""
    # One statement when the position exists (every slice but a partition's first).
    select = (
        "SELECT next_offset FROM consumer_positions "
        "WHERE consumer = %s AND topic = %s AND partition = %s FOR UPDATE"
    )
    cursor = await conn.execute(select, (consumer, topic, partition))
    row = await cursor.fetchone()
    if row is None:
        await conn.execute(
            "INSERT INTO consumer_positions (consumer, topic, partition, next_offset) "
            "VALUES (%s, %s, %s, 0) ON CONFLICT DO NOTHING",
            (consumer, topic, partition),
        )
        cursor = await conn.execute(select, (consumer, topic, partition))
        row = await cursor.fetchone()
    next_offset = int(row[0]) if row else 0
    return [r for r in records if r.offset >= next_offset]


async def resume_offset(
    conn: AsyncConnection[Any], consumers: Sequence[str], topic: str, partition: int
) -> int:
    """Where the first of `consumers` to fall behind must read this partition from: the
    least of their stored positions (0 for one that has none yet)."""
    cursor = await conn.execute(
        "SELECT consumer, next_offset FROM consumer_positions "
        "WHERE consumer = ANY(%s) AND topic = %s AND partition = %s",
        (list(consumers), topic, partition),
    )
    stored = dict(await cursor.fetchall())
    return min(int(stored.get(name, 0)) for name in consumers)


async def advance(
    conn: AsyncConnection[Any], consumer: str, topic: str, partition: int, next_offset: int
) -> None:
    await conn.execute(
        "UPDATE consumer_positions SET next_offset = %s, updated_at = now() "
        "WHERE consumer = %s AND topic = %s AND partition = %s",
        (next_offset, consumer, topic, partition),
    )


async def apply_slice(
    pool: AsyncConnectionPool,
    consumer: str,
    records: list[Any],
    apply: ApplyRecord,
    publish: PublishDeadLetter,
    *,
    apply_all: ApplyRecords | None = None,
) -> int:
    """Apply one partition slice exactly once; returns how many records were applied.

    The whole slice goes in one transaction. When a record fails for a reason a retry
    cannot fix (`deadletters.is_permanent`), the slice is applied again with a savepoint
    per record: each failing record is kept as a dead letter in the transaction that moves
    the position past it, published before that transaction commits (at least once; the
    id is fixed per record), and the rest are applied. Transient failures raise, and the
    batch is redelivered.
    """
    try:
        async with pool.connection() as conn, conn.transaction():
            return await _apply_unseen(conn, consumer, records, apply, apply_all)
    except Exception as error:
        if not deadletters.is_permanent(error):
            raise
        first = records[0]
        log.warning(
            "%s: a record of %s/%s from offset %s cannot be applied (%s); one by one now",
            consumer,
            first.topic,
            first.partition,
            first.offset,
            deadletters.describe(error)[:300],
        )
    return await _isolate(pool, consumer, records, apply, publish)


@dataclass(frozen=True)
class SliceConsumer:
    """One exactly-once consumer of a topic: its position's name and how it applies records
    (`apply` one at a time, `apply_all` a whole slice when it can)."""

    name: str
    apply: ApplyRecord
    apply_all: ApplyRecords | None = None


async def apply_slice_together(
    pool: AsyncConnectionPool,
    consumers: Sequence[SliceConsumer],
    records: list[Any],
    publish: PublishDeadLetter,
) -> None:
    """Several consumers of one subscription apply a slice in one transaction, each past
    its own position: one fetch, one transaction and one commit instead of one per consumer.

    When a record cannot be applied by one of them (`deadletters.is_permanent`), each
    consumer applies the slice on its own (`apply_slice`), so only the consumer that cannot
    apply a record keeps it as a dead letter; positions make the repeat harmless."""
    if len(consumers) == 1:
        only = consumers[0]
        await apply_slice(pool, only.name, records, only.apply, publish, apply_all=only.apply_all)
        return
    topic, partition = records[0].topic, records[0].partition
    try:
        async with pool.connection() as conn, conn.transaction():
            for consumer in consumers:
                await _apply_unseen(
                    conn, consumer.name, records, consumer.apply, consumer.apply_all
                )
        return
    except Exception as error:
        if not deadletters.is_permanent(error):
            raise
        log.warning(
            "%s: a record of %s/%s cannot be applied together (%s); each consumer on its own",
            "+".join(c.name for c in consumers),
            topic,
            partition,
            deadletters.describe(error)[:300],
        )
    for consumer in consumers:
        await apply_slice(
            pool, consumer.name, records, consumer.apply, publish, apply_all=consumer.apply_all
        )


async def _apply_unseen(
    conn: AsyncConnection[Any],
    consumer: str,
    records: list[Any],
    apply: ApplyRecord,
    apply_all: ApplyRecords | None,
) -> int:
    """The records of a slice past the consumer's position, in the caller's transaction,
    and its position past them; returns how many."""
    topic, partition = records[0].topic, records[0].partition
    unseen = await claim_unseen(conn, consumer, topic, partition, records)
    if not unseen:
        return 0
    if apply_all is not None:
        await apply_all(conn, unseen)
    else:
        for record in unseen:
            await apply(conn, record)
    await advance(conn, consumer, topic, partition, unseen[-1].offset + 1)
    return len(unseen)


async def _isolate(
    pool: AsyncConnectionPool,
    consumer: str,
    records: list[Any],
    apply: ApplyRecord,
    publish: PublishDeadLetter,
) -> int:
    """The slice with a savepoint per record: a record that can never be applied becomes a
    dead letter, the rest are applied."""
    topic, partition = records[0].topic, records[0].partition
    applied = 0
    letters: list[DeadLetter] = []
    recorded = 0
    async with pool.connection() as conn, conn.transaction():
        unseen = await claim_unseen(conn, consumer, topic, partition, records)
        if not unseen:
            return 0
        for record in unseen:
            try:
                # A savepoint: a failure undoes this record's writes only.
                async with conn.transaction():
                    await apply(conn, record)
                applied += 1
            except Exception as error:
                if not deadletters.is_permanent(error):
                    raise
                letter = deadletters.of_record(consumer, record, deadletters.describe(error))
                log.warning(
                    "dead letter %s/%s@%s (%s): %s",
                    topic,
                    partition,
                    record.offset,
                    consumer,
                    letter.reason[:300],
                )
                recorded += await deadletters.keep(conn, letter, record.value or b"")
                letters.append(letter)
        await advance(conn, consumer, topic, partition, unseen[-1].offset + 1)
        # On the bus before the position passes them; a failure rolls all back.
        for letter in letters:
            await publish(letter)
    count_dead_letters(consumer, recorded)
    return applied
