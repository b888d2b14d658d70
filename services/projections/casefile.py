"""What the read models know about one case, and how each case event changes it.

A `CaseFile` holds a case's rows in every case read model (the registration table 登记表,
the fact row for reports, its department stints, its clocks). Events are folded into it in
Python and the changed rows are written back in one statement per table, so the live
consumer (a partition slice per transaction, with its Kafka position) and the rebuild
(the event store, in store order) share one description of each event's effect.

A case's `last_version` drops repeats: an event at or below it has been applied.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from contracts.events import (
    AssignmentDisputed,
    CaseArchived,
    CaseClosed,
    CaseEvent,
    CaseRated,
    CaseRegistered,
    CaseReopened,
    CaseResolved,
    ClockBreached,
    ClockMet,
    ClockPaused,
    ClockRecomputed,
    ClockResumed,
    ClockStarted,
    ClockWarned,
    CoHandlerAdded,
    CorrespondenceReceived,
    CustomerConfirmed,
    EscalationRaised,
    FeedbackClassified,
    FeedbackRouted,
    InformationRequested,
    InformationSupplied,
    NoteAdded,
    OwnerAccepted,
    OwnerAssigned,
    PlanSet,
    PriorityOverridden,
    SentToTriage,
)
from services.common import deadletters
from services.projections import bulk, search
from services.sla.calendar import BusinessCalendar

REGISTRATION_DEADLINE_S = 2 * 3600
# An earlier case of the same customer this recent makes a case a repeat (重复投诉).
REPEAT_WINDOW = timedelta(days=30)

REGISTRATION_COLUMNS = (
    "feedback_id", "feedback_number", "received_at", "registered_at", "channel",
    "channel_reference", "customer_ref", "customer_tier", "product_model", "service_type",
    "purchase_date", "description", "customer_attempts", "occurred_at", "expectation",
    "emotion", "stated_type", "feedback_type", "evidence", "receiver", "registration_late",
    "status", "last_version", "updated_at", "category", "subcategory", "priority",
    "department", "classified_emotion", "flags", "confidence", "classification_rules",
    "supervisor_attention", "owner", "co_handlers", "missing_information",
    "correspondence_count", "related_feedback", "warned_clocks", "breached_clocks",
    "escalation_level", "assigned_at", "accepted_at", "diagnosis", "plan",
    "expected_completion", "progress", "result", "result_summary", "result_reason",
    "measures", "resources", "resolved_at", "satisfied", "customer_comment", "confirmed_at",
    "csat", "nps", "closed_at",
)  # fmt: skip
TRACKING_COLUMNS = REGISTRATION_COLUMNS[REGISTRATION_COLUMNS.index("assigned_at") :]
FACT_COLUMNS = (
    "feedback_id", "feedback_number", "customer_ref", "received_at", "registered_at",
    "channel", "feedback_type", "category", "subcategory", "priority", "department", "owner",
    "customer_tier", "product_model", "emotion", "status", "first_response_at",
    "resolved_at", "result", "confirmed_at", "satisfied", "closed_at", "archived_at",
    "first_response_business_minutes", "first_response_calendar_minutes",
    "resolution_business_minutes", "resolution_calendar_minutes", "csat", "nps",
    "reopened_count", "repeat", "escalation_level", "breached_count", "last_version",
    "updated_at",
)  # fmt: skip
STINT_COLUMNS = (
    "feedback_id", "seq", "department", "moved_in_at", "moved_out_at", "reason",
    "business_minutes", "calendar_minutes",
)  # fmt: skip
CLOCK_COLUMNS = (
    "feedback_id", "clock_key", "clock", "subject", "time", "target", "started_at", "due_at",
    "warn_at", "state", "paused_at", "warned", "breached", "met_at", "late",
)  # fmt: skip
JSON_COLUMNS = frozenset({"evidence", "co_handlers", "progress"})
# What the archive search index holds of a case: it is indexed again when one changes.
SEARCHED = (
    "feedback_type", "category", "department", "customer_tier", "product_model", "status",
    "description", "expectation", "customer_attempts",
)  # fmt: skip


def clock_key(clock: str, subject: str | None) -> str:
    return f"{clock}:{subject}" if subject else clock


@dataclass
class CaseFile:
    """One case's rows; `apply` is the effect of each event on them."""

    registration: dict[str, Any]
    facts: dict[str, Any]
    stints: list[dict[str, Any]] = field(default_factory=list)
    clocks: dict[str, dict[str, Any]] = field(default_factory=dict)
    changed_stints: set[int] = field(default_factory=set)
    changed_clocks: set[str] = field(default_factory=set)
    registered_now: bool = False
    indexed: tuple[Any, ...] | None = None  # the searched fields as last indexed

    def __post_init__(self) -> None:
        if not self.registered_now:
            self.indexed = self.searched()

    def searched(self) -> tuple[Any, ...]:
        return tuple(self.registration[name] for name in SEARCHED)

    def text_indexed(self) -> bool:
        """The texts of the search document are as last indexed (only filter fields, such
        as the status or the department, may have changed): `search.index_filters`."""
        return self.indexed is not None and all(
            self.indexed[SEARCHED.index(name)] == self.registration[name]
            for name in search.TEXT_FIELDS
        )

    @property
    def last_version(self) -> int:
        return int(self.registration["last_version"])

    @classmethod
    def registered(cls, event: CaseRegistered) -> CaseFile:
        r = event.registration
        late = (r.registered_at - r.received_at).total_seconds() > REGISTRATION_DEADLINE_S
        stated = r.stated_type.value if r.stated_type else None
        emotion = r.emotion.value if r.emotion else None
        registration: dict[str, Any] = {
            "feedback_id": event.feedback_id,
            "feedback_number": r.feedback_number,
            "received_at": r.received_at,
            "registered_at": r.registered_at,
            "channel": r.channel.value,
            "channel_reference": r.channel_reference,
            "customer_ref": r.customer_ref,
            "customer_tier": r.customer_tier,
            "product_model": r.product_model,
            "service_type": r.service_type,
            "purchase_date": r.purchase_date,
            "description": r.description,
            "customer_attempts": r.customer_attempts,
            "occurred_at": r.occurred_at,
            "expectation": r.expectation,
            "emotion": emotion,
            "stated_type": stated,
            "feedback_type": stated,
            "evidence": [e.model_dump(mode="json") for e in r.evidence],
            "receiver": r.receiver,
            "registration_late": late,
            "status": "registered",
            "last_version": event.version,
            "updated_at": event.occurred_at,
            "category": None,
            "subcategory": None,
            "priority": None,
            "department": None,
            "classified_emotion": None,
            "flags": [],
            "confidence": None,
            "classification_rules": [],
            "supervisor_attention": False,
            "owner": None,
            "co_handlers": [],
            "missing_information": [],
            "correspondence_count": 0,
            "related_feedback": r.related_feedback,
            "warned_clocks": [],
            "breached_clocks": [],
            "escalation_level": 0,
            **dict.fromkeys(TRACKING_COLUMNS),
            "progress": [],
        }
        facts: dict[str, Any] = dict.fromkeys(FACT_COLUMNS)
        facts.update(
            feedback_id=event.feedback_id,
            feedback_number=r.feedback_number,
            customer_ref=r.customer_ref,
            received_at=r.received_at,
            registered_at=r.registered_at,
            channel=r.channel.value,
            feedback_type=stated,
            customer_tier=r.customer_tier,
            product_model=r.product_model,
            emotion=emotion,
            status="registered",
            reopened_count=0,
            repeat=r.related_feedback is not None,
            escalation_level=0,
            breached_count=0,
        )
        file = cls(registration, facts, registered_now=True)
        file._refresh_facts(event.occurred_at)
        return file

    def apply(self, event: CaseEvent, calendar: BusinessCalendar) -> bool:
        """Fold one later event in; False for a repeat (already applied)."""
        if event.version <= self.last_version:
            return False
        reg, facts = self.registration, self.facts
        at = event.occurred_at
        match event:
            case FeedbackClassified(classification=c):
                reg.update(
                    feedback_type=c.type.value,
                    category=c.category,
                    subcategory=c.subcategory,
                    priority=c.priority.value,
                    classified_emotion=c.emotion.value,
                    flags=list(c.flags),
                    confidence=c.confidence,
                    classification_rules=list(c.rules),
                    supervisor_attention=c.supervisor_attention,
                )
            case SentToTriage():
                reg.update(status="triage", owner=None)
            case FeedbackRouted():
                reg.update(status="queued", department=event.department, owner=None)
                self._move_to(event.department, at, event.reason, calendar)
            case OwnerAssigned():
                reg.update(status="assigned", owner=event.owner, assigned_at=at)
            case OwnerAccepted():
                reg.update(status="accepted", accepted_at=at)
            case AssignmentDisputed():
                reg.update(status="disputed", owner=None)
            case CoHandlerAdded():
                reg["co_handlers"] = [
                    *reg["co_handlers"],
                    {
                        "department": event.co_department,
                        "duty": event.duty,
                        "due_at": event.due_at.isoformat(),
                        "by": event.by,
                    },
                ]
            case PriorityOverridden():
                reg["priority"] = event.priority.value
            case InformationRequested():
                reg.update(status="pending_info", missing_information=list(event.missing))
            case InformationSupplied():
                supplied = set(event.supplied)
                reg["missing_information"] = [
                    m for m in reg["missing_information"] if m not in supplied
                ]
                reg["product_model"] = event.supplied.get("product_model") or reg["product_model"]
                # Asked while handling (an owner has it): back in progress. Asked at
                # registration: routing's next events set the status.
                if event.complete and reg["status"] == "pending_info" and reg["owner"]:
                    reg["status"] = "in_progress"
            case CorrespondenceReceived():
                reg["correspondence_count"] += 1
            case NoteAdded() | PlanSet():
                if reg["status"] in ("accepted", "reopened"):
                    reg["status"] = "in_progress"
                if isinstance(event, PlanSet):
                    reg.update(
                        diagnosis=event.diagnosis,
                        plan=event.plan,
                        expected_completion=event.expected_completion,
                    )
                    step: str | None = "plan"
                    text = event.plan
                else:
                    step, text = event.step, event.text
                # 处理进度记录: time, step, who, remark (texts are masked by handling).
                reg["progress"] = [
                    *reg["progress"],
                    {"at": at.isoformat(), "step": step, "by": event.by, "text": text[:2000],
                     "visible_to_customer": getattr(event, "visible_to_customer", False)},
                ]  # fmt: skip
            case CaseResolved():
                reg.update(
                    status="resolved",
                    result=event.result,
                    result_summary=event.summary,
                    result_reason=event.reason,
                    measures=event.measures,
                    resources=event.resources,
                    resolved_at=at,
                )
                facts.update(
                    resolved_at=at,
                    result=event.result,
                    resolution_business_minutes=_business(calendar, reg["received_at"], at),
                    resolution_calendar_minutes=_calendar(reg["received_at"], at),
                )
                self._leave(at, "resolved", calendar)
            case CustomerConfirmed():
                facts.update(confirmed_at=at, satisfied=event.satisfied)
                reg.update(
                    confirmed_at=at, satisfied=event.satisfied, customer_comment=event.comment
                )
                if event.satisfied:
                    reg["status"] = "confirmed"
            case CaseRated():
                facts.update(csat=event.csat, nps=event.nps)
                reg.update(csat=event.csat, nps=event.nps)
            case CaseReopened():
                reg.update(status="reopened", priority=event.priority.value)
                facts["reopened_count"] += 1
                if reg["department"]:
                    self._move_to(reg["department"], at, "reopened", calendar, again=True)
            case CaseClosed():
                reg.update(status="closed", closed_at=at)
                facts["closed_at"] = at
                self._leave(at, "closed", calendar)
            case CaseArchived():
                reg["status"] = "archived"
                facts["archived_at"] = at
            case ClockStarted():
                self._clock_started(event)
            case ClockPaused():
                self._clock(event.clock, event.subject, state="paused", paused_at=event.paused_at)
            case ClockResumed():
                self._clock(
                    event.clock, event.subject, state="running", paused_at=None,
                    due_at=event.due_at, warn_at=event.warn_at,
                )  # fmt: skip
            case ClockRecomputed():
                key = clock_key(event.clock, event.subject)
                self._clock(
                    event.clock, event.subject, due_at=event.due_at, warn_at=event.warn_at,
                    target=event.target, time=event.time, warned=False,
                )  # fmt: skip
                reg["warned_clocks"] = [c for c in reg["warned_clocks"] if c != key]
            case ClockMet():
                key = clock_key(event.clock, event.subject)
                self._clock(
                    event.clock, event.subject, state="met", met_at=event.met_at,
                    late=event.late, paused_at=None,
                )  # fmt: skip
                # Met: no longer flagged as warned (a breach stays).
                reg["warned_clocks"] = [c for c in reg["warned_clocks"] if c != key]
                if event.clock == "first_response" and facts["first_response_at"] is None:
                    facts.update(
                        first_response_at=event.met_at,
                        first_response_business_minutes=_business(
                            calendar, reg["received_at"], event.met_at
                        ),
                        first_response_calendar_minutes=_calendar(reg["received_at"], event.met_at),
                    )
            case ClockWarned():
                key = clock_key(event.clock, event.subject)
                self._clock(event.clock, event.subject, warned=True)
                if key not in reg["warned_clocks"]:
                    reg["warned_clocks"] = [*reg["warned_clocks"], key]
            case ClockBreached():
                key = clock_key(event.clock, event.subject)
                self._clock(event.clock, event.subject, breached=True)
                if key not in reg["breached_clocks"]:
                    reg["breached_clocks"] = [*reg["breached_clocks"], key]
            case EscalationRaised():
                reg["escalation_level"] = max(reg["escalation_level"], event.level)
        reg.update(last_version=event.version, updated_at=at)
        self._refresh_facts(at)
        return True

    def _refresh_facts(self, at: datetime) -> None:
        reg, facts = self.registration, self.facts
        for name in (
            "feedback_type", "category", "subcategory", "priority", "department", "owner",
            "product_model", "status", "escalation_level", "last_version",
        ):  # fmt: skip
            facts[name] = reg[name]
        facts["emotion"] = reg["classified_emotion"] or reg["emotion"]
        facts["breached_count"] = len(reg["breached_clocks"])
        facts["updated_at"] = at

    def _move_to(
        self,
        department: str | None,
        at: datetime,
        reason: str,
        calendar: BusinessCalendar,
        *,
        again: bool = False,
    ) -> None:
        """A stint per department the case is in; routing to where it is changes nothing."""
        if department is None:
            return
        current = self.stints[-1] if self.stints else None
        if current and current["moved_out_at"] is None:
            if current["department"] == department and not again:
                return
            self._leave(at, f"moved to {department}", calendar)
        seq = len(self.stints) + 1
        self.stints.append(
            dict.fromkeys(STINT_COLUMNS)
            | {
                "feedback_id": self.registration["feedback_id"],
                "seq": seq,
                "department": department,
                "moved_in_at": at,
                "reason": reason[:500],
            }
        )
        self.changed_stints.add(seq)

    def _leave(self, at: datetime, reason: str, calendar: BusinessCalendar) -> None:
        current = self.stints[-1] if self.stints else None
        if current is None or current["moved_out_at"] is not None:
            return
        current.update(
            moved_out_at=at,
            reason=f"{current['reason']}; out: {reason}"[:500],
            business_minutes=_business(calendar, current["moved_in_at"], at),
            calendar_minutes=_calendar(current["moved_in_at"], at),
        )
        self.changed_stints.add(current["seq"])

    def _clock_started(self, event: ClockStarted) -> None:
        key = clock_key(event.clock, event.subject)
        # A restarted clock (resolution after a reopening) is a new promise.
        self.clocks[key] = {
            "feedback_id": self.registration["feedback_id"],
            "clock_key": key,
            "clock": event.clock,
            "subject": event.subject,
            "time": event.time,
            "target": event.target,
            "started_at": event.started_at,
            "due_at": event.due_at,
            "warn_at": event.warn_at,
            "state": "running",
            "paused_at": None,
            "warned": False,
            "breached": False,
            "met_at": None,
            "late": None,
        }
        self.changed_clocks.add(key)

    def _clock(self, clock: str, subject: str | None, **changes: Any) -> None:
        key = clock_key(clock, subject)
        row = self.clocks.get(key)
        if row is None:  # an event of a clock whose start predates the read model
            return
        row.update(changes)
        self.changed_clocks.add(key)


