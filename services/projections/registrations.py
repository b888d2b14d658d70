"""The registration table (客户反馈登记表) and the other case read models (`casefile`),
and their consumer (group `projections`).

Exactly once per event: the rows and the consumed Kafka position commit together, and a
case's `last_version` drops events relayed twice. A partition slice is folded in memory
and written back with one statement per table. An event that cannot be applied (unreadable,
a time outside what can be stored and read back, text PostgreSQL refuses) becomes a dead
letter and the partition moves on (see `kafka_positions.apply_slice`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from contracts.events import case_event_adapter
from services.common import deadletters, kafka_positions
from services.projections import bi, casefile, facts_schema, rebuild, search
from services.sla.calendar import BusinessCalendar, load_calendars

GROUP = "projections"
CONSUMER = "projections.registrations"

# The projection's own tables (what `feedback projections rebuild cases` builds again).
TABLE_SCHEMA = [
    """
    CREATE TABLE IF NOT EXISTS registrations (
        feedback_id uuid PRIMARY KEY,
        feedback_number text NOT NULL UNIQUE,
        received_at timestamptz NOT NULL,
        registered_at timestamptz NOT NULL,
        channel text NOT NULL,
        channel_reference text,
        customer_ref text NOT NULL,
        customer_tier text NOT NULL,
        product_model text,
        service_type text,
        purchase_date date,
        description text NOT NULL,
        customer_attempts text,
        occurred_at timestamptz,
        expectation text,
        emotion text,
        stated_type text,
        feedback_type text,
        evidence jsonb NOT NULL DEFAULT '[]',
        receiver text NOT NULL,
        registration_late boolean NOT NULL,
        status text NOT NULL,
        last_version integer NOT NULL,
        updated_at timestamptz NOT NULL
    )
    """,
    # Classification and routing, filled in by later case events.
    """
    ALTER TABLE registrations
        ADD COLUMN IF NOT EXISTS category text,
        ADD COLUMN IF NOT EXISTS subcategory text,
        ADD COLUMN IF NOT EXISTS priority text,
        ADD COLUMN IF NOT EXISTS department text,
        ADD COLUMN IF NOT EXISTS classified_emotion text,
        ADD COLUMN IF NOT EXISTS flags text[] NOT NULL DEFAULT '{}',
        ADD COLUMN IF NOT EXISTS confidence double precision,
        ADD COLUMN IF NOT EXISTS classification_rules text[] NOT NULL DEFAULT '{}',
        ADD COLUMN IF NOT EXISTS supervisor_attention boolean NOT NULL DEFAULT false,
        ADD COLUMN IF NOT EXISTS owner text,
        ADD COLUMN IF NOT EXISTS co_handlers jsonb NOT NULL DEFAULT '[]',
        ADD COLUMN IF NOT EXISTS missing_information text[] NOT NULL DEFAULT '{}',
        ADD COLUMN IF NOT EXISTS correspondence_count integer NOT NULL DEFAULT 0,
        ADD COLUMN IF NOT EXISTS related_feedback text
    """,
    # Deadlines: the tracker flags warned and breached clocks and the escalation level.
    """
    ALTER TABLE registrations
        ADD COLUMN IF NOT EXISTS warned_clocks text[] NOT NULL DEFAULT '{}',
        ADD COLUMN IF NOT EXISTS breached_clocks text[] NOT NULL DEFAULT '{}',
        ADD COLUMN IF NOT EXISTS escalation_level integer NOT NULL DEFAULT 0
    """,
    # The tracking table (问题处理跟踪表, 售后记录表): assignment, plan, progress, result and
    # the customer's verdict.
    """
    ALTER TABLE registrations
        ADD COLUMN IF NOT EXISTS assigned_at timestamptz,
        ADD COLUMN IF NOT EXISTS accepted_at timestamptz,
        ADD COLUMN IF NOT EXISTS diagnosis text,
        ADD COLUMN IF NOT EXISTS plan text,
        ADD COLUMN IF NOT EXISTS expected_completion timestamptz,
        ADD COLUMN IF NOT EXISTS progress jsonb NOT NULL DEFAULT '[]',
        ADD COLUMN IF NOT EXISTS result text,
        ADD COLUMN IF NOT EXISTS result_summary text,
        ADD COLUMN IF NOT EXISTS result_reason text,
        ADD COLUMN IF NOT EXISTS measures text,
        ADD COLUMN IF NOT EXISTS resources text,
        ADD COLUMN IF NOT EXISTS resolved_at timestamptz,
        ADD COLUMN IF NOT EXISTS satisfied boolean,
        ADD COLUMN IF NOT EXISTS customer_comment text,
        ADD COLUMN IF NOT EXISTS confirmed_at timestamptz,
        ADD COLUMN IF NOT EXISTS csat integer,
        ADD COLUMN IF NOT EXISTS nps integer,
        ADD COLUMN IF NOT EXISTS closed_at timestamptz
    """,
    "CREATE INDEX IF NOT EXISTS registrations_registered_at ON registrations (registered_at)",
    "CREATE INDEX IF NOT EXISTS registrations_department ON registrations (department, status)",
    "CREATE INDEX IF NOT EXISTS registrations_channel ON registrations (channel, registered_at)",
    *facts_schema.SCHEMA,
    *search.SCHEMA,
]
SCHEMA = [*kafka_positions.SCHEMA, *deadletters.SCHEMA, *TABLE_SCHEMA, *rebuild.SCHEMA]


def dependent_views() -> list[str]:
    """Statements that make the views over these tables (recreated after a rebuild): the
    `bi` schema, in the calendar's zone."""
    return [bi.views_statement(load_calendars().get(None).zone.key)]


