"""The summary report (客户反馈分析报告 / 售后问题分析报告) for a date range: a query over the
`bi` views, never a replay of events.

Basis: every figure is about the feedback received in the range (local dates in the
business calendar's zone, both ends included), except callbacks (the tasks falling due in
the range). Department handling times count the stints of those cases in each department;
"overdue" is as of the report's time (`as_of`). A department filter keeps cases whose
responsible department it is (stints: the stint's department; callbacks: the task's).

Durations: `*_business_minutes` on the SLA business calendar, `*_calendar_minutes` wall
clock; medians and p90 are `percentile_cont` (interpolated). Shares are 0–1, rounded to
four places; minutes to one place.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from psycopg import sql
from psycopg.rows import dict_row
from pydantic import BaseModel, ConfigDict, Field

from services.access.roles import TRIAGE_DEPARTMENT, Actor, Role, visible_departments

BASIS = (
    "feedback received in the range (local dates, calendar zone); callbacks: tasks due in "
    "the range; overdue: as of the report's time"
)
EARLIEST_DAY = date(2000, 1, 1)
LATEST_DAY = date(2999, 12, 31)
# Feedback that names a product model is a "problem" unless it is praise or a suggestion.
NOT_PROBLEMS = ("praise", "suggestion")


class RangeError(ValueError):
    """A report range that cannot be served, with the reason (422)."""


@dataclass(frozen=True)
class Scope:
    """Whose cases a report counts: every department (None), or these departments, and
    cases in triage (no department yet) when `unrouted`."""

    departments: tuple[str, ...] | None = None
    unrouted: bool = False

    @classmethod
    def of(cls, actor: Actor, department: str | None) -> Scope:
        """The actor's scope, narrowed to `department` when given (the caller checked that
        the actor sees it)."""
        if department is not None:
            return cls((department,))
        visible = visible_departments(actor)
        if visible is None:
            return cls()
        triage = actor.role in (Role.supervisor, Role.head) and TRIAGE_DEPARTMENT in visible
        return cls(tuple(visible), unrouted=triage)

    def params(self) -> dict[str, Any]:
        return {
            "everyone": self.departments is None,
            "departments": list(self.departments or ()),
            "unrouted": self.unrouted,
        }


def _scoped(column: str) -> str:
    return (
        f"(%(everyone)s OR {column} = ANY(%(departments)s) OR (%(unrouted)s AND {column} IS NULL))"
    )


RECEIVED = "received_at >= %(start)s AND received_at < %(end)s"
CASES = f"{RECEIVED} AND {_scoped('department')}"


def checked_range(day_from: date, day_to: date) -> None:
    if day_from > day_to:
        raise RangeError(f"from ({day_from}) is after to ({day_to})")
    for name, day in (("from", day_from), ("to", day_to)):
        if not EARLIEST_DAY <= day <= LATEST_DAY:
            raise RangeError(f"{name} ({day}) must be between {EARLIEST_DAY} and {LATEST_DAY}")


def local_bounds(day_from: date, day_to: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end): local midnight of the first day to local midnight after the last."""
    start = datetime.combine(day_from, time(0), zone)
    end = datetime.combine(day_to + timedelta(days=1), time(0), zone)
    return start, end


# --- The report's shape --------------------------------------------------------------------


class Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


class PeriodCount(Model):
    period: date = Field(description="the day, the week's Monday or the month's first day")
    cases: int


class ChannelCount(Model):
    channel: str
    cases: int
    share: float | None


class TypeCount(Model):
    feedback_type: str | None = Field(description="null: not classified yet")
    cases: int
    share: float | None


class Volume(Model):
    by_day: list[PeriodCount]
    by_week: list[PeriodCount]
    by_month: list[PeriodCount]
    by_channel: list[ChannelCount]
    by_type: list[TypeCount]


class CategoryCount(Model):
    category: str | None
    subcategory: str | None
    cases: int
    share: float | None


