"""The console's frame: templates, navigation by role, sign-in and out, language, the live
stream, and how the page modules (queue, case, intake form, boards, reports, admin) join.

Each page module exposes `router(console) -> APIRouter`; its handlers take a `Viewer`
(session.py), call the API through `console.call(viewer, ...)`, and render with
`console.render(request, viewer, template, ...)`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context

from contracts.codes import CHANNEL_LABELS, EMOTION_LABELS, FEEDBACK_TYPE_LABELS
from services.common.settings import Settings
from services.console.api import Answer, Api
from services.console.live import LiveFeed
from services.console.session import (
    LANGUAGE_COOKIE,
    SESSION_COOKIE,
    BadCsrf,
    NotAllowed,
    PageViewer,
    SignInFirst,
    Viewer,
    language_of,
)
from services.projections.report_files import Labels

HERE = Path(__file__).parent
LIVE_KEEPALIVE_S = 15.0
# A stream ends after this long (the browser reconnects by itself, `retry: 3000`), so no
# connection lives for ever; changes within LIVE_COALESCE_S go out as one message.
LIVE_STREAM_S = 600.0
LIVE_COALESCE_S = 1.0


@dataclass(frozen=True)
class NavItem:
    path: str
    zh: str
    en: str
    action: str  # the permission that shows it


NAVIGATION = (
    NavItem("/queue", "我的工作", "My work", "queue.read"),
    NavItem("/new", "登记反馈", "New feedback", "intake.staff"),
    NavItem("/sla", "时限看板", "SLA board", "sla.read"),
    NavItem("/triage", "待分诊", "Triage", "triage.read"),
    NavItem("/callbacks", "回访", "Callbacks", "callback.read"),
    NavItem("/reports", "报表", "Reports", "report.read"),
    NavItem("/search", "检索与知识库", "Search & library", "search.read"),
    NavItem("/deadletters", "死信", "Dead letters", "deadletter.manage"),
    NavItem("/admin", "管理", "Admin", "user.manage"),
)


def local_time(value: Any, zone: ZoneInfo, with_seconds: bool = False) -> str:
    """An API time (ISO 8601) as the service centre's local time, for people."""
    if not value:
        return "—"
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(zone)
    return moment.strftime("%Y-%m-%d %H:%M:%S" if with_seconds else "%Y-%m-%d %H:%M")


def _namer(names: Mapping[Any, str]) -> Any:
    by_code = {
        str(code.value if hasattr(code, "value") else code): label for code, label in names.items()
    }

    @pass_context
    def name(context: Any, code: str | None) -> str:
        if not code:
            return "—"
        return str(code) if context.get("lang") == "en" else by_code.get(str(code), str(code))

    return name


@pass_context
def _t(context: Any, zh: str, en: str) -> str:
    """The text in the page's language: templates write both, side by side."""
    return en if context.get("lang") == "en" else zh