def _calendar(start: datetime, end: datetime) -> float:
    return round(max((end - start).total_seconds(), 0.0) / 60.0, 3)


def _business(calendar: BusinessCalendar, start: datetime, end: datetime) -> float:
    if end <= start:
        return 0.0
    return round(calendar.business_minutes_between(start, end), 3)


class CaseFiles:
    """The case files a batch of events touches, loaded once and written back once."""

    def __init__(self, calendar: BusinessCalendar) -> None:
        self.calendar = calendar
        self.files: dict[UUID, CaseFile] = {}

    async def load(self, conn: Any, case_ids: Iterable[UUID]) -> None:
        wanted = [c for c in set(case_ids) if c not in self.files]
        if not wanted:
            return
        async with conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(
                f"SELECT {', '.join(REGISTRATION_COLUMNS)} FROM registrations "
                "WHERE feedback_id = ANY(%s)",
                (wanted,),
            )
            registrations = {row["feedback_id"]: row for row in await cursor.fetchall()}
            if not registrations:
                return
            found = list(registrations)
            await cursor.execute(
                f"SELECT {', '.join(FACT_COLUMNS)} FROM case_facts WHERE feedback_id = ANY(%s)",
                (found,),
            )
            facts = {row["feedback_id"]: row for row in await cursor.fetchall()}
            await cursor.execute(
                f"SELECT {', '.join(STINT_COLUMNS)} FROM department_stints "
                "WHERE feedback_id = ANY(%s) ORDER BY feedback_id, seq",
                (found,),
            )
            stints: dict[UUID, list[dict[str, Any]]] = {}
            for row in await cursor.fetchall():
                stints.setdefault(row["feedback_id"], []).append(row)
            await cursor.execute(
                f"SELECT {', '.join(CLOCK_COLUMNS)} FROM case_clocks WHERE feedback_id = ANY(%s)",
                (found,),
            )
            clocks: dict[UUID, dict[str, dict[str, Any]]] = {}
            for row in await cursor.fetchall():
                clocks.setdefault(row["feedback_id"], {})[row["clock_key"]] = row
        for case_id, registration in registrations.items():
            self.files[case_id] = CaseFile(
                registration=registration,
                facts=facts.get(case_id) or _facts_of(registration),
                stints=stints.get(case_id, []),
                clocks=clocks.get(case_id, {}),
            )

    def apply(self, event: CaseEvent) -> bool:
        """Fold one event into its case's file; False when it changes nothing."""
        # PostgreSQL would store a year-10000 instant that no reader could load again.
        problem = deadletters.unstorable_time(event)
        if problem:
            raise deadletters.Unapplicable(f"{type(event).__name__}: {problem}")
        existing = self.files.get(event.feedback_id)
        if isinstance(event, CaseRegistered):
            if existing is not None:
                return False
            self.files[event.feedback_id] = CaseFile.registered(event)
            return True
        if existing is None:  # a case whose registration never reached this model
            return False
        return existing.apply(event, self.calendar)

    async def save(self, conn: Any, *, bulk: bool = False) -> None:
        """Write every file back: one upsert per table for the whole batch (`bulk`: through
        COPY into a staging table, for the tens of thousands of rows of a rebuild)."""
        files = list(self.files.values())
        if not files:
            return
        upsert = _copy_upsert if bulk else _upsert
        await upsert(
            conn, "registrations", "feedback_id", REGISTRATION_COLUMNS,
            [f.registration for f in files],
        )  # fmt: skip
        await upsert(conn, "case_facts", "feedback_id", FACT_COLUMNS, [f.facts for f in files])
        stints = [s for f in files for s in f.stints if s["seq"] in f.changed_stints]
        await upsert(conn, "department_stints", "feedback_id, seq", STINT_COLUMNS, stints)
        clocks = [f.clocks[k] for f in files for k in f.changed_clocks]
        await upsert(conn, "case_clocks", "feedback_id, clock_key", CLOCK_COLUMNS, clocks)
        changed = [f for f in files if f.indexed != f.searched()]
        await search.index_cases(
            conn, [f.registration for f in changed if not f.text_indexed()], bulk=bulk
        )
        await search.index_filters(conn, [f.registration for f in changed if f.text_indexed()])
        new = [f.registration for f in files if f.registered_now]
        if new and not bulk:  # a rebuild marks every repeat once at the end
            await _mark_repeats(conn, new)
        for f in files:
            f.changed_stints.clear()
            f.changed_clocks.clear()
            f.registered_now = False
            f.indexed = f.searched()


