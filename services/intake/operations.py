"""Operator endpoints of intake: dead letters (list, replay) and erasing a customer."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, UploadFile
from pydantic import BaseModel

from contracts.events import CUSTOMER_REF_PATTERN
from services.access import audit
from services.access.http import require
from services.access.roles import Actor
from services.common.boundary import text_flaw
from services.common.deadletters import describe
from services.intake.channels.chat_social import PUSH_PARSERS
from services.intake.channels.common import busy_refusal
from services.intake.channels.email import TRANSIENT_FAULTS, EmailIntake
from services.intake.deadletters import DeadLetters
from services.intake.pii_vault import PiiVault
from services.intake.registration import (
    DuplicateInProgress,
    IntakeBusy,
    IntakeUnavailable,
    Registrar,
    cleaned,
)


class DeadLetterView(BaseModel):
    dead_letter_id: uuid.UUID
    source: str
    reason: str
    size: int
    metadata: dict[str, Any]
    created_at: datetime
    replayed_at: datetime | None
    replay_result: str | None


def operations_router(
    registrar: Registrar, deadletters: DeadLetters, email_intake: EmailIntake, vault: PiiVault
) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/v1/deadletters", response_model=list[DeadLetterView])
    async def list_dead_letters(
        _: Annotated[Actor, require("deadletter.manage")],
        all: bool = False,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[DeadLetterView]:
        return [
            DeadLetterView(**row) for row in await deadletters.list(limit, include_replayed=all)
        ]

    @router.post("/v1/deadletters/{dead_letter_id}/replay")
    async def replay(
        dead_letter_id: uuid.UUID, _: Annotated[Actor, require("deadletter.manage")]
    ) -> dict[str, str]:
        row = await deadletters.get(dead_letter_id)
        if row is None:
            raise HTTPException(404, detail="no such dead letter")
        if row["replayed_at"] is not None:
            raise HTTPException(409, detail=f"already replayed: {row['replay_result']}")
        payload = bytes(row["payload"])
        try:
            result = await _replay(row["source"], payload, registrar, email_intake)
        except (IntakeUnavailable, DuplicateInProgress) as error:
            raise HTTPException(503, detail="not accepted now; retry the replay") from error
        except (ValueError, KeyError, ArithmeticError) as error:
            raise HTTPException(409, detail=f"still unreadable: {describe(error)}") from error
        await deadletters.mark_replayed(dead_letter_id, result)
        return {"status": "replayed", "result": result}

    @router.post("/v1/channels/email/eml", status_code=202)
    async def import_eml(
        file: UploadFile, _: Annotated[Actor, require("intake.staff")]
    ) -> dict[str, str]:
        """Import one `.eml` file exactly as if it had arrived over SMTP."""
        limit = registrar.settings.smtp_max_message_bytes
        raw = await file.read(limit + 1)
        if len(raw) > limit:
            raise HTTPException(413, detail=f"an email is at most {limit} bytes")
        try:
            received = await email_intake.receive(raw, receiver="eml-import")
        except IntakeBusy as error:
            raise busy_refusal(error) from error
        except TRANSIENT_FAULTS as error:
            raise HTTPException(
                503,
                detail="not accepted now (database or bus unavailable); retry",
                headers={"Retry-After": "5"},
            ) from error
        if received.feedback_number is None:
            # Kept: importing the same file again would not read it either.
            return {
                "status": "kept as a dead letter",
                "dead_letter_id": str(received.dead_letter_id),
            }
        answer = {
            "status": "filed with its case" if received.joined else "accepted",
            "feedback_number": received.feedback_number,
        }
        if received.dead_letter_id is not None:
            answer["original_kept_as"] = str(received.dead_letter_id)  # taken after cleaning
        return answer

    @router.delete("/v1/customers/{customer_ref}/personal-data")
    async def erase_customer(
        customer_ref: Annotated[str, Path(pattern=CUSTOMER_REF_PATTERN)],
        reason: Annotated[str, Query(min_length=5, max_length=500, description="why (audited)")],
        actor: Annotated[Actor, require("customer.erase")],
    ) -> dict[str, str]:
        if text_flaw(reason):
            raise HTTPException(422, detail=f"reason {text_flaw(reason)}")
        if not await vault.erase(
            customer_ref, lambda conn: audit.record(conn, actor, "erase", customer_ref, reason)
        ):
            raise HTTPException(404, detail=f"no personal data held for {customer_ref}")
        return {"status": "erased", "customer_ref": customer_ref}

    return router


async def _replay(
    source: str, payload: bytes, registrar: Registrar, email_intake: EmailIntake
) -> str:
    if source == "email":
        # This dead letter records the outcome; the replay writes no new one.
        received = await email_intake.receive(payload, receiver="replay", keep=False)
        if received.feedback_number is None:
            raise ValueError(received.reason or "the email is still unreadable")
        if received.reason:
            return f"taken cleaned as {received.feedback_number}: {received.reason}"
        return received.feedback_number
    if source not in PUSH_PARSERS:
        raise ValueError(f"no replay for source {source!r}")
    # Repaired as on arrival (see chat_social._accept_push).
    submission, repairs = cleaned(PUSH_PARSERS[source](payload))
    accepted = await registrar.register_durably(submission)
    if repairs:
        return f"taken cleaned as {accepted.feedback_number}: {'; '.join(repairs)}"
    return accepted.feedback_number
