"""The notification outbox (`notifications`), the case facts it needs
(`notification_cases`) and the in-app inbox (`inbox`).

A row is one message to one recipient over one channel, its id derived from the event
that caused it, so that writing it again (a redelivered event) writes nothing:
uuid5(feedback id, case version, recipient, channel). Payloads hold the case's data and
pseudonyms only; contacts are looked up when the row is sent.

States: `pending` (never tried), `failed` (tried; due again at `next_attempt_at`), `sent`,
`dead` (gave up; a dead letter says why), `skipped` (nobody to send it to: no address for
the recipient, an erased customer, an adapter not configured).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ConfigDict

from services.common import deadletters, kafka_positions
from services.intake import registration

State = Literal["pending", "failed", "sent", "dead", "skipped"]
Audience = Literal["customer", "staff"]
Channel = Literal["email", "sms", "im", "inbox"]

_NAMESPACE = uuid.UUID("0c1f5a52-7d8e-4f7b-9a0e-3b6f2d9c4e11")

SCHEMA = [
    *kafka_positions.SCHEMA,
    *deadletters.SCHEMA,
    # Message-IDs of mails sent about a case, so that a customer's reply joins it (intake
    # owns the table; one statement, one definition).
    *[s for s in registration.SCHEMA if "intake_sent_messages (" in s],
    """
    CREATE TABLE IF NOT EXISTS notifications (
        id uuid PRIMARY KEY,
        feedback_id uuid NOT NULL,
        feedback_number text NOT NULL,
        event_version integer NOT NULL,
        event_type text NOT NULL,
        audience text NOT NULL,
        recipient text NOT NULL,
        channel text NOT NULL,
        template text NOT NULL,
        language text NOT NULL,
        payload jsonb NOT NULL,
        state text NOT NULL DEFAULT 'pending'
            CHECK (state IN ('pending', 'failed', 'sent', 'dead', 'skipped')),
        attempts integer NOT NULL DEFAULT 0,
        next_attempt_at timestamptz NOT NULL DEFAULT now(),
        last_error text,
        sent_via text,
        created_at timestamptz NOT NULL DEFAULT now(),
        sent_at timestamptz,
        dead_letter_published_at timestamptz
    )
    """,
    "CREATE INDEX IF NOT EXISTS notifications_due ON notifications (next_attempt_at) "
    "WHERE state IN ('pending', 'failed')",
    "CREATE INDEX IF NOT EXISTS notifications_case ON notifications (feedback_id)",
    "CREATE INDEX IF NOT EXISTS notifications_unpublished ON notifications (id) "
    "WHERE state = 'dead' AND dead_letter_published_at IS NULL",
    # What later events need to know about a case: its customer (pseudonym), number,
    # category, department, owner, and the first-response promise.
    """
    CREATE TABLE IF NOT EXISTS notification_cases (
        feedback_id uuid PRIMARY KEY,
        feedback_number text NOT NULL,
        customer_ref text,
        channel text,
        category text,
        priority text,
        department text,
        owner text,
        first_response_due timestamptz,
        first_response_target text,
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS inbox (
        id uuid PRIMARY KEY,
        recipient text NOT NULL,
        feedback_number text,
        title text NOT NULL,
        body text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        read_at timestamptz
    )
    """,
    "CREATE INDEX IF NOT EXISTS inbox_recipient ON inbox (recipient, created_at DESC)",
]


def notification_id(feedback_id: UUID, version: int, recipient: str, channel: str) -> UUID:
    """The same for every delivery of one event, for one recipient over one channel."""
    return uuid.uuid5(_NAMESPACE, f"{feedback_id}\n{version}\n{recipient}\n{channel}")


class Planned(BaseModel):
    """A notification as the consumer decides it."""

    model_config = ConfigDict(frozen=True)

    feedback_id: UUID
    feedback_number: str
    event_version: int
    event_type: str
    audience: Audience
    recipient: str
    channel: Channel
    template: str
    language: str
    payload: dict[str, Any]
    hold_s: float = 0.0

    @property
    def id(self) -> UUID:
        return notification_id(self.feedback_id, self.event_version, self.recipient, self.channel)


class Notification(BaseModel):
    """A row as the sender claims it."""

    id: UUID
    feedback_id: UUID
    feedback_number: str
    event_type: str
    audience: Audience
    recipient: str
    channel: Channel
    template: str
    language: str
    payload: dict[str, Any]
    state: State
    attempts: int
    last_error: str | None = None
    created_at: datetime


COLUMNS = (
    "id, feedback_id, feedback_number, event_type, audience, recipient, channel, template, "
    "language, payload, state, attempts, last_error, created_at"
)


async def insert(conn: AsyncConnection[Any], rows: list[Planned]) -> int:
    """Write planned rows, all in one statement; a row already written (same event,
    recipient, channel) is left alone, and of the same row twice the first is written.
    Returns how many are new."""
    if not rows:
        return 0
    first: dict[UUID, Planned] = {}
    for row in rows:
        first.setdefault(row.id, row)
    unique = list(first.values())
    cursor = await conn.execute(
        "INSERT INTO notifications (id, feedback_id, feedback_number, event_version, "
        "event_type, audience, recipient, channel, template, language, payload, "
        "next_attempt_at) SELECT id, feedback_id, feedback_number, event_version, event_type, "
        "audience, recipient, channel, template, language, payload, "
        "now() + make_interval(secs => hold_s) FROM unnest(%s::uuid[], %s::uuid[], "
        "%s::text[], %s::integer[], %s::text[], %s::text[], %s::text[], %s::text[], "
        "%s::text[], %s::text[], %s::jsonb[], %s::float8[]) AS r(id, feedback_id, "
        "feedback_number, event_version, event_type, audience, recipient, channel, template, "
        "language, payload, hold_s) ON CONFLICT (id) DO NOTHING RETURNING 1",
        (
            [row.id for row in unique],
            [row.feedback_id for row in unique],
            [row.feedback_number for row in unique],
            [row.event_version for row in unique],
            [row.event_type for row in unique],
            [row.audience for row in unique],
            [row.recipient for row in unique],
            [row.channel for row in unique],
            [row.template for row in unique],
            [row.language for row in unique],
            [Jsonb(row.payload) for row in unique],
            [row.hold_s for row in unique],
        ),
    )
    return len(await cursor.fetchall())


async def claim(pool: AsyncConnectionPool, limit: int, lease_s: float) -> list[Notification]:
    """Due rows for this sender: counted as an attempt and kept from other senders for
    `lease_s` (SKIP LOCKED: concurrent senders take different rows)."""
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            "WITH due AS (SELECT id FROM notifications "
            "WHERE state IN ('pending', 'failed') AND next_attempt_at <= now() "
            "ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED) "
            "UPDATE notifications n SET attempts = n.attempts + 1, "
            "next_attempt_at = now() + make_interval(secs => %s) "
            f"FROM due WHERE n.id = due.id RETURNING {', '.join('n.' + c for c in COLUMNS.split(', '))}",
            (limit, lease_s),
        )
        return [Notification.model_validate(row) for row in await cursor.fetchall()]


async def release(pool: AsyncConnectionPool, rows: list[Notification]) -> None:
    """Claimed rows this sender will not try after all (it is stopping): due at once,
    the attempt not counted."""
    if not rows:
        return
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE notifications SET attempts = attempts - 1, next_attempt_at = now() "
            "WHERE (id, attempts) IN (SELECT * FROM unnest(%s::uuid[], %s::integer[])) "
            "AND state IN ('pending', 'failed')",
            ([r.id for r in rows], [r.attempts for r in rows]),
        )


async def mark_sent(conn: AsyncConnection[Any], row_id: UUID, via: str) -> bool:
    cursor = await conn.execute(
        "UPDATE notifications SET state = 'sent', sent_at = now(), sent_via = %s, "
        "last_error = NULL WHERE id = %s AND state IN ('pending', 'failed') RETURNING 1",
        (via, row_id),
    )
    return await cursor.fetchone() is not None


# The outcomes below that are not a success name the attempt they settle: a sender whose
# claim ran out (another sender has the row now) changes nothing.


async def mark_skipped(pool: AsyncConnectionPool, row: Notification, reason: str) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE notifications SET state = 'skipped', last_error = %s "
            "WHERE id = %s AND attempts = %s AND state IN ('pending', 'failed')",
            (reason, row.id, row.attempts),
        )


async def mark_failed(
    pool: AsyncConnectionPool, row: Notification, reason: str, retry_in_s: float
) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE notifications SET state = 'failed', last_error = %s, "
            "next_attempt_at = now() + make_interval(secs => %s) "
            "WHERE id = %s AND attempts = %s AND state IN ('pending', 'failed')",
            (reason, retry_in_s, row.id, row.attempts),
        )


async def mark_dead(conn: AsyncConnection[Any], row: Notification, reason: str) -> bool:
    cursor = await conn.execute(
        "UPDATE notifications SET state = 'dead', last_error = %s "
        "WHERE id = %s AND attempts = %s AND state IN ('pending', 'failed') RETURNING 1",
        (reason, row.id, row.attempts),
    )
    return await cursor.fetchone() is not None


async def unpublished_dead(pool: AsyncConnectionPool, limit: int) -> list[Notification]:
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            f"SELECT {COLUMNS} FROM notifications WHERE state = 'dead' "
            "AND dead_letter_published_at IS NULL LIMIT %s",
            (limit,),
        )
        return [Notification.model_validate(row) for row in await cursor.fetchall()]


async def mark_dead_letter_published(pool: AsyncConnectionPool, row_id: UUID) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE notifications SET dead_letter_published_at = now() WHERE id = %s", (row_id,)
        )


async def deliver_to_inbox(
    conn: AsyncConnection[Any], row: Notification, title: str, body: str
) -> None:
    """The in-app inbox: the message and the row's `sent` in one transaction (the caller's),
    so this channel is exactly once outright."""
    await conn.execute(
        "INSERT INTO inbox (id, recipient, feedback_number, title, body) "
        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
        (row.id, row.recipient, row.feedback_number, title, body),
    )


class InboxItem(BaseModel):
    id: UUID
    feedback_number: str | None
    title: str
    body: str
    created_at: datetime
    read_at: datetime | None


async def inbox_of(
    pool: AsyncConnectionPool, recipients: list[str], unread_only: bool, limit: int
) -> tuple[list[InboxItem], int]:
    """The newest messages of these recipients (one person's ids), and how many unread."""
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            "SELECT id, feedback_number, title, body, created_at, read_at FROM inbox "
            "WHERE recipient = ANY(%s) AND (NOT %s OR read_at IS NULL) "
            "ORDER BY created_at DESC, id LIMIT %s",
            (recipients, unread_only, limit),
        )
        items = [InboxItem.model_validate(row) for row in await cursor.fetchall()]
        await cursor.execute(
            "SELECT count(*) AS unread FROM inbox WHERE recipient = ANY(%s) AND read_at IS NULL",
            (recipients,),
        )
        counted = await cursor.fetchone()
    return items, int(counted["unread"]) if counted else 0


async def mark_read(pool: AsyncConnectionPool, recipients: list[str], item_id: UUID) -> bool:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "UPDATE inbox SET read_at = coalesce(read_at, now()) "
            "WHERE id = %s AND recipient = ANY(%s) RETURNING 1",
            (item_id, recipients),
        )
        return await cursor.fetchone() is not None
