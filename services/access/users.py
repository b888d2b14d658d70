"""Local staff users: argon2 password hashes (pwdlib), roles, departments, and a lockout
after repeated failed sign-ins. There is no default user and no default password: the first
admin is added with `feedback users add NAME --role admin --password-stdin`."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Annotated, Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from pwdlib import PasswordHash
from pydantic import BaseModel, ConfigDict, Field

from services.access import audit
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
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    # Failed sign-ins in a row, per username tried (known or not).
    """
    CREATE TABLE IF NOT EXISTS staff_sign_in_failures (
        username text PRIMARY KEY,
        failures integer NOT NULL,
        locked_until timestamptz
    )
    """,
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


VIEW_COLUMNS = "username, role, departments, agent_id, active, created_at"


async def add_user(conn: AsyncConnection[Any], user: UserIn, by: str) -> UserView:
    """Add a user; `by` (who did it) goes to the admin change log in the same transaction."""
    password_hash = await _hash(user.password) if user.password else None
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            "INSERT INTO staff_users (username, password_hash, role, departments, agent_id) "
            f"VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING {VIEW_COLUMNS}",
            (user.username, password_hash, user.role.value, list(user.departments), user.agent_id),
        )
        row = await cursor.fetchone()
        if row is None:
            raise UserExists(user.username)
        await audit.record_change(
            conn, by, "user", user.username, {"added": True, **user.model_dump(mode="json")}
        )
    return UserView.of(row)


async def change_user(
    conn: AsyncConnection[Any], username: str, patch: UserPatch, by: str
) -> UserView | None:
    changes = patch.model_dump(exclude_unset=True)
    assignments: list[str] = []
    values: dict[str, Any] = {"username": username}
    for name, value in changes.items():
        if name == "password":
            assignments.append("password_hash = %(password_hash)s")
            values["password_hash"] = await _hash(value) if value else None
        else:
            assignments.append(f"{name} = %({name})s")  # names from the model, not the body
            values[name] = list(value) if name == "departments" else value
    if not assignments:
        return await find_user(conn, username)
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            f"UPDATE staff_users SET {', '.join(assignments)}, updated_at = now() "
            f"WHERE username = %(username)s RETURNING {VIEW_COLUMNS}",
            values,
        )
        row = await cursor.fetchone()
        if row is not None:
            await audit.record_change(
                conn, by, "user", username, patch.model_dump(mode="json", exclude_unset=True)
            )
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


class StaffDirectory:
    """Whether a token's user may still act: deactivating a user, or changing their role or
    departments, revokes the tokens issued before (checked per request, cached briefly)."""

    CACHE_S = 5.0

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool
        self._cache: dict[str, tuple[float, dict[str, Any] | None]] = {}

    async def still_valid(self, actor: Actor) -> bool:
        now = asyncio.get_running_loop().time()
        cached = self._cache.get(actor.username)
        if cached is None or cached[0] < now:
            async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(
                    "SELECT active, extract(epoch FROM updated_at) AS changed "
                    "FROM staff_users WHERE username = %s",
                    (actor.username,),
                )
                row = await cur.fetchone()
            if len(self._cache) > 10_000:
                self._cache.clear()
            cached = (now + self.CACHE_S, row)
            self._cache[actor.username] = cached
        row = cached[1]
        if row is None:
            # No such local user: a provider's user, or a token minted with the key itself
            # (demo, benchmarks); the signature is all there is to check.
            return True
        issued = actor.issued_at or 0.0
        return bool(row["active"]) and float(row["changed"]) <= issued


# argon2 takes 64 MiB and tens of milliseconds per check: a few at a time per process,
# so that a flood of sign-ins cannot take the memory or every worker thread.
_HASHING = asyncio.Semaphore(2)


async def sign_in(pool: AsyncConnectionPool, username: str, password: str) -> Actor:
    """The actor, if the password is right and the account is active and not locked.

    Failures are counted per username whether or not the user exists (so that a lockout
    says nothing about who exists), and no connection is held while the hash is checked."""
    username = username[:200]
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            "SELECT u.username AS known, u.password_hash, u.role, u.departments, u.agent_id, "
            "u.active, a.locked_until, now() AS now FROM (SELECT %s::text AS username) n "
            "LEFT JOIN staff_users u USING (username) "
            "LEFT JOIN staff_sign_in_failures a USING (username)",
            (username,),
        )
        row = await cursor.fetchone()
    assert row is not None
    if row["locked_until"] is not None and row["locked_until"] > row["now"]:
        raise SignInLocked(int((row["locked_until"] - row["now"]).total_seconds()) + 1)
    usable = row["known"] is not None and row["active"] and row["password_hash"]
    async with _HASHING:
        right = await _verify(password, row["password_hash"] if usable else _DUMMY_HASH)
    async with pool.connection() as conn:
        if not (usable and right):
            await conn.execute(
                "INSERT INTO staff_sign_in_failures AS f (username, failures) VALUES (%s, 1) "
                "ON CONFLICT (username) DO UPDATE SET failures = f.failures + 1, "
                "locked_until = CASE WHEN f.failures + 1 >= %s THEN now() + least("
                "make_interval(secs => %s * power(2, f.failures + 1 - %s)), "
                "make_interval(secs => %s)) END",
                (
                    username,
                    FREE_FAILURES,
                    FIRST_LOCK.total_seconds(),
                    FREE_FAILURES,
                    LONGEST_LOCK.total_seconds(),
                ),
            )
            raise SignInRefused()
        await conn.execute("DELETE FROM staff_sign_in_failures WHERE username = %s", (username,))
    return Actor(
        username=row["known"],
        role=Role(row["role"]),
        departments=tuple(row["departments"]),
        agent_id=row["agent_id"],
    )
