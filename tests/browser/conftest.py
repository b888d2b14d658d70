"""The console in a real browser: Debian's Chromium driven by Playwright (never
`playwright install`), against every service on the real Kafka and PostgreSQL.

One platform per module (`site`), staff users created through the API with generated
passwords, and `sign_in(page, user)`. Screenshots go to `tests/browser/screenshots/`
(git ignores it) so a reviewer can look at each main page.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.settings import Settings
from tests.conftest import fresh_settings, serve_in_thread, signed_in

CHROMIUM = os.environ.get("FEEDBACK_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).parent / "screenshots"

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class StaffUser:
    username: str
    password: str
    role: str
    departments: tuple[str, ...] = ()
    agent_id: str | None = None


@dataclass
class Site:
    base_url: str
    settings: Settings
    admin_headers: dict[str, str]

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.admin_headers, timeout=30)

    def add_user(
        self,
        username: str,
        role: str,
        departments: tuple[str, ...] = (),
        agent_id: str | None = None,
    ) -> StaffUser:
        user = StaffUser(username, secrets.token_urlsafe(12), role, departments, agent_id)
        body: dict[str, Any] = {
            "username": username,
            "password": user.password,
            "role": role,
            "departments": list(departments),
        }
        if agent_id:
            body["agent_id"] = agent_id
        with self.api() as client:
            answer = client.post("/v1/users", json=body)
            assert answer.status_code == 201, answer.text
        return user


@pytest.fixture(scope="session")
def browser_type_launch_args() -> dict[str, Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    return {"executable_path": CHROMIUM, "args": ["--no-sandbox"]}


@pytest.fixture(scope="session")
def browser_context_args() -> dict[str, Any]:
    return {"viewport": {"width": 1366, "height": 820}, "locale": "zh-CN"}


@pytest.fixture(scope="module")
def site(postgres: Any, kafka: Any) -> Iterator[Site]:
    settings = fresh_settings(postgres, kafka, topic_partitions=2, publish_timeout_s=5.0)
    with serve_in_thread(settings) as base_url:
        yield Site(base_url, settings, signed_in(settings, "admin", username="test-admin"))


def sign_in(page: Any, site: Site, user: StaffUser, lang: str = "zh") -> None:
    page.goto(f"{site.base_url}/language/{lang}?back=/sign-in")
    page.get_by_label("用户名" if lang == "zh" else "Username").fill(user.username)
    page.get_by_label("密码" if lang == "zh" else "Password").fill(user.password)
    page.get_by_role("button", name="登录" if lang == "zh" else "Sign in").click()
    page.wait_for_url(lambda url: "/sign-in" not in url)


def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
