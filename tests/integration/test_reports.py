"""Reports and BI (issue #11): report figures against hand-computed expectations on a fixed
set of cases with known times, folded from contract events into the read models; the
exports (JSON, XLSX, CSV, HTML); who may read which department's report; the `bi_reader`
role reads the `bi` views and nothing else; the scheduled weekly and monthly reports are
written once per period and announced on the bus.

The fixture (times in Asia/Shanghai). February 2026: Saturday the 14th is a make-up working
day (调休), the 15th to the 23rd the Spring Festival holiday, Saturday the 28th a make-up
working day. Business hours 09:00–18:00.

| case | received | dept | type | notes |
|---|---|---|---|---|
| C1 | Fri 02-06 17:00 | product | complaint | first response Mon 10:00 (over a weekend), resolved Tue 11:00, closed, CSAT 5 NPS 10 |
| C2 | Fri 02-13 16:00 | product | complaint | first response Sat 02-14 10:00 (调休), resolved Tue 02-24 10:00 (over the holiday) late, rejected, CSAT 2 NPS 3, reopened |
| C3 | Sat 02-14 09:30 | after_sales → product | complaint | same customer as C2: repeat; first response breached, open |
| C4 | Mon 02-16 10:00 (holiday) | customer_service | inquiry | first response 11:00 the same holiday (0 business minutes), resolved Wed 02-25 10:00, CSAT 4 NPS 8 |
| C5 | Fri 02-20 14:00 (holiday) | customer_service | praise | CSAT 5 NPS 9 |
| C6 | Fri 02-27 17:30 | logistics | complaint | related to C1: repeat; first response Sat 02-28 10:00 (调休); resolution clock running, due 03-04 |
| C7 | Sat 01-31 23:30 | product | suggestion | January (15:30 UTC) |
| C8 | Sun 02-01 00:30 | product | suggestion | February (still 01-31 in UTC); same customer as C7 an hour later: repeat |
| C9 | Tue 02-10 09:00 | (triage) | — | stated emotion angry |
| C10 | Mon 03-02 10:00 | product | complaint | a product model and an owner that look like formulas and markup |
"""

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import hmac
import io
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import openpyxl
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from contracts import topics
from contracts.events import (
    CaseClosed,
    CaseEvent,
    CaseRated,
    CaseRegistered,
    CaseReopened,
    CaseResolved,
    Classification,
    ClockBreached,
    ClockMet,
    ClockStarted,
    CustomerConfirmed,
    FeedbackClassified,
    FeedbackRouted,
    OwnerAssigned,
    Registration,
    ReportPublished,
    SentToTriage,
)
from services.cases.store import CaseStore
from services.common.bus import ensure_topics, make_broker, platform_topics
from services.common.database import apply_schema, open_pool
from services.common.settings import Settings
from services.projections import bi, casefile, report_schedule, reports
from services.projections.report_files import Labels
from services.routing.classifier import load_rulebook
from services.runtime import Platform
from services.sla.calendar import load_calendars
from tests.conftest import serve, wait_for

pytestmark = pytest.mark.integration

SH = ZoneInfo("Asia/Shanghai")
CALENDAR = load_calendars().get(None)


def at(text: str) -> datetime:
    """A local time in Shanghai, `2026-02-06 17:00`."""
    return datetime.fromisoformat(text).replace(tzinfo=SH)


# --- The fixture: contract events, folded by the projections' own code ----------------------


@dataclass
class Case:
    number: str
    received: datetime
    customer: str
    channel: str
    events: list[CaseEvent] = field(default_factory=list)
    department: str | None = None
    feedback_id: uuid.UUID = field(default_factory=uuid.uuid4)


class Fixture:
    def __init__(self) -> None:
        self.position = 0
        self.cases: list[Case] = []

    def _event(self, case: Case, kind: type[CaseEvent], when: datetime, **fields: Any) -> None:
        self.position += 1
        fields.setdefault("department", case.department)
        case.events.append(
            kind(
                feedback_id=case.feedback_id,
                feedback_number=case.number,
                version=len(case.events) + 1,
                position=self.position,
                occurred_at=when,
                **fields,
            )
        )

    def case(
        self,
        number: str,
        received: str,
        customer: str,
        channel: str,
        *,
        product_model: str | None = None,
        emotion: str | None = None,
        related: str | None = None,
    ) -> Case:
        case = Case(number, at(received), customer, channel)
        self.cases.append(case)
        registration = Registration(
            feedback_number=number,
            received_at=case.received,
            registered_at=case.received + timedelta(minutes=1),
            channel=channel,
            customer_ref=customer,
            product_model=product_model,
            description="（测试）描述不进入任何报表",
            emotion=emotion,
            receiver="test",
            related_feedback=related,
        )
        self._event(
            case, CaseRegistered, case.received + timedelta(minutes=1), registration=registration
        )
        return case

    def classify(
        self,
        case: Case,
        kind: str,
        department: str,
        *,
        category: str | None = None,
        subcategory: str | None = None,
        priority: str = "medium",
        emotion: str = "calm",
    ) -> None:
        classification = Classification(
            type=kind,
            category=category,
            subcategory=subcategory,
            priority=priority,
            department=department,
            emotion=emotion,
            confidence=0.9,
        )
        self._event(case, FeedbackClassified, case.received + timedelta(minutes=2),
                    classification=classification, by="rules")  # fmt: skip

    def route(self, case: Case, department: str, when: str) -> None:
        previous = case.department
        case.department = department
        self._event(case, FeedbackRouted, at(when), previous_department=previous, reason="rule")

    def assign(self, case: Case, owner: str, when: str) -> None:
        self._event(case, OwnerAssigned, at(when), owner=owner, by="sup", reason="least loaded")

    def clock(self, case: Case, clock: str, due: str, target: str = "4h") -> None:
        self._event(case, ClockStarted, case.received, clock=clock, target=target,
                    time="business", started_at=case.received, due_at=at(due),
                    warn_at=at(due) - timedelta(hours=1))  # fmt: skip

    def met(self, case: Case, clock: str, when: str, *, late: bool = False) -> None:
        self._event(case, ClockMet, at(when), clock=clock, met_at=at(when), by_event="x",
                    late=late)  # fmt: skip

    def breached(self, case: Case, clock: str, due: str) -> None:
        self._event(case, ClockBreached, at(due), clock=clock, due_at=at(due))

    def resolve(self, case: Case, when: str, result: str = "resolved") -> None:
        self._event(case, CaseResolved, at(when), result=result, summary="处理完毕", by="agent")

    def confirm(self, case: Case, when: str, satisfied: bool) -> None:
        self._event(case, CustomerConfirmed, at(when), satisfied=satisfied, by="customer",
                    on_behalf=False)  # fmt: skip

    def rate(self, case: Case, when: str, csat: int, nps: int) -> None:
        self._event(case, CaseRated, at(when), csat=csat, nps=nps, by="customer")

    def events(self) -> list[CaseEvent]:
        return sorted((e for c in self.cases for e in c.events), key=lambda e: e.position)


