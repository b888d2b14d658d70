"""Every main page of the console checked by axe-core against WCAG 2.0/2.1 A and AA (labels,
names, contrast, landmarks, ARIA use): no serious or critical violation, signed in as the
people who use each page, with a routed case on it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import Site, sign_in

pytestmark = pytest.mark.integration

AXE = Path(__file__).parent / "vendor" / "axe-core-4.14.1.min.js"
TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


def violations(page: Any) -> list[str]:
    page.add_script_tag(path=str(AXE))
    result = page.evaluate(
        "async (tags) => await axe.run(document, {runOnly: {type: 'tag', values: tags}})", TAGS
    )
    return [
        f"{v['id']} ({v['impact']}): {v['help']} — "
        + "; ".join(node["target"][0] for node in v["nodes"][:3])
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def routed_case(site: Site) -> dict[str, Any]:
    with site.api() as client:
        answer = client.post(
            "/v1/feedback",
            json={
                "channel": "web_form",
                "description": "洗衣机脱水时漏水，地板都湿了，要求上门维修",
                "customer": {"name": "张伟", "phone": "13812345678"},
                "product_model": "W10",
            },
        )
        number = answer.json()["feedback_number"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            row = client.get(f"/v1/feedback/{number}")
            if row.status_code == 200 and row.json()["status"] == "assigned":
                return dict(row.json())
            time.sleep(0.2)
    raise AssertionError("the case was not routed in time")


def test_the_main_pages_have_no_serious_accessibility_violations(page: Any, site: Site) -> None:
    case = routed_case(site)
    found: dict[str, list[str]] = {}
    page.goto(f"{site.base_url}/sign-in")
    found["/sign-in"] = violations(page)

    supervisor = site.add_user("sup.a11y", "supervisor", (case["department"],))
    sign_in(page, site, supervisor)
    for path in (
        "/queue",
        f"/cases/{case['feedback_number']}",
        "/new",
        "/sla",
        "/triage",
        "/callbacks",
        "/reports",
        "/search?q=漏水",
    ):
        page.goto(f"{site.base_url}{path}")
        page.wait_for_load_state("load")
        page.wait_for_timeout(300)  # htmx and the charts settle (a live stream stays open)
        found[path] = violations(page)
    page.get_by_role("button", name="退出").click()

    admin = site.add_user("admin.a11y", "admin")
    sign_in(page, site, admin, lang="en")
    for path in ("/admin", "/admin/agents", "/admin/sla", "/deadletters"):
        page.goto(f"{site.base_url}{path}")
        page.wait_for_load_state("load")
        page.wait_for_timeout(300)  # htmx and the charts settle (a live stream stays open)
        found[f"{path} (en)"] = violations(page)

    problems = {path: issues for path, issues in found.items() if issues}
    assert not problems, "\n".join(f"{p}: {i}" for p, i in problems.items())
