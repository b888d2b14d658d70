"""Observability on real Kafka and PostgreSQL: /metrics (consumer lag, intake latency,
FastStream's consumer metrics), JSON logs naming the feedback in a consumer, and one trace
from the HTTP request across the Kafka hop to the routing consumer."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from faststream.kafka import KafkaMessage
from prometheus_client import REGISTRY, generate_latest

from services.common import observability
from services.common.bus import batch_subscriber, ensure_topics, make_broker, publish_records
from services.common.metrics import ConsumerLag
from services.common.observability import FEEDBACK_NUMBER_HEADER, JsonFormatter
from services.common.settings import Settings
from tests.conftest import serve, wait_for, web_form

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _samples(text: str, name: str, **labels: str) -> list[float]:
    """Values of the series `name` whose labels include `labels`, from exposition text."""
    found = []
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            found.append(float(match.group(2)))
    return found


def _lag(topic: str) -> list[float]:
    return _samples(generate_latest(REGISTRY).decode(), "feedback_consumer_lag", topic=topic)


async def test_lag_gauge_falls_to_zero_once_the_consumer_catches_up(settings: Settings) -> None:
    settings = settings.model_copy(update={"consumer_batch_size": 5})
    topic = settings.topic("observability.lag")
    await ensure_topics(settings, [topic])
    broker = make_broker(settings, "lag-test")
    release = asyncio.Event()
    handled: list[int] = []

    @batch_subscriber(broker, settings, "observability.lag", "lag-test")
    async def slow(body: list[Any], msg: KafkaMessage) -> None:
        await release.wait()  # the consumer holds its first batch: the rest waits
        handled.append(len(body))

    lag = ConsumerLag(broker)
    await broker.start()
    try:
        await publish_records(
            broker, settings, [(topic, str(i).encode(), b"{}") for i in range(40)]
        )

        async def behind() -> float:
            await lag.sample()
            return sum(_lag(topic))

        waiting = await wait_for(behind, timeout=60, what="lag above 0", interval=0.2)
        assert 0 < waiting <= 40
        release.set()

        async def caught_up() -> bool:
            await lag.sample()
            values = _lag(topic)
            return sum(handled) == 40 and bool(values) and sum(values) == 0

        await wait_for(caught_up, timeout=60, what="lag back to 0", interval=0.2)
    finally:
        release.set()
        await broker.stop()
    # A stopped consumer's partitions are no longer this process's to report.
    await lag.sample()
    assert _lag(topic) == []


async def test_metrics_endpoint_counts_intake_and_shows_routing_caught_up(
    settings: Settings,
) -> None:
    async with serve(settings, ("intake", "routing")) as running:
        before = await running.client.get("/metrics")
        counted = _samples(
            before.text,
            "feedback_intake_accept_seconds_count",
            channel="web_form",
            outcome="accepted",
        )
        response = await running.client.post("/v1/feedback", json=web_form())
        assert response.status_code == 202, response.text
        topic = settings.topic("feedback.received")

        async def scraped() -> str | None:
            text = (await running.client.get("/metrics")).text
            lags = _samples(text, "feedback_consumer_lag", group="routing", topic=topic)
            received = _samples(
                text,
                "faststream_received_processed_messages_total",
                app_name="feedback",
                # FastStream names a Kafka handler by its topic (not its group).
                handler=topic,
                status="acked",
            )
            # The lag sampler runs every 5 s: it has seen the routing consumer at the end.
            return text if lags and sum(lags) == 0 and sum(received) >= 1 else None

        text = await wait_for(
            scraped, timeout=60, what="routing caught up in /metrics", interval=0.5
        )
        after = _samples(
            text, "feedback_intake_accept_seconds_count", channel="web_form", outcome="accepted"
        )
        assert sum(after) == sum(counted) + 1
        assert "feedback_dead_letters_total" in text or "# HELP feedback_dead_letters" in text
        assert "# HELP feedback_sla_clock_events_total" in text
        unauthorised = await running.client.get("/metrics", headers={"Authorization": ""})
        assert unauthorised.status_code == 401


async def test_consumer_logs_are_json_and_name_the_feedback(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEEDBACK_LOG_FORMAT", "json")
    topic = settings.topic("observability.logs")
    await ensure_topics(settings, [topic])
    broker = make_broker(settings, "log-test")  # gets the log-context middleware
    logger = logging.getLogger("test.observability.consumer")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    handled = asyncio.Event()

    @batch_subscriber(broker, settings, "observability.logs", "log-test")
    async def consume(body: list[Any], msg: KafkaMessage) -> None:
        logger.warning("handled %d", len(body))
        handled.set()

    await broker.start()
    try:
        await publish_records(
            broker, settings, [(topic, b"k", b"{}", {FEEDBACK_NUMBER_HEADER: "F20261129-0042"})]
        )
        await asyncio.wait_for(handled.wait(), 60)
    finally:
        logger.removeHandler(handler)
        await broker.stop()
    [line] = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert line["message"] == "handled 1"
    assert line["feedback_number"] == "F20261129-0042"
    assert line["level"] == "WARNING" and line["logger"] == "test.observability.consumer"


@pytest.fixture
def spans() -> Iterator[Any]:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        # The global provider can be set once per process: later tests add their exporter.
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    observability.enable_tracing_for_tests()
    try:
        yield exporter
    finally:
        observability.disable_tracing_for_tests()
        processor.shutdown()


async def test_one_trace_from_the_http_request_across_kafka_to_routing(
    settings: Settings, spans: Any
) -> None:
    from opentelemetry.trace import SpanKind

    async with serve(settings, ("intake", "routing")) as running:
        response = await running.client.post("/v1/feedback", json=web_form())
        assert response.status_code == 202, response.text
        topic = settings.topic("feedback.received")

        def crossed() -> tuple[Any, Any] | None:
            finished = spans.get_finished_spans()
            servers = [
                s
                for s in finished
                if s.kind is SpanKind.SERVER and s.attributes.get("http.route") == "/v1/feedback"
            ]
            consumers = [
                s
                for s in finished
                if s.kind is SpanKind.CONSUMER
                and s.attributes.get("messaging.destination.name") == topic
            ]
            return (servers[0], consumers[0]) if servers and consumers else None

        server, consumer = await wait_for(crossed, timeout=60, what="intake and routing spans")
    assert consumer.context.trace_id == server.context.trace_id
    assert consumer.parent is not None and consumer.parent.trace_id == server.context.trace_id
    assert consumer.attributes["messaging.system"] == "kafka"
