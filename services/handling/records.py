"""A case's communication records (沟通记录) and evidence, read from its events.

The Case aggregate keeps only what its decisions need of a customer's message; the
events keep when it came, on which channel, and the attachments. Outgoing entries are what
the customer was told or asked: information requests and notes made visible to them.
Every text here was masked before it was recorded (intake and the handling commands).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel

from services.cases.store import CaseStore
from services.common.masking import mask_contacts


class CorrespondenceEntry(BaseModel):
    at: datetime
    direction: Literal["in", "out"]
    what: str  # the event: CorrespondenceReceived, InformationSupplied, InformationRequested, NoteAdded
    channel: str | None = None
    text: str
    by: str | None = None
    evidence: list[dict[str, Any]] = []


def evidence_of(store: CaseStore, case_id: UUID) -> list[dict[str, Any]]:
    """Every attachment of the case: the registration's, then those of later messages."""
    found: list[dict[str, Any]] = []
    for event in store.repository.event_store.get(case_id):
        data: Any = event
        kind = type(event).__name__
        if kind == "Registered":
            found.extend(dict(item) for item in data.registration.get("evidence") or ())
        elif kind == "CorrespondenceReceived":
            found.extend(dict(item) for item in data.evidence or ())
    return found


def correspondence_of(store: CaseStore, case_id: UUID) -> list[CorrespondenceEntry]:
    """The messages from and to the customer, oldest first."""
    entries = []
    for event in store.repository.event_store.get(case_id):
        data: Any = event
        kind = type(event).__name__
        at = data.timestamp.astimezone(UTC)
        if kind == "CorrespondenceReceived":
            entries.append(
                CorrespondenceEntry(
                    at=at,
                    direction="in",
                    what=kind,
                    channel=data.channel,
                    text=data.text,
                    evidence=[dict(item) for item in data.evidence or ()],
                )
            )
        elif kind == "InformationSupplied":
            supplied = "; ".join(
                f"{k}: {mask_contacts(str(v))}" for k, v in sorted(data.supplied.items())
            )
            entries.append(CorrespondenceEntry(at=at, direction="in", what=kind, text=supplied))
        elif kind == "InformationRequested":
            entries.append(
                CorrespondenceEntry(at=at, direction="out", what=kind, text="; ".join(data.missing))
            )
        elif kind == "NoteAdded" and data.visible_to_customer:
            entries.append(
                CorrespondenceEntry(at=at, direction="out", what=kind, text=data.text, by=data.by)
            )
    return entries
