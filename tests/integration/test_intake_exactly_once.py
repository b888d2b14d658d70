"""Intake's exactly-once windows (#13): a publish whose acknowledgement timed out may still
reach Kafka, so a retry with the same Idempotency-Key gets the same id and number; a
registry insert that fails after Kafka acknowledged is repaired by `reconcile`."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from contracts import topics
from contracts.events import FeedbackReceived
from services.common.settings import Settings
from tests.conftest import serve, web_form

pytestmark = pytest.mark.integration


async def received_on_topic(settings: Settings) -> list[FeedbackReceived]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    try:
        name = settings.topic(topics.FEEDBACK_RECEIVED)
        partitions = [TopicPartition(name, p) for p in range(settings.topic_partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        found: list[FeedbackReceived] = []
        while [p for p in partitions if await consumer.position(p) < ends[p]]:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                found += [FeedbackReceived.model_validate_json(r.value) for r in records]
        return found
    finally:
        await consumer.stop()


def registry_numbers(settings: Settings) -> list[str]:
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute("SELECT feedback_number FROM intake_registry").fetchall()
    return [str(r[0]) for r in rows]


async def test_a_retry_after_an_unacknowledged_publish_keeps_the_id_and_number(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings.model_copy(update={"publish_timeout_s": 2.0})
    async with serve(settings, ("intake",)) as running:
        broker = running.platform.broker
        real_publish = broker.publish
        lost: list[asyncio.Future[Any]] = []

        async def sent_but_never_acknowledged(*args: Any, **kwargs: Any) -> Any:
            # The message goes to Kafka; its acknowledgement never arrives in time, as when
            # the broker is slow: intake cancels its wait and answers 503.
            await real_publish(*args, **kwargs)
            lost.append(asyncio.get_running_loop().create_future())
            return lost[-1]

        monkeypatch.setattr(broker, "publish", sent_but_never_acknowledged)
        first = await running.client.post(
            "/v1/feedback", json=web_form(), headers={"Idempotency-Key": "slow-broker"}
        )
        assert first.status_code == 503, first.text
        monkeypatch.setattr(broker, "publish", real_publish)

        retry = await running.client.post(
            "/v1/feedback", json=web_form(), headers={"Idempotency-Key": "slow-broker"}
        )
        assert retry.status_code == 202, retry.text
        number = retry.json()["feedback_number"]
        on_topic = await received_on_topic(settings)
        # Both attempts reached Kafka: the same feedback twice, which routing keeps as one
        # case (one case per feedback id), never two numbers for one delivery.
        assert len(on_topic) == 2
        assert {(m.feedback_id, m.feedback_number) for m in on_topic} == {
            (on_topic[0].feedback_id, number)
        }
        assert str(on_topic[0].feedback_id) == retry.json()["feedback_id"]
        assert registry_numbers(settings) == [number]
        again = await running.client.post(
            "/v1/feedback", json=web_form(), headers={"Idempotency-Key": "slow-broker"}
        )
        assert again.json()["feedback_number"] == number
        assert len(await received_on_topic(settings)) == 2


async def test_a_registry_insert_failing_after_kafka_acknowledged_is_repaired(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serve(settings, ("intake",)) as running:
        registrar = running.platform.registrar
        assert registrar is not None

        async def database_away(*_: Any) -> None:
            raise psycopg.OperationalError("connection lost")

        monkeypatch.setattr(registrar, "_enter", database_away)
        accepted: list[str] = []
        for key in (None, "with-a-key"):
            headers = {"Idempotency-Key": key} if key else {}
            answer = await running.client.post(
                "/v1/feedback", json=web_form(f"第{len(accepted)}条：打印机卡纸"), headers=headers
            )
            assert answer.status_code == 202, answer.text  # Kafka has it
            accepted.append(answer.json()["feedback_number"])
        assert registry_numbers(settings) == []
        monkeypatch.undo()

        assert await registrar.reconcile(older_than_s=0) == 2
        assert sorted(registry_numbers(settings)) == sorted(accepted)
        assert await registrar.reconcile(older_than_s=0) == 0  # nothing left to repair
        with psycopg.connect(settings.database_url) as conn:
            claims = conn.execute(
                "SELECT count(*) FILTER (WHERE NOT published), count(*) FROM intake_deduplication"
            ).fetchone()
        assert claims == (0, 1)  # the keyed claim answers retries; the unkeyed one is gone
