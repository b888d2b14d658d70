"""How stored case events are told to the rest of the company (contracts.events)."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from contracts.events import CaseEvent, CaseRegistered, Registration
from services.cases.domain import Case


def to_contract(domain_event: Any, position: int) -> CaseEvent | None:
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
    }
    if isinstance(domain_event, Case.Registered):
        return CaseRegistered(
            **common, registration=Registration.model_validate(domain_event.registration)
        )
    return None
