"""The outbox relay never wedges (#13): a stored event it cannot decode or map becomes a
dead letter (table, topic, metric) and the events after it are published; a case event for
a department without a `dept.*` topic still reaches `feedback.events`, the department is
skipped and counted."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
from prometheus_client import REGISTRY

from contracts import topics
from services.cases.domain import Case
from services.cases.store import CaseStore
from services.common.settings import Settings
from tests.conftest import messages_in, serve, wait_for
from tests.integration.test_poison_events import (
    dead_letter_rows,
    dead_letters_on_topic,
    feedback_received,
)

pytestmark = pytest.mark.integration


def store_case(settings: Settings, number: str, department: str | None = None) -> None:
    store = CaseStore(settings.database_url)
    try:
        message = feedback_received(number)
        case = Case.register(message.feedback_id, message)
        if department is not None:
            case.route(department, "test")
        store.save(case)
    finally:
        store.close()


def store_poison(settings: Settings) -> None:
    """A stored event no mapper can decode (its class does not exist) and one whose state
    is not JSON: both fail the same way on every attempt."""
    with psycopg.connect(settings.database_url) as conn:
        for topic, state in (
            ("services.cases.domain:Case.NoSuchEvent", b'{"timestamp": "2026-01-01"}'),
            ("services.cases.domain:Case.Registered", b"\xff\xfe not an event"),
        ):
            conn.execute(
                "INSERT INTO cases_events (originator_id, originator_version, topic, state) "
                "VALUES (%s, 1, %s, %s)",
                (uuid.uuid4(), topic, state),
            )


def skipped(department: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "feedback_relay_skipped_department_messages_total", {"department": department}
        )
        or 0.0
    )


async def test_poison_stored_events_are_dead_lettered_and_the_relay_goes_on(
    settings: Settings,
) -> None:
    store_case(settings, "F20261129-0001")  # makes the store's tables
    async with serve(settings, services=("relay",)):
        await wait_for(
            lambda: _at_least(messages_in(settings, topics.FEEDBACK_EVENTS), 1),
            timeout=20,
            what="the first case relayed",
        )
        relayed = await messages_in(settings, topics.FEEDBACK_EVENTS)
        store_poison(settings)
        store_case(settings, "F20261129-0002")  # behind the poison
        await wait_for(
            lambda: _at_least(messages_in(settings, topics.FEEDBACK_EVENTS), relayed + 1),
            timeout=20,
            what="the case stored after the poison relayed",
        )
        rows = await asyncio.to_thread(dead_letter_rows, settings, "relay")
        assert len(rows) == 2
        assert all(r["metadata"]["topic"] == "cases_events" for r in rows)
        reasons = " ".join(r["reason"] for r in rows)
        assert "NoSuchEvent" in reasons or "Topic" in reasons, reasons
    on_topic = [d for d in await dead_letters_on_topic(settings) if d.source == "relay"]
    assert {d.dead_letter_id for d in on_topic} == {r["dead_letter_id"] for r in rows}


async def test_a_department_without_a_topic_does_not_stall_the_relay(settings: Settings) -> None:
    before = skipped("no-such-department")
    store_case(settings, "F20261129-0003", department="no-such-department")
    store_case(settings, "F20261129-0004")
    async with serve(settings, services=("relay",)):
        # Registered + Routed of the first case, Registered of the second.
        await wait_for(
            lambda: _at_least(messages_in(settings, topics.FEEDBACK_EVENTS), 3),
            timeout=20,
            what="every event on feedback.events",
        )
        assert skipped("no-such-department") == before + 1


async def _at_least(count: object, wanted: int) -> bool:
    assert asyncio.iscoroutine(count)
    return int(await count) >= wanted
