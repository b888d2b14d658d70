"""Correspondence about a case routing has not stored yet never blocks its partition (#13):
it is retried a few seconds, then parked; the correspondence behind it is applied; the
parked message is applied once its case is stored, and only once."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import psycopg
import pytest

from contracts import topics
from contracts.events import CustomerCorrespondence, FeedbackReceived
from services.cases.store import CaseStore
from services.common.bus import ensure_topics, platform_topics
from services.common.settings import Settings
from tests.conftest import serve, wait_for
from tests.integration.test_poison_events import feedback_received, send

pytestmark = pytest.mark.integration


def letter(feedback: FeedbackReceived, text: str) -> bytes:
    return (
        CustomerCorrespondence(
            correspondence_id=uuid.uuid4(),
            feedback_id=feedback.feedback_id,
            feedback_number=feedback.feedback_number,
            channel="email",
            received_at=datetime.now(UTC),
            text=text,
        )
        .model_dump_json()
        .encode()
    )


def correspondence_of(settings: Settings, feedback: FeedbackReceived) -> list[str] | None:
    """The texts a stored case keeps from its customer, or None before it is stored."""
    store = CaseStore(settings.database_url, create_table=False)
    try:
        if not store.existing([feedback.feedback_id]):
            return None
        return [str(c["text"]) for c in store.get_case(feedback.feedback_id).correspondence]
    finally:
        store.close()


def parked(settings: Settings) -> int:
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM routing_parked_correspondence").fetchone()
    assert row is not None
    return int(row[0])


async def test_correspondence_before_its_case_is_parked_and_applied_later(
    settings: Settings,
) -> None:
    await ensure_topics(settings, platform_topics(settings))
    stored = feedback_received("F20261129-0101", description="冰箱不制冷，已经三天了")
    late = feedback_received("F20261129-0102", description="洗衣机漏水，地板都湿了")
    await send(settings, topics.FEEDBACK_RECEIVED, [stored.model_dump_json().encode()])
    # In one partition: two letters about a case not stored yet, then one about a stored case.
    await send(
        settings,
        topics.CORRESPONDENCE,
        [
            letter(late, "第一封：补充照片"),
            letter(late, "第二封：还是漏水"),
            letter(stored, "补充说明"),
        ],
    )

    async with serve(settings, services=("routing",)):
        # Without parking the first letter blocks the partition and this never happens.
        await wait_for(
            lambda: asyncio.to_thread(correspondence_of, settings, stored),
            timeout=30,
            what="the letter behind the parked ones applied",
        )
        assert await asyncio.to_thread(parked, settings) == 2

        # Now its case comes: the parked letters are applied, in order, and leave the park.
        await send(settings, topics.FEEDBACK_RECEIVED, [late.model_dump_json().encode()])
        texts = await wait_for(
            lambda: asyncio.to_thread(correspondence_of, settings, late),
            timeout=30,
            what="the late case stored with its letters",
            interval=0.2,
        )
        if len(texts) < 2:
            texts = await wait_for(
                lambda: _with_two(settings, late), timeout=15, what="both parked letters applied"
            )
        assert texts == ["第一封：补充照片", "第二封：还是漏水"]
        await wait_for(lambda: parked(settings) == 0, timeout=10, what="the park emptied")
    assert await asyncio.to_thread(correspondence_of, settings, stored) == ["补充说明"]


async def _with_two(settings: Settings, feedback: FeedbackReceived) -> list[str] | None:
    texts = await asyncio.to_thread(correspondence_of, settings, feedback)
    return texts if texts is not None and len(texts) >= 2 else None