def _facts_of(registration: dict[str, Any]) -> dict[str, Any]:
    """A fact row for a case registered before the fact table existed."""
    facts: dict[str, Any] = dict.fromkeys(FACT_COLUMNS)
    for name in FACT_COLUMNS:
        if name in registration:
            facts[name] = registration[name]
    facts.update(
        emotion=registration["classified_emotion"] or registration["emotion"],
        reopened_count=0,
        repeat=registration["related_feedback"] is not None,
        breached_count=len(registration["breached_clocks"]),
    )
    return facts


async def _upsert(
    conn: Any, table: str, key: str, columns: Sequence[str], rows: list[dict[str, Any]]
) -> None:
    if not rows:
        return
    updates = bulk.update_list(table, key, columns)
    placeholders = ", ".join(["%s"] * len(columns))
    statement = (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders}) "
        f"ON CONFLICT ({key}) DO UPDATE SET {updates}"
    )
    async with conn.cursor() as cursor:
        await cursor.executemany(
            statement,
            [
                tuple(Jsonb(row[c]) if c in JSON_COLUMNS else row[c] for c in columns)
                for row in rows
            ],
        )


async def _copy_upsert(
    conn: Any, table: str, key: str, columns: Sequence[str], rows: list[dict[str, Any]]
) -> None:
    await bulk.copy_upsert(
        conn, table, key, columns,
        [tuple(Jsonb(row[c]) if c in JSON_COLUMNS else row[c] for c in columns) for row in rows],
    )  # fmt: skip


