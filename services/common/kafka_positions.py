"""Exactly-once effects for consumers that write plain tables (not the event store).

The consumer writes its result and the Kafka position it consumed in one PostgreSQL
transaction; a redelivered record at or below the stored position is skipped.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection

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
    await conn.execute(
        "INSERT INTO consumer_positions (consumer, topic, partition, next_offset) "
        "VALUES (%s, %s, %s, 0) ON CONFLICT DO NOTHING",
        (consumer, topic, partition),
    )
    cursor = await conn.execute(
        "SELECT next_offset FROM consumer_positions "
        "WHERE consumer = %s AND topic = %s AND partition = %s FOR UPDATE",
        (consumer, topic, partition),
    )
    row = await cursor.fetchone()
    next_offset = int(row[0]) if row else 0
    return [r for r in records if r.offset >= next_offset]


async def advance(
    conn: AsyncConnection[Any], consumer: str, topic: str, partition: int, next_offset: int
) -> None:
    await conn.execute(
        "UPDATE consumer_positions SET next_offset = %s, updated_at = now() "
        "WHERE consumer = %s AND topic = %s AND partition = %s",
        (next_offset, consumer, topic, partition),
    )
