"""Every message the relay publishes names its feedback (`feedback-number` header) and, with
tracing on, carries the case's trace (`traceparent`, trace id = the feedback id), on
`feedback.events` and on the department's `dept.*` topic; a platform consumer of
`feedback.events` continues that trace."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import pytest
from aiokafka import AIOKafkaConsumer

from contracts import topics
from services.common.observability import FEEDBACK_NUMBER_HEADER, TRACEPARENT
from services.common.settings import Settings
from tests.conftest import registered_row, serve, wait_for, web_form
from tests.integration.test_observability import spans  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def _records_of(settings: Settings, topic: str, number: str) -> list[Any]:
    """The records of `topic` about feedback `number`, read from the start."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        found: list[Any] = []
        while batch := await consumer.getmany(timeout_ms=2000):
            found += [r for rs in batch.values() for r in rs]
    finally:
        await consumer.stop()
    return [r for r in found if json.loads(r.value)["feedback_number"] == number]


async def test_relayed_messages_name_the_feedback_and_carry_the_case_trace(
    settings: Settings,
    spans: Any,  # noqa: F811
) -> None:
    from opentelemetry.trace import SpanKind

    events_topic = settings.topic(topics.FEEDBACK_EVENTS)
    logistics_topic = settings.topic(topics.department_topic("logistics"))
    async with serve(settings, ("intake", "routing", "relay", "projections")) as running:
        response = await running.client.post(
            "/v1/feedback", json=web_form("订单说好三天送达，现在已经第七天了还没有收到货")
        )
        assert response.status_code == 202, response.text
        number = response.json()["feedback_number"]
        # Projected: the relay published the case's events and projections consumed them.
        await registered_row(running.client, number, status="assigned", department="logistics")
        relayed = {
            topic: await _records_of(settings, topic, number)
            for topic in (events_topic, logistics_topic)
        }

        def consumed() -> list[Any]:
            return [
                s
                for s in spans.get_finished_spans()
                if s.kind is SpanKind.CONSUMER
                and s.attributes.get("messaging.destination.name") == events_topic
            ]

        await wait_for(consumed, timeout=30, what="a projections span on feedback.events")
    case_id = UUID(json.loads(relayed[events_topic][0].value)["feedback_id"])
    for topic, records in relayed.items():
        assert records, f"no message about {number} on {topic}"
        for record in records:
            headers = {k: v.decode() for k, v in record.headers}
            assert headers[FEEDBACK_NUMBER_HEADER] == number, (topic, headers)
            body = json.loads(record.value)
            assert headers["event-id"] == f"{body['feedback_id']}:{body['version']}"
            assert headers["event-type"] == body["event_type"]  # consumers filter by it
            # W3C: version-traceid-parentid-flags; the case's trace is its feedback id.
            _, trace_id, _, _ = headers[TRACEPARENT].split("-")
            assert trace_id == case_id.hex, (topic, headers[TRACEPARENT])
    producers = [
        s
        for s in spans.get_finished_spans()
        if s.kind is SpanKind.PRODUCER and s.attributes.get("feedback.number") == number
    ]
    assert producers and all(s.context.trace_id == case_id.int for s in producers)
    # The platform's own consumer of feedback.events joined the case's trace.
    joined = [s for s in consumed() if s.context.trace_id == case_id.int]
    assert joined and all(s.parent is not None for s in joined)
    assert {s.parent.span_id for s in joined if s.parent} <= {p.context.span_id for p in producers}
    print(
        f"{number}: {len(relayed[events_topic])} message(s) on {events_topic}, "
        f"{len(relayed[logistics_topic])} on {logistics_topic}; trace {case_id.hex}, "
        f"{len(producers)} relay span(s), {len(joined)} projections span(s) in it"
    )
