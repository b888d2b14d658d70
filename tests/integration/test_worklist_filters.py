"""The work list's filters (GET /v1/worklist, issue #14): each narrows the open cases of
the departments one sees and nothing else; a category matches its subcategories too; a
page starts at `offset`; the next due time is the nearest running clock's."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from deploy.postgres_server import LocalPostgres, create_database
from services.common.database import apply_schema, open_pool
from services.projections import queues, registrations

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)

# number, department, status, priority, channel, type, category, subcategory, tier, owner
CASES = [
    ("F20261102-0001", "after_sales", "assigned", "high", "phone", "complaint", "after_sales",
     "repair_quality", "vip", "as-lin"),
    ("F20261102-0002", "after_sales", "in_progress", "urgent", "web_form", "complaint",
     "after_sales", "repair_delay", "normal", "as-xu"),
    ("F20261102-0003", "after_sales", "pending_info", "low", "phone", "inquiry", "information",
     None, "normal", "as-lin"),
    ("F20261102-0004", "after_sales", "closed", "urgent", "phone", "complaint", "after_sales",
     None, "normal", "as-lin"),
    ("F20261102-0005", "logistics", "assigned", "urgent", "phone", "complaint", "logistics",
     None, "vip", "log-feng"),
]  # fmt: skip


def load(url: str) -> None:
    apply_schema(url, registrations.SCHEMA)
    with psycopg.connect(url, autocommit=True) as conn:
        for i, case in enumerate(CASES):
            number, department, status, priority, channel, kind, category, sub, tier, owner = case
            case_id = uuid.uuid4()
            conn.execute(
                "INSERT INTO registrations (feedback_id, feedback_number, received_at, "
                "registered_at, channel, customer_ref, customer_tier, description, receiver, "
                "registration_late, status, last_version, updated_at, department, owner, "
                "priority, feedback_type, category, subcategory) VALUES (%s, %s, %s, %s, %s, "
                "'c', %s, 'x', 'test', false, %s, 1, %s, %s, %s, %s, %s, %s, %s)",
                (case_id, number, NOW, NOW, channel, tier, status, NOW, department, owner,
                 priority, kind, category, sub),
            )  # fmt: skip
            # A running clock due later than a paused one: the running one is "next".
            for key, state, hours in (("first_response", "paused", 1), ("resolution", "running", 5 + i)):  # fmt: skip
                conn.execute(
                    "INSERT INTO case_clocks (feedback_id, clock_key, clock, time, target, "
                    "started_at, due_at, warn_at, state) VALUES (%s, %s, %s, 'business', "
                    "'24h', %s, %s, %s, %s)",
                    (case_id, key, key, NOW, NOW + timedelta(hours=hours),
                     NOW + timedelta(hours=hours / 2), state),
                )  # fmt: skip


async def numbers(pool: Any, departments: tuple[str, ...] | None, **wanted: Any) -> list[str]:
    offset = wanted.pop("offset", 0)
    rows = await queues.open_cases(
        pool, departments, queues.QueueFilters(**wanted), limit=100, offset=offset, now=NOW
    )
    return [row["feedback_number"] for row in rows]


async def test_each_filter_narrows_the_departments_open_cases(postgres: LocalPostgres) -> None:
    url = create_database(postgres.url, f"t_{uuid.uuid4().hex[:12]}")
    load(url)
    pool = open_pool(url)
    await pool.open()
    try:
        scope = ("after_sales",)
        # Open only, urgent first; the closed case and logistics' case are not listed.
        assert await numbers(pool, scope) == ["F20261102-0002", "F20261102-0001", "F20261102-0003"]
        assert await numbers(pool, None) == [
            "F20261102-0002", "F20261102-0005", "F20261102-0001", "F20261102-0003"
        ]  # fmt: skip
        assert await numbers(pool, scope, channel="phone") == ["F20261102-0001", "F20261102-0003"]
        assert await numbers(pool, scope, feedback_type="inquiry") == ["F20261102-0003"]
        assert await numbers(pool, scope, priority="urgent") == ["F20261102-0002"]
        assert await numbers(pool, scope, customer_tier="vip") == ["F20261102-0001"]
        assert await numbers(pool, scope, owner="as-lin") == ["F20261102-0001", "F20261102-0003"]
        assert await numbers(pool, scope, status="pending_info") == ["F20261102-0003"]
        assert await numbers(pool, scope, category="after_sales") == [
            "F20261102-0002", "F20261102-0001"
        ]  # fmt: skip
        assert await numbers(pool, scope, category="repair_delay") == ["F20261102-0002"]
        # A filter never widens the scope: another department's case stays out.
        assert await numbers(pool, scope, department="logistics") == []
        assert await numbers(pool, scope, channel="phone", priority="urgent") == []
        assert await numbers(pool, scope, offset=1) == ["F20261102-0001", "F20261102-0003"]
        # Text that looks like SQL is only ever a value.
        assert await numbers(pool, scope, owner="x' OR '1'='1") == []
        rows = await queues.open_cases(
            pool, scope, queues.QueueFilters(), limit=1, offset=0, now=NOW
        )
        assert rows[0]["next_due_at"] == NOW + timedelta(hours=6)  # the running clock's
        assert [c["state"] for c in rows[0]["clocks"]] == ["paused", "running"]
    finally:
        await pool.close()
