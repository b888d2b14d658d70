"""Reports and search in the browser: a supervisor sees the range's total and the charts
(drawn by ECharts, their tables equal to the API's figures), downloads the XLSX, sees the
total rise after a new case; search finds a case by a Chinese word and by its number, and
an agent of another department finds neither."""

from __future__ import annotations

import io
import time
from datetime import datetime
from typing import Any

import httpx
import openpyxl
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Site, StaffUser, screenshot, sign_in

pytestmark = pytest.mark.integration

XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
DESCRIPTION = "我家的洗衣机X200脱水时漏水严重，地板都泡了，已经第二次了，请尽快上门维修"
WORD = "漏水"
ROUTED = ("queued", "assigned")


def register(site: Site, description: str, phone: str) -> dict[str, Any]:
    """A web-form feedback, once routed to a department."""
    with site.api() as client:
        answer = client.post(
            "/v1/feedback",
            json={
                "channel": "web_form",
                "description": description,
                "product_model": "X200",
                "customer": {"name": "张伟", "phone": phone},
            },
        )
        assert answer.status_code in (200, 201, 202), answer.text
        number = answer.json()["feedback_number"]
        deadline = time.monotonic() + 60
        seen = client.get(f"/v1/feedback/{number}")
        while time.monotonic() < deadline:
            seen = client.get(f"/v1/feedback/{number}")
            if seen.status_code == 200 and seen.json()["status"] in ROUTED:
                return dict(seen.json())
            time.sleep(0.3)
    raise AssertionError(f"{number} was not routed in time: {seen.text}")


