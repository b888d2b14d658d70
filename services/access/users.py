"""Local staff users: argon2 password hashes (pwdlib), roles, departments, and a lockout
after repeated failed sign-ins. There is no default user and no default password: the first
admin is added with `feedback users add NAME --role admin --password-stdin`."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Annotated, Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from pwdlib import PasswordHash
from pydantic import BaseModel, ConfigDict, Field

from services.access.roles import Actor, Role
from services.common.boundary import Checked

SCHEMA = [
    """
    CREATE TABLE IF NOT EXISTS staff_users (
        username text PRIMARY KEY,
        password_hash text,
        role text NOT NULL,
        departments text[] NOT NULL DEFAULT '{}',
        agent_id text,
        active boolean NOT NULL DEFAULT true,
        failed_sign_ins integer NOT NULL DEFAULT 0,
        locked_until timestamptz,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """
]

USERNAME_PATTERN = r"^[a-z0-9][a-z0-9_.@-]{1,63}$"
MIN_PASSWORD_CHARS = 12
# After this many failed sign-ins in a row the account waits, doubling each time.
FREE_FAILURES = 5
FIRST_LOCK = timedelta(seconds=30)
LONGEST_LOCK = timedelta(hours=1)

_hasher = PasswordHash.recommended()
# Verified against when the user does not exist, so that timing does not tell.
_DUMMY_HASH = _hasher.hash("not a password of anyone")

Username = Annotated[str, Field(pattern=USERNAME_PATTERN)]
Department = Annotated[str, Field(pattern=r"^[a-z][a-z_]{1,40}$")]
Password = Annotated[str, Field(min_length=MIN_PASSWORD_CHARS, max_length=1024)]


class UserIn(Checked):
    model_config = ConfigDict(extra="forbid")

    username: Username
    password: Password | None = Field(
        default=None, description="omit for users who sign in through the OIDC provider"
    )
    role: Role
    departments: tuple[Department, ...] = ()
    agent_id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{1,63}$")] | None = None


class UserPatch(Checked):
    model_config = ConfigDict(extra="forbid")

    password: Password | None = None
    role: Role | None = None
    departments: tuple[Department, ...] | None = None
    agent_id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{1,63}$")] | None = None
    active: bool | None = None


class UserView(BaseModel):
    username: str
    role: Role
    departments: tuple[str, ...]
    agent_id: str | None
    active: bool
    locked_until: datetime | None
    created_at: datetime

    @classmethod
    def of(cls, row: dict[str, Any]) -> UserView:
        return cls.model_validate({**row, "departments": tuple(row["departments"])})


async def _hash(password: str) -> str:
    # argon2 takes tens of milliseconds of CPU on purpose: off the event loop.
    return await asyncio.to_thread(_hasher.hash, password)


async def _verify(password: str, password_hash: str) -> bool:
    return await asyncio.to_thread(_hasher.verify, password, password_hash)


class SignInRefused(Exception):
    """Wrong username or password (the answer does not say which)."""


class SignInLocked(Exception):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many failed sign-ins; try again in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class UserExists(Exception):
    pass


VIEW_COLUMNS = "username, role, departments, agent_id, active, locked_until, created_at"


async def add_user(conn: AsyncConnection[Any], user: UserIn) -> UserView:
    password_hash = await _hash(user.password) if user.password else None
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            "INSERT INTO staff_users (username, password_hash, role, departments, agent_id) "
            f"VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING {VIEW_COLUMNS}",
            (user.username, password_hash, user.role.value, list(user.departments), user.agent_id),
        )
        row = await cursor.fetchone()
    if row is None:
        raise UserExists(user.username)
    return UserView.of(row)


async def change_user(
    conn: AsyncConnection[Any], username: str, patch: UserPatch
) -> UserView | None:
    changes = patch.model_dump(exclude_unset=True)
    assignments: list[str] = []
    values: dict[str, Any] = {"username": username}
    for name, value in changes.items():
        if name == "password":
            assignments.append("password_hash = %(password_hash)s")
            values["password_hash"] = await _hash(value) if value else None
            assignments.append("failed_sign_ins = 0, locked_until = NULL")
        else:
            assignments.append(f"{name} = %({name})s")  # names from the model, not the body
            values[name] = list(value) if name == "departments" else value
    if not assignments:
        return await find_user(conn, username)
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            f"UPDATE staff_users SET {', '.join(assignments)}, updated_at = now() "
            f"WHERE username = %(username)s RETURNING {VIEW_COLUMNS}",
            values,
        )
        row = await cursor.fetchone()
    return UserView.of(row) if row else None


async def find_user(conn: AsyncConnection[Any], username: str) -> UserView | None:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            f"SELECT {VIEW_COLUMNS} FROM staff_users WHERE username = %s", (username,)
        )
        row = await cursor.fetchone()
    return UserView.of(row) if row else None


async def list_users(conn: AsyncConnection[Any]) -> list[UserView]:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(f"SELECT {VIEW_COLUMNS} FROM staff_users ORDER BY username")
        return [UserView.of(row) for row in await cursor.fetchall()]


async def sign_in(conn: AsyncConnection[Any], username: str, password: str) -> Actor:
    """The actor, if the password is right and the account is active and not locked.

    The row is locked for the check, so concurrent guesses count one by one; a failure's
    count commits before the refusal is raised."""
    refusal: Exception | None = None
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            "SELECT username, password_hash, role, departments, agent_id, active, "
            "failed_sign_ins, locked_until, now() AS now FROM staff_users "
            "WHERE username = %s FOR UPDATE",
            (username[:200],),
        )
        row = await cursor.fetchone()
        if row is None or not row["active"] or not row["password_hash"]:
            await _verify(password, _DUMMY_HASH)
            refusal = SignInRefused()
        elif row["locked_until"] is not None and row["locked_until"] > row["now"]:
            refusal = SignInLocked(int((row["locked_until"] - row["now"]).total_seconds()) + 1)
        elif not await _verify(password, row["password_hash"]):
            failures = row["failed_sign_ins"] + 1
            locked_until = None
            if failures >= FREE_FAILURES:
                wait = min(FIRST_LOCK * 2 ** (failures - FREE_FAILURES), LONGEST_LOCK)
                locked_until = row["now"] + wait
            await cursor.execute(
                "UPDATE staff_users SET failed_sign_ins = %s, locked_until = %s "
                "WHERE username = %s",
                (failures, locked_until, username),
            )
            refusal = SignInRefused()
        elif row["failed_sign_ins"] or row["locked_until"]:
            await cursor.execute(
                "UPDATE staff_users SET failed_sign_ins = 0, locked_until = NULL "
                "WHERE username = %s",
                (username,),
            )
    if refusal is not None or row is None:
        raise refusal or SignInRefused()
    return Actor(
        username=row["username"],
        role=Role(row["role"]),
        departments=tuple(row["departments"]),
        agent_id=row["agent_id"],
    )
