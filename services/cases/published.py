"""How stored case events are told to the rest of the company (contracts.events)."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from contracts import events as contract


def to_contract(domain_event: Any, position: int) -> contract.CaseEvent | None:
    """The public form of a stored event, or None for facts kept internal.

    Every Case event carries `feedback_number` (the aggregate passes it on each decision),
    so a consumer never needs a lookup to show a human which feedback it is about.
    """
    common: dict[str, Any] = {
        "feedback_id": domain_event.originator_id,
        "feedback_number": domain_event.feedback_number,
        "version": domain_event.originator_version,
        "position": position,
        "occurred_at": domain_event.timestamp.astimezone(UTC),
        "department": getattr(domain_event, "department", None),
    }
    name = type(domain_event).__name__
    e = domain_event
    match name:
        case "Registered":
            return contract.CaseRegistered(
                **common,
                registration=contract.Registration.model_validate(e.registration),
            )
        case "Classified":
            return contract.FeedbackClassified(
                **common,
                classification=contract.Classification.model_validate(e.decision),
                by=e.by,
            )
        case "Reclassified":
            return contract.FeedbackClassified(
                **common,
                classification=contract.Classification.model_validate(e.decision),
                by=e.by,
                reason=e.reason,
                previous=contract.Classification.model_validate(e.previous) if e.previous else None,
            )
        case "SentToTriage":
            return contract.SentToTriage(**common, reason=e.reason)
        case "Routed":
            return contract.FeedbackRouted(
                **common,
                previous_department=e.previous_department,
                reason=e.reason,
            )
        case "OwnerAssigned":
            return contract.OwnerAssigned(
                **common,
                owner=e.owner,
                previous_owner=e.previous_owner,
                by=e.by,
                reason=e.reason,
            )
        case "OwnerAccepted":
            return contract.OwnerAccepted(**common, owner=e.owner)
        case "AssignmentDisputed":
            return contract.AssignmentDisputed(**common, owner=e.owner, reason=e.reason)
        case "CoHandlerAdded":
            return contract.CoHandlerAdded(
                **common,
                co_department=e.co_department,
                duty=e.duty,
                due_at=e.due_at,
                by=e.by,
            )
        case "PriorityOverridden":
            return contract.PriorityOverridden(
                **common,
                previous=e.previous,
                priority=e.priority,
                by=e.by,
                reason=e.reason,
            )
        case "InformationRequested":
            return contract.InformationRequested(**common, missing=tuple(e.missing))
        case "InformationSupplied":
            return contract.InformationSupplied(**common, supplied=e.supplied, complete=e.complete)
        case "ClockStarted":
            return contract.ClockStarted(
                **common,
                clock=e.clock,
                subject=e.subject,
                target=e.target,
                time=e.time,
                started_at=e.started_at,
                due_at=e.due_at,
                warn_at=e.warn_at,
            )
        case "ClockPaused":
            return contract.ClockPaused(
                **common, clock=e.clock, subject=e.subject, paused_at=e.paused_at
            )
        case "ClockResumed":
            return contract.ClockResumed(
                **common,
                clock=e.clock,
                subject=e.subject,
                resumed_at=e.resumed_at,
                due_at=e.due_at,
                warn_at=e.warn_at,
            )
        case "ClockRecomputed":
            return contract.ClockRecomputed(
                **common,
                clock=e.clock,
                subject=e.subject,
                target=e.target,
                time=e.time,
                due_at=e.due_at,
                warn_at=e.warn_at,
                reason=e.reason,
            )
        case "ClockMet":
            return contract.ClockMet(
                **common,
                clock=e.clock,
                subject=e.subject,
                met_at=e.met_at,
                by_event=e.by_event,
                late=e.late,
            )
        case "ClockWarned":
            return contract.ClockWarned(
                **common, clock=e.clock, subject=e.subject, due_at=e.due_at, owner=e.owner
            )
        case "ClockBreached":
            return contract.ClockBreached(
                **common, clock=e.clock, subject=e.subject, due_at=e.due_at, owner=e.owner
            )
        case "EscalationRaised":
            return contract.EscalationRaised(
                **common,
                level=e.level,
                to_role=e.to_role,
                reason=e.reason,
                clock=e.clock,
                subject=e.subject,
            )
        case "EscalationRequested":
            return contract.EscalationRequested(
                **common, by=e.by, reason=e.reason, support_needed=e.support_needed
            )
        case "NoteAdded":
            return contract.NoteAdded(
                **common,
                text=e.text,
                visible_to_customer=e.visible_to_customer,
                step=e.step,
                by=e.by,
            )
        case "PlanSet":
            return contract.PlanSet(
                **common,
                diagnosis=e.diagnosis,
                plan=e.plan,
                expected_completion=e.expected_completion,
                by=e.by,
            )
        case "CoHandlerResponded":
            return contract.CoHandlerResponded(
                **common, co_department=e.co_department, response=e.response, by=e.by
            )
        case "Resolved":
            return contract.CaseResolved(
                **common,
                result=e.result,
                summary=e.summary,
                reason=e.reason,
                measures=e.measures,
                resources=e.resources,
                by=e.by,
            )
        case "CustomerConfirmed":
            return contract.CustomerConfirmed(
                **common, satisfied=e.satisfied, comment=e.comment, by=e.by, on_behalf=e.on_behalf
            )
        case "Reopened":
            return contract.CaseReopened(
                **common,
                reason=e.reason,
                by=e.by,
                previous_priority=e.previous_priority,
                priority=e.priority,
            )
        case "Rated":
            return contract.CaseRated(
                **common, csat=e.csat, nps=e.nps, aspects=e.aspects, comment=e.comment, by=e.by
            )
        case "Closed":
            return contract.CaseClosed(**common, reason=e.reason, by=e.by)
        case "MarkedComplex":
            return contract.MarkedComplex(**common, reason=e.reason, by=e.by)
        case "Archived":
            return contract.CaseArchived(**common, by=e.by)
        case "CorrespondenceReceived":
            return contract.CorrespondenceReceived(
                **common,
                channel=e.channel,
                channel_reference=e.channel_reference,
                text=e.text,
                evidence=tuple(contract.Evidence.model_validate(x) for x in e.evidence),
            )
    return None


def department_topics(message: contract.CaseEvent) -> list[str]:
    """Departments that must hear of this event: the responsible one, the one that lost
    the case on a re-route, and a co-handler when it is named."""
    names: list[str] = []
    if message.department:
        names.append(message.department)
    if isinstance(message, contract.FeedbackRouted) and message.previous_department:
        names.append(message.previous_department)
    if isinstance(message, contract.CoHandlerAdded):
        names.append(message.co_department)
    return list(dict.fromkeys(names))