async def apply_records(conn: Any, records: list[Any], calendar: BusinessCalendar) -> int:
    """Apply consumer records of `feedback.events` in order, in the caller's transaction;
    raises why one cannot be applied (a newer producer's event we cannot read yet stays in
    the store for a rebuild)."""
    events = [case_event_adapter.validate_json(r.value or b"") for r in records]
    return await casefile.apply_events(conn, events, calendar)


def consumer(calendar: BusinessCalendar) -> kafka_positions.SliceConsumer:
    """The read models' consumer of `feedback.events` (group `projections`): a slice in
    one transaction, an event that can never be applied becoming a dead letter."""

    async def apply_one(conn: Any, record: Any) -> None:
        await apply_records(conn, [record], calendar)

    async def apply_all(conn: Any, records: list[Any]) -> None:
        await apply_records(conn, records, calendar)

    return kafka_positions.SliceConsumer(CONSUMER, apply_one, apply_all)


COLUMNS = (
    "feedback_id, feedback_number, received_at, registered_at, channel, channel_reference, "
    "customer_ref, customer_tier, product_model, service_type, purchase_date, description, "
    "customer_attempts, occurred_at, expectation, emotion, stated_type, feedback_type, "
    "evidence, receiver, registration_late, status, last_version, updated_at, category, "
    "subcategory, priority, department, classified_emotion, flags, confidence, "
    "classification_rules, supervisor_attention, owner, co_handlers, missing_information, "
    "correspondence_count, related_feedback, warned_clocks, breached_clocks, escalation_level, "
    "assigned_at, accepted_at, diagnosis, plan, expected_completion, progress, result, "
    "result_summary, result_reason, measures, resources, resolved_at, satisfied, "
    "customer_comment, confirmed_at, csat, nps, closed_at"
)


async def find_by_number(pool: AsyncConnectionPool, number: str) -> dict[str, Any] | None:
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            f"SELECT {COLUMNS} FROM registrations WHERE feedback_number = %s", (number,)
        )
        return await cursor.fetchone()


async def list_registrations(
    pool: AsyncConnectionPool,
    since: datetime | None,
    channel: str | None,
    limit: int,
    departments: tuple[str, ...] | None = None,
) -> list[dict[str, Any]]:
    """Rows in registration order; with `departments`, only those departments' cases
    (rows not routed yet are shown only to the roles that see every department)."""
    conditions: list[str] = ["TRUE"]
    params: list[Any] = []
    if departments is not None:
        conditions.append("department = ANY(%s)")
        params.append(list(departments))
    if since is not None:
        conditions.append("registered_at >= %s")
        params.append(since)
    if channel is not None:
        conditions.append("channel = %s")
        params.append(channel)
    params.append(limit)
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            f"SELECT {COLUMNS} FROM registrations WHERE {' AND '.join(conditions)} "
            "ORDER BY registered_at, feedback_number LIMIT %s",
            params,
        )
        return await cursor.fetchall()


async def recent_of_customers(
    pool: AsyncConnectionPool, customer_refs: list[str], since: datetime, limit: int
) -> list[dict[str, Any]]:
    """These customers' feedback received since `since`, newest first: number, time, type
    and status only. Read from `case_facts` (the same projection as the registration
    table, written in its transaction), whose (customer_ref, received_at) index serves it."""
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            "SELECT feedback_number, received_at, feedback_type, status FROM case_facts "
            "WHERE customer_ref = ANY(%s) AND received_at >= %s "
            "ORDER BY received_at DESC, feedback_number DESC LIMIT %s",
            (customer_refs, since, limit),
        )
        return await cursor.fetchall()
