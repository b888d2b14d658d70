"""What GET /v1/cases/{n} tells a client for the case page, on real Kafka and PostgreSQL:
the commands this person may give now (`actions`, from the case's state and the person's
role and ownership), the contact masked, and the communication records (correspondence),
scoped like the case."""

from __future__ import annotations

from typing import Any

import pytest

from services.common.settings import Settings
from tests.conftest import registered_row, serve, wait_for, web_form

pytestmark = pytest.mark.integration
COMPLAINT = "账单里多扣了一笔39元的服务费，购买时没有任何人告知，要求退款"


async def test_actions_follow_state_and_person_and_records_are_scoped(
    settings: Settings,
) -> None:
    async with serve(settings) as running:
        client = running.client
        answer = await client.post("/v1/feedback", json=web_form(COMPLAINT))
        number, token = answer.json()["feedback_number"], answer.json()["customer_token"]
        row = await registered_row(client, number, status="assigned")
        department, owner = row["department"], row["owner"]
        agent = running.as_staff("agent", (department,), owner)
        colleague = running.as_staff("agent", (department,), "someone.else")
        supervisor = running.as_staff("supervisor", (department,), username="sup.view")
        quality = running.as_staff("quality", username="qa.view")
        other = "customer_service" if department != "customer_service" else "after_sales"
        stranger = running.as_staff("agent", (other,), "stranger")
        base = f"/v1/cases/{number}"

        async def actions(headers: dict[str, str]) -> list[str]:
            got = await client.get(base, headers=headers)
            assert got.status_code == 200, got.text
            return list(got.json()["actions"])

        assert await actions(agent) == ["accept", "dispute", "note", "escalate"]
        assert await actions(colleague) == []  # not their case
        assert await actions(quality) == []
        supervising = await actions(supervisor)
        assert "assign" in supervising and "reveal_contact" in supervising
        assert "accept" not in supervising and "resolve" not in supervising
        # The contact is masked for every reader; the number itself never appears.
        seen = await client.get(base, headers=quality)
        assert seen.json()["contact"]["phone"] == "138****5678"
        assert "13812345678" not in seen.text

        assert (await client.post(f"{base}/accept", headers=agent)).status_code == 200
        after = await actions(agent)
        assert "accept" not in after and {"plan", "resolve", "info_request"} <= set(after)
        asked = await client.post(
            f"{base}/customer-info-requests", json={"missing": ["product_model"]}, headers=agent
        )
        assert asked.status_code == 200
        waiting = await actions(agent)
        assert "resolve" not in waiting and "info_request" not in waiting and "plan" in waiting

        # The customer's answer (their token) joins the communication records.
        supplied = await client.post(
            f"/v1/feedback/{number}/supplements",
            json={
                "channel": "web_form",
                "text": "型号是X1，电话13812345678",
                "product_model": "X1",
            },
            headers={"X-Customer-Token": token, "Authorization": ""},
        )
        assert supplied.status_code == 202, supplied.text

        async def records() -> list[dict[str, Any]] | None:
            got = await client.get(f"{base}/correspondence", headers=agent)
            assert got.status_code == 200, got.text
            entries: list[dict[str, Any]] = got.json()
            return entries if any(e["direction"] == "in" for e in entries) else None

        entries = await wait_for(records, timeout=30, what="the customer's message recorded")
        assert entries[0]["what"] == "InformationRequested" and entries[0]["direction"] == "out"
        assert entries[0]["text"] == "product_model"
        assert "13812345678" not in str(entries)
        assert (await client.get(f"{base}/correspondence", headers=stranger)).status_code == 403
        assert (await client.get(f"{base}/correspondence", headers=quality)).status_code == 200
