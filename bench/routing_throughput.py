"""Routing consumer throughput: feedback routed per second, event store writes included.

N `FeedbackReceived` messages are put on the topic first; then a routing process starts
and the clock runs until every case (Registered + Classified + Routed/Triage + Owner
events, and its Kafka position) is in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

import psycopg
from aiokafka import AIOKafkaProducer

from bench.harness import free_port
from contracts import topics
from contracts.events import FeedbackReceived
from deploy.local import local_infrastructure, local_keys
from services.common.bus import ensure_topics, platform_topics
from services.common.settings import Settings
from services.routing.classifier.evaluation import HOLDOUT_SET, TUNE_SET, load_labelled

MESSAGES = 10_000


async def _publish(settings: Settings, count: int) -> None:
    texts = [i.text for i in load_labelled(TUNE_SET) + load_labelled(HOLDOUT_SET)]
    await ensure_topics(settings, platform_topics(settings, ["customer_service"]))
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        linger_ms=5,
        max_batch_size=256 * 1024,
    )
    await producer.start()
    try:
        now = datetime.now(UTC)
        futures = []
        for n in range(count):
            message = FeedbackReceived(
                feedback_id=uuid.uuid4(),
                feedback_number=f"F20261127-{n + 1:05d}",
                received_at=now,
                registered_at=now,
                channel="web_form",
                customer_ref=f"客户-2026-{n % 3000 + 1:04d}",
                description=texts[n % len(texts)],
                receiver="bench",
            )
            futures.append(
                await producer.send(
                    settings.topic(topics.FEEDBACK_RECEIVED),
                    message.model_dump_json().encode(),
                    key=message.key(),
                )
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _cases(url: str) -> int:
    with psycopg.connect(url) as conn:
        if conn.execute("SELECT to_regclass('cases_events')").fetchone() == (None,):
            return 0
        row = conn.execute(
            "SELECT count(*) FROM cases_events WHERE topic LIKE '%Registered'"
        ).fetchone()
        return int(row[0]) if row else 0


def run(count: int = MESSAGES) -> list[str]:
    with local_infrastructure(None) as infrastructure:
        env = {
            **os.environ,
            **infrastructure.environment(),
            **local_keys(None),
        }
        settings = Settings(
            database_url=env["DATABASE_URL"],
            kafka_bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
            pii_key=env["FEEDBACK_PII_KEY"],
            auth_token_key=env["FEEDBACK_AUTH_TOKEN_KEY"],
        )
        asyncio.run(_publish(settings, count))
        began = time.perf_counter()
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "feedback_cli.main",
                "run",
                "routing",
                "--port",
                str(free_port()),
            ],
            env=env,
        )
        try:
            first_at = None
            while (done := _cases(settings.database_url)) < count:
                if done and first_at is None:
                    first_at = time.perf_counter()
                if process.poll() is not None:
                    raise RuntimeError("routing process exited")
                time.sleep(0.05)
            elapsed = time.perf_counter() - began
            steady = time.perf_counter() - (first_at or began)
        finally:
            process.terminate()
            process.wait(timeout=60)
        with psycopg.connect(settings.database_url) as conn:
            events = conn.execute("SELECT count(*) FROM cases_events").fetchone()
    return [
        f"routed {count} feedback in {elapsed:.1f}s including process start: {count / elapsed:,.0f} cases/s",
        f"from the first stored case: {count / steady:,.0f} cases/s ({events[0] if events else 0} events stored)",
    ]


if __name__ == "__main__":
    for line in run():
        print(line)
