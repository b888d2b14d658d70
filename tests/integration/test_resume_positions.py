"""A consumer that joins a subscription later reads what it has not applied yet (issue #13,
the review of the callbacks moving into the projections' group): the group's committed
Kafka offset is past its stored position, and reading goes back to that position instead
of passing over the records in between. On real Kafka and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from aiokafka import AIOKafkaProducer

from services.common.bus import consume_exactly_once, ensure_topics, make_broker
from services.common.kafka_positions import SliceConsumer
from services.common.settings import Settings
from tests.conftest import committed_offsets, wait_for

pytestmark = pytest.mark.integration
TOPIC = "resume.test"
GROUP = "resume-test"
RECORDS = 40


def _consumer(name: str) -> SliceConsumer:
    async def apply(conn: Any, record: Any) -> None:
        await conn.execute(
            "INSERT INTO applied (consumer, partition, record_offset) VALUES (%s, %s, %s)",
            (name, record.partition, record.offset),
        )

    return SliceConsumer(name, apply)


def _applied(settings: Settings) -> dict[str, list[tuple[int, int]]]:
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT consumer, partition, record_offset FROM applied ORDER BY 1, 2, 3"
        ).fetchall()
    found: dict[str, list[tuple[int, int]]] = {}
    for consumer, partition, offset in rows:
        found.setdefault(consumer, []).append((partition, offset))
    return found


async def _run_until(settings: Settings, names: list[str], done: Any, what: str) -> None:
    broker = make_broker(settings, client_id="resume-test")
    from psycopg_pool import AsyncConnectionPool

    pool = AsyncConnectionPool(settings.database_url, open=False)
    await pool.open()
    consume_exactly_once(broker, settings, pool, TOPIC, GROUP, [_consumer(name) for name in names])
    await broker.start()
    try:
        await wait_for(done, timeout=60, what=what)
    finally:
        await broker.stop()
        await pool.close()


async def test_a_consumer_joining_the_group_reads_from_its_own_position(
    settings: Settings,
) -> None:
    with psycopg.connect(settings.database_url) as conn:
        conn.execute(
            "CREATE TABLE consumer_positions (consumer text NOT NULL, topic text NOT NULL, "
            "partition integer NOT NULL, next_offset bigint NOT NULL, "
            "updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (consumer, topic, partition))"
        )
        conn.execute(
            "CREATE TABLE applied (consumer text, partition integer, record_offset bigint)"
        )
    await ensure_topics(settings, [settings.topic(TOPIC)])
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        for i in range(RECORDS):
            await producer.send_and_wait(settings.topic(TOPIC), b"{}", key=str(i).encode())
    finally:
        await producer.stop()

    # The group, with one consumer, reads everything and commits its Kafka offsets.
    async def first_done() -> bool:
        return len(_applied(settings).get("first", [])) == RECORDS and (
            await committed_offsets(settings, GROUP, TOPIC) == RECORDS
        )

    await _run_until(settings, ["first"], first_done, "the first consumer read all")

    # A second consumer joins the same subscription: the group resumes at the end, the
    # newcomer's position is 0; it must get every record, the first none again.
    async def both_done() -> bool:
        return len(_applied(settings).get("second", [])) == RECORDS

    await _run_until(settings, ["first", "second"], both_done, "the newcomer read all")
    await asyncio.sleep(0.5)
    applied = _applied(settings)
    print(
        f"records {RECORDS}: first applied {len(applied['first'])}, "
        f"second applied {len(applied['second'])}"
    )
    assert applied["second"] == applied["first"]
    assert len(set(applied["first"])) == RECORDS  # each once
