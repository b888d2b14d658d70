"""Console page module (being built)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from services.console.session import Viewer, needs

if TYPE_CHECKING:
    from services.console.web import Console


def router(console: Console) -> APIRouter:
    pages = APIRouter(include_in_schema=False)

    @pages.get("/reports")
    async def placeholder(
        request: Request, viewer: Annotated[Viewer, needs("report.read")]
    ) -> HTMLResponse:
        return console.render(request, viewer, "placeholder.html")

    return pages