def build_fixture() -> Fixture:
    f = Fixture()
    c1 = f.case(
        "F20260206-0001", "2026-02-06 17:00", "客户-2026-0001", "phone", product_model="X200"
    )
    f.classify(c1, "complaint", "product", category="product_quality",
               subcategory="hardware_fault", priority="high", emotion="angry")  # fmt: skip
    f.route(c1, "product", "2026-02-06 17:05")
    f.assign(c1, "prod-li", "2026-02-06 17:06")
    f.clock(c1, "first_response", "2026-02-09 12:00")
    f.clock(c1, "resolution", "2026-02-11 18:00", "3wd")
    f.met(c1, "first_response", "2026-02-09 10:00")
    f.resolve(c1, "2026-02-10 11:00")
    f.met(c1, "resolution", "2026-02-10 11:00")
    f.confirm(c1, "2026-02-10 15:00", True)
    f.rate(c1, "2026-02-10 15:05", 5, 10)
    f._event(c1, CaseClosed, at("2026-02-10 16:00"), by="prod-li")

    c2 = f.case(
        "F20260213-0001", "2026-02-13 16:00", "客户-2026-0002", "web_form", product_model="X200"
    )
    f.classify(c2, "complaint", "product", category="product_quality",
               subcategory="hardware_fault", emotion="dissatisfied")  # fmt: skip
    f.route(c2, "product", "2026-02-13 16:10")
    f.clock(c2, "first_response", "2026-02-14 11:00")
    f.clock(c2, "resolution", "2026-02-14 18:00", "1wd")
    f.met(c2, "first_response", "2026-02-14 10:00")
    f.breached(c2, "resolution", "2026-02-14 18:00")
    f.resolve(c2, "2026-02-24 10:00", "partially_resolved")
    f.met(c2, "resolution", "2026-02-24 10:00", late=True)
    f.confirm(c2, "2026-02-24 12:00", False)
    f.rate(c2, "2026-02-24 12:05", 2, 3)
    f._event(c2, CaseReopened, at("2026-02-24 13:00"), reason="客户不满意", by="sup",
             previous_priority="medium", priority="high")  # fmt: skip

    c3 = f.case("F20260214-0001", "2026-02-14 09:30", "客户-2026-0002", "wechat",
                product_model="X300", emotion="angry")  # fmt: skip
    f.classify(c3, "complaint", "after_sales", category="product_quality",
               subcategory="hardware_fault", priority="high", emotion="anxious")  # fmt: skip
    f.route(c3, "after_sales", "2026-02-14 09:40")
    f.clock(c3, "first_response", "2026-02-14 13:30")
    f.breached(c3, "first_response", "2026-02-14 13:30")
    f.route(c3, "product", "2026-02-14 15:40")

    c4 = f.case(
        "F20260216-0001", "2026-02-16 10:00", "客户-2026-0003", "email", product_model="X200"
    )
    f.classify(c4, "inquiry", "customer_service", priority="low")
    f.route(c4, "customer_service", "2026-02-16 10:05")
    f.clock(c4, "first_response", "2026-02-24 13:00")
    f.clock(c4, "resolution", "2026-02-26 18:00", "3wd")
    f.met(c4, "first_response", "2026-02-16 11:00")
    f.resolve(c4, "2026-02-25 10:00")
    f.met(c4, "resolution", "2026-02-25 10:00")
    f.rate(c4, "2026-02-25 11:00", 4, 8)

    c5 = f.case(
        "F20260220-0001", "2026-02-20 14:00", "客户-2026-0004", "phone", product_model="X300"
    )
    f.classify(c5, "praise", "customer_service", priority="low")
    f.route(c5, "customer_service", "2026-02-20 14:05")
    f.rate(c5, "2026-02-20 15:00", 5, 9)

    c6 = f.case("F20260227-0001", "2026-02-27 17:30", "客户-2026-0005", "web_form",
                related="F20260206-0001")  # fmt: skip
    f.classify(c6, "complaint", "logistics", category="logistics",
               subcategory="delivery_delay", emotion="dissatisfied")  # fmt: skip
    f.route(c6, "logistics", "2026-02-27 17:35")
    f.clock(c6, "first_response", "2026-02-28 12:30")
    f.clock(c6, "resolution", "2026-03-04 18:00", "3wd")
    f.met(c6, "first_response", "2026-02-28 10:00")

    c7 = f.case("F20260131-0001", "2026-01-31 23:30", "客户-2026-0006", "phone")
    f.classify(c7, "suggestion", "product")
    f.route(c7, "product", "2026-01-31 23:35")

    c8 = f.case(
        "F20260201-0001", "2026-02-01 00:30", "客户-2026-0006", "email", product_model="X200"
    )
    f.classify(c8, "suggestion", "product")
    f.route(c8, "product", "2026-02-01 00:35")

    c9 = f.case("F20260210-0001", "2026-02-10 09:00", "客户-2026-0007", "weibo", emotion="angry")
    f._event(c9, SentToTriage, at("2026-02-10 09:01"), reason="low confidence")

    c10 = f.case("F20260302-0001", "2026-03-02 10:00", "客户-2026-0008", "web_form",
                 product_model='=HYPERLINK("http://x.test","<b>点我</b>")')  # fmt: skip
    f.classify(c10, "complaint", "product", category="=1+2")
    f.route(c10, "product", "2026-03-02 10:05")
    f.assign(c10, "@SUM(A1)", "2026-03-02 10:06")
    f.clock(c10, "first_response", "2026-03-02 14:00")
    return f


