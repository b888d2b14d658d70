"""At-least-once delivery, exactly-once effects: redelivered and replayed messages change
nothing; a consumer killed mid-stream resumes without losing or repeating anything."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import psycopg
import pytest
from aiokafka import AIOKafkaProducer

from contracts import topics
from contracts.events import FeedbackReceived
from services.common.settings import Settings
from tests.conftest import (
    case_counts,
    committed_offsets,
    facts_per_case,
    free_port,
    messages_in,
    rewind_group,
    serve,
    wait_for,
    web_form,
)

pytestmark = pytest.mark.integration


def registrations(settings: Settings) -> list[tuple]:
    with psycopg.connect(settings.database_url) as conn:
        return conn.execute(
            "SELECT feedback_number, customer_ref, description, last_version FROM registrations ORDER BY 1"
        ).fetchall()


async def test_redelivered_and_replayed_messages_create_nothing_new(settings: Settings) -> None:
    sent = 20
    async with serve(settings) as running:
        for i in range(sent):
            response = await running.client.post(
                "/v1/feedback", json=web_form(f"第{i}条反馈：洗衣机异响")
            )
            assert response.status_code == 202
        await wait_for(
            lambda: len(registrations(settings)) == sent, timeout=30, what="all registered"
        )
        await wait_for(
            lambda: committed_offsets(settings, "routing", topics.FEEDBACK_RECEIVED),
            timeout=30,
            what="routing committed",
        )
        # The snapshot below is of a settled state: every stored event relayed and projected
        # (the clocks' events follow registration by a moment).
        await wait_for(lambda: _settled(settings), timeout=30, what="everything projected")
    before = registrations(settings)
    events_before = case_counts(settings)
    assert events_before[1] == sent

    # Redelivery: both consumer groups read their topics again from offset 0, and the relay
    # publishes every stored event a second time (as after a crash before saving its place).
    await rewind_group(settings, "routing", topics.FEEDBACK_RECEIVED)
    await rewind_group(settings, "projections", topics.FEEDBACK_EVENTS)
    with psycopg.connect(settings.database_url) as conn:
        conn.execute("UPDATE outbox_positions SET last_notification_id = 0")
    assert await committed_offsets(settings, "routing", topics.FEEDBACK_RECEIVED) == 0

    async with serve(settings):
        received = await messages_in(settings, topics.FEEDBACK_RECEIVED)
        await wait_for(
            lambda: messages_in(settings, topics.FEEDBACK_EVENTS),
            timeout=30,
            what="events republished",
        )
        events_total = events_before[0]
        await wait_for(
            lambda: _eq(messages_in(settings, topics.FEEDBACK_EVENTS), 2 * events_total),
            timeout=30,
            what="replay",
        )
        await wait_for(
            lambda: _eq(committed_offsets(settings, "routing", topics.FEEDBACK_RECEIVED), received),
            timeout=30,
            what="routing re-consumed everything",
        )
        await wait_for(
            lambda: _eq(
                committed_offsets(settings, "projections", topics.FEEDBACK_EVENTS), 2 * events_total
            ),
            timeout=30,
            what="projections re-consumed everything",
        )
    assert case_counts(settings) == events_before
    assert registrations(settings) == before


async def _settled(settings: Settings) -> bool:
    """Every stored event relayed and projected, and routing's offsets committed."""
    stored = case_counts(settings)[0]
    return (
        await messages_in(settings, topics.FEEDBACK_EVENTS) == stored
        and await committed_offsets(settings, "projections", topics.FEEDBACK_EVENTS) == stored
        and await committed_offsets(settings, "routing", topics.FEEDBACK_RECEIVED) > 0
    )


async def _eq(value_coroutine, expected: int) -> bool:
    return (await value_coroutine) == expected


def received_message(i: int) -> FeedbackReceived:
    now = datetime.now(UTC)
    return FeedbackReceived(
        feedback_id=uuid.uuid4(),
        feedback_number=f"F20240520-{i + 1:04d}",
        received_at=now,
        registered_at=now,
        channel="web_form",
        customer_ref=f"客户-2024-{i + 1:04d}",
        description=f"第{i}条：数据同步频繁失败",
        receiver="web_form",
    )


async def test_routing_killed_mid_stream_resumes_exactly_once(settings: Settings) -> None:
    total = 1000
    from services.common.bus import ensure_topics, platform_topics

    await ensure_topics(settings, platform_topics(settings))
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        topic = settings.topic(topics.FEEDBACK_RECEIVED)
        sends = [
            await producer.send(topic, m.model_dump_json().encode(), key=m.key())
            for m in (received_message(i) for i in range(total))
        ]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()

    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "FEEDBACK_TOPIC_PREFIX": settings.topic_prefix,
        "FEEDBACK_PII_KEY": settings.pii_key.get_secret_value(),
        "FEEDBACK_AUTH_TOKEN_KEY": settings.auth_token_key.get_secret_value(),
        "FEEDBACK_CONSUMER_BATCH_SIZE": "10",
    }
    command = [sys.executable, "-m", "feedback_cli.main", "run", "routing"]

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([*command, "--port", str(free_port())], env=env)

    first = start()
    try:
        await wait_for(
            lambda: case_counts(settings)[1] >= 100,
            timeout=60,
            what="routing under way",
            interval=0.005,
        )
        first.send_signal(signal.SIGKILL)  # no clean shutdown, no final offset commit
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    at_kill = case_counts(settings)[1]
    assert 100 <= at_kill < total, f"killed too late to prove anything ({at_kill})"

    second = start()
    try:
        await wait_for(lambda: case_counts(settings)[1] == total, timeout=90, what="all cases")
        await wait_for(
            lambda: _eq(committed_offsets(settings, "routing", topics.FEEDBACK_RECEIVED), total),
            timeout=60,
            what="offsets committed",
        )
    finally:
        second.terminate()
        second.wait(timeout=30)
    facts = facts_per_case(settings)
    assert facts["Registered"] == facts["Classified"] == total
    assert facts["most_of_one_kind"] == 1  # no case recorded any fact twice
    with psycopg.connect(settings.database_url) as conn:
        tracked = conn.execute(
            "SELECT sum(notification_id) FROM cases_tracking WHERE application_name LIKE 'routing@%%'"
        ).fetchone()
    assert tracked is not None and tracked[0] == total  # the stored position is the next offset
