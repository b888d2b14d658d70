"""Callbacks (回访, requirements §6): tasks created by rule, worked through HTTP, and the
retention purge of archived cases.

Rules (`config/callbacks.yaml`, refused at start with the key and the reason):

- post-complaint: a complaint's result (CaseResolved) gets a callback within 3 working days;
  an unresolved or partial result, or a high-value customer, comes first: due within 24 h;
- after-sales: a feedback whose registration has a purchase date gets a callback from +7 to
  +15 days after the purchase (due at +15 days);
- product-in-use: one month after the purchase of a high-value product (model keywords);
- churn warning: a customer whose last case event is older than 90 days (an hourly sweep);
- quarterly survey: each customer with a case closed in the quarter just ended, once.

Exactly once: the consumer (read with the projections in their group) writes its tables and
its Kafka position in one transaction (`kafka_positions.apply_slice_together`); a case's `last_version` drops events relayed
twice, and task ids are uuid5 of the type and the case (or customer and period), so a
redelivery, a rerun of a sweep or two instances sweeping at once create nothing twice.

Tasks name the customer by pseudonym only (`customer_ref`): contact details stay in the PII
vault of intake, revealed through the existing audited endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import psycopg
import yaml
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from contracts.codes import FeedbackType
from contracts.events import (
    CASE_EVENTS,
    CLOCK_EVENTS,
    CaseArchived,
    CaseClosed,
    CaseEvent,
    CaseRegistered,
    CaseReopened,
    CaseResolved,
    FeedbackClassified,
    FeedbackRouted,
    case_event_adapter,
    type_names,
)
from services.common import deadletters, kafka_positions
from services.common.bus import concerns
from services.sla.calendar import BusinessCalendar, parse_target

log = logging.getLogger(__name__)

RULES_FILE = Path(__file__).resolve().parents[2] / "config" / "callbacks.yaml"
# Read in the projections service's subscription (see `consumer`).
GROUP = "projections"
CONSUMER = "callbacks"
# Three years and a leap day: the least the archive is kept (requirements: at least 3 years).
MIN_RETENTION_DAYS = 1095
DEFAULT_RETENTION_DAYS = 3 * 365 + 1
# Day-based rules fall due at the close of that local day's working hours.
DAY_CLOSES = time(18, 0)
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "feedback-platform/callbacks")
_PLACEHOLDERS = frozenset({"feedback_number", "customer_ref", "purchase_date", "product_model"})


class TaskType(StrEnum):
    post_complaint = "post_complaint"
    after_sales = "after_sales"
    product_in_use = "product_in_use"
    churn_warning = "churn_warning"
    quarterly_survey = "quarterly_survey"


class TaskState(StrEnum):
    open = "open"
    done = "done"
    rescheduled = "rescheduled"


# --- Rules ----------------------------------------------------------------------------------


class CallbackRulesError(ValueError):
    """The callback rules file is refused: where and why."""


def _checked_target(value: str, *, working_days: bool) -> str:
    target = parse_target(value)  # raises with the reason
    if not working_days and target.unit == "wd":
        raise ValueError(f"{value}: hours or minutes here (h, m), not working days")
    return value


class TaskRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    goal: str = Field(min_length=1, max_length=500)
    script: str = Field(min_length=1, max_length=5000)

    @field_validator("script")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        unknown = set(re.findall(r"\{(\w*)\}", value)) - _PLACEHOLDERS
        if unknown:
            raise ValueError(f"unknown placeholders {sorted(unknown)}; use {sorted(_PLACEHOLDERS)}")
        return value


class PostComplaintRule(TaskRule):
    due: str = "3wd"

    @field_validator("due")
    @classmethod
    def _due(cls, value: str) -> str:
        return _checked_target(value, working_days=True)


class AfterSalesRule(TaskRule):
    window_from_days: int = Field(default=7, ge=0, le=3650)
    due_days: int = Field(default=15, ge=1, le=3650)

    @model_validator(mode="after")
    def _ordered(self) -> AfterSalesRule:
        if self.window_from_days > self.due_days:
            raise ValueError("window_from_days must not be later than due_days")
        return self


class ProductInUseRule(TaskRule):
    after_days: int = Field(default=30, ge=1, le=3650)
    window_days: int = Field(default=7, ge=0, le=365)
    high_value_models: tuple[str, ...] = Field(default=(), max_length=500)

    @field_validator("high_value_models")
    @classmethod
    def _keywords(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not keyword.strip() for keyword in value):
            raise ValueError("a model keyword must not be empty")
        return value


class ChurnRule(TaskRule):
    after_days: int = Field(default=90, ge=1, le=3650)
    due: str = "3wd"

    @field_validator("due")
    @classmethod
    def _due(cls, value: str) -> str:
        return _checked_target(value, working_days=True)


class QuarterlyRule(TaskRule):
    due_days: int = Field(default=14, ge=1, le=90)


class TaskRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    post_complaint: PostComplaintRule
    after_sales: AfterSalesRule
    product_in_use: ProductInUseRule
    churn_warning: ChurnRule
    quarterly_survey: QuarterlyRule

    def of(self, kind: TaskType) -> TaskRule:
        rule: TaskRule = getattr(self, kind.value)
        return rule


class CallbackRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    retention_days: int = Field(default=DEFAULT_RETENTION_DAYS, ge=MIN_RETENTION_DAYS)
    high_value_tiers: tuple[str, ...] = ("vip",)
    priority_within: str = "24h"
    types: TaskRules

    @field_validator("priority_within")
    @classmethod
    def _within(cls, value: str) -> str:
        return _checked_target(value, working_days=False)

    @property
    def priority_delta(self) -> timedelta:
        return timedelta(minutes=parse_target(self.priority_within).minutes)

    def high_value(self, tier: str | None) -> bool:
        return tier in self.high_value_tiers


def load_callback_rules(path: Path | None = None) -> CallbackRules:
    source = path or RULES_FILE
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise CallbackRulesError(f"{source}: {error}") from error
    try:
        return CallbackRules.model_validate(data)
    except ValidationError as error:
        reasons = []
        for problem in error.errors(include_url=False):
            where = ".".join(str(part) for part in problem["loc"]) or "(top level)"
            reasons.append(f"{where}: {problem['msg'].removeprefix('Value error, ')}")
        raise CallbackRulesError(f"{source}: {'; '.join(reasons)}") from error


def task_id(kind: TaskType, key: str) -> uuid.UUID:
    """The same task always gets the same id: repeats become no-ops."""
    return uuid.uuid5(_NAMESPACE, f"{kind.value}:{key}")


def render(script: str, values: dict[str, str]) -> str:
    """Fill the known placeholders; never str.format (a stray brace must not fail)."""
    for name, value in values.items():
        script = script.replace("{" + name + "}", value)
    return script


def day_closes(calendar: BusinessCalendar, day: date) -> datetime:
    return datetime.combine(day, DAY_CLOSES, calendar.zone)


# --- Tables ---------------------------------------------------------------------------------

SCHEMA = [
    *kafka_positions.SCHEMA,
    *deadletters.SCHEMA,
    # What the rules need to know of each case, kept from its events (no personal data).
    """
    CREATE TABLE IF NOT EXISTS callback_cases (
        feedback_id uuid PRIMARY KEY,
        feedback_number text NOT NULL,
        customer_ref text NOT NULL,
        customer_tier text NOT NULL,
        feedback_type text,
        department text,
        product_model text,
        purchase_date date,
        last_version integer NOT NULL,
        last_event_at timestamptz NOT NULL,
        closed_at timestamptz,
        archived_at timestamptz
    )
    """,
    "CREATE INDEX IF NOT EXISTS callback_cases_closed ON callback_cases (closed_at)",
    "CREATE INDEX IF NOT EXISTS callback_cases_archived ON callback_cases (archived_at)",
    # The last case event per customer, for the churn sweep.
    """
    CREATE TABLE IF NOT EXISTS callback_customers (
        customer_ref text PRIMARY KEY,
        customer_tier text NOT NULL,
        department text,
        last_feedback_number text,
        last_event_at timestamptz NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS callback_customers_last ON callback_customers (last_event_at)",
    """
    CREATE TABLE IF NOT EXISTS callback_tasks (
        id uuid PRIMARY KEY,
        type text NOT NULL,
        feedback_id uuid,
        feedback_number text,
        customer_ref text NOT NULL,
        department text,
        goal text NOT NULL,
        script text NOT NULL,
        priority boolean NOT NULL DEFAULT false,
        window_from timestamptz,
        due_at timestamptz NOT NULL,
        state text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'done', 'rescheduled')),
        attempts integer NOT NULL DEFAULT 0,
        outcome text,
        satisfaction smallint,
        new_feedback_number text,
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL,
        done_at timestamptz
    )
    """,
    "CREATE INDEX IF NOT EXISTS callback_tasks_worklist ON callback_tasks (state, due_at)",
    # A callback is a promise too: overdue ones are escalated (supervisor, then head), and a
    # customer is told each new appointment (services/notifications/callback_watch.py).
    """
    ALTER TABLE callback_tasks
        ADD COLUMN IF NOT EXISTS overdue_level smallint NOT NULL DEFAULT 0,
        ADD COLUMN IF NOT EXISTS overdue_at timestamptz,
        ADD COLUMN IF NOT EXISTS appointments_told integer NOT NULL DEFAULT 0,
        ADD COLUMN IF NOT EXISTS head_due_at timestamptz,
        ADD COLUMN IF NOT EXISTS appointment_told_for timestamptz
    """,
    "CREATE INDEX IF NOT EXISTS callback_tasks_feedback ON callback_tasks (feedback_id)",
    """
    CREATE TABLE IF NOT EXISTS callback_attempts (
        id bigserial PRIMARY KEY,
        task_id uuid NOT NULL REFERENCES callback_tasks (id) ON DELETE CASCADE,
        at timestamptz NOT NULL,
        by text NOT NULL,
        reached boolean NOT NULL,
        outcome text NOT NULL,
        customer_words text,
        expectation text,
        emotion text,
        satisfaction smallint,
        reschedule_to timestamptz,
        new_feedback_number text
    )
    """,
    "CREATE INDEX IF NOT EXISTS callback_attempts_task ON callback_attempts (task_id, at)",
]

