"""The supervisors' and operators' boards: the SLA board, the triage queue, the callback
worklist and the dead letters.

Every figure and every action goes through the platform's API as the signed-in person
(`console.call`), so the department scoping, the validation and the audit stay the API's;
a refusal is shown where it applies (next to its field, or on the row it concerns).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, Response

from contracts.codes import (
    EMOTION_LABELS,
    FEEDBACK_TYPE_LABELS,
    PRIORITY_LABELS,
    Emotion,
    FeedbackType,
)
from contracts.events import FEEDBACK_NUMBER_PATTERN
from services.console.api import Answer
from services.console.session import ActingViewer, Viewer, is_fragment, needs
from services.projections.report_files import CALLBACK_LABELS, CLOCK_LABELS, STATUS_LABELS

if TYPE_CHECKING:
    from services.console.web import Console

Number = Annotated[str, Path(pattern=FEEDBACK_NUMBER_PATTERN)]

BOARD_COUNTS = ("open", "warned", "breached", "escalated", "overdue")
# Texts of the triage cases are fetched at once for this many rows; the rest are listed.
TRIAGE_TEXTS = 50
TRIAGE_EXCERPT = 160
# What a callback's person usually answers; free text is allowed too (the API takes any).
CALLBACK_OUTCOMES = ("满意", "基本满意", "不满意", "问题未解决", "不方便", "无人接听")
# A <input type="datetime-local"> sends no offset: it is the centre's local time.
LOCAL_MINUTE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?$")
ATTEMPT_TEXTS = ("outcome", "customer_words", "expectation", "new_feedback_number")


def _codes(labels: Mapping[Any, str]) -> dict[str, str]:
    return {str(code): label for code, label in labels.items()}


def _tally(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {name: sum(int(row[name]) for row in rows) for name in BOARD_COUNTS}


def _nearest_clock(case: dict[str, Any]) -> dict[str, Any] | None:
    """The clock to count down on a flagged case: the nearest due running one (a breached
    one first), else a paused one."""
    clocks = [c for c in case.get("clocks") or [] if c.get("state") != "met"]
    if not clocks:
        return None
    nearest: dict[str, Any] = min(
        clocks, key=lambda c: (c["state"] != "running", not c["breached"], c["due_at"])
    )
    return nearest


def _attempt_body(form: Mapping[str, Any], zone_offset: str) -> dict[str, Any]:
    """The attempt as the API takes it: empty fields left out (the API says what is
    missing), a local date and time given the centre's offset."""
    body: dict[str, Any] = {"reached": form.get("reached", "")}
    for name in (*ATTEMPT_TEXTS, "emotion", "satisfaction"):
        value = str(form.get(name, "")).strip()
        if value:
            body[name] = value
    reschedule = str(form.get("reschedule_to", "")).strip()
    if reschedule:
        body["reschedule_to"] = (
            reschedule + zone_offset if LOCAL_MINUTE.match(reschedule) else reschedule
        )
    return body


def _attempt_errors(answer: Answer) -> dict[str, str]:
    """The API's reasons by field; the rule across fields (a time is needed when the
    customer is not available) is shown next to the time it asks for."""
    errors = answer.field_errors()
    general = errors.get("", "")
    if "reschedule_to" in general:
        errors["reschedule_to"] = general
        del errors[""]
    if answer.status in (403, 404, 409):
        errors = {"": answer.problem}
    return errors


