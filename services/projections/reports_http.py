"""`GET /v1/reports/summary[.xlsx|.csv|.html]?from=&to=[&department=]`: the summary report
for a range of local dates (both included). Supervisors and heads see their departments
only; quality and admin every department."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import HTMLResponse, Response
from psycopg_pool import AsyncConnectionPool

from services.access.http import require
from services.access.roles import Actor, sees_department
from services.projections import report_files, reports
from services.projections.report_files import Labels

DEPARTMENT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"

From = Annotated[date, Query(alias="from", description="first local date (YYYY-MM-DD)")]
To = Annotated[date, Query(description="last local date (YYYY-MM-DD), included")]
Department = Annotated[
    str | None, Query(pattern=DEPARTMENT_PATTERN, description="one department only")
]
TrendStep = Annotated[
    reports.Step | None,
    Query(description="the trend's step: day, week or month (default: by the range's length)"),
]
SECTION_PATTERN = "^(" + "|".join(report_files.SECTIONS) + ")$"


def reports_router(
    pool: AsyncConnectionPool,
    zone: ZoneInfo,
    labels: Labels,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> APIRouter:
    router = APIRouter(tags=["reports"])

    async def produce(
        actor: Actor,
        day_from: date,
        day_to: date,
        department: str | None,
        step: reports.Step | None = None,
        overdue_limit: int | None = None,
    ) -> reports.Summary:
        try:
            reports.checked_range(day_from, day_to)
        except reports.RangeError as error:
            raise HTTPException(422, detail=str(error)) from error
        if department is not None and not sees_department(actor, department):
            raise HTTPException(403, detail=f"the department {department} is not yours")
        scope = reports.Scope.of(actor, department)
        # One snapshot for every section, read on two connections at once; nothing written.
        async with reports.shared_snapshot(pool) as (first, second):
            return await reports.summary(
                first, day_from, day_to, zone, scope, now(), step, overdue_limit, second
            )

    def filename(summary: reports.Summary, extension: str) -> dict[str, str]:
        name = f"report-{summary.from_.isoformat()}_{summary.to.isoformat()}.{extension}"
        return {"Content-Disposition": f'attachment; filename="{name}"'}

    @router.get("/v1/reports/summary", response_model=reports.Summary)
    async def summary_json(
        actor: Annotated[Actor, require("report.read")],
        day_from: From,
        to: To,
        department: Department = None,
        step: TrendStep = None,
        overdue_limit: Annotated[
            int,
            Query(ge=0, le=100_000, description="overdue clocks listed (all are counted)"),
        ] = 100,
    ) -> reports.Summary:
        """The report as JSON; the overdue clocks listed are the `overdue_limit` longest
        overdue (the files, XLSX and CSV, list every one)."""
        return await produce(actor, day_from, to, department, step, overdue_limit)

    @router.get(
        "/v1/reports/summary.xlsx",
        response_class=Response,
        responses={200: {"content": {XLSX_TYPE: {}}}},
    )
    async def summary_xlsx(
        actor: Annotated[Actor, require("report.read")],
        day_from: From,
        to: To,
        department: Department = None,
    ) -> Response:
        made = await produce(actor, day_from, to, department)
        body = report_files.xlsx(made, report_files.tables(made, labels, zone))
        return Response(body, media_type=XLSX_TYPE, headers=filename(made, "xlsx"))

    @router.get(
        "/v1/reports/summary.csv",
        response_class=Response,
        responses={200: {"content": {"text/csv": {}}}},
    )
    async def summary_csv(
        actor: Annotated[Actor, require("report.read")],
        day_from: From,
        to: To,
        department: Department = None,
        section: Annotated[
            str | None,
            Query(pattern=SECTION_PATTERN, description="one section only; default: all"),
        ] = None,
    ) -> Response:
        made = await produce(actor, day_from, to, department)
        body = report_files.csv_text(report_files.tables(made, labels, zone), section)
        return Response(
            body.encode("utf-8"),
            media_type="text/csv; charset=utf-8",
            headers=filename(made, "csv"),
        )

    @router.get("/v1/reports/summary.html", response_class=HTMLResponse)
    async def summary_html(
        actor: Annotated[Actor, require("report.read")],
        day_from: From,
        to: To,
        department: Department = None,
    ) -> HTMLResponse:
        made = await produce(actor, day_from, to, department)
        page = report_files.html(made, report_files.tables(made, labels, zone), labels, zone)
        return HTMLResponse(page, headers=HTML_HEADERS)

    return router


# The page needs nothing but its own inline styles.
HTML_HEADERS: dict[str, Any] = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
}
