"""What is told, to whom: case events (`feedback.events`, group `notifications`) become
notification rows, written in the transaction that stores the consumed Kafka position
(`kafka_positions.apply_slice`), so each event is planned exactly once; row ids derived
from the event make a replay of it write nothing new.

| event | who | template | channels |
|---|---|---|---|
| CaseRegistered | customer | customer_acknowledgement: number, category, "we will respond within <target> (by <due>)" once the first-response clock is known, else a generic line | the customer's contact (see below) |
| InformationRequested | customer | customer_information_request: what is missing | customer's contact |
| OwnerAssigned | the new owner | staff_assignment | inbox + e-mail/IM/SMS from the directory |
| ClockWarned | the owner (the event's, else the case's); the supervisors when nobody owns it | staff_clock_warning | staff |
| ClockBreached | the owner and the department's supervisors | staff_clock_breach | staff |
| EscalationRaised | the department's supervisors (`to_role` supervisor) or heads (head) | staff_escalation | staff |
| EscalationRequested | the department's supervisors | staff_escalation_request | staff |
| NoteAdded (visible to the customer) | customer | customer_progress: the note | customer's contact |
| CaseResolved | customer | customer_result: the result, and their confirmation key | customer's contact |
| CaseReopened | the department's supervisors | staff_reopened: follow it up | staff |
| callback appointment (customer) | - | - | when the callback events exist |

Facts kept per case (`notification_cases`) fill in what an event does not carry: the
customer's pseudonym (only CaseRegistered names it), category, priority, department, owner,
the first-response clock. FeedbackClassified, PriorityOverridden, FeedbackRouted,
SentToTriage, AssignmentDisputed, ClockStarted/ClockRecomputed (first_response) update them.

The acknowledgement waits up to `notify_ack_hold_s` for the first-response clock (and the
category): ClockStarted fills both into the waiting row and releases it at once.

A customer is reached by the channel they wrote in on where their contact has it: e-mail
for e-mail and web/app forms, SMS for phone, store, letter and callback, instant message
(their platform account) for WeChat, Weibo, Douyin and web chat; then the others in turn.
The first preference names the row (its `channel`); the one used is `sent_via`. Staff get
every channel the directory (config/notifications.yaml) gives them, and always the inbox.
Department supervisors and heads come from the directory too; a case not routed yet uses
its `default`.

Events older than `notify_max_event_age_s` tell nobody (a new consumer group starts at the
beginning of the topic); their facts are still kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from faststream.kafka import KafkaBroker
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from contracts import topics
from contracts.events import (
    AssignmentDisputed,
    CaseEvent,
    CaseRegistered,
    CaseReopened,
    CaseResolved,
    ClockBreached,
    ClockRecomputed,
    ClockStarted,
    ClockWarned,
    EscalationRaised,
    EscalationRequested,
    FeedbackClassified,
    FeedbackRouted,
    InformationRequested,
    NoteAdded,
    OwnerAssigned,
    PriorityOverridden,
    SentToTriage,
    case_event_adapter,
)
from services.common import deadletters, kafka_positions
from services.common.bus import consume_exactly_once
from services.common.settings import Settings
from services.notifications import store
from services.notifications.directory import StaffDirectory
from services.notifications.store import Planned

log = logging.getLogger(__name__)

GROUP = "notifications"
CONSUMER = "notifications"
CUSTOMER_LANGUAGE = "zh"
ACKNOWLEDGEMENT = "customer_acknowledgement"

# The customer's channels in order of preference, by the channel they wrote in on.
ROUTES: dict[str, tuple[str, ...]] = {
    "email": ("email", "sms", "im"),
    "web_form": ("email", "sms", "im"),
    "phone": ("sms", "email", "im"),
    "store": ("sms", "email", "im"),
    "letter": ("sms", "email", "im"),
    "callback": ("sms", "email", "im"),
    "wechat": ("im", "sms", "email"),
    "weibo": ("im", "sms", "email"),
    "douyin": ("im", "sms", "email"),
    "web_chat": ("im", "email", "sms"),
}
DEFAULT_ROUTES = ("email", "sms", "im")
STAFF_CHANNELS = ("email", "im", "sms")
# Events that tell someone: they read the case facts even when they change none.
NOTIFYING = (
    CaseRegistered,
    InformationRequested,
    NoteAdded,
    CaseResolved,
    CaseReopened,
    OwnerAssigned,
    ClockWarned,
    ClockBreached,
    EscalationRaised,
    EscalationRequested,
)
CASE_FACTS = (
    "feedback_number, customer_ref, channel, category, priority, department, owner, "
    "first_response_due, first_response_target"
)


@dataclass(frozen=True)
class Told:
    """What a notification is about: the case (or callback task), and which of its facts
    (the version), so that telling it again writes nothing new."""

    feedback_id: UUID
    feedback_number: str
    version: int
    event_type: str

    @classmethod
    def of(cls, event: CaseEvent) -> Told:
        return cls(event.feedback_id, event.feedback_number, event.version, type(event).__name__)

    def fields(self) -> dict[str, Any]:
        return {
            "feedback_id": self.feedback_id,
            "feedback_number": self.feedback_number,
            "event_version": self.version,
            "event_type": self.event_type,
        }


class Planner:
    """Turns one case event into notification rows (and keeps the case facts)."""

    def __init__(
        self, settings: Settings, directory: StaffDirectory, enabled: Iterable[str]
    ) -> None:
        self.settings = settings
        self.directory = directory
        # Channels with an adapter configured: no row is planned for one that has none.
        self.enabled = frozenset(enabled) | {"inbox"}
        if not self.enabled & {"email", "sms", "im"}:
            log.warning("no e-mail, SMS or IM adapter configured: customers are not notified")

    async def apply_record(self, conn: AsyncConnection[Any], record: Any) -> None:
        """One consumer record (the isolation path: a poison record alone); raises
        `ValueError` (a dead letter) for one that can never be applied."""
        await self.apply_records(conn, [record])

    async def apply_records(self, conn: AsyncConnection[Any], records: list[Any]) -> None:
        """A partition slice's records, in offset order (the fast path); raises as
        `apply_record` does if any of them cannot be applied."""
        events: list[CaseEvent] = []
        for record in records:
            event = case_event_adapter.validate_json(record.value or b"")
            problem = deadletters.unstorable_time(event)
            if problem:
                raise deadletters.Unapplicable(f"{type(event).__name__}: {problem}")
            events.append(event)
        await self.apply_events(conn, events)

    async def apply(self, conn: AsyncConnection[Any], event: CaseEvent) -> int:
        """Plan what `event` tells; returns how many rows are new."""
        return await self.apply_events(conn, [event])

    async def apply_events(self, conn: AsyncConnection[Any], events: list[CaseEvent]) -> int:
        """Plan what `events` (in order) tell; returns how many rows are new.

        The slice is folded in memory, as applying its events one by one would leave the
        tables, and written back with one statement per table: the cases' facts read once,
        the waiting acknowledgements patched once, the new rows inserted once, the facts
        written once."""
        oldest = datetime.now(UTC) - timedelta(seconds=self.settings.notify_max_event_age_s)
        changes = [(event, _Change.of(event)) for event in events]
        # Neither a fact nor a message: such an event writes nothing (not even the case).
        relevant = [(e, c) for e, c in changes if c.facts or isinstance(e, NOTIFYING)]
        if not relevant:
            return 0
        cases = await _load_cases(conn, {e.feedback_id for e, _ in relevant})
        patches: dict[UUID, dict[str, Any]] = {}
        released: set[UUID] = set()
        planned: dict[UUID, Planned] = {}
        # Acknowledgements planned in this slice, by case: later patches reach them here
        # (earlier ones are in the facts they were planned from).
        waiting: dict[UUID, list[UUID]] = {}
        for event, change in relevant:
            case = cases.setdefault(event.feedback_id, dict.fromkeys(_FACT_NAMES))
            case["feedback_number"] = event.feedback_number
            case.update(change.facts)
            if change.ack_patch:
                patches.setdefault(event.feedback_id, {}).update(change.ack_patch)
                if change.release:
                    released.add(event.feedback_id)
                for row_id in waiting.get(event.feedback_id, ()):
                    row = planned[row_id]
                    planned[row_id] = row.model_copy(
                        update={
                            "payload": {**row.payload, **change.ack_patch},
                            # least(next attempt, now): due at once.
                            "hold_s": 0.0 if change.release else row.hold_s,
                        }
                    )
            if event.occurred_at < oldest:
                continue
            for row in self.plan(event, case):
                if row.id in planned:
                    continue  # the same event twice in the slice: the first one stands
                planned[row.id] = row
                if row.template == ACKNOWLEDGEMENT:
                    waiting.setdefault(row.feedback_id, []).append(row.id)
        # Acknowledgements written before this slice take every patch of it (and first:
        # a row this slice plans again, already written, is left alone by the insert).
        await _refresh_acknowledgements(conn, patches, released)
        created = await store.insert(conn, list(planned.values())) if planned else 0
        await _save_cases(conn, cases)
        return created

    def plan(self, event: CaseEvent, case: dict[str, Any]) -> list[Planned]:
        common = {
            "number": event.feedback_number,
            "category": case.get("category"),
            "priority": case.get("priority"),
            "department": event.department or case.get("department"),
            "owner": case.get("owner"),
        }
        department = common["department"]
        match event:
            case CaseRegistered():
                due = case.get("first_response_due")
                payload = {
                    **common,
                    "first_response_due": due.isoformat() if due else None,
                    "first_response_target": case.get("first_response_target"),
                }
                # Known already (the clock came first): no reason to wait.
                hold = 0.0 if due else self.settings.notify_ack_hold_s
                return self._customer(event, case, ACKNOWLEDGEMENT, payload, hold)
            case InformationRequested():
                payload = {**common, "missing": list(event.missing)}
                return self._customer(event, case, "customer_information_request", payload)
            case NoteAdded(visible_to_customer=True):
                # The note was masked when it was written; it is what the owner told them.
                return self._customer(
                    event, case, "customer_progress", {**common, "text": event.text}
                )
            case CaseResolved():
                payload = {**common, "result": event.result, "summary": event.summary}
                return self._customer(event, case, "customer_result", payload)
            case CaseReopened():
                # The supervisors follow a reopened case up (the customer was not satisfied,
                # or a supervisor reopened it).
                payload = {**common, "priority": event.priority.value, "reason": event.reason}
                return self._staff(
                    event,
                    self.directory.supervisors(department),
                    "staff_reopened",
                    payload,
                    "supervisor",
                )
            case OwnerAssigned():
                payload = {
                    **common,
                    "owner": event.owner,
                    "by": event.by,
                    "reason": event.reason,
                    "previous_owner": event.previous_owner,
                }
                return self._staff(event, [event.owner], "staff_assignment", payload, "owner")
            case ClockWarned():
                owner = event.owner or case.get("owner")
                payload = {
                    **common,
                    "owner": owner,
                    "clock": event.clock,
                    "subject": event.subject,
                    "due_at": event.due_at.isoformat(),
                }
                if owner:
                    return self._staff(event, [owner], "staff_clock_warning", payload, "owner")
                supervisors = self.directory.supervisors(department)
                return self._staff(event, supervisors, "staff_clock_warning", payload, "supervisor")
            case ClockBreached():
                owner = event.owner or case.get("owner")
                payload = {
                    **common,
                    "owner": owner,
                    "clock": event.clock,
                    "subject": event.subject,
                    "due_at": event.due_at.isoformat(),
                }
                rows = self._staff(event, [owner] if owner else [], "staff_clock_breach",
                                   payload, "owner")  # fmt: skip
                return rows + self._staff(
                    event,
                    self.directory.supervisors(department),
                    "staff_clock_breach",
                    payload,
                    "supervisor",
                )
            case EscalationRaised():
                payload = {
                    **common,
                    "level": event.level,
                    "to_role": event.to_role,
                    "reason": event.reason,
                    "clock": event.clock,
                }
                recipients = (
                    self.directory.heads(department)
                    if event.to_role == "head"
                    else self.directory.supervisors(department)
                )
                return self._staff(event, recipients, "staff_escalation", payload, event.to_role)
            case EscalationRequested():
                payload = {
                    **common,
                    "by": event.by,
                    "reason": event.reason,
                    "support_needed": event.support_needed,
                }
                return self._staff(
                    event,
                    self.directory.supervisors(department),
                    "staff_escalation_request",
                    payload,
                    "supervisor",
                )
        return []

    def _customer(
        self,
        event: CaseEvent,
        case: dict[str, Any],
        template: str,
        payload: dict[str, Any],
        hold_s: float = 0.0,
    ) -> list[Planned]:
        customer = case.get("customer_ref")
        if not customer:
            # Only CaseRegistered names the customer; without it there is no one to tell.
            raise deadletters.Unapplicable(
                f"{type(event).__name__}: the case's registration was never seen here, "
                "so its customer is unknown"
            )
        return self.customer_rows(
            Told.of(event), customer, case.get("channel"), template, payload, hold_s
        )

    def customer_rows(
        self,
        told: Told,
        customer: str,
        channel: str | None,
        template: str,
        payload: dict[str, Any],
        hold_s: float = 0.0,
    ) -> list[Planned]:
        """The row telling a customer (by pseudonym), over the first configured route of
        the channel they wrote in by."""
        preferred = ROUTES.get(str(channel), DEFAULT_ROUTES)
        routes = [r for r in preferred if r in self.enabled]
        if not routes:
            return []  # said once at start
        return [
            Planned(
                **told.fields(),
                audience="customer",
                recipient=customer,
                channel=routes[0],
                template=template,
                language=CUSTOMER_LANGUAGE,
                payload={**payload, "routes": routes},
                hold_s=hold_s,
            )
        ]

    def _staff(
        self,
        event: CaseEvent,
        recipients: Iterable[str],
        template: str,
        payload: dict[str, Any],
        role: str,
    ) -> list[Planned]:
        return self.staff_rows(Told.of(event), recipients, template, payload, role)

    def staff_rows(
        self,
        told: Told,
        recipients: Iterable[str],
        template: str,
        payload: dict[str, Any],
        role: str,
    ) -> list[Planned]:
        """Rows telling staff: the inbox, and each configured channel they have an address on."""
        rows: list[Planned] = []
        for recipient in dict.fromkeys(recipients):
            channels = ["inbox"] + [
                c
                for c in STAFF_CHANNELS
                if c in self.enabled and self.directory.address(recipient, c)
            ]
            rows += [
                Planned(
                    **told.fields(),
                    audience="staff",
                    recipient=recipient,
                    channel=channel,
                    template=template,
                    language=self.directory.language_of(recipient),
                    payload={**payload, "role": role},
                )
                for channel in channels
            ]
        return rows


@dataclass(frozen=True)
class _Change:
    """What one event changes in its case's facts, and in a waiting acknowledgement."""

    facts: dict[str, Any]
    ack_patch: dict[str, Any]
    release: bool

    @classmethod
    def of(cls, event: CaseEvent) -> _Change:
        """Events of one case arrive in order (one partition, keyed by the case), so the
        latest write is the latest fact; a replay passes through older values and ends
        where it was."""
        match event:
            case CaseRegistered(registration=r):
                return cls({"customer_ref": r.customer_ref, "channel": r.channel.value}, {}, False)
            case FeedbackClassified(classification=c):
                facts = {"category": c.category, "priority": c.priority.value}
                return cls(facts, dict(facts), False)
            case PriorityOverridden():
                return cls({"priority": event.priority.value}, {}, False)
            case FeedbackRouted():
                return cls({"department": event.department, "owner": None}, {}, False)
            case SentToTriage() | AssignmentDisputed():
                return cls({"owner": None}, {}, False)
            case OwnerAssigned():
                return cls({"owner": event.owner}, {}, False)
            case ClockStarted(clock="first_response") | ClockRecomputed(clock="first_response"):
                return cls(
                    {"first_response_due": event.due_at, "first_response_target": event.target},
                    {
                        "first_response_due": event.due_at.isoformat(),
                        "first_response_target": event.target,
                    },
                    True,
                )
        return cls({}, {}, False)


