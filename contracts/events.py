"""Events: facts that happened, published on the bus. Version 1 of each schema."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, ClassVar, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

from contracts import topics
from contracts.codes import CUSTOMER_TIER_PATTERN, Channel, Emotion, FeedbackType, Priority

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
    related_feedback: FeedbackNumber | None = Field(
        default=None, description="the earlier feedback a callback found this problem in"
    )


class FeedbackReceived(Registration):
    """A channel adapter accepted a feedback and gave it a number."""

    TOPIC: ClassVar[str] = topics.FEEDBACK_RECEIVED

    event_type: Literal["FeedbackReceived"] = "FeedbackReceived"
    schema_version: Literal[1] = 1
    feedback_id: UUID

    def key(self) -> bytes:
        return str(self.feedback_id).encode()


class Classification(Contract):
    """What the rules (or a person) decided about a feedback, and why."""

    type: FeedbackType
    category: str | None
    subcategory: str | None
    priority: Priority
    department: str
    emotion: Emotion
    flags: tuple[str, ...] = ()
    confidence: Annotated[float, Field(ge=0, le=1)]
    rules: tuple[str, ...] = ()
    needs_triage: bool = False
    supervisor_attention: bool = False
    first_response_hours: float | None = None


class CustomerCorrespondence(Contract):
    """A customer wrote again about an existing feedback (an email reply, a supplement).

    `supplied` carries registration fields the customer provided (e.g. `product_model`)."""

    TOPIC: ClassVar[str] = topics.CORRESPONDENCE

    event_type: Literal["CustomerCorrespondence"] = "CustomerCorrespondence"
    schema_version: Literal[1] = 1
    correspondence_id: UUID
    feedback_id: UUID
    feedback_number: FeedbackNumber
    channel: Channel
    channel_reference: Annotated[str, Field(max_length=500)] | None = None
    received_at: AwareDatetime
    text: Annotated[str, Field(max_length=20_000)] = ""
    supplied: dict[str, str] = {}
    evidence: tuple[Evidence, ...] = ()

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
    department: str | None = Field(default=None, description="responsible department then")

    def key(self) -> bytes:
        return str(self.feedback_id).encode()


class CaseRegistered(CaseEvent):
    """The feedback became a case: its registration is on record."""

    event_type: Literal["CaseRegistered"] = "CaseRegistered"
    registration: Registration


class FeedbackClassified(CaseEvent):
    """Classified by the rules, or corrected by a person (then `by`, `reason`, `previous`)."""

    event_type: Literal["FeedbackClassified"] = "FeedbackClassified"
    classification: Classification
    by: str
    reason: str | None = None
    previous: Classification | None = None


class SentToTriage(CaseEvent):
    """Not confident enough to route: a person decides, with the best guess shown."""

    event_type: Literal["SentToTriage"] = "SentToTriage"
    reason: str


class FeedbackRouted(CaseEvent):
    """One responsible department (主责部门); `previous_department` on a re-route."""

    event_type: Literal["FeedbackRouted"] = "FeedbackRouted"
    previous_department: str | None = None
    reason: str


class OwnerAssigned(CaseEvent):
    event_type: Literal["OwnerAssigned"] = "OwnerAssigned"
    owner: str
    previous_owner: str | None = None
    by: str
    reason: str


class OwnerAccepted(CaseEvent):
    """The owner confirmed in the system that they take the case (确认接收)."""

    event_type: Literal["OwnerAccepted"] = "OwnerAccepted"
    owner: str


class AssignmentDisputed(CaseEvent):
    """The owner refused with a reason; the supervisor reassigns."""

    event_type: Literal["AssignmentDisputed"] = "AssignmentDisputed"
    owner: str
    reason: str


class CoHandlerAdded(CaseEvent):
    """A co-handling department (协办) with its duty and due time."""

    event_type: Literal["CoHandlerAdded"] = "CoHandlerAdded"
    co_department: str
    duty: str
    due_at: AwareDatetime
    by: str


class PriorityOverridden(CaseEvent):
    event_type: Literal["PriorityOverridden"] = "PriorityOverridden"
    previous: Priority
    priority: Priority
    by: str
    reason: str


class InformationRequested(CaseEvent):
    """Mandatory information is missing (待补充): notification adapters ask the customer;
    deadline clocks pause until it arrives."""

    event_type: Literal["InformationRequested"] = "InformationRequested"
    missing: tuple[str, ...]


class InformationSupplied(CaseEvent):
    event_type: Literal["InformationSupplied"] = "InformationSupplied"
    supplied: dict[str, str]
    complete: bool


class CorrespondenceReceived(CaseEvent):
    """A customer's message about this case, kept with the case's communication records."""

    event_type: Literal["CorrespondenceReceived"] = "CorrespondenceReceived"
    channel: Channel
    channel_reference: str | None = None
    text: str
    evidence: tuple[Evidence, ...] = ()


ClockName = Literal[
    "registration",
    "first_response",
    "progress_update",
    "co_handler_response",
    "resolution",
    "result_notice",
]


class ClockStarted(CaseEvent):
    """A promise became a clock (requirements §4, §5): due at `due_at`, warned at `warn_at`.

    `target` as configured (`4h`, `3wd`), `time` business or calendar (see README,
    Business time); `subject` names what the clock is about when a case has several of the
    same kind (a co-handling department)."""

    event_type: Literal["ClockStarted"] = "ClockStarted"
    clock: ClockName
    subject: str | None = None
    target: str
    time: Literal["business", "calendar"]
    started_at: AwareDatetime
    due_at: AwareDatetime
    warn_at: AwareDatetime


class ClockPaused(CaseEvent):
    """Waiting for the customer: the clock stops."""

    event_type: Literal["ClockPaused"] = "ClockPaused"
    clock: ClockName
    subject: str | None = None
    paused_at: AwareDatetime


class ClockResumed(CaseEvent):
    """The clock runs again; its due time moved later by the counted paused time."""

    event_type: Literal["ClockResumed"] = "ClockResumed"
    clock: ClockName
    subject: str | None = None
    resumed_at: AwareDatetime
    due_at: AwareDatetime
    warn_at: AwareDatetime


class ClockRecomputed(CaseEvent):
    """A priority change or reclassification changed the target: recomputed from the
    original start, paused time still excluded."""

    event_type: Literal["ClockRecomputed"] = "ClockRecomputed"
    clock: ClockName
    subject: str | None = None
    target: str
    time: Literal["business", "calendar"]
    due_at: AwareDatetime
    warn_at: AwareDatetime
    reason: str


class ClockMet(CaseEvent):
    """The promise was kept: `by_event` is the case event that satisfied it."""

    event_type: Literal["ClockMet"] = "ClockMet"
    clock: ClockName
    subject: str | None = None
    met_at: AwareDatetime
    by_event: str
    late: bool


class ClockWarned(CaseEvent):
    """The clock reached its warning share (default 75 %) and is not met."""

    event_type: Literal["ClockWarned"] = "ClockWarned"
    clock: ClockName
    subject: str | None = None
    due_at: AwareDatetime
    owner: str | None = None


class ClockBreached(CaseEvent):
    """The clock ran out (超时): the case escalates."""

    event_type: Literal["ClockBreached"] = "ClockBreached"
    clock: ClockName
    subject: str | None = None
    due_at: AwareDatetime
    owner: str | None = None


def type_names(*kinds: type[CaseEvent]) -> frozenset[str]:
    """The `event_type` values of these events (what the relay's event-type header says)."""
    return frozenset(str(kind.model_fields["event_type"].default) for kind in kinds)


# The deadlines' own facts (the sla service's): consumers that only follow the case's
# life, not its clocks, skip them.
CLOCK_EVENTS = (
    ClockStarted,
    ClockPaused,
    ClockResumed,
    ClockRecomputed,
    ClockMet,
    ClockWarned,
    ClockBreached,
)


class EscalationRaised(CaseEvent):
    """One step up the ladder (owner → supervisor → department head)."""

    event_type: Literal["EscalationRaised"] = "EscalationRaised"
    level: Annotated[int, Field(ge=1)]
    to_role: Literal["supervisor", "head"]
    reason: str
    clock: ClockName | None = None
    subject: str | None = None


class EscalationRequested(CaseEvent):
    """The owner asks for escalation before a breach (升级申请)."""

    event_type: Literal["EscalationRequested"] = "EscalationRequested"
    by: str
    reason: str
    support_needed: str | None = None


class NoteAdded(CaseEvent):
    """A line of the progress log (处理进度); `visible_to_customer` ones are sent to them."""

    event_type: Literal["NoteAdded"] = "NoteAdded"
    text: str
    visible_to_customer: bool
    step: str | None = None
    by: str


class PlanSet(CaseEvent):
    """The cause found and the plan (处理方案) with its expected completion."""

    event_type: Literal["PlanSet"] = "PlanSet"
    diagnosis: str
    plan: str
    expected_completion: AwareDatetime
    by: str


class CoHandlerResponded(CaseEvent):
    event_type: Literal["CoHandlerResponded"] = "CoHandlerResponded"
    co_department: str
    response: str
    by: str


class CaseResolved(CaseEvent):
    """The result (处理结果); sent to the customer, who confirms it."""

    event_type: Literal["CaseResolved"] = "CaseResolved"
    result: Literal["resolved", "partially_resolved", "unresolved"]
    summary: str
    reason: str | None = None
    measures: str | None = None
    resources: str | None = None
    by: str


class CustomerConfirmed(CaseEvent):
    event_type: Literal["CustomerConfirmed"] = "CustomerConfirmed"
    satisfied: bool
    comment: str | None = None
    by: str
    on_behalf: bool = Field(description="entered by staff for the customer")


class CaseReopened(CaseEvent):
    event_type: Literal["CaseReopened"] = "CaseReopened"
    reason: str
    by: str
    previous_priority: Priority
    priority: Priority


class CaseRated(CaseEvent):
    event_type: Literal["CaseRated"] = "CaseRated"
    csat: Annotated[int, Field(ge=1, le=5)]
    nps: Annotated[int, Field(ge=0, le=10)] | None = None
    aspects: dict[str, Annotated[int, Field(ge=1, le=5)]] = {}
    comment: str | None = None
    by: str


class CaseClosed(CaseEvent):
    event_type: Literal["CaseClosed"] = "CaseClosed"
    reason: str | None = None
    by: str


class MarkedComplex(CaseEvent):
    event_type: Literal["MarkedComplex"] = "MarkedComplex"
    reason: str
    by: str


class CaseArchived(CaseEvent):
    event_type: Literal["CaseArchived"] = "CaseArchived"
    by: str


CASE_EVENTS: tuple[type[CaseEvent], ...] = (
    CaseRegistered,
    FeedbackClassified,
    SentToTriage,
    FeedbackRouted,
    OwnerAssigned,
    OwnerAccepted,
    AssignmentDisputed,
    CoHandlerAdded,
    PriorityOverridden,
    InformationRequested,
    InformationSupplied,
    CorrespondenceReceived,
    *CLOCK_EVENTS,
    EscalationRaised,
    EscalationRequested,
    NoteAdded,
    PlanSet,
    CoHandlerResponded,
    CaseResolved,
    CustomerConfirmed,
    CaseReopened,
    CaseRated,
    CaseClosed,
    MarkedComplex,
    CaseArchived,
)
CaseEventMessage = Annotated[
    CaseRegistered
    | FeedbackClassified
    | SentToTriage
    | FeedbackRouted
    | OwnerAssigned
    | OwnerAccepted
    | AssignmentDisputed
    | CoHandlerAdded
    | PriorityOverridden
    | InformationRequested
    | InformationSupplied
    | CorrespondenceReceived
    | ClockStarted
    | ClockPaused
    | ClockResumed
    | ClockRecomputed
    | ClockMet
    | ClockWarned
    | ClockBreached
    | EscalationRaised
    | EscalationRequested
    | NoteAdded
    | PlanSet
    | CoHandlerResponded
    | CaseResolved
    | CustomerConfirmed
    | CaseReopened
    | CaseRated
    | CaseClosed
    | MarkedComplex
    | CaseArchived,
    Field(discriminator="event_type"),
]
case_event_adapter: TypeAdapter[CaseEventMessage] = TypeAdapter(CaseEventMessage)


class ReportFile(Contract):
    """One file of a written report."""

    name: Annotated[str, Field(max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    format: Literal["xlsx", "html"]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    size_bytes: Annotated[int, Field(ge=0)]


class ReportPublished(Contract):
    """A scheduled report (客户反馈分析报告) was written to the reports folder.

    `report_id` is derived from the kind and the period: the same report announced twice
    (a crash between the announcement and its record) carries the same id."""

    TOPIC: ClassVar[str] = topics.REPORTS

    event_type: Literal["ReportPublished"] = "ReportPublished"
    schema_version: Literal[1] = 1
    report_id: UUID
    kind: Literal["weekly", "monthly"]
    period: Annotated[str, Field(pattern=r"^\d{4}-(W\d{2}|\d{2})$", examples=["2026-W07"])]
    period_from: date
    period_to: date
    zone: ShortText
    total: Annotated[int, Field(ge=0, description="feedback received in the period")]
    folder: Annotated[str, Field(max_length=4096)]
    files: tuple[ReportFile, ...]
    generated_at: AwareDatetime

    def key(self) -> bytes:
        return f"{self.kind}:{self.period}".encode()


class DeadLetter(Contract):
    """A message that could not be processed, kept with the reason so nothing is lost."""

    TOPIC: ClassVar[str] = topics.DEADLETTER

    event_type: Literal["DeadLetter"] = "DeadLetter"
    schema_version: Literal[1] = 1
    dead_letter_id: UUID | None = None
    source: Annotated[str, Field(max_length=200)]
    reason: Annotated[str, Field(max_length=10_000)]
    # "sealed": base64 of the payload encrypted with a key derived from the PII key (what
    # the platform publishes); metadata["payload_encoding"] says how to read it once opened.
    payload: str
    payload_encoding: Literal["utf-8", "base64", "sealed"] = "utf-8"
    metadata: dict[str, str] = {}
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    failed_at: datetime

    def key(self) -> bytes | None:
        return None