def token_of(site: Site, user: StaffUser) -> dict[str, str]:
    answer = httpx.post(
        f"{site.base_url}/v1/auth/token",
        data={"username": user.username, "password": user.password},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def report_when(site: Site, headers: dict[str, str], day: str, total: int) -> dict[str, Any]:
    """The API's report for `day` once the projection counts `total` cases."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answer = httpx.get(
            f"{site.base_url}/v1/reports/summary",
            params={"from": day, "to": day},
            headers=headers,
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        if answer.json()["total"] == total:
            return dict(answer.json())
        time.sleep(0.3)
    raise AssertionError(f"the report never reached {total} cases")


def table_rows(page: Any, chart: str) -> list[list[str]]:
    section = page.locator(f"#chart-{chart}")
    section.locator("summary").click()
    return [
        [cell.strip() for cell in row.locator("th, td").all_inner_texts()]
        for row in section.locator("tbody tr").all()
    ]


def search_for(page: Any, text: str) -> None:
    """Types into the search box: htmx searches after a pause in typing (no button)."""
    with page.expect_response(lambda r: "/search?" in r.url and r.status == 200):
        page.get_by_label("关键词或反馈编号").fill(text)
        page.get_by_label("关键词或反馈编号").press("End")


def test_the_report_draws_the_api_figures_downloads_and_search_keeps_to_departments(
    page: Any, site: Site
) -> None:
    first = register(site, DESCRIPTION, "13812345678")
    department = first["department"]
    supervisor = site.add_user("sup.reports", "supervisor", (department,))
    other = "finance" if department != "finance" else "logistics"
    outsider = site.add_user("agent.reports", "agent", (other,), agent_id="agent-reports")
    headers = token_of(site, supervisor)
    day = datetime.fromisoformat(first["received_at"]).astimezone(site.settings.zone).date()
    expected = report_when(site, headers, day.isoformat(), 1)

    sign_in(page, site, supervisor)
    page.goto(f"{site.base_url}/reports?from={day}&to={day}")
    assert page.locator("#report-total").inner_text() == str(expected["total"]) == "1"
    # ECharts drew every chart that has data (SVG renderer).
    page.locator("#chart-volume [data-chart] svg").wait_for()
    assert (
        page.locator("[data-chart][data-drawn] svg").count() == page.locator("[data-chart]").count()
    )
    assert page.locator("[data-chart]").count() >= 6
    # The volume table: the API's trend, period by period and channel by channel.
    points = expected["trend"]["points"]
    channels = list(points[0]["channels"])
    assert table_rows(page, "volume") == [
        [p["period"], *(str(p["channels"][c]) for c in channels), str(p["cases"])] for p in points
    ]
    assert page.locator("#chart-volume thead th").all_inner_texts()[1:-1] == ["网站/APP"]
    # Category mix adds up to the total.
    assert sum(int(row[1]) for row in table_rows(page, "categories")) == expected["total"]
    screenshot(page, "reports")

    # The XLSX of the same range, through the console.
    link = page.get_by_role("link", name="下载 XLSX")
    with page.expect_download() as started:
        link.click()
    download = started.value
    assert download.suggested_filename == f"report-{day}_{day}.xlsx"
    with open(download.path(), "rb") as saved:
        book = openpyxl.load_workbook(io.BytesIO(saved.read()))
    assert "概览" in book.sheetnames
    fetched = page.request.get(site.base_url + link.get_attribute("href"))
    assert fetched.status == 200 and fetched.headers["content-type"] == XLSX_TYPE
    assert len(fetched.body()) > 1000

    # A second case of the department: after a reload the total is 2.
    second = register(site, DESCRIPTION, "13912345679")
    assert second["department"] == department
    report_when(site, headers, day.isoformat(), 2)
    page.reload()
    assert page.locator("#report-total").inner_text() == "2"

    # Search: by a Chinese word of the description, then by the number.
    page.goto(f"{site.base_url}/search")
    search_for(page, WORD)
    results = page.locator("#search-results")
    results.get_by_role("link", name=first["feedback_number"]).wait_for()
    assert results.get_by_role("link", name=second["feedback_number"]).is_visible()
    assert "/search?q=" in page.url  # the address keeps the search
    screenshot(page, "search")
    search_for(page, first["feedback_number"])
    hit = results.get_by_role("link", name=first["feedback_number"])
    hit.wait_for()
    assert hit.get_attribute("href") == f"/cases/{first['feedback_number']}"
    assert results.get_by_role("link", name=second["feedback_number"]).count() == 0

    # An agent of another department finds neither.
    page.get_by_role("button", name="退出").click()
    sign_in(page, site, outsider)
    page.goto(f"{site.base_url}/search?q={WORD}")
    assert page.get_by_text("没有找到匹配的案例。").is_visible()
    assert page.get_by_role("link", name=first["feedback_number"]).count() == 0
    page.goto(f"{site.base_url}/search")
    search_for(page, first["feedback_number"])
    # The answer comes by htmx after the typing pause: wait for it, as for the hits above.
    expect(results.get_by_text("没有你可查看的此编号案例。")).to_be_visible()
    # Reports are not theirs at all.
    page.goto(f"{site.base_url}/reports")
    assert page.get_by_role("link", name="下载 XLSX").count() == 0


def test_a_range_the_api_refuses_shows_its_reason_on_the_form(page: Any, site: Site) -> None:
    quality = site.add_user("quality.reports", "quality")
    sign_in(page, site, quality, lang="en")
    page.goto(f"{site.base_url}/reports")
    page.get_by_label("From").fill("2026-03-10")
    page.get_by_label("To (included)").fill("2026-03-01")
    page.get_by_role("button", name="Show report").click()
    alert = page.locator("#report-result").get_by_role("alert")
    alert.wait_for()
    assert "after" in alert.inner_text()
    assert page.locator("[data-chart]").count() == 0
    # Corrected, the report comes in place (htmx) and its charts are drawn again.
    page.get_by_label("From").fill("2026-02-20")
    page.get_by_label("Department").select_option("logistics")  # quality: any department
    page.get_by_role("button", name="Show report").click()
    page.locator("#chart-volume [data-chart] svg").wait_for()
    assert page.locator("#report-result").get_by_role("alert").count() == 0
    assert "logistics" in page.locator("#report-range").inner_text()
    assert "department=logistics" in page.url
    assert page.locator("#report-total").inner_text() == "0"
