"""Sign-in (`POST /v1/auth/token`), user administration (`/v1/users`, admins), and the
dependency every guarded endpoint declares: `Annotated[Actor, require("action")]`.

401 without a valid bearer token, 403 when the actor's role may not (see roles.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Path, Query, Request, Security
from fastapi.security import OAuth2PasswordBearer
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from contracts.events import CUSTOMER_REF_PATTERN
from services.access import audit, users
from services.access.roles import PERMISSIONS, Actor, allowed
from services.access.tokens import InvalidToken, Tokens
from services.common.boundary import text_flaw

# Each guarded operation lists its action as the OAuth2 scope it needs, so the OpenAPI
# document says who may call what (roles.py maps actions to roles).
bearer = OAuth2PasswordBearer(
    tokenUrl="/v1/auth/token",
    auto_error=False,
    scopes={action: ", ".join(sorted(roles)) for action, roles in PERMISSIONS.items()},
)


class NotSignedIn(Exception):
    """Why a bearer token does not sign anyone in (the 401's reason)."""


async def _actor_of(request: Request, token: str) -> Actor:
    """The actor a bearer token signs in, if it verifies and its user has not changed since."""
    tokens: Tokens = request.app.state.tokens
    try:
        actor = await tokens.verify_async(token)
    except InvalidToken as error:
        raise NotSignedIn(f"invalid token: {error}") from error
    if not await request.app.state.staff.still_valid(actor):
        raise NotSignedIn("the token was revoked (user changed); sign in again")
    return actor


def require(action: str) -> Any:
    """A FastAPI dependency giving the signed-in actor allowed to do `action`."""
    if action not in PERMISSIONS:  # a typo fails at import, not at request time
        raise KeyError(f"no such action {action!r} in the permission table")

    async def signed_in_actor(
        request: Request, token: Annotated[str | None, Depends(bearer)]
    ) -> Actor:
        if not token:
            raise HTTPException(
                401, "sign in first (POST /v1/auth/token)", {"WWW-Authenticate": "Bearer"}
            )
        try:
            actor = await _actor_of(request, token)
        except NotSignedIn as error:
            raise HTTPException(401, str(error), {"WWW-Authenticate": "Bearer"}) from error
        if not allowed(actor, action):
            raise HTTPException(403, f"the role {actor.role.value} may not {action}")
        return actor

    return Security(signed_in_actor, scopes=[action])


async def staff_of(request: Request, action: str) -> Actor | None:
    """The signed-in actor allowed to do `action`, if the request carries such a token
    (for endpoints that a customer's own token opens too)."""
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer "):
        return None
    try:
        actor = await _actor_of(request, header[7:].strip())
    except NotSignedIn:
        return None
    return actor if allowed(actor, action) else None


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 (the OAuth2 token type, not a secret)
    expires_in: int


def access_router(pool: AsyncConnectionPool, tokens: Tokens) -> APIRouter:
    router = APIRouter(tags=["access"])

    @router.post("/v1/auth/token", response_model=TokenOut)
    async def sign_in(
        username: Annotated[str, Form(max_length=200)],
        password: Annotated[str, Form(max_length=1024)],
    ) -> TokenOut:
        if tokens.oidc:
            raise HTTPException(400, "sign in through the configured OIDC provider")
        if text_flaw(username) or text_flaw(password):
            raise HTTPException(422, f"username or password {text_flaw(username + password)}")
        try:
            actor = await users.sign_in(pool, username, password)
        except users.SignInLocked as error:
            raise HTTPException(
                429, str(error), {"Retry-After": str(error.retry_after_s)}
            ) from error
        except users.SignInRefused as error:
            raise HTTPException(
                401, "wrong username or password", {"WWW-Authenticate": "Bearer"}
            ) from error
        return TokenOut(access_token=tokens.issue(actor), expires_in=tokens.ttl_s)

    @router.get("/v1/users", response_model=list[users.UserView])
    async def list_users(
        _: Annotated[Actor, require("user.manage")],
    ) -> list[users.UserView]:
        async with pool.connection() as conn:
            return await users.list_users(conn)

    @router.post("/v1/users", response_model=users.UserView, status_code=201)
    async def add_user(
        body: users.UserIn, actor: Annotated[Actor, require("user.manage")]
    ) -> users.UserView:
        try:
            async with pool.connection() as conn:
                return await users.add_user(conn, body, actor.username)
        except users.UserExists as error:
            raise HTTPException(409, f"user {body.username} exists") from error

    @router.patch("/v1/users/{username}", response_model=users.UserView)
    async def change_user(
        username: Annotated[str, Path(pattern=users.USERNAME_PATTERN)],
        body: users.UserPatch,
        actor: Annotated[Actor, require("user.manage")],
    ) -> users.UserView:
        if username == actor.username and body.active is False:
            raise HTTPException(409, "an admin cannot deactivate themselves")
        async with pool.connection() as conn:
            changed = await users.change_user(conn, username, body, actor.username)
        if changed is None:
            raise HTTPException(404, f"no user {username}")
        return changed

    @router.get("/v1/audit/pii-access", response_model=list[audit.AccessRecord])
    async def pii_access(
        _: Annotated[Actor, require("audit.read")],
        customer_ref: Annotated[str | None, Query(pattern=CUSTOMER_REF_PATTERN)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[audit.AccessRecord]:
        async with pool.connection() as conn:
            return await audit.recent(conn, limit, customer_ref)

    @router.get("/v1/audit/admin-changes", response_model=list[audit.AdminChange])
    async def admin_changes(
        _: Annotated[Actor, require("audit.read")],
        kind: Annotated[audit.SubjectKind | None, Query()] = None,
        subject: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[audit.AdminChange]:
        """Who changed which staff user or agent, when, and to what (passwords never)."""
        async with pool.connection() as conn:
            return await audit.recent_changes(conn, limit, kind, subject)

    return router
