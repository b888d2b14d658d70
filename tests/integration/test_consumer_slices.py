"""The notifications consumer and the sla timers fold a partition slice in memory and write
it back with a few statements, whatever its size, on the real PostgreSQL: the statements a
slice costs are counted at the connection, the result is the one applying the same records
one at a time gives (the isolation path), a redelivered slice changes nothing, and a poison
record in the slice becomes a dead letter while the rest is applied."""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, LiteralString

import psycopg
import pytest
from psycopg import AsyncConnection, AsyncCursor
from psycopg_pool import AsyncConnectionPool

from contracts.events import (
    CaseEvent,
    CaseRegistered,
    Classification,
    ClockBreached,
    ClockMet,
    ClockPaused,
    ClockRecomputed,
    ClockResumed,
    ClockStarted,
    ClockWarned,
    DeadLetter,
    EscalationRaised,
    FeedbackClassified,
    FeedbackRouted,
    NoteAdded,
    OwnerAssigned,
    Registration,
)
from deploy.postgres_server import LocalPostgres, create_database
from services.common import deadletters, kafka_positions
from services.common.bus import EVENT_TYPE_HEADER
from services.common.database import apply_schema
from services.common.settings import Settings
from services.notifications import store
from services.notifications.consumer import CONSUMER, Planner
from services.notifications.directory import StaffDirectory
from services.sla import service as sla_service
from services.sla.consumer import timer_appliers
from services.sla.service import TIMERS

pytestmark = pytest.mark.integration

TOPIC = "feedback.events"
CASES = 20
# The consumer's own statements one slice may cost, whatever its size (the position's
# are counted apart): notifications read the facts, patch waiting acknowledgements, insert
# the rows, write the facts; the timers upsert and delete.
MOST_NOTIFICATION_STATEMENTS = 4
MOST_TIMER_STATEMENTS = 2


@dataclass(frozen=True)
class Record:
    """What the consumers read of an aiokafka ConsumerRecord."""

    topic: str
    partition: int
    offset: int
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    key: bytes | None = None
    timestamp: int = 0


def records_of(events: Sequence[CaseEvent | bytes]) -> list[Record]:
    """One partition's records, in this order (bytes: a record as it stands)."""
    found = []
    for offset, item in enumerate(events):
        if isinstance(item, bytes):
            found.append(Record(TOPIC, 0, offset, item, ()))
            continue
        header = ((EVENT_TYPE_HEADER, type(item).__name__.encode()),)
        found.append(Record(TOPIC, 0, offset, item.model_dump_json().encode(), header))
    return found


class CountingCursor(AsyncCursor[Any]):
    """Counts every statement sent through a cursor (`conn.execute` takes one too): the
    consumer's own, and those keeping its Kafka position (`kafka_positions`, apart)."""

    sent = 0
    positions = 0

    @classmethod
    def count(cls, query: Any, times: int = 1) -> None:
        if "consumer_positions" in str(query):
            cls.positions += times
        else:
            cls.sent += times

    async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        CountingCursor.count(query)
        return await super().execute(query, params, **kwargs)

    async def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> None:
        params_seq = list(params_seq)
        CountingCursor.count(query, len(params_seq))  # the server runs it once per row
        await super().executemany(query, params_seq, **kwargs)


async def counting(conn: AsyncConnection[Any]) -> None:
    conn.cursor_factory = CountingCursor


@asynccontextmanager
async def database(postgres: LocalPostgres) -> AsyncIterator[tuple[str, AsyncConnectionPool]]:
    url = create_database(postgres.url, f"t_{uuid.uuid4().hex[:12]}")
    apply_schema(url, [*store.SCHEMA, *sla_service.SCHEMA])
    deadletters.configure_sealing(settings_for(url).pii_key_bytes)  # as a platform starting
    async with AsyncConnectionPool(url, min_size=1, max_size=2, configure=counting) as pool:
        yield url, pool


def settings_for(url: str) -> Settings:
    return Settings(
        database_url=url,
        kafka_bootstrap_servers="127.0.0.1:9",  # never reached: no bus in these tests
        pii_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        auth_token_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        notify_ack_hold_s=30.0,
    )


letters: list[DeadLetter] = []