class Durations(Model):
    cases: int = Field(description="cases (or stints) with this duration")
    median_business_minutes: float | None
    p90_business_minutes: float | None
    median_calendar_minutes: float | None
    p90_calendar_minutes: float | None


class DepartmentHandling(Durations):
    department: str
    stints: int
    cases: int = Field(description="finished stints (moved out): the ones with a duration")


class ClockRate(Model):
    clock: str
    decided: int = Field(description="met, or breached")
    on_time: int = Field(description="met and not late")
    late: int = Field(description="met late, or breached and not met")
    rate: float | None


class OnTime(Model):
    overall: ClockRate
    by_clock: list[ClockRate]


class OverdueClock(Model):
    feedback_number: str
    department: str | None
    owner: str | None
    priority: str | None
    clock: str
    subject: str | None
    due_at: datetime
    overdue_minutes: float
    escalation_level: int


class Overdue(Model):
    cases: int
    clocks: int
    # The longest overdue first; all of them unless the caller capped the list
    # (`overdue_limit`): with a heavy backlog they are tens of thousands.
    items: list[OverdueClock]


class ScoreCount(Model):
    score: int
    count: int


class Csat(Model):
    rated: int
    score_4_5: int
    share_4_5: float | None
    average: float | None
    distribution: list[ScoreCount]


class Nps(Model):
    answered: int
    promoters: int
    passives: int
    detractors: int
    nps: float | None = Field(description="% promoters (9–10) minus % detractors (0–6)")


class Repeat(Model):
    cases: int
    repeat_cases: int
    complaints: int
    repeat_complaints: int
    repeat_complaint_rate: float | None


class ModelProblem(Model):
    category: str | None
    cases: int
    share_in_model: float | None


class ProductModel(Model):
    product_model: str
    cases: int
    share: float | None = Field(description="of all problems naming a product model")
    problems: list[ModelProblem]


class UnsatisfiedCase(Model):
    feedback_number: str
    received_date: date
    department: str | None
    owner: str | None
    feedback_type: str | None
    category: str | None
    subcategory: str | None
    product_model: str | None
    result: str | None
    satisfied: bool | None
    csat: int | None
    nps: int | None
    reopened_count: int
    status: str


class Unsatisfied(Model):
    count: int
    items: list[UnsatisfiedCase]


class EmotionCount(Model):
    emotion: str | None
    cases: int
    share: float | None


class CallbackRow(Model):
    type: str
    tasks: int
    done: int
    done_on_time: int
    overdue: int
    completion_rate: float | None
    on_time_rate: float | None


class Callbacks(Model):
    overall: CallbackRow
    by_type: list[CallbackRow]


Step = Literal["day", "week", "month"]
# The trend's default step: days for a month or less, weeks for about half a year or less,
# else months (a chart of more than ~30 points per series is hard to read).
DAILY_AT_MOST_DAYS = 31
WEEKLY_AT_MOST_DAYS = 190


def default_step(day_from: date, day_to: date) -> Step:
    days = (day_to - day_from).days + 1
    if days <= DAILY_AT_MOST_DAYS:
        return "day"
    return "week" if days <= WEEKLY_AT_MOST_DAYS else "month"


class TrendPoint(Model):
    """One period's figures, of the feedback received in it (the first and last periods
    may be partial: only the range's days count)."""

    period: date = Field(description="the day, the week's Monday or the month's first day")
    cases: int
    channels: dict[str, int] = Field(
        description="cases by channel; every channel seen in the range, 0 when none"
    )
    csat_rated: int
    csat_average: float | None
    csat_share_4_5: float | None
    nps_answered: int
    nps: float | None
    complaints: int
    repeat_complaints: int
    repeat_complaint_rate: float | None
    clocks_decided: int
    on_time_rate: float | None


class Trend(Model):
    step: Step
    points: list[TrendPoint]


