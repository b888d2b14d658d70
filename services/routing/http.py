"""Routing commands and queues over HTTP: agents, acceptance, disputes, reassignment,
co-handlers, reclassification, priority override, department and triage queues.

The actor of every command is the signed-in user (services/access): never a body field.
A department sees only its own cases (403 for another department's case or queue).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from contracts.codes import FeedbackType, Priority
from contracts.events import FEEDBACK_NUMBER_PATTERN
from services.access import audit
from services.access.http import require
from services.access.roles import Actor, Role, sees_department
from services.cases.domain import Case
from services.common.boundary import Checked, is_blank, text_flaw
from services.common.masking import mask_contacts
from services.handling.actions import possible_actions
from services.intake.pii_vault import Contact, PiiVault, normalise_phone
from services.routing.assignment import Agent, AgentId
from services.routing.intake_assist import intake_assist_router
from services.routing.service import NotFound, Refused, RoutingService
from services.routing.worklist import CaseRow, Worklist

Number = Annotated[str, Path(pattern=FEEDBACK_NUMBER_PATTERN)]
Reason = Annotated[str, Field(min_length=1, max_length=2000)]
T = TypeVar("T")


def _visible(value: str) -> str:
    if is_blank(value):
        raise ValueError("only invisible characters")
    return value


class Command(Checked):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class DisputeIn(Command):
    reason: Reason


class EscalationRequestIn(Command):
    reason: Reason
    support_needed: Annotated[str, Field(max_length=2000)] | None = None


class AssignIn(Command):
    agent_id: AgentId = Field(description="the agent the case is assigned to")
    reason: Reason


class CoHandlerIn(Command):
    department: Annotated[str, Field(pattern=r"^[a-z][a-z_]{1,40}$")]
    duty: Reason
    due_at: AwareDatetime

    promises = frozenset({"due_at"})


class ReclassifyIn(Command):
    category: str
    subcategory: str
    type: FeedbackType | None = None
    reason: Reason


class PriorityIn(Command):
    priority: Priority
    reason: Reason


class AgentIn(Command):
    name: Annotated[str, Field(min_length=1, max_length=100), AfterValidator(_visible)]
    department: str
    skills: tuple[str, ...] = ()
    languages: tuple[str, ...] = ("zh",)
    vip: bool = False
    capacity: Annotated[float, Field(ge=0, le=1000)] = 10
    available: bool = True


class MaskedContact(BaseModel):
    """The customer's contact as staff may see it without revealing it (no audit needed)."""

    name: str | None
    phone: str | None
    email: str | None
    address: str | None
    account: str | None

    @classmethod
    def of(cls, contact: Contact) -> MaskedContact:
        return cls(
            name=_masked_name(contact.name),
            phone=_masked_phone(contact.phone),
            email=_masked_email(str(contact.email)) if contact.email else None,
            address="[地址已隐藏]" if contact.address else None,
            account=contact.account.split(":", 1)[0] + ":***" if contact.account else None,
        )


def _masked_name(name: str | None) -> str | None:
    name = (name or "").strip()
    return name[0] + "*" * max(len(name) - 1, 1) if name else None


def _masked_email(email: str) -> str:
    """z***@qq.com: by the address's own structure, so internationalised addresses
    (张三@qq.com, which free-text patterns do not recognise) are masked too."""
    local, _, domain = email.rpartition("@")
    return (local[:1] or "*") + "***@" + domain if local else "***"


def _masked_phone(phone: str | None) -> str | None:
    """138****5678: the first three and the last four digits, never more."""
    digits = re.sub(r"\D", "", normalise_phone(phone) if phone else "")
    if not digits:
        return None
    return digits[:3] + "****" + digits[-4:] if len(digits) >= 10 else "****" + digits[-2:]


