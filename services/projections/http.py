"""Query API over the registration table."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, Field

from contracts.codes import CUSTOMER_TIER_PATTERN, Channel, FeedbackType, Priority
from contracts.events import FEEDBACK_NUMBER_PATTERN
from services.access.http import require
from services.access.roles import Actor, sees_department, visible_departments
from services.projections import queues, registrations


class RegistrationView(BaseModel):
    feedback_id: str
    feedback_number: str
    received_at: datetime
    registered_at: datetime
    channel: str
    channel_reference: str | None
    customer_ref: str
    customer_tier: str
    product_model: str | None
    service_type: str | None
    purchase_date: date | None
    description: str
    customer_attempts: str | None
    occurred_at: datetime | None
    expectation: str | None
    emotion: str | None
    stated_type: str | None
    feedback_type: str | None
    evidence: list[dict[str, Any]]
    receiver: str
    registration_late: bool
    status: str
    category: str | None = None
    subcategory: str | None = None
    priority: str | None = None
    department: str | None = None
    classified_emotion: str | None = None
    flags: list[str] = []
    confidence: float | None = None
    classification_rules: list[str] = []
    supervisor_attention: bool = False
    owner: str | None = None
    co_handlers: list[dict[str, Any]] = []
    missing_information: list[str] = []
    correspondence_count: int = 0
    related_feedback: str | None = None
    warned_clocks: list[str] = []
    breached_clocks: list[str] = []
    escalation_level: int = 0
    # The tracking table (问题处理跟踪表): assignment, plan, progress, result, verdict.
    assigned_at: datetime | None = None
    accepted_at: datetime | None = None
    diagnosis: str | None = None
    plan: str | None = None
    expected_completion: datetime | None = None
    progress: list[dict[str, Any]] = []
    result: str | None = None
    result_summary: str | None = None
    result_reason: str | None = None
    measures: str | None = None
    resources: str | None = None
    resolved_at: datetime | None = None
    satisfied: bool | None = None
    customer_comment: str | None = None
    confirmed_at: datetime | None = None
    csat: int | None = None
    nps: int | None = None
    closed_at: datetime | None = None

    @classmethod
    def of(cls, row: dict[str, Any]) -> RegistrationView:
        return cls.model_validate({**row, "feedback_id": str(row["feedback_id"])})


class ClockLeft(BaseModel):
    clock: str
    subject: str | None
    state: str
    due_at: datetime
    seconds_left: float = Field(description="negative when overdue; frozen while paused")
    warned: bool
    breached: bool


class QueueCase(BaseModel):
    feedback_number: str
    department: str | None
    owner: str | None
    status: str
    priority: str | None
    feedback_type: str | None
    category: str | None
    channel: str
    customer_tier: str
    product_model: str | None
    received_at: datetime
    escalation_level: int
    warned_clocks: list[str]
    breached_clocks: list[str]
    next_due_at: datetime | None
    clocks: list[ClockLeft]


class BoardRow(BaseModel):
    department: str
    owner: str | None
    open: int
    warned: int
    breached: int
    escalated: int
    overdue: int


class FlaggedCase(BaseModel):
    feedback_number: str
    department: str | None
    owner: str | None
    status: str
    priority: str | None
    warned_clocks: list[str]
    breached_clocks: list[str]
    escalation_level: int
    clocks: list[ClockLeft] = Field(default=[], description="the clocks not met yet")


class SlaBoard(BaseModel):
    rows: list[BoardRow]
    flagged: list[FlaggedCase]


class RegistrationPage(BaseModel):
    items: list[RegistrationView]
    count: int


def projections_router(pool: AsyncConnectionPool) -> APIRouter:
    router = APIRouter(tags=["registrations"])

    @router.get("/v1/feedback/{number}", response_model=RegistrationView)
    async def get_feedback(
        number: Annotated[str, Path(pattern=FEEDBACK_NUMBER_PATTERN)],
        actor: Annotated[Actor, require("registration.read")],
    ) -> RegistrationView:
        row = await registrations.find_by_number(pool, number)
        if row is None:
            raise HTTPException(404, detail=f"no registered feedback {number}")
        if not sees_department(actor, row["department"]):
            raise HTTPException(403, detail=f"{number} belongs to another department")
        return RegistrationView.of(row)

    @router.get("/v1/registrations", response_model=RegistrationPage)
    async def list_registrations(
        actor: Annotated[Actor, require("registration.read")],
        since: datetime | None = None,
        channel: Channel | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> RegistrationPage:
        rows = await registrations.list_registrations(
            pool, since, channel.value if channel else None, limit, visible_departments(actor)
        )
        return RegistrationPage(items=[RegistrationView.of(r) for r in rows], count=len(rows))

    @router.get("/v1/worklist", response_model=list[QueueCase])
    async def worklist(
        actor: Annotated[Actor, require("queue.read")],
        department: Annotated[str | None, Query(max_length=100)] = None,
        owner: Annotated[str | None, Query(max_length=100)] = None,
        status: Annotated[str | None, Query(max_length=40)] = None,
        channel: Channel | None = None,
        type: FeedbackType | None = None,
        category: Annotated[str | None, Query(max_length=100)] = None,
        priority: Priority | None = None,
        tier: Annotated[str | None, Query(pattern=CUSTOMER_TIER_PATTERN)] = None,
        mine: bool = False,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
        offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
    ) -> list[QueueCase]:
        """Open cases of the departments the actor sees (`mine`: the actor's own), most
        urgent first, then the nearest due clock, with the time left on every open clock;
        narrowed by any of the filters, a page of `limit` from `offset`."""
        if department is not None and not sees_department(actor, department):
            raise HTTPException(403, detail=f"the queue of {department} is not yours to see")
        if mine:
            if actor.agent_id is None:
                raise HTTPException(422, detail="mine=true needs a signed-in agent")
            owner = actor.agent_id
        filters = queues.QueueFilters(
            department=department, owner=owner, status=status,
            channel=channel.value if channel else None,
            feedback_type=type.value if type else None, category=category,
            priority=priority.value if priority else None, customer_tier=tier,
        )  # fmt: skip
        rows = await queues.open_cases(
            pool, visible_departments(actor), filters, limit=limit, offset=offset,
            now=datetime.now(UTC),
        )  # fmt: skip
        return [QueueCase.model_validate(r) for r in rows]

    @router.get("/v1/sla/board", response_model=SlaBoard)
    async def board(actor: Annotated[Actor, require("sla.read")]) -> SlaBoard:
        """Warned, breached, escalated and overdue cases by department and owner."""
        found = await queues.sla_board(pool, visible_departments(actor), datetime.now(UTC))
        return SlaBoard.model_validate(found)

    return router
