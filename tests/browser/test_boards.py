"""The boards in a real browser: the SLA board shows a breached case to its department's
supervisor (and its counts are the API's), a triage case is reclassified and leaves the
queue, an agent records a callback with the API's reasons next to the fields but may not
open the dead letters, and an admin replays a dead letter and sees what came of it."""

from __future__ import annotations

import re
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Site, StaffUser, screenshot, sign_in

pytestmark = pytest.mark.integration

COMPLAINT = "账单里多扣了一笔39元的服务费，购买时没有任何人告知，要求退款"
UNCLEAR = "关于上次那个事情"
PRODUCT = "吸尘器使用三天后无法启动，要求换货"


def poll(condition: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def submit(site: Site, description: str, **extra: Any) -> str:
    body = {
        "channel": "web_form",
        "description": description,
        "customer": {"name": "张伟", "phone": "13812345678"},
        **extra,
    }
    with site.api() as client:
        answer = client.post("/v1/feedback", json=body)
        assert answer.status_code == 202, answer.text
        return str(answer.json()["feedback_number"])


def registration(site: Site, number: str, **expected: Any) -> dict[str, Any]:
    """The registration once it has the expected values (the pipeline is asynchronous)."""

    def matches() -> dict[str, Any] | None:
        with site.api() as client:
            answer = client.get(f"/v1/feedback/{number}")
        if answer.status_code != 200:
            return None
        row: dict[str, Any] = answer.json()
        return row if all(check(row.get(k), v) for k, v in expected.items()) else None

    return poll(matches, f"{number} with {expected}")  # type: ignore[no-any-return]


def check(value: Any, expected: Any) -> bool:
    return bool(expected(value)) if callable(expected) else bool(value == expected)


def headers_of(site: Site, user: StaffUser) -> dict[str, str]:
    answer = httpx.post(
        f"{site.base_url}/v1/auth/token",
        data={"username": user.username, "password": user.password},
    )
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def test_a_supervisor_sees_a_breached_case_and_the_apis_counts(page: Any, site: Site) -> None:
    # Received ten days ago: its first-response clock is long due when it is routed.
    received = (datetime.now(UTC) - timedelta(days=10)).isoformat()
    number = submit(site, COMPLAINT, received_at=received)
    row = registration(site, number, status="assigned", breached_clocks=bool)
    department = row["department"]
    supervisor = site.add_user("sup.board", "supervisor", (department,))
    other = "logistics" if department != "logistics" else "tech"
    stranger = site.add_user("sup.board.other", "supervisor", (other,))

    sign_in(page, site, supervisor)
    page.goto(f"{site.base_url}/sla")
    flagged = page.locator(f'tr[data-number="{number}"]')
    expect(flagged).to_be_visible()
    expect(flagged).to_have_class(re.compile(r"\bbreached\b"))
    expect(flagged.get_by_role("link", name=number)).to_have_attribute("href", f"/cases/{number}")
    expect(flagged.locator("time.countdown")).to_contain_text("已超时")
    expect(flagged.locator(".clock-breached").first).to_contain_text("超时")
    # The totals are the API's, for this supervisor's departments only.
    board = httpx.get(f"{site.base_url}/v1/sla/board", headers=headers_of(site, supervisor)).json()
    for name in ("open", "warned", "breached", "escalated", "overdue"):
        expected = sum(r[name] for r in board["rows"])
        expect(page.locator(f'[data-count="{name}"] b')).to_have_text(str(expected))
    assert {r["department"] for r in board["rows"]} == {department}
    screenshot(page, "sla-board")

    # The board refreshes itself (live events, else every 30 s): a new breach appears.
    second = submit(site, COMPLAINT + "，第二次", received_at=received)
    registration(site, second, department=department, breached_clocks=bool)
    expect(page.locator(f'tr[data-number="{second}"]')).to_be_visible(timeout=40_000)

    page.get_by_role("button", name="退出").click()
    sign_in(page, site, stranger)
    page.goto(f"{site.base_url}/sla")
    expect(page.get_by_role("heading", name="时限看板")).to_be_visible()
    assert page.locator(f'tr[data-number="{number}"]').count() == 0  # another department's


def test_a_supervisor_reclassifies_a_triage_case_and_it_leaves(page: Any, site: Site) -> None:
    number = submit(site, UNCLEAR)
    registration(site, number, status="triage")
    supervisor = site.add_user("sup.triage", "supervisor", ("customer_service",))
    sign_in(page, site, supervisor)
    page.goto(f"{site.base_url}/triage")
    case = page.locator(f"#triage-{number}")
    expect(case).to_contain_text(UNCLEAR)
    case.get_by_role("button", name="重新分类").click()
    form = case.get_by_role("form", name=f"重新分类 {number}")
    # Nothing chosen, no reason: the API's reason shows next to the reason field.
    form.get_by_role("button", name="分类并派送").click()
    reason_error = form.locator("#reason-" + number + " + .field-error")
    expect(reason_error).to_be_visible()
    # A reason but no category: the service refuses the category, shown by its field.
    form.get_by_label("理由").fill("客户电话确认是送货延迟")
    form.get_by_role("button", name="分类并派送").click()
    expect(form.locator(f"#subcategory-{number} + .field-error")).to_contain_text("unknown")
    expect(form.get_by_label("理由")).to_have_value("客户电话确认是送货延迟")
    form.get_by_label("类别").select_option("logistics/delay")
    form.get_by_label("反馈类型").select_option("complaint")
    screenshot(page, "triage")
    form.get_by_role("button", name="分类并派送").click()
    expect(case).to_have_count(0)
    expect(page.locator("#toast")).to_contain_text(number)
    routed = registration(site, number, department="logistics")
    assert routed["status"] != "triage"
    with site.api() as client:
        assert number not in [i["feedback_number"] for i in client.get("/v1/triage").json()]
    page.reload()
    assert page.locator(f"#triage-{number}").count() == 0


def test_an_agent_records_a_callback_but_may_not_open_dead_letters(page: Any, site: Site) -> None:
    purchased = date.today() - timedelta(days=10)
    number = submit(site, PRODUCT, purchase_date=purchased.isoformat(), product_model="V8 吸尘器")
    department = registration(site, number, department=bool)["department"]
    agent = site.add_user("agent.callback", "agent", (department,))
    agent_headers = headers_of(site, agent)

    def task_of_case() -> dict[str, Any] | None:
        tasks = httpx.get(f"{site.base_url}/v1/callbacks", headers=agent_headers).json()
        return next((t for t in tasks if t["feedback_number"] == number), None)

    task = poll(task_of_case, "the after-sales callback")
    sign_in(page, site, agent)
    page.goto(f"{site.base_url}/callbacks")
    listed = page.locator(f'tr[data-task="{task["id"]}"]')
    expect(listed).to_contain_text(number)
    listed.get_by_role("link", name="售后回访").click()
    detail = page.locator("#callback-detail")
    expect(detail.locator("blockquote.script")).to_contain_text(purchased.isoformat())
    expect(page).to_have_url(f"{site.base_url}/callbacks/{task['id']}")
    form = detail.get_by_role("form", name="记录回访")
    # Not said whether the customer was reached: the reason shows in that group.
    form.get_by_label("结果", exact=True).fill("满意")
    form.get_by_role("button", name="保存回访记录").click()
    expect(form.locator("fieldset .field-error")).to_be_visible()
    # Not convenient now, and no next time: the reason shows next to the time field.
    form.get_by_label("已联系上").check()
    form.get_by_label("结果", exact=True).fill("不方便")
    form.get_by_role("button", name="保存回访记录").click()
    expect(form.locator("#reschedule_to + .field-error")).to_contain_text("reschedule_to")
    page.evaluate("window.scrollTo(0, 0)")  # the list's sticky header, as first seen
    screenshot(page, "callbacks")
    form.get_by_label("结果", exact=True).fill("满意")
    form.get_by_label("满意度（1–5）").select_option("5")
    form.get_by_role("button", name="保存回访记录").click()
    expect(detail.get_by_role("status")).to_contain_text("任务已完成")
    done = httpx.get(f"{site.base_url}/v1/callbacks/{task['id']}", headers=agent_headers).json()
    assert done["state"] == "done" and done["satisfaction"] == 5 and done["outcome"] == "满意"
    expect(page.locator(f'tr[data-task="{task["id"]}"]')).to_have_count(0)  # list refreshed

    nav = page.get_by_role("navigation", name="主导航")
    assert nav.get_by_role("link", name="死信").count() == 0
    answer = page.goto(f"{site.base_url}/deadletters")
    assert answer is not None and answer.status == 403
    expect(page.get_by_role("heading", name="无权访问")).to_be_visible()


def test_an_admin_replays_a_dead_letter_and_sees_the_result(page: Any, site: Site) -> None:
    with site.api() as client:
        kept = client.post(
            "/v1/channels/email/eml",
            files={"file": ("empty.eml", b"\r\n\r\n", "message/rfc822")},
        ).json()
        assert kept["status"] == "kept as a dead letter", kept
    letter_id = kept["dead_letter_id"]
    admin = site.add_user("admin.letters", "admin")
    sign_in(page, site, admin)
    page.get_by_role("navigation", name="主导航").get_by_role("link", name="死信").click()
    row = page.locator(f'tr[data-letter="{letter_id}"]')
    expect(row).to_contain_text("email")
    expect(row.locator("td.cause")).not_to_be_empty()
    row.get_by_role("button", name="重放").click()
    # Still unreadable: the API's answer is shown on the row, and the letter is kept.
    expect(row.get_by_role("alert")).to_contain_text("still unreadable")
    screenshot(page, "deadletters")
    with site.api() as client:
        letters = client.get("/v1/deadletters").json()
    assert letter_id in [letter["dead_letter_id"] for letter in letters]
