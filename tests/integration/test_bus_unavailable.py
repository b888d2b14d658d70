"""When Kafka does not acknowledge, intake answers 503 and registers nothing."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from deploy.kafka_broker import start_kafka
from services.common.settings import Settings
from tests.conftest import serve, web_form

pytestmark = pytest.mark.integration


async def test_kafka_down_gives_503_and_nothing_half_registered(
    settings: Settings, tmp_path: Path
) -> None:
    own_kafka = start_kafka(tmp_path / "kafka")  # this test stops its broker; others share theirs
    try:
        settings = settings.model_copy(
            update={
                "kafka_bootstrap_servers": own_kafka.bootstrap_servers,
                "publish_timeout_s": 3.0,
            }
        )
        async with serve(settings, ("intake",)) as running:
            ok = await running.client.post("/v1/feedback", json=web_form())
            assert ok.status_code == 202
            own_kafka.stop()
            stranger = {"name": "新客户", "phone": "13700009999"}
            refused = await running.client.post(
                "/v1/feedback",
                json=web_form("第二条", customer=stranger),
                headers={"Idempotency-Key": "retry-me"},
            )
            assert refused.status_code == 503, refused.text
            assert "retry" in refused.json()["detail"]
            assert refused.headers["Retry-After"]
            with psycopg.connect(settings.database_url) as conn:
                claims = conn.execute(
                    "SELECT count(*) FROM intake_deduplication WHERE dedup_key LIKE 'idempotency:%:retry-me'"
                ).fetchone()
                registry = conn.execute("SELECT feedback_number FROM intake_registry").fetchall()
            # Kept: the event may yet reach Kafka, so a retry with the same key publishes the
            # same id and number (tests/integration/test_intake_exactly_once.py).
            assert claims == (1,)
            # Replies and supplements can only find feedback that Kafka has.
            assert registry == [(ok.json()["feedback_number"],)]
            # The refused one's personal data does not stay: its new customer is swept,
            # the accepted one's is kept.
            assert running.platform.vault is not None
            assert await running.platform.vault.sweep_provisional(grace_s=0) == 1
            with psycopg.connect(settings.database_url) as conn:
                customers = conn.execute("SELECT count(*) FROM pii_customers").fetchone()
                lookups = conn.execute("SELECT count(*) FROM pii_customer_lookup").fetchone()
            assert customers == (1,) and lookups == (1,)
    finally:
        own_kafka.stop()
