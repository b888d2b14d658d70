"""Archive search (`GET /v1/search`) and the case library (`/v1/library`,
`POST /v1/cases/{number}/library`, `GET /v1/cases/{number}/similar`)."""

from __future__ import annotations

import logging
from datetime import date, datetime, time, timedelta
from typing import Annotated, Any, Self
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Path, Query
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ConfigDict, Field, model_validator

from contracts.codes import Channel, FeedbackType
from contracts.events import FEEDBACK_NUMBER_PATTERN
from services.access.http import require
from services.access.roles import Actor, sees_department, visible_departments
from services.common.boundary import Checked, is_blank, text_flaw
from services.common.masking import mask_contacts
from services.projections import library, registrations, search

log = logging.getLogger(__name__)

CODE = r"^[A-Za-z0-9_\-]{1,64}$"
MAX_QUERY_CHARS = 200
MAX_MODEL_CHARS = 100


class SearchHit(BaseModel):
    feedback_number: str
    received_at: datetime
    channel: str
    feedback_type: str | None
    category: str | None
    department: str | None
    status: str
    product_model: str | None
    snippet: str = Field(description="of the description (personal data masked at intake)")
    rank: float | None = Field(description="ts_rank of the text query; null without q")


class SearchPage(BaseModel):
    items: list[SearchHit]
    count: int
    next_cursor: str | None = Field(description="pass as `cursor` for the next page")
    order: search.Order = Field(
        description="rank: best first (ts_rank); newest: newest first (no text, or text "
        f"matching more than {search.RANKED_AT_MOST} cases)"
    )


class LibraryEntryIn(Checked):
    """What a supervisor or head writes when publishing a resolved case. Who publishes
    comes from their token; contact details in the text are masked."""

    model_config = ConfigDict(extra="forbid")

    problem: Annotated[str, Field(min_length=1, max_length=2000)]
    cause: Annotated[str, Field(min_length=1, max_length=2000)]
    solution: Annotated[str, Field(min_length=1, max_length=4000)]
    product_model: Annotated[str, Field(min_length=1, max_length=MAX_MODEL_CHARS)] | None = Field(
        default=None, description="default: the case's product model"
    )
    category: Annotated[str, Field(pattern=CODE)] | None = Field(
        default=None, description="default: the case's category"
    )

    @model_validator(mode="after")
    def _not_blank(self) -> Self:
        for name in ("problem", "cause", "solution", "product_model"):
            value = getattr(self, name)
            if value is not None and is_blank(value):
                raise ValueError(f"{name} is blank")
        return self


class LibraryEntryView(BaseModel):
    entry_id: str
    source_feedback_number: str
    problem: str
    cause: str
    solution: str
    product_model: str | None
    category: str | None
    published_by: str
    published_role: str
    published_at: datetime
    rank: float | None = None

    @classmethod
    def of(cls, row: dict[str, Any]) -> LibraryEntryView:
        return cls.model_validate({**row, "entry_id": str(row["entry_id"])})


class LibraryPage(BaseModel):
    items: list[LibraryEntryView]
    count: int


def _checked_text(name: str, value: str | None, limit: int) -> str | None:
    """A free-text query parameter: 422 for what PostgreSQL or a person could not read."""
    if value is None:
        return None
    problem = text_flaw(value)
    if problem:
        raise HTTPException(422, f"{name} {problem}")
    if len(value) > limit:
        raise HTTPException(422, f"{name} longer than {limit} characters")
    return value


