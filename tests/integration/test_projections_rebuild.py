"""Read models rebuilt from the event store (issue #11): the rebuilt tables equal the live
ones row for row, events stored while rebuilding are not lost, and the live consumer
carries on on the new tables after the switch."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from services.common.settings import Settings
from services.projections import rebuild as rebuilding
from services.sla.calendar import load_calendars
from tests.conftest import case_counts, registered_row, serve, wait_for, web_form

pytestmark = pytest.mark.integration

TEXTS = [
    "洗衣机漏水，地板都泡了，要求上门维修",
    "账单里多扣了一笔39元的服务费，要求退款",
    "客服态度很好，表扬一下小王",
    "请问X200的保修期是多久",
    "建议App增加夜间模式",
    "The router X200 keeps dropping the connection every evening",
]
KEYS = {
    "registrations": "feedback_id",
    "case_facts": "feedback_id",
    "department_stints": "feedback_id, seq",
    "case_clocks": "feedback_id, clock_key",
    "case_search": "feedback_id",
}


def snapshot(settings: Settings) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(settings.database_url) as conn:
        return {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY {key}").fetchall()
            for table, key in KEYS.items()
        }


def settled(settings: Settings) -> bool:
    """Everything stored is relayed and applied by the projections consumer."""
    with psycopg.connect(settings.database_url) as conn:
        stored = conn.execute("SELECT coalesce(max(notification_id), 0) FROM cases_events")
        relayed = conn.execute(
            "SELECT coalesce(max(last_notification_id), 0) FROM outbox_positions"
        )
        behind = conn.execute(
            "SELECT count(*) FROM cases_events e WHERE NOT EXISTS (SELECT 1 FROM registrations r "
            "WHERE r.feedback_id = e.originator_id)"
        )
        return stored.fetchone() == relayed.fetchone() and (behind.fetchone() or (1,))[0] == 0


async def quiet(settings: Settings) -> dict[str, list[tuple[Any, ...]]]:
    """The read models once nothing changes any more (the sla scheduler included)."""
    previous: dict[str, list[tuple[Any, ...]]] = {}
    for _ in range(60):
        await asyncio.sleep(1.0)
        if not settled(settings):
            continue
        now = snapshot(settings)
        if now == previous:
            return now
        previous = now
    raise AssertionError("the read models never settled")


async def test_rebuilt_tables_equal_the_live_ones(settings: Settings) -> None:
    async with serve(settings) as running:
        client = running.client
        numbers = []
        for i in range(18):
            text = TEXTS[i % len(TEXTS)]
            answer = await client.post("/v1/feedback", json=web_form(f"{text}（{i}）"))
            assert answer.status_code == 202, answer.text
            numbers.append((answer.json()["feedback_number"], answer.json()["customer_token"]))
        await quiet(settings)
        rows = {n: (await client.get(f"/v1/feedback/{n}")).json() for n, _ in numbers}
        owned = [(n, t) for n, t in numbers if rows[n]["status"] == "assigned"]
        assert len(owned) >= 3, [r["status"] for r in rows.values()]
        # Three cases lived to the end: accepted, planned, resolved, confirmed, rated, closed.
        for number, token in owned[:3]:
            row = rows[number]
            agent = running.as_staff("agent", (row["department"],), row["owner"])
            customer = {"X-Customer-Token": token, "Authorization": ""}
            base = f"/v1/cases/{number}"
            due = (datetime.now(UTC) + timedelta(days=2)).isoformat()
            steps: list[tuple[str, dict[str, Any], dict[str, str]]] = [
                ("/accept", {}, agent),
                ("/plan", {"diagnosis": "查明", "plan": "处理", "expected_completion": due}, agent),
                ("/notes", {"text": "已联系客户", "visible_to_customer": True}, agent),
                ("/resolve", {"result": "resolved", "summary": "已处理"}, agent),
                ("/confirmation", {"satisfied": True}, customer),
                ("/rating", {"csat": 4, "nps": 9}, customer),
                ("/close", {}, agent),
            ]
            for path, body, headers in steps:
                done = await client.post(f"{base}{path}", json=body, headers=headers)
                assert done.status_code == 200, (path, done.text)
        live = await quiet(settings)
        assert len(live["registrations"]) == 18 and len(live["case_search"]) == 18
        assert any(r for r in live["case_clocks"])
        routed = {r[0] for r in live["case_facts"] if r[10] is not None}  # department
        assert routed and {r[0] for r in live["department_stints"]} == routed

        calendar = load_calendars().get(None)
        first = await rebuilding.rebuild(settings.database_url, "cases", calendar)
        assert first.version == 1 and first.cases == 18 and first.caught_up == 0
        assert snapshot(settings) == live

        # Rebuild while the services run; more feedback is stored during the build.
        late: list[str] = []
        cases_before = case_counts(settings)[1]

        async def more_while_building() -> None:
            for i in range(3):
                answer = await client.post("/v1/feedback", json=web_form(f"建造期间的反馈{i}"))
                late.append(answer.json()["feedback_number"])
            # Stored in the case store (not necessarily consumed yet) before the switch.
            await wait_for(
                lambda: case_counts(settings)[1] == cases_before + 3,
                timeout=30,
                what="the late cases stored",
            )

        report = await rebuilding.rebuild(
            settings.database_url, "cases", calendar, before_switch=more_while_building
        )
        assert report.version == 2 and report.cases == 21 and report.caught_up >= 3
        for number in late:
            await registered_row(client, number, feedback_number=number)
        after = await quiet(settings)
        assert len(after["registrations"]) == 21
        # A second rebuild of the settled state equals what the live consumer made of the
        # first rebuild's tables: row for row, every column, every table.
        again = await rebuilding.rebuild(settings.database_url, "cases", calendar)
        assert again.version == 3 and again.caught_up == 0
        assert snapshot(settings) == after
        with psycopg.connect(settings.database_url) as conn:
            schemas = {
                r[0]
                for r in conn.execute(
                    "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s OR nspname LIKE %s",
                    ("rebuild_%", "retired_%"),
                )
            }
        assert schemas == set()