async def no_bus(letter: DeadLetter) -> None:
    letters.append(letter)


def snapshot(url: str, query: LiteralString) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


# Everything a row holds but the time it was written (a replay writes at another time).
NOTIFICATIONS = (
    "SELECT id, feedback_id, feedback_number, event_version, event_type, audience, recipient, "
    "channel, template, language, payload, state, attempts, "
    # Held, or due at once (released in a later transaction is a moment after it was written).
    "next_attempt_at <= created_at + interval '1 second' "
    "FROM notifications ORDER BY id"
)
NOTIFICATION_CASES = (
    "SELECT feedback_id, feedback_number, customer_ref, channel, category, priority, "
    "department, owner, first_response_due, first_response_target "
    "FROM notification_cases ORDER BY feedback_id"
)
TIMER_ROWS = "SELECT case_id, clock_key, kind, fire_at FROM sla_timers ORDER BY 1, 2, 3"


# --- events -------------------------------------------------------------------------------


class Case:
    def __init__(self, n: int) -> None:
        self.id = uuid.uuid4()
        self.number = f"F20260601-{n:04d}"
        self.version = 0
        self.now = datetime.now(UTC)

    def next(self, kind: type[CaseEvent], **fields: Any) -> Any:
        self.version += 1
        return kind(
            feedback_id=self.id,
            feedback_number=self.number,
            version=self.version,
            position=self.version,
            occurred_at=self.now,
            **fields,
        )

    def clock(self, kind: type[CaseEvent], clock: str, **fields: Any) -> Any:
        start = self.now - timedelta(hours=1)
        due = self.now + timedelta(hours=3 + self.version)
        times: dict[str, Any] = {}
        if kind is ClockStarted:
            times = {"target": "4h", "time": "business", "started_at": start}
        elif kind is ClockRecomputed:
            times = {"target": "2h", "time": "business", "reason": "priority"}
        elif kind is ClockResumed:
            times = {"resumed_at": self.now}
        elif kind is ClockPaused:
            times = {"paused_at": self.now}
        elif kind is ClockMet:
            times = {"met_at": self.now, "by_event": "OwnerAccepted", "late": False}
        if kind in (ClockStarted, ClockRecomputed, ClockResumed):
            times |= {"due_at": due, "warn_at": self.now + timedelta(hours=2)}
        elif kind in (ClockWarned, ClockBreached):
            times["due_at"] = due
        return self.next(kind, clock=clock, **{**times, **fields})


def a_case_told(n: int) -> list[CaseEvent]:
    """What a case tells in its first minutes: registered, classified, routed, assigned,
    its first-response promise, a note to the customer, then a breach and an escalation."""
    case = Case(n)
    registration = Registration(
        feedback_number=case.number,
        received_at=case.now,
        registered_at=case.now,
        channel="web_form" if n % 2 else "phone",
        customer_ref=f"客户-2026-{n:04d}",
        description="打印机无法连接WiFi",
        receiver="web_form",
    )
    classification = Classification(
        type="complaint",
        category="logistics",
        subcategory=None,
        priority="high",
        department="logistics",
        emotion="angry",
        confidence=0.9,
    )
    return [
        case.next(CaseRegistered, registration=registration),
        case.next(FeedbackClassified, classification=classification, by="rules"),
        case.next(FeedbackRouted, department="logistics", reason="category"),
        case.clock(ClockStarted, "first_response"),
        case.clock(ClockStarted, "resolution"),
        case.next(OwnerAssigned, owner=f"agent-{n % 3}", by="routing", reason="least loaded"),
        case.clock(ClockRecomputed, "first_response"),
        case.next(NoteAdded, text="已联系物流", visible_to_customer=True, by=f"agent-{n % 3}"),
        case.clock(ClockBreached, "resolution", department="logistics"),
        case.next(EscalationRaised, level=2, to_role="head", reason="overdue", clock="resolution"),
    ]


