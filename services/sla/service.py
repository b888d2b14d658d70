"""Deadlines on cases: which clocks a case gets, when they pause, resume, are recomputed
or met, and the scheduler that warns, breaches and escalates.

Three parts, each exactly once:
- decisions (consumer group `sla`): case events in, clock events appended to the same case
  together with the Kafka position (eventsourcing tracking, as routing does);
- timers (consumer group `sla-timers`): a table of fire times indexed by time, projected
  from the clock events, the table and the position in one transaction;
- the scheduler: claims due timers with `FOR UPDATE SKIP LOCKED`, appends the warning,
  breach or escalation to the case (which records each once: a repeat after a crash, or a
  second scheduler, changes nothing) and deletes the timers it fired.

Which event satisfies which clock (until handling records contact with the customer, the
owner accepting the case is the first response):

| clock | started by | met by | paused by / resumed by |
|---|---|---|---|
| registration (written and online channels, 2 h) | the first classification (from receipt) | CaseRegistered (at once, late or not) | - |
| first_response | the first classification (from receipt) | OwnerAccepted | InformationRequested / InformationSupplied (complete) |
| resolution (complaints; 5 wd once MarkedComplex) | the first classification (from receipt) | CaseResolved | as above |
| co_handler_response | CoHandlerAdded (per department) | CoHandlerResponded | as above |
| progress_update (period 1, 2, …) | OwnerAccepted; each visible note starts the next | a visible NoteAdded; stopped by CaseResolved/CaseClosed | as above |
| result_notice | CaseResolved | CustomerConfirmed, or a visible note after the result | as above |

A priority change or reclassification recomputes the open clocks from their original
start, paused time still excluded; a recomputation that makes a clock overdue breaches it
at once (once). A breach escalates to the supervisor at once, and to the department head
if the clock is still open `escalation.to_head_after` later.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError
from psycopg_pool import ConnectionPool
from pydantic import ValidationError

from contracts import events as contract
from services.cases.domain import Case, CaseError, clock_key
from services.cases.store import CaseStore, KafkaPosition
from services.common.bus import concerns
from services.common.metrics import count_clock_event
from services.sla.calendar import BusinessCalendar, Target
from services.sla.policies import Policies, Rule

log = logging.getLogger(__name__)

GROUP = "sla"
TIMERS = "sla.timers"

SCHEMA = [
    """
    CREATE TABLE IF NOT EXISTS sla_timers (
        case_id uuid NOT NULL,
        clock_key text NOT NULL,
        kind text NOT NULL,
        fire_at timestamptz NOT NULL,
        PRIMARY KEY (case_id, clock_key, kind)
    )
    """,
    "CREATE INDEX IF NOT EXISTS sla_timers_fire_at ON sla_timers (fire_at)",
]
# Clock events this service writes itself: it does not decide on them again.
OWN_EVENTS = (
    *contract.CLOCK_EVENTS,
    contract.EscalationRaised,
    contract.EscalationRequested,
)
OWN_EVENT_TYPES = contract.type_names(*OWN_EVENTS)


# The case events `_decide` acts on: for any other the case is not even loaded.
DECIDES_ON = (
    contract.FeedbackClassified,
    contract.PriorityOverridden,
    contract.OwnerAccepted,
    contract.NoteAdded,
    contract.CaseResolved,
    contract.CustomerConfirmed,
    contract.CaseClosed,
    contract.CaseArchived,
    contract.CoHandlerAdded,
    contract.CoHandlerResponded,
    contract.MarkedComplex,
    contract.CaseReopened,
    contract.InformationRequested,
    contract.InformationSupplied,
)
DECIDES_ON_TYPES = contract.type_names(*DECIDES_ON)


class Clock(Protocol):
    """Where the time comes from: the system's, or a test's that it moves."""

    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass
class Decisions:
    """A partition slice of case events, decided, for one transaction."""

    topic: str
    partition: int
    next_offset: int | None = None
    cases: dict[UUID, Case] = field(default_factory=dict)


class SlaService:
    def __init__(
        self,
        store: CaseStore,
        pool: ConnectionPool,
        policies: Policies,
        calendar: BusinessCalendar,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.pool = pool
        self.policies = policies
        self.calendar = calendar
        self.clock = clock or SystemClock()

    # -- decisions ----------------------------------------------------------------------

    def decide(self, topic: str, partition: int, records: list[Any]) -> Decisions:
        work = Decisions(topic, partition)
        next_offset = self.store.next_offset(GROUP, topic, partition)
        unseen = [r for r in records if r.offset >= next_offset]
        if not unseen:
            return work
        work.next_offset = unseen[-1].offset + 1
        messages: list[contract.CaseEventMessage] = []
        for record in unseen:
            if not concerns(record, DECIDES_ON_TYPES):
                continue
            try:
                message = contract.case_event_adapter.validate_json(record.value or b"")
            except ValidationError:
                continue  # the read side keeps unreadable case events as dead letters
            # Not its own clock events, nor facts no clock depends on.
            if isinstance(message, DECIDES_ON):
                messages.append(message)
        # The slice's cases in one read; then each decides in the order of its events.
        work.cases = self.store.get_cases(m.feedback_id for m in messages)
        for message in messages:
            case = work.cases.get(message.feedback_id)
            if case is None:
                log.warning("no case %s in the store", message.feedback_id)
                continue
            try:
                self._decide(case, message)
            except CaseError as error:
                log.warning("%s: %s", message.feedback_number, error)
        return work

    def commit(self, work: Decisions) -> None:
        assert work.next_offset is not None
        position = KafkaPosition(GROUP, work.topic, work.partition, work.next_offset)
        self.store.record(work.cases.values(), position)

    def _case(self, case_id: UUID) -> Case | None:
        try:
            return self.store.get_case(case_id)
        except AggregateNotFoundError:
            # Other failures raise: the slice is redelivered, no decision is lost.
            log.warning("no case %s in the store", case_id)
            return None

    def _decide(self, case: Case, message: contract.CaseEvent) -> None:
        at = message.occurred_at
        match message:
            case contract.FeedbackClassified() | contract.PriorityOverridden():
                if case.clocks:
                    self._recompute(case, f"{message.event_type} by {getattr(message, 'by', '')}")
                else:
                    self._start_case_clocks(case)
            case contract.OwnerAccepted():
                case.meet_clock("first_response", at, "OwnerAccepted")
                self._next_progress_period(case, at, "OwnerAccepted")
            case contract.NoteAdded(visible_to_customer=True):
                if case.status.value == "resolved":
                    case.meet_clock("result_notice", at, "NoteAdded")
                else:
                    self._next_progress_period(case, at, "NoteAdded")
            case contract.CaseResolved():
                case.meet_clock("resolution", at, "CaseResolved")
                self._stop_progress(case, at, "CaseResolved")
                rule = self.policies.rule_for("result_notice", self._facts(case))
                if rule is not None:
                    self._start(case, "result_notice", None, rule, at)
            case contract.CustomerConfirmed():
                case.meet_clock("result_notice", at, "CustomerConfirmed")
            case contract.CaseClosed() | contract.CaseArchived():
                self._stop_progress(case, at, message.event_type)
            case contract.CoHandlerResponded():
                key = clock_key("co_handler_response", message.co_department)
                case.meet_clock(key, at, "CoHandlerResponded")
            case contract.MarkedComplex():
                self._recompute(case, f"{message.event_type} by {message.by}")
            case contract.CaseReopened():
                # A new promise: resolve again, keeping the customer informed meanwhile.
                rule = self.policies.rule_for("resolution", self._facts(case))
                if rule is not None:
                    self._start(case, "resolution", None, rule, at)
                self._next_progress_period(case, at, "CaseReopened")
                self._recompute(case, f"{message.event_type} by {message.by}")
            case contract.InformationRequested():
                for clock in case.open_clocks():
                    case.pause_clock(clock_key(clock["clock"], clock["subject"]), at)
            case contract.InformationSupplied(complete=True):
                for clock in case.open_clocks():
                    if clock["state"] == "paused":
                        pauses = [*clock["pauses"], (clock["paused_since"], at)]
                        due, warn = self._times(clock, clock["target"], pauses)
                        case.resume_clock(
                            clock_key(clock["clock"], clock["subject"]), at, due, warn
                        )
                # A priority changed while they were paused applies now.
                self._recompute(case, "resumed with the current policy")
            case contract.CoHandlerAdded():
                rule = self.policies.rule_for("co_handler_response", self._facts(case))
                if rule is not None:
                    self._start(case, "co_handler_response", message.co_department, rule, at)

    def _next_progress_period(self, case: Case, at: datetime, by_event: str) -> None:
        """Progress updates recur while the case is open: meeting one starts the next
        period (subject = its number)."""
        periods = [c for c in case.clocks.values() if c["clock"] == "progress_update"]
        for clock in periods:
            if clock["state"] in ("running", "paused"):
                case.meet_clock(clock_key("progress_update", clock["subject"]), at, by_event)
        rule = self.policies.rule_for("progress_update", self._facts(case))
        if rule is not None:
            self._start(case, "progress_update", str(len(periods) + 1), rule, at)

    def _stop_progress(self, case: Case, at: datetime, by_event: str) -> None:
        for clock in case.open_clocks():
            if clock["clock"] == "progress_update":
                case.meet_clock(clock_key("progress_update", clock["subject"]), at, by_event)

    def _facts(self, case: Case) -> dict[str, Any]:
        decided = case.classification or {}
        return {
            "priority": decided.get("priority"),
            "type": decided.get("type") or case.registration.get("stated_type"),
            "category": decided.get("category"),
            "channel": case.registration.get("channel"),
            "customer_tier": case.registration.get("customer_tier"),
            "complex": bool(getattr(case, "complex", False)),
        }

    def _start_case_clocks(self, case: Case) -> None:
        received = datetime.fromisoformat(str(case.registration["received_at"]))
        facts = self._facts(case)
        rule = self.policies.rule_for("registration", facts)
        if rule is not None:
            # Known at once: the case exists because it was registered; met, late or not.
            registered = datetime.fromisoformat(str(case.registration["registered_at"]))
            self._start(case, "registration", None, rule, received)
            case.meet_clock("registration", registered, "CaseRegistered")
        for name in ("first_response", "resolution"):
            rule = self.policies.rule_for(name, facts)
            if rule is not None:
                self._start(case, name, None, rule, received)

    def _start(
        self, case: Case, name: str, subject: str | None, rule: Rule, started_at: datetime
    ) -> None:
        due = self.calendar.due(started_at, rule.parsed, rule.time)
        warn = self._warn_at(started_at, due, rule.time, ())
        case.start_clock(name, subject, rule.target, rule.time, started_at, due, warn)

    def _recompute(self, case: Case, reason: str) -> None:
        facts = self._facts(case)
        for clock in case.open_clocks():
            rule = self.policies.rule_for(clock["clock"], facts)
            if rule is None or clock["state"] == "paused":
                # Paused: the new target applies when the clock resumes (see `_decide`).
                continue
            due, warn = self._times({**clock, "time": rule.time}, rule.target, clock["pauses"])
            case.recompute_clock(
                clock_key(clock["clock"], clock["subject"]),
                rule.target,
                rule.time,
                due,
                warn,
                reason,
            )

    def _times(
        self, clock: dict[str, Any], target: str, pauses: list[tuple[datetime, datetime]]
    ) -> tuple[datetime, datetime]:
        rule = Rule(target=target, time=clock["time"])
        due = self.calendar.due(clock["started_at"], rule.parsed, rule.time, pauses)
        return due, self._warn_at(clock["started_at"], due, rule.time, pauses)

    def _warn_at(
        self,
        start: datetime,
        due: datetime,
        time: str,
        pauses: list[tuple[datetime, datetime]] | tuple[()],
    ) -> datetime:
        """When the configured share of the clock has run (counted as the clock counts)."""
        share = self.policies.warn_at_share
        if time == "calendar":
            counted = (due - start).total_seconds() - sum(
                (b - a).total_seconds() for a, b in pauses
            )
            minutes = max(1, int(counted * share / 60))
        else:
            counted_minutes = self.calendar.business_minutes_between(start, due) - sum(
                self.calendar.business_minutes_between(a, b) for a, b in pauses
            )
            minutes = max(1, int(counted_minutes * share))
        return self.calendar.due(start, Target(minutes, "m"), time, list(pauses))  # type: ignore[arg-type]

    # -- the scheduler ------------------------------------------------------------------

    def fire_due(self, limit: int = 500) -> int:
        """Warn, breach and escalate what is due now; returns how many timers fired."""
        now = self.clock.now()
        with self.pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                "SELECT case_id, clock_key, kind FROM sla_timers WHERE fire_at <= %s "
                "ORDER BY fire_at LIMIT %s FOR UPDATE SKIP LOCKED",
                (now, limit),
            ).fetchall()
            if not rows:
                return 0
            due: dict[UUID, list[tuple[str, str]]] = defaultdict(list)
            for case_id, key, kind in rows:
                due[case_id].append((key, kind))
            self._fire_all(due, now)
            conn.execute(
                "DELETE FROM sla_timers t USING unnest(%s::uuid[], %s::text[], %s::text[]) "
                "AS f(case_id, clock_key, kind) WHERE t.case_id = f.case_id "
                "AND t.clock_key = f.clock_key AND t.kind = f.kind",
                ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]),
            )
        return len(rows)

    def _fire_all(self, due: dict[UUID, list[tuple[str, str]]], now: datetime) -> None:
        """All the cases of a batch decided and stored in one transaction (one commit for
        hundreds of breaches); if another writer changed one of them meanwhile, case by
        case instead."""
        cases = []
        fired: list[tuple[str, str]] = []
        for case_id, timers in due.items():
            case = self._case(case_id)
            if case is not None:
                fired += self._apply_timers(case, timers, now)
                cases.append(case)
        try:
            self.store.save(*cases)
            self.stored(list(due))
            _count(fired)
            return
        except IntegrityError:
            pass
        for case_id, timers in due.items():
            self._fire(case_id, timers, now)

    def stored(self, case_ids: list[UUID]) -> None:
        """Hook: these cases' fired timers are stored (benchmarks time it)."""

    def _apply_timers(
        self, case: Case, timers: list[tuple[str, str]], now: datetime
    ) -> list[tuple[str, str]]:
        """Applies the timers; returns the warnings and breaches the case recorded (a repeat
        after a crash records nothing), as (kind, clock key)."""
        fired: list[tuple[str, str]] = []
        for key, kind in timers:
            if kind == "warn":
                if case.warn_clock(key, now):
                    fired.append(("warning", key))
            elif kind == "breach":
                if case.breach_clock(key, now):
                    fired.append(("breach", key))
            elif kind == "escalate":
                case.escalate_clock(key, 2, "head", "still open after the supervisor was told")
        return fired

    def _fire(self, case_id: UUID, timers: list[tuple[str, str]], now: datetime) -> None:
        for _ in range(5):  # another writer appended to the case meanwhile: load it again
            case = self._case(case_id)
            if case is None:
                return
            fired = self._apply_timers(case, timers, now)
            try:
                self.store.save(case)
                self.stored([case_id])
                _count(fired)
                return
            except IntegrityError:
                continue
        raise RuntimeError(f"case {case_id} kept changing under the scheduler")


