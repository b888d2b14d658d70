"""The new-feedback form (`/new`) in a real browser: the classifier's suggestion follows the
description as it is typed, the API's reasons show next to their fields, a registration
answers its number, and the same customer typed another way brings up their feedback."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Site, screenshot, sign_in

pytestmark = pytest.mark.integration


def _in_read_model(site: Site, number: str) -> dict[str, Any]:
    """The registration row once the projection has it (the hint reads the read model)."""
    with site.api() as client:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            answer = client.get(f"/v1/feedback/{number}")
            if answer.status_code == 200:
                row: dict[str, Any] = answer.json()
                return row
            time.sleep(0.2)
    raise AssertionError(f"{number} never reached the registration table")


def test_phone_agent_registers_with_suggestion_errors_and_recent_hint(
    page: Any, site: Site
) -> None:
    agent = site.add_user("agent.intake", "agent", ("customer_service",), agent_id="cs-li")
    sign_in(page, site, agent)
    page.goto(f"{site.base_url}/new")
    expect(page.get_by_role("heading", name="登记反馈", exact=True)).to_be_visible()
    suggestion = page.locator("#suggestion")

    # The suggestion follows the text: a praise first, then a danger to someone's safety.
    description = page.get_by_label("问题描述")
    description.press_sequentially("门店店员讲解非常耐心，服务很好，特此表扬", delay=5)
    expect(suggestion.locator("[data-field=type]")).to_have_text("表扬")
    expect(suggestion.locator("[data-field=priority]")).not_to_have_text("紧急")
    description.fill("")
    description.press_sequentially("热水器漏电，家里老人洗澡时被电了一下，太危险了", delay=5)
    expect(suggestion.locator("[data-field=priority]")).to_have_text("紧急")
    expect(suggestion.locator("[data-field=type]")).to_have_text("投诉")
    suggestion.get_by_text("依据").click()
    expect(suggestion.locator(".why li").first).to_contain_text("model.")

    # A phone the API refuses: its reason beside the phone field, what was typed kept.
    page.get_by_label("客户名称/联系人").fill("张伟")
    page.get_by_label("联系电话").fill("138abc")
    page.get_by_label("订单号").fill("SO-20240520-77")
    page.get_by_label("通话编号").fill("call-intake-1")
    page.get_by_role("button", name="登记").click()
    phone_error = page.locator("#phone-error")
    expect(phone_error).to_be_visible()
    expect(phone_error).to_contain_text("pattern")
    expect(page.get_by_label("联系电话")).to_have_attribute("aria-describedby", "phone-error")
    assert page.locator(".field-error").count() == 1  # only the phone was wrong
    expect(page.get_by_label("问题描述")).to_have_value(
        "热水器漏电，家里老人洗澡时被电了一下，太危险了"
    )
    screenshot(page, "intake-form-error")

    # Corrected: registered, with its number and a link to the case.
    page.get_by_label("联系电话").fill("13812345678")
    page.get_by_role("button", name="登记").click()
    number_shown = page.locator("#feedback-number")
    expect(number_shown).to_have_text(re.compile(r"^F\d{8}-\d{4,}$"))
    number = number_shown.inner_text()
    link = page.get_by_role("link", name=f"查看案件 {number}")
    expect(link).to_have_attribute("href", f"/cases/{number}")
    screenshot(page, "intake-registered")
    row = _in_read_model(site, number)
    assert row["channel"] == "phone" and row["receiver"] == "cs-li"
    assert row["channel_reference"] == "call-intake-1"
    assert "SO-20240520-77" in row["description"]  # the order number, under the description

    # The same customer again, the phone written with a dash and a space: the hint names
    # the first feedback (number, date, type, status), and no other personal data.
    page.get_by_role("link", name="再登记一条").click()
    page.get_by_label("联系电话").press_sequentially("138-1234 5678", delay=20)
    hint = page.locator("#recent .recent-hint")
    expect(hint).to_be_visible()
    expect(hint.get_by_role("link", name=number)).to_have_attribute("href", f"/cases/{number}")
    expect(hint).not_to_contain_text("张伟")
    expect(hint).not_to_contain_text("5678")
    screenshot(page, "intake-recent-hint")


def test_counter_visit_is_registered_as_a_store_record(page: Any, site: Site) -> None:
    agent = site.add_user("agent.counter", "agent", ("customer_service",), agent_id="cs-zhao")
    sign_in(page, site, agent, lang="en")
    page.goto(f"{site.base_url}/new?channel=store")
    expect(page.get_by_label("Call id")).to_be_hidden()  # a counter visit has no call
    page.get_by_label("Customer name").fill("王芳")
    page.get_by_label("E-mail").fill("wang.fang@example.com")
    page.get_by_label("Product model / service").fill("扫地机器人 R7")
    page.get_by_label("Type as stated").select_option("complaint")
    page.get_by_label("Description").fill("扫地机器人买来两周，充电座无法充电")
    page.get_by_role("button", name="Register").click()
    number = page.locator("#feedback-number").inner_text()
    row = _in_read_model(site, number)
    assert row["channel"] == "store" and row["receiver"] == "cs-zhao"
    assert row["stated_type"] == "complaint" and row["product_model"] == "扫地机器人 R7"

    # Nothing to reach the customer by: the API's reason shows, nothing is registered.
    page.get_by_role("link", name="Register another").click()
    page.get_by_label("Description").fill("顾客口头反馈，没有留下联系方式")
    page.get_by_role("button", name="Register").click()
    expect(page.locator("#customer-error")).to_contain_text("phone or email")
    expect(page.locator("#feedback-number")).to_have_count(0)


def test_quality_may_not_register(page: Any, site: Site) -> None:
    quality = site.add_user("quality.intake", "quality")
    sign_in(page, site, quality)
    page.goto(f"{site.base_url}/new")
    expect(page.get_by_label("问题描述")).to_have_count(0)
    assert (
        page.get_by_role("navigation", name="主导航").get_by_role("link", name="登记反馈").count()
        == 0
    )
