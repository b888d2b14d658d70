"""Two projections instances may store two cases of one customer at the same time (the
cases are on different partitions). Whichever marks second must see the other's case:
the later one is a repeat, whatever the interleaving."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from services.common.settings import Settings
from services.projections.casefile import _mark_repeats
from services.projections.facts_schema import SCHEMA

INSERT = (
    "INSERT INTO case_facts (feedback_id, feedback_number, customer_ref, received_at, "
    "registered_at, channel, customer_tier, status, last_version, updated_at) "
    "VALUES (%s, %s, %s, %s, %s, 'web_form', 'normal', 'assigned', 1, now())"
)


def case(number: str, received_at: datetime) -> dict[str, Any]:
    return {
        "feedback_id": uuid.uuid4(),
        "feedback_number": number,
        "customer_ref": "客户-2026-0001",
        "received_at": received_at,
    }


async def store_and_mark(conn: psycopg.AsyncConnection[Any], row: dict[str, Any]) -> None:
    at = row["received_at"]
    await conn.execute(
        INSERT, (row["feedback_id"], row["feedback_number"], row["customer_ref"], at, at)
    )
    await _mark_repeats(conn, [row])


async def test_the_second_to_mark_sees_the_first_even_before_it_committed(
    settings: Settings,
) -> None:
    name = f"repeats_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(settings.database_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = make_conninfo(settings.database_url, dbname=name)
        with psycopg.connect(url, autocommit=True) as setup:
            for statement in SCHEMA:
                setup.execute(statement)
        now = datetime.now(UTC)
        earlier, later = (
            case("F20261129-0001", now - timedelta(days=2)),
            case("F20261129-0002", now),
        )
        first = await psycopg.AsyncConnection.connect(url)
        second = await psycopg.AsyncConnection.connect(url)
        try:
            await store_and_mark(first, earlier)  # not committed yet
            # The second instance stores the later case meanwhile; its marking waits for
            # the first to commit, then sees the earlier case.
            marking = asyncio.create_task(store_and_mark(second, later))
            await asyncio.sleep(0.5)
            assert not marking.done(), "the second marked without waiting for the first"
            await first.commit()
            await asyncio.wait_for(marking, 10)
            await second.commit()
        finally:
            await first.close()
            await second.close()
        with psycopg.connect(url) as check:
            repeats: dict[str, bool] = dict(
                check.execute("SELECT feedback_number, repeat FROM case_facts").fetchall()
            )
        assert repeats == {"F20261129-0001": False, "F20261129-0002": True}
    finally:
        with psycopg.connect(settings.database_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
