"""Signing in to the console: the account's role decides the navigation; a wrong password
says so; pages need a session; signing out ends it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import Site, screenshot, sign_in

pytestmark = pytest.mark.integration


def test_a_page_sends_a_stranger_to_sign_in_and_back(page: Any, site: Site) -> None:
    user = site.add_user("sup.sign", "supervisor", ("customer_service",))
    page.goto(f"{site.base_url}/sla")
    assert "/sign-in" in page.url
    page.get_by_label("用户名").fill(user.username)
    page.get_by_label("密码").fill("not the password")
    page.get_by_role("button", name="登录").click()
    assert page.get_by_role("alert").inner_text() == "wrong username or password"
    page.get_by_label("密码").fill(user.password)
    page.get_by_role("button", name="登录").click()
    page.wait_for_url(f"{site.base_url}/sla")
    nav = page.get_by_role("navigation", name="主导航")
    assert nav.get_by_role("link", name="时限看板").is_visible()
    assert nav.get_by_role("link", name="管理").count() == 0  # admins only
    screenshot(page, "sign-in-landing")
    page.get_by_role("button", name="退出").click()
    page.goto(f"{site.base_url}/queue")
    assert "/sign-in" in page.url


def test_each_role_sees_its_own_navigation_in_either_language(page: Any, site: Site) -> None:
    admin = site.add_user("admin.sign", "admin")
    sign_in(page, site, admin, lang="en")
    nav = page.get_by_role("navigation", name="Main")
    assert nav.get_by_role("link", name="Admin").is_visible()
    assert nav.get_by_role("link", name="Dead letters").is_visible()
    assert nav.get_by_role("link", name="New feedback").is_visible()
    assert nav.get_by_role("link", name="Callbacks").count() == 0  # admins do not call back