_FACT_NAMES = tuple(name.strip() for name in CASE_FACTS.split(","))
# The facts' column types, for writing a slice's cases back through unnest.
_FACT_TYPES = {"first_response_due": "timestamptz"}


async def _load_cases(
    conn: AsyncConnection[Any], case_ids: set[UUID]
) -> dict[UUID, dict[str, Any]]:
    """The facts of these cases as stored (a case not seen yet is absent)."""
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            f"SELECT feedback_id, {CASE_FACTS} FROM notification_cases WHERE feedback_id = ANY(%s)",
            (list(case_ids),),
        )
        return {row.pop("feedback_id"): row for row in await cursor.fetchall()}


async def _save_cases(conn: AsyncConnection[Any], cases: dict[UUID, dict[str, Any]]) -> None:
    """Write the slice's cases back, one statement (each row as the slice left it)."""
    if not cases:
        return
    arrays = [f"%s::{_FACT_TYPES.get(name, 'text')}[]" for name in _FACT_NAMES]
    updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in _FACT_NAMES)
    await conn.execute(
        f"INSERT INTO notification_cases (feedback_id, {CASE_FACTS}, updated_at) "
        f"SELECT *, now() FROM unnest(%s::uuid[], {', '.join(arrays)}) "
        f"ON CONFLICT (feedback_id) DO UPDATE SET {updates}, updated_at = now()",
        (list(cases), *([case[name] for case in cases.values()] for name in _FACT_NAMES)),
    )


