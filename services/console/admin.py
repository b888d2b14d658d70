"""Admin pages (`/admin`, admins): users and roles, agents (skills, capacity, availability),
SLA policies, calendar overrides and the classification rules, each with the API's
validation messages next to the fields and the configuration's history (who, when, why).

Every change goes through the JSON API as the signed-in admin: `/v1/users`, `/v1/agents`,
`/v1/admin/config/{kind}` (services/common/config_store.py, which also says when a stored
version takes effect).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Annotated, Any

import yaml
from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, Response

from services.access.roles import Role
from services.access.users import USERNAME_PATTERN
from services.console.api import Answer
from services.console.session import ActingViewer, Viewer, needs
from services.sla.policies import CLOCKS

if TYPE_CHECKING:
    from services.console.web import Console

SECTIONS = (
    ("users", "/admin", "用户与角色", "Users and roles"),
    ("agents", "/admin/agents", "坐席", "Agents"),
    ("sla", "/admin/sla", "时限策略", "SLA policies"),
    ("calendar", "/admin/calendar", "工作日历", "Calendar"),
    ("rules", "/admin/rules", "分类规则", "Classification rules"),
)
CLOCK_NAMES = {
    "registration": ("登记", "Registration"),
    "first_response": ("首次响应", "First response"),
    "progress_update": ("进展告知", "Progress update"),
    "co_handler_response": ("协办答复", "Co-handler answer"),
    "resolution": ("解决", "Resolution"),
    "result_notice": ("结果告知", "Result notice"),
}
# A generated password is shown once; this many random bytes make ~20 characters.
GENERATED_PASSWORD_BYTES = 15
AGENT_ID = r"^[a-z0-9][a-z0-9_.-]{1,63}$"
Username = Annotated[str, Path(pattern=USERNAME_PATTERN)]
AgentIdPath = Annotated[str, Path(pattern=AGENT_ID)]


def _form_values(form: Any) -> dict[str, str]:
    return {key: str(value) for key, value in form.multi_items()}


def _all(form: Any, name: str) -> list[str]:
    """Every value of a repeated field (checkboxes)."""
    return [str(value) for key, value in form.multi_items() if key == name]


def _split(text: str) -> list[str]:
    return [part.strip() for part in re.split(r"[,，、\s]+", text) if part.strip()]


def _config_errors(answer: Answer) -> dict[str, str]:
    """The API's reasons by dotted path inside the document (`clocks.first_response.0.
    target`); "" for what names no field (a 409, a rule across fields)."""
    detail = answer.body.get("detail") if isinstance(answer.body, dict) else None
    if not isinstance(detail, list):
        return {"": answer.problem}
    errors: dict[str, str] = {}
    for item in detail:
        loc = [str(part) for part in item.get("loc", ())]
        if loc[:2] == ["body", "body"]:
            loc = loc[2:]
        elif loc[:1] == ["body"]:
            loc = loc[1:]
        name = ".".join(loc)
        message = str(item.get("msg", "")).removeprefix("Value error, ")
        errors[name] = f"{errors[name]}; {message}" if name in errors else message
    return errors


# -- SLA policies as a form ---------------------------------------------------------------


def when_text(when: Mapping[str, Any]) -> str:
    """`{"priority": ["urgent", "high"], "complex": true}` as `priority=urgent,high; complex=true`."""
    parts = []
    for name, wanted in when.items():
        values = wanted if isinstance(wanted, list) else [wanted]
        parts.append(
            f"{name}=" + ",".join(str(v).lower() if isinstance(v, bool) else str(v) for v in values)
        )
    return "; ".join(parts)


def parse_when(text: str) -> dict[str, Any]:
    """The reverse of `when_text`; ValueError says what is wrong."""
    when: dict[str, Any] = {}
    for part in re.split(r"[;；]", text):
        if not part.strip():
            continue
        name, equals, values = part.partition("=")
        name = name.strip()
        if not equals or not name or not values.strip():
            raise ValueError(f"“{part.strip()}”: write name=value, e.g. priority=urgent,high")
        parsed: list[Any] = [
            {"true": True, "false": False}.get(v.lower(), v) for v in _split(values)
        ]
        when[name] = parsed[0] if len(parsed) == 1 else parsed
    return when


@dataclass(frozen=True)
class ConfigPage:
    """One page of stored configuration: its kind in the API, its template and navigation
    section, and how its form is filled from a stored body."""

    kind: str
    template: str
    section: str
    form_of: Callable[[Mapping[str, Any]], dict[str, Any]]


def sla_form(body: Mapping[str, Any]) -> dict[str, Any]:
    """The policy document as the form's rows (one blank row per clock to add a rule)."""
    clocks = {}
    for clock in CLOCKS:
        rows = [
            {
                "when": when_text(rule.get("when") or {}),
                "target": str(rule.get("target", "")),
                "time": rule.get("time", "business"),
            }
            for rule in (body.get("clocks") or {}).get(clock, [])
        ]
        clocks[clock] = [*rows, {"when": "", "target": "", "time": "business"}]
    escalation = (body.get("escalation") or {}).get("to_head_after") or {}
    return {
        "warn_at_share": body.get("warn_at_share", 0.75),
        "clocks": clocks,
        "escalation_target": escalation.get("target", ""),
        "escalation_time": escalation.get("time", "business"),
    }


def sla_body(
    form: Mapping[str, str], base: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """The document from the form, the form's own errors by field, and where each rule of
    the document sits on the form (`clocks.x.0` -> `x.2`) to place the API's errors."""
    errors: dict[str, str] = {}
    places: dict[str, str] = {}
    clocks: dict[str, list[dict[str, Any]]] = {}
    for clock in CLOCKS:
        rules: list[dict[str, Any]] = []
        row = 0
        while f"{clock}.{row}.target" in form:
            target = form[f"{clock}.{row}.target"].strip()
            when = form.get(f"{clock}.{row}.when", "").strip()
            if target or when:  # an emptied row is a rule taken away
                rule: dict[str, Any] = {"target": target, "time": form.get(f"{clock}.{row}.time")}
                try:
                    parsed = parse_when(when)
                except ValueError as error:
                    errors[f"{clock}.{row}.when"] = str(error)
                    parsed = {}
                if parsed:
                    rule["when"] = parsed
                places[f"clocks.{clock}.{len(rules)}"] = f"{clock}.{row}"
                rules.append(rule)
            row += 1
        if rules:
            clocks[clock] = rules
    body = dict(base)
    body["clocks"] = clocks
    share = form.get("warn_at_share", "").strip()
    try:
        body["warn_at_share"] = float(share)
    except ValueError:
        errors["warn_at_share"] = "a number between 0 and 1, e.g. 0.75"
    body["escalation"] = {
        "to_head_after": {
            "target": form.get("escalation_target", "").strip(),
            "time": form.get("escalation_time", "business"),
        }
    }
    return body, errors, places


def _placed(errors: Mapping[str, str], places: Mapping[str, str]) -> dict[str, str]:
    """API errors named by form field: `clocks.x.0.target` -> `x.2.target`."""
    placed: dict[str, str] = {}
    for name, message in errors.items():
        field = name
        parts = name.split(".")
        if len(parts) >= 3 and parts[0] == "clocks":
            row = places.get(".".join(parts[:3]))
            field = f"{row}.{parts[3] if len(parts) > 3 else 'target'}" if row else name
        elif parts[0] == "escalation":
            field = "escalation_time" if parts[-1] == "time" else "escalation_target"
        elif parts[0] == "clocks":
            field = ""
        placed[field] = f"{placed[field]}; {message}" if field in placed else message
    return placed


# -- the calendar's overrides -------------------------------------------------------------


def _days(text: str) -> list[str]:
    return _split(text)


CALENDAR_FIELDS = ("extra_closed", "extra_working", "breaks")
# Fields of the change itself (not of the document): shown by their own inputs.
CHANGE_FIELDS = ("reason", "expected_version")


def calendar_errors(errors: Mapping[str, str]) -> dict[str, str]:
    """`extra_closed.1` -> `extra_closed`: the form has one box per list."""
    placed: dict[str, str] = {}
    for name, message in errors.items():
        first = name.split(".")[0]
        field = first if first in CALENDAR_FIELDS or name in CHANGE_FIELDS else ""
        if field != name and field:
            message = f"{name.partition('.')[2]}: {message}"
        placed[field] = f"{placed[field]}; {message}" if field in placed else message
    return placed


def rules_errors(errors: Mapping[str, str], status: int) -> dict[str, str]:
    """The rule book is one box: every reason inside it listed there, by its path."""
    if status != 422:
        return {"": "; ".join(errors.values())}
    placed = {name: message for name, message in errors.items() if name in CHANGE_FIELDS}
    inside = [
        f"{name or '(top level)'}: {message}"
        for name, message in errors.items()
        if name not in CHANGE_FIELDS
    ]
    if inside:
        placed["rules"] = "\n".join(inside)
    return placed


def router(console: Console) -> APIRouter:
    pages = APIRouter(include_in_schema=False)

    zone = console.settings.zone

    def department_codes() -> list[str]:
        return list(console.labels.departments)

    def render(
        request: Request, viewer: Viewer, template: str, status_code: int = 200, **context: Any
    ) -> HTMLResponse:
        return console.render(
            request,
            viewer,
            template,
            status_code,
            sections=SECTIONS,
            roles=[role.value for role in Role],
            departments=department_codes(),
            clock_names=CLOCK_NAMES,
            **context,
        )

    def refused_status(answer: Answer) -> int:
        return answer.status if 400 <= answer.status < 500 else 502

    # -- users ---------------------------------------------------------------------------

    async def users_context(viewer: Viewer) -> dict[str, Any]:
        answer = await console.get(viewer, "/v1/users")
        return {
            "users": answer.body if answer.ok else [],
            "load_error": None if answer.ok else answer.problem,
        }

    async def changes_of(viewer: Viewer, kind: str) -> list[dict[str, Any]]:
        """The admin change log for users or agents (who changed what, passwords never)."""
        answer = await console.get(viewer, "/v1/audit/admin-changes", kind=kind, limit=30)
        return answer.body if answer.ok else []

    @pages.get("/admin")
    async def users_page(
        request: Request, viewer: Annotated[Viewer, needs("user.manage")]
    ) -> HTMLResponse:
        return render(
            request,
            viewer,
            "admin_users.html",
            section="users",
            values={},
            errors={},
            changes=await changes_of(viewer, "user"),
            **await users_context(viewer),
        )

    @pages.post("/admin/users")
    async def add_user(request: Request, viewer: ActingViewer) -> Response:
        received = await request.form()
        form = _form_values(received)
        password = form.get("password", "")
        generated = None
        if not password:
            generated = secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)
            password = generated
        body: dict[str, Any] = {
            "username": form.get("username", "").strip(),
            "password": password,
            "role": form.get("role", ""),
            "departments": _all(received, "departments"),
        }
        if form.get("agent_id", "").strip():
            body["agent_id"] = form["agent_id"].strip()
        answer = await console.call(viewer, "POST", "/v1/users", json=body)
        form_shown = {**form, "departments_list": body["departments"]}
        if not answer.ok:
            errors = answer.field_errors()
            if answer.status == 409:
                errors = {"username": answer.problem}
            return render(
                request,
                viewer,
                "admin_users_panel.html",
                refused_status(answer),
                values=form_shown,
                errors=errors,
                **await users_context(viewer),
            )
        return render(
            request,
            viewer,
            "admin_users_panel.html",
            values={},
            errors={},
            added=answer.body,
            generated_password=generated,
            **await users_context(viewer),
        )

    async def user_row(
        request: Request,
        viewer: Viewer,
        username: str,
        editing: bool,
        values: Mapping[str, Any] | None = None,
        errors: Mapping[str, str] | None = None,
        status_code: int = 200,
    ) -> HTMLResponse:
        users = (await users_context(viewer))["users"]
        user = next((u for u in users if u["username"] == username), None)
        if user is None:
            return HTMLResponse("", 404)
        return render(
            request,
            viewer,
            "admin_user_row.html",
            status_code,
            user=user,
            editing=editing,
            values=values or {},
            errors=errors or {},
        )

    @pages.get("/admin/users/{username}/edit")
    async def edit_user(
        request: Request, username: Username, viewer: Annotated[Viewer, needs("user.manage")]
    ) -> HTMLResponse:
        return await user_row(request, viewer, username, editing=True)

    @pages.get("/admin/users/{username}")
    async def show_user(
        request: Request, username: Username, viewer: Annotated[Viewer, needs("user.manage")]
    ) -> HTMLResponse:
        return await user_row(request, viewer, username, editing=False)

    @pages.post("/admin/users/{username}")
    async def change_user(request: Request, username: Username, viewer: ActingViewer) -> Response:
        received = await request.form()
        form = _form_values(received)
        body: dict[str, Any] = {
            "role": form.get("role", ""),
            "departments": _all(received, "departments"),
            "agent_id": form.get("agent_id", "").strip() or None,
            "active": form.get("active") == "on",
        }
        if form.get("password"):
            body["password"] = form["password"]
        answer = await console.call(viewer, "PATCH", f"/v1/users/{username}", json=body)
        if not answer.ok:
            errors = answer.field_errors()
            if answer.status in (404, 409):
                errors = {"": answer.problem}
            return await user_row(
                request, viewer, username, True, form, errors, refused_status(answer)
            )
        response = await user_row(request, viewer, username, editing=False)
        response.headers["HX-Trigger"] = _toast(viewer, f"已保存 {username}", f"Saved {username}")
        return response

    # -- agents --------------------------------------------------------------------------

    async def agents_of(viewer: Viewer) -> tuple[list[dict[str, Any]], str | None]:
        answer = await console.get(viewer, "/v1/agents")
        return (answer.body if answer.ok else []), (None if answer.ok else answer.problem)

    @pages.get("/admin/agents")
    async def agents_page(
        request: Request, viewer: Annotated[Viewer, needs("agent.write")]
    ) -> HTMLResponse:
        agents, problem = await agents_of(viewer)
        return render(
            request,
            viewer,
            "admin_agents.html",
            section="agents",
            agents=agents,
            load_error=problem,
            changes=await changes_of(viewer, "agent"),
        )

    @pages.post("/admin/agents/{agent_id}")
    async def change_agent(
        request: Request, agent_id: AgentIdPath, viewer: ActingViewer
    ) -> Response:
        form = _form_values(await request.form())
        agents, _ = await agents_of(viewer)
        known = next((a for a in agents if a["agent"]["agent_id"] == agent_id), None)
        if known is None:
            return HTMLResponse("", 404)
        agent = dict(known["agent"])
        errors: dict[str, str] = {}
        body: dict[str, Any] = {
            "name": agent["name"],
            "department": agent["department"],
            "skills": _split(form.get("skills", "")),
            "languages": agent["languages"],
            "vip": form.get("vip") == "on",
            "available": form.get("available") == "on",
        }
        try:
            body["capacity"] = float(form.get("capacity", ""))
        except ValueError:
            errors["capacity"] = "a number from 0 to 1000"
        answer = None
        if not errors:
            answer = await console.call(viewer, "PUT", f"/v1/agents/{agent_id}", json=body)
            errors = {} if answer.ok else answer.field_errors()
        shown = (
            {**known, "agent": {**agent, **body}} if errors else (answer.body if answer else known)
        )
        response = render(
            request,
            viewer,
            "admin_agent_row.html",
            refused_status(answer)
            if answer is not None and not answer.ok
            else (422 if errors else 200),
            item=shown,
            values=form if errors else {},
            errors=errors,
        )
        if not errors:
            response.headers["HX-Trigger"] = _toast(
                viewer, f"已保存 {agent_id}", f"Saved {agent_id}"
            )
        return response

    # -- stored configuration --------------------------------------------------------------

    async def config_of(
        viewer: Viewer, kind: str
    ) -> tuple[dict[str, Any], list[dict[str, Any]], str | None]:
        current = await console.get(viewer, f"/v1/admin/config/{kind}")
        history = await console.get(viewer, f"/v1/admin/config/{kind}/history")
        if not current.ok:
            return {}, [], current.problem
        changes = history.body if history.ok else []
        for change in changes:
            # Shown in the centre's time, as every other time on the console.
            at = datetime.fromisoformat(change["changed_at"]).astimezone(zone)
            change["changed_at"] = at.isoformat(timespec="seconds")
        return current.body, changes, None

    async def config_section(
        request: Request,
        viewer: Viewer,
        page: ConfigPage,
        *,
        fragment: bool,
        status_code: int = 200,
        form: Mapping[str, Any] | None = None,
        errors: Mapping[str, str] | None = None,
        saved: int | None = None,
        expected_version: int | None = None,
    ) -> HTMLResponse:
        """One configuration page (or its section, for htmx), its form filled from the
        stored version unless `form` says otherwise (what was typed, what was saved)."""
        config, history, problem = await config_of(viewer, page.kind)
        return render(
            request,
            viewer,
            page.template,
            status_code,
            section=page.section,
            kind=page.kind,
            fragment=fragment,
            config=config,
            history=history,
            load_error=problem,
            form=page.form_of(config.get("body", {})) if form is None else form,
            errors=errors or {},
            saved=saved,
            expected_version=config.get("version", 0)
            if expected_version is None
            else expected_version,
        )

    async def store(
        viewer: Viewer, kind: str, expected: str, reason: str, body: dict[str, Any]
    ) -> Answer:
        return await console.call(
            viewer,
            "PUT",
            f"/v1/admin/config/{kind}",
            json={
                "expected_version": int(expected) if expected.isdigit() else -1,
                "reason": reason,
                "body": body,
            },
        )

    # SLA policies

    sla = ConfigPage("sla_policies", "admin_sla.html", "sla", sla_form)

    @pages.get("/admin/sla")
    async def sla_page(
        request: Request, viewer: Annotated[Viewer, needs("config.read")]
    ) -> HTMLResponse:
        return await config_section(request, viewer, sla, fragment=False)

    @pages.post("/admin/sla")
    async def change_sla(request: Request, viewer: ActingViewer) -> Response:
        form = _form_values(await request.form())
        current = await console.get(viewer, f"/v1/admin/config/{sla.kind}")
        base = current.body.get("body", {}) if current.ok else {}
        body, errors, places = sla_body(form, base)
        shown = _resubmitted_sla(form)
        if not form.get("reason", "").strip():
            errors["reason"] = "say why (kept in the history)"
        if errors:
            return await config_section(
                request,
                viewer,
                sla,
                fragment=True,
                status_code=422,
                form=shown,
                errors=errors,
                expected_version=_int(form.get("expected_version")),
            )
        answer = await store(
            viewer, sla.kind, form.get("expected_version", ""), form["reason"], body
        )
        if not answer.ok:
            errors = _placed(_config_errors(answer), places)
            return await config_section(
                request,
                viewer,
                sla,
                fragment=True,
                status_code=refused_status(answer),
                form=shown,
                errors=errors,
                expected_version=_int(form.get("expected_version")),
            )
        return await config_section(
            request,
            viewer,
            sla,
            fragment=True,
            form=sla_form(answer.body["body"]),
            saved=answer.body["version"],
        )

    # Calendar overrides

    def calendar_form(body: Mapping[str, Any]) -> dict[str, str]:
        return {
            "extra_closed": "\n".join(sorted(str(d) for d in body.get("extra_closed") or [])),
            "extra_working": "\n".join(sorted(str(d) for d in body.get("extra_working") or [])),
            "breaks": ", ".join(body.get("breaks") or []),
        }

    calendar = ConfigPage("calendar", "admin_calendar.html", "calendar", calendar_form)

    @pages.get("/admin/calendar")
    async def calendar_page(
        request: Request, viewer: Annotated[Viewer, needs("config.read")]
    ) -> HTMLResponse:
        return await config_section(request, viewer, calendar, fragment=False)

    @pages.post("/admin/calendar")
    async def change_calendar(request: Request, viewer: ActingViewer) -> Response:
        form = _form_values(await request.form())
        current = await console.get(viewer, f"/v1/admin/config/{calendar.kind}")
        body = dict(current.body.get("body", {})) if current.ok else {}
        body["extra_closed"] = _days(form.get("extra_closed", ""))
        body["extra_working"] = _days(form.get("extra_working", ""))
        body["breaks"] = [b for b in (p.strip() for p in form.get("breaks", "").split(",")) if b]
        errors: dict[str, str] = {}
        if not form.get("reason", "").strip():
            errors["reason"] = "say why (kept in the history)"
        answer = None
        if not errors:
            answer = await store(
                viewer, calendar.kind, form.get("expected_version", ""), form["reason"], body
            )
            if not answer.ok:
                errors = calendar_errors(_config_errors(answer))
        if errors:
            return await config_section(
                request,
                viewer,
                calendar,
                fragment=True,
                status_code=refused_status(answer) if answer is not None else 422,
                form=form,
                errors=errors,
                expected_version=_int(form.get("expected_version")),
            )
        assert answer is not None
        return await config_section(
            request,
            viewer,
            calendar,
            fragment=True,
            form=calendar_form(answer.body["body"]),
            saved=answer.body["version"],
        )

    # Classification rules (the rule book as YAML)

    def rules_form(body: Mapping[str, Any]) -> dict[str, str]:
        return {"rules": yaml.safe_dump(dict(body), allow_unicode=True, sort_keys=False, width=100)}

    rules = ConfigPage("classification", "admin_rules.html", "rules", rules_form)

    @pages.get("/admin/rules")
    async def rules_page(
        request: Request, viewer: Annotated[Viewer, needs("config.read")]
    ) -> HTMLResponse:
        return await config_section(request, viewer, rules, fragment=False)

    @pages.post("/admin/rules")
    async def change_rules(request: Request, viewer: ActingViewer) -> Response:
        form = _form_values(await request.form())
        errors: dict[str, str] = {}
        body: Any = None
        try:
            body = yaml.safe_load(form.get("rules", ""))
        except yaml.YAMLError as error:
            errors["rules"] = f"not valid YAML: {error}"
        if body is not None and not isinstance(body, dict):
            errors["rules"] = "the rule book is a mapping of settings (key: value)"
        if not form.get("reason", "").strip():
            errors["reason"] = "say why (kept in the history)"
        answer = None
        if not errors:
            answer = await store(
                viewer,
                rules.kind,
                form.get("expected_version", ""),
                form["reason"],
                _json_ready(body),
            )
            if not answer.ok:
                errors = rules_errors(_config_errors(answer), answer.status)
        if errors:
            return await config_section(
                request,
                viewer,
                rules,
                fragment=True,
                status_code=refused_status(answer) if answer is not None else 422,
                form=form,
                errors=errors,
                expected_version=_int(form.get("expected_version")),
            )
        assert answer is not None
        return await config_section(
            request,
            viewer,
            rules,
            fragment=True,
            form=rules_form(answer.body["body"]),
            saved=answer.body["version"],
        )

    return pages


def _json_ready(value: Any) -> Any:
    """YAML's dates as ISO text, so the body goes out as JSON."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    if isinstance(value, date):
        return value.isoformat()
    return value


def _int(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def _resubmitted_sla(form: Mapping[str, str]) -> dict[str, Any]:
    """The SLA form as the admin sent it, to show again with the reasons."""
    clocks: dict[str, list[dict[str, str]]] = {}
    for clock in CLOCKS:
        rows = []
        row = 0
        while f"{clock}.{row}.target" in form:
            rows.append(
                {
                    "when": form.get(f"{clock}.{row}.when", ""),
                    "target": form.get(f"{clock}.{row}.target", ""),
                    "time": form.get(f"{clock}.{row}.time", "business"),
                }
            )
            row += 1
        clocks[clock] = rows or [{"when": "", "target": "", "time": "business"}]
    return {
        "warn_at_share": form.get("warn_at_share", ""),
        "clocks": clocks,
        "escalation_target": form.get("escalation_target", ""),
        "escalation_time": form.get("escalation_time", "business"),
        "reason": form.get("reason", ""),
    }


def _toast(viewer: Viewer, zh: str, en: str) -> str:
    # Headers are Latin-1: the Chinese text goes as JSON \u escapes.
    return json.dumps({"toast": en if viewer.lang == "en" else zh})
