"""Deadlines (issue #8) on real Kafka and PostgreSQL, with time moved by the test.

A complaint's clocks start from its receipt on the business calendar, pause while the
customer is asked for information, move when the priority changes, warn and breach once,
escalate to the supervisor and then the head, and are met by the event that satisfies
them. Two schedulers never fire the same warning twice; a restart loses nothing.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY
from psycopg_pool import ConnectionPool

from services.cases.store import CaseStore
from services.common.settings import Settings
from services.sla.calendar import load_calendars
from services.sla.policies import load_policies
from services.sla.service import SlaService
from tests.conftest import registered_row, serve, wait_for, web_form

pytestmark = pytest.mark.integration
COMPLAINT = "账单里多扣了一笔39元的服务费，购买时没有任何人告知，要求退款"


class MovableClock:
    """The scheduler's time, moved by the test (thread-safe: the scheduler runs in a thread)."""

    def __init__(self) -> None:
        self._now = datetime.now(UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, moment: datetime) -> None:
        with self._lock:
            self._now = moment


def facts(settings: Settings, number: str) -> list[str]:
    """The kinds of fact stored on a case, in order."""
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT split_part(e.topic, '.', -1) FROM cases_events e "
            "JOIN routing_cases r ON r.feedback_id = e.originator_id "
            "WHERE r.feedback_number = %s ORDER BY e.originator_version",
            (number,),
        ).fetchall()
    return [str(r[0]) for r in rows]


async def case_view(client: Any, number: str, **expected: Any) -> dict[str, Any]:
    async def matches() -> dict[str, Any] | None:
        answer = await client.get(f"/v1/cases/{number}")
        if answer.status_code != 200:
            return None
        view: dict[str, Any] = answer.json()
        return view if all(view.get(k) == v for k, v in expected.items()) else None

    return await wait_for(matches, timeout=30, what=f"case {number} with {expected}")  # type: ignore[no-any-return]