class Console:
    def __init__(self, app: FastAPI, settings: Settings, labels: Labels) -> None:
        self.app = app
        self.settings = settings
        self.labels = labels
        self.api = Api(app, settings.console_api_url)
        self.live = LiveFeed(settings)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        env = self.templates.env
        env.globals["t"] = _t
        env.globals["labels"] = labels
        # Every time a person reads, in the service centre's zone (the API gives UTC).
        env.filters["centre_time"] = self.local_time
        env.filters["department"] = labels.department
        env.filters["category"] = labels.category
        # Codes a person reads as words (Chinese names; the code itself in English pages).
        for name, names in (
            ("channel_name", CHANNEL_LABELS),
            ("type_name", FEEDBACK_TYPE_LABELS),
            ("emotion_name", EMOTION_LABELS),
        ):
            env.filters[name] = _namer(names)

    def local_time(self, value: Any, with_seconds: bool = False) -> str:
        return local_time(value, self.settings.zone, with_seconds)

    async def stop(self) -> None:
        await self.live.stop()
        await self.api.close()

    async def call(self, viewer: Viewer, method: str, path: str, **arguments: Any) -> Answer:
        return await self.api.call(
            method, path, token=viewer.token, client_host=viewer.client_host, **arguments
        )

    async def get(self, viewer: Viewer, path: str, **params: Any) -> Answer:
        return await self.call(viewer, "GET", path, params=params)

    def render(
        self,
        request: Request,
        viewer: Viewer | None,
        template: str,
        status_code: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        lang = viewer.lang if viewer else language_of(request)
        navigation = [item for item in NAVIGATION if viewer and viewer.may(item.action)]
        response = self.templates.TemplateResponse(
            request,
            template,
            {"viewer": viewer, "lang": lang, "navigation": navigation, **context},
            status_code=status_code,
        )
        # Pages show personal data (masked or revealed): never kept by a shared cache.
        response.headers["Cache-Control"] = "no-store"
        return response


def _safe_next(path: str | None) -> str:
    """Only a path on this site (no scheme, no //host) is followed after sign-in."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/queue"
    return path


def frame_router(console: Console) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def home() -> RedirectResponse:
        return RedirectResponse("/queue", 303)

    @router.get("/sign-in")
    async def sign_in_page(request: Request, next: str | None = None) -> HTMLResponse:
        return console.render(request, None, "sign_in.html", next=_safe_next(next), error=None)

    @router.post("/sign-in")
    async def sign_in(
        request: Request,
        username: Annotated[str, Form(max_length=200)],
        password: Annotated[str, Form(max_length=1024)],
        next: Annotated[str, Form(max_length=2000)] = "/queue",
    ) -> Response:
        host = request.client.host if request.client else "127.0.0.1"
        answer = await console.api.call(
            "POST",
            "/v1/auth/token",
            token=None,
            client_host=host,
            data={"username": username, "password": password},
        )
        if not answer.ok:
            return console.render(
                request,
                None,
                "sign_in.html",
                status_code=answer.status if answer.status < 500 else 503,
                next=_safe_next(next),
                error=answer.problem,
                username=username,
            )
        response = RedirectResponse(_safe_next(next), 303)
        response.set_cookie(
            SESSION_COOKIE,
            answer.body["access_token"],
            max_age=int(answer.body["expires_in"]),
            httponly=True,
            samesite="strict",
            # Behind a TLS-terminating ingress the app sees http: the setting says so.
            secure=console.settings.console_secure_cookie or request.url.scheme == "https",
        )
        return response

    @router.post("/sign-out")
    async def sign_out() -> RedirectResponse:
        response = RedirectResponse("/sign-in", 303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    @router.get("/language/{lang}")
    async def language(lang: str, back: str | None = None) -> Response:
        response = RedirectResponse(_safe_next(back), 303)
        response.set_cookie(
            LANGUAGE_COOKIE, "en" if lang == "en" else "zh", max_age=365 * 86400, samesite="lax"
        )
        return response

    @router.get("/live")
    async def live(viewer: PageViewer) -> StreamingResponse:
        """Server-sent events: `case` when a case the viewer may see changes."""

        async def stream() -> AsyncIterator[str]:
            loop = asyncio.get_running_loop()
            ends_at = loop.time() + LIVE_STREAM_S
            async with console.live.listen(viewer.actor) as changes:
                yield "retry: 3000\n\n"
                while loop.time() < ends_at:
                    try:
                        # asyncio.timeout: wait_for (3.11) can swallow a cancellation.
                        async with asyncio.timeout(LIVE_KEEPALIVE_S):
                            change = await changes.get()
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    # A burst (a batch routed, clocks ticking) reaches the page as one
                    # refresh: what else arrives within a second joins this message.
                    await asyncio.sleep(LIVE_COALESCE_S)
                    while not changes.empty():
                        newer = changes.get_nowait()
                        change = newer if newer.number else change
                    yield change.sse()

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @router.get("/forbidden")
    async def forbidden(request: Request, viewer: PageViewer, action: str = "") -> HTMLResponse:
        return console.render(request, viewer, "error.html", 403, action=action)

    return router


def install_console(app: FastAPI, settings: Settings, labels: Labels) -> Console:
    """Mount the console on the app: static files, the frame, every page module."""
    from services.console import admin, boards, case_page, intake_form, queue, reports_page

    console = Console(app, settings, labels)
    app.state.console = console
    app.mount(
        "/static/console",
        StaticFiles(directory=str(HERE / "static")),
        name="console-static",
    )
    app.include_router(frame_router(console))
    for module in (queue, case_page, intake_form, boards, reports_page, admin):
        app.include_router(module.router(console))

    @app.exception_handler(SignInFirst)
    async def sign_in_first(request: Request, error: SignInFirst) -> Response:
        target = "/sign-in?" + urlencode({"next": error.next_path})
        if request.headers.get("hx-request"):
            return Response(status_code=401, headers={"HX-Redirect": target})
        return RedirectResponse(target, 303)

    @app.exception_handler(NotAllowed)
    async def not_allowed(request: Request, error: NotAllowed) -> Response:
        with contextlib.suppress(Exception):
            from services.console.session import viewer_of

            viewer = await viewer_of(request)
            return console.render(request, viewer, "error.html", 403, action=error.action)
        return Response("forbidden", 403)

    @app.exception_handler(BadCsrf)
    async def bad_csrf(request: Request, _: BadCsrf) -> Response:
        return Response(
            "the page is out of date (reload it and try again)", 403, media_type="text/plain"
        )

    return console