class Summary(Model):
    """Every figure of the report for the range; `total` = feedback received in it."""

    from_: date = Field(alias="from")
    to: date
    zone: str
    departments: list[str] | None = Field(description="null: every department")
    as_of: datetime
    basis: str = BASIS
    total: int
    volume: Volume
    categories: list[CategoryCount]
    department_handling: list[DepartmentHandling]
    first_response: Durations
    resolution: Durations
    on_time: OnTime
    overdue: Overdue
    csat: Csat
    nps: Nps
    repeat: Repeat
    product_problems: list[ProductModel]
    unsatisfied: Unsatisfied
    emotions: list[EmotionCount]
    callbacks: Callbacks
    trend: Trend


# --- Queries ---------------------------------------------------------------------------------


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _minutes(value: float | None) -> float | None:
    return None if value is None else round(float(value), 1)


async def _rows(conn: Any, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(query, params)
        return list(await cursor.fetchall())


async def _row(conn: Any, query: str, params: dict[str, Any]) -> dict[str, Any]:
    rows = await _rows(conn, query, params)
    return rows[0]


def _durations(row: dict[str, Any], prefix: str = "") -> Durations:
    return Durations(
        cases=int(row[f"{prefix}cases"]),
        median_business_minutes=_minutes(row[f"{prefix}median_business"]),
        p90_business_minutes=_minutes(row[f"{prefix}p90_business"]),
        median_calendar_minutes=_minutes(row[f"{prefix}median_calendar"]),
        p90_calendar_minutes=_minutes(row[f"{prefix}p90_calendar"]),
    )


def _percentiles(column: str, prefix: str) -> str:
    return ", ".join(
        f"percentile_cont({fraction}) WITHIN GROUP (ORDER BY {column}_{kind}_minutes) "
        f"AS {prefix}{name}_{kind}"
        for kind in ("business", "calendar")
        for fraction, name in ((0.5, "median"), (0.9, "p90"))
    )


async def _volume(conn: Any, params: dict[str, Any], total: int) -> Volume:
    series = {}
    for step, column in (("day", "received_date"), ("week", "received_week"), ("month", "received_month")):  # fmt: skip
        rows = await _rows(
            conn,
            f"""
            SELECT p::date AS period, coalesce(c.cases, 0) AS cases
            FROM generate_series(date_trunc('{step}', %(day_from)s::timestamp),
                                 %(day_to)s::timestamp, interval '1 {step}') p
            LEFT JOIN (SELECT {column} AS period, count(*) AS cases FROM bi.cases
                       WHERE {CASES} GROUP BY 1) c ON c.period = p::date
            ORDER BY 1
            """,
            params,
        )
        series[step] = [PeriodCount(period=r["period"], cases=r["cases"]) for r in rows]
    channels = await _rows(
        conn,
        f"SELECT channel, count(*) AS cases FROM bi.cases WHERE {CASES} "
        "GROUP BY 1 ORDER BY 2 DESC, 1",
        params,
    )
    types = await _rows(
        conn,
        f"SELECT feedback_type, count(*) AS cases FROM bi.cases WHERE {CASES} "
        "GROUP BY 1 ORDER BY 2 DESC, 1 NULLS LAST",
        params,
    )
    return Volume(
        by_day=series["day"],
        by_week=series["week"],
        by_month=series["month"],
        by_channel=[
            ChannelCount(channel=r["channel"], cases=r["cases"], share=_share(r["cases"], total))
            for r in channels
        ],
        by_type=[
            TypeCount(
                feedback_type=r["feedback_type"],
                cases=r["cases"],
                share=_share(r["cases"], total),
            )
            for r in types
        ],
    )


async def _categories(conn: Any, params: dict[str, Any], total: int) -> list[CategoryCount]:
    rows = await _rows(
        conn,
        f"SELECT category, subcategory, count(*) AS cases FROM bi.cases WHERE {CASES} "
        "GROUP BY 1, 2 ORDER BY 3 DESC, 1 NULLS LAST, 2 NULLS LAST",
        params,
    )
    return [
        CategoryCount(
            category=r["category"],
            subcategory=r["subcategory"],
            cases=r["cases"],
            share=_share(r["cases"], total),
        )
        for r in rows
    ]


async def _department_handling(conn: Any, params: dict[str, Any]) -> list[DepartmentHandling]:
    rows = await _rows(
        conn,
        f"""
        SELECT department, count(*) AS stints, count(moved_out_at) AS cases,
               {_percentiles("stint", "")}
        FROM (SELECT department, moved_out_at, business_minutes AS stint_business_minutes,
                     calendar_minutes AS stint_calendar_minutes
              FROM bi.department_stints WHERE {RECEIVED} AND {_scoped("department")}) s
        GROUP BY 1 ORDER BY 1
        """,
        params,
    )
    return [
        DepartmentHandling(
            department=r["department"], stints=r["stints"], **_durations(r).model_dump()
        )
        for r in rows
    ]


async def _response_times(conn: Any, params: dict[str, Any]) -> tuple[Durations, Durations]:
    row = await _row(
        conn,
        f"""
        SELECT count(first_response_at) AS fr_cases, {_percentiles("first_response", "fr_")},
               count(resolved_at) AS rs_cases, {_percentiles("resolution", "rs_")}
        FROM bi.cases WHERE {CASES}
        """,
        params,
    )
    return _durations(row, "fr_"), _durations(row, "rs_")


async def _on_time(conn: Any, params: dict[str, Any]) -> OnTime:
    rows = await _rows(
        conn,
        f"""
        SELECT clock, count(on_time) AS decided,
               count(*) FILTER (WHERE on_time) AS on_time,
               count(*) FILTER (WHERE NOT on_time) AS late
        FROM bi.clocks WHERE {CASES}
        GROUP BY ROLLUP (clock) ORDER BY clock NULLS FIRST
        """,
        params,
    )
    rates = [
        ClockRate(
            clock=r["clock"] or "all",
            decided=r["decided"],
            on_time=r["on_time"],
            late=r["late"],
            rate=_share(r["on_time"], r["decided"]),
        )
        for r in rows
    ]
    overall = rates[0] if rates else ClockRate(clock="all", decided=0, on_time=0, late=0, rate=None)
    return OnTime(overall=overall, by_clock=rates[1:])


async def _overdue(conn: Any, params: dict[str, Any], limit: int | None) -> Overdue:
    # What bi.clocks calls `overdue`, as of the report's time: counted whole, listed up to
    # `limit` (None: every one).
    overdue = f"""
        {CASES} AND state <> 'met' AND due_at < %(as_of)s
          AND (state <> 'paused' OR paused_at >= due_at)
          AND case_status NOT IN ('closed', 'archived')
    """
    counts = await _row(
        conn,
        f"SELECT count(DISTINCT feedback_number) AS cases, count(*) AS clocks "
        f"FROM bi.clocks WHERE {overdue}",
        params,
    )
    rows = await _rows(
        conn,
        f"""
        SELECT feedback_number, department, owner, priority, clock, subject, due_at,
               round((extract(epoch FROM %(as_of)s - due_at) / 60)::numeric, 1)::float
                   AS overdue_minutes,
               escalation_level
        FROM bi.clocks
        WHERE {overdue}
        ORDER BY due_at, feedback_number, clock, subject NULLS FIRST
        LIMIT %(overdue_limit)s
        """,
        params | {"overdue_limit": limit},
    )
    items = [OverdueClock.model_validate(r) for r in rows]
    return Overdue(cases=counts["cases"], clocks=counts["clocks"], items=items)


async def _csat_nps(conn: Any, params: dict[str, Any]) -> tuple[Csat, Nps]:
    row = await _row(
        conn,
        f"""
        SELECT count(csat) AS rated, count(*) FILTER (WHERE csat >= 4) AS score_4_5,
               avg(csat)::float AS average,
               count(nps) AS answered, count(*) FILTER (WHERE nps >= 9) AS promoters,
               count(*) FILTER (WHERE nps BETWEEN 7 AND 8) AS passives,
               count(*) FILTER (WHERE nps <= 6) AS detractors
        FROM bi.cases WHERE {CASES}
        """,
        params,
    )
    scores = await _rows(
        conn,
        f"SELECT csat AS score, count(*) AS count FROM bi.cases "
        f"WHERE {CASES} AND csat IS NOT NULL GROUP BY 1",
        params,
    )
    counted = {r["score"]: r["count"] for r in scores}
    answered = row["answered"]
    nps = round(100.0 * (row["promoters"] - row["detractors"]) / answered, 1) if answered else None
    return (
        Csat(
            rated=row["rated"],
            score_4_5=row["score_4_5"],
            share_4_5=_share(row["score_4_5"], row["rated"]),
            average=None if row["average"] is None else round(row["average"], 2),
            distribution=[ScoreCount(score=s, count=counted.get(s, 0)) for s in range(1, 6)],
        ),
        Nps(
            answered=answered,
            promoters=row["promoters"],
            passives=row["passives"],
            detractors=row["detractors"],
            nps=nps,
        ),
    )


async def _repeat(conn: Any, params: dict[str, Any]) -> Repeat:
    row = await _row(
        conn,
        f"""
        SELECT count(*) AS cases, count(*) FILTER (WHERE repeat) AS repeat_cases,
               count(*) FILTER (WHERE feedback_type = 'complaint') AS complaints,
               count(*) FILTER (WHERE feedback_type = 'complaint' AND repeat)
                   AS repeat_complaints
        FROM bi.cases WHERE {CASES}
        """,
        params,
    )
    return Repeat(**row, repeat_complaint_rate=_share(row["repeat_complaints"], row["complaints"]))


async def _product_problems(conn: Any, params: dict[str, Any]) -> list[ProductModel]:
    rows = await _rows(
        conn,
        f"""
        WITH problems AS (
            SELECT product_model, category, count(*) AS cases FROM bi.cases
            WHERE {CASES} AND product_model IS NOT NULL
              AND coalesce(feedback_type, '') <> ALL(%(not_problems)s)
            GROUP BY 1, 2
        )
        SELECT product_model, category, cases,
               sum(cases) OVER (PARTITION BY product_model)::bigint AS model_cases,
               sum(cases) OVER ()::bigint AS all_cases
        FROM problems ORDER BY model_cases DESC, product_model, cases DESC, category NULLS LAST
        """,
        params | {"not_problems": list(NOT_PROBLEMS)},
    )
    models: dict[str, ProductModel] = {}
    for r in rows:
        model = models.get(r["product_model"])
        if model is None:
            model = models[r["product_model"]] = ProductModel(
                product_model=r["product_model"],
                cases=r["model_cases"],
                share=_share(r["model_cases"], r["all_cases"]),
                problems=[],
            )
        model.problems.append(
            ModelProblem(
                category=r["category"],
                cases=r["cases"],
                share_in_model=_share(r["cases"], r["model_cases"]),
            )
        )
    return list(models.values())


async def _unsatisfied(conn: Any, params: dict[str, Any]) -> Unsatisfied:
    rows = await _rows(
        conn,
        f"""
        SELECT feedback_number, received_date, department, owner, feedback_type, category,
               subcategory, product_model, result, satisfied, csat, nps, reopened_count, status
        FROM bi.unsatisfied_cases WHERE {CASES}
        ORDER BY received_at, feedback_number
        """,
        params,
    )
    items = [UnsatisfiedCase.model_validate(r) for r in rows]
    return Unsatisfied(count=len(items), items=items)


async def _emotions(conn: Any, params: dict[str, Any], total: int) -> list[EmotionCount]:
    rows = await _rows(
        conn,
        f"SELECT emotion, count(*) AS cases FROM bi.cases WHERE {CASES} "
        "GROUP BY 1 ORDER BY 2 DESC, 1 NULLS LAST",
        params,
    )
    return [
        EmotionCount(emotion=r["emotion"], cases=r["cases"], share=_share(r["cases"], total))
        for r in rows
    ]


async def _callbacks(conn: Any, params: dict[str, Any]) -> Callbacks:
    rows = await _rows(
        conn,
        f"""
        SELECT type, count(*) AS tasks,
               count(*) FILTER (WHERE state = 'done') AS done,
               count(*) FILTER (WHERE done_on_time) AS done_on_time,
               count(*) FILTER (WHERE state <> 'done' AND due_at < %(as_of)s) AS overdue
        FROM bi.callback_tasks
        WHERE due_at >= %(start)s AND due_at < %(end)s AND {_scoped("department")}
        GROUP BY ROLLUP (type) ORDER BY type NULLS FIRST
        """,
        params,
    )
    made = [
        CallbackRow(
            **(r | {"type": r["type"] or "all"}),
            completion_rate=_share(r["done"], r["tasks"]),
            on_time_rate=_share(r["done_on_time"], r["tasks"]),
        )
        for r in rows
    ]
    empty = CallbackRow(
        type="all", tasks=0, done=0, done_on_time=0, overdue=0, completion_rate=None,
        on_time_rate=None,
    )  # fmt: skip
    return Callbacks(overall=made[0] if made else empty, by_type=made[1:])


async def _trend(conn: Any, params: dict[str, Any], step: Step) -> Trend:
    # `step` is one of three literals (never the caller's text) and the period of a row is
    # its local received date truncated alike, so the series and the rows line up.
    period = f"date_trunc('{step}', received_date)::date"
    rows = await _rows(
        conn,
        f"""
        SELECT p::date AS period, coalesce(c.cases, 0) AS cases,
               coalesce(c.csat_rated, 0) AS csat_rated, c.csat_average,
               coalesce(c.csat_4_5, 0) AS csat_4_5, coalesce(c.nps_answered, 0) AS nps_answered,
               coalesce(c.promoters, 0) AS promoters, coalesce(c.detractors, 0) AS detractors,
               coalesce(c.complaints, 0) AS complaints,
               coalesce(c.repeat_complaints, 0) AS repeat_complaints
        FROM generate_series(date_trunc('{step}', %(day_from)s::timestamp),
                             %(day_to)s::timestamp, interval '1 {step}') p
        LEFT JOIN (
            SELECT {period} AS period, count(*) AS cases, count(csat) AS csat_rated,
                   avg(csat)::float AS csat_average,
                   count(*) FILTER (WHERE csat >= 4) AS csat_4_5,
                   count(nps) AS nps_answered, count(*) FILTER (WHERE nps >= 9) AS promoters,
                   count(*) FILTER (WHERE nps <= 6) AS detractors,
                   count(*) FILTER (WHERE feedback_type = 'complaint') AS complaints,
                   count(*) FILTER (WHERE feedback_type = 'complaint' AND repeat)
                       AS repeat_complaints
            FROM bi.cases WHERE {CASES} GROUP BY 1
        ) c ON c.period = p::date
        ORDER BY 1
        """,
        params,
    )
    by_channel = await _rows(
        conn,
        f"SELECT {period} AS period, channel, count(*) AS cases FROM bi.cases "
        f"WHERE {CASES} GROUP BY 1, 2",
        params,
    )
    clocks = await _rows(
        conn,
        f"SELECT {period} AS period, count(on_time) AS decided, "
        "count(*) FILTER (WHERE on_time) AS on_time "
        f"FROM bi.clocks WHERE {CASES} GROUP BY 1",
        params,
    )
    channels = sorted({r["channel"] for r in by_channel})
    counted = {(r["period"], r["channel"]): int(r["cases"]) for r in by_channel}
    decided = {r["period"]: (int(r["decided"]), int(r["on_time"])) for r in clocks}
    points = []
    for r in rows:
        clocks_decided, on_time = decided.get(r["period"], (0, 0))
        answered = r["nps_answered"]
        points.append(
            TrendPoint(
                period=r["period"],
                cases=r["cases"],
                channels={c: counted.get((r["period"], c), 0) for c in channels},
                csat_rated=r["csat_rated"],
                csat_average=None if r["csat_average"] is None else round(r["csat_average"], 2),
                csat_share_4_5=_share(r["csat_4_5"], r["csat_rated"]),
                nps_answered=answered,
                nps=round(100.0 * (r["promoters"] - r["detractors"]) / answered, 1)
                if answered
                else None,
                complaints=r["complaints"],
                repeat_complaints=r["repeat_complaints"],
                repeat_complaint_rate=_share(r["repeat_complaints"], r["complaints"]),
                clocks_decided=clocks_decided,
                on_time_rate=_share(on_time, clocks_decided),
            )
        )
    return Trend(step=step, points=points)


async def summary(
    conn: Any,
    day_from: date,
    day_to: date,
    zone: ZoneInfo,
    scope: Scope,
    as_of: datetime,
    step: Step | None = None,
    overdue_limit: int | None = None,
    second: Any = None,
) -> Summary:
    """The report for local days `day_from`..`day_to` (both included), in the caller's
    transaction (a repeatable-read one gives every section the same snapshot); the trend
    by `step` (default: `default_step`); at most `overdue_limit` overdue clocks listed.

    With `second`, a connection whose transaction shares the first one's snapshot
    (`shared_snapshot`), half the sections run on it at the same time: PostgreSQL works
    on both at once (the report of 100,000 cases takes about half as long)."""
    checked_range(day_from, day_to)
    start, end = local_bounds(day_from, day_to, zone)
    params = scope.params() | {
        "start": start,
        "end": end,
        "day_from": day_from,
        "day_to": day_to,
        "as_of": as_of,
    }
    total = int(
        (await _row(conn, f"SELECT count(*) AS n FROM bi.cases WHERE {CASES}", params))["n"]
    )
    other = second or conn

    async def first_half() -> tuple[Any, ...]:
        return (
            await _response_times(conn, params),
            await _csat_nps(conn, params),
            await _volume(conn, params, total),
            await _categories(conn, params, total),
            await _department_handling(conn, params),
            await _on_time(conn, params),
        )

    async def second_half() -> tuple[Any, ...]:
        return (
            await _overdue(other, params, overdue_limit),
            await _repeat(other, params),
            await _product_problems(other, params),
            await _unsatisfied(other, params),
            await _emotions(other, params, total),
            await _callbacks(other, params),
            await _trend(other, params, step or default_step(day_from, day_to)),
        )

    if second is None:  # one connection runs one statement at a time
        one, two = await first_half(), await second_half()
    else:
        one, two = await asyncio.gather(first_half(), second_half())
    (first_response, resolution), (csat, nps), volume, categories, handling, on_time = one
    overdue, repeat, product_problems, unsatisfied, emotions, callbacks, trend = two
    return Summary(
        from_=day_from,
        to=day_to,
        zone=zone.key,
        departments=None if scope.departments is None else list(scope.departments),
        as_of=as_of,
        total=total,
        volume=volume,
        categories=categories,
        department_handling=handling,
        first_response=first_response,
        resolution=resolution,
        on_time=on_time,
        overdue=overdue,
        csat=csat,
        nps=nps,
        repeat=repeat,
        product_problems=product_problems,
        unsatisfied=unsatisfied,
        emotions=emotions,
        callbacks=callbacks,
        trend=trend,
    )


@contextlib.asynccontextmanager
async def shared_snapshot(pool: Any) -> AsyncIterator[tuple[Any, Any]]:
    """Two read-only connections whose transactions see one snapshot (the first exports
    it, the second adopts it): every section of a report reads the same data, in parallel."""
    async with pool.connection() as first, first.transaction():
        await first.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        exported = await (await first.execute("SELECT pg_export_snapshot()")).fetchone()
        async with pool.connection() as second, second.transaction():
            await second.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            await second.execute(
                sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(exported[0]))
            )
            yield first, second
