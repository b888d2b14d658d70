"""Routing commands and queues over HTTP: agents, acceptance, disputes, reassignment,
co-handlers, reclassification, priority override, department and triage queues.

Actors are named in the request (`by`, `agent_id`); sign-in and roles come with the
console milestone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, HTTPException, Path
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from contracts.codes import FeedbackType, Priority
from contracts.events import FEEDBACK_NUMBER_PATTERN
from services.cases.domain import Case
from services.common.boundary import Checked, is_blank
from services.routing.assignment import Agent, AgentId
from services.routing.service import NotFound, Refused, RoutingService

Number = Annotated[str, Path(pattern=FEEDBACK_NUMBER_PATTERN)]
Reason = Annotated[str, Field(min_length=1, max_length=2000)]
Actor = Annotated[str, Field(min_length=1, max_length=100)]
T = TypeVar("T")


def _visible(value: str) -> str:
    if is_blank(value):
        raise ValueError("only invisible characters")
    return value


class Command(Checked):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class AcceptIn(Command):
    agent_id: AgentId


class DisputeIn(Command):
    agent_id: AgentId
    reason: Reason


class AssignIn(Command):
    agent_id: AgentId
    by: Actor
    reason: Reason


class CoHandlerIn(Command):
    department: Annotated[str, Field(pattern=r"^[a-z][a-z_]{1,40}$")]
    duty: Reason
    due_at: AwareDatetime
    by: Actor

    promises = frozenset({"due_at"})


class ReclassifyIn(Command):
    category: str
    subcategory: str
    type: FeedbackType | None = None
    by: Actor
    reason: Reason


class PriorityIn(Command):
    priority: Priority
    by: Actor
    reason: Reason


class AgentIn(Command):
    name: Annotated[str, Field(min_length=1, max_length=100), AfterValidator(_visible)]
    department: str
    skills: tuple[str, ...] = ()
    languages: tuple[str, ...] = ("zh",)
    vip: bool = False
    capacity: Annotated[float, Field(ge=0, le=1000)] = 10
    available: bool = True


class CaseView(BaseModel):
    feedback_id: str
    feedback_number: str
    status: str
    department: str | None
    owner: str | None
    priority: str | None
    classification: dict[str, Any] | None
    co_handlers: list[dict[str, Any]]
    version: int

    @classmethod
    def of(cls, case: Case) -> CaseView:
        return cls(
            feedback_id=str(case.id),
            feedback_number=case.feedback_number,
            status=case.status.value,
            department=case.department,
            owner=case.owner,
            priority=case.priority,
            classification=case.classification,
            co_handlers=case.co_handlers,
            version=case.version,
        )


class AgentView(BaseModel):
    agent: Agent
    open_work: float


class QueueItem(BaseModel):
    feedback_number: str
    department: str | None
    category: str | None
    priority: str
    registered_at: datetime
    owner: str | None
    state: str


async def _run(call: Callable[[], T]) -> T:
    try:
        return await asyncio.to_thread(call)
    except NotFound as error:
        raise HTTPException(404, detail=str(error)) from error
    except Refused as error:
        raise HTTPException(409, detail=str(error)) from error


def routing_router(routing: RoutingService) -> APIRouter:
    router = APIRouter(tags=["routing"])

    @router.post("/v1/cases/{number}/accept", response_model=CaseView)
    async def accept(number: Number, body: AcceptIn) -> CaseView:
        return CaseView.of(await _run(lambda: routing.accept(number, body.agent_id)))

    @router.post("/v1/cases/{number}/dispute", response_model=CaseView)
    async def dispute(number: Number, body: DisputeIn) -> CaseView:
        return CaseView.of(await _run(lambda: routing.dispute(number, body.agent_id, body.reason)))

    @router.post("/v1/cases/{number}/assign", response_model=CaseView)
    async def assign(number: Number, body: AssignIn) -> CaseView:
        return CaseView.of(
            await _run(lambda: routing.assign(number, body.agent_id, body.by, body.reason))
        )

    @router.post("/v1/cases/{number}/co-handlers", response_model=CaseView)
    async def add_co_handler(number: Number, body: CoHandlerIn) -> CaseView:
        return CaseView.of(
            await _run(
                lambda: routing.add_co_handler(
                    number, body.department, body.duty, body.due_at, body.by
                )
            )
        )

    @router.post("/v1/cases/{number}/reclassify", response_model=CaseView)
    async def reclassify(number: Number, body: ReclassifyIn) -> CaseView:
        return CaseView.of(
            await _run(
                lambda: routing.reclassify(
                    number, body.by, body.reason, body.category, body.subcategory, body.type
                )
            )
        )

    @router.post("/v1/cases/{number}/priority", response_model=CaseView)
    async def override_priority(number: Number, body: PriorityIn) -> CaseView:
        return CaseView.of(
            await _run(
                lambda: routing.override_priority(number, body.priority, body.by, body.reason)
            )
        )

    @router.get("/v1/cases/{number}", response_model=CaseView)
    async def get_case(number: Number) -> CaseView:
        def load() -> Case:
            row = routing.worklist.find(number)
            if row is None:
                raise NotFound(f"no routed feedback {number}")
            return routing.store.get_case(row.feedback_id)

        return CaseView.of(await _run(load))

    @router.get("/v1/agents", response_model=list[AgentView])
    async def list_agents(department: str | None = None) -> list[AgentView]:
        rows = await _run(lambda: routing.worklist.agents(department))
        return [AgentView(agent=agent, open_work=load) for agent, load in rows]

    @router.put("/v1/agents/{agent_id}", response_model=AgentView)
    async def put_agent(
        agent_id: Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_.-]{1,63}$")], body: AgentIn
    ) -> AgentView:
        agent = Agent(agent_id=agent_id, **body.model_dump())
        await _run(lambda: routing.put_agent(agent))
        loads = dict(
            (a.agent_id, load)
            for a, load in await _run(lambda: routing.worklist.agents(agent.department))
        )
        return AgentView(agent=agent, open_work=loads.get(agent_id, 0.0))

    @router.get("/v1/departments/{department}/queue", response_model=list[QueueItem])
    async def department_queue(department: str, state: str = "queued") -> list[QueueItem]:
        if state not in ("queued", "owned", "disputed"):
            raise HTTPException(422, detail="state is one of queued, owned, disputed")
        rows = await _run(lambda: routing.worklist.queue(department, state))
        return [QueueItem(**{k: getattr(r, k) for k in QueueItem.model_fields}) for r in rows]

    @router.get("/v1/triage", response_model=list[QueueItem])
    async def triage_queue() -> list[QueueItem]:
        rows = await _run(lambda: routing.worklist.queue(None, "triage"))
        return [QueueItem(**{k: getattr(r, k) for k in QueueItem.model_fields}) for r in rows]

    return router
