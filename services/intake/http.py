"""HTTP intake: `POST /v1/feedback` (website / app form, channel `web_form`)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, EmailStr, Field, model_validator

from contracts.codes import CUSTOMER_TIER_PATTERN, Channel, Emotion, FeedbackType
from services.intake.pii_vault import Contact
from services.intake.registration import (
    DuplicateInProgress,
    IntakeUnavailable,
    InvalidSubmission,
    Registrar,
    Submission,
)

MAX_DESCRIPTION = 5_000
Short = Annotated[str, Field(min_length=1, max_length=200)]
Text = Annotated[str, Field(min_length=1, max_length=2_000)]


class CustomerIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: Annotated[str, Field(max_length=100)] | None = None
    phone: Annotated[str, Field(pattern=r"^\+?[\d\- ]{5,20}$")] | None = None
    email: EmailStr | None = None

    @model_validator(mode="after")
    def _reachable(self) -> CustomerIn:
        if not (self.phone or self.email):
            raise ValueError("one way to reach the customer is required: phone or email")
        return self


class FeedbackIn(BaseModel):
    """What a website or app form sends."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    channel: Literal[Channel.web_form]
    description: Annotated[str, Field(min_length=1, max_length=MAX_DESCRIPTION)]
    customer: CustomerIn
    customer_tier: Annotated[str, Field(pattern=CUSTOMER_TIER_PATTERN)] = "normal"
    product_model: Short | None = None
    service_type: Short | None = None
    purchase_date: date | None = None
    received_at: AwareDatetime | None = None
    occurred_at: AwareDatetime | None = None
    customer_attempts: Text | None = None
    expectation: Text | None = None
    emotion: Emotion | None = None
    type: FeedbackType | None = Field(default=None, description="the type the customer picked")

    @model_validator(mode="after")
    def _not_in_future(self) -> FeedbackIn:
        tomorrow = datetime.now(UTC) + timedelta(minutes=5)
        if self.received_at and self.received_at > tomorrow:
            raise ValueError("received_at is in the future")
        if (
            self.purchase_date
            and self.purchase_date > (datetime.now(UTC) + timedelta(days=1)).date()
        ):
            raise ValueError("purchase_date is in the future")
        return self


class FeedbackAccepted(BaseModel):
    feedback_number: str
    feedback_id: str
    status: Literal["accepted"] = "accepted"
    duplicate: bool = False


def intake_router(registrar: Registrar, customer_tiers: tuple[str, ...]) -> APIRouter:
    router = APIRouter(tags=["intake"])

    @router.post(
        "/v1/feedback",
        status_code=202,
        response_model=FeedbackAccepted,
        responses={
            422: {"description": "invalid feedback"},
            503: {"description": "bus unavailable"},
        },
    )
    async def submit_feedback(
        body: FeedbackIn,
        request: Request,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> FeedbackAccepted | JSONResponse:
        if body.customer_tier not in customer_tiers:
            raise HTTPException(
                422,
                detail=[
                    {
                        "loc": ["body", "customer_tier"],
                        "msg": f"unknown tier; one of {list(customer_tiers)}",
                        "type": "value_error",
                    }
                ],
            )
        submission = Submission(
            channel=body.channel,
            description=body.description,
            contact=Contact(
                name=body.customer.name, phone=body.customer.phone, email=body.customer.email
            ),
            receiver="web_form",
            received_at=body.received_at,
            customer_tier=body.customer_tier,
            product_model=body.product_model,
            service_type=body.service_type,
            purchase_date=body.purchase_date,
            customer_attempts=body.customer_attempts,
            occurred_at=body.occurred_at,
            expectation=body.expectation,
            emotion=body.emotion,
            stated_type=body.type,
        )
        key = f"idempotency:{idempotency_key}" if idempotency_key else None
        try:
            accepted = await registrar.register(submission, dedup_key=key)
        except InvalidSubmission as error:
            raise HTTPException(422, detail=error.errors) from error
        except DuplicateInProgress:
            return JSONResponse(
                {"detail": "a request with this Idempotency-Key is still being registered; retry"},
                status_code=409,
            )
        except IntakeUnavailable:
            return JSONResponse(
                {"detail": "feedback could not be accepted now (message bus unavailable); retry"},
                status_code=503,
                headers={"Retry-After": "5"},
            )
        return FeedbackAccepted(
            feedback_number=accepted.feedback_number,
            feedback_id=str(accepted.feedback_id),
            duplicate=accepted.duplicate,
        )

    return router
