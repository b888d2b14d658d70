"""No consumer wedges on a message it cannot apply: the message becomes a dead letter (table,
topic, metric) and the partition moves on; a transient failure is still redelivered."""

from __future__ import annotations

import asyncio
import base64
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone

import httpx
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import REGISTRY
from psycopg.rows import dict_row

from contracts import topics
from contracts.events import (
    CaseRegistered,
    CustomerCorrespondence,
    DeadLetter,
    FeedbackReceived,
    Registration,
)
from services.common.bus import ensure_topics, platform_topics
from services.common.deadletters import unseal
from services.common.settings import Settings
from tests.conftest import committed_offsets, rewind_group, serve, wait_for

pytestmark = pytest.mark.integration

# 9999-12-31 at -12:00 is 10000-01-01 in UTC: PostgreSQL stores it, no Python reader loads it.
YEAR_10000 = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-12)))
PROJECTIONS = "projections.registrations"


def registration(number: str, **changes: object) -> Registration:
    now = datetime.now(UTC)
    fields: dict[str, object] = {
        "feedback_number": number,
        "received_at": now,
        "registered_at": now,
        "channel": "web_form",
        "customer_ref": "客户-2024-0173",
        "description": "打印机无法连接WiFi",
        "receiver": "web_form",
        **changes,
    }
    return Registration.model_validate(fields)


def case_registered(number: str, position: int, **changes: object) -> CaseRegistered:
    return CaseRegistered(
        feedback_id=uuid.uuid4(),
        feedback_number=number,
        version=1,
        position=position,
        occurred_at=datetime.now(UTC),
        registration=registration(number, **changes),
    )


def feedback_received(number: str, **changes: object) -> FeedbackReceived:
    return FeedbackReceived(
        feedback_id=uuid.uuid4(),
        **registration(number, **changes).model_dump(),
    )


