"""The in-app inbox of the signed-in staff member: `GET /v1/inbox`,
`POST /v1/inbox/{id}/read`."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, HTTPException, Query, Response
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from services.access.http import require
from services.access.roles import PERMISSIONS, Actor
from services.notifications import store

# Everyone signed in reads their own inbox; until the permission table has its own
# action, reading cases (which every role may) stands in for it.
INBOX_ACTION = "inbox.read" if "inbox.read" in PERMISSIONS else "case.read"


class InboxPage(BaseModel):
    items: list[store.InboxItem]
    unread: int


def _ids(actor: Actor) -> list[str]:
    """The names messages reach this person by: agent id (owners) and username."""
    return list(dict.fromkeys(n for n in (actor.agent_id, actor.username) if n))


def inbox_router(pool: AsyncConnectionPool) -> APIRouter:
    router = APIRouter(tags=["notifications"])

    @router.get("/v1/inbox", response_model=InboxPage)
    async def inbox(
        actor: Annotated[Actor, require(INBOX_ACTION)],
        unread: Annotated[bool, Query(description="only messages not read yet")] = False,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> InboxPage:
        """The signed-in staff member's messages, newest first, and how many are unread."""
        items, count = await store.inbox_of(pool, _ids(actor), unread, limit)
        return InboxPage(items=items, unread=count)

    @router.post("/v1/inbox/{item_id}/read", status_code=204)
    async def mark_read(item_id: UUID, actor: Annotated[Actor, require(INBOX_ACTION)]) -> Response:
        if not await store.mark_read(pool, _ids(actor), item_id):
            raise HTTPException(404, f"no message {item_id} in your inbox")
        return Response(status_code=204)

    return router
