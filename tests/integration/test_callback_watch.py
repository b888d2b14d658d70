"""Callbacks held to time (issue #8): an overdue callback tells the department's
supervisors, then its heads when still open `to_head_after` later; a rescheduled callback
tells the customer the new appointment; each once, with two watchers at work."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from services.common.database import apply_schema
from services.common.settings import Settings
from services.handling import callbacks
from services.notifications.callback_watch import CallbackWatch
from services.notifications.consumer import Planner
from services.notifications.directory import load_directory
from services.notifications.store import SCHEMA as NOTIFICATIONS_SCHEMA
from services.sla.calendar import load_calendars
from services.sla.policies import load_policies

pytestmark = pytest.mark.integration


class MovableClock:
    def __init__(self, now: datetime) -> None:
        self.moment = now

    def now(self) -> datetime:
        return self.moment


def rows(settings: Settings, task_id: uuid.UUID) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.database_url) as conn:
        return conn.execute(
            "SELECT event_type, event_version, audience, recipient, channel, template "
            "FROM notifications WHERE feedback_id = %s ORDER BY event_version, recipient, channel",
            (task_id,),
        ).fetchall()


async def test_overdue_callbacks_escalate_and_appointments_are_told_once(
    settings: Settings,
) -> None:
    apply_schema(settings.database_url, [*callbacks.SCHEMA, *NOTIFICATIONS_SCHEMA])
    calendar = load_calendars().get(None)
    policies = load_policies()
    directory = load_directory()
    # A Monday morning in the centre's zone: business hours follow.
    due = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
    task_id = uuid.uuid4()
    with psycopg.connect(settings.database_url) as conn:
        conn.execute(
            "INSERT INTO callback_tasks (id, type, feedback_id, feedback_number, customer_ref, "
            "department, goal, script, priority, due_at, created_at, updated_at) VALUES "
            "(%s, 'post_complaint', %s, 'F20261127-0042', '客户-2026-0042', 'logistics', "
            "'回访', '您好', false, %s, %s, %s)",
            (task_id, uuid.uuid4(), due, due - timedelta(days=3), due - timedelta(days=3)),
        )
    clock = MovableClock(due - timedelta(minutes=1))
    async with AsyncConnectionPool(settings.database_url, min_size=1, max_size=4) as pool:
        planner = Planner(settings, directory, {"email"})
        watches = [
            CallbackWatch(
                pool, planner, directory, calendar, policies.escalation.to_head_after, clock
            )
            for _ in range(2)
        ]
        # Not due yet: nothing.
        assert await watches[0].watch_once() == {"supervisor": 0, "head": 0, "appointment": 0}
        assert rows(settings, task_id) == []
        # Due: the logistics supervisors are told, once, however many watchers look.
        clock.moment = due + timedelta(seconds=1)
        results = await asyncio.gather(*(w.watch_once() for w in watches))
        assert sum(r["supervisor"] for r in results) == 1
        supervisors = directory.supervisors("logistics")
        told = rows(settings, task_id)
        assert {r[3] for r in told} == set(supervisors)
        assert {(r[0], r[1], r[2], r[5]) for r in told} == {
            ("CallbackOverdue", 1, "staff", "staff_callback_overdue")
        }
        assert "inbox" in {r[4] for r in told}
        again = await watches[1].watch_once()
        assert again == {"supervisor": 0, "head": 0, "appointment": 0}
        # Still open to_head_after (business time) later: the heads.
        to_head = calendar.due(
            due, policies.escalation.to_head_after.parsed, policies.escalation.to_head_after.time
        )
        clock.moment = to_head - timedelta(seconds=1)
        assert (await watches[0].watch_once())["head"] == 0
        clock.moment = to_head + timedelta(seconds=1)
        results = await asyncio.gather(*(w.watch_once() for w in watches))
        assert sum(r["head"] for r in results) == 1
        heads = {r[3] for r in rows(settings, task_id) if r[1] == 2}
        assert heads == set(directory.heads("logistics"))
        # The customer asks to be called tomorrow: told the appointment once.
        with psycopg.connect(settings.database_url) as conn:
            conn.execute(
                "UPDATE callback_tasks SET state = 'rescheduled', attempts = attempts + 1, "
                "due_at = %s, overdue_level = 0, overdue_at = NULL WHERE id = %s",
                (clock.moment + timedelta(days=1), task_id),
            )
        results = await asyncio.gather(*(w.watch_once() for w in watches))
        assert sum(r["appointment"] for r in results) == 1
        customer = [r for r in rows(settings, task_id) if r[2] == "customer"]
        assert customer == [
            ("CallbackRescheduled", 1_000_001, "customer", "客户-2026-0042", "email",
             "customer_callback_appointment")
        ]  # fmt: skip
        assert (await watches[0].watch_once())["appointment"] == 0
        # Another attempt that sets no new time tells the customer nothing new.
        with psycopg.connect(settings.database_url) as conn:
            conn.execute(
                "UPDATE callback_tasks SET attempts = attempts + 1 WHERE id = %s", (task_id,)
            )
        assert (await watches[0].watch_once())["appointment"] == 0
        # The new appointment missed too: the supervisors are told again (a new version).
        clock.moment += timedelta(days=1, seconds=1)
        assert (await watches[0].watch_once())["supervisor"] == 1
        assert {r[1] for r in rows(settings, task_id) if r[0] == "CallbackOverdue"} == {1, 2, 5}