CALLBACK_TASKS = [
    # type, feedback number, department, due, state, done at
    ("post_complaint", "F20260206-0001", "product", "2026-02-13 18:00", "done", "2026-02-12 10:00"),
    ("post_complaint", "F20260213-0001", "product", "2026-02-25 18:00", "done", "2026-02-26 10:00"),
    ("after_sales", "F20260216-0001", "customer_service", "2026-02-27 18:00", "open", None),
    ("quarterly_survey", None, None, "2026-03-05 18:00", "open", None),
    ("churn_warning", None, "logistics", "2026-02-10 12:00", "rescheduled", None),
]


async def load_fixture(conn: Any) -> Fixture:
    fixture = build_fixture()
    async with conn.transaction():
        await casefile.apply_events(conn, fixture.events(), CALENDAR)
        for kind, number, department, due, state, done in CALLBACK_TASKS:
            await conn.execute(
                "INSERT INTO callback_tasks (id, type, feedback_number, customer_ref, department, "
                "goal, script, due_at, state, created_at, updated_at, done_at) "
                "VALUES (%s, %s, %s, %s, %s, 'g', 's', %s, %s, %s, %s, %s)",
                (uuid.uuid4(), kind, number, "客户-2026-0001", department, at(due), state,
                 at("2026-02-01 09:00"), at("2026-02-01 09:00"), done and at(done)),
            )  # fmt: skip
    return fixture


def projections_schema(settings: Settings) -> list[str]:
    return Platform(settings, ("projections",)).schema()


async def fixture_pool(settings: Settings) -> Any:
    apply_schema(settings.database_url, projections_schema(settings))
    pool = open_pool(settings.database_url, max_size=4)
    await pool.open(wait=True)
    async with pool.connection() as conn:
        await load_fixture(conn)
    return pool


# --- Hand-computed expectations (February 2026, every department) ---------------------------

FEBRUARY_DAYS_WITH_FEEDBACK = {1: 1, 6: 1, 10: 1, 13: 1, 14: 1, 16: 1, 20: 1, 27: 1}
AS_OF = at("2026-03-10 12:00")