_INSERT_TASK = """
    INSERT INTO callback_tasks (id, type, feedback_id, feedback_number, customer_ref,
        department, goal, script, priority, window_from, due_at, created_at, updated_at)
    VALUES (%(id)s, %(type)s, %(feedback_id)s, %(feedback_number)s, %(customer_ref)s,
        %(department)s, %(goal)s, %(script)s, %(priority)s, %(window_from)s, %(due_at)s,
        %(created_at)s, %(created_at)s)
"""


def _task(
    rules: CallbackRules,
    kind: TaskType,
    key: str,
    *,
    customer_ref: str,
    due_at: datetime,
    created_at: datetime,
    feedback_id: uuid.UUID | None = None,
    feedback_number: str | None = None,
    department: str | None = None,
    priority: bool = False,
    window_from: datetime | None = None,
    values: dict[str, str] | None = None,
) -> dict[str, Any]:
    rule = rules.types.of(kind)
    filled = {"customer_ref": customer_ref, "feedback_number": feedback_number or ""}
    filled.update(values or {})
    return {
        "id": task_id(kind, key),
        "type": kind.value,
        "feedback_id": feedback_id,
        "feedback_number": feedback_number,
        "customer_ref": customer_ref,
        "department": department,
        "goal": rule.goal,
        "script": render(rule.script, filled),
        "priority": priority,
        "window_from": window_from,
        "due_at": due_at,
        "created_at": created_at,
    }


