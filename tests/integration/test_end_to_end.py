"""One feedback from the HTTP API to the registration table, through real Kafka,
the routing consumer, the event store, the outbox relay and the projection."""

from __future__ import annotations

import psycopg
import pytest

from services.common.settings import Settings
from tests.conftest import serve, wait_for, web_form

pytestmark = pytest.mark.integration


async def test_posted_feedback_becomes_visible_in_the_registration_table(
    settings: Settings,
) -> None:
    async with serve(settings) as running:
        body = web_form(
            "我在APP里设置预约功能，反复设置都无法成功，电话13812345678",
            customer={"name": "王芳", "phone": "13812345678", "email": "wang.fang@example.com"},
            customer_tier="vip",
            product_model="智能门锁 S3",
            purchase_date="2024-05-01",
            received_at="2024-05-20T09:30:00+08:00",
            expectation="尽快修复",
            emotion="dissatisfied",
            type="complaint",
        )
        response = await running.client.post("/v1/feedback", json=body)
        assert response.status_code == 202, response.text
        number = response.json()["feedback_number"]
        assert number.startswith("F") and number.endswith("-0001")

        async def registered() -> dict | None:
            got = await running.client.get(f"/v1/feedback/{number}")
            return got.json() if got.status_code == 200 else None

        row = await wait_for(registered, timeout=30, what="registration visible")
        assert row["channel"] == "web_form"
        assert row["customer_tier"] == "vip"
        assert row["product_model"] == "智能门锁 S3"
        assert row["purchase_date"] == "2024-05-01"
        assert row["emotion"] == "dissatisfied"
        assert row["stated_type"] == "complaint"
        assert row["received_at"].startswith("2024-05-20T01:30:00")
        assert row["registration_late"] is True  # received long before it was registered
        assert row["customer_ref"].startswith("客户-")
        assert "13812345678" not in row["description"] and "138****5678" in row["description"]
        assert "王芳" not in str(row)

        listing = await running.client.get("/v1/registrations", params={"channel": "web_form"})
        assert [item["feedback_number"] for item in listing.json()["items"]] == [number]
        other = await running.client.get("/v1/registrations", params={"channel": "email"})
        assert other.json()["items"] == []

        missing = await running.client.get("/v1/feedback/F20000101-0001")
        assert missing.status_code == 404

    with psycopg.connect(settings.database_url) as conn:
        sealed = conn.execute("SELECT sealed FROM pii_customers").fetchone()
        assert sealed is not None and b"13812345678" not in bytes(sealed[0])


async def test_same_customer_keeps_one_pseudonym(settings: Settings) -> None:
    async with serve(settings, ("intake",)) as running:
        first = await running.client.post("/v1/feedback", json=web_form("第一次反馈"))
        second = await running.client.post(
            "/v1/feedback",
            json=web_form("第二次反馈", customer={"phone": "+86 138 1234 5678"}),
        )
        assert first.status_code == second.status_code == 202
        vault = running.platform.registrar.vault  # type: ignore[union-attr]
        with psycopg.connect(settings.database_url) as conn:
            refs = conn.execute("SELECT customer_ref FROM pii_customers").fetchall()
        assert len(refs) == 1
        contact = await vault.reveal(refs[0][0])
        assert contact is not None and contact.name == "张伟"


async def test_retried_post_with_idempotency_key_registers_once(settings: Settings) -> None:
    async with serve(settings, ("intake",)) as running:
        headers = {"Idempotency-Key": "form-7f3a"}
        first = await running.client.post("/v1/feedback", json=web_form(), headers=headers)
        again = await running.client.post("/v1/feedback", json=web_form(), headers=headers)
        other = await running.client.post(
            "/v1/feedback", json=web_form(), headers={"Idempotency-Key": "b"}
        )
        assert first.status_code == again.status_code == 202
        assert again.json()["feedback_number"] == first.json()["feedback_number"]
        assert again.json()["duplicate"] is True
        assert other.json()["feedback_number"] != first.json()["feedback_number"]
