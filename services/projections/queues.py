"""Work lists over the case read models: the department queue with the time left on each
clock, and the SLA board (warned, breached, escalated by department and owner)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

OPEN = "r.status NOT IN ('closed', 'archived')"
PRIORITY_RANK = (
    "CASE r.priority WHEN 'urgent' THEN 0 WHEN 'high' THEN 1 WHEN 'medium' THEN 2 "
    "WHEN 'low' THEN 3 ELSE 4 END"
)


def time_left(clock: dict[str, Any], now: datetime) -> float:
    """Seconds until the clock is due (negative: overdue); a paused clock keeps what it had."""
    at = clock["paused_at"] if clock["state"] == "paused" and clock["paused_at"] else now
    left: float = (clock["due_at"] - at).total_seconds()
    return round(left, 1)


@dataclass(frozen=True)
class QueueFilters:
    """What narrows the work list; None leaves a column unfiltered."""

    department: str | None = None
    owner: str | None = None
    status: str | None = None
    channel: str | None = None
    feedback_type: str | None = None
    category: str | None = None
    priority: str | None = None
    customer_tier: str | None = None

    def conditions(self) -> tuple[list[str], dict[str, Any]]:
        """SQL conditions on `r` with their parameters (column names are this class's
        own field names, never a caller's text)."""
        conditions: list[str] = []
        params: dict[str, Any] = {}
        for column, value in asdict(self).items():
            if value is None:
                continue
            params[column] = value
            if column == "category":
                # A category or one of its subcategories (the lists show both).
                conditions.append("(r.category = %(category)s OR r.subcategory = %(category)s)")
            else:
                conditions.append(f"r.{column} = %({column})s")
        return conditions, params


async def open_cases(
    pool: AsyncConnectionPool,
    departments: tuple[str, ...] | None,
    filters: QueueFilters,
    *,
    limit: int,
    offset: int = 0,
    now: datetime,
) -> list[dict[str, Any]]:
    """Open cases, most urgent first, then the nearest due running clock."""
    conditions, params = filters.conditions()
    conditions.insert(0, OPEN)
    params.update(limit=limit, offset=offset)
    if departments is not None:
        conditions.append("r.department = ANY(%(departments)s)")
        params["departments"] = list(departments)
    query = f"""
        SELECT r.feedback_number, r.feedback_id, r.department, r.owner, r.status, r.priority,
               r.feedback_type, r.category, r.channel, r.customer_tier, r.product_model,
               r.received_at, r.escalation_level, r.warned_clocks, r.breached_clocks,
               next_due.due_at AS next_due_at
        FROM registrations r
        LEFT JOIN LATERAL (
            SELECT min(c.due_at) AS due_at FROM case_clocks c
            WHERE c.feedback_id = r.feedback_id AND c.state = 'running'
        ) next_due ON true
        WHERE {" AND ".join(conditions)}
        ORDER BY {PRIORITY_RANK}, next_due.due_at NULLS LAST, r.received_at, r.feedback_number
        LIMIT %(limit)s OFFSET %(offset)s
    """
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(query, params)
        cases = await cursor.fetchall()
        ids = [c["feedback_id"] for c in cases]
        await cursor.execute(
            "SELECT feedback_id, clock, subject, state, due_at, paused_at, warned, breached "
            "FROM case_clocks WHERE feedback_id = ANY(%s) AND state <> 'met' "
            "ORDER BY due_at",
            (ids,),
        )
        clocks: dict[Any, list[dict[str, Any]]] = {}
        for clock in await cursor.fetchall():
            clock["seconds_left"] = time_left(clock, now)
            clocks.setdefault(clock.pop("feedback_id"), []).append(clock)
    for case in cases:
        case["clocks"] = clocks.get(case.pop("feedback_id"), [])
    return cases


async def sla_board(
    pool: AsyncConnectionPool, departments: tuple[str, ...] | None, now: datetime
) -> dict[str, Any]:
    """Per department and owner: open cases, warned, breached (still open or met late),
    escalated and overdue now; and the open cases that are warned, breached or escalated
    (breached and escalated first), each with the time left on its clocks not yet met."""
    scope = "" if departments is None else "AND r.department = ANY(%(departments)s)"
    params: dict[str, Any] = {"now": now, "departments": list(departments or ())}
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            f"""
            SELECT r.department, r.owner,
                   count(*) AS open,
                   count(*) FILTER (WHERE cardinality(r.warned_clocks) > 0) AS warned,
                   count(*) FILTER (WHERE cardinality(r.breached_clocks) > 0) AS breached,
                   count(*) FILTER (WHERE r.escalation_level > 0) AS escalated,
                   count(*) FILTER (WHERE EXISTS (
                       SELECT 1 FROM case_clocks c WHERE c.feedback_id = r.feedback_id
                       AND c.state = 'running' AND c.due_at < %(now)s)) AS overdue
            FROM registrations r
            WHERE {OPEN} AND r.department IS NOT NULL {scope}
            GROUP BY r.department, r.owner
            ORDER BY r.department, r.owner NULLS FIRST
            """,
            params,
        )
        rows = await cursor.fetchall()
        await cursor.execute(
            f"""
            SELECT r.feedback_number, r.feedback_id, r.department, r.owner, r.status,
                   r.priority, r.warned_clocks, r.breached_clocks, r.escalation_level
            FROM registrations r
            WHERE {OPEN} {scope}
                  AND (cardinality(r.breached_clocks) > 0 OR r.escalation_level > 0
                       OR cardinality(r.warned_clocks) > 0)
            ORDER BY r.escalation_level DESC, cardinality(r.breached_clocks) = 0,
                     {PRIORITY_RANK}, r.received_at
            LIMIT 500
            """,
            params,
        )
        flagged = await cursor.fetchall()
        await cursor.execute(
            "SELECT feedback_id, clock, subject, state, due_at, paused_at, warned, breached "
            "FROM case_clocks WHERE feedback_id = ANY(%s) AND state <> 'met' ORDER BY due_at",
            ([case["feedback_id"] for case in flagged],),
        )
        clocks: dict[Any, list[dict[str, Any]]] = {}
        for clock in await cursor.fetchall():
            clock["seconds_left"] = time_left(clock, now)
            clocks.setdefault(clock.pop("feedback_id"), []).append(clock)
    for case in flagged:
        case["clocks"] = clocks.get(case.pop("feedback_id"), [])
    return {"rows": rows, "flagged": flagged}
