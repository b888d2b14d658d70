"""Events: facts that happened, published on the bus. Version 1 of each schema."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, ClassVar, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

from contracts import topics
from contracts.codes import CUSTOMER_TIER_PATTERN, Channel, Emotion, FeedbackType

FEEDBACK_NUMBER_PATTERN = r"^F\d{8}-\d{4,}$"
CUSTOMER_REF_PATTERN = r"^客户-\d{4}-\d{4,}$"

FeedbackNumber = Annotated[str, Field(pattern=FEEDBACK_NUMBER_PATTERN, examples=["F20240520-0001"])]
CustomerRef = Annotated[str, Field(pattern=CUSTOMER_REF_PATTERN, examples=["客户-2024-0173"])]
CustomerTier = Annotated[str, Field(pattern=CUSTOMER_TIER_PATTERN, examples=["vip", "normal"])]
ShortText = Annotated[str, Field(max_length=200)]


class Contract(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Evidence(Contract):
    """An attachment kept by reference (chat transcript, email, image, recording)."""

    kind: Literal["transcript", "email", "image", "recording", "document", "other"]
    reference: Annotated[str, Field(max_length=500)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    filename: ShortText | None = None
    content_type: ShortText | None = None
    size_bytes: Annotated[int, Field(ge=0)] | None = None


class Registration(Contract):
    """The registration record (客户反馈登记表) without personal data.

    The customer is a pseudonymous reference; name and contact details stay in the PII
    vault of intake.
    """

    feedback_number: FeedbackNumber
    received_at: AwareDatetime
    registered_at: AwareDatetime
    channel: Channel
    channel_reference: Annotated[str, Field(max_length=500)] | None = None
    customer_ref: CustomerRef
    customer_tier: CustomerTier = "normal"
    product_model: ShortText | None = None
    service_type: ShortText | None = None
    purchase_date: date | None = None
    description: Annotated[str, Field(min_length=1, max_length=20_000)]
    customer_attempts: Annotated[str, Field(max_length=5_000)] | None = None
    occurred_at: AwareDatetime | None = None
    expectation: Annotated[str, Field(max_length=5_000)] | None = None
    emotion: Emotion | None = None
    stated_type: FeedbackType | None = None
    evidence: tuple[Evidence, ...] = ()
    receiver: ShortText


class FeedbackReceived(Registration):
    """A channel adapter accepted a feedback and gave it a number."""

    TOPIC: ClassVar[str] = topics.FEEDBACK_RECEIVED

    event_type: Literal["FeedbackReceived"] = "FeedbackReceived"
    schema_version: Literal[1] = 1
    feedback_id: UUID

    def key(self) -> bytes:
        return str(self.feedback_id).encode()


class CaseEvent(Contract):
    """Envelope of every event in a feedback case's stream, as relayed from the store.

    `version` orders events within one case (1, 2, ...); `position` orders all case
    events in the store. A consumer that has applied version N of a case ignores any
    repeat of versions up to N.
    """

    TOPIC: ClassVar[str] = topics.FEEDBACK_EVENTS

    schema_version: Literal[1] = 1
    feedback_id: UUID
    feedback_number: FeedbackNumber
    version: Annotated[int, Field(ge=1)]
    position: Annotated[int, Field(ge=1)]
    occurred_at: AwareDatetime

    def key(self) -> bytes:
        return str(self.feedback_id).encode()


class CaseRegistered(CaseEvent):
    """The feedback became a case: its registration is on record."""

    event_type: Literal["CaseRegistered"] = "CaseRegistered"
    registration: Registration


# Grows into a union discriminated by `event_type` as the case learns more facts.
CaseEventMessage = CaseRegistered
case_event_adapter: TypeAdapter[CaseEventMessage] = TypeAdapter(CaseEventMessage)


class DeadLetter(Contract):
    """A message that could not be processed, kept with the reason so nothing is lost."""

    TOPIC: ClassVar[str] = topics.DEADLETTER

    event_type: Literal["DeadLetter"] = "DeadLetter"
    schema_version: Literal[1] = 1
    source: Annotated[str, Field(max_length=200)]
    reason: Annotated[str, Field(max_length=10_000)]
    payload: str
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    failed_at: datetime

    def key(self) -> bytes | None:
        return None
