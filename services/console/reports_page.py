"""Reports (`/reports`) and archive and case-library search (`/search`).

`/reports` shows `GET /v1/reports/summary` for a range as ECharts charts: each chart's data
goes into the page as JSON (static/reports.js draws it) and, the same figures, as a table
anyone can read without the picture. Downloads stream the API's XLSX/CSV for the same range.
`/search` asks `GET /v1/search` (department-scoped by the API) and `GET /v1/library`; a
feedback number asks `GET /v1/feedback/{number}`, which answers only a case the person may see.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from contracts.codes import CHANNEL_LABELS, FEEDBACK_TYPE_LABELS
from contracts.events import FEEDBACK_NUMBER_PATTERN
from services.access.roles import visible_departments
from services.console.session import Viewer, is_fragment, needs
from services.projections.report_files import CLOCK_LABELS, STATUS_LABELS, Labels

if TYPE_CHECKING:
    from services.console.web import Console

DEFAULT_DAYS = 30
TOP_MODELS = 10
SEARCH_PAGE_SIZE = 20
LIBRARY_PAGE_SIZE = 10
DownloadFormat = Literal["xlsx", "csv"]
# What a download may carry on (the API's own headers say what the file is).
KEPT_DOWNLOAD_HEADERS = ("content-type", "content-disposition")


def _code_label(zh: dict[Any, str], code: str | None, lang: str, missing: str) -> str:
    if code is None:
        return missing
    if lang == "en":
        return code.replace("_", " ")
    return next((label for key, label in zh.items() if str(key) == code), code)


@dataclass
class Namer:
    """Names of codes in the page's language (Chinese labels; English: the code)."""

    labels: Labels
    lang: str

    def t(self, zh: str, en: str) -> str:
        return en if self.lang == "en" else zh

    def channel(self, code: str | None) -> str:
        return _code_label(CHANNEL_LABELS, code, self.lang, self.t("未知", "unknown"))

    def feedback_type(self, code: str | None) -> str:
        return _code_label(FEEDBACK_TYPE_LABELS, code, self.lang, self.t("未分类", "unclassified"))

    def clock(self, code: str) -> str:
        return _code_label(CLOCK_LABELS, code, self.lang, code)

    def status(self, code: str | None) -> str:
        return _code_label(STATUS_LABELS, code, self.lang, "—")

    def department(self, code: str | None) -> str:
        if self.lang == "en":
            return code or "triage"
        return self.labels.department(code)

    def category(self, code: str | None) -> str:
        if self.lang == "en":
            return code or "unclassified"
        return self.labels.category(code)


# --- Report charts ---------------------------------------------------------------------------


@dataclass
class Series:
    name: str
    data: list[float | int | None]
    kind: Literal["bar", "line"] = "bar"
    axis: int = 0  # 0: the left value axis, 1: the right one


@dataclass
class ChartView:
    """One chart: what reports.js draws and the table beside it (the same figures)."""

    key: str
    title: str
    kind: Literal["cartesian", "pie", "horizontal"]
    categories: list[str]
    series: list[Series]
    headers: list[str]
    rows: list[list[Any]]
    axes: list[str] = field(default_factory=list)  # value axes' names
    stacked: bool = False
    percent_axes: list[int] = field(default_factory=list)  # axes showing 0–1 as %
    whole_axes: list[int] = field(default_factory=list)  # axes of counts (whole steps)
    note: str = ""

    def spec(self) -> dict[str, Any]:
        """What reports.js needs to draw it (kept apart from the table)."""
        return {
            "key": self.key,
            "kind": self.kind,
            "categories": self.categories,
            "series": [asdict(s) for s in self.series],
            "axes": self.axes,
            "stacked": self.stacked,
            "percentAxes": self.percent_axes,
            "wholeAxes": self.whole_axes,
        }


def _percent(share: float | None) -> str:
    return "—" if share is None else f"{share * 100:.1f}%"


def _hours(minutes: float | None) -> float | None:
    return None if minutes is None else round(minutes / 60, 1)


def _period_label(period: str, step: str) -> str:
    return period[:7] if step == "month" else period


