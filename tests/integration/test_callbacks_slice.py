"""The callbacks consumer folds a partition slice in memory and writes it back with a few
statements (issue #13): on real PostgreSQL, whatever way a run of case events is cut into
slices (one event each, as it was applied before, or all at once), repeats included, the
tables end the same; and a slice costs a constant number of statements, not one or more
per event."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from contracts.events import (
    CaseArchived,
    CaseClosed,
    CaseEvent,
    CaseRegistered,
    CaseReopened,
    CaseResolved,
    Classification,
    ClockStarted,
    FeedbackClassified,
    FeedbackRouted,
    OwnerAssigned,
    Registration,
)
from deploy.postgres_server import LocalPostgres, create_database
from services.common.database import apply_schema
from services.handling import callbacks
from services.sla.calendar import load_calendars

pytestmark = pytest.mark.integration
CALENDAR = load_calendars().get(None)
RULES = callbacks.load_callback_rules()
TABLES = {
    "callback_cases": "feedback_id",
    "callback_customers": "customer_ref",
    "callback_tasks": "id",
}


def _case_events(n: int, customer: str, start: datetime, department: str) -> list[CaseEvent]:
    """One case's life: registered with a purchase of a high-value model, classified a
    complaint, routed, resolved in part, reopened, routed elsewhere, resolved, closed,
    archived; clock events in between (the consumer passes over them)."""
    case_id = uuid.uuid4()
    number = f"F20261128-{n:04d}"
    at = iter(start + timedelta(minutes=7 * i) for i in range(100))
    version = iter(range(1, 100))

    def envelope(dept: str | None) -> dict[str, Any]:
        moment = next(at)
        return {
            "feedback_id": case_id,
            "feedback_number": number,
            "version": next(version),
            "position": 1,
            "occurred_at": moment,
            "department": dept,
        }

    registration = Registration(
        feedback_number=number,
        received_at=start,
        registered_at=start,
        channel="web_form",
        customer_ref=customer,
        customer_tier="vip" if n % 2 else "normal",
        product_model="旗舰扫地机 Pro",
        purchase_date=start.date() - timedelta(days=3),
        description="机器用了三天就坏了，要求退货",
        receiver="system",
    )
    classification = Classification(
        type="complaint",
        category="product_quality",
        subcategory="malfunction",
        priority="high",
        department=department,
        emotion="angry",
        confidence=0.9,
    )
    clock = {"clock": "resolution", "target": "3wd", "time": "business"}
    due = {"started_at": start, "due_at": start + timedelta(days=3), "warn_at": start}
    other = "logistics" if department != "logistics" else "billing"
    return [
        CaseRegistered(**envelope(None), registration=registration),
        FeedbackClassified(**envelope(None), classification=classification, by="rules"),
        FeedbackRouted(**envelope(department), reason="rules"),
        OwnerAssigned(**envelope(department), owner="agent.one", by="rules", reason="load"),
        ClockStarted(**envelope(department), **clock, **due),
        CaseResolved(**envelope(department), result="partially_resolved", summary="s", by="a"),
        CaseReopened(
            **envelope(department), reason="r", by="a", previous_priority="high", priority="high"
        ),
        FeedbackRouted(**envelope(other), previous_department=department, reason="moved"),
        CaseResolved(**envelope(other), result="resolved", summary="done", by="b"),
        CaseClosed(**envelope(other), by="b"),
        CaseArchived(**envelope(other), by="system"),
    ]


def _events() -> list[CaseEvent]:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    lives = [
        _case_events(1, "客户-2026-0001", start, "after_sales"),
        _case_events(2, "客户-2026-0001", start + timedelta(minutes=3), "billing"),
        _case_events(3, "客户-2026-0002", start + timedelta(minutes=5), "after_sales"),
    ]
    # Interleaved as a partition carries them: each case's events in order.
    rng = random.Random(7)
    merged: list[CaseEvent] = []
    cursors = [0] * len(lives)
    while any(c < len(life) for c, life in zip(cursors, lives, strict=True)):
        pick = rng.choice([i for i, life in enumerate(lives) if cursors[i] < len(life)])
        merged.append(lives[pick][cursors[pick]])
        cursors[pick] += 1
    # Relayed twice: a stretch repeated (consumers drop repeats by case version).
    return merged + merged[5:14]


class CountingConnection:
    """The consumer's connection, counting the statements it sends."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn
        self.statements = 0

    async def execute(self, query: Any, params: Any = None) -> Any:
        self.statements += 1
        return await self.conn.execute(query, params)


