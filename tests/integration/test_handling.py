"""Handling to archive (issue #9), through HTTP on real Kafka and PostgreSQL: the whole
life of a complaint, every invalid transition refused with its reason, and the clocks the
handling events meet."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.common.settings import Settings
from tests.conftest import registered_row, serve, wait_for, web_form

pytestmark = pytest.mark.integration
COMPLAINT = "账单里多扣了一笔39元的服务费，购买时没有任何人告知，要求退款"


async def test_the_whole_life_of_a_complaint(settings: Settings) -> None:
    async with serve(settings) as running:
        client = running.client
        answer = await client.post("/v1/feedback", json=web_form(COMPLAINT))
        number, token = answer.json()["feedback_number"], answer.json()["customer_token"]
        row = await registered_row(client, number, status="assigned")
        department, owner = row["department"], row["owner"]
        agent = running.as_staff("agent", (department,), owner)
        other_agent = running.as_staff("agent", (department,), "someone.else")
        supervisor = running.as_staff("supervisor", (department,), username="sup.zhou")
        co_staff = running.as_staff("agent", ("customer_service",), "cs-li")
        customer = {"X-Customer-Token": token, "Authorization": ""}
        base = f"/v1/cases/{number}"

        async def post(path: str, body: dict[str, Any] | None = None, **kw: Any) -> Any:
            return await client.post(f"{base}{path}", json=body or {}, **kw)

        # Nothing but accepting before the owner accepts.
        refused = await post("/notes", {"text": "已联系客户"}, headers=agent)
        assert refused.status_code == 200  # a note may be added by the owner at any time
        assert (
            await post("/resolve", {"result": "resolved", "summary": "x"}, headers=agent)
        ).status_code == 409
        assert (await post("/accept", headers=agent)).status_code == 200
        assert (await post("/notes", {"text": "不是我的"}, headers=other_agent)).status_code == 403
        due = (datetime.now(UTC) + timedelta(days=2)).isoformat()
        plan = {
            "diagnosis": "收费系统重复扣款",
            "plan": "退回多收的39元并修复计费规则",
            "expected_completion": due,
        }
        assert (await post("/plan", plan, headers=agent)).json()["status"] == "in_progress"
        note = {
            "text": "已电话联系客户，客户电话13812345678",
            "visible_to_customer": True,
            "step": "沟通",
        }
        assert (await post("/notes", note, headers=agent)).status_code == 200
        # Co-handling: customer service explains the charge, and answers as itself only.
        co = {"department": "customer_service", "duty": "向客户解释收费", "due_at": due}
        assert (await post("/co-handlers", co, headers=agent)).status_code == 200
        response = {"response": "已向客户说明收费规则"}
        assert (
            await post("/co-handlers/customer_service/response", response, headers=agent)
        ).status_code == 403
        assert (
            await post("/co-handlers/customer_service/response", response, headers=co_staff)
        ).status_code == 200
        # Ask the customer: the case waits; the supplement brings it back in progress.
        asked = await post("/customer-info-requests", {"missing": ["product_model"]}, headers=agent)
        assert asked.json()["status"] == "pending_info"
        assert (
            await post("/resolve", {"result": "resolved", "summary": "x"}, headers=agent)
        ).status_code == 409
        supplied = await client.post(
            f"/v1/feedback/{number}/supplements",
            json={"channel": "web_form", "product_model": "会员服务"},
            headers=customer,
        )
        assert supplied.status_code == 202
        await wait_for(
            lambda: _status(client, base, "in_progress"), timeout=30, what="back in progress"
        )
        # A result; the customer is not satisfied: reopened, one priority up.
        unresolved = {"result": "partially_resolved", "summary": "已退款"}
        assert (await post("/resolve", unresolved, headers=agent)).status_code == 409  # no reason
        resolved = {"result": "resolved", "summary": "已退回39元", "measures": "修复计费规则"}
        assert (await post("/resolve", resolved, headers=agent)).json()["status"] == "resolved"
        before = (await client.get(base)).json()["priority"]
        unhappy = await post(
            "/confirmation", {"satisfied": False, "comment": "还多扣了一笔"}, headers=customer
        )
        assert unhappy.status_code == 200 and unhappy.json()["status"] == "reopened"
        assert (
            unhappy.json()["priority"]
            == {"low": "medium", "medium": "high", "high": "urgent", "urgent": "urgent"}[before]
        )
        assert (await post("/resolve", resolved, headers=agent)).json()["status"] == "resolved"
        stranger = {"X-Customer-Token": "not-the-token", "Authorization": ""}
        assert (
            await post("/confirmation", {"satisfied": True}, headers=stranger)
        ).status_code == 401
        happy = await post("/confirmation", {"satisfied": True}, headers=customer)
        assert happy.json()["status"] == "confirmed"
        assert (await post("/rating", {"csat": 6}, headers=customer)).status_code == 422
        rating = {"csat": 5, "nps": 9, "aspects": {"speed": 4, "attitude": 5}, "comment": "满意"}
        assert (await post("/rating", rating, headers=customer)).status_code == 200
        assert (await post("/close", {}, headers=agent)).json()["status"] == "closed"
        assert (await post("/archive", headers=agent)).status_code == 403  # supervisors archive
        assert (await post("/archive", headers=supervisor)).json()["status"] == "archived"
        late = await post("/notes", {"text": "补充"}, headers=agent)
        assert late.status_code == 409 and "archived" in late.json()["detail"]
        # The read model and the timeline follow; contacts in notes are masked.
        tracked = await registered_row(client, number, status="archived")
        # The tracking table (问题处理跟踪表) has the whole handling on one row.
        assert tracked["owner"] == owner and tracked["assigned_at"] and tracked["accepted_at"]
        assert tracked["diagnosis"] == "收费系统重复扣款" and tracked["expected_completion"]
        assert tracked["result"] == "resolved" and tracked["result_summary"] == "已退回39元"
        assert tracked["measures"] == "修复计费规则" and tracked["resolved_at"]
        assert tracked["satisfied"] is True and tracked["confirmed_at"]
        assert (tracked["csat"], tracked["nps"]) == (5, 9) and tracked["closed_at"]
        steps = [p["step"] for p in tracked["progress"]]
        assert "plan" in steps and "沟通" in steps, steps
        progress_text = " ".join(p["text"] for p in tracked["progress"])
        assert "13812345678" not in progress_text and "138****5678" in progress_text
        timeline = (await client.get(f"{base}/timeline")).json()
        kinds = [entry["what"] for entry in timeline]
        for kind in ("OwnerAccepted", "PlanSet", "NoteAdded", "CoHandlerResponded",
                     "InformationRequested", "Resolved", "CustomerConfirmed", "Reopened",
                     "Rated", "Closed", "Archived"):  # fmt: skip
            assert kind in kinds, (kind, kinds)
        assert [e["version"] for e in timeline] == sorted(e["version"] for e in timeline)
        # The sla service follows the case's events asynchronously: wait until it caught up.
        await wait_for(
            lambda: _clock_state(client, base, "result_notice", "met"),
            timeout=30,
            what="the clocks caught up",
        )
        case = (await client.get(base)).json()
        clocks = {(c["clock"], c["subject"]): c for c in case["clocks"]}
        assert clocks[("first_response", None)]["state"] == "met"
        assert clocks[("resolution", None)]["state"] == "met"  # CaseResolved met it
        assert clocks[("co_handler_response", "customer_service")]["state"] == "met"
        assert clocks[("result_notice", None)]["state"] == "met"  # the confirmation met it
        progress = [c for (name, _), c in clocks.items() if name == "progress_update"]
        # Accepting opened period 1, the visible note met it and opened period 2, the
        # result stopped it; none is left running.
        assert len(progress) >= 2 and all(c["state"] == "met" for c in progress)


async def test_supervisors_close_with_a_reason_and_reopen_and_mark_complex(
    settings: Settings,
) -> None:
    async with serve(settings) as running:
        client = running.client
        number = (await client.post("/v1/feedback", json=web_form(COMPLAINT))).json()[
            "feedback_number"
        ]
        row = await registered_row(client, number, status="assigned")
        agent = running.as_staff("agent", (row["department"],), row["owner"])
        supervisor = running.as_staff("supervisor", (row["department"],), username="sup.he")
        base = f"/v1/cases/{number}"
        await client.post(f"{base}/accept", headers=agent)
        assert (await client.post(f"{base}/close", json={}, headers=agent)).status_code == 409
        assert (await client.post(f"{base}/close", json={}, headers=supervisor)).status_code == 409
        assert (
            await client.post(f"{base}/reopen", json={"reason": "x"}, headers=supervisor)
        ).status_code == 409
        complex_ = await client.post(
            f"{base}/complex", json={"reason": "涉及多个系统"}, headers=supervisor
        )
        assert complex_.status_code == 200
        assert (
            await client.post(f"{base}/complex", json={"reason": "x"}, headers=agent)
        ).status_code == 403
        closed = await client.post(
            f"{base}/close", json={"reason": "客户撤回投诉"}, headers=supervisor
        )
        assert closed.json()["status"] == "closed"
        reopened = await client.post(
            f"{base}/reopen", json={"reason": "客户再次来电"}, headers=supervisor
        )
        assert reopened.json()["status"] == "reopened"
        await wait_for(
            lambda: _resolution_target(client, base, "5wd"), timeout=30, what="5 working days"
        )


async def _clock_state(client: Any, base: str, name: str, state: str) -> bool:
    clocks = (await client.get(base)).json()["clocks"]
    return any(c["clock"] == name and c["state"] == state for c in clocks)


async def _status(client: Any, base: str, status: str) -> bool:
    return bool((await client.get(base)).json()["status"] == status)


async def _resolution_target(client: Any, base: str, target: str) -> bool:
    clocks = (await client.get(base)).json()["clocks"]
    return any(c["clock"] == "resolution" and c["target"] == target for c in clocks)


async def test_two_commands_at_once_never_overwrite_each_other(settings: Settings) -> None:
    """Optimistic concurrency: the second of two results at once is decided on the case the
    first left (resolved), so it is refused with the reason, not written over it."""
    import asyncio

    async with serve(settings) as running:
        client = running.client
        number = (await client.post("/v1/feedback", json=web_form(COMPLAINT))).json()[
            "feedback_number"
        ]
        row = await registered_row(client, number, status="assigned")
        agent = running.as_staff("agent", (row["department"],), row["owner"])
        base = f"/v1/cases/{number}"
        await client.post(f"{base}/accept", headers=agent)
        body = {"result": "resolved", "summary": "已处理"}
        answers = await asyncio.gather(
            *(client.post(f"{base}/resolve", json=body, headers=agent) for _ in range(4))
        )
        codes = sorted(a.status_code for a in answers)
        assert codes == [200, 409, 409, 409], [a.text for a in answers]
        timeline = (await client.get(f"{base}/timeline")).json()
        assert [e["what"] for e in timeline].count("Resolved") == 1
        loser = next(a for a in answers if a.status_code == 409)
        version = int(loser.headers["X-Case-Version"])
        assert f"case version {version}" in loser.json()["detail"]
        case = (await client.get(base)).json()
        assert case["version"] >= version  # the loser knows what to reload
        # (The sla service may have appended clock facts since: the earlier ones come first.)
        shown = [e["what"] for e in case["timeline"]]
        assert shown[: len(timeline)] == [e["what"] for e in timeline]


async def test_closed_cases_are_archived_after_the_configured_delay(settings: Settings) -> None:
    import psycopg

    from services.handling.archiving import archive_closed

    async with serve(settings) as running:
        client = running.client
        store, pool = running.platform.store, running.platform.pool
        assert store is not None and pool is not None
        numbers = []
        for i in range(2):
            answer = await client.post(
                "/v1/feedback",
                json=web_form(f"{COMPLAINT}（{i}）", customer={"phone": f"1370000{i:04d}"}),
            )
            numbers.append(answer.json()["feedback_number"])
        for number in numbers:
            row = await registered_row(client, number, status="assigned")
            supervisor = running.as_staff("supervisor", (row["department"],), username="sup.a")
            await client.post(
                f"/v1/cases/{number}/accept",
                headers=running.as_staff("agent", (row["department"],), row["owner"]),
            )
            closed = await client.post(
                f"/v1/cases/{number}/close", json={"reason": "客户撤回"}, headers=supervisor
            )
            assert closed.json()["status"] == "closed"
            await registered_row(client, number, status="closed")
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE registrations SET updated_at = now() - interval '31 days' "
                "WHERE feedback_number = %s",
                (numbers[0],),
            )
        assert await archive_closed(store, pool, after_days=30) == 1
        assert await archive_closed(store, pool, after_days=30) == 0  # once only
        assert (await client.get(f"/v1/cases/{numbers[0]}/timeline")).json()[-1][
            "what"
        ] == "Archived"
        assert "Archived" not in [
            e["what"] for e in (await client.get(f"/v1/cases/{numbers[1]}/timeline")).json()
        ]