def a_case_timed(n: int) -> list[CaseEvent]:
    """Every kind of clock event, so that every timer write and delete is folded."""
    case = Case(n)
    return [
        case.clock(ClockStarted, "first_response"),
        case.clock(ClockStarted, "resolution"),
        case.clock(ClockStarted, "progress_update", subject="1"),
        case.clock(ClockWarned, "first_response"),
        case.clock(ClockPaused, "resolution"),
        case.clock(ClockResumed, "resolution"),
        case.clock(ClockRecomputed, "resolution"),
        case.clock(ClockMet, "first_response"),
        case.clock(ClockBreached, "progress_update", subject="1"),
        *([case.clock(ClockBreached, "resolution")] if n % 2 else []),
        *(
            [case.next(EscalationRaised, level=2, to_role="head", reason="r", clock="resolution")]
            if n % 4 == 1
            else []
        ),
    ]


def interleaved(cases: list[list[CaseEvent]]) -> list[CaseEvent]:
    """Cases' events as one partition delivers them: mixed, each case in its order."""
    mixed: list[CaseEvent] = []
    for step in range(max(len(c) for c in cases)):
        mixed += [c[step] for c in cases if step < len(c)]
    return mixed


# --- the consumers ----------------------------------------------------------------------

Apply = Callable[[AsyncConnection[Any], Any], Awaitable[None]]
ApplyAll = Callable[[AsyncConnection[Any], list[Any]], Awaitable[None]]


def planner(url: str) -> Planner:
    directory = StaffDirectory.model_validate(
        {
            "staff": {"agent-1": {"email": "a1@example.com"}, "head": {"im": "im-head"}},
            "departments": {"logistics": {"supervisors": ["lead"], "heads": ["head"]}},
        }
    )
    return Planner(settings_for(url), directory, {"email", "sms", "im"})


def timers() -> tuple[Apply, ApplyAll]:
    return timer_appliers(lambda due: due + timedelta(hours=8))


async def sliced(
    pool: AsyncConnectionPool, consumer: str, records: list[Record], apply: Apply, all_: ApplyAll
) -> int:
    """The consumer's own statements the slice cost (its position's and BEGIN/COMMIT
    aside)."""
    CountingCursor.sent = CountingCursor.positions = 0
    await kafka_positions.apply_slice(pool, consumer, records, apply, no_bus, apply_all=all_)
    print(f"{consumer}: {len(records)} records, {CountingCursor.sent} statements, "
          f"{CountingCursor.positions} for the position")  # fmt: skip
    return CountingCursor.sent


async def one_by_one(
    pool: AsyncConnectionPool, consumer: str, records: list[Record], apply: Apply
) -> None:
    """The same records as slices of one (each record alone: the isolation path)."""
    for record in records:
        await kafka_positions.apply_slice(pool, consumer, [record], apply, no_bus)


def rewind(url: str) -> None:
    """A crash before the position was recorded: the slice is read again."""
    with psycopg.connect(url) as conn:
        conn.execute("DELETE FROM consumer_positions")


# --- tests ----------------------------------------------------------------------------


async def test_a_slice_of_twenty_cases_is_planned_in_a_few_statements_as_one_by_one(
    postgres: LocalPostgres,
) -> None:
    records = records_of(interleaved([a_case_told(n) for n in range(CASES)]))
    async with database(postgres) as (url, pool):
        plans = planner(url)
        statements = await sliced(pool, CONSUMER, records, plans.apply_record, plans.apply_records)
        assert statements <= MOST_NOTIFICATION_STATEMENTS
        told, facts = snapshot(url, NOTIFICATIONS), snapshot(url, NOTIFICATION_CASES)
        assert len(facts) == CASES
        # The promise reached the acknowledgements (recomputed: the second due time),
        # and released them at once although they were held.
        acks = [r for r in told if r[8] == "customer_acknowledgement"]
        assert len(acks) == CASES
        assert all(r[10]["first_response_target"] == "2h" for r in acks)
        assert all(r[13] for r in acks)

        # Redelivered (the position lost with a crash): nothing changes.
        rewind(url)
        await sliced(pool, CONSUMER, records, plans.apply_record, plans.apply_records)
        assert snapshot(url, NOTIFICATIONS) == told
        assert snapshot(url, NOTIFICATION_CASES) == facts

    # The same records one at a time leave the same tables.
    async with database(postgres) as (url, pool):
        plans = planner(url)
        await one_by_one(pool, CONSUMER, records, plans.apply_record)
        assert snapshot(url, NOTIFICATIONS) == told
        assert snapshot(url, NOTIFICATION_CASES) == facts


