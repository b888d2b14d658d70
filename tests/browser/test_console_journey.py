"""A complaint's whole life through the console, as the issue tells it: an agent registers a
phone complaint; it is routed into the owner's queue; the owner opens it, accepts, adds a
note and resolves; the customer (through the agent) is not satisfied and the case reopens
one priority up; resolved again, confirmed, rated; the report changes. An agent of another
department cannot open it; a quality user never sees the phone number."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Site, StaffUser, screenshot, sign_in

pytestmark = pytest.mark.integration

PHONE = "13911112222"
COMPLAINT = "客户来电投诉：新买的电热水壶用了三天底座就不通电了，指示灯不亮，要求换货"
PRIORITY_UP = {"low": "medium", "medium": "high", "high": "urgent"}
PRIORITY_LABEL = {"urgent": "紧急", "high": "高", "medium": "中", "low": "低"}


@pytest.fixture
def person(browser: Any, browser_context_args: dict[str, Any], site: Site) -> Iterator[Any]:
    """Opens a signed-in page for each staff user asked for (each in its own browser
    context, as on separate machines)."""
    contexts: list[Any] = []

    def open_as(user: StaffUser) -> Any:
        context = browser.new_context(**browser_context_args)
        contexts.append(context)
        page = context.new_page()
        sign_in(page, site, user)
        return page

    yield open_as
    for context in contexts:
        context.close()


def routed_row(site: Site, number: str) -> dict[str, Any]:
    with site.api() as client:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            answer = client.get(f"/v1/feedback/{number}")
            if answer.status_code == 200 and answer.json()["status"] == "assigned":
                return dict(answer.json())
            time.sleep(0.2)
    raise AssertionError(f"{number} was not routed to an owner in time")


def figure(page: Any, label: str) -> str:
    text: str = (
        page.locator(".figure", has=page.locator("dt", has_text=label)).locator("dd").inner_text()
    )
    return text


def case_status(page: Any, status: str) -> None:
    page.wait_for_selector(f'#case[data-status="{status}"]')


def act(page: Any, action: str, summary: str, fields: dict[str, str], button: str) -> None:
    page.locator(".action-list summary", has_text=summary).click()
    form = page.locator(f"#action-{action}")
    for label, value in fields.items():
        form.get_by_label(label).fill(value)
    form.get_by_role("button", name=button).click()


def test_a_phone_complaint_from_registration_to_rating(person: Any, site: Site) -> None:
    reception = site.add_user("reception.journey", "agent", ("customer_service",))
    desk = person(reception)
    desk.goto(f"{site.base_url}/new")
    desk.get_by_label("客户名称/联系人").fill("王芳")
    desk.get_by_label("联系电话").fill("139-1111 2222")  # as the agent hears it
    desk.get_by_label("产品型号/服务类型").fill("KT-1500")
    desk.get_by_label("问题描述").fill(COMPLAINT)
    desk.get_by_label("通话编号").fill("call-journey-1")
    desk.get_by_role("button", name="登记").click()
    number = desk.locator("#feedback-number").inner_text()
    assert re.fullmatch(r"F\d{8}-\d{4,}", number), number
    screenshot(desk, "journey-registered")

    row = routed_row(site, number)
    department, owner_id, priority = row["department"], row["owner"], row["priority"]
    owner = site.add_user("owner.journey", "agent", (department,), owner_id)
    work = person(owner)
    # Routed into the owner's queue, without a reload once the page is open.
    work.goto(f"{site.base_url}/queue?mine=true")
    queued = work.locator(f'tr[data-number="{number}"]')
    expect(queued).to_be_visible(timeout=15_000)
    assert PHONE not in work.content()
    screenshot(work, "journey-queue")
    queued.get_by_role("link", name=number).click()
    work.wait_for_url(f"**/cases/{number}")

    work.get_by_role("button", name="确认接收", exact=True).click()
    case_status(work, "accepted")
    act(work, "note", "添加备注", {"备注内容": "已联系客户，安排换货"}, "保存备注")
    case_status(work, "in_progress")
    act(work, "resolve", "登记处理结果", {"处理摘要": "已寄出新水壶"}, "提交结果")
    case_status(work, "resolved")

    # The customer is not satisfied: the case reopens, one priority up.
    work.locator(".action-list summary", has_text="代客户确认").click()
    work.get_by_label("不满意（案件将重新打开并提高优先级）").check()
    work.get_by_role("button", name="提交确认").click()
    case_status(work, "reopened")
    raised = PRIORITY_UP.get(priority, priority)
    expect(work.locator("#case .badge[class*=priority-]").first).to_have_text(
        PRIORITY_LABEL[raised]
    )
    screenshot(work, "journey-reopened")

    act(work, "resolve", "登记处理结果", {"处理摘要": "上门更换了底座，客户试用正常"}, "提交结果")
    case_status(work, "resolved")
    work.locator(".action-list summary", has_text="代客户确认").click()
    work.get_by_label("满意", exact=True).check()
    work.get_by_role("button", name="提交确认").click()
    case_status(work, "confirmed")
    # The department's supervisor reads today's report: one case, nobody rated yet.
    supervisor = person(site.add_user("sup.journey", "supervisor", (department,)))
    supervisor.goto(f"{site.base_url}/reports")
    assert supervisor.locator("#report-total").inner_text() == "1"
    assert (figure(supervisor, "满意（4–5 分）"), figure(supervisor, "NPS")) == ("—", "—")

    act(work, "rate", "代客户评价", {"满意度（1–5）": "4", "推荐度（0–10）": "9"}, "提交评价")
    expect(work.locator('#timeline li[data-what="Rated"]')).to_have_count(1)
    screenshot(work, "journey-rated")
    # The rating reaches the report once the read model has it (usually within a second).
    deadline = time.monotonic() + 20
    while figure(supervisor, "满意（4–5 分）") != "100.0%" and time.monotonic() < deadline:
        time.sleep(0.5)
        supervisor.reload()
    assert figure(supervisor, "满意（4–5 分）") == "100.0%"
    assert float(figure(supervisor, "NPS")) == 100
    screenshot(supervisor, "journey-report")

    # An agent of another department cannot open it.
    elsewhere = "finance" if department != "finance" else "logistics"
    stranger = person(site.add_user("stranger.journey", "agent", (elsewhere,), "fin-x"))
    assert stranger.goto(f"{site.base_url}/cases/{number}").status == 403
    assert COMPLAINT not in stranger.content()

    # A quality user reads it all but never the phone number, in any form.
    quality = person(site.add_user("quality.journey", "quality"))
    assert quality.goto(f"{site.base_url}/cases/{number}").status == 200
    expect(quality.get_by_text(COMPLAINT)).to_be_visible()
    html = quality.content()
    assert PHONE not in html and "139-1111 2222" not in html
