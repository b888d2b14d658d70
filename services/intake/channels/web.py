"""Website / app (`web_form`, JSON and multipart with attachments) and the agent's phone
entry form (`phone`)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from fastapi import APIRouter, Form, Header, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import AwareDatetime, ConfigDict, Field, ValidationError

from contracts.codes import Channel, Emotion, FeedbackType
from contracts.events import Evidence
from services.access.http import require
from services.access.roles import Actor
from services.common.boundary import Checked, shown_errors
from services.intake.channels.common import (
    CustomerIn,
    FeedbackAccepted,
    RequestHandledRoute,
    Short,
    Text,
    Tier,
    accepted_response,
    answer,
    json_body_schema,
    parse_json_body,
)
from services.intake.evidence import EvidenceRefused, EvidenceStore
from services.intake.registration import Registrar, Submission

MAX_DESCRIPTION = 5_000


class FeedbackIn(Checked):
    """What a website or app form sends."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    channel: Literal[Channel.web_form]
    description: Annotated[str, Field(min_length=1, max_length=MAX_DESCRIPTION)]
    customer: CustomerIn
    customer_tier: Tier = "normal"
    product_model: Short | None = None
    service_type: Short | None = None
    purchase_date: date | None = None
    received_at: AwareDatetime | None = None
    occurred_at: AwareDatetime | None = None
    customer_attempts: Text | None = None
    expectation: Text | None = None
    emotion: Emotion | None = None
    type: FeedbackType | None = Field(default=None, description="the type the customer picked")

    def submission(self, channel: Channel, receiver: str, **extra: object) -> Submission:
        return Submission(
            channel=channel,
            description=self.description,
            contact=self.customer.contact(),
            receiver=receiver,
            received_at=self.received_at,
            customer_tier=self.customer_tier,
            product_model=self.product_model,
            service_type=self.service_type,
            purchase_date=self.purchase_date,
            customer_attempts=self.customer_attempts,
            occurred_at=self.occurred_at,
            expectation=self.expectation,
            emotion=self.emotion,
            stated_type=self.type,
            **extra,
        )


class PhoneCallIn(FeedbackIn):
    """The agent's entry form during or after a call (电话, entered by the signed-in agent)."""

    channel: Literal[Channel.phone]  # type: ignore[assignment]
    call_id: Annotated[str, Field(min_length=1, max_length=100)]
    recording_ref: Annotated[str, Field(max_length=500)] | None = None


def _tier_known(tier: str, tiers: tuple[str, ...]) -> None:
    if tier not in tiers:
        raise HTTPException(
            422,
            detail=[
                {
                    "loc": ["body", "customer_tier"],
                    "msg": f"unknown tier; one of {list(tiers)}",
                    "type": "value_error",
                }
            ],
        )


def web_router(
    registrar: Registrar, evidence: EvidenceStore, customer_tiers: tuple[str, ...]
) -> APIRouter:
    router = APIRouter(tags=["intake"])

    async def submit_feedback(request: Request) -> Response:
        # The busiest endpoint handles its request itself (see RequestHandledRoute):
        # pydantic parses the bytes in one step; errors keep FastAPI's 422 shape.
        body = parse_json_body(FeedbackIn, await request.body())
        _tier_known(body.customer_tier, customer_tiers)
        idempotency_key = request.headers.get("idempotency-key")
        if idempotency_key is not None and len(idempotency_key) > 200:
            raise RequestValidationError(
                [
                    {
                        "loc": ("header", "idempotency-key"),
                        "msg": "at most 200 characters",
                        "type": "string_too_long",
                    }
                ]
            )
        return accepted_response(
            await answer(
                registrar.register(body.submission(Channel.web_form, "web_form"), idempotency_key)
            )
        )

    router.add_api_route(
        "/v1/feedback",
        submit_feedback,
        methods=["POST"],
        route_class_override=RequestHandledRoute,
        status_code=202,
        response_model=FeedbackAccepted,
        openapi_extra=json_body_schema(FeedbackIn, headers={"Idempotency-Key": 200}),
        responses={
            422: {"description": "invalid feedback"},
            503: {"description": "bus unavailable, or intake busy (see Retry-After)"},
        },
    )

    @router.post("/v1/feedback/multipart", status_code=202, response_model=FeedbackAccepted)
    async def submit_with_attachments(
        feedback: Annotated[str, Form(description="the same JSON as POST /v1/feedback")],
        attachments: list[UploadFile] | None = None,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> FeedbackAccepted | JSONResponse:
        try:
            # pydantic's own JSON parser: bounded nesting (json.loads recursed until
            # RecursionError on a field nested 10,000 deep).
            body = FeedbackIn.model_validate_json(feedback)
        except ValidationError as error:
            raise HTTPException(
                422, detail=shown_errors(error.errors(include_url=False, include_context=False))
            ) from error
        _tier_known(body.customer_tier, customer_tiers)
        files = attachments or []
        if len(files) > evidence.max_count:
            raise HTTPException(422, detail=f"at most {evidence.max_count} attachments")
        kept: list[Evidence] = []
        for upload in files:
            data = await upload.read(evidence.max_bytes + 1)
            try:
                kept.append(await evidence.put(data, upload.filename, upload.content_type))
            except EvidenceRefused as error:
                raise HTTPException(422, detail=str(error)) from error
        submission = body.submission(Channel.web_form, "web_form", evidence=tuple(kept))
        return await answer(registrar.register(submission, idempotency_key))

    @router.post("/v1/channels/phone", status_code=202, response_model=FeedbackAccepted)
    async def phone_call(
        body: PhoneCallIn, actor: Annotated[Actor, require("intake.staff")]
    ) -> FeedbackAccepted | JSONResponse:
        _tier_known(body.customer_tier, customer_tiers)
        recording = (
            (Evidence(kind="recording", reference=body.recording_ref),)
            if body.recording_ref
            else ()
        )
        submission = body.submission(
            Channel.phone, actor.name, channel_reference=body.call_id, evidence=recording
        )
        return await answer(registrar.register(submission))

    return router
