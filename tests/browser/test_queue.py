"""The work list at /queue: one department's agent and supervisor see its open cases, most
urgent first; another department's case is not listed; a filter narrows the list; a new
feedback routed to the department appears without a reload (server-sent events); a
supervisor reassigns two cases at once and sees the new owner."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Site, screenshot, sign_in

pytestmark = pytest.mark.integration

DEPARTMENT = "after_sales"
# The rule book routes these to after-sales (high priority) and to logistics.
AFTER_SALES = [
    "维修师傅上门修了两次洗衣机还是漏水，要求换机",
    "申请退货一个星期了还没有人上门取件",
    "冰箱售后预约上门维修，约好的时间师傅没来",
    "空调售后维修师傅上门后说要换零件，等了一周还没修好",
]
LATE_ARRIVAL = "洗碗机售后上门维修后还是不出水，要求换新"
LOGISTICS = "快递三天没有更新物流信息"


def submit(client: httpx.Client, text: str, phone: str) -> str:
    answer = client.post(
        "/v1/feedback",
        json={"channel": "web_form", "description": text,
              "customer": {"name": "张伟", "phone": phone}},
    )  # fmt: skip
    assert answer.status_code == 202, answer.text
    number: str = answer.json()["feedback_number"]
    return number


def routed(client: httpx.Client, number: str, timeout_s: float = 60) -> dict[str, Any]:
    """The registration row once routed to an owner."""
    deadline = time.monotonic() + timeout_s
    row: dict[str, Any] = {}
    while time.monotonic() < deadline:
        answer = client.get(f"/v1/feedback/{number}")
        if answer.status_code == 200:
            row = answer.json()
            if row["status"] == "assigned" and row["owner"]:
                return row
        time.sleep(0.2)
    raise AssertionError(f"{number} not routed in {timeout_s} s (last: {row})")


def token_of(site: Site, username: str, password: str) -> dict[str, str]:
    with httpx.Client(base_url=site.base_url, timeout=30) as client:
        answer = client.post("/v1/auth/token", data={"username": username, "password": password})
        assert answer.status_code == 200, answer.text
        return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def listed_numbers(page: Any) -> list[str]:
    return [n for n in page.locator("#queue-list tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.number)")]  # fmt: skip


@pytest.fixture(scope="module")
def cases(site: Site) -> dict[str, Any]:
    """Four after-sales cases (one raised to urgent, one lowered to low by the department's
    supervisor) and one logistics case, all routed."""
    supervisor = site.add_user("sup.queue", "supervisor", (DEPARTMENT,))
    with site.api() as client:
        numbers = [submit(client, text, f"1390000{i:04d}") for i, text in enumerate(AFTER_SALES)]
        other = submit(client, LOGISTICS, "13900009999")
        rows = {n: routed(client, n) for n in [*numbers, other]}
    assert {rows[n]["department"] for n in numbers} == {DEPARTMENT}, rows
    assert rows[other]["department"] != DEPARTMENT
    headers = token_of(site, supervisor.username, supervisor.password)
    urgent, low = numbers[1], numbers[2]
    with httpx.Client(base_url=site.base_url, headers=headers, timeout=30) as client:
        for number, priority in ((urgent, "urgent"), (low, "low")):
            answer = client.post(
                f"/v1/cases/{number}/priority",
                json={"priority": priority, "reason": "测试：调整优先级"},
            )
            assert answer.status_code == 200, answer.text
    with site.api() as client:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            shown = {n: client.get(f"/v1/feedback/{n}").json()["priority"] for n in (urgent, low)}
            if shown == {urgent: "urgent", low: "low"}:
                break
            time.sleep(0.2)
        owners = {n: client.get(f"/v1/feedback/{n}").json()["owner"] for n in numbers}
    return {"supervisor": supervisor, "numbers": numbers, "urgent": urgent, "low": low,
            "other": other, "owners": owners}  # fmt: skip


def test_the_department_sees_its_cases_urgent_first_and_not_another_departments(
    page: Any, site: Site, cases: dict[str, Any]
) -> None:
    agent = site.add_user("as.lin.queue", "agent", (DEPARTMENT,), agent_id="as-lin")
    for user in (cases["supervisor"], agent):
        sign_in(page, site, user)
        page.goto(f"{site.base_url}/queue")
        shown = listed_numbers(page)
        assert set(cases["numbers"]) <= set(shown), (user.username, shown)
        assert cases["other"] not in shown  # logistics' case is not after-sales' to see
        assert shown[0] == cases["urgent"]
        assert shown.index(cases["low"]) > max(
            shown.index(n) for n in cases["numbers"] if n != cases["low"]
        )
        first = page.locator(f"#queue-list tr[data-number='{cases['urgent']}']")
        expect(first.locator(".badge")).to_have_text("紧急")
        # A live countdown, ticking: "剩余 …" (or "已超时 …").
        expect(first.locator("time.countdown")).to_contain_text("剩余")
        link = first.get_by_role("link", name=cases["urgent"])
        assert link.get_attribute("href") == f"/cases/{cases['urgent']}"
        page.get_by_role("button", name="退出").click()
    # The agent's own cases only, with the "mine" toggle.
    sign_in(page, site, agent)
    page.goto(f"{site.base_url}/queue")
    page.get_by_label("只看我的").check()
    mine = {n for n, owner in cases["owners"].items() if owner == "as-lin"}
    expect(page).to_have_url(f"{site.base_url}/queue?mine=true")
    page.wait_for_function(
        "n => document.querySelectorAll('#queue-list tbody tr').length === n", arg=len(mine)
    )
    assert set(listed_numbers(page)) == mine
    for owner in page.locator("#queue-list td.owner").all_inner_texts():
        assert owner == "as-lin"
    screenshot(page, "queue-agent-mine")


def test_a_filter_narrows_the_list_and_a_new_case_appears_without_reload(
    page: Any, site: Site, cases: dict[str, Any]
) -> None:
    sign_in(page, site, cases["supervisor"])
    page.goto(f"{site.base_url}/queue")
    page.get_by_label("优先级").select_option("urgent")
    page.wait_for_function("() => document.querySelectorAll('#queue-list tbody tr').length === 1")
    assert listed_numbers(page) == [cases["urgent"]]
    expect(page).to_have_url(f"{site.base_url}/queue?priority=urgent")
    page.goto(f"{site.base_url}/queue?priority=low")
    assert listed_numbers(page) == [cases["low"]]
    # A filter the API refuses says why (not an empty list that looks like "no cases").
    page.goto(f"{site.base_url}/queue?channel=pigeon")
    expect(page.locator("#queue-problem")).to_be_visible()

    page.goto(f"{site.base_url}/queue")
    before = set(listed_numbers(page))
    page.evaluate("window.__sameDocument = true")
    # The live feed starts reading the bus from its end when the first page listens.
    page.wait_for_timeout(3000)
    with site.api() as client:
        late = submit(client, LATE_ARRIVAL, "13900008888")
        row = routed(client, late)
    assert row["department"] == DEPARTMENT
    expect(page.locator(f"#queue-list tr[data-number='{late}']")).to_be_visible(timeout=20_000)
    assert page.evaluate("window.__sameDocument") is True  # no reload
    assert before < set(listed_numbers(page))
    screenshot(page, "queue-supervisor")


def test_a_supervisor_reassigns_two_cases_and_sees_the_new_owner(
    page: Any, site: Site, cases: dict[str, Any]
) -> None:
    target = "as-xu"
    with site.api() as client:
        owners = {n: client.get(f"/v1/feedback/{n}").json()["owner"] for n in cases["numbers"]}
        # Room for the moved cases (capacity is the routing's own check, not this page's).
        agents = client.get("/v1/agents", params={"department": DEPARTMENT}).json()
        agent = next(row["agent"] for row in agents if row["agent"]["agent_id"] == target)
        agent = {k: v for k, v in agent.items() if k != "agent_id"} | {"capacity": 50}
        assert client.put(f"/v1/agents/{target}", json=agent).status_code == 200
    moving = [n for n in cases["numbers"] if owners[n] != target][:2]
    assert len(moving) == 2, owners

    sign_in(page, site, cases["supervisor"])
    page.goto(f"{site.base_url}/queue")
    # Nothing ticked: the form says so next to its button; no reason: next to that field.
    page.get_by_role("button", name="改派所选案件").click()
    expect(page.locator("#numbers-error")).to_contain_text("勾选")
    expect(page.locator("#reason-error")).to_be_visible()
    for number in moving:
        page.get_by_label(f"选择 {number}").check()
    # Not an agent id at all: the API's reason shows next to the owner field.
    page.get_by_label("新负责人").fill("不是工号")
    page.get_by_label("改派原因").fill("测试：平衡工作量")
    page.get_by_role("button", name="改派所选案件").click()
    expect(page.locator("#agent_id-error")).to_contain_text("pattern")
    # Another department's agent: each case is refused with the API's reason, still ticked.
    page.get_by_label("新负责人").fill("log-feng")
    page.get_by_role("button", name="改派所选案件").click()
    outcomes = page.get_by_role("list", name="改派结果")
    for number in moving:
        expect(outcomes).to_contain_text(f"{number}：被拒绝 — log-feng works in logistics")
        expect(page.get_by_label(f"选择 {number}")).to_be_checked()
    page.get_by_label("新负责人").fill(target)
    page.get_by_role("button", name="改派所选案件").click()
    for number in moving:
        expect(outcomes).to_contain_text(f"{number}：已改派给 {target}")
        owner = page.locator(f"#queue-list tr[data-number='{number}'] td.owner")
        expect(owner).to_have_text(target, timeout=20_000)
        expect(page.get_by_label(f"选择 {number}")).not_to_be_checked()
    screenshot(page, "queue-bulk-reassign")


def test_an_agent_cannot_reassign(page: Any, site: Site, cases: dict[str, Any]) -> None:
    agent = site.add_user("as.xu.queue", "agent", (DEPARTMENT,), agent_id="as-xu")
    sign_in(page, site, agent, lang="en")
    page.goto(f"{site.base_url}/queue")
    expect(page.get_by_role("heading", level=1)).to_have_text("My work and department queue")
    expect(page.get_by_label("Mine only")).not_to_be_checked()
    expect(page.locator(f"#queue-list tr[data-number='{cases['urgent']}'] .badge")).to_have_text(
        "urgent"
    )
    assert page.get_by_role("button", name="Reassign selected").count() == 0
    assert page.locator("#queue-list input[name=numbers]").count() == 0
    # Posted by hand with the page's own CSRF token, the action is refused all the same.
    answer = page.evaluate(
        """async number => {
            const token = JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRF-Token'];
            const r = await fetch('/queue/assign', {method: 'POST',
                headers: {'X-CSRF-Token': token, 'Content-Type': 'application/x-www-form-urlencoded'},
                body: 'agent_id=as-xu&reason=x&numbers=' + encodeURIComponent(number)});
            return r.status;
        }""",
        cases["numbers"][0],
    )
    assert answer == 403
