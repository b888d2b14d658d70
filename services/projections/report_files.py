"""The summary report as tables with Chinese headers, and those tables as XLSX (one sheet
per section, with charts), CSV (every row) and a printable HTML page.

Every cell goes through `boundary.spreadsheet_safe`: a category, an owner or a product model
that starts with `=` is shown as text by a spreadsheet, never run as a formula.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from openpyxl import Workbook
from openpyxl.chart import BarChart, LineChart, PieChart, Reference
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.utils import get_column_letter

from contracts.codes import CHANNEL_LABELS, EMOTION_LABELS, FEEDBACK_TYPE_LABELS, PRIORITY_LABELS
from services.common.boundary import spreadsheet_safe
from services.projections.reports import Summary

TEMPLATES = Path(__file__).resolve().parent / "templates"
REPORT_TITLE = "客户反馈分析报告"

CLOCK_LABELS = {
    "registration": "登记",
    "first_response": "首次响应",
    "progress_update": "进度更新",
    "co_handler_response": "协办响应",
    "resolution": "处理结果",
    "result_notice": "结果通知",
    "all": "全部",
}
RESULT_LABELS = {"resolved": "已解决", "partially_resolved": "部分解决", "unresolved": "未解决"}
CALLBACK_LABELS = {
    "post_complaint": "投诉后回访",
    "after_sales": "售后回访",
    "product_in_use": "产品使用回访",
    "churn_warning": "流失预警回访",
    "quarterly_survey": "季度满意度调查",
    "all": "全部",
}
STATUS_LABELS = {
    "registered": "已登记",
    "triage": "待分诊",
    "queued": "待分派",
    "assigned": "已分派",
    "accepted": "已接收",
    "disputed": "有异议",
    "pending_info": "待补充",
    "in_progress": "处理中",
    "resolved": "已出结果",
    "confirmed": "客户已确认",
    "reopened": "已重开",
    "closed": "已结案",
    "archived": "已归档",
}


@dataclass(frozen=True)
class Labels:
    """Chinese names for codes; a code without one is shown as it is."""

    departments: Mapping[str, str] = field(default_factory=dict)
    categories: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of_rulebook(cls, rulebook: Any) -> Labels:
        categories: dict[str, str] = {}
        for name, category in rulebook.categories.items():
            categories[name] = category.label
            for sub_name, sub in category.subcategories.items():
                categories[sub_name] = sub.label
        return cls(dict(rulebook.departments), categories)

    def department(self, code: str | None) -> str:
        return "待分诊" if code is None else self.departments.get(code, code)

    def category(self, code: str | None) -> str:
        return "未分类" if code is None else self.categories.get(code, code)


def _coded(labels: Mapping[Any, str], code: str | None, missing: str = "未分类") -> str:
    if code is None:
        return missing
    return next((label for key, label in labels.items() if str(key) == code), code)


@dataclass(frozen=True)
class Chart:
    kind: Literal["bar", "line", "pie"]
    # 0-based columns: the labels and the values plotted.
    labels_column: int
    value_columns: tuple[int, ...]


@dataclass
class Table:
    key: str
    title: str
    headers: list[str]
    rows: list[list[Any]]
    notes: list[tuple[str, Any]] = field(default_factory=list)
    chart: Chart | None = None


def _yes_no(value: bool | None) -> str | None:
    return None if value is None else ("是" if value else "否")


def tables(summary: Summary, labels: Labels, zone: ZoneInfo) -> list[Table]:
    """The report's sections as tables (the same for XLSX, CSV and HTML)."""
    s = summary

    def local(moment: datetime) -> datetime:
        return moment.astimezone(zone).replace(tzinfo=None)

    scope = (
        "全部部门" if s.departments is None else "、".join(map(labels.department, s.departments))
    )
    made = [
        Table(
            "overview",
            "概览",
            ["指标", "数值"],
            [
                ["报告期间", f"{s.from_.isoformat()} 至 {s.to.isoformat()}"],
                ["部门范围", scope],
                ["时区", s.zone],
                ["统计口径", "期间内接收的反馈；回访为期间内到期的任务；逾期截至生成时间"],
                ["反馈总量", s.total],
                ["首次响应中位数（工作分钟）", s.first_response.median_business_minutes],
                ["处理结果用时中位数（工作分钟）", s.resolution.median_business_minutes],
                ["时限按时率", s.on_time.overall.rate],
                ["当前逾期案例", s.overdue.cases],
                ["满意度（4–5分占比）", s.csat.share_4_5],
                ["净推荐值（NPS）", s.nps.nps],
                ["重复投诉率", s.repeat.repeat_complaint_rate],
                ["不满意案例", s.unsatisfied.count],
                ["回访完成率", s.callbacks.overall.completion_rate],
                ["生成时间", local(s.as_of)],
            ],
        ),
        Table(
            "volume_by_day",
            "按日反馈量",
            ["日期", "反馈量"],
            [[p.period, p.cases] for p in s.volume.by_day],
            chart=Chart("line", 0, (1,)),
        ),
        Table(
            "volume_by_week",
            "按周反馈量",
            ["周（周一）", "反馈量"],
            [[p.period, p.cases] for p in s.volume.by_week],
            chart=Chart("bar", 0, (1,)),
        ),
        Table(
            "volume_by_month",
            "按月反馈量",
            ["月份", "反馈量"],
            [[p.period.strftime("%Y-%m"), p.cases] for p in s.volume.by_month],
            chart=Chart("bar", 0, (1,)),
        ),
        Table(
            "channels",
            "渠道分布",
            ["渠道", "反馈量", "占比"],
            [[_coded(CHANNEL_LABELS, c.channel), c.cases, c.share] for c in s.volume.by_channel],
            chart=Chart("pie", 0, (1,)),
        ),
        Table(
            "types",
            "类型分布",
            ["反馈类型", "反馈量", "占比"],
            [
                [_coded(FEEDBACK_TYPE_LABELS, t.feedback_type), t.cases, t.share]
                for t in s.volume.by_type
            ],
            chart=Chart("pie", 0, (1,)),
        ),
        Table(
            "categories",
            "问题类别分布",
            ["问题类别", "问题子类", "反馈量", "占比"],
            [
                [
                    labels.category(c.category),
                    None if c.subcategory is None else labels.category(c.subcategory),
                    c.cases,
                    c.share,
                ]
                for c in s.categories
            ],
            chart=Chart("bar", 1, (2,)),
        ),
        Table(
            "department_handling",
            "部门处理时长",
            [
                "部门",
                "停留段数",
                "已转出段数",
                "中位数（工作分钟）",
                "P90（工作分钟）",
                "中位数（自然分钟）",
                "P90（自然分钟）",
            ],
            [
                [
                    labels.department(d.department),
                    d.stints,
                    d.cases,
                    d.median_business_minutes,
                    d.p90_business_minutes,
                    d.median_calendar_minutes,
                    d.p90_calendar_minutes,
                ]
                for d in s.department_handling
            ],
            chart=Chart("bar", 0, (3, 4)),
        ),
        Table(
            "response_times",
            "首次响应与处理结果用时",
            [
                "指标",
                "案例数",
                "中位数（工作分钟）",
                "P90（工作分钟）",
                "中位数（自然分钟）",
                "P90（自然分钟）",
            ],
            [
                [
                    name,
                    d.cases,
                    d.median_business_minutes,
                    d.p90_business_minutes,
                    d.median_calendar_minutes,
                    d.p90_calendar_minutes,
                ]
                for name, d in (("首次响应", s.first_response), ("处理结果", s.resolution))
            ],
            chart=Chart("bar", 0, (2, 3)),
        ),
        Table(
            "on_time",
            "时限达成率",
            ["时钟", "已判定", "按时", "超时", "按时率"],
            [
                [_coded(CLOCK_LABELS, r.clock), r.decided, r.on_time, r.late, r.rate]
                for r in (s.on_time.overall, *s.on_time.by_clock)
            ],
            notes=[("口径", "按时达成 ÷（已达成或已超时）")],
            chart=Chart("bar", 0, (2, 3)),
        ),
        Table(
            "overdue",
            "逾期案例",
            [
                "反馈编号",
                "部门",
                "处理人",
                "优先级",
                "时钟",
                "对象",
                "到期时间",
                "已逾期（分钟）",
                "升级级别",
            ],
            [
                [
                    o.feedback_number,
                    labels.department(o.department),
                    o.owner,
                    _coded(PRIORITY_LABELS, o.priority, ""),
                    _coded(CLOCK_LABELS, o.clock),
                    o.subject,
                    local(o.due_at),
                    o.overdue_minutes,
                    o.escalation_level,
                ]
                for o in s.overdue.items
            ],
            notes=[("逾期案例", s.overdue.cases), ("逾期时钟", s.overdue.clocks)],
        ),
        Table(
            "csat",
            "满意度",
            ["评分", "数量"],
            [[d.score, d.count] for d in s.csat.distribution],
            notes=[
                ("评价数", s.csat.rated),
                ("4–5分数量", s.csat.score_4_5),
                ("4–5分占比", s.csat.share_4_5),
                ("平均分", s.csat.average),
            ],
            chart=Chart("bar", 0, (1,)),
        ),
        Table(
            "nps",
            "净推荐值",
            ["分组", "数量"],
            [
                ["推荐者（9–10）", s.nps.promoters],
                ["中立者（7–8）", s.nps.passives],
                ["贬损者（0–6）", s.nps.detractors],
            ],
            notes=[("回答数", s.nps.answered), ("净推荐值（NPS）", s.nps.nps)],
            chart=Chart("pie", 0, (1,)),
        ),
        Table(
            "repeat",
            "重复投诉",
            ["指标", "数值"],
            [
                ["反馈量", s.repeat.cases],
                ["重复反馈", s.repeat.repeat_cases],
                ["投诉量", s.repeat.complaints],
                ["重复投诉", s.repeat.repeat_complaints],
                ["重复投诉率", s.repeat.repeat_complaint_rate],
            ],
        ),
        Table(
            "product_problems",
            "产品型号高频问题",
            ["排名", "产品型号", "型号问题量", "型号占比", "问题类别", "问题量", "型号内占比"],
            [
                [
                    rank,
                    m.product_model,
                    m.cases,
                    m.share,
                    labels.category(p.category),
                    p.cases,
                    p.share_in_model,
                ]
                for rank, m in enumerate(s.product_problems, 1)
                for p in m.problems
            ],
            notes=[("口径", "提及产品型号的反馈（表扬、建议除外）")],
        ),
        Table(
            "unsatisfied",
            "不满意案例",
            [
                "反馈编号",
                "接收日期",
                "部门",
                "处理人",
                "反馈类型",
                "问题类别",
                "产品型号",
                "处理结果",
                "客户满意",
                "满意度评分",
                "推荐意愿",
                "重开次数",
                "状态",
            ],
            [
                [
                    u.feedback_number,
                    u.received_date,
                    labels.department(u.department),
                    u.owner,
                    _coded(FEEDBACK_TYPE_LABELS, u.feedback_type),
                    labels.category(u.category),
                    u.product_model,
                    _coded(RESULT_LABELS, u.result, ""),
                    _yes_no(u.satisfied),
                    u.csat,
                    u.nps,
                    u.reopened_count,
                    _coded(STATUS_LABELS, u.status),
                ]
                for u in s.unsatisfied.items
            ],
            notes=[("口径", "客户确认不满意，或满意度评分 ≤ 2")],
        ),
        Table(
            "emotions",
            "情绪分布",
            ["情绪", "反馈量", "占比"],
            [[_coded(EMOTION_LABELS, e.emotion, "未知"), e.cases, e.share] for e in s.emotions],
            chart=Chart("pie", 0, (1,)),
        ),
        Table(
            "callbacks",
            "回访完成",
            ["回访类型", "任务数", "已完成", "按时完成", "逾期未完成", "完成率", "按时完成率"],
            [
                [
                    _coded(CALLBACK_LABELS, c.type),
                    c.tasks,
                    c.done,
                    c.done_on_time,
                    c.overdue,
                    c.completion_rate,
                    c.on_time_rate,
                ]
                for c in (s.callbacks.overall, *s.callbacks.by_type)
            ],
            notes=[("口径", "期间内到期的回访任务")],
            chart=Chart("bar", 0, (2, 3)),
        ),
    ]
    return made


