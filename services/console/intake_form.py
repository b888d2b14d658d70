"""The new-feedback form for phone and counter agents (`/new`): the registration table's
fields (登记表), the classifier's suggestion while the description is typed, and a hint
when the customer already has feedback from the last 30 days.

A phone call goes to `POST /v1/channels/phone` (the signed-in agent is its receiver). A
counter visit is a store record: the API takes those as registration-table rows
(`POST /v1/channels/batch/store`), so the form sends a one-row table; its reference is the
form's own id, so a second click on the same form registers nothing twice.
"""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, Response

from contracts.codes import EMOTION_LABELS, FEEDBACK_TYPE_LABELS
from services.console.api import Answer
from services.console.session import ActingViewer, NotAllowed, Viewer, needs
from services.projections.report_files import STATUS_LABELS

if TYPE_CHECKING:
    from services.console.web import Console

CHANNELS = ("phone", "store")
# The form's fields (what the agent types); the API's names where it has one.
FIELDS = (
    "channel", "name", "phone", "email", "customer_tier", "product_model", "purchase_date",
    "order_number", "type", "emotion", "expectation", "description", "call_id",
    "recording_ref", "form_id",
)  # fmt: skip
CUSTOMER_FIELDS = ("name", "phone", "email")
OPTIONAL_FIELDS = ("product_model", "purchase_date", "type", "emotion", "expectation")
TYPE_NAMES = {code.value: (zh, code.value) for code, zh in FEEDBACK_TYPE_LABELS.items()}
EMOTION_NAMES = {code.value: (zh, code.value) for code, zh in EMOTION_LABELS.items()}
STATUS_NAMES = {code: (zh, code.replace("_", " ")) for code, zh in STATUS_LABELS.items()}
TIER_NAMES = {"vip": ("VIP", "VIP"), "normal": ("普通", "normal")}
PRIORITY_NAMES = {"urgent": ("紧急", "urgent"), "high": ("高", "high"),
                  "medium": ("中", "medium"), "low": ("低", "low")}  # fmt: skip
# A batch row's reason reads "customer.phone: <message>": the field is the last name.
_ROW_REASON = re.compile(r"^([A-Za-z_][\w.]*): (.*)$", re.DOTALL)


def _values(received: Any) -> dict[str, str]:
    form = {name: str(received.get(name) or "").strip() for name in FIELDS}
    form["channel"] = form["channel"] if form["channel"] in CHANNELS else "phone"
    form["form_id"] = form["form_id"] or uuid.uuid4().hex
    return form


def _description(form: dict[str, str]) -> str:
    """The description as registered: the API has no order-number field, so the order
    number the customer gives is written under their words, where the case shows it."""
    if not form["order_number"]:
        return form["description"]
    return f"{form['description']}\n订单号 / Order number: {form['order_number']}"


def phone_call(form: dict[str, str]) -> dict[str, Any]:
    """The body of POST /v1/channels/phone; fields left empty are not sent."""
    body: dict[str, Any] = {
        "channel": "phone",
        "description": _description(form),
        "customer": {k: form[k] for k in CUSTOMER_FIELDS if form[k]},
        "customer_tier": form["customer_tier"] or "normal",
        "call_id": form["call_id"],
    }
    body.update({k: form[k] for k in (*OPTIONAL_FIELDS, "recording_ref") if form[k]})
    return body


def counter_visit(form: dict[str, str], receiver: str, received_at: datetime) -> bytes:
    """A one-row registration table (UTF-8 CSV, the import's English headers)."""
    row = {
        "received_at": received_at.isoformat(timespec="seconds"),
        **{k: form[k] for k in CUSTOMER_FIELDS},
        "description": _description(form),
        "customer_tier": form["customer_tier"] or "normal",
        **{k: form[k] for k in OPTIONAL_FIELDS},
        "receiver": receiver,
        "reference": f"console:{form['form_id']}",
    }
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(row))
    writer.writeheader()
    writer.writerow(row)
    return out.getvalue().encode()


def row_errors(reasons: list[str]) -> dict[str, str]:
    """A refused row's reasons by form field, as `Answer.field_errors` gives a 422's."""
    errors: dict[str, str] = {}
    for reason in reasons:
        found = _ROW_REASON.match(reason)
        name, message = (found[1].split(".")[-1], found[2]) if found else ("", reason)
        errors[name] = f"{errors[name]}; {message}" if name in errors else message
    return errors


