"""The record of every access to personal data: who revealed or erased whose contact
details, when, for which case and why. Written in the same transaction as the access
where there is one (an erasure), before the answer where there is not (a reveal)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from pydantic import BaseModel

from services.access.roles import Actor

SCHEMA = [
    """
    CREATE TABLE IF NOT EXISTS pii_access_log (
        id bigserial PRIMARY KEY,
        at timestamptz NOT NULL DEFAULT now(),
        actor text NOT NULL,
        role text NOT NULL,
        action text NOT NULL,
        customer_ref text NOT NULL,
        feedback_number text,
        reason text NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS pii_access_log_customer ON pii_access_log (customer_ref, at)",
]

# lookup: a staff member asked which recent feedback a phone or e-mail belongs to.
Action = Literal["reveal", "erase", "lookup"]


class AccessRecord(BaseModel):
    id: int
    at: datetime
    actor: str
    role: str
    action: str
    customer_ref: str
    feedback_number: str | None
    reason: str


async def record(
    conn: AsyncConnection[Any],
    actor: Actor,
    action: Action,
    customer_ref: str,
    reason: str,
    feedback_number: str | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO pii_access_log (actor, role, action, customer_ref, feedback_number, reason) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (actor.username, actor.role.value, action, customer_ref, feedback_number, reason),
    )


async def recent(
    conn: AsyncConnection[Any], limit: int, customer_ref: str | None = None
) -> list[AccessRecord]:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            "SELECT id, at, actor, role, action, customer_ref, feedback_number, reason "
            "FROM pii_access_log WHERE %(customer)s::text IS NULL OR customer_ref = %(customer)s "
            "ORDER BY id DESC LIMIT %(limit)s",
            {"customer": customer_ref, "limit": limit},
        )
        return [AccessRecord.model_validate(row) for row in await cursor.fetchall()]
