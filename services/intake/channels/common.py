"""What the HTTP channel adapters share: turning registration outcomes into answers."""

from __future__ import annotations

import hmac
import time
from typing import Annotated

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, EmailStr, Field, model_validator

from contracts.codes import CUSTOMER_TIER_PATTERN
from services.intake.pii_vault import Contact
from services.intake.registration import (
    Accepted,
    DuplicateInProgress,
    IntakeUnavailable,
    InvalidSubmission,
)

Short = Annotated[str, Field(min_length=1, max_length=200)]
Text = Annotated[str, Field(min_length=1, max_length=2_000)]
Tier = Annotated[str, Field(pattern=CUSTOMER_TIER_PATTERN)]
FRESHNESS_S = 300


class CustomerIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: Annotated[str, Field(max_length=100)] | None = None
    phone: Annotated[str, Field(pattern=r"^\+?[\d\- ]{5,20}$")] | None = None
    email: EmailStr | None = None
    address: Annotated[str, Field(max_length=300)] | None = None

    @model_validator(mode="after")
    def _reachable(self) -> CustomerIn:
        if not (self.phone or self.email):
            raise ValueError("one way to reach the customer is required: phone or email")
        return self

    def contact(self) -> Contact:
        return Contact(name=self.name, phone=self.phone, email=self.email, address=self.address)


class FeedbackAccepted(BaseModel):
    feedback_number: str
    feedback_id: str
    status: str = "accepted"
    duplicate: bool = False

    @classmethod
    def of(cls, accepted: Accepted) -> FeedbackAccepted:
        return cls(
            feedback_number=accepted.feedback_number,
            feedback_id=str(accepted.feedback_id),
            duplicate=accepted.duplicate,
        )


async def answer(registration: object) -> FeedbackAccepted | JSONResponse:
    """Await a registration and translate its failures into HTTP answers."""
    try:
        accepted = await registration  # type: ignore[misc]
    except InvalidSubmission as error:
        raise HTTPException(422, detail=error.errors) from error
    except DuplicateInProgress:
        return JSONResponse(
            {"detail": "the same delivery is still being registered; retry"}, status_code=409
        )
    except IntakeUnavailable:
        return JSONResponse(
            {"detail": "feedback could not be accepted now (message bus unavailable); retry"},
            status_code=503,
            headers={"Retry-After": "5"},
        )
    return FeedbackAccepted.of(accepted)


def fresh(timestamp: str | None) -> bool:
    try:
        return abs(time.time() - int(timestamp or "")) <= FRESHNESS_S
    except ValueError:
        return False


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