async def _refresh_acknowledgements(
    conn: AsyncConnection[Any], patches: dict[UUID, dict[str, Any]], released: set[UUID]
) -> None:
    """An acknowledgement still waiting (never claimed) takes what became known, and once
    the first-response clock is known (`released`) leaves at once."""
    if not patches:
        return
    await conn.execute(
        "UPDATE notifications n SET payload = n.payload || p.patch, next_attempt_at = "
        "CASE WHEN p.release THEN least(n.next_attempt_at, now()) ELSE n.next_attempt_at END "
        "FROM unnest(%s::uuid[], %s::jsonb[], %s::boolean[]) AS p(feedback_id, patch, release) "
        "WHERE n.feedback_id = p.feedback_id AND n.template = %s AND n.state = 'pending' "
        "AND n.attempts = 0",
        (
            list(patches),
            [Jsonb(patch) for patch in patches.values()],
            [case_id in released for case_id in patches],
            ACKNOWLEDGEMENT,
        ),
    )


def register_notifications(
    broker: KafkaBroker,
    settings: Settings,
    pool: AsyncConnectionPool,
    planner: Planner,
    planned: Callable[[], None],
) -> None:
    """The consumer; `planned` is called after each batch committed (wakes the sender)."""

    notifications = kafka_positions.SliceConsumer(
        CONSUMER, planner.apply_record, planner.apply_records
    )
    consume_exactly_once(
        broker, settings, pool, topics.FEEDBACK_EVENTS, GROUP, [notifications], after_batch=planned
    )