def _count(fired: list[tuple[str, str]]) -> None:
    """Counted once stored: a save that failed and is tried again counts once."""
    for kind, key in fired:
        count_clock_event(kind, key)


# A timer: (case, clock key, kind: warn, breach or escalate).
TimerKey = tuple[UUID, str, str]


def fold_timers(
    messages: Iterable[contract.CaseEvent], escalate_after: Callable[[datetime], datetime]
) -> dict[TimerKey, datetime | None]:
    """What clock events (in order) leave of each timer they touch: its fire time, or None
    for deleted. The last write of a timer decides its row, whatever the row was, so a
    slice needs neither a read nor more than one write per timer."""
    timers: dict[TimerKey, datetime | None] = {}
    for message in messages:
        if not isinstance(message, OWN_EVENTS):
            continue
        writes: dict[str, datetime | None] = {}
        match message:
            case contract.ClockStarted() | contract.ClockResumed() | contract.ClockRecomputed():
                writes = {"warn": message.warn_at, "breach": message.due_at}
            case contract.ClockPaused():
                writes = {"warn": None, "breach": None}
            case contract.ClockMet():
                writes = {"warn": None, "breach": None, "escalate": None}
            case contract.ClockWarned():
                writes = {"warn": None}
            case contract.ClockBreached():
                writes = {"breach": None, "escalate": escalate_after(message.due_at)}
            case contract.EscalationRaised(level=level) if level >= 2 and message.clock:
                writes = {"escalate": None}
        key = clock_key(getattr(message, "clock", "") or "", getattr(message, "subject", None))
        for kind, at in writes.items():
            timers[(message.feedback_id, key, kind)] = at
    return timers