async def test_a_slice_that_ends_with_a_repeat_of_its_beginning_is_as_one_by_one(
    postgres: LocalPostgres,
) -> None:
    """A section relayed twice: the repeat lands in the same slice as the original, after
    a later event changed a fact (an acknowledgement written and patched meanwhile)."""
    cases = [a_case_told(n) for n in range(4)]
    events = interleaved([c[:5] for c in cases]) + interleaved(cases)
    records = records_of(events)
    async with database(postgres) as (url, pool):
        plans = planner(url)
        await sliced(pool, CONSUMER, records, plans.apply_record, plans.apply_records)
        told, facts = snapshot(url, NOTIFICATIONS), snapshot(url, NOTIFICATION_CASES)
    async with database(postgres) as (url, pool):
        plans = planner(url)
        await one_by_one(pool, CONSUMER, records, plans.apply_record)
        assert snapshot(url, NOTIFICATIONS) == told
        assert snapshot(url, NOTIFICATION_CASES) == facts


async def test_a_poison_record_in_a_slice_is_a_dead_letter_and_the_rest_is_planned(
    postgres: LocalPostgres,
) -> None:
    letters.clear()
    good = interleaved([a_case_told(n) for n in range(3)])
    stranger = Case(99)  # never registered here: its customer is unknown
    note = stranger.next(NoteAdded, text="您好", visible_to_customer=True, by="agent-1")
    records = records_of([*good[:5], b"{not json", *good[5:], note])
    async with database(postgres) as (url, pool):
        plans = planner(url)
        await sliced(pool, CONSUMER, records, plans.apply_record, plans.apply_records)
        assert sorted(letter.source_offset or 0 for letter in letters) == [5, len(records) - 1]
        told, facts = snapshot(url, NOTIFICATIONS), snapshot(url, NOTIFICATION_CASES)
        assert len(facts) == 3
    async with database(postgres) as (url, pool):
        plans = planner(url)
        await one_by_one(pool, CONSUMER, [r for r in records if r.offset != 5], plans.apply_record)
        assert snapshot(url, NOTIFICATIONS) == told
        assert snapshot(url, NOTIFICATION_CASES) == facts


async def test_a_slice_of_twenty_cases_clock_events_costs_two_timer_statements(
    postgres: LocalPostgres,
) -> None:
    apply, apply_all = timers()
    records = records_of(interleaved([a_case_timed(n) for n in range(CASES)]))
    async with database(postgres) as (url, pool):
        statements = await sliced(pool, TIMERS, records, apply, apply_all)
        assert statements <= MOST_TIMER_STATEMENTS
        kept = snapshot(url, TIMER_ROWS)
        # Per case: resolution warn/breach (or, breached, its escalation unless escalated),
        # the progress clock's warn and escalation; first_response met: nothing.
        assert {(r[1], r[2]) for r in kept} >= {
            ("resolution", "warn"),
            ("progress_update:1", "warn"),
            ("progress_update:1", "escalate"),
        }
        assert not [r for r in kept if r[1] == "first_response"]

        rewind(url)
        await sliced(pool, TIMERS, records, apply, apply_all)
        assert snapshot(url, TIMER_ROWS) == kept

    async with database(postgres) as (url, pool):
        await one_by_one(pool, TIMERS, records, apply)
        assert snapshot(url, TIMER_ROWS) == kept


async def test_a_poison_clock_event_in_a_slice_is_a_dead_letter_and_the_rest_is_timed(
    postgres: LocalPostgres,
) -> None:
    letters.clear()
    apply, apply_all = timers()
    events = interleaved([a_case_timed(n) for n in range(3)])
    records = records_of([*events[:4], b'{"event_type": "ClockStarted"}', *events[4:]])
    async with database(postgres) as (url, pool):
        await sliced(pool, TIMERS, records, apply, apply_all)
        assert [letter.source_offset for letter in letters] == [4]
        kept = snapshot(url, TIMER_ROWS)
    async with database(postgres) as (url, pool):
        await one_by_one(pool, TIMERS, [r for r in records if r.offset != 4], apply)
        assert snapshot(url, TIMER_ROWS) == kept