# --- The consumer of feedback.events ----------------------------------------------------------

_CASE_COLUMNS = (
    "feedback_id", "feedback_number", "customer_ref", "customer_tier", "feedback_type",
    "department", "product_model", "purchase_date", "last_version", "last_event_at",
    "closed_at", "archived_at",
)  # fmt: skip
_CASE_TYPES = (
    "uuid", "text", "text", "text", "text", "text", "text", "date", "integer", "timestamptz",
    "timestamptz", "timestamptz",
)  # fmt: skip
_TASK_COLUMNS = (
    "id", "type", "feedback_id", "feedback_number", "customer_ref", "department", "goal",
    "script", "priority", "window_from", "due_at", "created_at", "updated_at",
)  # fmt: skip
_TASK_TYPES = (
    "uuid", "text", "uuid", "text", "text", "text", "text", "text", "boolean", "timestamptz",
    "timestamptz", "timestamptz", "timestamptz",
)  # fmt: skip


def _unnest(columns: tuple[str, ...], types: tuple[str, ...]) -> str:
    arrays = ", ".join(f"%s::{t}[]" for t in types)
    return f"SELECT * FROM unnest({arrays}) AS v({', '.join(columns)})"


def _arrays(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> list[list[Any]]:
    return [[row[c] for row in rows] for c in columns]


_UPSERT_CASES = f"""
    INSERT INTO callback_cases ({", ".join(_CASE_COLUMNS)}) {_unnest(_CASE_COLUMNS, _CASE_TYPES)}
    ON CONFLICT (feedback_id) DO UPDATE SET feedback_type = EXCLUDED.feedback_type,
        department = EXCLUDED.department, last_version = EXCLUDED.last_version,
        last_event_at = EXCLUDED.last_event_at, closed_at = EXCLUDED.closed_at,
        archived_at = EXCLUDED.archived_at
"""
# The churn sweep's "last case event" per customer: an older event never overwrites it.
_TOUCH_CUSTOMERS = """
    INSERT INTO callback_customers (customer_ref, customer_tier, department,
        last_feedback_number, last_event_at)
    SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[])
    ON CONFLICT (customer_ref) DO UPDATE SET
        customer_tier = EXCLUDED.customer_tier,
        department = coalesce(EXCLUDED.department, callback_customers.department),
        last_feedback_number = EXCLUDED.last_feedback_number,
        last_event_at = EXCLUDED.last_event_at
    WHERE callback_customers.last_event_at <= EXCLUDED.last_event_at
"""
_NEW_TASKS = f"""
    INSERT INTO callback_tasks ({", ".join(_TASK_COLUMNS)}) {_unnest(_TASK_COLUMNS, _TASK_TYPES)}
"""
# Tasks that follow their case to its new department.
_MOVE_TASKS = """
    UPDATE callback_tasks AS t SET department = v.department
    FROM unnest(%s::uuid[], %s::text[]) AS v(feedback_id, department)
    WHERE t.feedback_id = v.feedback_id AND t.state <> 'done'
"""


@dataclass(slots=True)
class _Customer:
    """A customer's case event as the churn sweep keeps it."""

    tier: str
    department: str | None
    number: str
    at: datetime


class _Slice:
    """A slice of case events folded in memory: what the tables become, written back with
    a few statements whatever the slice's length."""

    def __init__(self, cases: dict[uuid.UUID, dict[str, Any]]) -> None:
        self.cases = cases
        self.changed: set[uuid.UUID] = set()
        # Per customer, the slice's case events in order (the churn sweep's input).
        self.touches: dict[str, list[_Customer]] = {}
        self.new_tasks: dict[uuid.UUID, dict[str, Any]] = {}
        self.due_again: dict[uuid.UUID, dict[str, Any]] = {}
        self.moved: set[uuid.UUID] = set()

    def touch(self, case: dict[str, Any], at: datetime) -> None:
        self.touches.setdefault(case["customer_ref"], []).append(
            _Customer(case["customer_tier"], case["department"], case["feedback_number"], at)
        )

    async def last_touches(self, conn: Any) -> list[tuple[str, _Customer]]:
        """Each customer's row as the upsert would leave it one event at a time, from the
        stored row: an event older than the row's last is passed over (its department
        too), and a department stays known once known."""
        refs = sorted(self.touches)
        cursor = await conn.execute(
            "SELECT customer_ref, last_event_at, department FROM callback_customers "
            "WHERE customer_ref = ANY(%s)",
            (refs,),
        )
        stored = {ref: (at, department) for ref, at, department in await cursor.fetchall()}
        out = []
        for ref in refs:
            floor, department = stored.get(ref, (None, None))
            last: _Customer | None = None
            for touch in self.touches[ref]:
                if floor is not None and touch.at < floor:
                    continue
                department = touch.department or department
                last = _Customer(touch.tier, department, touch.number, touch.at)
                floor = touch.at
            if last is not None:
                out.append((ref, last))
        return out

    def registered(
        self, event: CaseRegistered, rules: CallbackRules, calendar: BusinessCalendar
    ) -> None:
        if event.feedback_id in self.cases:
            return  # relayed twice
        r = event.registration
        case = {
            "feedback_id": event.feedback_id,
            "feedback_number": r.feedback_number,
            "customer_ref": r.customer_ref,
            "customer_tier": r.customer_tier,
            "feedback_type": r.stated_type.value if r.stated_type else None,
            "department": event.department,
            "product_model": r.product_model,
            "purchase_date": r.purchase_date,
            "last_version": event.version,
            "last_event_at": event.occurred_at,
            "closed_at": None,
            "archived_at": None,
        }
        self.cases[event.feedback_id] = case
        self.changed.add(event.feedback_id)
        self.touch(case, event.occurred_at)
        for task in _purchase_tasks(event, rules, calendar):
            self.new_tasks.setdefault(task["id"], {**task, "updated_at": task["created_at"]})

    def followed(self, event: CaseEvent, rules: CallbackRules, calendar: BusinessCalendar) -> None:
        case = self.cases.get(event.feedback_id)
        if case is None or case["last_version"] >= event.version:
            return  # seen already, or a case registered before this consumer existed
        case["last_version"] = event.version
        case["last_event_at"] = event.occurred_at
        case["department"] = event.department or case["department"]
        self.changed.add(event.feedback_id)
        self.touch(case, event.occurred_at)
        match event:
            case FeedbackClassified(classification=c):
                case["feedback_type"] = c.type.value
            case FeedbackRouted():
                self.moved.add(event.feedback_id)
            case CaseResolved():
                task = _post_complaint_task(event, case, rules, calendar)
                if task is not None:
                    # Due again as of now; created when first due (the row's, if stored).
                    earlier = self.due_again.get(task["id"])
                    created = earlier["created_at"] if earlier else task["created_at"]
                    self.due_again[task["id"]] = {
                        **task,
                        "created_at": created,
                        "updated_at": task["created_at"],
                    }
            case CaseClosed():
                case["closed_at"] = event.occurred_at
            case CaseReopened():
                case["closed_at"] = None
            case CaseArchived():
                case["archived_at"] = event.occurred_at

    async def write(self, conn: Any) -> None:
        if self.changed:
            rows = [self.cases[i] for i in sorted(self.changed)]
            await conn.execute(_UPSERT_CASES, _arrays(rows, _CASE_COLUMNS))
        touched = await self.last_touches(conn) if self.touches else []
        if touched:
            await conn.execute(
                _TOUCH_CUSTOMERS,
                (
                    [ref for ref, _ in touched],
                    [c.tier for _, c in touched],
                    [c.department for _, c in touched],
                    [c.number for _, c in touched],
                    [c.at for _, c in touched],
                ),
            )
        if self.new_tasks:
            tasks = list(self.new_tasks.values())
            await conn.execute(
                _NEW_TASKS + " ON CONFLICT (id) DO NOTHING", _arrays(tasks, _TASK_COLUMNS)
            )
        if self.due_again:
            # Resolved again after a reopening: the same task is due again (events are
            # applied once per version, so this happens once per resolution).
            tasks = list(self.due_again.values())
            await conn.execute(
                _NEW_TASKS
                + """ ON CONFLICT (id) DO UPDATE SET due_at = EXCLUDED.due_at,
                    priority = EXCLUDED.priority, window_from = EXCLUDED.window_from,
                    department = EXCLUDED.department, state = 'open', done_at = NULL,
                    updated_at = EXCLUDED.updated_at""",
                _arrays(tasks, _TASK_COLUMNS),
            )
        if self.moved:
            moved = sorted(self.moved)
            await conn.execute(_MOVE_TASKS, (moved, [self.cases[i]["department"] for i in moved]))


def _purchase_tasks(
    event: CaseRegistered, rules: CallbackRules, calendar: BusinessCalendar
) -> list[dict[str, Any]]:
    """The after-sales and product-in-use callbacks a registration with a purchase date gets."""
    r = event.registration
    if r.purchase_date is None:
        return []
    common: dict[str, Any] = {
        "customer_ref": r.customer_ref,
        "created_at": event.occurred_at,
        "feedback_id": event.feedback_id,
        "feedback_number": r.feedback_number,
        "department": event.department,
        "priority": rules.high_value(r.customer_tier),
    }
    values = {"purchase_date": r.purchase_date.isoformat(), "product_model": r.product_model or ""}
    tasks = []
    sales = rules.types.after_sales
    due = day_closes(calendar, r.purchase_date + timedelta(days=sales.due_days))
    # A purchase whose window has passed gets no after-sales callback now.
    if due > event.occurred_at:
        window = datetime.combine(
            r.purchase_date + timedelta(days=sales.window_from_days), time(0), calendar.zone
        )
        tasks.append(
            _task(rules, TaskType.after_sales, str(event.feedback_id), due_at=due,
                  window_from=window, values=values, **common)
        )  # fmt: skip
    in_use = rules.types.product_in_use
    model = (r.product_model or "").casefold()
    if model and any(k.casefold() in model for k in in_use.high_value_models):
        start = r.purchase_date + timedelta(days=in_use.after_days)
        due = day_closes(calendar, start + timedelta(days=in_use.window_days))
        if due > event.occurred_at:
            tasks.append(
                _task(rules, TaskType.product_in_use, str(event.feedback_id), due_at=due,
                      window_from=datetime.combine(start, time(0), calendar.zone),
                      values=values, **common)
            )  # fmt: skip
    return tasks


def _post_complaint_task(
    event: CaseResolved, case: dict[str, Any], rules: CallbackRules, calendar: BusinessCalendar
) -> dict[str, Any] | None:
    if case["feedback_type"] != FeedbackType.complaint.value:
        return None
    rule = rules.types.post_complaint
    start = event.occurred_at
    due = calendar.due(start, parse_target(rule.due), "business")
    first = event.result != "resolved" or rules.high_value(case["customer_tier"])
    if first:
        due = min(due, start + rules.priority_delta)
    return _task(
        rules,
        TaskType.post_complaint,
        str(event.feedback_id),
        customer_ref=case["customer_ref"],
        due_at=due,
        created_at=start,
        feedback_id=event.feedback_id,
        feedback_number=event.feedback_number,
        department=case["department"],
        priority=first,
        window_from=start,
    )


# What this consumer follows: every case event but the clocks' (see apply_events).
FOLLOWED = type_names(*CASE_EVENTS) - type_names(*CLOCK_EVENTS)


async def apply_events(
    conn: Any, events: list[CaseEvent], rules: CallbackRules, calendar: BusinessCalendar
) -> None:
    """Apply case events once, in order; raises `deadletters.Unapplicable` for one it must
    not store (the caller then applies them one at a time to find it)."""
    followed = []
    for event in events:
        problem = deadletters.unstorable_time(event)
        if problem:
            raise deadletters.Unapplicable(f"{type(event).__name__}: {problem}")
        # No callback depends on a deadline, and the system's timing is not the customer's
        # interaction (the churn sweep's "silent since"): clock events are passed over.
        if not isinstance(event, CLOCK_EVENTS):
            followed.append(event)
    if not followed:
        return
    ids = sorted({e.feedback_id for e in followed})
    cursor = await conn.execute(
        f"SELECT {', '.join(_CASE_COLUMNS)} FROM callback_cases WHERE feedback_id = ANY(%s)",
        (ids,),
    )
    folded = _Slice(
        {row[0]: dict(zip(_CASE_COLUMNS, row, strict=True)) for row in await cursor.fetchall()}
    )
    for event in followed:
        if isinstance(event, CaseRegistered):
            folded.registered(event, rules, calendar)
        else:
            folded.followed(event, rules, calendar)
    await folded.write(conn)


async def apply_event(
    conn: Any, event: CaseEvent, rules: CallbackRules, calendar: BusinessCalendar
) -> None:
    """Apply one case event once (see `apply_events`)."""
    await apply_events(conn, [event], rules, calendar)


def consumer(rules: CallbackRules, calendar: BusinessCalendar) -> kafka_positions.SliceConsumer:
    """The callbacks' consumer of `feedback.events`, read in the projections service's
    subscription (one fetch and one transaction per slice with the read models)."""

    def readable(records: list[Any]) -> list[CaseEvent]:
        return [
            case_event_adapter.validate_json(r.value or b"")
            for r in records
            if concerns(r, FOLLOWED)
        ]

    async def apply(conn: Any, record: Any) -> None:
        await apply_events(conn, readable([record]), rules, calendar)

    async def apply_all(conn: Any, records: list[Any]) -> None:
        await apply_events(conn, readable(records), rules, calendar)

    return kafka_positions.SliceConsumer(CONSUMER, apply, apply_all)


# --- Sweeps: churn and the quarterly survey ---------------------------------------------------


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def quarter_start(calendar: BusinessCalendar, moment: datetime) -> datetime:
    local = moment.astimezone(calendar.zone)
    return datetime(local.year, 3 * ((local.month - 1) // 3) + 1, 1, tzinfo=calendar.zone)


def previous_quarter(calendar: BusinessCalendar, now: datetime) -> tuple[datetime, datetime, str]:
    """(start, end, label) of the quarter before the one `now` is in, local time."""
    end = quarter_start(calendar, now)
    start = quarter_start(calendar, end - timedelta(days=1))
    return start, end, f"{start.year}Q{(start.month - 1) // 3 + 1}"


async def sweep(
    pool: AsyncConnectionPool, rules: CallbackRules, calendar: BusinessCalendar, now: datetime
) -> dict[str, int]:
    """One pass of both sweeps at `now`; returns how many tasks each created."""
    churn = rules.types.churn_warning
    survey = rules.types.quarterly_survey
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            "SELECT customer_ref, customer_tier, department, last_feedback_number, last_event_at "
            "FROM callback_customers WHERE last_event_at < %s",
            (now - timedelta(days=churn.after_days),),
        )
        silent = await cursor.fetchall()
        start, end, label = previous_quarter(calendar, now)
        await cursor.execute(
            "SELECT DISTINCT ON (customer_ref) customer_ref, customer_tier, department, "
            "feedback_number FROM callback_cases WHERE closed_at >= %s AND closed_at < %s "
            "ORDER BY customer_ref, closed_at DESC",
            (start, end),
        )
        closed = await cursor.fetchall()
    normal_due = calendar.due(now, parse_target(churn.due), "business")
    tasks: list[dict[str, Any]] = []
    for row in silent:
        first = rules.high_value(row["customer_tier"])
        # One warning per silence: a new interaction and a new silence warn again.
        since = row["last_event_at"].astimezone(UTC).isoformat()
        tasks.append(
            _task(rules, TaskType.churn_warning, f"{row['customer_ref']}:{since}",
                  customer_ref=row["customer_ref"], created_at=now,
                  due_at=min(normal_due, now + rules.priority_delta) if first else normal_due,
                  feedback_number=row["last_feedback_number"], department=row["department"],
                  priority=first)
        )  # fmt: skip
    survey_due = day_closes(calendar, end.date() + timedelta(days=survey.due_days))
    for row in closed:
        tasks.append(
            _task(rules, TaskType.quarterly_survey, f"{row['customer_ref']}:{label}",
                  customer_ref=row["customer_ref"], created_at=now,
                  due_at=max(survey_due, now), feedback_number=row["feedback_number"],
                  department=row["department"], window_from=end,
                  priority=rules.high_value(row["customer_tier"]))
        )  # fmt: skip
    created = {TaskType.churn_warning.value: 0, TaskType.quarterly_survey.value: 0}
    if not tasks:
        return created
    async with pool.connection() as conn, conn.transaction():
        for task in tasks:
            inserted = await conn.execute(
                _INSERT_TASK + " ON CONFLICT (id) DO NOTHING RETURNING id", task
            )
            if await inserted.fetchone() is not None:
                created[task["type"]] += 1
    return created


async def sweep_forever(
    pool: AsyncConnectionPool,
    rules: CallbackRules,
    calendar: BusinessCalendar,
    clock: Clock | None = None,
    interval_s: float = 3600.0,
) -> None:
    """Sweep now and then every `interval_s` (hourly: a day's new churn risks are found
    the same day; ids make the repeats no-ops)."""
    clock = clock or SystemClock()
    while True:
        try:
            created = await sweep(pool, rules, calendar, clock.now())
            if any(created.values()):
                log.info("callback sweep created %s", created)
        except Exception:
            log.exception("the callback sweep failed; retrying")
        await asyncio.sleep(interval_s)


# --- Retention --------------------------------------------------------------------------------

PURGED_TABLES = (
    "registrations",
    "case_clocks",
    "case_search",
    "callback_cases",
    "callback_tasks",
    "callback_attempts",
)


def purge(
    database_url: str, older_than_days: int, now: datetime, *, dry_run: bool
) -> dict[str, int]:
    """Remove from the read model and the callback tables what belongs to cases archived
    more than `older_than_days` ago; returns the rows per table (counted only on a dry run).

    A case is past retention only when every table that knows it agrees: none may say it
    was archived later (or is not archived), so nothing younger is ever removed. The event
    store keeps its events."""
    if older_than_days < MIN_RETENTION_DAYS:
        raise ValueError(f"retention is at least {MIN_RETENTION_DAYS} days, not {older_than_days}")
    cutoff = now - timedelta(days=older_than_days)
    counts = dict.fromkeys(PURGED_TABLES, 0)
    with psycopg.connect(database_url) as conn, conn.transaction():
        present = {
            name
            for name in ("registrations", "callback_cases")
            if _exists(conn, name)
        }  # fmt: skip
        if not present:
            return counts
        conn.execute("CREATE TEMPORARY TABLE purged (feedback_id uuid PRIMARY KEY) ON COMMIT DROP")
        if "registrations" in present:
            younger_here = (
                "EXISTS (SELECT 1 FROM callback_cases c WHERE c.feedback_id = r.feedback_id "
                "AND (c.archived_at IS NULL OR c.archived_at >= %(cutoff)s))"
                if "callback_cases" in present
                else "FALSE"
            )
            conn.execute(
                "INSERT INTO purged SELECT feedback_id FROM registrations r "
                "WHERE status = 'archived' AND updated_at < %(cutoff)s AND NOT " + younger_here,
                {"cutoff": cutoff},
            )
        if "callback_cases" in present:
            younger_there = (
                "EXISTS (SELECT 1 FROM registrations r WHERE r.feedback_id = c.feedback_id "
                "AND (r.status <> 'archived' OR r.updated_at >= %(cutoff)s))"
                if "registrations" in present
                else "FALSE"
            )
            conn.execute(
                "INSERT INTO purged SELECT feedback_id FROM callback_cases c "
                "WHERE archived_at < %(cutoff)s AND NOT " + younger_there
                + " ON CONFLICT DO NOTHING",
                {"cutoff": cutoff},
            )  # fmt: skip
        statements = {
            "callback_attempts": "callback_attempts WHERE task_id IN (SELECT id FROM "
            "callback_tasks WHERE feedback_id IN (SELECT feedback_id FROM purged))",
            "callback_tasks": "callback_tasks WHERE feedback_id IN (SELECT feedback_id FROM purged)",
            "callback_cases": "callback_cases WHERE feedback_id IN (SELECT feedback_id FROM purged)",
            "case_clocks": "case_clocks WHERE feedback_id IN (SELECT feedback_id FROM purged)",
            "case_search": "case_search WHERE feedback_id IN (SELECT feedback_id FROM purged)",
            "registrations": "registrations WHERE feedback_id IN (SELECT feedback_id FROM purged)",
        }
        for table, where in statements.items():
            read_model = table in ("registrations", "case_clocks", "case_search")
            if read_model and "registrations" not in present:
                continue
            if not read_model and "callback_cases" not in present:
                continue
            verb = "SELECT count(*) FROM " if dry_run else "WITH gone AS (DELETE FROM "
            query = (
                verb + where
                if dry_run
                else verb + where + " RETURNING 1) SELECT count(*) FROM gone"
            )
            row = conn.execute(query).fetchone()
            counts[table] = int(row[0]) if row else 0
    return counts


def _exists(conn: psycopg.Connection[Any], table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
    return row is not None and row[0] is not None