async def send(settings: Settings, topic: str, bodies: list[bytes]) -> None:
    """To partition 0 of the topic, in this order: what follows a bad record is behind it."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        for body in bodies:
            await producer.send_and_wait(settings.topic(topic), body, partition=0)
    finally:
        await producer.stop()


async def dead_letters_on_topic(settings: Settings) -> list[DeadLetter]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    try:
        name = settings.topic(topics.DEADLETTER)
        partitions = [TopicPartition(name, p) for p in range(settings.topic_partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        found: list[DeadLetter] = []
        while [p for p in partitions if await consumer.position(p) < ends[p]]:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                found += [DeadLetter.model_validate_json(r.value) for r in records]
        return found
    finally:
        await consumer.stop()


def dead_letter_rows(settings: Settings, source: str) -> list[dict]:
    with psycopg.connect(settings.database_url, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT dead_letter_id, reason, payload, metadata FROM deadletters "
            "WHERE source = %s ORDER BY (metadata->>'offset')::int",
            (source,),
        ).fetchall()


def position(settings: Settings, consumer: str, topic: str) -> int:
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute(
            "SELECT next_offset FROM consumer_positions WHERE consumer = %s AND topic = %s "
            "AND partition = 0",
            (consumer, settings.topic(topic)),
        ).fetchone()
    return int(row[0]) if row else 0


def counted(source: str) -> float:
    """The dead-letter counter of this process (the services run in it): read before a
    service starts, since its consumers may set records aside before it answers."""
    return REGISTRY.get_sample_value("feedback_dead_letters_total", {"source": source}) or 0.0


async def dead_letter_count(client: httpx.AsyncClient, source: str) -> float:
    """The counter as `GET /metrics` shows it."""
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = re.search(
        rf'^feedback_dead_letters_total\{{source="{re.escape(source)}"\}} (\S+)$',
        response.text,
        re.MULTILINE,
    )
    return float(found.group(1)) if found else 0.0


async def readable(client: httpx.AsyncClient, number: str) -> bool:
    return (await client.get(f"/v1/feedback/{number}")).status_code == 200


async def test_poison_case_events_become_dead_letters_and_the_partition_moves_on(
    settings: Settings,
) -> None:
    await ensure_topics(settings, platform_topics(settings))
    nul = case_registered("F20240520-0001", 1, description="打印机\u0000无法连接")
    far = case_registered("F20240520-0002", 2, received_at=YEAR_10000)
    garbage = b"\xff\xfe not a case event"
    valid = case_registered("F20240520-0003", 3)
    bodies = [m.model_dump_json().encode() for m in (nul, far)] + [garbage]
    bodies.append(valid.model_dump_json().encode())
    await send(settings, topics.FEEDBACK_EVENTS, bodies)

    before = counted(PROJECTIONS)
    async with serve(settings, services=("projections",)) as running:
        await wait_for(
            lambda: readable(running.client, "F20240520-0003"), timeout=30, what="valid event"
        )
        listed = await running.client.get("/v1/registrations")
        assert listed.status_code == 200
        assert [r["feedback_number"] for r in listed.json()["items"]] == ["F20240520-0003"]
        for number in ("F20240520-0001", "F20240520-0002"):
            assert (await running.client.get(f"/v1/feedback/{number}")).status_code == 404
        # Counted once the transaction that keeps them has committed.
        await wait_for(lambda: counted(PROJECTIONS) == before + 3, timeout=5, what="counted")
        assert await dead_letter_count(running.client, PROJECTIONS) == before + 3
        await wait_for(
            lambda: _equals(committed_offsets(settings, "projections", topics.FEEDBACK_EVENTS), 4),
            timeout=30,
            what="projections offsets committed past the dead letters",
        )
    assert position(settings, PROJECTIONS, topics.FEEDBACK_EVENTS) == 4

    rows = dead_letter_rows(settings, PROJECTIONS)
    assert [r["metadata"]["offset"] for r in rows] == ["0", "1", "2"]
    # Kept sealed (they may hold anything a sender sent); opened with the platform's key.
    assert not any(bodies[0][:40] in bytes(r["payload"]) for r in rows)
    assert [unseal(r["dead_letter_id"], bytes(r["payload"])) for r in rows] == bodies[:3]
    assert "NUL" in rows[0]["reason"]
    assert "received_at" in rows[1]["reason"] and "after the year 9000" in rows[1]["reason"]
    assert "ValidationError" in rows[2]["reason"]
    assert all(r["metadata"]["topic"] == settings.topic(topics.FEEDBACK_EVENTS) for r in rows)
    # (Other consumers of feedback.events — callbacks — set the same poison aside too.)
    on_topic = [d for d in await dead_letters_on_topic(settings) if d.source == PROJECTIONS]
    assert {d.dead_letter_id for d in on_topic} == {r["dead_letter_id"] for r in rows}
    assert {d.source_offset for d in on_topic} == {0, 1, 2}
    assert all(d.payload_encoding == "sealed" for d in on_topic)
    undecodable = next(d for d in on_topic if d.source_offset == 2)
    assert undecodable.metadata["payload_encoding"] == "base64"
    opened = unseal(undecodable.dead_letter_id, base64.b64decode(undecodable.payload))  # type: ignore[arg-type]
    assert opened == bodies[2]

    # Redelivery after a crash before the position was stored: Kafka and the stored
    # position both rewound. Nothing is recorded twice; the repeats on the topic keep
    # their ids, so subscribers can drop them.
    await rewind_group(settings, "projections", topics.FEEDBACK_EVENTS)
    with psycopg.connect(settings.database_url) as conn:
        conn.execute("DELETE FROM consumer_positions")
    before = counted(PROJECTIONS)
    async with serve(settings, services=("projections",)) as running:
        await wait_for(
            lambda: position(settings, PROJECTIONS, topics.FEEDBACK_EVENTS) == 4,
            timeout=30,
            what="the slice applied again",
        )
        assert await dead_letter_count(running.client, PROJECTIONS) == before  # none new
        assert await readable(running.client, "F20240520-0003")
    assert dead_letter_rows(settings, PROJECTIONS) == rows
    again = [d for d in await dead_letters_on_topic(settings) if d.source == PROJECTIONS]
    assert {d.dead_letter_id for d in again} == {r["dead_letter_id"] for r in rows}
    with psycopg.connect(settings.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM registrations").fetchone() == (1,)


async def test_a_transient_failure_is_redelivered_not_dead_lettered(settings: Settings) -> None:
    await ensure_topics(settings, platform_topics(settings))
    # Every connection of the service gives up waiting for a lock after 200 ms: while the
    # test holds the registration table, applying fails with LockNotAvailable (transient).
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        name = conn.info.dbname
        conn.execute(f"ALTER DATABASE {name} SET lock_timeout = '200ms'")
    async with serve(settings, services=("projections",)) as running:
        with psycopg.connect(settings.database_url) as holder:
            holder.execute("LOCK TABLE registrations IN ACCESS EXCLUSIVE MODE")
            await send(
                settings,
                topics.FEEDBACK_EVENTS,
                [case_registered("F20240520-0001", 1).model_dump_json().encode()],
            )
            await asyncio.sleep(3)  # several deliveries fail meanwhile
            assert position(settings, PROJECTIONS, topics.FEEDBACK_EVENTS) == 0
            holder.rollback()
        await wait_for(
            lambda: readable(running.client, "F20240520-0001"), timeout=30, what="redelivered"
        )
    assert position(settings, PROJECTIONS, topics.FEEDBACK_EVENTS) == 1
    assert dead_letter_rows(settings, PROJECTIONS) == []


async def test_routing_sets_aside_feedback_it_cannot_store(settings: Settings) -> None:
    await ensure_topics(settings, platform_topics(settings))
    nul = feedback_received("F20240520-0001", description="洗衣机\u0000异响")
    far = feedback_received("F20240520-0002", registered_at=YEAR_10000)
    # Another feedback under the number `nul` holds: the worklist refuses it (unique).
    same_number = feedback_received("F20240520-0001")
    valid = feedback_received("F20240520-0003", description="订单说好三天送达，现在已经第七天了")
    await send(
        settings,
        topics.FEEDBACK_RECEIVED,
        [m.model_dump_json().encode() for m in (nul, far, same_number, valid)],
    )
    # Customers write about the feedback routing set aside, then about the valid one.
    now = datetime.now(UTC)
    letters = [
        CustomerCorrespondence(
            correspondence_id=uuid.uuid4(),
            feedback_id=m.feedback_id,
            feedback_number=m.feedback_number,
            channel="email",
            received_at=now,
            text="补充说明",
        )
        for m in (far, valid)
    ]
    await send(settings, topics.CORRESPONDENCE, [m.model_dump_json().encode() for m in letters])

    routing_before = counted("routing")
    async with serve(settings, services=("routing", "relay", "projections")) as running:

        async def valid_with_correspondence() -> bool:
            got = await running.client.get("/v1/feedback/F20240520-0003")
            return got.status_code == 200 and got.json()["correspondence_count"] == 1

        await wait_for(valid_with_correspondence, timeout=60, what="valid feedback and its mail")
        await wait_for(
            lambda: _equals(committed_offsets(settings, "routing", topics.FEEDBACK_RECEIVED), 4),
            timeout=30,
            what="routing offsets committed past the dead letters",
        )
        await wait_for(
            lambda: len(dead_letter_rows(settings, PROJECTIONS)) == 1,
            timeout=30,
            what="the NUL registration set aside by the read side",
        )
        await wait_for(lambda: counted("routing") == routing_before + 2, timeout=5, what="counted")
        assert await dead_letter_count(running.client, "routing") == routing_before + 2

    # The NUL description is storable in the case store: routing routes it; the read side
    # cannot hold it and sets its registration aside.
    with psycopg.connect(settings.database_url) as conn:
        cases = {
            row[0]
            for row in conn.execute("SELECT DISTINCT originator_id FROM cases_events").fetchall()
        }
    assert cases == {nul.feedback_id, valid.feedback_id}
    (projected,) = dead_letter_rows(settings, PROJECTIONS)
    assert "NUL" in projected["reason"]

    routed = dead_letter_rows(settings, "routing")
    assert [r["metadata"]["offset"] for r in routed] == ["1", "2"]
    assert "after the year 9000" in routed[0]["reason"]
    assert routed[0]["metadata"]["feedback_id"] == str(far.feedback_id)
    assert "UniqueViolation" in routed[1]["reason"]
    (mail,) = dead_letter_rows(settings, "routing-correspondence")
    assert "set aside" in mail["reason"] and mail["metadata"]["offset"] == "0"
    ours = {"routing", "routing-correspondence", PROJECTIONS}
    on_topic = {d.dead_letter_id for d in await dead_letters_on_topic(settings) if d.source in ours}
    assert {r["dead_letter_id"] for r in [*routed, mail, projected]} == on_topic


async def _equals(value, expected: int) -> bool:
    return (await value) == expected