async def write_timers(conn: Any, timers: dict[TimerKey, datetime | None]) -> None:
    """Write folded timers in the caller's transaction: one upsert for those set, one
    delete for those dropped (at most two statements, whatever the number of events)."""
    kept = [(k, at) for k, at in timers.items() if at is not None]
    dropped = [k for k, at in timers.items() if at is None]
    if kept:
        await conn.execute(
            "INSERT INTO sla_timers (case_id, clock_key, kind, fire_at) "
            "SELECT * FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::timestamptz[]) "
            "ON CONFLICT (case_id, clock_key, kind) DO UPDATE SET fire_at = excluded.fire_at",
            (
                [k[0] for k, _ in kept],
                [k[1] for k, _ in kept],
                [k[2] for k, _ in kept],
                [at for _, at in kept],
            ),
        )
    if dropped:
        await conn.execute(
            "DELETE FROM sla_timers t USING unnest(%s::uuid[], %s::text[], %s::text[]) "
            "AS d(case_id, clock_key, kind) WHERE t.case_id = d.case_id "
            "AND t.clock_key = d.clock_key AND t.kind = d.kind",
            ([k[0] for k in dropped], [k[1] for k in dropped], [k[2] for k in dropped]),
        )


async def apply_timers(
    conn: Any, message: contract.CaseEvent, escalate_after: Callable[[datetime], datetime]
) -> None:
    """Project a clock event onto the timer table (inside the consumer's transaction)."""
    await write_timers(conn, fold_timers([message], escalate_after))