SECTIONS = (
    "overview",
    "volume_by_day",
    "volume_by_week",
    "volume_by_month",
    "channels",
    "types",
    "categories",
    "department_handling",
    "response_times",
    "on_time",
    "overdue",
    "csat",
    "nps",
    "repeat",
    "product_problems",
    "unsatisfied",
    "emotions",
    "callbacks",
)


# --- Cells -----------------------------------------------------------------------------------


def _is_share(header: str) -> bool:
    return "占比" in header or header.endswith("率")


def cell(value: Any) -> Any:
    """A value as a spreadsheet cell: text made safe, booleans in words, numbers and dates
    as they are."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "是" if value else "否"
    if isinstance(value, str):
        return spreadsheet_safe(value)
    if isinstance(value, int | float | date):  # datetime is a date
        return value
    return spreadsheet_safe(str(value))


def text(value: Any, header: str = "") -> str:
    """A value as CSV or HTML text."""
    shown = cell(value)
    if shown is None:
        return ""
    if isinstance(shown, float) and _is_share(header):
        return f"{shown * 100:.2f}%"
    if isinstance(shown, datetime):
        return shown.strftime("%Y-%m-%d %H:%M")
    if isinstance(shown, date):
        return shown.isoformat()
    return str(shown)


# --- XLSX ------------------------------------------------------------------------------------

_HEADER_FILL = PatternFill("solid", fgColor="DDEBF7")


def xlsx(summary: Summary, made: list[Table]) -> bytes:
    book = Workbook()
    book.remove(book.active)
    for table in made:
        sheet = book.create_sheet(table.title[:31])
        sheet.append([spreadsheet_safe(f"{REPORT_TITLE}：{table.title}")])
        sheet["A1"].font = Font(bold=True, size=13)
        sheet.append([spreadsheet_safe(f"{summary.from_.isoformat()} 至 {summary.to.isoformat()}")])
        for name, value in table.notes:
            sheet.append([cell(name), cell(value)])
            if isinstance(value, float) and _is_share(name):
                sheet.cell(sheet.max_row, 2).number_format = "0.00%"
        sheet.append([])
        header_row = sheet.max_row + 1
        sheet.append([cell(h) for h in table.headers])
        for column in range(1, len(table.headers) + 1):
            header_cell = sheet.cell(header_row, column)
            header_cell.font = Font(bold=True)
            header_cell.fill = _HEADER_FILL
            header_cell.alignment = Alignment(wrap_text=True, vertical="center")
        for row in table.rows:
            sheet.append([cell(v) for v in row])
        _formats(sheet, table, header_row)
        sheet.freeze_panes = sheet.cell(header_row + 1, 1)
        if table.chart is not None and table.rows:
            _chart(sheet, table, header_row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def _formats(sheet: Any, table: Table, header_row: int) -> None:
    for index, header in enumerate(table.headers, 1):
        letter = get_column_letter(index)
        sheet.column_dimensions[letter].width = max(10, min(40, len(header) * 2 + 4))
        number_format = None
        if _is_share(header):
            number_format = "0.00%"
        elif "分钟" in header:
            number_format = "0.0"
        for row in range(header_row + 1, header_row + 1 + len(table.rows)):
            target = sheet.cell(row, index)
            if isinstance(target.value, datetime):
                target.number_format = "yyyy-mm-dd hh:mm"
            elif isinstance(target.value, date):
                target.number_format = "yyyy-mm-dd"
            elif number_format and isinstance(target.value, int | float):
                target.number_format = number_format


def _chart(sheet: Any, table: Table, header_row: int) -> None:
    spec = table.chart
    assert spec is not None
    first, last = header_row + 1, header_row + len(table.rows)
    chart: BarChart | LineChart | PieChart
    if spec.kind == "line":
        chart = LineChart()
    elif spec.kind == "pie":
        chart = PieChart()
    else:
        chart = BarChart()
    chart.title = table.title
    for column in spec.value_columns:
        data = Reference(sheet, min_col=column + 1, min_row=header_row, max_row=last)
        chart.add_data(data, titles_from_data=True)
    categories = Reference(sheet, min_col=spec.labels_column + 1, min_row=first, max_row=last)
    chart.set_categories(categories)
    chart.width, chart.height = 18, 9
    anchor = get_column_letter(len(table.headers) + 2)
    sheet.add_chart(chart, f"{anchor}{header_row}")


# --- CSV -------------------------------------------------------------------------------------


def csv_text(made: list[Table], section: str | None = None) -> str:
    """One section as a plain table, or every section one after another (its title, its
    key figures, its header, its rows, a blank line). UTF-8 with a BOM for Excel."""
    out = io.StringIO()
    out.write("\ufeff")
    writer = csv.writer(out, lineterminator="\r\n")
    for table in made:
        if section is not None and table.key != section:
            continue
        if section is None:
            writer.writerow([text(f"{REPORT_TITLE}：{table.title}")])
            for name, value in table.notes:
                writer.writerow([text(name), text(value, name)])
        writer.writerow([text(h) for h in table.headers])
        for row in table.rows:
            writer.writerow([text(v, h) for v, h in zip(row, table.headers, strict=True)])
        if section is None:
            writer.writerow([])
    return out.getvalue()


# --- HTML ------------------------------------------------------------------------------------

_environment = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(enabled_extensions=("html",), default=True),
    undefined=StrictUndefined,
)


def html(summary: Summary, made: list[Table], labels: Labels, zone: ZoneInfo) -> str:
    shown = []
    for table in made:
        values = _bar_values(table)
        peak = max(values, default=0) or 1
        shown.append(
            {
                "key": table.key,
                "title": table.title,
                "headers": table.headers,
                "notes": [(text(n), text(v, n)) for n, v in table.notes],
                "rows": [
                    [text(v, h) for v, h in zip(row, table.headers, strict=True)]
                    for row in table.rows
                ],
                "bars": [round(100 * v / peak, 1) for v in values] if values else [],
            }
        )
    scope = (
        "全部部门"
        if summary.departments is None
        else "、".join(map(labels.department, summary.departments))
    )
    return _environment.get_template("report.html").render(
        title=REPORT_TITLE,
        period=f"{summary.from_.isoformat()} 至 {summary.to.isoformat()}",
        scope=scope,
        zone=summary.zone,
        generated=summary.as_of.astimezone(zone).strftime("%Y-%m-%d %H:%M"),
        total=summary.total,
        tables=shown,
    )


def _bar_values(table: Table) -> list[float]:
    """The first plotted value of each row, for the page's bars (charts in the XLSX)."""
    if table.chart is None:
        return []
    column = table.chart.value_columns[0]
    values = [row[column] for row in table.rows]
    if not all(isinstance(v, int | float) or v is None for v in values):
        return []
    return [float(v or 0) for v in values]
