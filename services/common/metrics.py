"""Prometheus metrics of this process, served at `GET /metrics` (text exposition format).

Counters live in the process: with several uvicorn workers each answers for itself.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from aiokafka.errors import IllegalStateError, KafkaError
from fastapi import APIRouter, Response
from faststream._internal.middlewares import BaseMiddleware
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from services.access.http import require
from services.access.roles import Actor

log = logging.getLogger(__name__)

DEAD_LETTERS = Counter(
    "feedback_dead_letters",
    "Messages set aside as dead letters (kept with the reason) instead of being processed.",
    ["source"],
)


def count_dead_letters(source: str, count: int = 1) -> None:
    """Count dead letters newly recorded by `source` (a consumer, a channel)."""
    if count > 0:
        DEAD_LETTERS.labels(source=source).inc(count)


CONSUMER_LAG = Gauge(
    "feedback_consumer_lag",
    "Records in the partition after the consumer's position (end offset minus position), "
    "sampled every few seconds; a batch being handled no longer counts.",
    ["group", "topic", "partition"],
)

# From the request to the answer that it is accepted (Kafka acknowledged, or durably
# buffered): what a customer waits for. Buckets around the group commit's few ms to the
# publish timeout.
INTAKE_LATENCY = Histogram(
    "feedback_intake_accept_seconds",
    "Time to accept a feedback (numbered and acknowledged by Kafka, or durably buffered), "
    "by channel and outcome.",
    ["channel", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

# Refused before anything was recorded because too many registrations were waiting
# (Settings.intake_max_pending): answered 503 with Retry-After, or SMTP 451.
INTAKE_REFUSED_BUSY = Counter(
    "feedback_intake_refused_busy",
    "Feedback refused by intake because too many registrations were waiting (HTTP 503 "
    "with Retry-After, SMTP 451), by channel.",
    ["channel"],
)

CLOCK_EVENTS = Counter(
    "feedback_sla_clock_events",
    "SLA clock warnings and breaches the sla scheduler recorded on cases.",
    ["kind", "clock"],
)


def count_clock_event(kind: str, clock_key: str) -> None:
    """A warning or breach now stored on a case (`clock_key` is `clock[:subject]`; the
    subject, a department, stays out of the labels)."""
    CLOCK_EVENTS.labels(kind=kind, clock=clock_key.split(":", 1)[0]).inc()


def broker_middlewares() -> list[Any]:
    """What every broker of the platform wraps consuming and publishing in. FastStream's
    own Prometheus middleware around consuming: messages received, processed (by status),
    errors, in progress, processing time and sizes per handler; in
    the same registry as the rest, so one scrape of /metrics has it all."""
    from faststream.kafka.prometheus import KafkaPrometheusMiddleware

    from services.common import observability

    middlewares: list[Any] = [
        ConsumedOnly(KafkaPrometheusMiddleware(registry=REGISTRY, app_name="feedback"))
    ]
    if observability.tracing_enabled() or observability.json_logs_requested():
        # Consumer spans and the log context cost a look at every record's headers: only
        # when someone reads them.
        middlewares.append(observability.ConsumeContext)
    return middlewares


class ConsumedOnly:
    """A broker middleware around consuming only. FastStream's Prometheus middleware also
    times every publish: about 12 us a message here (in-memory broker), several messages
    per feedback, on a path whose whole budget is ~2 ms of CPU; the producers' outcomes are
    counted where they matter (intake's histogram, dead letters) instead."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, msg: Any, /, *, context: Any) -> Any:
        if msg is None:  # FastStream asks for a publish scope
            return BaseMiddleware(None, context=context)  # passes the publish through
        return self.inner(msg, context=context)


class ConsumerLag:
    """Sets the lag gauge from every running consumer of a broker: its position in each
    assigned partition against the partition's end offset (one ListOffsets request per
    consumer and round; positions are local). Partitions no longer assigned here (a
    rebalance gave them to another instance) drop their series."""

    def __init__(self, broker: Any, every_s: float = 5.0) -> None:
        self.broker = broker
        self.every_s = every_s
        self._series: set[tuple[str, str, str]] = set()

    async def sample(self) -> None:
        seen: set[tuple[str, str, str]] = set()
        for subscriber in self.broker.subscribers:
            consumer = getattr(subscriber, "consumer", None)
            group = getattr(subscriber, "group_id", None)
            if consumer is None or not group:
                continue
            assigned = list(consumer.assignment())
            if not assigned:
                continue
            ends = await consumer.end_offsets(assigned)
            for partition in assigned:
                try:
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                    # cancellation that arrives as the inner call completes, and this loop
                    # would then outlive the process's shutdown.
                    async with asyncio.timeout(1.0):
                        position = await consumer.position(partition)
                except (TimeoutError, IllegalStateError, KafkaError) as error:
                    log.debug("no position for %s yet: %s", partition, error)
                    continue  # revoked, or its position being reset: the next round
                labels = (group, partition.topic, str(partition.partition))
                CONSUMER_LAG.labels(*labels).set(max(0, ends[partition] - position))
                seen.add(labels)
        for labels in self._series - seen:
            CONSUMER_LAG.remove(*labels)
        self._series = seen

    async def run(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception:
                # Kafka away or a rebalance under way: the gauge keeps its last values.
                log.debug("sampling consumer lag failed; retrying", exc_info=True)
            await asyncio.sleep(self.every_s)


def metrics_router() -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/metrics", response_class=Response)
    async def metrics(_: Annotated[Actor, require("metrics.read")]) -> Response:
        """Prometheus text format (scrape with a bearer token of a quality or admin user)."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router