def _clock_events_counted() -> float:
    """Warnings and breaches counted in this process's metrics (feedback_sla_clock_events)."""
    return sum(
        sample.value
        for metric in REGISTRY.collect()
        if metric.name == "feedback_sla_clock_events"
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


def clock_of(view: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in view["clocks"] if c["clock"] == name)


async def test_a_complaint_is_warned_breached_escalated_once_and_met_late(
    settings: Settings,
) -> None:
    async with serve(settings) as running:
        client = running.client
        sla = running.platform.sla
        assert sla is not None
        clock = MovableClock()
        sla.clock = clock
        number = (await client.post("/v1/feedback", json=web_form(COMPLAINT))).json()[
            "feedback_number"
        ]
        row = await registered_row(client, number, status="assigned")
        view = await case_view(client, number)
        await wait_for(lambda: len(facts(settings, number)) >= 6, timeout=30, what="clocks")
        view = (await client.get(f"/v1/cases/{number}")).json()
        first = clock_of(view, "first_response")
        resolution = clock_of(view, "resolution")
        received = datetime.fromisoformat(row["received_at"])
        rule = load_policies().rule_for("first_response", {"priority": row["priority"]})
        assert rule is not None and first["target"] == rule.target
        calendar = load_calendars().get(None)
        assert datetime.fromisoformat(first["due_at"]) == calendar.due(
            received, rule.parsed, rule.time
        )
        assert resolution["target"] == "3wd"  # a complaint: three working days
        due = datetime.fromisoformat(first["due_at"])

        # Warned once at 75 %, however long the scheduler keeps looking.
        clock.set(due - timedelta(seconds=1))
        view = await case_view(client, number)
        await wait_for(
            lambda: "ClockWarned" in facts(settings, number), timeout=30, what="the warning"
        )
        await asyncio.sleep(1)
        warned = _clock_keys(settings, number, "ClockWarned")
        assert warned.count("first_response:None") == 1, warned
        # A warned case is on the SLA board already, while it can still be saved.
        watcher = running.as_staff("supervisor", (row["department"],), username="sup.zhou")

        async def on_the_board() -> dict[str, Any] | None:
            board = (await client.get("/v1/sla/board", headers=watcher)).json()
            return next((c for c in board["flagged"] if c["feedback_number"] == number), None)

        flagged = await wait_for(on_the_board, timeout=30, what="the warned case on the board")
        assert "first_response" in flagged["warned_clocks"] and not flagged["breached_clocks"]
        assert {c["clock"] for c in flagged["clocks"]} >= {"first_response", "resolution"}

        # Breached once at the due time, escalated to the supervisor at once...
        clock.set(due + timedelta(seconds=1))
        await wait_for(
            lambda: "ClockBreached" in facts(settings, number), timeout=30, what="the breach"
        )
        view = await case_view(client, number, escalation_level=1)
        assert clock_of(view, "first_response")["breached"] is True
        # ...and to the head when still open four business hours later.
        clock.set(
            calendar.due(due, load_policies().escalation.to_head_after.parsed)
            + timedelta(seconds=1)
        )
        await case_view(client, number, escalation_level=2)
        await asyncio.sleep(1)
        breached = _clock_keys(settings, number, "ClockBreached")
        assert breached.count("first_response:None") == 1, breached
        escalations = _clock_keys(settings, number, "EscalationRaised")
        assert escalations.count("first_response:None") == 2, escalations
        # The tracker (the registration table) flags it.
        tracked = await registered_row(client, number, escalation_level=2)
        assert "first_response" in tracked["breached_clocks"]
        # So do the department's work list and the SLA board.
        supervisor = running.as_staff("supervisor", (row["department"],), username="sup.wu")
        listed = await client.get("/v1/worklist", headers=supervisor)
        mine = next(c for c in listed.json() if c["feedback_number"] == number)
        assert mine["escalation_level"] == 2 and "first_response" in mine["breached_clocks"]
        first_left = next(c for c in mine["clocks"] if c["clock"] == "first_response")
        assert first_left["breached"] is True and first_left["state"] == "running"
        board = (await client.get("/v1/sla/board", headers=supervisor)).json()
        flagged = next(c for c in board["flagged"] if c["feedback_number"] == number)
        first_left = next(c for c in flagged["clocks"] if c["clock"] == "first_response")
        assert first_left["breached"] is True
        assert datetime.fromisoformat(first_left["due_at"]) == due
        line = next(
            r for r in board["rows"]
            if r["department"] == row["department"] and r["owner"] == row["owner"]
        )  # fmt: skip
        assert line["breached"] >= 1 and line["escalated"] >= 1
        agent = running.as_staff("agent", (row["department"],), row["owner"])
        assert (await client.get("/v1/sla/board", headers=agent)).status_code == 403
        with psycopg.connect(settings.database_url) as conn:
            fact = conn.execute(
                "SELECT breached_count > 0, escalation_level FROM case_facts "
                "WHERE feedback_number = %s",
                (number,),
            ).fetchone()
        assert fact == (True, 2)

        # The owner accepts: the first-response clock is met, late.
        owner = running.as_staff("agent", (row["department"],), row["owner"])
        assert (await client.post(f"/v1/cases/{number}/accept", headers=owner)).status_code == 200
        await wait_for(
            lambda: "first_response:None" in _clock_keys(settings, number, "ClockMet"),
            timeout=30,
            what="first response met",
        )
        view = (await client.get(f"/v1/cases/{number}")).json()
        assert clock_of(view, "first_response")["state"] == "met"
        # The registration clock was known at once: web forms are registered within 2 h.
        assert clock_of(view, "registration")["state"] == "met"
        assert clock_of(view, "resolution")["state"] == "running"

        def first_response_row() -> tuple[Any, ...] | None:
            with psycopg.connect(settings.database_url) as conn:
                return conn.execute(
                    "SELECT c.state, c.late, c.breached, f.first_response_at IS NOT NULL "
                    "FROM case_clocks c JOIN case_facts f USING (feedback_id) "
                    "WHERE f.feedback_number = %s AND c.clock_key = 'first_response'",
                    (number,),
                ).fetchone()

        # The read models follow: met late, still counted as breached, first response known.
        await wait_for(
            lambda: first_response_row() == ("met", True, True, True),
            timeout=30,
            what="the clock row met",
        )


async def test_waiting_for_the_customer_pauses_and_a_priority_change_recomputes(
    settings: Settings,
) -> None:
    async with serve(settings) as running:
        client = running.client
        sla = running.platform.sla
        assert sla is not None
        clock = MovableClock()
        sla.clock = clock
        answer = await client.post(
            "/v1/feedback", json=web_form("吸尘器使用三天后无法启动，要求换货")
        )
        number, token = answer.json()["feedback_number"], answer.json()["customer_token"]
        row = await registered_row(client, number, status="pending_info")
        await wait_for(
            lambda: "ClockPaused" in facts(settings, number), timeout=30, what="paused clocks"
        )
        view = (await client.get(f"/v1/cases/{number}")).json()
        paused = clock_of(view, "first_response")
        assert paused["state"] == "paused"
        due_before = datetime.fromisoformat(paused["due_at"])
        supplied = await client.post(
            f"/v1/feedback/{number}/supplements",
            json={"channel": "phone", "product_model": "吸尘器 V8"},
            headers={"X-Customer-Token": token, "Authorization": ""},
        )
        assert supplied.status_code == 202
        await wait_for(
            lambda: "ClockResumed" in facts(settings, number), timeout=30, what="resumed clocks"
        )
        view = (await client.get(f"/v1/cases/{number}")).json()
        resumed = clock_of(view, "first_response")
        assert resumed["state"] == "running"
        # The due time moved later by the business time that passed while paused (>= 0).
        assert datetime.fromisoformat(resumed["due_at"]) >= due_before

        # A supervisor raises the priority: the clock is recomputed from the original start.
        row = await registered_row(client, number, status="assigned")
        supervisor = running.as_staff("supervisor", (row["department"],), username="sup.x")
        new_priority = "urgent" if row["priority"] != "urgent" else "low"
        changed = await client.post(
            f"/v1/cases/{number}/priority",
            json={"priority": new_priority, "reason": "客户投诉到消协"},
            headers=supervisor,
        )
        assert changed.status_code == 200, changed.text
        await wait_for(
            lambda: "ClockRecomputed" in facts(settings, number), timeout=30, what="recomputed"
        )
        view = (await client.get(f"/v1/cases/{number}")).json()
        rule = load_policies().rule_for("first_response", {"priority": new_priority})
        assert rule is not None and clock_of(view, "first_response")["target"] == rule.target


async def test_two_schedulers_fire_each_warning_once_and_a_restart_loses_nothing(
    settings: Settings,
) -> None:
    async with serve(settings) as running:
        client = running.client
        sla = running.platform.sla
        assert sla is not None
        clock = MovableClock()
        sla.clock = clock
        numbers = [
            (await client.post("/v1/feedback", json=web_form(f"{COMPLAINT}（第{i}次）", customer={"phone": f"1390000{i:04d}"}))).json()["feedback_number"]
            for i in range(5)
        ]  # fmt: skip
        for number in numbers:
            await registered_row(client, number, status="assigned")
            await wait_for(
                lambda n=number: "ClockStarted" in facts(settings, n), timeout=30, what="clocks"
            )
        await wait_for(lambda: _timers(settings) >= 20, timeout=30, what="timers projected")
    # The platform is stopped: two schedulers of their own, at a time past every warning.
    store = CaseStore(settings.database_url)
    pools = [
        ConnectionPool(settings.database_url, min_size=1, max_size=2, kwargs={"autocommit": True})
        for _ in range(2)
    ]
    try:
        later = MovableClock()
        later.set(datetime.now(UTC) + timedelta(days=30))
        schedulers = [
            SlaService(store, pool, load_policies(), load_calendars().get(None), later)
            for pool in pools
        ]
        counted_before = _clock_events_counted()
        fired = await asyncio.gather(
            *(asyncio.to_thread(s.fire_due, 3) for s in schedulers for _ in range(4))
        )
        assert sum(fired) > 0
        # /metrics counts what was stored, once, though two schedulers raced for it.
        stored_total = sum(
            facts(settings, n).count(k) for n in numbers for k in ("ClockWarned", "ClockBreached")
        )
        assert _clock_events_counted() - counted_before == stored_total > 0
        # Whatever each claimed, each clock is warned and breached exactly once.
        for number in numbers:
            stored = facts(settings, number)
            assert stored.count("ClockWarned") <= 2 and stored.count("ClockBreached") <= 2
            for name in ("ClockWarned", "ClockBreached"):
                assert stored.count(name) == len(set(_clock_keys(settings, number, name))), (
                    number,
                    stored,
                )
    finally:
        for pool in pools:
            pool.close()
        store.close()
    # A restart: the services pick up where the stopped ones were; nothing fires twice.
    async with serve(settings) as running:
        sla = running.platform.sla
        assert sla is not None
        sla.clock = later
        await asyncio.sleep(2)
        for number in numbers:
            stored = facts(settings, number)
            warned = _clock_keys(settings, number, "ClockWarned")
            assert len(warned) == len(set(warned)), stored


def _timers(settings: Settings) -> int:
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM sla_timers").fetchone()
    return int(row[0]) if row else 0


def _clock_keys(settings: Settings, number: str, kind: str) -> list[str]:
    """The clock (and subject) of each stored fact of this kind on the case."""
    import json

    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT e.state FROM cases_events e JOIN routing_cases r "
            "ON r.feedback_id = e.originator_id WHERE r.feedback_number = %s "
            "AND split_part(e.topic, '.', -1) = %s",
            (number, kind),
        ).fetchall()
    keys = []
    for (state,) in rows:
        data = json.loads(bytes(state))
        keys.append(f"{data.get('clock')}:{data.get('subject')}")
    return keys