def report_charts(summary: dict[str, Any], n: Namer) -> list[ChartView]:
    """The report's charts from the API's JSON (`GET /v1/reports/summary`)."""
    trend = summary["trend"]
    step = trend["step"]
    points = trend["points"]
    periods = [_period_label(p["period"], step) for p in points]
    channels = list(points[0]["channels"]) if points else []
    step_name = {"day": n.t("日", "day"), "week": n.t("周（周一）", "week (Monday)")}.get(
        step, n.t("月", "month")
    )
    charts = [
        ChartView(
            "volume",
            n.t("反馈量趋势（按渠道）", "Volume by channel"),
            "cartesian",
            periods,
            [Series(n.channel(c), [p["channels"][c] for p in points]) for c in channels],
            [step_name, *(n.channel(c) for c in channels), n.t("合计", "Total")],
            [
                [period, *(p["channels"][c] for c in channels), p["cases"]]
                for period, p in zip(periods, points, strict=True)
            ],
            axes=[n.t("件", "cases")],
            stacked=True,
            whole_axes=[0],
        )
    ]

    by_category: dict[str | None, int] = {}
    for row in summary["categories"]:
        by_category[row["category"]] = by_category.get(row["category"], 0) + row["cases"]
    total = summary["total"]
    ordered = sorted(by_category.items(), key=lambda item: -item[1])
    charts.append(
        ChartView(
            "categories",
            n.t("问题类别分布", "Category mix"),
            "pie",
            [n.category(c) for c, _ in ordered],
            [Series(n.t("件", "cases"), [cases for _, cases in ordered])],
            [n.t("类别", "Category"), n.t("件数", "Cases"), n.t("占比", "Share")],
            [
                [n.category(c), cases, _percent(cases / total if total else None)]
                for c, cases in ordered
            ],
        )
    )

    handling = summary["department_handling"]
    charts.append(
        ChartView(
            "handling",
            n.t("各部门处理时长（工作小时）", "Handling time by department (business hours)"),
            "cartesian",
            [n.department(d["department"]) for d in handling],
            [
                Series(
                    n.t("中位数", "Median"),
                    [_hours(d["median_business_minutes"]) for d in handling],
                ),
                Series("P90", [_hours(d["p90_business_minutes"]) for d in handling]),
            ],
            [
                n.t("部门", "Department"),
                n.t("停留段", "Stints"),
                n.t("已转出", "Finished"),
                n.t("中位数（工作小时）", "Median (business h)"),
                n.t("P90（工作小时）", "P90 (business h)"),
                n.t("中位数（自然小时）", "Median (calendar h)"),
            ],
            [
                [
                    n.department(d["department"]),
                    d["stints"],
                    d["cases"],
                    _hours(d["median_business_minutes"]),
                    _hours(d["p90_business_minutes"]),
                    _hours(d["median_calendar_minutes"]),
                ]
                for d in handling
            ],
            axes=[n.t("小时", "hours")],
        )
    )

    on_time = summary["on_time"]
    clocks = [*on_time["by_clock"], on_time["overall"]]
    charts.append(
        ChartView(
            "on_time",
            n.t("时限按时率", "On-time rate"),
            "cartesian",
            [n.clock(c["clock"]) for c in clocks],
            [Series(n.t("按时率", "On-time rate"), [c["rate"] for c in clocks])],
            [
                n.t("时钟", "Clock"),
                n.t("已判定", "Decided"),
                n.t("按时", "On time"),
                n.t("超时", "Late"),
                n.t("按时率", "Rate"),
            ],
            [
                [n.clock(c["clock"]), c["decided"], c["on_time"], c["late"], _percent(c["rate"])]
                for c in clocks
            ],
            axes=[n.t("按时率", "rate")],
            percent_axes=[0],
            note=n.t(
                "按时率 = 按时达成 ÷（已达成或已超时）", "Rate = met on time ÷ (met or breached)"
            ),
        )
    )

    charts.append(
        ChartView(
            "satisfaction",
            n.t("满意度（CSAT）与净推荐值（NPS）趋势", "CSAT and NPS trend"),
            "cartesian",
            periods,
            [
                Series(
                    n.t("CSAT 平均分", "CSAT average"), [p["csat_average"] for p in points], "line"
                ),
                Series("NPS", [p["nps"] for p in points], "line", axis=1),
            ],
            [
                step_name,
                n.t("CSAT 评价数", "CSAT rated"),
                n.t("CSAT 平均分", "CSAT average"),
                n.t("4–5 分占比", "Share 4–5"),
                n.t("NPS 答复数", "NPS answered"),
                "NPS",
            ],
            [
                [
                    period,
                    p["csat_rated"],
                    p["csat_average"],
                    _percent(p["csat_share_4_5"]),
                    p["nps_answered"],
                    p["nps"],
                ]
                for period, p in zip(periods, points, strict=True)
            ],
            axes=["CSAT", "NPS"],
            note=n.t(
                f"全期：CSAT 平均 {summary['csat']['average'] or '—'}，"
                f"4–5 分占比 {_percent(summary['csat']['share_4_5'])}，"
                f"NPS {summary['nps']['nps'] if summary['nps']['nps'] is not None else '—'}",
                f"Whole range: CSAT average {summary['csat']['average'] or '—'}, "
                f"4–5 {_percent(summary['csat']['share_4_5'])}, "
                f"NPS {summary['nps']['nps'] if summary['nps']['nps'] is not None else '—'}",
            ),
        )
    )

    repeat = summary["repeat"]
    charts.append(
        ChartView(
            "repeat",
            n.t("重复投诉率", "Repeat-complaint rate"),
            "cartesian",
            periods,
            [
                Series(n.t("投诉", "Complaints"), [p["complaints"] for p in points]),
                Series(
                    n.t("重复投诉率", "Repeat rate"),
                    [p["repeat_complaint_rate"] for p in points],
                    "line",
                    axis=1,
                ),
            ],
            [
                step_name,
                n.t("投诉", "Complaints"),
                n.t("重复投诉", "Repeat complaints"),
                n.t("重复投诉率", "Repeat rate"),
            ],
            [
                [
                    period,
                    p["complaints"],
                    p["repeat_complaints"],
                    _percent(p["repeat_complaint_rate"]),
                ]
                for period, p in zip(periods, points, strict=True)
            ],
            axes=[n.t("件", "cases"), n.t("比率", "rate")],
            percent_axes=[1],
            whole_axes=[0],
            note=n.t(
                f"全期：投诉 {repeat['complaints']} 件，重复 {repeat['repeat_complaints']} 件，"
                f"重复投诉率 {_percent(repeat['repeat_complaint_rate'])}",
                f"Whole range: {repeat['complaints']} complaints, "
                f"{repeat['repeat_complaints']} repeats, "
                f"rate {_percent(repeat['repeat_complaint_rate'])}",
            ),
        )
    )

    models = summary["product_problems"][:TOP_MODELS]
    # Most first from the top: ECharts draws a horizontal bar's first category at the bottom.
    shown = list(reversed(models))
    problem_categories: list[str | None] = []
    for model in models:
        for problem in model["problems"]:
            if problem["category"] not in problem_categories:
                problem_categories.append(problem["category"])
    charts.append(
        ChartView(
            "models",
            n.t("产品型号问题排行", "Top problems by product model"),
            "horizontal",
            [m["product_model"] for m in shown],
            [
                Series(
                    n.category(category),
                    [
                        next((p["cases"] for p in m["problems"] if p["category"] == category), 0)
                        for m in shown
                    ],
                )
                for category in problem_categories
            ],
            [
                n.t("型号", "Model"),
                n.t("问题件数", "Problems"),
                n.t("占比", "Share"),
                n.t("主要类别", "Main categories"),
            ],
            [
                [
                    m["product_model"],
                    m["cases"],
                    _percent(m["share"]),
                    "、".join(
                        f"{n.category(p['category'])} {p['cases']}" for p in m["problems"][:3]
                    ),
                ]
                for m in models
            ],
            axes=[n.t("件", "cases")],
            stacked=True,
            whole_axes=[0],
            note=n.t("表扬与建议不计为问题", "Praise and suggestions are not problems"),
        )
    )
    return charts