async def _apply_in_slices(url: str, events: list[CaseEvent], sizes: list[int]) -> list[int]:
    """Apply `events` cut into consecutive slices of `sizes`; statements per slice."""
    counts = []
    async with await psycopg.AsyncConnection.connect(url) as conn:
        index = 0
        for size in sizes:
            counting = CountingConnection(conn)
            async with conn.transaction():
                await callbacks.apply_events(
                    counting, events[index : index + size], RULES, CALENDAR
                )
            counts.append(counting.statements)
            index += size
    return counts


def _tables(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(url) as conn:
        return {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY {key}").fetchall()
            for table, key in TABLES.items()
        }


def _fresh(postgres: LocalPostgres) -> str:
    url = create_database(postgres.url, f"t_{uuid.uuid4().hex[:12]}")
    apply_schema(url, callbacks.SCHEMA)
    return url


def test_any_cut_of_a_run_into_slices_ends_the_same(postgres: LocalPostgres) -> None:
    events = _events()
    one_by_one = _fresh(postgres)
    asyncio.run(_apply_in_slices(one_by_one, events, [1] * len(events)))
    expected = _tables(one_by_one)
    # What the run must have made (so that "the same" is not "the same nothing").
    assert len(expected["callback_cases"]) == 3
    assert len(expected["callback_customers"]) == 2
    tasks = expected["callback_tasks"]
    kinds = sorted(row[1] for row in tasks)
    assert kinds == ["after_sales"] * 3 + ["post_complaint"] * 3 + ["product_in_use"] * 3, kinds
    rng = random.Random(11)
    for attempt in range(4):
        sizes: list[int] = []
        left = len(events)
        while left:
            size = len(events) if attempt == 0 else min(left, rng.randint(1, 12))
            size = min(size, left)
            sizes.append(size)
            left -= size
        url = _fresh(postgres)
        asyncio.run(_apply_in_slices(url, events, sizes))
        assert _tables(url) == expected, f"slices {sizes}"


def test_a_slice_costs_a_few_statements_not_a_few_per_event(postgres: LocalPostgres) -> None:
    events = _events()
    url = _fresh(postgres)
    [statements] = asyncio.run(_apply_in_slices(url, events, [len(events)]))
    # Read the cases and the customers; write cases, customers, new tasks, tasks due again,
    # moved tasks.
    assert statements <= 7, f"{statements} statements for a slice of {len(events)} events"
    # A repeat of the whole slice (redelivered) reads and writes nothing new.
    before = _tables(url)
    asyncio.run(_apply_in_slices(url, events, [len(events)]))
    assert _tables(url) == before


def test_an_older_event_never_sets_the_customers_department(postgres: LocalPostgres) -> None:
    """The churn sweep's row: an event older than the stored last one changes nothing, its
    department neither, even when a newer event without a department follows it in the slice
    (found in review: the fold carried the older event's department)."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    customer = "客户-2026-0009"
    [registered_first, *_] = _case_events(21, customer, start, "after_sales")
    [registered_second, *_] = _case_events(22, customer, start, "after_sales")
    older = FeedbackRouted(
        feedback_id=registered_first.feedback_id,
        feedback_number=registered_first.feedback_number,
        version=2,
        position=1,
        occurred_at=start + timedelta(minutes=10),
        department="after_sales",
        reason="rules",
    )
    newer = registered_second.model_copy(update={"occurred_at": start + timedelta(minutes=12)})
    ends = []
    for sizes in ([2], [1, 1]):
        url = _fresh(postgres)
        asyncio.run(_apply_in_slices(url, [registered_first], [1]))
        with psycopg.connect(url) as conn:  # another partition's case, minute 11, billing
            conn.execute(
                "UPDATE callback_customers SET department = 'billing', last_event_at = %s",
                (start + timedelta(minutes=11),),
            )
        asyncio.run(_apply_in_slices(url, [older, newer], sizes))
        with psycopg.connect(url) as conn:
            ends.append(
                conn.execute(
                    "SELECT department, last_feedback_number, last_event_at FROM callback_customers"
                ).fetchall()
            )
    expected = [("billing", newer.feedback_number, start + timedelta(minutes=12))]
    assert ends == [expected, expected]
