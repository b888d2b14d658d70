"""My work and the department queue (`/queue`): open cases most urgent first and then the
nearest due clock (`GET /v1/worklist`), with live countdowns, filters, a "mine" toggle for
agents and bulk reassignment for supervisors and heads (`POST /v1/cases/{n}/assign`, one per
case, each answer reported). The list re-fetches itself (`/queue/list`) when the live
stream (`/live`) says a case changed.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse

from contracts.codes import (
    CHANNEL_LABELS,
    FEEDBACK_TYPE_LABELS,
    PRIORITY_LABELS,
)
from contracts.events import FEEDBACK_NUMBER_PATTERN
from services.console.api import Answer
from services.console.session import ActingViewer, Viewer, needs

if TYPE_CHECKING:
    from services.console.web import Console

PAGE_ROWS = 100
MAX_PAGES = 10  # the API gives at most 1,000 rows at once
BULK_MAX = 200  # cases reassigned in one go

STATUS_LABELS = {
    "registered": "已登记",
    "triage": "待分诊",
    "queued": "排队中",
    "assigned": "已分派",
    "accepted": "已接收",
    "disputed": "有异议",
    "pending_info": "待补充",
    "in_progress": "处理中",
    "resolved": "已解决",
    "reopened": "已重开",
    "confirmed": "已确认",
}
TIER_LABELS = {"vip": "VIP", "normal": "普通"}
CLOCK_LABELS = {
    "registration": "登记",
    "first_response": "响应",
    "progress_update": "进展通报",
    "result_notice": "结果告知",
    "co_handler_response": "协办答复",
    "resolution": "解决",
}


@dataclass(frozen=True)
class QueueQuery:
    """The page's filters as the URL and the filter form carry them ("" = any)."""

    channel: str = ""
    type: str = ""
    category: str = ""
    priority: str = ""
    tier: str = ""
    owner: str = ""
    status: str = ""
    department: str = ""
    mine: bool = False

    def api_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        params["mine"] = "true" if self.mine else None
        return params

    def url(self) -> str:
        """The page's address with these filters (kept on reload and in the history)."""
        shown = {k: v for k, v in self.api_params().items() if v}
        return "/queue" + ("?" + urlencode(shown) if shown else "")

    @property
    def narrowed(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))


def queue_query(
    channel: Annotated[str, Query(max_length=40)] = "",
    type: Annotated[str, Query(max_length=40)] = "",
    category: Annotated[str, Query(max_length=100)] = "",
    priority: Annotated[str, Query(max_length=20)] = "",
    tier: Annotated[str, Query(max_length=40)] = "",
    owner: Annotated[str, Query(max_length=100)] = "",
    status: Annotated[str, Query(max_length=40)] = "",
    department: Annotated[str, Query(max_length=100)] = "",
    mine: bool = False,
) -> QueueQuery:
    return QueueQuery(
        channel.strip(), type.strip(), category.strip(), priority.strip(), tier.strip(),
        owner.strip(), status.strip(), department.strip(), mine,
    )  # fmt: skip


@dataclass(frozen=True)
class Choices:
    """The options of the filter selects, code -> Chinese name (English shows the code)."""

    channels: dict[str, str]
    types: dict[str, str]
    priorities: dict[str, str]
    statuses: dict[str, str]
    tiers: dict[str, str]
    categories: dict[str, str]
    departments: dict[str, str]
    clocks: dict[str, str]


def next_clock(case: dict[str, Any]) -> dict[str, Any] | None:
    """The clock to show: the nearest due running one, else the nearest paused one."""
    clocks: list[dict[str, Any]] = case.get("clocks") or []
    running = [c for c in clocks if c["state"] == "running"]
    shown = running or clocks
    return shown[0] if shown else None