async def test_report_figures_match_hand_computed_expectations(settings: Settings) -> None:
    pool = await fixture_pool(settings)
    try:
        async with pool.connection() as conn:
            s = await reports.summary(
                conn, date(2026, 2, 1), date(2026, 2, 28), SH, reports.Scope(), AS_OF
            )
            january = await reports.summary(
                conn, date(2026, 1, 1), date(2026, 1, 31), SH, reports.Scope(), AS_OF
            )
    finally:
        await pool.close()

    # C7 (01-31 23:30 local) is January's, C8 (01-31 16:30 UTC) February's; C10 March's.
    assert january.total == 1
    assert s.total == 8
    assert [p.cases for p in s.volume.by_day] == [
        FEBRUARY_DAYS_WITH_FEEDBACK.get(d, 0) for d in range(1, 29)
    ]
    assert [(p.period.isoformat(), p.cases) for p in s.volume.by_week] == [
        ("2026-01-26", 1), ("2026-02-02", 1), ("2026-02-09", 3), ("2026-02-16", 2),
        ("2026-02-23", 1),
    ]  # fmt: skip
    assert [(p.period.isoformat(), p.cases) for p in s.volume.by_month] == [("2026-02-01", 8)]
    assert [(c.channel, c.cases, c.share) for c in s.volume.by_channel] == [
        ("email", 2, 0.25), ("phone", 2, 0.25), ("web_form", 2, 0.25), ("wechat", 1, 0.125),
        ("weibo", 1, 0.125),
    ]  # fmt: skip
    assert [(t.feedback_type, t.cases) for t in s.volume.by_type] == [
        ("complaint", 4), ("inquiry", 1), ("praise", 1), ("suggestion", 1), (None, 1),
    ]  # fmt: skip
    assert [(c.category, c.subcategory, c.cases, c.share) for c in s.categories] == [
        (None, None, 4, 0.5),
        ("product_quality", "hardware_fault", 3, 0.375),
        ("logistics", "delivery_delay", 1, 0.125),
    ]

    # Department stints. product: C1 17:05 Fri → Tue 11:00 = 55 + 540 + 120 = 715 business
    # minutes (5395 calendar); C2 16:10 Fri → Tue 02-24 10:00 over the 调休 Saturday and the
    # holiday = 110 + 540 + 60 = 710 (15470); C2 after reopening, C3 after its move, C8:
    # still there. after_sales: C3 on the 调休 Saturday 09:40–15:40 = 360. customer_service:
    # C4 from the holiday 02-16 10:05 → 02-25 10:00 = 540 + 60 = 600 (12955); C5 still there.
    handling = {d.department: d for d in s.department_handling}
    assert list(handling) == ["after_sales", "customer_service", "logistics", "product"]
    product = handling["product"]
    assert (product.stints, product.cases) == (5, 2)
    assert (product.median_business_minutes, product.p90_business_minutes) == (712.5, 714.5)
    assert (product.median_calendar_minutes, product.p90_calendar_minutes) == (10432.5, 14462.5)
    assert (handling["after_sales"].median_business_minutes, handling["after_sales"].p90_calendar_minutes) == (360.0, 360.0)  # fmt: skip
    cs = handling["customer_service"]
    assert (cs.stints, cs.cases, cs.median_business_minutes, cs.median_calendar_minutes) == (
        2, 1, 600.0, 12955.0,
    )  # fmt: skip
    assert (handling["logistics"].stints, handling["logistics"].median_business_minutes) == (
        1,
        None,
    )

    # First response: C1 Fri 17:00 → Mon 10:00 = 60 + 60 = 120 (3900 calendar); C2 Fri 16:00 →
    # Sat 10:00 (调休) = 120 + 60 = 180 (1080); C4 on the holiday = 0 (60); C6 Fri 17:30 →
    # Sat 02-28 10:00 (调休) = 30 + 60 = 90 (990). Sorted 0, 90, 120, 180: median 105,
    # p90 = 120 + 0.7 × 60 = 162; calendar 60, 990, 1080, 3900: 1035 and 1080 + 0.7 × 2820.
    fr = s.first_response
    assert fr.cases == 4
    assert (fr.median_business_minutes, fr.p90_business_minutes) == (105.0, 162.0)
    assert (fr.median_calendar_minutes, fr.p90_calendar_minutes) == (1035.0, 3054.0)
    # Resolution: C1 60 + 540 + 120 = 720 (5400); C2 120 + 540 + 60 = 720 (15480); C4 540 + 60
    # = 600 (12960). Median 720, p90 720; calendar 12960 and 12960 + 0.8 × 2520.
    rs = s.resolution
    assert rs.cases == 3
    assert (rs.median_business_minutes, rs.p90_business_minutes) == (720.0, 720.0)
    assert (rs.median_calendar_minutes, rs.p90_calendar_minutes) == (12960.0, 14976.0)

    # On time = met and not late ÷ (met or breached). first_response: C1, C2, C4, C6 on time,
    # C3 breached; resolution: C1, C4 on time, C2 met late, C6 still running (undecided).
    rates = {r.clock: (r.decided, r.on_time, r.late, r.rate) for r in s.on_time.by_clock}
    assert rates == {"first_response": (5, 4, 1, 0.8), "resolution": (3, 2, 1, 0.6667)}
    assert (s.on_time.overall.decided, s.on_time.overall.on_time, s.on_time.overall.rate) == (
        8, 6, 0.75,
    )  # fmt: skip

    # Overdue on 03-10 12:00: C3's first response (due 02-14 13:30: 24 days less 90 minutes)
    # and C6's resolution (due 03-04 18:00: 5 days 18 hours). C1 is closed, the rest met.
    assert (s.overdue.cases, s.overdue.clocks) == (2, 2)
    assert [(o.feedback_number, o.clock, o.overdue_minutes, o.department) for o in s.overdue.items] == [
        ("F20260214-0001", "first_response", 34470.0, "product"),
        ("F20260227-0001", "resolution", 8280.0, "logistics"),
    ]  # fmt: skip

    # CSAT 5, 2, 4, 5: three of four are 4–5, average 4. NPS 10, 3, 8, 9: (2 − 1) / 4.
    assert (s.csat.rated, s.csat.score_4_5, s.csat.share_4_5, s.csat.average) == (4, 3, 0.75, 4.0)
    assert [d.count for d in s.csat.distribution] == [0, 1, 0, 1, 2]
    assert (s.nps.answered, s.nps.promoters, s.nps.passives, s.nps.detractors) == (4, 2, 1, 1)
    assert s.nps.nps == 25.0

    # Repeats: C3 (C2's customer the day before), C6 (related to C1), C8 (C7's customer an
    # hour before, in January). Complaints C1, C2, C3, C6; repeat complaints C3, C6.
    assert s.repeat.model_dump() == {
        "cases": 8, "repeat_cases": 3, "complaints": 4, "repeat_complaints": 2,
        "repeat_complaint_rate": 0.5,
    }  # fmt: skip

    # Problems naming a model (praise C5 and suggestion C8 left out): X200 C1, C2 (quality),
    # C4 (inquiry, no category); X300 C3.
    assert [(m.product_model, m.cases, m.share) for m in s.product_problems] == [
        ("X200", 3, 0.75), ("X300", 1, 0.25),
    ]  # fmt: skip
    assert [(p.category, p.cases, p.share_in_model) for p in s.product_problems[0].problems] == [
        ("product_quality", 2, 0.6667), (None, 1, 0.3333),
    ]  # fmt: skip

    assert s.unsatisfied.count == 1
    unsatisfied = s.unsatisfied.items[0]
    assert (unsatisfied.feedback_number, unsatisfied.result, unsatisfied.satisfied) == (
        "F20260213-0001", "partially_resolved", False,
    )  # fmt: skip
    assert (unsatisfied.csat, unsatisfied.nps, unsatisfied.reopened_count) == (2, 3, 1)
    assert unsatisfied.status == "reopened"

    # Emotion: classified, else stated (C3 stated angry, classified anxious; C9 only stated).
    assert [(e.emotion, e.cases) for e in s.emotions] == [
        ("calm", 3), ("angry", 2), ("dissatisfied", 2), ("anxious", 1),
    ]  # fmt: skip

    # Callbacks due in February: two post-complaint (one on time, one late), an after-sales
    # one open, a churn warning rescheduled; both undone ones are overdue on 03-10.
    cb = s.callbacks
    assert cb.overall.model_dump() == {
        "type": "all", "tasks": 4, "done": 2, "done_on_time": 1, "overdue": 2,
        "completion_rate": 0.5, "on_time_rate": 0.25,
    }  # fmt: skip
    assert [(c.type, c.tasks, c.done, c.done_on_time, c.overdue) for c in cb.by_type] == [
        ("after_sales", 1, 0, 0, 1), ("churn_warning", 1, 0, 0, 1),
        ("post_complaint", 2, 2, 1, 0),
    ]  # fmt: skip


