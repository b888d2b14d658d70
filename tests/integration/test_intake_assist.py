"""The registering agent's help, on real Kafka and PostgreSQL: the classifier's suggestion
for a text, and a customer's recent feedback found by phone or e-mail."""

from __future__ import annotations

import pytest

from services.common.settings import Settings
from tests.conftest import registered_row, serve, web_form

pytestmark = pytest.mark.integration


async def test_suggestion_answers_the_classifier_decision(settings: Settings) -> None:
    async with serve(settings) as running:
        agent = running.as_staff("agent", ("customer_service",), "cs-li")
        body = {"text": "热水器漏电，家里老人被电了一下，太危险了", "channel": "phone"}
        anonymous = await running.client.post(
            "/v1/classification/suggestion", json=body, headers={"Authorization": ""}
        )
        assert anonymous.status_code == 401
        quality = running.as_staff("quality")
        refused = await running.client.post(
            "/v1/classification/suggestion", json=body, headers=quality
        )
        assert refused.status_code == 403  # quality does not register feedback

        answer = await running.client.post(
            "/v1/classification/suggestion", json=body, headers=agent
        )
        assert answer.status_code == 200, answer.text
        decision = answer.json()
        assert set(decision) == {
            "type", "category", "subcategory", "priority", "department", "emotion", "flags",
            "confidence", "rules", "needs_triage", "supervisor_attention",
            "first_response_hours",
        }  # fmt: skip
        assert decision["priority"] == "urgent" and "safety" in decision["flags"]
        assert decision["rules"] and 0 <= decision["confidence"] <= 1

        praise = await running.client.post(
            "/v1/classification/suggestion",
            json={"text": "门店店员讲解非常耐心，服务很好，特此表扬", "customer_tier": "vip"},
            headers=agent,
        )
        assert praise.status_code == 200 and praise.json()["type"] == "praise"
        assert praise.json()["priority"] != "urgent"

        for bad in ({"text": ""}, {"text": "x", "customer_tier": "Gold!"}, {"text": "a\x00b"}):
            invalid = await running.client.post(
                "/v1/classification/suggestion", json=bad, headers=agent
            )
            assert invalid.status_code == 422, bad


async def test_recent_feedback_by_phone_in_any_form_or_email(settings: Settings) -> None:
    async with serve(settings) as running:
        first = await running.client.post(
            "/v1/feedback",
            json=web_form(
                "冰箱买回来一周就不制冷了",
                customer={"name": "张伟", "phone": "13812345678", "email": "zhang.wei@example.com"},
                type="complaint",
            ),
        )
        assert first.status_code == 202, first.text
        number = first.json()["feedback_number"]
        other = await running.client.post(
            "/v1/feedback", json=web_form("另一位客户", customer={"phone": "13900002222"})
        )
        assert other.status_code == 202
        # In the read model (routed or not: a hint is wanted as soon as it is registered).
        row = await registered_row(running.client, number)
        await registered_row(running.client, other.json()["feedback_number"])

        # An agent of a department the case is not in still sees that it exists.
        agent = running.as_staff("agent", ("finance",), "fin-li", username="fin.li")
        for phone in (
            "13812345678",
            "138-1234 5678",
            "+86 138 1234 5678",
            "１３８１２３４５６７８",
        ):
            answer = await running.client.post(
                "/v1/customers/recent-feedback", json={"phone": phone}, headers=agent
            )
            assert answer.status_code == 200, (phone, answer.text)
            items = answer.json()["items"]
            assert [item["feedback_number"] for item in items] == [number], phone
            assert set(items[0]) == {"feedback_number", "received_at", "feedback_type", "status"}
            assert items[0]["feedback_type"] == "complaint"
            assert items[0]["status"] in {row["status"], "queued", "assigned", "triage"}
        by_email = await running.client.post(
            "/v1/customers/recent-feedback",
            json={"email": "Zhang.Wei@example.com"},
            headers=agent,
        )
        assert [i["feedback_number"] for i in by_email.json()["items"]] == [number]

        unknown = await running.client.post(
            "/v1/customers/recent-feedback", json={"phone": "13700000000"}, headers=agent
        )
        assert unknown.status_code == 200 and unknown.json()["items"] == []
        for params in ({}, {"phone": "138"}, {"phone": "13812345678abc"}):
            invalid = await running.client.post(
                "/v1/customers/recent-feedback", json=params, headers=agent
            )
            assert invalid.status_code == 422, params
        quality = running.as_staff("quality")
        assert (
            await running.client.post(
                "/v1/customers/recent-feedback", json={"phone": "13812345678"}, headers=quality
            )
        ).status_code == 403

        # Each lookup that found the customer is on the personal-data access record; the
        # one that found nobody is not.
        audited = await running.client.get("/v1/audit/pii-access")
        assert audited.status_code == 200, audited.text
        lookups = [r for r in audited.json() if r["action"] == "lookup"]
        assert len(lookups) == 5 and {r["actor"] for r in lookups} == {"fin.li"}
        assert all("138" not in r["reason"] for r in lookups)
        assert len({r["customer_ref"] for r in lookups}) == 1
