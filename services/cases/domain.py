"""The Case aggregate. Methods are decisions; the events they record are facts."""

from __future__ import annotations

from enum import StrEnum
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from contracts.events import Registration


class CaseStatus(StrEnum):
    registered = "registered"


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
