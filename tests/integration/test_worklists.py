"""The work list (issue #11): open cases of the departments one sees, most urgent first and
then the nearest due clock, with the time left on each open clock."""

from __future__ import annotations

from datetime import datetime

import pytest

from services.common.settings import Settings
from tests.conftest import registered_row, serve, web_form

pytestmark = pytest.mark.integration
RANK = {"urgent": 0, "high": 1, "medium": 2, "low": 3}
TEXTS = [
    "建议App增加夜间模式",
    "热水器插座冒烟起火了，差点烧伤孩子，太危险了",
    "账单里多扣了一笔39元的服务费，要求退款",
    "请问会员怎么续费",
    "客服小王态度很好，表扬",
    "宽带连续三天断网，影响工作，要求赔偿",
]


async def test_the_work_list_orders_by_priority_then_nearest_due_clock(
    settings: Settings,
) -> None:
    async with serve(settings) as running:
        client = running.client
        rows = []
        for i, text in enumerate(TEXTS * 2):
            answer = await client.post(
                "/v1/feedback", json=web_form(text, customer={"phone": f"1370000{i:04d}"})
            )
            rows.append(await registered_row(client, answer.json()["feedback_number"]))
        # Everyone's (quality sees every department).
        quality = running.as_staff("quality", ())
        listed = (await client.get("/v1/worklist", headers=quality)).json()
        numbers = {r["feedback_number"] for r in rows}
        assert {c["feedback_number"] for c in listed} >= numbers - {
            r["feedback_number"] for r in rows if r["status"] in ("closed", "archived")
        }
        keys = [
            (
                RANK.get(c["priority"], 4),
                datetime.fromisoformat(c["next_due_at"]) if c["next_due_at"] else datetime.max,
            )
            for c in listed
        ]
        ranks = [k[0] for k in keys]
        assert ranks == sorted(ranks) and ranks[0] < ranks[-1]
        for rank in set(ranks):
            dues = [d for r, d in keys if r == rank and d != datetime.max]
            assert dues == sorted(dues)
        # Time left on each open clock, counting down from its due time.
        case = next(c for c in listed if c["clocks"])
        for clock in case["clocks"]:
            assert clock["state"] in ("running", "paused")
            assert abs(clock["seconds_left"]) < 90 * 24 * 3600
        # A department sees its own only; another's is refused.
        routed = next(r for r in rows if r["department"] and r["owner"])
        department = routed["department"]
        agent = running.as_staff("agent", (department,), routed["owner"])
        own = (await client.get("/v1/worklist", headers=agent)).json()
        assert own and {c["department"] for c in own} == {department}
        other = "quality_assurance" if department != "quality_assurance" else "logistics"
        refused = await client.get("/v1/worklist", params={"department": other}, headers=agent)
        assert refused.status_code == 403
        mine = (await client.get("/v1/worklist", params={"mine": "true"}, headers=agent)).json()
        assert mine and {c["owner"] for c in mine} == {routed["owner"]}
