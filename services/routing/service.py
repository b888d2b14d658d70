"""Routing use cases: new feedback becomes a classified, routed, assigned case; agents and
supervisors accept, dispute, reassign, add co-handlers, reclassify and override priority.

Each use case loads the case, asks it to decide, and records the result in the worklist
and the case store. Feedback from Kafka arrives in partition slices (see consumer.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError
from pydantic import ValidationError

from contracts.codes import FeedbackType, Priority
from contracts.events import CustomerCorrespondence, DeadLetter, FeedbackReceived
from services.cases.domain import Case, CaseError, CaseStatus
from services.cases.store import CaseConflict, CaseStore, KafkaPosition
from services.common import deadletters
from services.routing.assignment import PRIORITY_RANK, Agent, AgentRoster, language_of
from services.routing.classifier import Classifier, Decision, FeedbackText, History
from services.routing.worklist import Assignment, CaseRow, Worklist

log = logging.getLogger(__name__)

GROUP = "routing"
CORRESPONDENCE_GROUP = "routing-correspondence"
ROUTING = "routing"  # the actor name of automatic decisions


class NotFound(LookupError):
    pass


class CaseNotStoredYet(LookupError):
    """Correspondence arrived before its case was stored; the slice is retried."""


class Refused(ValueError):
    """A command the case or the worklist refuses; the message says why."""


@dataclass
class Slice:
    """A partition slice of received feedback, prepared for one transaction."""

    consumer: str
    topic: str
    partition: int
    next_offset: int | None = None
    cases: dict[UUID, Case] = field(default_factory=dict)
    # The worklist rows of the slice's new cases, written in commit()'s transaction.
    rows: list[CaseRow] = field(default_factory=list)
    # What this slice sets aside, each with the raw record it was read from.
    dead_letters: list[tuple[DeadLetter, bytes]] = field(default_factory=list)


class RoutingService:
    def __init__(
        self,
        store: CaseStore,
        worklist: Worklist,
        classifier: Classifier,
        roster: AgentRoster,
    ) -> None:
        self.store = store
        self.worklist = worklist
        self.classifier = classifier
        self.weights = {p.value: w for p, w in roster.workload_weights.items()}
        self.repeat_window = timedelta(days=classifier.book.priority.repeat_window_days)

    # -- new feedback from Kafka ------------------------------------------------------

    def _start(
        self, group: str, topic: str, partition: int, records: list[Any]
    ) -> tuple[Slice, list[Any]]:
        """A slice of this group's work, and the records past the position it has stored
        (a redelivered record is not processed again)."""
        work = Slice(group, topic, partition)
        next_offset = self.store.next_offset(group, topic, partition)
        unseen = [r for r in records if r.offset >= next_offset]
        if unseen:
            work.next_offset = unseen[-1].offset + 1
        return work, unseen

    def prepare(self, topic: str, partition: int, records: list[Any]) -> Slice:
        work, unseen = self._start(GROUP, topic, partition, records)
        if not unseen:
            return work
        received: list[FeedbackReceived] = []
        for record in unseen:
            try:
                message = FeedbackReceived.model_validate_json(record.value or b"")
            except ValidationError as error:
                work.dead_letters.append(_dead_letter(record, error))
                continue
            # A time no reader could load back (year 10000 in UTC) must not become a case.
            problem = deadletters.unstorable_time(message)
            if problem:
                work.dead_letters.append(
                    _dead_letter(record, deadletters.Unapplicable(problem), feedback=message)
                )
                continue
            received.append(message)
        already = self.store.existing([r.feedback_id for r in received])
        fresh: list[FeedbackReceived] = []
        for message in received:
            # The same feedback published twice (an intake retry) is still one case.
            if message.feedback_id not in already and all(
                m.feedback_id != message.feedback_id for m in fresh
            ):
                fresh.append(message)
        if not fresh:
            return work
        now = datetime.now(UTC)
        history = self.worklist.recent_categories(
            (m.customer_ref for m in fresh),
            now - self.repeat_window,
            (m.feedback_id for m in fresh),
        )
        rows: list[CaseRow] = []
        for message in fresh:
            decision = self.classifier.classify(
                FeedbackText(
                    message.description,
                    message.channel.value,
                    message.customer_tier,
                    message.customer_ref,
                ),
                History(frozenset(history.get(message.customer_ref, set()))),
            )
            if decision.category:
                history.setdefault(message.customer_ref, set()).add(decision.category)
            case = Case.register(message.feedback_id, message)
            self._decide_route(case, decision, by=ROUTING, missing=self._missing(message, decision))
            work.cases[case.id] = case
            rows.append(self._row(case, message, decision))
        work.rows = rows
        return work

    def commit(self, work: Slice) -> None:
        """One transaction for the slice: the new cases' worklist rows, the owners drained
        to them, their events and the position reached. A crash or a refusal anywhere leaves
        nothing behind (no worklist row without its case, taking an agent's capacity)."""
        assert work.next_offset is not None
        position = KafkaPosition(work.consumer, work.topic, work.partition, work.next_offset)

        def route(conn: Any) -> list[Case]:
            on_record = self.worklist.enter(work.rows, conn)
            for feedback_id, row in on_record.items():
                # A feedback published twice (intake retry) keeps the owner it got first.
                if row.state == "owned" and row.owner and feedback_id in work.cases:
                    case = work.cases[feedback_id]
                    if case.owner != row.owner:
                        case.assign(row.owner, ROUTING, "assigned before a restart")
            departments = {r.department for r in work.rows if r.state == "queued" and r.department}
            for assignment in self.worklist.drain(departments, conn):
                drained = work.cases.get(assignment.feedback_id)
                if drained is not None:
                    drained.assign(assignment.owner, ROUTING, assignment.reason)
                # Owners drained to earlier cases are recorded by reconcile().
            self.worklist.mark_announced((c.id for c in work.cases.values() if c.owner), conn)
            return list(work.cases.values())

        self.store.record_with(route, position)

    def _assign_drained(self, work: Slice, departments: set[str]) -> None:
        """Give free owners to queued cases of these departments; the cases of this slice
        record their owner now, others through reconcile()."""
        for assignment in self.worklist.drain(departments):
            drained = work.cases.get(assignment.feedback_id)
            if drained is not None:
                drained.assign(assignment.owner, ROUTING, assignment.reason)

    def set_aside(self, group: str, record: Any, error: BaseException) -> Slice:
        """A slice of one record that cannot be processed: its dead letter and the
        position past it (nothing else of it is stored)."""
        work = Slice(group, record.topic, record.partition, next_offset=record.offset + 1)
        try:  # name the feedback when the record says which (see `_feedback_set_aside`)
            feedback: FeedbackReceived | None = FeedbackReceived.model_validate_json(
                record.value or b""
            )
        except ValidationError:
            feedback = None
        work.dead_letters.append(
            _dead_letter(record, error, group, feedback if group == GROUP else None)
        )
        return work

    def keep_dead_letters(self, work: Slice) -> int:
        """Record the slice's dead letters (once each); returns how many are new.

        Not in the position's transaction (the event store owns that one): the fixed ids
        make a repeat after a crash record nothing."""
        if not work.dead_letters:
            return 0
        with self.worklist.pool.connection() as conn, conn.transaction():
            return sum(
                deadletters.keep_sync(conn, letter, payload)
                for letter, payload in work.dead_letters
            )

    def _feedback_set_aside(self, feedback_id: UUID) -> bool:
        """Whether routing set this feedback aside as a dead letter (so its case never
        comes, and correspondence about it must not wait for it)."""
        with self.worklist.pool.connection() as conn:
            row = conn.execute(
                "SELECT 1 FROM deadletters WHERE source = %s AND metadata->>'feedback_id' = %s "
                "LIMIT 1",
                (GROUP, str(feedback_id)),
            ).fetchone()
        return row is not None

    def _missing(self, message: FeedbackReceived, decision: Decision) -> list[str]:
        if decision.priority == Priority.urgent or decision.needs_triage or not decision.category:
            return []  # urgent feedback never waits for paperwork; triage decides first
        wanted = self.classifier.book.mandatory_information.get(decision.category, ())
        return [name for name in wanted if not getattr(message, name, None)]

    def _decide_route(self, case: Case, decision: Decision, by: str, missing: list[str]) -> None:
        classification = decision.as_dict()
        case.classify(classification, by)
        if missing:
            case.request_information(missing)
        elif decision.needs_triage:
            case.send_to_triage(
                f"confidence {decision.confidence:.2f} below {self.classifier.book.confidence_threshold}"
            )
        else:
            case.route(decision.department, _route_reason(classification))

    def _row(self, case: Case, message: FeedbackReceived, decision: Decision) -> CaseRow:
        return CaseRow(
            feedback_id=case.id,
            feedback_number=case.feedback_number,
            customer_ref=message.customer_ref,
            category=decision.category,
            priority=decision.priority.value,
            weight=self.weights[decision.priority.value],
            language=language_of(message.description),
            vip=message.customer_tier == "vip",
            registered_at=message.registered_at,
            state={CaseStatus.triage: "triage", CaseStatus.pending_info: "pending_info"}.get(
                case.status, "queued"
            ),
            department=case.department or decision.department,
        )

    # -- customers writing again -----------------------------------------------------

    def prepare_correspondence(self, topic: str, partition: int, records: list[Any]) -> Slice:
        """Customer messages about existing cases: kept with the case; supplied
        information completes a pending registration, which is then routed."""
        work, unseen = self._start(CORRESPONDENCE_GROUP, topic, partition, records)
        if not unseen:
            return work
        resumed: list[Case] = []
        for record in unseen:
            try:
                message = CustomerCorrespondence.model_validate_json(record.value or b"")
            except ValidationError as error:
                work.dead_letters.append(_dead_letter(record, error, CORRESPONDENCE_GROUP))
                continue
            try:
                case = work.cases.get(message.feedback_id) or self.store.get_case(
                    message.feedback_id
                )
            except AggregateNotFoundError as error:
                if self._feedback_set_aside(message.feedback_id):
                    reason = f"feedback {message.feedback_number} was set aside as a dead letter"
                    work.dead_letters.append(
                        _dead_letter(record, deadletters.Unapplicable(reason), CORRESPONDENCE_GROUP)
                    )
                    continue
                # Intake only accepts correspondence for feedback it registered, so the case
                # is on its way (the customer wrote right after registering): try again.
                raise CaseNotStoredYet(message.feedback_number) from error
            work.cases[case.id] = case
            case.receive_correspondence(
                str(message.correspondence_id),
                message.channel.value,
                message.channel_reference,
                message.text,
                [e.model_dump(mode="json") for e in message.evidence],
            )
            # Asked at registration: now it can be routed. Asked while handling: its owner
            # goes on (the case is back in progress, nothing to route).
            if (
                case.status == CaseStatus.pending_info
                and case.supply_information(message.supplied)
                and _status(case) == CaseStatus.registered
            ):
                resumed.append(case)
        for case in resumed:
            assert case.classification is not None
            department = str(case.classification["department"])
            case.route(department, "information supplied: " + _route_reason(case.classification))
            self.worklist.set_state(case.id, "queued", department=department)
        self._assign_drained(work, {str(c.department) for c in resumed})
        return work

    # -- assignments made outside a slice ---------------------------------------------

    def reconcile(self) -> int:
        """Record owners the worklist chose whose cases have not recorded them yet."""
        recorded = 0
        for assignment in self.worklist.unannounced():
            try:
                case = self.store.get_case(assignment.feedback_id)
            except AggregateNotFoundError:
                continue  # not in the store yet: its own slice records the owner
            if case.owner != assignment.owner:
                case.assign(assignment.owner, ROUTING, assignment.reason)
                try:
                    self.store.save(case)
                except IntegrityError:
                    continue  # another instance recorded it first
            self.worklist.mark_announced([assignment.feedback_id])
            recorded += 1
        return recorded

    def _record_assignments(self, assignments: list[Assignment]) -> None:
        for assignment in assignments:
            self._change(
                assignment.feedback_id,
                lambda case, a=assignment: case.assign(a.owner, ROUTING, a.reason),  # type: ignore[misc]
            )
            self.worklist.mark_announced([assignment.feedback_id])

    # -- commands from agents and supervisors -----------------------------------------

    def _load(self, feedback_number: str) -> tuple[Case, CaseRow]:
        row = self._routed_row(feedback_number)
        return self.store.get_case(row.feedback_id), row

    def _change(self, case_id: UUID, decide: Callable[[Case], None]) -> Case:
        """Load the case, let it decide, store what it decided. Other writers (the sla
        service, another instance) may append meanwhile: then it decides again on the
        newer case (its decisions depend only on its state)."""
        try:
            return self.store.change(case_id, decide)
        except CaseError as error:
            raise Refused(str(error)) from error
        except CaseConflict as error:
            raise Refused(str(error)) from error

    def _routed_row(self, feedback_number: str) -> CaseRow:
        row = self.worklist.find(feedback_number)
        if row is None:
            raise NotFound(f"no routed feedback {feedback_number}")
        return row

    def request_escalation(
        self, feedback_number: str, agent_id: str, reason: str, support_needed: str | None
    ) -> Case:
        """The owner asks for escalation before a breach (升级申请)."""
        row = self._routed_row(feedback_number)
        return self._change(
            row.feedback_id, lambda case: case.request_escalation(agent_id, reason, support_needed)
        )

    def accept(self, feedback_number: str, agent_id: str) -> Case:
        row = self._routed_row(feedback_number)
        return self._change(row.feedback_id, lambda case: case.accept(agent_id))

    def dispute(self, feedback_number: str, agent_id: str, reason: str) -> Case:
        row = self._routed_row(feedback_number)
        case = self._change(row.feedback_id, lambda case: case.dispute(agent_id, reason))
        self.worklist.set_state(row.feedback_id, "disputed", owner=None)
        # The freed capacity may let a queued case through.
        if row.department:
            self._record_assignments(self.worklist.drain([row.department]))
        return case

    def assign(self, feedback_number: str, agent_id: str, by: str, reason: str) -> Case:
        case, row = self._load(feedback_number)
        agent = self.worklist.agent(agent_id)
        if agent is None:
            raise Refused(f"no agent {agent_id}")
        if agent.department != case.department:
            raise Refused(
                f"{agent_id} works in {agent.department}, the case is {case.department}'s"
            )
        if not reason.strip():
            raise Refused("a reassignment needs a reason")
        if not self.worklist.set_owner(row.feedback_id, agent_id, agent):
            raise Refused(f"{agent_id} has no capacity left for this case")
        case = self._change(row.feedback_id, lambda case: case.assign(agent_id, by, reason))
        self.worklist.mark_announced([row.feedback_id])
        if row.owner and row.owner != agent_id and row.department:
            self._record_assignments(self.worklist.drain([row.department]))
        return case

    def add_co_handler(
        self, feedback_number: str, department: str, duty: str, due_at: datetime, by: str
    ) -> Case:
        if department not in self.classifier.book.departments:
            raise Refused(f"unknown department {department}")
        row = self._routed_row(feedback_number)
        return self._change(
            row.feedback_id, lambda case: case.add_co_handler(department, duty, due_at, by)
        )

    def reclassify(
        self,
        feedback_number: str,
        by: str,
        reason: str,
        category: str,
        subcategory: str,
        feedback_type: FeedbackType | None = None,
    ) -> Case:
        book = self.classifier.book
        if (
            category not in book.categories
            or subcategory not in book.categories[category].subcategories
        ):
            raise Refused(f"unknown category {category}/{subcategory}")
        case, row = self._load(feedback_number)
        previous = dict(case.classification or {})
        kind = feedback_type.value if feedback_type else str(previous.get("type", "complaint"))
        department = book.department_for(category, subcategory)
        decision = {
            **previous,
            "type": kind,
            "category": category,
            "subcategory": subcategory,
            "department": department,
            "confidence": 1.0,
            "needs_triage": False,
            "rules": [f"manual:{by}"],
        }
        old_department = case.department

        def reclassify_and_route(case: Case) -> None:
            case.reclassify(decision, by, reason)
            case.route(department, f"reclassified by {by}: {reason}")

        case = self._change(row.feedback_id, reclassify_and_route)
        moved = old_department != department or row.state in ("triage", "disputed")
        if moved:
            self.worklist.set_state(
                row.feedback_id, "queued", department=department, category=category, owner=None
            )
            assignments = self.worklist.drain(
                [department] + ([row.department] if row.department else [])
            )
            self._record_assignments(assignments)
        else:
            self.worklist.set_state(row.feedback_id, row.state, category=category)
        return self.store.get_case(case.id)

    def override_priority(
        self, feedback_number: str, priority: Priority, by: str, reason: str
    ) -> Case:
        row = self._routed_row(feedback_number)
        case = self._change(
            row.feedback_id, lambda case: case.override_priority(priority.value, by, reason)
        )
        self.worklist.set_state(
            row.feedback_id, row.state, priority=priority.value,
            priority_rank=PRIORITY_RANK[priority.value], weight=self.weights[priority.value],
        )  # fmt: skip
        return case

    def put_agent(self, agent: Agent, changed_by: str | None = None) -> list[Assignment]:
        """Add or change an agent; freed or new capacity takes queued work at once."""
        if agent.department not in self.classifier.book.departments:
            raise Refused(f"unknown department {agent.department}")
        self.worklist.upsert_agent(agent, changed_by)
        assignments = self.worklist.drain([agent.department])
        self._record_assignments(assignments)
        return assignments


def _status(case: Case) -> CaseStatus:
    """The case's status now (a fresh read, after a decision may have changed it)."""
    return case.status


def _decide(decision: Any) -> None:
    try:
        decision()
    except CaseError as error:
        raise Refused(str(error)) from error


def _route_reason(classification: dict[str, Any]) -> str:
    return (
        f"{classification['type']}: {classification['category']}/{classification['subcategory']}"
        f" -> {classification['department']}"
    )


def _feedback_id_of(raw: bytes | None) -> str | None:
    try:
        found = json.loads(raw or b"").get("feedback_id")
        return str(UUID(str(found))) if found else None
    except (ValueError, TypeError, AttributeError, RecursionError):
        return None


def _dead_letter(
    record: Any,
    error: BaseException,
    source: str = GROUP,
    feedback: FeedbackReceived | None = None,
) -> tuple[DeadLetter, bytes]:
    """The dead letter of a record (its id fixed by where it was read) and its raw bytes.

    It names the feedback even when the record did not parse, where the raw JSON still
    says which: correspondence about it must be set aside too, not wait for it forever."""
    feedback_id = str(feedback.feedback_id) if feedback else _feedback_id_of(record.value)
    metadata = {"feedback_id": feedback_id} if feedback_id else None
    letter = deadletters.of_record(source, record, deadletters.describe(error), metadata)
    return letter, record.value or b""
