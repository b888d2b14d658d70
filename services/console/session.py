"""Who is looking at a console page: the session cookie holds the person's API bearer token.

The cookie is HttpOnly and SameSite=Strict (Secure over HTTPS); every state-changing
console request also carries `X-CSRF-Token` (htmx sends it from the page's <body>), a keyed
digest of the session the page was rendered for, which another site cannot read.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, Request

from services.access.http import NotSignedIn, _actor_of
from services.access.roles import Actor, allowed

SESSION_COOKIE = "feedback_session"
LANGUAGE_COOKIE = "feedback_lang"
Language = Literal["zh", "en"]


class SignInFirst(Exception):
    """The page needs a signed-in person; the app's handler sends them to the sign-in page."""

    def __init__(self, next_path: str, reason: str = "") -> None:
        super().__init__(reason)
        self.next_path = next_path
        self.reason = reason


class NotAllowed(Exception):
    """The signed-in person's role may not open this page (rendered as a 403 page)."""

    def __init__(self, action: str) -> None:
        super().__init__(action)
        self.action = action


class BadCsrf(Exception):
    pass


@dataclass(frozen=True)
class Viewer:
    actor: Actor
    token: str
    csrf: str
    lang: Language
    client_host: str

    def may(self, action: str) -> bool:
        return allowed(self.actor, action)


def is_fragment(request: Request) -> bool:
    """An htmx request for a part of a page; a history restore (back/forward) wants the
    whole page although htmx marks it as its own request too."""
    headers = request.headers
    return bool(headers.get("hx-request")) and not headers.get("hx-history-restore-request")


def language_of(request: Request) -> Language:
    return "en" if request.cookies.get(LANGUAGE_COOKIE) == "en" else "zh"


def csrf_for(key: bytes, token: str) -> str:
    return hmac.new(key, b"console-csrf:" + token.encode(), hashlib.sha256).hexdigest()[:32]


async def viewer_of(request: Request) -> Viewer | None:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        actor = await _actor_of(request, token)
    except NotSignedIn:
        return None
    key: bytes = request.app.state.tokens.key
    host = request.client.host if request.client else "127.0.0.1"
    return Viewer(actor, token, csrf_for(key, token), language_of(request), host)


def _next_path(request: Request) -> str:
    """Where to come back to after signing in (encoded whole where the URL is built)."""
    path = request.url.path
    if request.url.query:
        path += "?" + request.url.query
    return path


async def page_viewer(request: Request) -> Viewer:
    """Dependency of every console page: the signed-in person, or off to sign in."""
    viewer = await viewer_of(request)
    if viewer is None:
        raise SignInFirst(_next_path(request))
    return viewer


async def acting_viewer(request: Request) -> Viewer:
    """Dependency of every console action (POST): signed in, and the page's CSRF token."""
    viewer = await page_viewer(request)
    sent = request.headers.get("x-csrf-token", "")
    if not hmac.compare_digest(sent.encode(), viewer.csrf.encode()):
        raise BadCsrf
    return viewer


def needs(action: str) -> Any:
    """A dependency: the signed-in person, whose role may do `action` (else a 403 page)."""

    async def permitted(viewer: Annotated[Viewer, Depends(page_viewer)]) -> Viewer:
        if not viewer.may(action):
            raise NotAllowed(action)
        return viewer

    return Depends(permitted)


PageViewer = Annotated[Viewer, Depends(page_viewer)]
ActingViewer = Annotated[Viewer, Depends(acting_viewer)]