@dataclass(frozen=True)
class Figure:
    label: str
    value: str


def headline(summary: dict[str, Any], n: Namer) -> list[Figure]:
    def minutes(value: float | None) -> str:
        return "—" if value is None else n.t(f"{value / 60:.1f} 工作小时", f"{value / 60:.1f} h")

    nps = summary["nps"]["nps"]
    return [
        Figure(n.t("反馈总量", "Feedback received"), str(summary["total"])),
        Figure(
            n.t("首次响应中位数", "First response, median"),
            minutes(summary["first_response"]["median_business_minutes"]),
        ),
        Figure(
            n.t("解决用时中位数", "Resolution, median"),
            minutes(summary["resolution"]["median_business_minutes"]),
        ),
        Figure(n.t("按时率", "On-time rate"), _percent(summary["on_time"]["overall"]["rate"])),
        Figure(n.t("满意（4–5 分）", "Satisfied (4–5)"), _percent(summary["csat"]["share_4_5"])),
        Figure("NPS", "—" if nps is None else str(nps)),
        Figure(
            n.t("重复投诉率", "Repeat complaints"),
            _percent(summary["repeat"]["repeat_complaint_rate"]),
        ),
        Figure(n.t("当前逾期案例", "Overdue now"), str(summary["overdue"]["cases"])),
    ]


