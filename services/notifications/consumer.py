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
from faststream.kafka.annotations import KafkaMessage
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
    DeadLetter,
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
from services.common.bus import batch_subscriber, partition_slices, publish
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
        """One consumer record; raises `ValueError` (a dead letter) for one that can
        never be applied."""
        event = case_event_adapter.validate_json(record.value or b"")
        problem = deadletters.unstorable_time(event)
        if problem:
            raise deadletters.Unapplicable(f"{type(event).__name__}: {problem}")
        await self.apply(conn, event)

    async def apply(self, conn: AsyncConnection[Any], event: CaseEvent) -> int:
        """Plan what `event` tells; returns how many rows are new."""
        case = await self._remember(conn, event)
        if event.occurred_at < datetime.now(UTC) - timedelta(
            seconds=self.settings.notify_max_event_age_s
        ):
            return 0
        rows = self.plan(event, case)
        return await store.insert(conn, rows) if rows else 0

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

    async def _remember(self, conn: AsyncConnection[Any], event: CaseEvent) -> dict[str, Any]:
        """Update the case facts this event changes; returns them as they now stand.

        Events of one case arrive in order (one partition, keyed by the case), so the
        latest write is the latest fact; a replay passes through older values and ends
        where it was."""
        facts: dict[str, Any] = {}
        ack_patch: dict[str, Any] = {}
        release = False
        match event:
            case CaseRegistered(registration=r):
                facts = {"customer_ref": r.customer_ref, "channel": r.channel.value}
            case FeedbackClassified(classification=c):
                facts = {"category": c.category, "priority": c.priority.value}
                ack_patch = {"category": c.category, "priority": c.priority.value}
            case PriorityOverridden():
                facts = {"priority": event.priority.value}
            case FeedbackRouted():
                facts = {"department": event.department, "owner": None}
            case SentToTriage() | AssignmentDisputed():
                facts = {"owner": None}
            case OwnerAssigned():
                facts = {"owner": event.owner}
            case ClockStarted(clock="first_response") | ClockRecomputed(clock="first_response"):
                facts = {"first_response_due": event.due_at, "first_response_target": event.target}
                ack_patch = {
                    "first_response_due": event.due_at.isoformat(),
                    "first_response_target": event.target,
                }
                release = True
        if not facts and not isinstance(event, NOTIFYING):
            return {}  # neither a fact nor a message: nothing to write
        names = ["feedback_number", *facts]
        updates = ", ".join(f"{n} = EXCLUDED.{n}" for n in names)
        async with conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(
                f"INSERT INTO notification_cases (feedback_id, {', '.join(names)}) "
                f"VALUES (%s, {', '.join(['%s'] * len(names))}) "
                f"ON CONFLICT (feedback_id) DO UPDATE SET {updates}, updated_at = now() "
                f"RETURNING {CASE_FACTS}",
                (event.feedback_id, event.feedback_number, *facts.values()),
            )
            case = await cursor.fetchone()
        if ack_patch:
            await _refresh_acknowledgement(conn, event, ack_patch, release)
        return dict(case or {})


async def _refresh_acknowledgement(
    conn: AsyncConnection[Any], event: CaseEvent, patch: dict[str, Any], release: bool
) -> None:
    """An acknowledgement still waiting (never claimed) takes what became known, and with
    `release` leaves at once."""
    await conn.execute(
        "UPDATE notifications SET payload = payload || %s, next_attempt_at = CASE WHEN %s "
        "THEN least(next_attempt_at, now()) ELSE next_attempt_at END "
        "WHERE feedback_id = %s AND template = %s AND state = 'pending' AND attempts = 0",
        (Jsonb(patch), release, event.feedback_id, ACKNOWLEDGEMENT),
    )


def register_notifications(
    broker: KafkaBroker,
    settings: Settings,
    pool: AsyncConnectionPool,
    planner: Planner,
    planned: Callable[[], None],
) -> None:
    """The consumer; `planned` is called after each batch committed (wakes the sender)."""

    async def publish_dead_letter(letter: DeadLetter) -> None:
        await publish(broker, settings, letter)

    @batch_subscriber(broker, settings, topics.FEEDBACK_EVENTS, GROUP)
    async def on_case_events(body: list[Any], msg: KafkaMessage) -> None:
        for records in partition_slices(msg).values():
            await kafka_positions.apply_slice(
                pool, CONSUMER, records, planner.apply_record, publish_dead_letter
            )
        planned()