class CaseView(BaseModel):
    feedback_id: str
    feedback_number: str
    status: str
    department: str | None
    owner: str | None
    priority: str | None
    classification: dict[str, Any] | None
    co_handlers: list[dict[str, Any]]
    clocks: list[dict[str, Any]] = []
    escalation_level: int = 0
    timeline: list[dict[str, Any]] = []
    version: int
    # Filled by GET /v1/cases/{n} only: what the signed-in person may do now, and the
    # customer's contact masked (the unmasked one: /contact, audited).
    actions: list[str] = Field(default=[], description="the commands this person may give now")
    contact: MaskedContact | None = None
    complex: bool = False

    @classmethod
    def of(cls, case: Case) -> CaseView:
        now = datetime.now(UTC)
        return cls(
            feedback_id=str(case.id),
            feedback_number=case.feedback_number,
            status=case.status.value,
            department=case.department,
            owner=case.owner,
            priority=case.priority,
            classification=case.classification,
            co_handlers=case.co_handlers,
            clocks=[
                {
                    "clock": c["clock"],
                    "subject": c["subject"],
                    "target": c["target"],
                    "time": c["time"],
                    "state": c["state"],
                    "started_at": c["started_at"],
                    "due_at": c["due_at"],
                    "warned": c["warned"],
                    "breached": c["breached"],
                    # A paused clock keeps the time it had left when it paused.
                    "seconds_left": round(
                        (c["due_at"] - (c.get("paused_since") or now)).total_seconds(), 1
                    )
                    if c["due_at"]
                    else None,
                }
                for c in case.clocks.values()
            ],
            escalation_level=case.escalated,
            version=case.version,
            complex=case.complex,
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


class SubcategoryView(BaseModel):
    code: str
    label: str
    department: str


class CategoryView(BaseModel):
    code: str
    label: str
    department: str
    subcategories: list[SubcategoryView]


async def visible_case(worklist: Worklist, number: str, actor: Actor | None) -> CaseRow:
    """The routed case, if it exists (404) and is in a department the actor works in
    (403); without an actor (a customer's own token) only its existence is checked."""
    row = await asyncio.to_thread(worklist.find, number)
    if row is None:
        raise HTTPException(404, detail=f"no routed feedback {number}")
    # A case in triage belongs to no department yet: the triage department routes it.
    department = None if row.state == "triage" else row.department
    if actor is not None and not sees_department(actor, department):
        raise HTTPException(403, detail=f"{number} belongs to another department")
    return row


async def _run(call: Callable[[], T]) -> T:
    try:
        return await asyncio.to_thread(call)
    except NotFound as error:
        raise HTTPException(404, detail=str(error)) from error
    except Refused as error:
        raise HTTPException(409, detail=str(error)) from error


class ContactView(BaseModel):
    customer_ref: str
    name: str | None
    phone: str | None
    email: str | None
    address: str | None
    account: str | None


def routing_router(
    routing: RoutingService, vault: PiiVault, reveal_roles: tuple[str, ...]
) -> APIRouter:
    router = APIRouter(tags=["routing"])
    # The registering agent's help: suggestion as they type, the caller's recent feedback.
    router.include_router(intake_assist_router(routing, vault))

    async def case_of(number: str, actor: Actor) -> CaseRow:
        return await visible_case(routing.worklist, number, actor)

    def agent_of(actor: Actor) -> str:
        if not actor.agent_id:
            raise HTTPException(403, detail=f"{actor.username} has no agent id to take cases")
        return actor.agent_id

    @router.post("/v1/cases/{number}/accept", response_model=CaseView)
    async def accept(number: Number, actor: Annotated[Actor, require("case.accept")]) -> CaseView:
        await case_of(number, actor)
        agent = agent_of(actor)
        return CaseView.of(await _run(lambda: routing.accept(number, agent)))

    @router.post("/v1/cases/{number}/dispute", response_model=CaseView)
    async def dispute(
        number: Number, body: DisputeIn, actor: Annotated[Actor, require("case.dispute")]
    ) -> CaseView:
        await case_of(number, actor)
        agent = agent_of(actor)
        return CaseView.of(await _run(lambda: routing.dispute(number, agent, body.reason)))

    @router.post("/v1/cases/{number}/escalation-requests", response_model=CaseView)
    async def request_escalation(
        number: Number,
        body: EscalationRequestIn,
        actor: Annotated[Actor, require("case.escalate")],
    ) -> CaseView:
        """The owner asks for escalation, with the reason and the support needed (升级申请)."""
        await case_of(number, actor)
        agent = agent_of(actor)
        return CaseView.of(
            await _run(
                lambda: routing.request_escalation(
                    number,
                    agent,
                    mask_contacts(body.reason),
                    mask_contacts(body.support_needed) if body.support_needed else None,
                )
            )
        )

    @router.post("/v1/cases/{number}/assign", response_model=CaseView)
    async def assign(
        number: Number, body: AssignIn, actor: Annotated[Actor, require("case.assign")]
    ) -> CaseView:
        await case_of(number, actor)
        return CaseView.of(
            await _run(lambda: routing.assign(number, body.agent_id, actor.name, body.reason))
        )

    @router.post("/v1/cases/{number}/co-handlers", response_model=CaseView)
    async def add_co_handler(
        number: Number, body: CoHandlerIn, actor: Annotated[Actor, require("case.co_handle")]
    ) -> CaseView:
        row = await case_of(number, actor)
        if actor.role is Role.agent and row.owner != actor.agent_id:
            raise HTTPException(403, detail="only the case's owner asks for co-handling")
        return CaseView.of(
            await _run(
                lambda: routing.add_co_handler(
                    number, body.department, body.duty, body.due_at, actor.name
                )
            )
        )

    @router.post("/v1/cases/{number}/reclassify", response_model=CaseView)
    async def reclassify(
        number: Number, body: ReclassifyIn, actor: Annotated[Actor, require("case.reclassify")]
    ) -> CaseView:
        await case_of(number, actor)
        return CaseView.of(
            await _run(
                lambda: routing.reclassify(
                    number, actor.name, body.reason, body.category, body.subcategory, body.type
                )
            )
        )

    @router.post("/v1/cases/{number}/priority", response_model=CaseView)
    async def override_priority(
        number: Number, body: PriorityIn, actor: Annotated[Actor, require("case.priority")]
    ) -> CaseView:
        await case_of(number, actor)
        return CaseView.of(
            await _run(
                lambda: routing.override_priority(number, body.priority, actor.name, body.reason)
            )
        )

    @router.get("/v1/cases/{number}", response_model=CaseView)
    async def get_case(number: Number, actor: Annotated[Actor, require("case.read")]) -> CaseView:
        """The case, its timeline, the commands the signed-in person may give it now
        (`actions`) and the customer's contact masked."""
        row = await case_of(number, actor)

        def load() -> CaseView:
            row = routing.worklist.find(number)
            if row is None:
                raise NotFound(f"no routed feedback {number}")
            case = routing.store.get_case(row.feedback_id)
            return CaseView.of(case).model_copy(
                update={
                    "timeline": routing.store.timeline(row.feedback_id),
                    "actions": possible_actions(case, actor, reveal_roles),
                }
            )

        view = await _run(load)
        contact = await vault.reveal(row.customer_ref)
        masked = MaskedContact.of(contact) if contact is not None else None
        return view.model_copy(update={"contact": masked})

    @router.get("/v1/cases/{number}/contact", response_model=ContactView)
    async def reveal_contact(
        number: Number,
        reason: Annotated[str, Query(min_length=5, max_length=500, description="why (audited)")],
        actor: Annotated[Actor, require("contact.reveal")],
    ) -> ContactView:
        """The customer's contact details, unmasked: only for the configured roles, with a
        reason, and recorded (GET /v1/audit/pii-access) before they are shown."""
        if actor.role.value not in reveal_roles or actor.role is Role.quality:
            raise HTTPException(403, detail=f"the role {actor.role.value} may not reveal contacts")
        if text_flaw(reason):
            raise HTTPException(422, detail=f"reason {text_flaw(reason)}")
        await case_of(number, actor)
        row = await _run(lambda: routing.worklist.find(number))
        assert row is not None
        async with vault.pool.connection() as conn:
            await audit.record(conn, actor, "reveal", row.customer_ref, reason, number)
        contact = await vault.reveal(row.customer_ref)
        if contact is None:
            raise HTTPException(404, detail=f"the personal data of {row.customer_ref} was erased")
        return ContactView(customer_ref=row.customer_ref, **contact.model_dump())

    @router.get("/v1/agents", response_model=list[AgentView])
    async def list_agents(
        _: Annotated[Actor, require("agent.read")], department: str | None = None
    ) -> list[AgentView]:
        rows = await _run(lambda: routing.worklist.agents(department))
        return [AgentView(agent=agent, open_work=load) for agent, load in rows]

    @router.put("/v1/agents/{agent_id}", response_model=AgentView)
    async def put_agent(
        agent_id: Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_.-]{1,63}$")],
        body: AgentIn,
        actor: Annotated[Actor, require("agent.write")],
    ) -> AgentView:
        agent = Agent(agent_id=agent_id, **body.model_dump())
        await _run(lambda: routing.put_agent(agent, actor.username))
        loads = dict(
            (a.agent_id, load)
            for a, load in await _run(lambda: routing.worklist.agents(agent.department))
        )
        return AgentView(agent=agent, open_work=loads.get(agent_id, 0.0))

    @router.get("/v1/departments/{department}/queue", response_model=list[QueueItem])
    async def department_queue(
        department: str,
        actor: Annotated[Actor, require("queue.read")],
        state: str = "queued",
    ) -> list[QueueItem]:
        if not sees_department(actor, department):
            raise HTTPException(403, detail=f"the queue of {department} is not yours to see")
        if state not in ("queued", "owned", "disputed"):
            raise HTTPException(422, detail="state is one of queued, owned, disputed")
        rows = await _run(lambda: routing.worklist.queue(department, state))
        return [QueueItem(**{k: getattr(r, k) for k in QueueItem.model_fields}) for r in rows]

    @router.get("/v1/triage", response_model=list[QueueItem])
    async def triage_queue(_: Annotated[Actor, require("triage.read")]) -> list[QueueItem]:
        rows = await _run(lambda: routing.worklist.queue(None, "triage"))
        return [QueueItem(**{k: getattr(r, k) for k in QueueItem.model_fields}) for r in rows]

    @router.get("/v1/taxonomy", response_model=list[CategoryView])
    async def taxonomy(_: Annotated[Actor, require("case.read")]) -> list[CategoryView]:
        """The categories and subcategories a case may be reclassified into, with the
        department each routes to (the rule book's, as loaded now)."""
        book = routing.classifier.book
        return [
            CategoryView(
                code=code,
                label=category.label,
                department=category.department,
                subcategories=[
                    SubcategoryView(
                        code=sub_code,
                        label=sub.label,
                        department=book.department_for(code, sub_code),
                    )
                    for sub_code, sub in category.subcategories.items()
                ],
            )
            for code, category in book.categories.items()
        ]

    return router