async def mark_all_repeats(conn: Any) -> None:
    """Every repeat at once (a rebuild, whose workers cannot see each other's cases)."""
    await conn.execute(
        """
        UPDATE case_facts later SET repeat = true
        FROM case_facts earlier
        WHERE later.customer_ref = earlier.customer_ref
          AND later.feedback_id <> earlier.feedback_id
          AND earlier.received_at < later.received_at
          AND earlier.received_at >= later.received_at - %(window)s
          AND NOT later.repeat
        """,
        {"window": REPEAT_WINDOW},
    )


def _customer_lock_key(customer_ref: str) -> int:
    """A stable signed 64-bit advisory-lock key for a customer (same in every process)."""
    digest = hashlib.blake2b(f"repeat:{customer_ref}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def _mark_repeats(conn: Any, registrations: list[dict[str, Any]]) -> None:
    """Repeat = the same customer had another case received within the window before it.
    Both directions, so the order in which partitions deliver the two does not matter.
    Each half starts from these cases by key and finds the other side on the customer's
    index: one query with an OR over both sides scanned the whole table twice per slice
    (268 ms at 200,000 cases, against 5 ms).

    Two instances (one customer's cases are on different partitions) could each insert a
    case and mark before the other committed, neither seeing the other's: a lock per
    customer, held to commit and taken in one order, makes the second see the first."""
    customers = sorted({_customer_lock_key(r["customer_ref"]) for r in registrations})
    await conn.execute(
        "SELECT pg_advisory_xact_lock(key) FROM unnest(%s::bigint[]) AS key", (customers,)
    )
    case_ids = [r["feedback_id"] for r in registrations]
    await conn.execute(
        """
        UPDATE case_facts SET repeat = true
        WHERE NOT repeat AND feedback_id IN (
            SELECT later.feedback_id FROM case_facts later JOIN case_facts earlier
              ON earlier.customer_ref = later.customer_ref
             AND earlier.received_at < later.received_at
             AND earlier.received_at >= later.received_at - %(window)s
            WHERE later.feedback_id = ANY(%(ids)s)
            UNION
            SELECT later.feedback_id FROM case_facts earlier JOIN case_facts later
              ON later.customer_ref = earlier.customer_ref
             AND later.received_at > earlier.received_at
             AND later.received_at <= earlier.received_at + %(window)s
             AND earlier.received_at >= later.received_at - %(window)s
            WHERE earlier.feedback_id = ANY(%(ids)s))
        """,
        {"ids": case_ids, "window": REPEAT_WINDOW},
    )


async def apply_events(conn: Any, events: Sequence[CaseEvent], calendar: BusinessCalendar) -> int:
    """Apply events (in order) to the read models in the caller's transaction; returns
    how many changed something."""
    files = CaseFiles(calendar)
    await files.load(conn, (e.feedback_id for e in events))
    applied = sum(1 for e in events if files.apply(e))
    await files.save(conn)
    return applied
