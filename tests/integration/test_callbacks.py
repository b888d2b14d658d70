"""Callbacks (回访) and archive retention (issue #9), on real Kafka and PostgreSQL: tasks by
rule from the case events, the worklist per department, attempts, exactly once under
redelivery, the sweeps with an injected clock, and the purge respecting retention."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest

from contracts import topics
from services.common.settings import Settings
from services.handling import callbacks
from services.sla.calendar import load_calendars, parse_target
from tests.conftest import messages_in, registered_row, rewind_group, serve, wait_for, web_form

pytestmark = pytest.mark.integration
COMPLAINT = "账单里多扣了一笔39元的服务费，购买时没有任何人告知，要求退款"
CALENDAR = load_calendars().get(None)


def _rows(settings: Settings, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.database_url) as conn:
        return conn.execute(query, params).fetchall()


def _execute(settings: Settings, query: str, *params: Any) -> None:
    with psycopg.connect(settings.database_url) as conn:
        conn.execute(query, params)


def _tasks(settings: Settings) -> list[tuple[Any, ...]]:
    return _rows(
        settings, "SELECT id, type, state, due_at, attempts FROM callback_tasks ORDER BY id"
    )


async def _caught_up(settings: Settings) -> bool:
    total = await messages_in(settings, topics.FEEDBACK_EVENTS)
    stored = _rows(
        settings,
        "SELECT coalesce(sum(next_offset), 0) FROM consumer_positions WHERE consumer = %s",
        callbacks.CONSUMER,
    )[0][0]
    return total > 0 and int(stored) == total


async def test_callbacks_from_resolution_to_purge(settings: Settings) -> None:
    today = datetime.now(CALENDAR.zone).date()
    purchased = today - timedelta(days=3)
    async with serve(settings) as running:
        client = running.client
        form = web_form(COMPLAINT, purchase_date=purchased.isoformat(), product_model="旗舰扫地机")
        number = (await client.post("/v1/feedback", json=form)).json()["feedback_number"]
        other_number = (
            await client.post("/v1/feedback", json=web_form("请问保修期是多久？"))
        ).json()["feedback_number"]
        row = await registered_row(client, number, status="assigned")
        department, owner = row["department"], row["owner"]
        elsewhere = "billing" if department != "billing" else "logistics"
        agent = running.as_staff("agent", (department,), owner)
        stranger = running.as_staff("agent", (elsewhere,), "agent.elsewhere")
        quality = running.as_staff("quality")
        base = f"/v1/cases/{number}"
        assert (await client.post(f"{base}/accept", headers=agent)).status_code == 200
        before = datetime.now(UTC)
        resolved = {"result": "resolved", "summary": "已退回39元", "measures": "修复计费规则"}
        answer = await client.post(f"{base}/resolve", json=resolved, headers=agent)
        assert answer.status_code == 200, answer.text
        after = datetime.now(UTC)

        async def worklist(headers: dict[str, str], **query: str) -> list[dict[str, Any]]:
            got = await client.get("/v1/callbacks", params=query, headers=headers)
            assert got.status_code == 200, got.text
            return [t for t in got.json() if t["feedback_number"] == number]

        async def post_complaint() -> dict[str, Any] | None:
            tasks = await worklist(agent, type="post_complaint")
            return tasks[0] if tasks else None

        task = await wait_for(post_complaint, timeout=30, what="the post-complaint task")
        due = datetime.fromisoformat(task["due_at"])
        three = parse_target("3wd")
        assert CALENDAR.due(before, three) <= due <= CALENDAR.due(after, three)
        assert task["state"] == "open" and task["department"] == department
        assert task["priority"] is False and number in task["script"]
        assert "张伟" not in str(task) and "13812345678" not in str(task)
        # After-sales (+7 to +15 days) and product-in-use (high-value model, one month).
        mine = {t["type"]: t for t in await worklist(agent)}
        assert set(mine) == {"post_complaint", "after_sales", "product_in_use"}, mine
        sales_due = datetime.fromisoformat(mine["after_sales"]["due_at"]).astimezone(CALENDAR.zone)
        assert sales_due.date() == purchased + timedelta(days=15)
        window = datetime.fromisoformat(mine["after_sales"]["window_from"])
        assert window.astimezone(CALENDAR.zone).date() == purchased + timedelta(days=7)
        in_use = datetime.fromisoformat(mine["product_in_use"]["due_at"])
        assert in_use.astimezone(CALENDAR.zone).date() == purchased + timedelta(days=37)
        # Department scoping: not another department's agent; quality sees all.
        assert await worklist(stranger) == []
        assert len(await worklist(quality)) == 3
        attempts = f"/v1/callbacks/{task['id']}/attempts"
        assert (
            await client.get(f"/v1/callbacks/{task['id']}", headers=stranger)
        ).status_code == 403
        assert (
            await client.post(attempts, json={"reached": True, "outcome": "ok"}, headers=stranger)
        ).status_code == 403
        assert (
            await client.post(
                "/v1/callbacks/00000000-0000-0000-0000-000000000001/attempts",
                json={"reached": True, "outcome": "ok"},
                headers=agent,
            )
        ).status_code == 404
        # Not convenient: a time is required, and the task is due then.
        busy = {"reached": True, "outcome": "not_convenient"}
        assert (await client.post(attempts, json=busy, headers=agent)).status_code == 422
        assert (
            await client.post(attempts, json={"reached": True, "outcome": "x", "satisfaction": 6},
                              headers=agent)
        ).status_code == 422  # fmt: skip
        later = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
        moved = await client.post(
            attempts, json=busy | {"reschedule_to": later.isoformat()}, headers=agent
        )
        assert moved.status_code == 200, moved.text
        assert moved.json()["state"] == "rescheduled" and moved.json()["attempts"] == 1
        assert datetime.fromisoformat(moved.json()["due_at"]) == later
        assert [t["state"] for t in await worklist(agent, state="rescheduled")] == ["rescheduled"]
        # Reached: done; a second attempt is refused.
        reached = {
            "reached": True,
            "outcome": "已落实，客户满意",
            "customer_words": "退款收到了，电话13812345678随时可联系",
            "expectation": "希望以后不要再出错",
            "emotion": "calm",
            "satisfaction": 5,
        }
        done = await client.post(attempts, json=reached, headers=agent)
        assert done.status_code == 200, done.text
        assert done.json()["state"] == "done" and done.json()["attempts"] == 2
        assert (await client.post(attempts, json=reached, headers=agent)).status_code == 409
        words = _rows(
            settings, "SELECT customer_words FROM callback_attempts WHERE satisfaction = 5"
        )
        assert "13812345678" not in words[0][0]
        await registered_row(client, other_number, status="assigned")
        await wait_for(lambda: _caught_up(settings), timeout=30, what="callbacks caught up")
        tasks_before = _tasks(settings)

    # Redelivery: the group reads feedback.events again from the start, and the stored
    # positions are gone too; the case versions keep every task as it was.
    await rewind_group(settings, callbacks.GROUP, topics.FEEDBACK_EVENTS)
    _execute(settings, "DELETE FROM consumer_positions WHERE consumer = %s", callbacks.CONSUMER)
    async with serve(settings) as running:
        await wait_for(lambda: _caught_up(settings), timeout=60, what="callbacks read again")
        assert _tasks(settings) == tasks_before

    # Retention: the complaint archived 4 years ago goes; the other, archived 2 years ago
    # by the read model, stays even though the callback table says older.
    ids = dict(_rows(settings, "SELECT feedback_number, feedback_id FROM registrations"))
    old, young = ids[number], ids[other_number]
    _execute(settings, "UPDATE registrations SET status = 'archived', "
             "updated_at = now() - interval '4 years' WHERE feedback_id = %s", old)  # fmt: skip
    _execute(settings, "UPDATE registrations SET status = 'archived', "
             "updated_at = now() - interval '2 years' WHERE feedback_id = %s", young)  # fmt: skip
    _execute(settings, "UPDATE callback_cases SET archived_at = now() - interval '4 years'")
    env = {"DATABASE_URL": settings.database_url, "PATH": os.environ.get("PATH", "/usr/bin")}
    dry = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "feedback_cli.main", "archive", "purge", "--dry-run"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert "registrations: would remove 1" in dry.stdout
    assert "callback_tasks: would remove 3" in dry.stdout
    assert "callback_attempts: would remove 2" in dry.stdout
    assert len(_rows(settings, "SELECT 1 FROM registrations")) == 2
    counts = callbacks.purge(settings.database_url, 1095 + 366, datetime.now(UTC), dry_run=False)
    assert counts == {"registrations": 1, "case_clocks": 5, "case_search": 1,
                      "callback_cases": 1, "callback_tasks": 3, "callback_attempts": 2}  # fmt: skip
    # The search index and clocks of the purged case go with it; facts stay for reports.
    assert _rows(settings, "SELECT count(*) FROM case_search WHERE feedback_id = %s", old) == [(0,)]
    assert _rows(settings, "SELECT count(*) FROM case_facts WHERE feedback_id = %s", old) == [(1,)]
    assert _rows(settings, "SELECT feedback_id FROM registrations") == [(young,)]
    assert _rows(settings, "SELECT feedback_id FROM callback_cases") == [(young,)]
    assert _rows(settings, "SELECT count(*) FROM callback_tasks WHERE feedback_id = %s", old) == [
        (0,)
    ]
    again = callbacks.purge(settings.database_url, 1095, datetime.now(UTC), dry_run=False)
    assert again["registrations"] == 0 and again["callback_cases"] == 0


async def test_the_sweeps_create_each_task_once(settings: Settings) -> None:
    now = datetime(2024, 4, 15, 3, tzinfo=UTC)

    class Clock:
        def now(self) -> datetime:
            return now

    async with serve(settings) as running:
        platform = running.platform
        assert platform.pool is not None and platform.callback_rules is not None
        rules = platform.callback_rules
        # The platform's own sweep runs on the real clock: stop it, this test owns the clock.
        for task in platform._tasks:
            if task.get_name() == "callback-sweep":
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        silent_since = datetime(2024, 1, 5, tzinfo=UTC)
        _execute(settings, "INSERT INTO callback_customers VALUES "
                 "('客户-2024-0001', 'normal', 'billing', 'F20240105-0001', %s), "
                 "('客户-2024-0002', 'vip', 'logistics', 'F20240105-0002', %s), "
                 "('客户-2024-0003', 'normal', 'billing', 'F20240401-0003', %s)",
                 silent_since, silent_since, datetime(2024, 4, 1, tzinfo=UTC))  # fmt: skip
        for serial, closed in (("0001", date(2024, 2, 10)), ("0001", date(2024, 3, 1)),
                               ("0003", date(2024, 4, 2))):  # fmt: skip
            _execute(
                settings,
                "INSERT INTO callback_cases (feedback_id, feedback_number, customer_ref, "
                "customer_tier, department, last_version, last_event_at, closed_at) "
                "VALUES (gen_random_uuid(), %s, %s, 'normal', 'billing', 9, %s, %s)",
                f"F{closed:%Y%m%d}-{serial}", f"客户-2024-{serial}",
                datetime.combine(closed, datetime.min.time(), UTC),
                datetime.combine(closed, datetime.min.time(), UTC),
            )  # fmt: skip
        calendar = load_calendars().get(None)
        first = await callbacks.sweep(platform.pool, rules, calendar, Clock().now())
        assert first == {"churn_warning": 2, "quarterly_survey": 1}
        # A rerun and two instances at once create nothing more.
        second = await asyncio.gather(
            callbacks.sweep(platform.pool, rules, calendar, Clock().now()),
            callbacks.sweep(platform.pool, rules, calendar, Clock().now()),
        )
        assert all(not any(c.values()) for c in second)
        rows = _rows(settings, "SELECT type, customer_ref, priority, due_at, department "
                     "FROM callback_tasks ORDER BY type, customer_ref")  # fmt: skip
        assert [(r[0], r[1], r[2]) for r in rows] == [
            ("churn_warning", "客户-2024-0001", False),
            ("churn_warning", "客户-2024-0002", True),
            ("quarterly_survey", "客户-2024-0001", False),
        ]
        # The high-value churn risk within 24 h; the survey two weeks into the quarter.
        assert rows[1][3] == now + timedelta(hours=24)
        assert rows[2][3].astimezone(calendar.zone).date() == date(2024, 4, 15)
        sup = running.as_staff("supervisor", ("billing",), username="sup.b")
        listed = (await running.client.get("/v1/callbacks", headers=sup)).json()
        assert {t["type"] for t in listed} == {"churn_warning", "quarterly_survey"}
        assert all(t["department"] == "billing" for t in listed)
