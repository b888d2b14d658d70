"""The registration table (客户反馈登记表) read model and its consumer (group `projections`).

Exactly once per event: the rows and the consumed Kafka position commit together, and a
case's `last_version` drops events relayed twice. An event that cannot be applied (unreadable,
a time outside what can be stored and read back, text PostgreSQL refuses) becomes a dead
letter and the partition moves on (see `kafka_positions.apply_slice`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from contracts import topics
from contracts.events import (
    AssignmentDisputed,
    CaseArchived,
    CaseClosed,
    CaseEvent,
    CaseRegistered,
    CaseReopened,
    CaseResolved,
    ClockBreached,
    ClockMet,
    ClockRecomputed,
    ClockWarned,
    CoHandlerAdded,
    CorrespondenceReceived,
    CustomerConfirmed,
    DeadLetter,
    EscalationRaised,
    FeedbackClassified,
    FeedbackRouted,
    InformationRequested,
    InformationSupplied,
    NoteAdded,
    OwnerAccepted,
    OwnerAssigned,
    PlanSet,
    PriorityOverridden,
    SentToTriage,
    case_event_adapter,
)
from services.common import deadletters, kafka_positions
from services.common.bus import batch_subscriber, partition_slices, publish
from services.common.settings import Settings

GROUP = "projections"
CONSUMER = "projections.registrations"

SCHEMA = [
    *kafka_positions.SCHEMA,
    *deadletters.SCHEMA,
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
    "CREATE INDEX IF NOT EXISTS registrations_registered_at ON registrations (registered_at)",
    "CREATE INDEX IF NOT EXISTS registrations_department ON registrations (department, status)",
    "CREATE INDEX IF NOT EXISTS registrations_channel ON registrations (channel, registered_at)",
]

REGISTRATION_DEADLINE_S = 2 * 3600


async def apply_registered(conn: Any, event: CaseRegistered) -> None:
    r = event.registration
    late = (r.registered_at - r.received_at).total_seconds() > REGISTRATION_DEADLINE_S
    await conn.execute(
        """
        INSERT INTO registrations (
            feedback_id, feedback_number, received_at, registered_at, channel,
            channel_reference, customer_ref, customer_tier, product_model, service_type,
            purchase_date, description, customer_attempts, occurred_at, expectation, emotion,
            stated_type, feedback_type, evidence, receiver, registration_late, status,
            last_version, updated_at, related_feedback)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
                %s, %s, %s, 'registered', %s, %s, %s)
        ON CONFLICT (feedback_id) DO NOTHING
        """,
        (
            event.feedback_id,
            r.feedback_number,
            r.received_at,
            r.registered_at,
            r.channel.value,
            r.channel_reference,
            r.customer_ref,
            r.customer_tier,
            r.product_model,
            r.service_type,
            r.purchase_date,
            r.description,
            r.customer_attempts,
            r.occurred_at,
            r.expectation,
            r.emotion.value if r.emotion else None,
            r.stated_type.value if r.stated_type else None,
            r.stated_type.value if r.stated_type else None,
            _json([e.model_dump(mode="json") for e in r.evidence]),
            r.receiver,
            late,
            event.version,
            event.occurred_at,
            r.related_feedback,
        ),
    )


def _json(value: Any) -> Any:
    from psycopg.types.json import Jsonb

    return Jsonb(value)


async def _update(conn: Any, event: CaseEvent, assignments: str, values: dict[str, Any]) -> None:
    """Apply a later case event once: only if the row has not seen this version yet."""
    await conn.execute(
        f"UPDATE registrations SET {assignments}, last_version = %(version)s, "
        "updated_at = %(occurred_at)s WHERE feedback_id = %(feedback_id)s AND last_version < %(version)s",
        {
            **values,
            "version": event.version,
            "occurred_at": event.occurred_at,
            "feedback_id": event.feedback_id,
        },
    )


async def apply_event(conn: Any, event: CaseEvent) -> None:
    """Apply one case event; raises `deadletters.Unapplicable` for one it must not store."""
    # PostgreSQL would store a year-10000 instant that no reader could load again.
    problem = deadletters.unstorable_time(event)
    if problem:
        raise deadletters.Unapplicable(f"{type(event).__name__}: {problem}")
    match event:
        case CaseRegistered():
            await apply_registered(conn, event)
        case FeedbackClassified(classification=c):
            await _update(
                conn,
                event,
                "feedback_type = %(type)s, category = %(category)s, subcategory = %(subcategory)s, "
                "priority = %(priority)s, classified_emotion = %(emotion)s, flags = %(flags)s, "
                "confidence = %(confidence)s, classification_rules = %(rules)s, "
                "supervisor_attention = %(attention)s",
                {
                    "type": c.type.value,
                    "category": c.category,
                    "subcategory": c.subcategory,
                    "priority": c.priority.value,
                    "emotion": c.emotion.value,
                    "flags": list(c.flags),
                    "confidence": c.confidence,
                    "rules": list(c.rules),
                    "attention": c.supervisor_attention,
                },
            )
        case SentToTriage():
            await _update(conn, event, "status = 'triage', owner = NULL", {})
        case FeedbackRouted():
            await _update(
                conn, event, "status = 'queued', department = %(department)s, owner = NULL",
                {"department": event.department},
            )  # fmt: skip
        case OwnerAssigned():
            await _update(
                conn, event, "status = 'assigned', owner = %(owner)s", {"owner": event.owner}
            )
        case OwnerAccepted():
            await _update(conn, event, "status = 'accepted'", {})
        case AssignmentDisputed():
            await _update(conn, event, "status = 'disputed', owner = NULL", {})
        case CoHandlerAdded():
            await _update(
                conn,
                event,
                "co_handlers = co_handlers || %(co)s",
                {
                    "co": _json(
                        [{"department": event.co_department, "duty": event.duty,
                          "due_at": event.due_at.isoformat(), "by": event.by}]
                    )
                },
            )  # fmt: skip
        case PriorityOverridden():
            await _update(
                conn, event, "priority = %(priority)s", {"priority": event.priority.value}
            )
        case InformationRequested():
            await _update(
                conn,
                event,
                "status = 'pending_info', missing_information = %(missing)s",
                {"missing": list(event.missing)},
            )
        case InformationSupplied():
            await _update(
                conn,
                event,
                "missing_information = ARRAY(SELECT unnest(missing_information) EXCEPT "
                "SELECT unnest(%(supplied)s::text[])), product_model = coalesce(%(model)s, product_model), "
                # Asked while handling (an owner has it): back in progress. Asked at
                # registration: routing's next events set the status.
                "status = CASE WHEN %(complete)s AND status = 'pending_info' AND owner IS NOT NULL "
                "THEN 'in_progress' ELSE status END",
                {
                    "supplied": list(event.supplied),
                    "model": event.supplied.get("product_model"),
                    "complete": event.complete,
                },
            )
        case CorrespondenceReceived():
            await _update(conn, event, "correspondence_count = correspondence_count + 1", {})
        case NoteAdded() | PlanSet():
            await _update(
                conn, event,
                "status = CASE WHEN status IN ('accepted', 'reopened') THEN 'in_progress' "
                "ELSE status END", {},
            )  # fmt: skip
        case CaseResolved():
            await _update(conn, event, "status = 'resolved'", {})
        case CustomerConfirmed(satisfied=True):
            await _update(conn, event, "status = 'confirmed'", {})
        case CaseReopened():
            await _update(
                conn, event, "status = 'reopened', priority = %(priority)s",
                {"priority": event.priority.value},
            )  # fmt: skip
        case CaseClosed():
            await _update(conn, event, "status = 'closed'", {})
        case CaseArchived():
            await _update(conn, event, "status = 'archived'", {})
        case ClockWarned():
            await _update(
                conn, event,
                "warned_clocks = ARRAY(SELECT DISTINCT unnest(warned_clocks || %(clock)s::text))",
                {"clock": _clock_name(event.clock, event.subject)},
            )  # fmt: skip
        case ClockBreached():
            await _update(
                conn, event,
                "breached_clocks = ARRAY(SELECT DISTINCT unnest(breached_clocks || %(clock)s::text))",
                {"clock": _clock_name(event.clock, event.subject)},
            )  # fmt: skip
        case EscalationRaised():
            await _update(
                conn, event, "escalation_level = greatest(escalation_level, %(level)s)",
                {"level": event.level},
            )  # fmt: skip
        case ClockMet() | ClockRecomputed():
            # Met or given a new due time: no longer flagged as warned (a breach stays).
            await _update(
                conn, event, "warned_clocks = array_remove(warned_clocks, %(clock)s)",
                {"clock": _clock_name(event.clock, event.subject)},
            )  # fmt: skip


async def apply_record(conn: Any, record: Any) -> None:
    """Apply one consumer record of `feedback.events`; raises why it cannot be applied
    (a newer producer's event we cannot read yet stays in the store for a rebuild)."""
    await apply_event(conn, case_event_adapter.validate_json(record.value or b""))


def _clock_name(clock: str, subject: str | None) -> str:
    return f"{clock}:{subject}" if subject else clock


async def apply_batch(
    pool: AsyncConnectionPool,
    records: list[Any],
    publish_dead_letter: kafka_positions.PublishDeadLetter,
) -> int:
    """Apply one partition slice in one transaction, an event that can never be applied
    becoming a dead letter; returns how many events were applied."""
    return await kafka_positions.apply_slice(
        pool, CONSUMER, records, apply_record, publish_dead_letter
    )


def register_projections(
    broker: KafkaBroker, settings: Settings, pool: AsyncConnectionPool
) -> None:
    async def publish_dead_letter(letter: DeadLetter) -> None:
        await publish(broker, settings, letter)

    @batch_subscriber(broker, settings, topics.FEEDBACK_EVENTS, GROUP)
    async def on_case_events(body: list[Any], msg: KafkaMessage) -> None:
        for slice_records in partition_slices(msg).values():
            await apply_batch(pool, slice_records, publish_dead_letter)


COLUMNS = (
    "feedback_id, feedback_number, received_at, registered_at, channel, channel_reference, "
    "customer_ref, customer_tier, product_model, service_type, purchase_date, description, "
    "customer_attempts, occurred_at, expectation, emotion, stated_type, feedback_type, "
    "evidence, receiver, registration_late, status, last_version, updated_at, category, "
    "subcategory, priority, department, classified_emotion, flags, confidence, "
    "classification_rules, supervisor_attention, owner, co_handlers, missing_information, "
    "correspondence_count, related_feedback, warned_clocks, breached_clocks, escalation_level"
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