async def test_the_trend_gives_each_period_its_channels_scores_repeats_and_on_time_rate(
    settings: Settings,
) -> None:
    pool = await fixture_pool(settings)
    try:
        async with pool.connection() as conn:
            daily = await reports.summary(
                conn, date(2026, 2, 1), date(2026, 2, 28), SH, reports.Scope(), AS_OF
            )
            weekly = await reports.summary(
                conn, date(2026, 2, 1), date(2026, 2, 28), SH, reports.Scope(), AS_OF, "week"
            )
            long_range = await reports.summary(
                conn, date(2025, 9, 1), date(2026, 2, 28), SH, reports.Scope(), AS_OF
            )
    finally:
        await pool.close()

    # A month or less goes by day, the same days as the volume series.
    assert daily.trend.step == "day"
    assert [(p.period, p.cases) for p in daily.trend.points] == [
        (p.period, p.cases) for p in daily.volume.by_day
    ]
    # Half a year goes by week: the Mondays 2025-09-01 .. 2026-02-23.
    assert (long_range.trend.step, len(long_range.trend.points)) == ("week", 26)

    points = {p.period.isoformat(): p for p in weekly.trend.points}
    assert list(points) == ["2026-01-26", "2026-02-02", "2026-02-09", "2026-02-16", "2026-02-23"]
    assert [p.cases for p in points.values()] == [1, 1, 3, 2, 1]
    # Every channel of the range in every period; per channel, the periods add up.
    channels = {c.channel: c.cases for c in weekly.volume.by_channel}
    for point in points.values():
        assert set(point.channels) == set(channels)
        assert sum(point.channels.values()) == point.cases
    assert {c: sum(p.channels[c] for p in points.values()) for c in channels} == channels

    # CSAT/NPS: C1 5/10 (week of 02-02), C2 2/3 (02-09), C4 4/8 and C5 5/9 (02-16).
    scores = [
        (p.csat_rated, p.csat_average, p.csat_share_4_5, p.nps_answered, p.nps)
        for p in points.values()
    ]
    assert scores == [
        (0, None, None, 0, None), (1, 5.0, 1.0, 1, 100.0), (1, 2.0, 0.0, 1, -100.0),
        (2, 4.5, 1.0, 2, 50.0), (0, None, None, 0, None),
    ]  # fmt: skip
    # Complaints C1 | C2, C3 (a repeat) | C6 (a repeat).
    assert [
        (p.complaints, p.repeat_complaints, p.repeat_complaint_rate) for p in points.values()
    ] == [(0, 0, None), (1, 0, 0.0), (2, 1, 0.5), (0, 0, None), (1, 1, 1.0)]
    # Decided clocks: C1 both on time | C2 first response on time, resolution late, C3
    # breached | C4 both on time | C6 first response on time.
    assert [(p.clocks_decided, p.on_time_rate) for p in points.values()] == [
        (0, None), (2, 1.0), (3, 0.3333), (2, 1.0), (1, 1.0),
    ]  # fmt: skip


async def test_bi_views_are_documented_aggregated_and_free_of_personal_data(
    settings: Settings,
) -> None:
    pool = await fixture_pool(settings)
    try:
        async with pool.connection() as conn:
            undocumented = await (
                await conn.execute(
                    "SELECT c.relname, a.attname FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 "
                    "WHERE n.nspname = 'bi' AND (col_description(c.oid, a.attnum) IS NULL "
                    "OR col_description(c.oid, a.attnum) !~ '^[^/]*[一-龥][^/]* ?/ [A-Za-z0-9]')"
                )
            ).fetchall()
            assert undocumented == []
            views = await (
                await conn.execute(
                    "SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = 'bi' ORDER BY 1"
                )
            ).fetchall()
            names = [name for name, _ in views]
            assert {
                "cases", "volume_by_day", "volume_by_week", "volume_by_month", "category_mix",
                "department_handling_times", "response_times", "on_time_rate", "overdue_cases",
                "satisfaction", "nps", "repeat_complaints", "product_problems",
                "unsatisfied_cases", "emotion_mix", "callback_completion",
            } <= set(names)  # fmt: skip
            assert all(re.search(r"^[^/]*[一-龥][^/]* ?/ [A-Za-z0-9]", c or "") for _, c in views)
            columns = {
                row[0]
                for row in await (
                    await conn.execute(
                        "SELECT column_name FROM information_schema.columns "
                        "WHERE table_schema = 'bi'"
                    )
                ).fetchall()
            }
            assert not columns & {"customer_ref", "description", "outcome", "goal", "script",
                                  "reason", "customer_attempts", "expectation", "evidence"}  # fmt: skip
            # The monthly views agree with the range report.
            rows = await (
                await conn.execute(
                    "SELECT clock, sum(decided), sum(on_time) FROM bi.on_time_rate "
                    "WHERE month = '2026-02-01' GROUP BY 1 ORDER BY 1"
                )
            ).fetchall()
            assert rows == [("first_response", 5, 4), ("resolution", 3, 2)]
            row = await (
                await conn.execute(
                    "SELECT sum(promoters), sum(detractors), sum(answered) FROM bi.nps "
                    "WHERE month = '2026-02-01'"
                )
            ).fetchone()
            assert row == (2, 1, 4)
            row = await (
                await conn.execute(
                    "SELECT median_business_minutes, p90_calendar_minutes "
                    "FROM bi.department_handling_times "
                    "WHERE month = '2026-02-01' AND department = 'product'"
                )
            ).fetchone()
            assert row == (712.5, 14462.5)
            total = await (
                await conn.execute(
                    "SELECT sum(cases) FROM bi.volume_by_day "
                    "WHERE day BETWEEN '2026-02-01' AND '2026-02-28'"
                )
            ).fetchone()
            assert total == (8,)
            models = await (
                await conn.execute(
                    "SELECT product_model, model_cases, model_share, model_rank FROM "
                    "bi.product_problems WHERE month = '2026-02-01' AND category IS NOT NULL "
                    "ORDER BY model_rank"
                )
            ).fetchall()
            assert [(m, c, float(s), r) for m, c, s, r in models] == [
                ("X200", 3, 0.75, 1), ("X300", 1, 0.25, 2),
            ]  # fmt: skip
    finally:
        await pool.close()


