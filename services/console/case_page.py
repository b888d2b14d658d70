"""The case page (/cases/{number}): registration data with the contact masked, a logged
reveal for the roles allowed, the timeline, clocks, evidence, correspondence, and exactly the
commands the API says this person may give the case now (`actions` of GET /v1/cases/{n}).

Each command is a small form posted with htmx to /cases/{number}/actions/{action}, which
calls the JSON API as the signed-in person: on a 4xx the form comes back with the API's
messages next to its fields; on success the whole case is rendered again.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import quote
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import FormData

from contracts.events import FEEDBACK_NUMBER_PATTERN
from services.console.api import Answer, json_of
from services.console.session import ActingViewer, Viewer, needs

if TYPE_CHECKING:
    from services.console.web import Console

NumberPath = Annotated[str, "feedback number"]

FieldKind = Literal[
    "text", "textarea", "datetime", "select", "checkbox", "number", "lines", "yes_no", "agent",
    "department",
]  # fmt: skip


@dataclass(frozen=True)
class FormField:
    name: str
    zh: str
    en: str
    kind: FieldKind = "text"
    # Sent even when empty, so that the API names what is missing next to the field.
    required: bool = False
    options: tuple[tuple[str, str, str], ...] = ()  # value, Chinese, English
    group: str | None = None  # nested in the body under this key (rating aspects)
    low: int | None = None
    high: int | None = None


@dataclass(frozen=True)
class ActionForm:
    action: str  # as named in the API's `actions`
    path: str  # under /v1/cases/{number}
    zh: str
    en: str
    submit_zh: str
    submit_en: str
    fields: tuple[FormField, ...] = ()
    style: str = ""  # primary | danger | ""


REASON = FormField("reason", "原因", "Reason", "textarea", required=True)
RESULTS = (
    ("resolved", "已解决", "resolved"),
    ("partially_resolved", "部分解决", "partially resolved"),
    ("unresolved", "未解决", "unresolved"),
)
FORMS: dict[str, ActionForm] = {
    form.action: form
    for form in (
        ActionForm(
            "accept", "/accept", "确认接收", "Accept", "确认接收", "Accept", style="primary"
        ),
        ActionForm("dispute", "/dispute", "退回指派", "Dispute", "提交退回", "Dispute", (REASON,)),
        ActionForm(
            "assign",
            "/assign",
            "指派处理人",
            "Assign",
            "指派",
            "Assign",
            (FormField("agent_id", "处理人", "Agent", "agent", required=True), REASON),
        ),
        ActionForm(
            "plan",
            "/plan",
            "制定处理方案",
            "Plan",
            "保存方案",
            "Save plan",
            (
                FormField("diagnosis", "原因分析", "Diagnosis", "textarea", required=True),
                FormField("plan", "处理方案", "Plan", "textarea", required=True),
                FormField(
                    "expected_completion",
                    "预计完成时间",
                    "Expected completion",
                    "datetime",
                    required=True,
                ),
            ),
        ),
        ActionForm(
            "note",
            "/notes",
            "添加备注",
            "Add a note",
            "保存备注",
            "Save note",
            (
                FormField("text", "备注内容", "Note", "textarea", required=True),
                FormField("step", "处理步骤", "Step"),
                FormField(
                    "visible_to_customer",
                    "告知客户（进度更新）",
                    "Tell the customer (progress update)",
                    "checkbox",
                ),
            ),
        ),
        ActionForm(
            "info_request",
            "/customer-info-requests",
            "请客户补充信息",
            "Ask the customer",
            "发送请求",
            "Send request",
            (
                FormField(
                    "missing",
                    "缺少的信息（每行一项）",
                    "Missing (one per line)",
                    "lines",
                    required=True,
                ),
            ),
        ),
        ActionForm(
            "co_handler",
            "/co-handlers",
            "添加协办部门",
            "Add a co-handler",
            "添加协办",
            "Add co-handler",
            (
                FormField("department", "协办部门", "Department", "department", required=True),
                FormField("duty", "协办职责", "Duty", "textarea", required=True),
                FormField("due_at", "答复期限", "Answer due", "datetime", required=True),
            ),
        ),
        ActionForm(
            "escalate",
            "/escalation-requests",
            "升级申请",
            "Request escalation",
            "提交升级申请",
            "Request escalation",
            (REASON, FormField("support_needed", "需要的支持", "Support needed", "textarea")),
        ),
        ActionForm(
            "resolve",
            "/resolve",
            "登记处理结果",
            "Resolve",
            "提交结果",
            "Submit result",
            (
                FormField("result", "结果", "Result", "select", required=True, options=RESULTS),
                FormField("summary", "处理摘要", "Summary", "textarea", required=True),
                FormField("reason", "未解决原因", "Reason (unless resolved)", "textarea"),
                FormField("measures", "整改措施", "Measures", "textarea"),
                FormField("resources", "投入资源", "Resources", "text"),
            ),
            style="primary",
        ),
        ActionForm(
            "confirm",
            "/confirmation",
            "代客户确认",
            "Confirm for the customer",
            "提交确认",
            "Submit confirmation",
            (
                FormField(
                    "satisfied",
                    "客户是否满意",
                    "Is the customer satisfied",
                    "yes_no",
                    required=True,
                ),
                FormField("comment", "客户意见", "Customer's comment", "textarea"),
            ),
        ),
        ActionForm(
            "rate",
            "/rating",
            "代客户评价",
            "Rate for the customer",
            "提交评价",
            "Submit rating",
            (
                FormField(
                    "csat", "满意度（1–5）", "CSAT (1–5)", "number", required=True, low=1, high=5
                ),
                FormField("nps", "推荐度（0–10）", "NPS (0–10)", "number", low=0, high=10),
                FormField(
                    "speed", "速度（1–5）", "Speed (1–5)", "number", group="aspects", low=1, high=5
                ),
                FormField(
                    "professionalism",
                    "专业（1–5）",
                    "Professionalism (1–5)",
                    "number",
                    group="aspects",
                    low=1,
                    high=5,
                ),
                FormField(
                    "attitude",
                    "态度（1–5）",
                    "Attitude (1–5)",
                    "number",
                    group="aspects",
                    low=1,
                    high=5,
                ),
                FormField("comment", "评价意见", "Comment", "textarea"),
            ),
        ),
        ActionForm("reopen", "/reopen", "重新打开", "Reopen", "重新打开", "Reopen", (REASON,)),
        ActionForm(
            "complex",
            "/complex",
            "标记为复杂案件",
            "Mark complex",
            "标记复杂",
            "Mark complex",
            (REASON,),
        ),
        ActionForm(
            "close",
            "/close",
            "关闭案件",
            "Close",
            "关闭案件",
            "Close",
            (
                FormField(
                    "reason",
                    "关闭原因（未经客户确认时必填）",
                    "Reason (required unless confirmed)",
                    "textarea",
                ),
            ),
        ),
        ActionForm("archive", "/archive", "归档", "Archive", "归档", "Archive", style="danger"),
    )
}


def body_of(form: ActionForm, sent: FormData, zone: ZoneInfo) -> dict[str, Any] | None:
    """The JSON body the API expects, from the form as typed: no judgement of the values
    (the API's validation is the one that speaks), only their shape."""
    if not form.fields:
        return None
    body: dict[str, Any] = {}
    for field in form.fields:
        raw = str(sent.get(field.name, "")).strip()
        value: Any = raw
        if field.kind == "checkbox":
            value = raw in ("on", "true", "1")
        elif field.kind == "lines":
            value = [line.strip() for line in raw.splitlines() if line.strip()]
        elif field.kind == "yes_no":
            value = {"true": True, "false": False}.get(raw)
        elif field.kind == "number" and raw.lstrip("-").isdigit():
            value = int(raw)
        elif field.kind == "datetime" and raw:
            value = _in_zone(raw, zone)
        if (value == "" or value is None) and not field.required:
            continue
        (body.setdefault(field.group, {}) if field.group else body)[field.name] = value
    return body


def _in_zone(typed: str, zone: ZoneInfo) -> str:
    """A datetime-local value (no offset) is the service centre's local time."""
    try:
        moment = datetime.fromisoformat(typed)
    except ValueError:
        return typed  # the API says what is wrong with it
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.isoformat()


def router(console: Console) -> APIRouter:
    pages = APIRouter(include_in_schema=False)
    zone = console.settings.zone  # the service centre's (FEEDBACK_TIMEZONE)

    console.templates.env.globals["case_forms"] = FORMS

    async def load(viewer: Viewer, number: str) -> Answer | dict[str, Any]:
        """Everything the page shows, as the API gives it to this person; the refusal
        when the case is not theirs to see."""
        # Only a well-formed number goes into API paths (a decoded "?" or ".." would not).
        if not re.fullmatch(FEEDBACK_NUMBER_PATTERN, number):
            return Answer(404, {"detail": f"{number[:40]!r} is not a feedback number"})
        case = await console.get(viewer, f"/v1/cases/{number}")
        if not case.ok:
            return case
        registration, correspondence = await asyncio.gather(
            console.get(viewer, f"/v1/feedback/{number}"),
            console.get(viewer, f"/v1/cases/{number}/correspondence"),
        )
        agents: list[dict[str, Any]] = []
        if "assign" in case.body["actions"]:
            found = await console.get(viewer, "/v1/agents", department=case.body["department"])
            agents = found.body if found.ok else []
        return {
            "case": case.body,
            # The registration table may lag the case by a moment (it is a read model).
            "registration": registration.body if registration.ok else None,
            "correspondence": correspondence.body if correspondence.ok else [],
            "agents": agents,
        }

    def refused(request: Request, viewer: Viewer, answer: Answer) -> HTMLResponse:
        status = answer.status if answer.status in (403, 404, 422) else 502
        return console.render(
            request, viewer, "case_refused.html", status, status=status, problem=answer.problem
        )

    @pages.get("/cases")
    async def find_case(
        request: Request,
        viewer: Annotated[Viewer, needs("case.read")],
        number: Annotated[str | None, Query(max_length=40)] = None,
    ) -> Response:
        if number and number.strip():
            # Quoted whole: the number cannot become another path or a query.
            return RedirectResponse(f"/cases/{quote(number.strip(), safe='')}", 303)
        return console.render(request, viewer, "case_find.html")

    @pages.get("/cases/{number}/evidence/{sha256}")
    async def evidence_file(
        request: Request,
        number: NumberPath,
        sha256: str,
        viewer: Annotated[Viewer, needs("evidence.read")],
    ) -> Response:
        """An attachment, through the API (scoped to the case's department, audited)."""
        if not re.fullmatch(FEEDBACK_NUMBER_PATTERN, number) or not re.fullmatch(
            r"[0-9a-f]{64}", sha256
        ):
            return refused(request, viewer, Answer(404, {"detail": "no such attachment"}))
        answer = await console.api.raw(
            "GET", f"/v1/cases/{number}/evidence/{sha256}", token=viewer.token
        )
        if answer.status_code != 200:
            problem = Answer(answer.status_code, json_of(answer))
            return refused(request, viewer, problem)
        kept = ("content-type", "content-disposition", "x-content-type-options", "cache-control")
        return Response(
            answer.content,
            status_code=200,
            headers={k: v for k, v in answer.headers.items() if k.lower() in kept},
        )

    @pages.get("/cases/{number}")
    async def case_page(
        request: Request, number: NumberPath, viewer: Annotated[Viewer, needs("case.read")]
    ) -> HTMLResponse:
        loaded = await load(viewer, number)
        if isinstance(loaded, Answer):
            return refused(request, viewer, loaded)
        return console.render(request, viewer, "case.html", number=number, **loaded)

    @pages.post("/cases/{number}/contact")
    async def reveal_contact(
        request: Request,
        number: NumberPath,
        viewer: ActingViewer,
        reason: Annotated[str, Form(max_length=500)] = "",
    ) -> HTMLResponse:
        """The unmasked contact in place of the masked one; the API records who and why."""
        answer = await console.get(viewer, f"/v1/cases/{number}/contact", reason=reason)
        if answer.ok:
            return console.render(
                request, viewer, "case_contact.html", number=number, contact=answer.body,
                revealed=True, may_reveal=False,
            )  # fmt: skip
        case = await console.get(viewer, f"/v1/cases/{number}")
        return console.render(
            request,
            viewer,
            "case_contact.html",
            answer.status if answer.status < 500 else 200,
            number=number,
            contact=case.body.get("contact") if case.ok else None,
            revealed=False,
            may_reveal=case.ok and "reveal_contact" in case.body["actions"],
            errors=answer.field_errors(),
            reason=reason,
        )

    @pages.post("/cases/{number}/actions/{action}")
    async def act(
        request: Request, number: NumberPath, action: str, viewer: ActingViewer
    ) -> Response:
        form = FORMS.get(action)
        if form is None:
            return Response("no such action", 404, media_type="text/plain")
        sent = await request.form()
        answer = await console.call(
            viewer, "POST", f"/v1/cases/{number}{form.path}", json=body_of(form, sent, zone)
        )
        if not answer.ok:
            loaded = await load(viewer, number)
            return console.render(
                request,
                viewer,
                "case_action.html",
                answer.status if answer.status < 500 else 200,
                number=number,
                form=form,
                errors=answer.field_errors(),
                values={key: str(value) for key, value in sent.items()},
                case=loaded.get("case", {}) if isinstance(loaded, dict) else {},
                agents=loaded.get("agents", []) if isinstance(loaded, dict) else [],
            )
        loaded = await load(viewer, number)
        if isinstance(loaded, Answer):  # e.g. the case left the person's department
            return Response(status_code=204, headers={"HX-Redirect": f"/cases/{number}"})
        response = console.render(request, viewer, "case_body.html", number=number, **loaded)
        # The form asked to replace itself; on success the whole case is drawn again.
        response.headers["HX-Retarget"] = "#case"
        response.headers["HX-Reswap"] = "outerHTML"
        done = f"{form.zh}：完成" if viewer.lang == "zh" else f"{form.en}: done"
        response.headers["HX-Trigger"] = json.dumps({"toast": done})
        return response

    return pages