def department_choices(viewer: Viewer, labels: Labels) -> list[str]:
    """The departments the person may pick: every one for quality and admin, their own for
    a supervisor or head of several; none to pick from for one department."""
    visible = visible_departments(viewer.actor)
    if visible is None:
        return list(labels.departments)
    return list(visible) if len(visible) > 1 else []


def _report_params(day_from: str, day_to: str, department: str) -> dict[str, Any]:
    return {"from": day_from, "to": day_to, "department": department}


# --- Search -----------------------------------------------------------------------------------


@dataclass
class SearchForm:
    q: str = ""
    department: str = ""
    status: str = ""
    type: str = ""
    channel: str = ""
    received_from: str = ""
    received_to: str = ""
    cursor: str = ""

    def api_params(self) -> dict[str, Any]:
        return {
            "q": self.q.strip(),
            "department": self.department,
            "status": self.status,
            "type": self.type,
            "channel": self.channel,
            "from": self.received_from,
            "to": self.received_to,
            "cursor": self.cursor,
            "limit": SEARCH_PAGE_SIZE,
        }

    def query_string(self, **changed: str) -> str:
        values = {
            "q": self.q,
            "department": self.department,
            "status": self.status,
            "type": self.type,
            "channel": self.channel,
            "from": self.received_from,
            "to": self.received_to,
        } | changed
        return urlencode({k: v for k, v in values.items() if v})

    @property
    def empty(self) -> bool:
        return not any(
            (self.q.strip(), self.department, self.status, self.type, self.channel,
             self.received_from, self.received_to)
        )  # fmt: skip


NUMBER = re.compile(FEEDBACK_NUMBER_PATTERN)


def _local_day(moment: str, console: Console) -> str:
    try:
        return (
            datetime.fromisoformat(moment)
            .astimezone(console.settings.zone)
            .strftime("%Y-%m-%d %H:%M")
        )
    except ValueError:
        return moment