# --- HTTP: JSON, XLSX, CSV, HTML and who may read what ---------------------------------------


async def test_reports_over_http_in_every_format_scoped_to_departments(
    settings: Settings, tmp_path: Any
) -> None:
    with_reports = settings.model_copy(update={"reports_dir": tmp_path / "reports"})
    async with serve(with_reports, ("projections",)) as running:
        client = running.client
        assert running.platform.pool is not None
        async with running.platform.pool.connection() as conn:
            await load_fixture(conn)
        february = {"from": "2026-02-01", "to": "2026-02-28"}
        quality = running.as_staff("quality")

        answer = await client.get("/v1/reports/summary", params=february, headers=quality)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["total"] == 8 and body["from"] == "2026-02-01" and body["to"] == "2026-02-28"
        assert body["departments"] is None and body["zone"] == "Asia/Shanghai"
        assert body["first_response"]["median_business_minutes"] == 105.0
        assert body["nps"]["nps"] == 25.0 and body["csat"]["share_4_5"] == 0.75
        # Overdue as of now (November 2026): the same two clocks.
        assert [o["feedback_number"] for o in body["overdue"]["items"]] == [
            "F20260214-0001", "F20260227-0001",
        ]  # fmt: skip
        assert "客户-" not in answer.text and "描述" not in answer.text
        assert body["trend"]["step"] == "day" and len(body["trend"]["points"]) == 28
        monthly = await client.get(
            "/v1/reports/summary", params=february | {"step": "month"}, headers=quality
        )
        assert [p["cases"] for p in monthly.json()["trend"]["points"]] == [8]
        odd_step = await client.get(
            "/v1/reports/summary", params=february | {"step": "year"}, headers=quality
        )
        assert odd_step.status_code == 422

        # Who sees which departments.
        agent = running.as_staff("agent", ("product",), agent_id="prod-li")
        assert (
            await client.get("/v1/reports/summary", params=february, headers=agent)
        ).status_code == 403
        finance = running.as_staff("supervisor", ("finance",))
        refused = await client.get(
            "/v1/reports/summary", params=february | {"department": "product"}, headers=finance
        )
        assert refused.status_code == 403
        product = running.as_staff("supervisor", ("product",))
        mine = (await client.get("/v1/reports/summary", params=february, headers=product)).json()
        assert (mine["total"], mine["departments"]) == (4, ["product"])  # C1, C2, C3, C8
        assert [d["department"] for d in mine["department_handling"]] == ["product"]
        assert mine["callbacks"]["overall"]["tasks"] == 2
        head = running.as_staff("head", ("product", "logistics"))
        both = (await client.get("/v1/reports/summary", params=february, headers=head)).json()
        assert both["total"] == 5
        # The triage department's supervisors also count cases in triage (C9).
        triage = running.as_staff("supervisor", ("customer_service",))
        cs = (await client.get("/v1/reports/summary", params=february, headers=triage)).json()
        assert cs["total"] == 3  # C4, C5, C9
        one = await client.get(
            "/v1/reports/summary", params=february | {"department": "logistics"}, headers=quality
        )
        assert one.json()["total"] == 1

        # Ranges.
        backwards = await client.get(
            "/v1/reports/summary", params={"from": "2026-03-01", "to": "2026-02-01"}
        )
        assert backwards.status_code == 422 and "after" in backwards.json()["detail"]
        bad = await client.get(
            "/v1/reports/summary", params={"from": "2026-02-30", "to": "2026-03-01"}
        )
        assert bad.status_code == 422 and "from" in json.dumps(bad.json()["detail"])
        assert (await client.get("/v1/reports/summary")).status_code == 422
        ancient = await client.get(
            "/v1/reports/summary", params={"from": "1999-12-31", "to": "2026-03-01"}
        )
        assert ancient.status_code == 422

        # XLSX: a sheet per section, Chinese headers, the figures, charts.
        xlsx = await client.get("/v1/reports/summary.xlsx", params=february, headers=quality)
        assert xlsx.status_code == 200, xlsx.text
        assert "spreadsheetml" in xlsx.headers["content-type"]
        book = openpyxl.load_workbook(io.BytesIO(xlsx.content))
        assert book.sheetnames[:5] == ["概览", "按日反馈量", "按周反馈量", "按月反馈量", "渠道分布"]
        assert len(book.sheetnames) == 18
        overview = {row[0]: row[1] for row in book["概览"].iter_rows(values_only=True) if row[0]}
        assert overview["反馈总量"] == 8 and overview["净推荐值（NPS）"] == 25.0
        channels = table_of(book["渠道分布"], "渠道")
        assert channels[0] == ("渠道", "反馈量", "占比")
        assert channels[1:] == [("邮件", 2, 0.25), ("电话", 2, 0.25), ("网站/APP", 2, 0.25),
                                ("公众号", 1, 0.125), ("微博", 1, 0.125)]  # fmt: skip
        handling = table_of(book["部门处理时长"], "部门")
        assert handling[0][:4] == ("部门", "停留段数", "已转出段数", "中位数（工作分钟）")
        assert ("产品部", 5, 2, 712.5, 714.5, 10432.5, 14462.5) in handling
        assert book["渠道分布"]._charts and book["按日反馈量"]._charts
        days = table_of(book["按日反馈量"], "日期")
        assert len(days) == 29 and days[6][1] == 1  # a row per day, 02-06 has C1

        # Formula injection: the March case's model and owner are text in every export.
        march = {"from": "2026-03-01", "to": "2026-03-31"}
        book = openpyxl.load_workbook(
            io.BytesIO(
                (
                    await client.get("/v1/reports/summary.xlsx", params=march, headers=quality)
                ).content
            )
        )
        models = table_of(book["产品型号高频问题"], "排名")
        assert models[1][1] == "'" + '=HYPERLINK("http://x.test","<b>点我</b>")'
        assert models[1][4] == "'=1+2"
        cells = [c for row in book.worksheets for line in row.iter_rows() for c in line]
        assert not [c.coordinate for c in cells if c.data_type == "f"]

        # CSV: every section, every row; or one section as a plain table.
        whole = await client.get("/v1/reports/summary.csv", params=february, headers=quality)
        assert whole.status_code == 200 and whole.headers["content-type"].startswith("text/csv")
        text = whole.content.decode("utf-8-sig")
        assert text.count("客户反馈分析报告：") == 18
        section = await client.get(
            "/v1/reports/summary.csv", params=february | {"section": "emotions"}, headers=quality
        )
        rows = list(csv.reader(io.StringIO(section.content.decode("utf-8-sig"))))
        assert rows == [["情绪", "反馈量", "占比"], ["平静", "3", "37.50%"], ["愤怒", "2", "25.00%"],
                        ["不满", "2", "25.00%"], ["焦虑", "1", "12.50%"]]  # fmt: skip
        march_csv = (
            await client.get(
                "/v1/reports/summary.csv", params=march | {"section": "overdue"}, headers=quality
            )
        ).content.decode("utf-8-sig")
        assert all(
            not cell.startswith(("=", "+", "-", "@"))
            for row in csv.reader(io.StringIO(march_csv))
            for cell in row
        )
        assert "'@SUM(A1)" in march_csv
        unknown = await client.get(
            "/v1/reports/summary.csv", params=february | {"section": "nope"}, headers=quality
        )
        assert unknown.status_code == 422

        # HTML: printable, escaped, no scripts.
        page = await client.get("/v1/reports/summary.html", params=march, headers=quality)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert "<b>点我</b>" not in page.text and "&lt;b&gt;点我&lt;/b&gt;" in page.text
        page = await client.get("/v1/reports/summary.html", params=february, headers=product)
        assert "客户反馈分析报告" in page.text and "产品部" in page.text
        assert "反馈总量：<strong>4</strong>" in page.text
        assert "@media print" in page.text

        # The projections process writes the latest finished week and month on its own.
        expected = [
            f"{p.stem}.{ext}"
            for p in report_schedule.finished_periods(datetime.now(SH), SH)
            for ext in ("xlsx", "html")
        ]

        def written() -> bool:
            folder = tmp_path / "reports"
            return folder.exists() and sorted(p.name for p in folder.iterdir()) == sorted(expected)

        await wait_for(written, timeout=30, what="the scheduled reports")


