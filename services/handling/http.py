"""Handling a case after routing, over HTTP: progress notes, plan, co-handler answers,
information requests, result, the customer's confirmation and rating, close, reopen,
complex, archive, and the case's timeline.

Each command loads the case, lets it decide (the Case aggregate is where the rules live:
409 with its reason when the state does not allow it), and stores the decision; the actor
is the signed-in user. A customer confirms and rates with their `X-Customer-Token`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Header, HTTPException, Path, Request, Response
from psycopg_pool import AsyncConnectionPool
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from contracts.events import FEEDBACK_NUMBER_PATTERN
from services.access import audit
from services.access.http import require, staff_of
from services.access.roles import Actor, Role
from services.access.tokens import customer_token_valid
from services.cases.domain import Case, CaseError
from services.cases.store import CaseConflict, CaseStore
from services.common.boundary import Checked
from services.common.masking import mask_contacts
from services.handling.records import CorrespondenceEntry, correspondence_of, evidence_of
from services.intake.evidence import EvidenceStore
from services.routing.http import visible_case
from services.routing.worklist import CaseRow, Worklist

Number = Annotated[str, Path(pattern=FEEDBACK_NUMBER_PATTERN)]
Text = Annotated[str, Field(min_length=1, max_length=5000)]
Short = Annotated[str, Field(min_length=1, max_length=500)]


class In(Checked):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class NoteIn(In):
    text: Text
    visible_to_customer: bool = False
    step: Short | None = None


class PlanIn(In):
    diagnosis: Text
    plan: Text
    expected_completion: AwareDatetime

    promises = frozenset({"expected_completion"})


class CoHandlerResponseIn(In):
    response: Text


class InfoRequestIn(In):
    missing: Annotated[list[Short], Field(min_length=1, max_length=20)]


class ResolveIn(In):
    result: Literal["resolved", "partially_resolved", "unresolved"]
    summary: Text
    reason: Text | None = None
    measures: Text | None = None
    resources: Text | None = None


class ConfirmationIn(In):
    satisfied: bool
    comment: Text | None = None


class RatingIn(In):
    csat: Annotated[int, Field(ge=1, le=5)]
    nps: Annotated[int, Field(ge=0, le=10)] | None = None
    aspects: dict[
        Literal["speed", "professionalism", "attitude"], Annotated[int, Field(ge=1, le=5)]
    ] = Field(default_factory=dict)
    comment: Text | None = None


class ReasonIn(In):
    reason: Text


class CloseIn(In):
    reason: Text | None = None


class Handled(BaseModel):
    feedback_number: str
    status: str
    priority: str | None
    owner: str | None
    version: int

    @classmethod
    def of(cls, case: Case) -> Handled:
        return cls(
            feedback_number=case.feedback_number,
            status=case.status.value,
            priority=case.priority,
            owner=case.owner,
            version=case.version,
        )


class TimelineEntry(BaseModel):
    at: datetime
    what: str
    by: str | None
    version: int


def handling_router(
    store: CaseStore,
    worklist: Worklist,
    customer_key: bytes,
    evidence: EvidenceStore | None = None,
    pool: AsyncConnectionPool | None = None,
) -> APIRouter:
    """`evidence` and `pool` (the attachments and the access log) serve the evidence files."""
    router = APIRouter(tags=["handling"])

    async def row_of(number: str, actor: Actor | None) -> CaseRow:
        return await visible_case(worklist, number, actor)

    def own(actor: Actor, row: CaseRow) -> None:
        """Agents act on their own cases; supervisors and heads on their departments'."""
        if actor.role is Role.agent and row.owner != actor.agent_id:
            raise HTTPException(403, detail=f"{row.feedback_number} is not your case")

    async def change(row: CaseRow, decide: Callable[[Case], None]) -> Handled:
        try:
            case = await asyncio.to_thread(store.change, row.feedback_id, decide)
        except (CaseError, CaseConflict) as error:
            # The reason, and the version the refusal was decided on, to reload from.
            current = await asyncio.to_thread(store.get_case, row.feedback_id)
            raise HTTPException(
                409,
                detail=f"{error} (case version {current.version})",
                headers={"X-Case-Version": str(current.version)},
            ) from error
        return Handled.of(case)

    @router.post("/v1/cases/{number}/notes", response_model=Handled)
    async def add_note(
        number: Number, body: NoteIn, actor: Annotated[Actor, require("case.note")]
    ) -> Handled:
        row = await row_of(number, actor)
        own(actor, row)
        text, step = mask_contacts(body.text), _masked(body.step)
        return await change(
            row, lambda c: c.add_note(text, body.visible_to_customer, step, actor.name)
        )

    @router.post("/v1/cases/{number}/plan", response_model=Handled)
    async def set_plan(
        number: Number, body: PlanIn, actor: Annotated[Actor, require("case.plan")]
    ) -> Handled:
        row = await row_of(number, actor)
        own(actor, row)
        return await change(
            row,
            lambda c: c.set_plan(
                mask_contacts(body.diagnosis),
                mask_contacts(body.plan),
                body.expected_completion,
                actor.name,
            ),
        )

    @router.post("/v1/cases/{number}/co-handlers/{department}/response", response_model=Handled)
    async def co_handler_response(
        number: Number,
        department: Annotated[str, Path(pattern=r"^[a-z][a-z_]{1,40}$")],
        body: CoHandlerResponseIn,
        actor: Annotated[Actor, require("case.co_respond")],
    ) -> Handled:
        """The co-handling department answers (its own people, whatever the case's
        department)."""
        row = await row_of(number, None)
        if department not in actor.departments:
            raise HTTPException(403, detail=f"only {department} answers for {department}")
        response = mask_contacts(body.response)
        return await change(row, lambda c: c.co_handler_responds(department, response, actor.name))

    @router.post("/v1/cases/{number}/customer-info-requests", response_model=Handled)
    async def request_information(
        number: Number, body: InfoRequestIn, actor: Annotated[Actor, require("case.plan")]
    ) -> Handled:
        """Ask the customer for what is missing: the case waits, its clocks pause."""
        row = await row_of(number, actor)
        own(actor, row)

        def ask(case: Case) -> None:
            if case.status.value not in ("accepted", "in_progress", "reopened"):
                raise CaseError(f"{number} is {case.status.value}: not being handled")
            case.request_information([mask_contacts(item) for item in body.missing])

        return await change(row, ask)

    @router.post("/v1/cases/{number}/resolve", response_model=Handled)
    async def resolve(
        number: Number, body: ResolveIn, actor: Annotated[Actor, require("case.resolve")]
    ) -> Handled:
        row = await row_of(number, actor)
        own(actor, row)
        return await change(
            row,
            lambda c: c.resolve(
                body.result,
                mask_contacts(body.summary),
                _masked(body.reason),
                _masked(body.measures),
                _masked(body.resources),
                actor.name,
            ),
        )

    async def customer_or_staff(
        request: Request, number: str, token: str | None
    ) -> tuple[str, bool, CaseRow]:
        """Who confirms or rates: the customer (their token) or staff on their behalf."""
        if customer_token_valid(customer_key, number, token):
            return "customer", False, await row_of(number, None)
        actor = await staff_of(request, "case.confirm")
        if actor is None:
            raise HTTPException(
                401, detail="send the customer token of this feedback (X-Customer-Token)"
            )
        row = await row_of(number, actor)
        own(actor, row)  # an agent speaks for the customers of their own cases only
        return actor.name, True, row

    @router.post("/v1/cases/{number}/confirmation", response_model=Handled)
    async def confirm(
        request: Request,
        number: Number,
        body: ConfirmationIn,
        x_customer_token: Annotated[str | None, Header(max_length=100)] = None,
    ) -> Handled:
        """Satisfied: confirmed. Not satisfied: reopened with its priority one level up."""
        by, on_behalf, row = await customer_or_staff(request, number, x_customer_token)
        comment = _masked(body.comment)
        return await change(row, lambda c: c.confirm(body.satisfied, comment, by, on_behalf))

    @router.post("/v1/cases/{number}/rating", response_model=Handled)
    async def rate(
        request: Request,
        number: Number,
        body: RatingIn,
        x_customer_token: Annotated[str | None, Header(max_length=100)] = None,
    ) -> Handled:
        by, _, row = await customer_or_staff(request, number, x_customer_token)
        aspects = {str(k): v for k, v in body.aspects.items()}
        comment = _masked(body.comment)
        return await change(row, lambda c: c.rate(body.csat, body.nps, aspects, comment, by))

    @router.post("/v1/cases/{number}/close", response_model=Handled)
    async def close(
        number: Number, body: CloseIn, actor: Annotated[Actor, require("case.close")]
    ) -> Handled:
        row = await row_of(number, actor)
        supervisor = actor.role in (Role.supervisor, Role.head)
        if not supervisor:
            own(actor, row)
        reason = _masked(body.reason)
        return await change(row, lambda c: c.close(reason, actor.name, supervisor))

    @router.post("/v1/cases/{number}/reopen", response_model=Handled)
    async def reopen(
        number: Number, body: ReasonIn, actor: Annotated[Actor, require("case.reopen")]
    ) -> Handled:
        row = await row_of(number, actor)
        reason = mask_contacts(body.reason)
        return await change(row, lambda c: c.reopen(reason, actor.name))

    @router.post("/v1/cases/{number}/complex", response_model=Handled)
    async def mark_complex(
        number: Number, body: ReasonIn, actor: Annotated[Actor, require("case.complex")]
    ) -> Handled:
        """The resolution target becomes the complex one (5 working days by default)."""
        row = await row_of(number, actor)
        reason = mask_contacts(body.reason)
        return await change(row, lambda c: c.mark_complex(actor.name, reason))

    @router.post("/v1/cases/{number}/archive", response_model=Handled)
    async def archive(number: Number, actor: Annotated[Actor, require("case.archive")]) -> Handled:
        row = await row_of(number, actor)
        return await change(row, lambda c: c.archive(actor.name))

    @router.get("/v1/cases/{number}/timeline", response_model=list[TimelineEntry])
    async def timeline(
        number: Number, actor: Annotated[Actor, require("case.read")]
    ) -> list[TimelineEntry]:
        """Every fact of the case: when, what, by whom (texts stay in the case's views)."""
        row = await row_of(number, actor)
        facts = await asyncio.to_thread(store.timeline, row.feedback_id)
        return [TimelineEntry(**fact) for fact in facts]

    @router.get("/v1/cases/{number}/correspondence", response_model=list[CorrespondenceEntry])
    async def correspondence(
        number: Number, actor: Annotated[Actor, require("case.read")]
    ) -> list[CorrespondenceEntry]:
        """The communication records (沟通记录): the customer's messages with their
        evidence, and what they were asked or told; texts masked as recorded."""
        row = await row_of(number, actor)
        return await asyncio.to_thread(correspondence_of, store, row.feedback_id)

    @router.get("/v1/cases/{number}/evidence/{sha256}", response_class=Response)
    async def evidence_file(
        number: Number,
        sha256: Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")],
        actor: Annotated[Actor, require("evidence.read")],
    ) -> Response:
        """One of the case's attachments, as a download (never rendered inline: a file is
        the customer's, not ours); each opening is recorded in the access log."""
        row = await row_of(number, actor)
        if evidence is None or pool is None:
            raise HTTPException(503, detail="the evidence store is not configured here")
        attached = await asyncio.to_thread(evidence_of, store, row.feedback_id)
        item = next((e for e in attached if e.get("sha256") == sha256), None)
        if item is None:
            raise HTTPException(404, detail=f"{number} has no attachment {sha256[:12]}…")
        try:
            data = await evidence.open(str(item["reference"]))
        except (FileNotFoundError, KeyError) as error:
            raise HTTPException(404, detail="the attachment is no longer kept") from error
        async with pool.connection() as conn:
            await audit.record(
                conn,
                actor,
                "evidence",
                row.customer_ref,
                f"opened attachment {sha256[:12]}",
                row.feedback_number,
            )
        filename = str(item.get("filename") or sha256)
        return Response(
            data,
            media_type="application/octet-stream",
            headers={
                "Content-Disposition": f"attachment; filename*=UTF-8''{quote(filename, safe='')}",
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "no-store",
            },
        )

    return router


def _masked(text: str | None) -> str | None:
    """Free text people write goes on the bus: masked like the customer's (phones, e-mails,
    ID and card numbers)."""
    return mask_contacts(text) if text else text