def _instant(value: date | datetime | None, zone: ZoneInfo, *, end: bool) -> datetime | None:
    """A bound of `received_at`: a date is a whole day in the calendar's zone (`to`
    includes it); a time without a zone is in the calendar's zone."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=zone)
    day = value + timedelta(days=1) if end else value
    return datetime.combine(day, time(), zone)


def _scope(actor: Actor) -> search.Scope:
    return search.Scope(visible_departments(actor), unrouted=sees_department(actor, None))


def search_router(pool: AsyncConnectionPool, zone: ZoneInfo) -> APIRouter:
    router = APIRouter(tags=["search"])

    @router.get("/v1/search", response_model=SearchPage)
    async def search_cases(
        actor: Annotated[Actor, require("search.read")],
        q: Annotated[str | None, Query(description="words, model numbers; AND")] = None,
        received_from: Annotated[
            date | datetime | None, Query(alias="from", description="date (a whole day) or time")
        ] = None,
        received_to: Annotated[
            date | datetime | None, Query(alias="to", description="date (included) or time")
        ] = None,
        channel: Channel | None = None,
        type: FeedbackType | None = None,
        category: Annotated[str | None, Query(pattern=CODE)] = None,
        department: Annotated[str | None, Query(pattern=CODE)] = None,
        tier: Annotated[str | None, Query(pattern=CODE)] = None,
        product_model: str | None = None,
        status: Annotated[str | None, Query(pattern=CODE)] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 20,
        cursor: Annotated[str | None, Query(max_length=1000)] = None,
    ) -> SearchPage:
        filters = search.Filters(
            received_from=_instant(received_from, zone, end=False),
            received_to=_instant(received_to, zone, end=True),
            channel=channel.value if channel else None,
            feedback_type=type.value if type else None,
            category=category,
            department=department,
            customer_tier=tier,
            product_model=_checked_text("product_model", product_model, MAX_MODEL_CHARS),
            status=status,
        )
        text = _checked_text("q", q, MAX_QUERY_CHARS)
        try:
            async with pool.connection() as conn:
                page = await search.search(
                    conn, text, filters, _scope(actor), limit, _checked_text("cursor", cursor, 1000)
                )
        except search.BadCursor as error:
            raise HTTPException(422, f"cursor: {error}") from error
        return SearchPage(
            items=[SearchHit.model_validate(row) for row in page.rows],
            count=len(page.rows),
            next_cursor=page.next_cursor,
            order=page.order,
        )

    return router


def library_router(pool: AsyncConnectionPool) -> APIRouter:
    router = APIRouter(tags=["library"])

    async def visible_case(actor: Actor, number: str) -> dict[str, Any]:
        row = await registrations.find_by_number(pool, number)
        if row is None:
            raise HTTPException(404, detail=f"no registered feedback {number}")
        if not sees_department(actor, row["department"]):
            raise HTTPException(403, detail=f"{number} belongs to another department")
        return row

    @router.post("/v1/cases/{number}/library", response_model=LibraryEntryView, status_code=201)
    async def publish_entry(
        number: Annotated[str, Path(pattern=FEEDBACK_NUMBER_PATTERN)],
        body: LibraryEntryIn,
        actor: Annotated[Actor, require("library.publish")],
    ) -> LibraryEntryView:
        case = await visible_case(actor, number)
        if case["status"] not in library.PUBLISHABLE:
            raise HTTPException(
                409,
                f"{number} is {case['status']}: only a resolved, confirmed, closed or "
                "archived case can be published",
            )
        try:
            async with pool.connection() as conn, conn.transaction():
                row = await library.publish(
                    conn,
                    actor,
                    number,
                    mask_contacts(body.problem),
                    mask_contacts(body.cause),
                    mask_contacts(body.solution),
                    body.product_model or case["product_model"],
                    body.category or case["category"],
                )
        except library.AlreadyPublished as error:
            raise HTTPException(409, f"{number} is {error}") from error
        log.info("%s (%s) published %s to the case library", actor.name, actor.role, number)
        return LibraryEntryView.of(row)

    @router.get("/v1/library", response_model=LibraryPage)
    async def search_library(
        _: Annotated[Actor, require("library.read")],
        q: str | None = None,
        product_model: str | None = None,
        category: Annotated[str | None, Query(pattern=CODE)] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> LibraryPage:
        async with pool.connection() as conn:
            rows = await library.search(
                conn,
                _checked_text("q", q, MAX_QUERY_CHARS),
                _checked_text("product_model", product_model, MAX_MODEL_CHARS),
                category,
                limit,
            )
        return LibraryPage(items=[LibraryEntryView.of(r) for r in rows], count=len(rows))

    @router.get("/v1/cases/{number}/similar", response_model=LibraryPage)
    async def similar_entries(
        number: Annotated[str, Path(pattern=FEEDBACK_NUMBER_PATTERN)],
        actor: Annotated[Actor, require("library.read")],
        limit: Annotated[int, Query(ge=1, le=20)] = 5,
    ) -> LibraryPage:
        case = await visible_case(actor, number)
        async with pool.connection() as conn:
            rows = await library.similar(
                conn, case["description"], case["product_model"], number, limit
            )
        return LibraryPage(items=[LibraryEntryView.of(r) for r in rows], count=len(rows))

    return router