def table_of(sheet: Any, first_header: str) -> list[tuple[Any, ...]]:
    """The rows of a sheet from its header row on."""
    rows = list(sheet.iter_rows(values_only=True))
    start = next(i for i, row in enumerate(rows) if row[0] == first_header)
    return [tuple(row) for row in rows[start:]]


# --- bi_reader ------------------------------------------------------------------------------


async def test_bi_reader_reads_the_bi_views_and_nothing_else(settings: Settings) -> None:
    # Every table of every service, the event store's included.
    apply_schema(settings.database_url, Platform(settings).schema())
    CaseStore(settings.database_url).close()
    with psycopg.connect(settings.database_url, autocommit=True) as admin:
        admin.execute("ALTER ROLE bi_reader NOLOGIN")
        # Starting again without a password gives no login.
        apply_schema(settings.database_url, Platform(settings).schema())
        assert admin.execute(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'bi_reader'"
        ).fetchone() == (False,)

    password = "bi reader test passphrase"
    bi.enable_login(settings.database_url, password)
    with psycopg.connect(settings.database_url, autocommit=True) as admin:
        login, stored = admin.execute(
            "SELECT rolcanlogin, rolpassword FROM pg_authid WHERE rolname = 'bi_reader'"
        ).fetchone() or (None, None)
        assert login is True
        assert scram_matches(stored, password)  # the server got a verifier, not the password
        tables = admin.execute(
            "SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN "
            "('pg_catalog', 'information_schema', 'bi')"
        ).fetchall()
        views = [
            r[0] for r in admin.execute("SELECT viewname FROM pg_views WHERE schemaname = 'bi'")
        ]
    names = {t for _, t in tables}
    assert {"cases_events", "pii_customers", "registrations", "case_facts", "callback_tasks",
            "staff_users", "report_runs"} <= names, names  # fmt: skip
    assert len(views) >= 19

    params = conninfo_to_dict(settings.database_url)
    params.update(user="bi_reader", password=password)
    with psycopg.connect(make_conninfo(**params), autocommit=True) as reader:  # type: ignore[arg-type]
        assert reader.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        assert reader.execute("SHOW statement_timeout").fetchone() == ("30s",)
        for view in views:
            reader.execute(f"SELECT * FROM bi.{view} LIMIT 1").fetchall()
        for schema, table in tables:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                reader.execute(f'SELECT 1 FROM "{schema}"."{table}" LIMIT 1')
        # Writes: refused by the read-only default, and by privileges when it is turned off.
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            reader.execute("CREATE TABLE bi.mine (x int)")
        reader.execute("SET default_transaction_read_only = off")
        for statement in (
            "CREATE TABLE bi.mine (x int)",
            "CREATE TABLE public.mine (x int)",
            "DELETE FROM public.case_facts",
            "INSERT INTO public.report_runs (kind) VALUES ('weekly')",
            "CREATE VIEW bi.mine AS SELECT 1",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                reader.execute(statement)


def scram_matches(stored: str, password: str) -> bool:
    """Whether a SCRAM-SHA-256 verifier is that of `password` (RFC 5802)."""
    method, rest = stored.split("$", 1)
    iterations_salt, keys = rest.split("$")
    iterations, salt = iterations_salt.split(":")
    stored_key, server_key = keys.split(":")
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(salt), int(iterations)
    )
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return (
        method == "SCRAM-SHA-256"
        and base64.b64encode(hashlib.sha256(client_key).digest()).decode() == stored_key
        and base64.b64encode(hmac.new(salted, b"Server Key", hashlib.sha256).digest()).decode()
        == server_key
    )


