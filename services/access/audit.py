"""The record of every access to personal data: who revealed or erased whose contact
details, when, for which case and why. Written in the same transaction as the access
where there is one (an erasure), before the answer where there is not (a reveal).

And the record of every change to staff users and agents (admin_changes): who changed
whom, when, and which fields to what (a password only as "changed"), written in the
transaction of the change itself."""

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
    """
    CREATE TABLE IF NOT EXISTS admin_changes (
        id bigserial PRIMARY KEY,
        at timestamptz NOT NULL DEFAULT now(),
        actor text NOT NULL,
        subject_kind text NOT NULL CHECK (subject_kind IN ('user', 'agent')),
        subject text NOT NULL,
        change jsonb NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS admin_changes_subject ON admin_changes (subject_kind, subject, at)",
]

SubjectKind = Literal["user", "agent"]
# Never stored, whatever a change carries: only that it changed.
SECRET_FIELDS = frozenset({"password", "password_hash"})

# lookup: a staff member asked which recent feedback a phone or e-mail belongs to.
# evidence: a staff member opened one of a case's attachments.
Action = Literal["reveal", "erase", "lookup", "evidence"]


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


class AdminChange(BaseModel):
    id: int
    at: datetime
    actor: str
    subject_kind: str
    subject: str
    change: dict[str, Any]


def change_record(change: dict[str, Any]) -> str:
    """The change as stored: JSON, secrets replaced by "changed"."""
    import json

    shown = {k: ("changed" if k in SECRET_FIELDS and v else v) for k, v in change.items()}
    return json.dumps(shown, ensure_ascii=False, default=str, sort_keys=True)


async def record_change(
    conn: AsyncConnection[Any], actor: str, kind: SubjectKind, subject: str, change: dict[str, Any]
) -> None:
    await conn.execute(
        "INSERT INTO admin_changes (actor, subject_kind, subject, change) VALUES (%s, %s, %s, %s)",
        (actor, kind, subject, change_record(change)),
    )


def record_change_sync(
    conn: Any, actor: str, kind: SubjectKind, subject: str, change: dict[str, Any]
) -> None:
    conn.execute(
        "INSERT INTO admin_changes (actor, subject_kind, subject, change) VALUES (%s, %s, %s, %s)",
        (actor, kind, subject, change_record(change)),
    )


async def recent_changes(
    conn: AsyncConnection[Any],
    limit: int,
    kind: SubjectKind | None = None,
    subject: str | None = None,
) -> list[AdminChange]:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            "SELECT id, at, actor, subject_kind, subject, change FROM admin_changes "
            "WHERE (%(kind)s::text IS NULL OR subject_kind = %(kind)s) "
            "AND (%(subject)s::text IS NULL OR subject = %(subject)s) "
            "ORDER BY id DESC LIMIT %(limit)s",
            {"kind": kind, "subject": subject, "limit": limit},
        )
        return [AdminChange(**row) for row in await cursor.fetchall()]