def router(console: Console) -> APIRouter:
    pages = APIRouter(include_in_schema=False)
    zone = console.settings.zone

    local = console.local_time

    def page(request: Request, viewer: Viewer, template: str, **context: Any) -> HTMLResponse:
        status = int(context.pop("status_code", 200))
        return console.render(
            request,
            viewer,
            template,
            status,
            local=local,
            clock_names=CLOCK_LABELS,
            status_names=STATUS_LABELS,
            priority_names=_codes(PRIORITY_LABELS),
            callback_names=CALLBACK_LABELS,
            **context,
        )

    # --- SLA board -------------------------------------------------------------------------

    async def board_context(viewer: Viewer) -> dict[str, Any]:
        answer = await console.get(viewer, "/v1/sla/board")
        if not answer.ok:
            return {"board": None, "problem": answer.problem}
        board = answer.body
        for case in board["flagged"]:
            case["countdown"] = _nearest_clock(case)
        return {"board": board, "totals": _tally(board["rows"]), "problem": None}

    @pages.get("/sla")
    async def sla_page(
        request: Request, viewer: Annotated[Viewer, needs("sla.read")]
    ) -> HTMLResponse:
        context = await board_context(viewer)
        return page(request, viewer, "boards_sla.html", title="时限看板", **context)

    @pages.get("/sla/board")
    async def sla_board(
        request: Request, viewer: Annotated[Viewer, needs("sla.read")]
    ) -> HTMLResponse:
        """The board alone: refreshed on each case change (SSE) or every 30 s."""
        return page(request, viewer, "boards_sla_board.html", **await board_context(viewer))

    # --- Triage ------------------------------------------------------------------------------

    async def taxonomy(viewer: Viewer) -> list[dict[str, Any]]:
        answer = await console.get(viewer, "/v1/taxonomy")
        return answer.body if answer.ok else []

    def reclassify_form(
        request: Request,
        viewer: Viewer,
        number: str,
        categories: list[dict[str, Any]],
        values: Mapping[str, str] | None = None,
        errors: dict[str, str] | None = None,
        status_code: int = 200,
    ) -> HTMLResponse:
        return page(
            request,
            viewer,
            "boards_triage_form.html",
            status_code=status_code,
            number=number,
            categories=categories,
            values=values or {},
            errors=errors or {},
            types=[(t.value, FEEDBACK_TYPE_LABELS[t]) for t in FeedbackType],
        )

    @pages.get("/triage")
    async def triage_page(
        request: Request, viewer: Annotated[Viewer, needs("triage.read")]
    ) -> HTMLResponse:
        answer = await console.get(viewer, "/v1/triage")
        items: list[dict[str, Any]] = answer.body if answer.ok else []
        shown = items[:TRIAGE_TEXTS]
        # Each case's text, so the supervisor sees what the classifier could not place.
        registrations = await asyncio.gather(
            *(console.get(viewer, f"/v1/feedback/{item['feedback_number']}") for item in shown)
        )
        for item, registration in zip(shown, registrations, strict=True):
            if registration.ok:
                item["description"] = registration.body["description"][:TRIAGE_EXCERPT]
                item["channel"] = registration.body["channel"]
        return page(
            request,
            viewer,
            "boards_triage.html",
            title="待分诊",
            items=items,
            problem=None if answer.ok else answer.problem,
            may_reclassify=viewer.may("case.reclassify"),
        )

    @pages.get("/triage/{number}/form")
    async def triage_form(
        request: Request, number: Number, viewer: Annotated[Viewer, needs("case.reclassify")]
    ) -> HTMLResponse:
        return reclassify_form(request, viewer, number, await taxonomy(viewer))

    @pages.post("/triage/{number}/reclassify")
    async def reclassify(request: Request, number: Number, viewer: ActingViewer) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        category, _, subcategory = form.get("subcategory", "").partition("/")
        body: dict[str, Any] = {
            "category": category,
            "subcategory": subcategory,
            "reason": form.get("reason", ""),
        }
        if form.get("type"):
            body["type"] = form["type"]
        answer = await console.call(viewer, "POST", f"/v1/cases/{number}/reclassify", json=body)
        if not answer.ok:
            errors = answer.field_errors()
            if "category" in errors:  # one choice on the form names both
                errors["subcategory"] = errors.pop("category")
            if answer.status in (403, 404, 409):
                # The service refuses a category it does not know: shown by that choice.
                field = "subcategory" if "unknown category" in answer.problem else ""
                errors = {field: answer.problem}
            return reclassify_form(
                request, viewer, number, await taxonomy(viewer), form, errors, answer.status
            )
        routed = answer.body.get("department") or ""
        message = f"{number} → {console.labels.department(routed)}"
        left = await console.get(viewer, "/v1/triage")
        count = f"({len(left.body)})" if left.ok else ""
        # The case left triage: its rows go (replaced by nothing but the new count).
        return Response(
            f'<span id="triage-count" class="muted" hx-swap-oob="true">{count}</span>',
            200,
            headers={
                "HX-Retarget": f"#triage-{number}",
                "HX-Reswap": "outerHTML",
                "HX-Trigger": json.dumps({"toast": message}),
            },
            media_type="text/html",
        )

    # --- Callbacks ---------------------------------------------------------------------------

    def detail_context(
        viewer: Viewer,
        task: dict[str, Any],
        values: Mapping[str, str] | None = None,
        errors: dict[str, str] | None = None,
        recorded: bool = False,
    ) -> dict[str, Any]:
        return {
            "task": task,
            "values": values or {},
            "errors": errors or {},
            "recorded": recorded,
            "may_record": viewer.may("callback.record"),
            "outcomes": CALLBACK_OUTCOMES,
            "emotions": [(e.value, EMOTION_LABELS[e]) for e in Emotion],
        }

    def callback_detail(
        request: Request,
        viewer: Viewer,
        task: dict[str, Any],
        values: Mapping[str, str] | None = None,
        errors: dict[str, str] | None = None,
        status_code: int = 200,
        recorded: bool = False,
    ) -> HTMLResponse:
        return page(
            request,
            viewer,
            "boards_callback_task.html",
            status_code=status_code,
            **detail_context(viewer, task, values, errors, recorded),
        )

    async def callback_list(viewer: Viewer, state: str, type: str) -> dict[str, Any]:
        answer = await console.get(viewer, "/v1/callbacks", state=state, type=type)
        tasks: list[dict[str, Any]] = answer.body if answer.ok else []
        now = datetime.now(zone)
        for task in tasks:
            due = datetime.fromisoformat(task["due_at"])
            task["overdue"] = task["state"] != "done" and due < now
        return {
            "tasks": tasks,
            "state": state,
            "type": type,
            "problem": None if answer.ok else answer.problem,
        }

    @pages.get("/callbacks")
    async def callbacks_page(
        request: Request,
        viewer: Annotated[Viewer, needs("callback.read")],
        state: str = "",
        type: str = "",
    ) -> HTMLResponse:
        context = await callback_list(viewer, state, type)
        if is_fragment(request):  # the filters: the list alone
            return page(request, viewer, "boards_callback_list.html", **context)
        return page(request, viewer, "boards_callbacks.html", title="回访", task=None, **context)

    @pages.get("/callbacks/{task_id}")
    async def callback_task(
        request: Request, task_id: UUID, viewer: Annotated[Viewer, needs("callback.read")]
    ) -> HTMLResponse:
        answer = await console.get(viewer, f"/v1/callbacks/{task_id}")
        if not answer.ok:
            return page(
                request, viewer, "error.html", status_code=answer.status, message=answer.problem
            )
        if is_fragment(request):
            return callback_detail(request, viewer, answer.body)
        # A link opened directly: the worklist with this task open beside it.
        return page(
            request,
            viewer,
            "boards_callbacks.html",
            title="回访",
            **await callback_list(viewer, "", ""),
            **detail_context(viewer, answer.body),
        )

    @pages.post("/callbacks/{task_id}/attempts")
    async def record_attempt(request: Request, task_id: UUID, viewer: ActingViewer) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        offset = datetime.now(zone).strftime("%z")
        body = _attempt_body(form, f"{offset[:3]}:{offset[3:]}")
        answer = await console.call(viewer, "POST", f"/v1/callbacks/{task_id}/attempts", json=body)
        if answer.ok:
            response = callback_detail(request, viewer, answer.body, recorded=True)
            message = "已记录回访" if viewer.lang == "zh" else "Attempt recorded"
            response.headers["HX-Trigger"] = json.dumps({"toast": message, "callbacks": ""})
            return response
        current = await console.get(viewer, f"/v1/callbacks/{task_id}")
        if not current.ok:
            return page(
                request, viewer, "error.html", status_code=current.status, message=answer.problem
            )
        return callback_detail(
            request, viewer, current.body, form, _attempt_errors(answer), answer.status
        )

    # --- Dead letters ------------------------------------------------------------------------

    @pages.get("/deadletters")
    async def dead_letters(
        request: Request,
        viewer: Annotated[Viewer, needs("deadletter.manage")],
        all: bool = False,
    ) -> HTMLResponse:
        answer = await console.get(viewer, "/v1/deadletters", all="true" if all else None)
        return page(
            request,
            viewer,
            "boards_deadletters.html",
            title="死信",
            letters=answer.body if answer.ok else [],
            show_all=all,
            problem=None if answer.ok else answer.problem,
        )

    @pages.post("/deadletters/{letter_id}/replay")
    async def replay(request: Request, letter_id: UUID, viewer: ActingViewer) -> HTMLResponse:
        answer = await console.call(viewer, "POST", f"/v1/deadletters/{letter_id}/replay")
        # The row stays, saying what the replay did (registered as ..., or why not).
        return page(
            request,
            viewer,
            "boards_replay_result.html",
            letter_id=letter_id,
            replayed=answer.ok,
            result=answer.body.get("result", "") if answer.ok else answer.problem,
            retry=answer.status == 503,
        )

    return pages
