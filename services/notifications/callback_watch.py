"""Callbacks held to their due time, and customers told of their appointment.

A callback task (回访, `services/handling/callbacks.py`) that is still open at its due time
is overdue: the department's supervisors are told at once, its heads when it is still open
the escalation ladder's `to_head_after` later (config/sla.yaml, business time). A task
rescheduled to a time the customer chose (不方便, call me later) tells the customer the new
appointment. Each is planned once: the task row is locked, the notification rows written
and the task marked in one transaction (`overdue_level`, `head_due_at`,
`appointment_told_for`: the appointment told, so an attempt that sets no new time tells
nothing), so two
watchers or a restart never tell anything twice; the rows' ids are derived from the task.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from services.notifications import store
from services.notifications.consumer import Planner, Told
from services.notifications.directory import StaffDirectory
from services.sla.calendar import BusinessCalendar
from services.sla.policies import Rule
from services.sla.service import Clock, SystemClock

log = logging.getLogger(__name__)
BATCH = 200
# The rows' ids derive from (task, version): overdue levels of the n-th appointment are
# 2n+1 and 2n+2; appointments told are counted from here, never meeting those.
APPOINTMENT_VERSION_BASE = 1_000_000


class CallbackWatch:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        planner: Planner,
        directory: StaffDirectory,
        calendar: BusinessCalendar,
        to_head_after: Rule,
        clock: Clock | None = None,
    ) -> None:
        self.pool = pool
        self.planner = planner
        self.directory = directory
        self.calendar = calendar
        self.to_head_after = to_head_after
        self.clock = clock or SystemClock()

    async def run(self, interval_s: float = 30.0) -> None:
        while True:
            try:
                told = await self.watch_once()
                if any(told.values()):
                    log.info("callback watch: %s", told)
            except Exception:
                log.exception("the callback watch failed; retrying")
            await asyncio.sleep(interval_s)

    async def watch_once(self) -> dict[str, int]:
        """Escalate what is overdue and tell new appointments, at the clock's time."""
        now = self.clock.now()
        told = {"supervisor": 0, "head": 0, "appointment": 0}
        async with self.pool.connection() as conn, conn.transaction():
            cursor = conn.cursor(row_factory=dict_row)
            # The channel the customer wrote in by chooses how they are told. Only what is
            # due now is picked: tasks told the supervisor wait for their head time.
            await cursor.execute(
                "SELECT t.id, t.type, t.feedback_id, t.feedback_number, t.customer_ref, "
                "t.department, t.due_at, t.state, t.attempts, t.overdue_level, t.head_due_at, "
                "t.appointment_told_for, c.channel FROM callback_tasks t "
                "LEFT JOIN notification_cases c ON c.feedback_id = t.feedback_id "
                "WHERE t.state IN ('open', 'rescheduled') AND ("
                "(t.overdue_level = 0 AND t.due_at <= %(now)s) "
                "OR (t.overdue_level = 1 AND t.head_due_at <= %(now)s) "
                "OR (t.state = 'rescheduled' AND t.due_at > %(now)s "
                "AND t.appointment_told_for IS DISTINCT FROM t.due_at)) "
                "ORDER BY t.due_at LIMIT %(batch)s FOR UPDATE OF t SKIP LOCKED",
                {"now": now, "batch": BATCH},
            )
            for task in await cursor.fetchall():
                if task["due_at"] <= now and task["overdue_level"] < 2:
                    level = task["overdue_level"] + 1
                    role = "supervisor" if level == 1 else "head"
                    rows = self._overdue_rows(task, level, role)
                    if not rows:
                        log.warning(
                            "callback %s overdue: no %s of %s in the staff directory",
                            task["id"], role, task["department"],
                        )  # fmt: skip
                    await store.insert(conn, rows)
                    told[role] += 1
                    # The head's turn counts from the due time (a late watcher does not
                    # push it back).
                    to_head = self.calendar.due(
                        task["due_at"], self.to_head_after.parsed, self.to_head_after.time
                    )
                    await conn.execute(
                        "UPDATE callback_tasks SET overdue_level = %s, "
                        "overdue_at = coalesce(overdue_at, %s), head_due_at = %s WHERE id = %s",
                        (level, now, to_head if level == 1 else None, task["id"]),
                    )
                if (
                    task["state"] == "rescheduled"
                    and task["due_at"] > now
                    and (task["appointment_told_for"] != task["due_at"])
                ):
                    await store.insert(conn, self._appointment_rows(task))
                    told["appointment"] += 1
                    await conn.execute(
                        "UPDATE callback_tasks SET appointments_told = attempts, "
                        "appointment_told_for = due_at WHERE id = %s",
                        (task["id"],),
                    )
        return told

    def _told(self, task: dict[str, Any], version: int, kind: str) -> Told:
        # The task's own id: its rows never meet the case's event rows.
        return Told(task["id"], task["feedback_number"] or "-", version, kind)

    def _overdue_rows(self, task: dict[str, Any], level: int, role: str) -> list[store.Planned]:
        department = task["department"]
        recipients = (
            self.directory.supervisors(department)
            if level == 1
            else self.directory.heads(department)
        )
        payload = {
            "number": task["feedback_number"] or "-",
            "task_type": task["type"],
            "department": department,
            "due_at": task["due_at"].isoformat(),
            "attempts": task["attempts"],
        }
        return self.planner.staff_rows(
            self._told(task, 2 * task["attempts"] + level, "CallbackOverdue"), recipients,
            "staff_callback_overdue",
            payload, role,
        )  # fmt: skip

    def _appointment_rows(self, task: dict[str, Any]) -> list[store.Planned]:
        payload = {"number": task["feedback_number"] or "-", "due_at": task["due_at"].isoformat()}
        return self.planner.customer_rows(
            self._told(task, APPOINTMENT_VERSION_BASE + task["attempts"], "CallbackRescheduled"),
            task["customer_ref"], task["channel"], "customer_callback_appointment", payload,
        )  # fmt: skip
