"""The admin pages in a real browser: users (a bad username's reason next to its field, a
generated password shown once and working), agents' capacity, SLA policies (a bad target's
reason next to it, then a good one in the history under the admin's name), the calendar and
the rule book; other roles are refused."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Site, screenshot, sign_in

pytestmark = pytest.mark.integration


def test_an_admin_adds_a_user_with_a_generated_password_and_deactivates_them(
    page: Any, site: Site
) -> None:
    admin = site.add_user("admin.zhao", "admin")
    sign_in(page, site, admin)
    page.goto(f"{site.base_url}/admin")
    username = page.get_by_label("用户名", exact=True)
    username.fill("Bad Name!")
    page.get_by_role("button", name="添加", exact=True).click()
    error = page.locator("#username-error")
    expect(error).to_be_visible()
    assert "pattern" in error.inner_text()
    # The reason sits with its field and is announced with it.
    assert page.get_by_label("用户名", exact=True).get_attribute("aria-describedby") == (
        "username-error"
    )
    assert page.get_by_label("用户名", exact=True).input_value() == "Bad Name!"

    page.get_by_label("用户名", exact=True).fill("agent.new")
    page.get_by_label("角色", exact=True).select_option("agent")
    page.get_by_label("坐席工号（可选）").fill("agent.new")
    page.locator(".add-user").get_by_label("售后部").check()
    page.get_by_role("button", name="添加", exact=True).click()
    generated = page.locator("#generated-password")
    expect(generated).to_be_visible()
    password = generated.inner_text().strip()
    assert len(password) >= 12
    row = page.locator('tr[data-user="agent.new"]')
    expect(row).to_contain_text("售后部")
    screenshot(page, "admin-users")
    # The password shown once signs the new user in.
    token = httpx.post(
        f"{site.base_url}/v1/auth/token", data={"username": "agent.new", "password": password}
    )
    assert token.status_code == 200, token.text
    # Shown once: the page loaded again does not show it.
    page.goto(f"{site.base_url}/admin")
    assert page.locator("#generated-password").count() == 0

    page.get_by_role("button", name="编辑 agent.new").click()
    editing = page.locator('tr.editing[data-user="agent.new"]')
    editing.get_by_label("启用").uncheck()
    editing.get_by_role("button", name="保存").click()
    expect(page.locator('tr[data-user="agent.new"]')).to_contain_text("已停用")
    with site.api() as api:
        users = {u["username"]: u for u in api.get("/v1/users").json()}
    assert users["agent.new"]["active"] is False
    # The change log names the admin for the addition and the deactivation; the
    # generated password is never in it.
    page.goto(f"{site.base_url}/admin")
    logged = page.locator('#admin-changes tr[data-subject="agent.new"]')
    expect(logged).to_have_count(2)
    expect(logged.first).to_contain_text("admin.zhao")
    expect(logged.first).to_contain_text("active: false")
    assert password not in page.content()
    with site.api() as api:
        records = api.get("/v1/audit/admin-changes", params={"subject": "agent.new"}).json()
    assert [r["actor"] for r in records] == ["admin.zhao", "admin.zhao"]
    assert records[1]["change"]["password"] == "changed"  # the added user's, never its value


def test_an_admin_changes_an_agents_capacity_and_sees_a_bad_one_refused(
    page: Any, site: Site
) -> None:
    admin = site.add_user("admin.qian", "admin")
    with site.api() as api:
        agent = api.get("/v1/agents").json()[0]["agent"]
    agent_id = agent["agent_id"]
    sign_in(page, site, admin)
    page.goto(f"{site.base_url}/admin/agents")
    row = page.locator(f'tr[data-agent="{agent_id}"]')
    row.get_by_label(f"容量 {agent_id}").fill("-5")
    row.get_by_role("button", name=f"保存 {agent_id}").click()
    row = page.locator(f'tr[data-agent="{agent_id}"]')
    expect(row.locator(".field-error")).to_be_visible()
    assert "greater than or equal to 0" in row.locator(".field-error").inner_text()
    with site.api() as api:
        unchanged = next(
            a["agent"] for a in api.get("/v1/agents").json() if a["agent"]["agent_id"] == agent_id
        )
    assert unchanged["capacity"] == agent["capacity"]

    row.get_by_label(f"容量 {agent_id}").fill("7")
    row.get_by_label(f"技能 {agent_id}").fill("billing, refunds")
    row.get_by_role("button", name=f"保存 {agent_id}").click()
    expect(page.get_by_role("status").filter(has_text=f"已保存 {agent_id}")).to_be_visible()
    expect(page.locator(f'tr[data-agent="{agent_id}"] .field-error')).to_have_count(0)
    screenshot(page, "admin-agents")
    with site.api() as api:
        changed = next(
            a["agent"] for a in api.get("/v1/agents").json() if a["agent"]["agent_id"] == agent_id
        )
    assert changed["capacity"] == 7
    assert changed["skills"] == ["billing", "refunds"]
    page.goto(f"{site.base_url}/admin/agents")
    logged = page.locator(f'#admin-changes tr[data-subject="{agent_id}"]')
    expect(logged).to_have_count(1)  # the refused change left no record
    expect(logged).to_contain_text("admin.qian")
    expect(logged).to_contain_text("capacity: 7")


def test_an_admin_edits_an_sla_policy_a_bad_value_then_a_good_one_in_the_history(
    page: Any, site: Site
) -> None:
    admin = site.add_user("admin.sun", "admin")
    sign_in(page, site, admin)
    page.goto(f"{site.base_url}/admin/sla")
    expect(page.get_by_text("当前生效：配置文件")).to_be_visible()
    target = page.locator("#first_response-0-target")
    assert target.input_value() == "4h"
    target.fill("4 hours")
    page.get_by_label("修改理由（记入变更记录）").fill("紧急件提速")
    page.get_by_role("button", name="保存为新版本").click()
    error = page.locator('[id="first_response.0.target-error"]')
    expect(error).to_be_visible()
    # Next to its own field: in the same cell as the input, not elsewhere on the page.
    cell = page.locator("td", has=page.locator("#first_response-0-target"))
    expect(cell.locator(".field-error")).to_have_text(re.compile("target"))
    with site.api() as api:
        assert api.get("/v1/admin/config/sla_policies/history").json() == []

    page.locator("#first_response-0-target").fill("3h")
    page.get_by_role("button", name="保存为新版本").click()
    expect(page.get_by_text("已保存为第 1 版。")).to_be_visible()
    history = page.locator("table.history tbody tr")
    expect(history).to_have_count(1)
    expect(history.first).to_contain_text("admin.sun")
    expect(history.first).to_contain_text("紧急件提速")
    assert page.locator("#first_response-0-target").input_value() == "3h"
    screenshot(page, "admin-sla")
    with site.api() as api:
        stored = api.get("/v1/admin/config/sla_policies").json()
    assert stored["version"] == 1 and stored["changed_by"] == "admin.sun"
    assert stored["body"]["clocks"]["first_response"][0] == {
        "target": "3h",
        "time": "calendar",
        "when": {"priority": "urgent"},
    }


def test_calendar_overrides_and_rules_pages_and_other_roles_refused(page: Any, site: Site) -> None:
    admin = site.add_user("admin.li", "admin")
    sign_in(page, site, admin, lang="en")
    page.goto(f"{site.base_url}/admin/calendar")
    page.get_by_label("Extra closed days").fill("2026-12-31\n2026-13-01")
    page.get_by_label("Reason (kept in the history)").fill("year end")
    page.get_by_role("button", name="Save as a new version").click()
    expect(page.locator("#extra_closed-error")).to_contain_text("1")
    page.get_by_label("Extra closed days").fill("2026-12-31")
    page.get_by_role("button", name="Save as a new version").click()
    expect(page.get_by_text("Saved as version 1.")).to_be_visible()
    expect(page.locator("table.history tbody tr").first).to_contain_text("admin.li")
    screenshot(page, "admin-calendar")

    page.goto(f"{site.base_url}/admin/rules")
    rules = page.get_by_label("Rule book (YAML)")
    assert "departments:" in rules.input_value()
    rules.fill(
        rules.input_value().replace(
            "general_department: customer_service", "general_department: nowhere"
        )
    )
    page.get_by_label("Reason (kept in the history)").fill("try")
    page.get_by_role("button", name="Save as a new version").click()
    expect(page.locator("#rules-error")).to_contain_text("nowhere")
    screenshot(page, "admin-rules")

    supervisor = site.add_user("sup.admin", "supervisor", ("customer_service",))
    page.context.clear_cookies()
    sign_in(page, site, supervisor)
    for path in ("/admin", "/admin/sla", "/admin/agents"):
        answer = page.goto(f"{site.base_url}{path}")
        assert answer is not None and answer.status == 403, path
