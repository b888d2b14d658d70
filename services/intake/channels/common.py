"""What the HTTP channel adapters share: turning registration outcomes into answers."""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, EmailStr, Field, ValidationError, model_validator

from contracts.codes import CUSTOMER_TIER_PATTERN
from services.common.boundary import Checked, shown_errors
from services.intake.pii_vault import Contact
from services.intake.registration import (
    Accepted,
    DuplicateInProgress,
    IntakeBusy,
    IntakeUnavailable,
    InvalidSubmission,
)

Short = Annotated[str, Field(min_length=1, max_length=200)]
Text = Annotated[str, Field(min_length=1, max_length=2_000)]
Tier = Annotated[str, Field(pattern=CUSTOMER_TIER_PATTERN)]
FRESHNESS_S = 300
ModelT = TypeVar("ModelT", bound=BaseModel)


class CustomerIn(Checked):
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
    customer_token: str | None = Field(
        default=None,
        description="the customer's key to this feedback: send it as X-Customer-Token to "
        "add information later",
    )

    @classmethod
    def of(cls, accepted: Accepted) -> FeedbackAccepted:
        return cls(
            feedback_number=accepted.feedback_number,
            feedback_id=str(accepted.feedback_id),
            duplicate=accepted.duplicate,
            customer_token=accepted.customer_token,
        )


async def answer(registration: object) -> FeedbackAccepted | JSONResponse:
    """Await a registration and translate its failures into HTTP answers."""
    try:
        accepted = await registration  # type: ignore[misc]
    except InvalidSubmission as error:
        raise HTTPException(422, detail=shown_errors(error.errors)) from error
    except DuplicateInProgress:
        return JSONResponse(
            {"detail": "the same delivery is still being registered; retry"}, status_code=409
        )
    except IntakeBusy as error:
        refusal = busy_refusal(error)
        return JSONResponse({"detail": refusal.detail}, 503, headers=refusal.headers)
    except IntakeUnavailable:
        return JSONResponse(
            {"detail": "feedback could not be accepted now (message bus unavailable); retry"},
            status_code=503,
            headers={"Retry-After": "5"},
        )
    return FeedbackAccepted.of(accepted)


def busy_refusal(error: IntakeBusy) -> HTTPException:
    """503 with Retry-After for feedback refused because too many registrations were
    waiting: nothing was recorded (a file says how far it got), so the sender sends the
    same again later."""
    if getattr(error, "registered", None) is not None:
        detail = f"{error}; retry in {IntakeBusy.RETRY_AFTER_S} s"
    else:
        detail = (
            f"intake is busy ({error}); nothing was registered: send it again in "
            f"{IntakeBusy.RETRY_AFTER_S} s"
        )
    return HTTPException(503, detail=detail, headers={"Retry-After": str(IntakeBusy.RETRY_AFTER_S)})


class RequestHandledRoute(APIRoute):
    """A route whose endpoint takes the Request and returns a Response itself. It is
    documented like any route (describe the body with `json_body_schema`) but served
    without FastAPI's per-request dependency solving and response validation, which cost
    about a fifth of intake's CPU per request at load."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler: Callable[[Request], Coroutine[Any, Any, Response]] = self.endpoint
        return handler


def accepted_response(answered: FeedbackAccepted | JSONResponse) -> Response:
    if isinstance(answered, Response):
        return answered
    return Response(answered.model_dump_json(), status_code=202, media_type="application/json")


def parse_json_body(model: type[ModelT], raw: bytes) -> ModelT:
    """Validate a JSON body straight from its bytes; errors as FastAPI reports them."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        raise RequestValidationError(
            [
                {**detail, "loc": ("body", *detail["loc"])}
                for detail in error.errors(include_url=False, include_context=False)
            ]
        ) from error


def json_body_schema(
    model: type[BaseModel], headers: dict[str, int] | None = None
) -> dict[str, Any]:
    """OpenAPI for an endpoint that parses its JSON body itself (see `parse_json_body`)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    # Nested models become components of the document (see `with_body_components`; the
    # OpenAPI test checks that every reference resolves).
    BODY_COMPONENTS.update(schema.pop("$defs", {}))
    extra: dict[str, Any] = {
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}
    }
    if headers:
        extra["parameters"] = [
            {
                "name": name,
                "in": "header",
                "required": False,
                "schema": {"type": "string", "maxLength": limit},
            }
            for name, limit in headers.items()
        ]
    return extra


BODY_COMPONENTS: dict[str, Any] = {}


def with_body_components(app: FastAPI) -> None:
    """Add the nested models of self-parsed bodies to the app's OpenAPI components."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schemas = generate().setdefault("components", {}).setdefault("schemas", {})
            for name, definition in BODY_COMPONENTS.items():
                schemas.setdefault(name, definition)
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]


def fresh(timestamp: str | None) -> bool:
    try:
        return abs(time.time() - int(timestamp or "")) <= FRESHNESS_S
    except ValueError:
        return False


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
