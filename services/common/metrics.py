"""Prometheus metrics of this process, served at `GET /metrics` (text exposition format).

Counters live in the process: with several uvicorn workers each answers for itself.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from services.access.http import require
from services.access.roles import Actor

DEAD_LETTERS = Counter(
    "feedback_dead_letters",
    "Messages set aside as dead letters (kept with the reason) instead of being processed.",
    ["source"],
)


def count_dead_letters(source: str, count: int = 1) -> None:
    """Count dead letters newly recorded by `source` (a consumer, a channel)."""
    if count > 0:
        DEAD_LETTERS.labels(source=source).inc(count)


def metrics_router() -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/metrics", response_class=Response)
    async def metrics(_: Annotated[Actor, require("metrics.read")]) -> Response:
        """Prometheus text format (scrape with a bearer token of a quality or admin user)."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router
