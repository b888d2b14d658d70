"""The Case aggregate. Methods are decisions; the events they record are facts.

Every event after registration carries `feedback_number` and the case's `department` at
the time, so the relay can tell departments about their own cases without a lookup.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from contracts.events import Registration


class CaseStatus(StrEnum):
    registered = "registered"
    triage = "triage"  # classification not confident enough: a person decides
    queued = "queued"  # routed to a department, waiting for a free owner
    assigned = "assigned"  # an owner was picked, not yet accepted
    accepted = "accepted"  # the owner confirmed (确认接收)
    disputed = "disputed"  # the owner refused with a reason; the supervisor reassigns
    pending_info = "pending_info"  # 待补充: waiting for the customer to supply information
    in_progress = "in_progress"  # the owner works on it (a plan or a note recorded)
    resolved = "resolved"  # a result recorded; waiting for the customer's confirmation
    reopened = "reopened"  # the customer was not satisfied, or a supervisor reopened it
    confirmed = "confirmed"  # the customer confirmed the result
    closed = "closed"
    archived = "archived"  # read-only


# Where a case is being handled: notes, plans, information requests and a result may be recorded.
HANDLING = frozenset(
    {
        CaseStatus.accepted,
        CaseStatus.in_progress,
        CaseStatus.pending_info,
        CaseStatus.reopened,
    }
)
PRIORITY_UP = {"low": "medium", "medium": "high", "high": "urgent", "urgent": "urgent"}


class CaseError(Exception):
    """A decision the case refuses, with the reason."""


class Case(Aggregate):
    """A customer's feedback, from registration to archive."""

    class Registered(Aggregate.Created):
        feedback_number: str
        registration: dict[str, Any]

    @event(Registered)
    def __init__(self, id: UUID, feedback_number: str, registration: dict[str, Any]) -> None:
        self.feedback_number = feedback_number
        self.registration = registration
        self.status = CaseStatus.registered
        self.classification: dict[str, Any] | None = None
        self.department: str | None = None
        self.owner: str | None = None
        self.co_handlers: list[dict[str, Any]] = []
        self.missing: list[str] = []
        self.correspondence: list[dict[str, Any]] = []
        self.clocks: dict[str, dict[str, Any]] = {}
        self.escalated = 0
        self.escalation_requests: list[dict[str, str]] = []
        self.notes: list[dict[str, Any]] = []
        self.plan: dict[str, Any] | None = None
        self.result: dict[str, Any] | None = None
        self.ratings: list[dict[str, Any]] = []
        self.rated_result = False  # one rating per result
        self.complex = False
        self.reopened_count = 0
        self.resume_status: CaseStatus | None = None

    @classmethod
    def register(cls, feedback_id: UUID, registration: Registration) -> Case:
        """Open a case for feedback that intake accepted and numbered."""
        return cls(
            id=feedback_id,
            feedback_number=registration.feedback_number,
            # Only the registration record: a subclass (e.g. the bus message) may carry more.
            registration=registration.model_dump(
                mode="json", include=set(Registration.model_fields)
            ),
        )

    @property
    def priority(self) -> str | None:
        return None if self.classification is None else str(self.classification["priority"])

    @property
    def customer_ref(self) -> str:
        return str(self.registration["customer_ref"])

    # -- classification ---------------------------------------------------------------

    def classify(self, decision: dict[str, Any], by: str) -> None:
        """Record how the case was classified (by the rules or by a person)."""
        self._classified(self.feedback_number, self.department, decision, by)

    @event("Classified")
    def _classified(
        self, feedback_number: str, department: str | None, decision: dict[str, Any], by: str
    ) -> None:
        self.classification = decision

    def send_to_triage(self, reason: str) -> None:
        self._sent_to_triage(self.feedback_number, self.department, reason)

    @event("SentToTriage")
    def _sent_to_triage(self, feedback_number: str, department: str | None, reason: str) -> None:
        self.status = CaseStatus.triage
        self.owner = None

    def reclassify(self, decision: dict[str, Any], by: str, reason: str) -> None:
        """A person corrects the classification; routing follows from it again."""
        if not reason.strip():
            raise CaseError("a reclassification needs a reason")
        previous = self.classification or {}
        self._reclassified(self.feedback_number, self.department, decision, previous, by, reason)

    @event("Reclassified")
    def _reclassified(
        self,
        feedback_number: str,
        department: str | None,
        decision: dict[str, Any],
        previous: dict[str, Any],
        by: str,
        reason: str,
    ) -> None:
        self.classification = decision

    def override_priority(self, priority: str, by: str, reason: str) -> None:
        """A supervisor sets the priority; who, why and the old value are kept."""
        if not reason.strip():
            raise CaseError("a priority override needs a reason")
        if self.classification is None:
            raise CaseError("the case is not classified yet")
        old = str(self.classification["priority"])
        if old == priority:
            raise CaseError(f"priority is already {priority}")
        self._priority_overridden(self.feedback_number, self.department, old, priority, by, reason)

    @event("PriorityOverridden")
    def _priority_overridden(
        self,
        feedback_number: str,
        department: str | None,
        previous: str,
        priority: str,
        by: str,
        reason: str,
    ) -> None:
        assert self.classification is not None
        self.classification = {**self.classification, "priority": priority}

    # -- routing and assignment -------------------------------------------------------

    def route(self, department: str, reason: str) -> None:
        """Make `department` the one responsible department (主责部门)."""
        if self.department == department and self.status != CaseStatus.triage:
            return
        self._routed(self.feedback_number, department, self.department, reason)

    @event("Routed")
    def _routed(
        self, feedback_number: str, department: str, previous_department: str | None, reason: str
    ) -> None:
        self.department = department
        self.owner = None
        self.status = CaseStatus.queued

    def assign(self, owner: str, by: str, reason: str) -> None:
        if self.department is None:
            raise CaseError("route the case to a department before assigning an owner")
        if self.owner == owner and self.status in (CaseStatus.assigned, CaseStatus.accepted):
            return
        self._owner_assigned(self.feedback_number, self.department, owner, self.owner, by, reason)

    @event("OwnerAssigned")
    def _owner_assigned(
        self,
        feedback_number: str,
        department: str,
        owner: str,
        previous_owner: str | None,
        by: str,
        reason: str,
    ) -> None:
        self.owner = owner
        self.status = CaseStatus.assigned

    def accept(self, owner: str) -> None:
        """The owner confirms in the system that they take the case (确认接收)."""
        if self.owner != owner or self.status not in (CaseStatus.assigned, CaseStatus.accepted):
            raise CaseError(f"{owner} is not the pending owner of {self.feedback_number}")
        if self.status == CaseStatus.accepted:
            return
        self._accepted(self.feedback_number, self.department, owner)

    @event("OwnerAccepted")
    def _accepted(self, feedback_number: str, department: str | None, owner: str) -> None:
        self.status = CaseStatus.accepted

    def dispute(self, owner: str, reason: str) -> None:
        """The owner refuses the assignment with a reason; it goes back to the supervisor."""
        if self.owner != owner or self.status not in (CaseStatus.assigned, CaseStatus.accepted):
            raise CaseError(f"{owner} is not the owner of {self.feedback_number}")
        if not reason.strip():
            raise CaseError("a dispute needs a reason (避免推诿)")
        self._disputed(self.feedback_number, self.department, owner, reason)

    @event("AssignmentDisputed")
    def _disputed(
        self, feedback_number: str, department: str | None, owner: str, reason: str
    ) -> None:
        self.owner = None
        self.status = CaseStatus.disputed

    def add_co_handler(self, department: str, duty: str, due_at: datetime, by: str) -> None:
        """Name a co-handling department (协办) with its duty and due time."""
        if department == self.department:
            raise CaseError("the responsible department cannot also be a co-handler")
        if any(c["department"] == department for c in self.co_handlers):
            raise CaseError(f"{department} is already a co-handler")
        if not duty.strip():
            raise CaseError("a co-handler needs a duty")
        self._co_handler_added(self.feedback_number, self.department, department, duty, due_at, by)

    @event("CoHandlerAdded")
    def _co_handler_added(
        self,
        feedback_number: str,
        department: str | None,
        co_department: str,
        duty: str,
        due_at: datetime,
        by: str,
    ) -> None:
        self.co_handlers.append(
            {"department": co_department, "duty": duty, "due_at": due_at.isoformat(), "by": by}
        )

    # -- information and correspondence -----------------------------------------------

    def request_information(self, missing: list[str]) -> None:
        """Mandatory information is missing: ask the customer and wait (待补充)."""
        if not missing:
            raise CaseError("nothing is missing")
        self._information_requested(self.feedback_number, self.department, sorted(missing))

    @event("InformationRequested")
    def _information_requested(
        self, feedback_number: str, department: str | None, missing: list[str]
    ) -> None:
        self.missing = list(missing)
        # Asked while handling: supplying it returns the case to handling, not to routing.
        handling = self.status in HANDLING and self.status != CaseStatus.pending_info
        self.resume_status = CaseStatus.in_progress if handling else None
        self.status = CaseStatus.pending_info

    def supply_information(self, supplied: dict[str, str]) -> bool:
        """Record what the customer supplied; True when nothing is missing any more."""
        useful = {k: v for k, v in supplied.items() if v and k in self.missing}
        if not useful:
            return not self.missing
        complete = set(self.missing) <= set(useful)
        self._information_supplied(self.feedback_number, self.department, useful, complete)
        return complete

    @event("InformationSupplied")
    def _information_supplied(
        self, feedback_number: str, department: str | None, supplied: dict[str, str], complete: bool
    ) -> None:
        self.registration = {**self.registration, **supplied}
        self.missing = [m for m in self.missing if m not in supplied]
        if complete:
            self.status = getattr(self, "resume_status", None) or CaseStatus.registered
            self.resume_status = None

    def receive_correspondence(
        self,
        correspondence_id: str,
        channel: str,
        channel_reference: str | None,
        text: str,
        evidence: list[dict[str, Any]],
    ) -> None:
        """Keep a customer's message with the case's communication records (once)."""
        if any(c["correspondence_id"] == correspondence_id for c in self.correspondence):
            return
        self._correspondence_received(
            self.feedback_number,
            self.department,
            correspondence_id,
            channel,
            channel_reference,
            text,
            evidence,
        )

    @event("CorrespondenceReceived")
    def _correspondence_received(
        self,
        feedback_number: str,
        department: str | None,
        correspondence_id: str,
        channel: str,
        channel_reference: str | None,
        text: str,
        evidence: list[dict[str, Any]],
    ) -> None:
        self.correspondence.append(
            {"correspondence_id": correspondence_id, "channel": channel, "text": text}
        )

    # -- deadlines (services/sla decides when; the case keeps the facts) ----------------

    def start_clock(
        self,
        clock: str,
        subject: str | None,
        target: str,
        time: str,
        started_at: datetime,
        due_at: datetime,
        warn_at: datetime,
    ) -> None:
        """A promise becomes a clock: once while it is open; a met one may start anew (a
        second result after a reopening is a new promise)."""
        existing = self.clocks.get(clock_key(clock, subject))
        if existing is not None and existing["state"] in ("running", "paused"):
            return
        self._clock_started(
            self.feedback_number,
            self.department,
            clock,
            subject,
            target,
            time,
            started_at,
            due_at,
            warn_at,
        )

    @event("ClockStarted")
    def _clock_started(
        self,
        feedback_number: str,
        department: str | None,
        clock: str,
        subject: str | None,
        target: str,
        time: str,
        started_at: datetime,
        due_at: datetime,
        warn_at: datetime,
    ) -> None:
        self.clocks[clock_key(clock, subject)] = {
            "clock": clock,
            "subject": subject,
            "target": target,
            "time": time,
            "started_at": started_at,
            "due_at": due_at,
            "warn_at": warn_at,
            "state": "running",
            "paused_since": None,
            "pauses": [],
            "warned": False,
            "breached": False,
            "escalation": 0,
        }

    def open_clocks(self) -> list[dict[str, Any]]:
        """Clocks neither met nor stopped for good (running or paused)."""
        return [c for c in self.clocks.values() if c["state"] in ("running", "paused")]

    def pause_clock(self, key: str, at: datetime) -> None:
        clock = self.clocks.get(key)
        if clock is None or clock["state"] != "running":
            return
        self._clock_paused(
            self.feedback_number, self.department, clock["clock"], clock["subject"], at
        )

    @event("ClockPaused")
    def _clock_paused(
        self,
        feedback_number: str,
        department: str | None,
        clock: str,
        subject: str | None,
        paused_at: datetime,
    ) -> None:
        state = self.clocks[clock_key(clock, subject)]
        state["state"] = "paused"
        state["paused_since"] = paused_at

    def resume_clock(self, key: str, at: datetime, due_at: datetime, warn_at: datetime) -> None:
        clock = self.clocks.get(key)
        if clock is None or clock["state"] != "paused":
            return
        self._clock_resumed(
            self.feedback_number,
            self.department,
            clock["clock"],
            clock["subject"],
            at,
            due_at,
            warn_at,
        )

    @event("ClockResumed")
    def _clock_resumed(
        self,
        feedback_number: str,
        department: str | None,
        clock: str,
        subject: str | None,
        resumed_at: datetime,
        due_at: datetime,
        warn_at: datetime,
    ) -> None:
        state = self.clocks[clock_key(clock, subject)]
        state["pauses"] = [*state["pauses"], (state["paused_since"], resumed_at)]
        state.update(state="running", paused_since=None, due_at=due_at, warn_at=warn_at)

    def recompute_clock(
        self, key: str, target: str, time: str, due_at: datetime, warn_at: datetime, reason: str
    ) -> None:
        """A new target (priority changed, reclassified, marked complex, reopened)."""
        clock = self.clocks.get(key)
        if clock is None or clock["state"] not in ("running", "paused"):
            return
        if clock["target"] == target and clock["time"] == time and clock["due_at"] == due_at:
            return
        self._clock_recomputed(
            self.feedback_number,
            self.department,
            clock["clock"],
            clock["subject"],
            target,
            time,
            due_at,
            warn_at,
            reason,
        )

    @event("ClockRecomputed")
    def _clock_recomputed(
        self,
        feedback_number: str,
        department: str | None,
        clock: str,
        subject: str | None,
        target: str,
        time: str,
        due_at: datetime,
        warn_at: datetime,
        reason: str,
    ) -> None:
        state = self.clocks[clock_key(clock, subject)]
        # A new due time earns a new warning (an earlier breach stays on record).
        state.update(target=target, time=time, due_at=due_at, warn_at=warn_at, warned=False)

    def meet_clock(self, key: str, at: datetime, by_event: str) -> None:
        """The event that satisfies the promise stops the clock (once)."""
        clock = self.clocks.get(key)
        if clock is None or clock["state"] not in ("running", "paused"):
            return
        late = bool(clock["breached"]) or at > clock["due_at"]
        self._clock_met(
            self.feedback_number,
            self.department,
            clock["clock"],
            clock["subject"],
            at,
            by_event,
            late,
        )

    @event("ClockMet")
    def _clock_met(
        self,
        feedback_number: str,
        department: str | None,
        clock: str,
        subject: str | None,
        met_at: datetime,
        by_event: str,
        late: bool,
    ) -> None:
        self.clocks[clock_key(clock, subject)]["state"] = "met"

    def warn_clock(self, key: str, now: datetime) -> bool:
        """Warn once, if the clock is still running and its warning time has come."""
        clock = self.clocks.get(key)
        if clock is None or clock["state"] != "running" or clock["warned"]:
            return False
        if now < clock["warn_at"]:
            return False
        self._clock_warned(
            self.feedback_number,
            self.department,
            clock["clock"],
            clock["subject"],
            clock["due_at"],
            self.owner,
        )
        return True

    @event("ClockWarned")
    def _clock_warned(
        self,
        feedback_number: str,
        department: str | None,
        clock: str,
        subject: str | None,
        due_at: datetime,
        owner: str | None,
    ) -> None:
        self.clocks[clock_key(clock, subject)]["warned"] = True

    def breach_clock(self, key: str, now: datetime) -> bool:
        """Breach once, if the clock is still running past its due time; the case then
        escalates to the supervisor (the first step of the ladder)."""
        clock = self.clocks.get(key)
        if clock is None or clock["state"] != "running" or clock["breached"]:
            return False
        if now < clock["due_at"]:
            return False
        self._clock_breached(
            self.feedback_number,
            self.department,
            clock["clock"],
            clock["subject"],
            clock["due_at"],
            self.owner,
        )
        self.escalate_clock(key, 1, "supervisor", f"{clock['clock']} breached")
        return True

    @event("ClockBreached")
    def _clock_breached(
        self,
        feedback_number: str,
        department: str | None,
        clock: str,
        subject: str | None,
        due_at: datetime,
        owner: str | None,
    ) -> None:
        self.clocks[clock_key(clock, subject)]["breached"] = True

    def escalate_clock(self, key: str, level: int, to_role: str, reason: str) -> bool:
        """One step up the ladder for a breached clock still open (each level once)."""
        clock = self.clocks.get(key)
        if clock is None or clock["state"] not in ("running", "paused"):
            return False
        if clock["escalation"] >= level:
            return False
        self._escalation_raised(
            self.feedback_number,
            self.department,
            level,
            to_role,
            reason,
            clock["clock"],
            clock["subject"],
            key,
        )
        return True

    @event("EscalationRaised")
    def _escalation_raised(
        self,
        feedback_number: str,
        department: str | None,
        level: int,
        to_role: str,
        reason: str,
        clock: str | None,
        subject: str | None,
        key: str | None,
    ) -> None:
        if key is not None:
            self.clocks[key]["escalation"] = level
        self.escalated = max(self.escalated, level)

    def request_escalation(self, by: str, reason: str, support_needed: str | None) -> None:
        """The owner asks for help before a breach (升级申请)."""
        if not reason.strip():
            raise CaseError("an escalation request needs a reason")
        if by != self.owner:
            raise CaseError(f"only the owner of {self.feedback_number} requests escalation")
        self._escalation_requested(
            self.feedback_number, self.department, by, reason, support_needed
        )

    @event("EscalationRequested")
    def _escalation_requested(
        self,
        feedback_number: str,
        department: str | None,
        by: str,
        reason: str,
        support_needed: str | None,
    ) -> None:
        self.escalation_requests.append({"by": by, "reason": reason})

    # -- handling (services/handling decides who may; the case decides what may) -------

    def _handling(self, what: str) -> None:
        if self.status not in HANDLING:
            raise CaseError(
                f"{what} needs a case being handled; {self.feedback_number} is {self.status.value}"
            )

    def add_note(self, text: str, visible_to_customer: bool, step: str | None, by: str) -> None:
        """A line of the progress log (处理进度): time, step, operator, note."""
        if self.status in (CaseStatus.closed, CaseStatus.archived):
            raise CaseError(f"{self.feedback_number} is {self.status.value}: no more notes")
        if not text.strip():
            raise CaseError("a note needs text")
        self._note_added(self.feedback_number, self.department, text, visible_to_customer, step, by)

    @event("NoteAdded")
    def _note_added(
        self,
        feedback_number: str,
        department: str | None,
        text: str,
        visible_to_customer: bool,
        step: str | None,
        by: str,
    ) -> None:
        self.notes.append({"text": text, "visible": visible_to_customer, "step": step, "by": by})
        if self.status in (CaseStatus.accepted, CaseStatus.reopened):
            self.status = CaseStatus.in_progress

    def set_plan(self, diagnosis: str, plan: str, expected_completion: datetime, by: str) -> None:
        """The cause found and the plan with its expected completion (处理方案, 预计完成时间)."""
        self._handling("a plan")
        self._plan_set(
            self.feedback_number, self.department, diagnosis, plan, expected_completion, by
        )

    @event("PlanSet")
    def _plan_set(
        self,
        feedback_number: str,
        department: str | None,
        diagnosis: str,
        plan: str,
        expected_completion: datetime,
        by: str,
    ) -> None:
        self.plan = {
            "diagnosis": diagnosis,
            "plan": plan,
            "expected_completion": expected_completion,
        }
        if self.status in (CaseStatus.accepted, CaseStatus.reopened):
            self.status = CaseStatus.in_progress

    def co_handler_responds(self, co_department: str, response: str, by: str) -> None:
        """The co-handling department's answer (within its 24 h clock)."""
        if not any(c["department"] == co_department for c in self.co_handlers):
            raise CaseError(f"{co_department} is not a co-handler of {self.feedback_number}")
        if self.status in (CaseStatus.closed, CaseStatus.archived):
            raise CaseError(f"{self.feedback_number} is {self.status.value}")
        self._co_handler_responded(
            self.feedback_number, self.department, co_department, response, by
        )

    @event("CoHandlerResponded")
    def _co_handler_responded(
        self,
        feedback_number: str,
        department: str | None,
        co_department: str,
        response: str,
        by: str,
    ) -> None:
        for co in self.co_handlers:
            if co["department"] == co_department:
                co["response"] = response

    def resolve(
        self,
        result: str,
        summary: str,
        reason: str | None,
        measures: str | None,
        resources: str | None,
        by: str,
    ) -> None:
        """The result (处理结果): resolved, partially resolved or unresolved (with why)."""
        self._handling("a result")
        if self.status == CaseStatus.pending_info:
            raise CaseError("waiting for the customer's information: resolve after it arrives")
        if result != "resolved" and not (reason or "").strip():
            raise CaseError(f"a {result.replace('_', ' ')} result needs a reason")
        self._resolved(
            self.feedback_number, self.department, result, summary, reason, measures, resources, by
        )

    @event("Resolved")
    def _resolved(
        self,
        feedback_number: str,
        department: str | None,
        result: str,
        summary: str,
        reason: str | None,
        measures: str | None,
        resources: str | None,
        by: str,
    ) -> None:
        self.result = {"result": result, "summary": summary, "reason": reason, "by": by}
        self.status = CaseStatus.resolved

    def confirm(self, satisfied: bool, comment: str | None, by: str, on_behalf: bool) -> None:
        """The customer confirms the result (or staff on their behalf, recorded as such).
        Not satisfied: the case reopens with its priority one level up."""
        if self.status != CaseStatus.resolved:
            raise CaseError(
                f"only a resolved case is confirmed; {self.feedback_number} is {self.status.value}"
            )
        self._confirmed(self.feedback_number, self.department, satisfied, comment, by, on_behalf)
        if not satisfied:
            priority = self.priority or "medium"
            self._reopened(
                self.feedback_number, self.department, "the customer is not satisfied", by,
                priority, PRIORITY_UP.get(priority, priority),
            )  # fmt: skip

    @event("CustomerConfirmed")
    def _confirmed(
        self,
        feedback_number: str,
        department: str | None,
        satisfied: bool,
        comment: str | None,
        by: str,
        on_behalf: bool,
    ) -> None:
        if satisfied:
            self.status = CaseStatus.confirmed

    def reopen(self, reason: str, by: str) -> None:
        if self.status not in (CaseStatus.resolved, CaseStatus.confirmed, CaseStatus.closed):
            raise CaseError(f"{self.feedback_number} is {self.status.value}: nothing to reopen")
        if not reason.strip():
            raise CaseError("reopening needs a reason")
        priority = self.priority or "medium"
        self._reopened(self.feedback_number, self.department, reason, by, priority, priority)

    @event("Reopened")
    def _reopened(
        self,
        feedback_number: str,
        department: str | None,
        reason: str,
        by: str,
        previous_priority: str,
        priority: str,
    ) -> None:
        self.status = CaseStatus.reopened
        self.reopened_count += 1
        self.rated_result = False  # the next result may be rated again
        if self.classification is not None:
            self.classification = {**self.classification, "priority": priority}

    def rate(
        self, csat: int, nps: int | None, aspects: dict[str, int], comment: str | None, by: str
    ) -> None:
        """Satisfaction (CSAT 1–5, NPS 0–10) once a result exists."""
        if self.status not in (CaseStatus.resolved, CaseStatus.confirmed, CaseStatus.closed):
            raise CaseError(f"{self.feedback_number} has no result to rate yet")
        if getattr(self, "rated_result", False):
            raise CaseError(f"{self.feedback_number}'s result is rated already")
        self._rated(self.feedback_number, self.department, csat, nps, aspects, comment, by)

    @event("Rated")
    def _rated(
        self,
        feedback_number: str,
        department: str | None,
        csat: int,
        nps: int | None,
        aspects: dict[str, int],
        comment: str | None,
        by: str,
    ) -> None:
        self.ratings.append({"csat": csat, "nps": nps, "aspects": aspects, "by": by})
        self.rated_result = True

    def close(self, reason: str | None, by: str, supervisor: bool) -> None:
        """After the customer confirmed; or by a supervisor with a reason (nothing closes
        silently: 杜绝"只反馈不处理""只处理不反馈")."""
        if self.status in (CaseStatus.closed, CaseStatus.archived):
            raise CaseError(f"{self.feedback_number} is already {self.status.value}")
        if self.status != CaseStatus.confirmed:
            if not supervisor:
                raise CaseError(
                    "only a confirmed case closes; a supervisor may close it with a reason"
                )
            if not (reason or "").strip():
                raise CaseError("closing an unconfirmed case needs a reason")
        self._closed(self.feedback_number, self.department, reason, by)

    @event("Closed")
    def _closed(
        self, feedback_number: str, department: str | None, reason: str | None, by: str
    ) -> None:
        self.status = CaseStatus.closed

    def mark_complex(self, by: str, reason: str) -> None:
        """A supervisor marks the case complex: its resolution target becomes longer."""
        if self.complex:
            return
        if self.status in (CaseStatus.closed, CaseStatus.archived):
            raise CaseError(f"{self.feedback_number} is {self.status.value}")
        self._marked_complex(self.feedback_number, self.department, by, reason)

    @event("MarkedComplex")
    def _marked_complex(
        self, feedback_number: str, department: str | None, by: str, reason: str
    ) -> None:
        self.complex = True

    def archive(self, by: str) -> None:
        if self.status != CaseStatus.closed:
            raise CaseError(
                f"only a closed case is archived; {self.feedback_number} is {self.status.value}"
            )
        self._archived(self.feedback_number, self.department, by)

    @event("Archived")
    def _archived(self, feedback_number: str, department: str | None, by: str) -> None:
        self.status = CaseStatus.archived


def clock_key(clock: str, subject: str | None) -> str:
    """A case has one clock of each kind, or one per subject (a co-handling department)."""
    return f"{clock}:{subject}" if subject else clock