def router(console: Console) -> APIRouter:
    pages = APIRouter(include_in_schema=False)

    def form_page(
        request: Request,
        viewer: Viewer,
        template: str,
        form: dict[str, str],
        errors: dict[str, str] | None = None,
        status_code: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        return console.render(
            request,
            viewer,
            template,
            status_code,
            form=form,
            errors=errors or {},
            tiers=console.settings.customer_tiers,
            tier_names=TIER_NAMES,
            type_names=TYPE_NAMES,
            emotion_names=EMOTION_NAMES,
            **context,
        )

    @pages.get("/new")
    async def new_feedback(
        request: Request,
        viewer: Annotated[Viewer, needs("intake.staff")],
        channel: Annotated[str, Query(max_length=10)] = "phone",
    ) -> HTMLResponse:
        form = _values({"channel": channel})
        return form_page(request, viewer, "intake.html", form)

    @pages.post("/new")
    async def register(request: Request, viewer: ActingViewer) -> Response:
        if not viewer.may("intake.staff"):
            raise NotAllowed("intake.staff")
        form = _values(await request.form())
        if form["channel"] == "phone":
            answer = await console.call(viewer, "POST", "/v1/channels/phone", json=phone_call(form))
            errors = answer.field_errors()
            accepted = answer.body if answer.ok else None
        else:
            accepted, errors, answer = await _counter(viewer, form)
        if answer.status >= 500:
            # Nothing is swapped: the form stays as typed, and a toast says to try again.
            return Response(
                status_code=503,
                headers={"HX-Trigger": _toast(answer.problem, viewer)},
            )
        if accepted is None:
            status = answer.status if answer.status >= 400 else 422
            return form_page(request, viewer, "intake_form.html", form, errors, status)
        return form_page(
            request, viewer, "intake_done.html", form, accepted=accepted, channel=form["channel"]
        )

    async def _counter(
        viewer: Viewer, form: dict[str, str]
    ) -> tuple[dict[str, Any] | None, dict[str, str], Answer]:
        received_at = datetime.now(console.settings.zone)
        table = counter_visit(form, viewer.actor.name, received_at)
        answer = await console.call(
            viewer,
            "POST",
            "/v1/channels/batch/store",
            files={"file": ("counter.csv", table, "text/csv")},
        )
        if not answer.ok:
            return None, answer.field_errors(), answer
        if answer.body.get("refused"):
            return None, row_errors(answer.body["refused"][0]["errors"]), answer
        taken = answer.body["taken"][0]
        accepted = {"feedback_number": taken["feedback_number"], "duplicate": taken["duplicate"]}
        return accepted, {}, answer

    @pages.post("/new/suggestion")
    async def suggestion(request: Request, viewer: ActingViewer) -> HTMLResponse:
        """The classifier's decision for the description typed so far."""
        form = _values(await request.form())
        if not form["description"]:
            return console.render(request, viewer, "intake_suggestion.html", decision=None)
        answer = await console.call(
            viewer,
            "POST",
            "/v1/classification/suggestion",
            json={
                "text": form["description"],
                "channel": form["channel"],
                "customer_tier": form["customer_tier"] or "normal",
            },
        )
        return console.render(
            request,
            viewer,
            "intake_suggestion.html",
            decision=answer.body if answer.ok else None,
            problem=None if answer.ok else answer.problem,
            type_names=TYPE_NAMES,
            emotion_names=EMOTION_NAMES,
            priority_names=PRIORITY_NAMES,
        )

    @pages.post("/new/recent")
    async def recent(
        request: Request,
        viewer: ActingViewer,
        phone: Annotated[str, Form(max_length=40)] = "",
        email: Annotated[str, Form(max_length=254)] = "",
    ) -> HTMLResponse:
        """The customer's feedback of the last 30 days, once the phone or e-mail typed is
        one intake accepts (a number half typed finds no one and is not asked about)."""
        items = await _recent(viewer, phone.strip(), email.strip())
        zone = console.settings.zone
        for item in items:
            item["received_on"] = datetime.fromisoformat(item["received_at"]).astimezone(zone)
        return console.render(
            request,
            viewer,
            "intake_recent.html",
            items=items,
            type_names=TYPE_NAMES,
            status_names=STATUS_NAMES,
        )

    async def _recent(viewer: Viewer, phone: str, email: str) -> list[dict[str, Any]]:
        if not (phone or email):
            return []
        path = "/v1/customers/recent-feedback"
        answer = await console.call(
            viewer, "POST", path, json={"phone": phone or None, "email": email or None}
        )
        if answer.ok:
            return list(answer.body["items"])
        if answer.status != 422 or not (phone and email):
            return []
        # One of the two is not complete yet: the other alone may still find the customer.
        found: dict[str, dict[str, Any]] = {}
        for alone in ({"phone": phone}, {"email": email}):
            answer = await console.call(viewer, "POST", path, json=alone)
            for item in answer.body["items"] if answer.ok else ():
                found.setdefault(item["feedback_number"], item)
        return sorted(found.values(), key=lambda item: str(item["received_at"]), reverse=True)

    return pages


def _toast(message: str, viewer: Viewer) -> str:
    prefix = "未能登记，请重试：" if viewer.lang == "zh" else "Not registered, try again: "
    return json.dumps({"toast": prefix + message}, ensure_ascii=True)