def router(console: Console) -> APIRouter:
    routes = APIRouter(include_in_schema=False)

    def choices(viewer: Viewer, tiers: tuple[str, ...]) -> Choices:
        labels = console.labels
        if viewer.actor.role.value in ("quality", "admin"):
            departments = dict(labels.departments)
        else:
            departments = {d: labels.department(d) for d in viewer.actor.departments}
        return Choices(
            channels={c.value: label for c, label in CHANNEL_LABELS.items()},
            types={t.value: label for t, label in FEEDBACK_TYPE_LABELS.items()},
            priorities={p.value: label for p, label in PRIORITY_LABELS.items()},
            statuses=STATUS_LABELS,
            tiers={t: TIER_LABELS.get(t, t) for t in tiers},
            categories=dict(labels.categories),
            departments=departments,
            clocks=CLOCK_LABELS,
        )

    async def listing(viewer: Viewer, query: QueueQuery, shown_pages: int) -> dict[str, Any]:
        """One fetch of the work list: the rows of `shown_pages` pages, whether there are
        more, or the API's reason for refusing the filters."""
        shown_pages = max(1, min(shown_pages, MAX_PAGES))
        limit = shown_pages * PAGE_ROWS
        # One row more than shown tells whether there are more (the API takes at most 1000).
        answer = await console.get(
            viewer, "/v1/worklist", limit=min(limit + 1, 1000), **query.api_params()
        )
        cases: list[dict[str, Any]] = answer.body if answer.ok else []
        zone = console.settings.zone
        for case in cases:
            case["next_clock"] = next_clock(case)
            received = datetime.fromisoformat(case["received_at"]).astimezone(zone)
            case["received_local"] = received.strftime("%m-%d %H:%M")
        return {
            "cases": cases[:limit],
            "more": len(cases) > limit and shown_pages < MAX_PAGES,
            "pages": shown_pages,
            "problem": None if answer.ok else answer.problem,
            "query": query,
            "choices": choices(viewer, console.settings.customer_tiers),
            "may_assign": viewer.may("case.assign"),
        }

    async def agents_of(viewer: Viewer) -> list[dict[str, Any]]:
        """Who the viewer may hand cases to: their departments' agents."""
        if not (viewer.may("case.assign") and viewer.may("agent.read")):
            return []
        answers = await asyncio.gather(
            *(console.get(viewer, "/v1/agents", department=d) for d in viewer.actor.departments)
        )
        return [row["agent"] for answer in answers if answer.ok for row in answer.body]

    @routes.get("/queue")
    async def queue_page(
        request: Request,
        viewer: Annotated[Viewer, needs("queue.read")],
        query: Annotated[QueueQuery, Depends(queue_query)],
        pages: int = 1,
    ) -> HTMLResponse:
        listed, agents = await asyncio.gather(listing(viewer, query, pages), agents_of(viewer))
        return console.render(
            request,
            viewer,
            "queue.html",
            title=_title(viewer),
            agents=agents,
            selected=frozenset(),
            **listed,
        )

    @routes.get("/queue/list")
    async def queue_list(
        request: Request,
        viewer: Annotated[Viewer, needs("queue.read")],
        query: Annotated[QueueQuery, Depends(queue_query)],
        pages: int = 1,
        numbers: Annotated[list[str] | None, Query(max_length=BULK_MAX)] = None,
    ) -> HTMLResponse:
        """The list alone (filters changed, "more", or a case changed): ticked rows stay
        ticked, and the address bar follows the filters."""
        listed = await listing(viewer, query, pages)
        response = console.render(
            request, viewer, "queue_list.html", selected=frozenset(numbers or ()), **listed
        )
        response.headers["HX-Replace-Url"] = query.url()
        return response

    @routes.post("/queue/assign")
    async def bulk_assign(
        request: Request,
        viewer: ActingViewer,
        agent_id: Annotated[str, Form(max_length=64)] = "",
        reason: Annotated[str, Form(max_length=2000)] = "",
        numbers: Annotated[list[str] | None, Form(max_length=BULK_MAX)] = None,
    ) -> HTMLResponse:
        """Reassign each ticked case through the API, one call each, and report each
        answer (a refusal for one case does not stop the others)."""
        if not viewer.may("case.assign"):
            refused = _say(viewer, "您的角色不能改派案件", "your role may not reassign cases")
            return console.render(
                request, viewer, "queue_assign.html", 403, outcomes=[], errors={"": refused}
            )
        chosen = list(dict.fromkeys(n.strip() for n in numbers or () if n.strip()))
        errors: dict[str, str] = {}
        if not chosen:
            errors["numbers"] = _say(viewer, "请先勾选要改派的案件", "tick the cases to reassign")
        if not agent_id.strip():
            errors["agent_id"] = _say(viewer, "请填写新负责人", "name the new owner")
        if not reason.strip():
            errors["reason"] = _say(viewer, "请填写改派原因", "give a reason")
        if errors:
            return console.render(
                request, viewer, "queue_assign.html", 422,
                outcomes=[], errors=errors, agent_id=agent_id, reason=reason,
            )  # fmt: skip
        body = {"agent_id": agent_id.strip(), "reason": reason.strip()}
        # One at a time: each assignment checks the agent's capacity left after the last.
        outcomes: list[tuple[str, Answer]] = []
        for number in chosen:
            if not re.fullmatch(FEEDBACK_NUMBER_PATTERN, number):
                # Only a number goes into the API's path.
                outcomes.append((number, Answer(422, {"detail": "not a feedback number"})))
                continue
            answer = await console.call(viewer, "POST", f"/v1/cases/{number}/assign", json=body)
            wrong_fields = {
                name: message
                for name, message in answer.field_errors().items()
                if name in ("agent_id", "reason")
            }
            if answer.status == 422 and wrong_fields:
                # The form is wrong, not the case: every case would be refused the same.
                return console.render(
                    request, viewer, "queue_assign.html", 422,
                    outcomes=outcomes, errors=wrong_fields, agent_id=agent_id, reason=reason,
                    assigned_to=body["agent_id"],
                )  # fmt: skip
            outcomes.append((number, answer))
        response = console.render(
            request,
            viewer,
            "queue_assign.html",
            outcomes=outcomes,
            errors={},
            assigned_to=body["agent_id"],
            agent_id=body["agent_id"],
            reason=body["reason"],
        )
        done = sum(answer.ok for _, answer in outcomes)
        response.headers["HX-Trigger"] = _toast(
            _say(
                viewer,
                f"已改派 {done} 件，{len(outcomes) - done} 件被拒绝",
                f"{done} reassigned, {len(outcomes) - done} refused",
            )
        )
        return response

    return routes


def _say(viewer: Viewer, zh: str, en: str) -> str:
    return en if viewer.lang == "en" else zh


def _toast(message: str) -> str:
    # `queue-refresh` re-fetches the list (new owners show once the read model has them).
    return json.dumps({"toast": message, "queue-refresh": True}, ensure_ascii=True)


def _title(viewer: Viewer) -> str:
    return _say(viewer, "我的工作与部门队列", "My work and department queue")