def router(console: Console) -> APIRouter:
    pages = APIRouter(include_in_schema=False)

    @pages.get("/reports")
    async def reports(
        request: Request,
        viewer: Annotated[Viewer, needs("report.read")],
        # Text, not dates: the API judges them, and its reasons show next to the fields.
        day_from: Annotated[str, Query(alias="from", max_length=32)] = "",
        day_to: Annotated[str, Query(alias="to", max_length=32)] = "",
        department: Annotated[str, Query(max_length=64)] = "",
    ) -> HTMLResponse:
        today = datetime.now(console.settings.zone).date()
        day_to = day_to.strip() or today.isoformat()
        day_from = day_from.strip() or _days_before(day_to, DEFAULT_DAYS - 1, today)
        params = _report_params(day_from, day_to, department)
        answer = await console.call(viewer, "GET", "/v1/reports/summary", params=params)
        namer = Namer(console.labels, viewer.lang)
        context: dict[str, Any] = {
            "day_from": day_from,
            "day_to": day_to,
            "department": department,
            "departments": [
                (code, namer.department(code))
                for code in department_choices(viewer, console.labels)
            ],
            "errors": answer.field_errors() if not answer.ok else {},
            "summary": answer.body if answer.ok else None,
            "charts": report_charts(answer.body, namer) if answer.ok else [],
            "figures": headline(answer.body, namer) if answer.ok else [],
            "download_query": urlencode({k: v for k, v in params.items() if v}),
            "presets": _presets(today, namer),
            "scope_name": _scope_name(answer.body, namer) if answer.ok else "",
        }
        template = "reports_result.html" if is_fragment(request) else "reports.html"
        status = answer.status if 400 <= answer.status < 500 else 200
        return console.render(request, viewer, template, status_code=status, **context)

    @pages.get("/reports/download.{file_format}")
    async def download(
        viewer: Annotated[Viewer, needs("report.read")],
        file_format: DownloadFormat,
        day_from: Annotated[str, Query(alias="from", max_length=32)],
        day_to: Annotated[str, Query(alias="to", max_length=32)],
        department: Annotated[str, Query(max_length=64)] = "",
    ) -> Response:
        answer = await console.api.raw(
            "GET",
            f"/v1/reports/summary.{file_format}",
            token=viewer.token,
            params=_report_params(day_from, day_to, department),
        )
        headers = {k: v for k, v in answer.headers.items() if k.lower() in KEPT_DOWNLOAD_HEADERS}
        headers["Cache-Control"] = "no-store"
        return Response(answer.content, status_code=answer.status_code, headers=headers)

    @pages.get("/search")
    async def search_page(
        request: Request,
        viewer: Annotated[Viewer, needs("search.read")],
        q: Annotated[str, Query(max_length=200)] = "",
        department: Annotated[str, Query(max_length=64)] = "",
        status: Annotated[str, Query(max_length=64)] = "",
        type: Annotated[str, Query(max_length=64)] = "",
        channel: Annotated[str, Query(max_length=64)] = "",
        received_from: Annotated[str, Query(alias="from", max_length=32)] = "",
        received_to: Annotated[str, Query(alias="to", max_length=32)] = "",
        cursor: Annotated[str, Query(max_length=1000)] = "",
    ) -> HTMLResponse:
        form = SearchForm(q, department, status, type, channel, received_from, received_to, cursor)
        namer = Namer(console.labels, viewer.lang)
        context: dict[str, Any] = {
            "form": form,
            "hits": [],
            "next_query": None,
            "library": [],
            "errors": {},
            "searched": not form.empty,
            "by_number": False,
            "departments": [
                (code, namer.department(code))
                for code in (visible_departments(viewer.actor) or console.labels.departments)
            ],
            "statuses": [(code, namer.status(code)) for code in STATUS_LABELS],
            "types": [(t.value, namer.feedback_type(t.value)) for t in FEEDBACK_TYPE_LABELS],
            "channels": [(c.value, namer.channel(c.value)) for c in CHANNEL_LABELS],
            "namer": namer,
        }
        text = form.q.strip()
        status_code = 200
        if NUMBER.match(text):
            # A feedback number: the case itself, if the API lets this person see it.
            context["by_number"] = True
            found = await console.get(viewer, f"/v1/feedback/{text}")
            if found.ok:
                context["hits"] = [_hit_of(found.body, console)]
        elif not form.empty:
            found = await console.get(viewer, "/v1/search", **form.api_params())
            if found.ok:
                context["hits"] = [_hit_of(item, console) for item in found.body["items"]]
                if found.body["next_cursor"]:
                    context["next_query"] = form.query_string(cursor=found.body["next_cursor"])
                context["order"] = found.body["order"]
            else:
                context["errors"] = found.field_errors()
                status_code = found.status if found.status < 500 else 200
        if text and not context["by_number"] and viewer.may("library.read"):
            entries = await console.get(viewer, "/v1/library", q=text, limit=LIBRARY_PAGE_SIZE)
            if entries.ok:
                context["library"] = entries.body["items"]
        template = "search_results.html" if is_fragment(request) else "search.html"
        return console.render(request, viewer, template, status_code=status_code, **context)

    return pages


def _hit_of(item: dict[str, Any], console: Console) -> dict[str, Any]:
    """A search hit or a registration, as the results table shows it."""
    return {
        "number": item["feedback_number"],
        "received": _local_day(item["received_at"], console),
        "channel": item["channel"],
        "feedback_type": item.get("feedback_type"),
        "category": item.get("category"),
        "department": item.get("department"),
        "status": item["status"],
        "product_model": item.get("product_model"),
        "snippet": item.get("snippet") or (item.get("description") or "")[:120],
    }


def _scope_name(summary: dict[str, Any], n: Namer) -> str:
    departments = summary["departments"]
    if departments is None:
        return n.t("全部部门", "every department")
    return n.t("、", ", ").join(n.department(code) for code in departments)


def _days_before(day: str, days: int, today: date) -> str:
    """The default start: `days` before the chosen end (or before today, when the end is
    not a date: the API then says what is wrong with it)."""
    try:
        end = date.fromisoformat(day)
    except ValueError:
        end = today
    return (end - timedelta(days=days)).isoformat()


def _presets(today: date, n: Namer) -> list[tuple[str, str, str]]:
    """Quick ranges: this and last week (Monday–Sunday), this and last month."""
    monday = today - timedelta(days=today.weekday())
    first = today.replace(day=1)
    last_month_end = first - timedelta(days=1)
    return [
        (n.t("本周", "This week"), monday.isoformat(), today.isoformat()),
        (
            n.t("上周", "Last week"),
            (monday - timedelta(days=7)).isoformat(),
            (monday - timedelta(days=1)).isoformat(),
        ),
        (n.t("本月", "This month"), first.isoformat(), today.isoformat()),
        (
            n.t("上月", "Last month"),
            last_month_end.replace(day=1).isoformat(),
            last_month_end.isoformat(),
        ),
    ]