# --- The scheduled weekly and monthly reports ------------------------------------------------


async def test_scheduled_reports_are_written_once_per_period_and_announced(
    settings: Settings, tmp_path: Any
) -> None:
    pool = await fixture_pool(settings)
    await ensure_topics(settings, platform_topics(settings))
    broker = make_broker(settings, client_id="reports-test")
    await broker.start()
    folder = tmp_path / "reports"
    labels = Labels.of_rulebook(load_rulebook())
    try:
        one, two = (
            report_schedule.ReportSchedule(pool, broker, settings, folder, SH, labels)
            for _ in range(2)
        )
        # Monday 02-16 01:00 local (still Sunday in UTC): week 7 (02-09..02-15) and January.
        monday = at("2026-02-16 01:00")
        first = await asyncio.gather(one.run_once(monday), two.run_once(monday))
        announced = sorted((m for found in first for m in found), key=lambda m: m.kind)
        assert [(m.kind, m.period, m.total) for m in announced] == [
            ("monthly", "2026-01", 1), ("weekly", "2026-W07", 3),  # C7; C9, C2, C3
        ]  # fmt: skip
        weekly = announced[1]
        assert (weekly.period_from, weekly.period_to) == (date(2026, 2, 9), date(2026, 2, 15))
        names = sorted(p.name for p in folder.iterdir())
        assert names == ["monthly-2026-01.html", "monthly-2026-01.xlsx", "weekly-2026-W07.html",
                         "weekly-2026-W07.xlsx"]  # fmt: skip
        for file in weekly.files:
            body = (folder / file.name).read_bytes()
            assert hashlib.sha256(body).hexdigest() == file.sha256 and len(body) == file.size_bytes
        book = openpyxl.load_workbook(folder / "weekly-2026-W07.xlsx")
        overview = {row[0]: row[1] for row in book["概览"].iter_rows(values_only=True) if row[0]}
        assert overview["反馈总量"] == 3 and overview["报告期间"] == "2026-02-09 至 2026-02-15"
        assert "反馈总量：<strong>1</strong>" in (folder / "monthly-2026-01.html").read_text()

        # Again, later the same week, and from the other instance: nothing new.
        assert await one.run_once(monday + timedelta(days=2)) == []
        assert await two.run_once(monday) == []
        # The next week: week 8 only (January is written).
        next_week = await two.run_once(at("2026-02-23 09:00"))
        assert [(m.kind, m.period, m.total) for m in next_week] == [("weekly", "2026-W08", 2)]

        async with pool.connection() as conn:
            runs = await (
                await conn.execute("SELECT kind, period, total FROM report_runs ORDER BY 1, 2")
            ).fetchall()
        assert runs == [("monthly", "2026-01", 1), ("weekly", "2026-W07", 3),
                        ("weekly", "2026-W08", 2)]  # fmt: skip

        # On the bus, exactly once each, as the contract says.
        consumer = AIOKafkaConsumer(
            settings.topic(topics.REPORTS),
            bootstrap_servers=settings.kafka_bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            received: list[ReportPublished] = []

            async def three() -> bool:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    received.extend(ReportPublished.model_validate_json(r.value) for r in records)
                return len(received) >= 3

            await wait_for(three, timeout=30, what="three announcements")
            await asyncio.sleep(1.0)
            for records in (await consumer.getmany(timeout_ms=500)).values():
                received.extend(ReportPublished.model_validate_json(r.value) for r in records)
        finally:
            await consumer.stop()
        assert sorted((m.kind, m.period) for m in received) == [
            ("monthly", "2026-01"), ("weekly", "2026-W07"), ("weekly", "2026-W08"),
        ]  # fmt: skip
        assert {m.report_id for m in received} == {m.report_id for m in (*announced, *next_week)}
    finally:
        await broker.stop()
        await pool.close()


def test_finished_periods_in_the_calendar_zone() -> None:
    # Sunday 2026-03-01 23:30 in Shanghai is still in week 9 and March has begun.
    periods = report_schedule.finished_periods(at("2026-03-01 23:30"), SH)
    assert [(p.kind, p.name, p.first.isoformat(), p.last.isoformat()) for p in periods] == [
        ("weekly", "2026-W08", "2026-02-16", "2026-02-22"),
        ("monthly", "2026-02", "2026-02-01", "2026-02-28"),
    ]
    # New Year's week belongs to the ISO year of its Thursday.
    periods = report_schedule.finished_periods(at("2027-01-05 08:00"), SH)
    assert (periods[0].name, periods[1].name) == ("2026-W53", "2026-12")


def test_the_bi_reader_password_has_no_default() -> None:
    assert Settings.model_fields["bi_reader_password"].default is None
    with pytest.raises(ValueError, match="12 characters"):
        bi.enable_login("postgresql://unused", "short")
