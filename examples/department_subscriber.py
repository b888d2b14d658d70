"""A department's own subscriber: copy this to receive only your department's cases.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 DEPARTMENT=logistics \\
        .venv/bin/python -m examples.department_subscriber

It depends on `contracts` only: it reads `dept.<department>` with its own consumer group
and gets every event of the cases routed to the department (routed, assigned, accepted,
co-handling requests, priority changes), one case's events in order.

Exactly once: the platform may deliver an event again (its relay repeats at most the last
section it published after a crash; Kafka redelivers after a rebalance). Every event names
itself: the case (`feedback_id`) and its `version` in the body, `event-id` and
`case-version` in the headers, versions rising within a case. `SeenEvents` keeps, in the
department's own SQLite file, each case's last version handled, and commits that mark in
the same transaction as whatever the handler wrote there: a repeat is dropped, and a crash
between the handler and the mark undoes both.

Tracing (off unless asked, as in the platform's services): with the standard `OTEL_*`
variables naming an exporter (`OTEL_TRACES_EXPORTER=otlp|console`, or an
`OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`), handling each message is a CONSUMER span continuing
the trace in its `traceparent` header. The relay puts the case's trace there (its trace id
is the feedback id), so the department's work shows in the case's one trace, and what the
handler does under it (its own spans, calls it makes with instrumented clients) joins it.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faststream import FastStream
from faststream.kafka import KafkaBroker

from contracts import topics
from contracts.events import CaseEvent, FeedbackRouted, OwnerAssigned, case_event_adapter

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.trace import TracerProvider


class SeenEvents:
    """Each case's last version handled, beside the department's own data (SQLite)."""

    def __init__(self, path: Path | str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS seen_events (case_id TEXT PRIMARY KEY, version INTEGER)"
        )

    async def handle(
        self,
        event: CaseEvent,
        on_event: Callable[[CaseEvent, sqlite3.Connection], Awaitable[None]],
    ) -> bool:
        """Handle `event` unless seen; the handler's writes on the connection and the mark
        commit together. Returns whether it was handled."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            row = self.db.execute(
                "SELECT version FROM seen_events WHERE case_id = ?", (str(event.feedback_id),)
            ).fetchone()
            if row is not None and row[0] >= event.version:
                self.db.execute("ROLLBACK")
                return False
            await on_event(event, self.db)
            self.db.execute(
                "INSERT INTO seen_events (case_id, version) VALUES (?, ?) "
                "ON CONFLICT (case_id) DO UPDATE SET version = excluded.version",
                (str(event.feedback_id), event.version),
            )
            self.db.execute("COMMIT")
            return True
        except BaseException:
            self.db.execute("ROLLBACK")
            raise


def build_subscriber(
    bootstrap_servers: str,
    department: str,
    on_event: Callable[[CaseEvent], Awaitable[None]],
    topic_prefix: str = "",
    seen: SeenEvents | None = None,
    tracer_provider: TracerProvider | None = None,
) -> KafkaBroker:
    """The department's consumer; with `seen`, each event is handled once; with a
    `tracer_provider`, each is handled in a span continuing its message's trace."""
    middlewares: list[Any] = []
    if tracer_provider is not None:
        # FastStream's own: extracts `traceparent` from the message's headers and runs the
        # handler in a CONSUMER span, its child, made current.
        from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware

        middlewares.append(KafkaTelemetryMiddleware(tracer_provider=tracer_provider))
    broker = KafkaBroker(bootstrap_servers, middlewares=middlewares)

    async def handle(event: CaseEvent, _: sqlite3.Connection) -> None:
        await on_event(event)

    @broker.subscriber(
        f"{topic_prefix}{topics.department_topic(department)}",
        group_id=f"department-{department}",
        auto_offset_reset="earliest",
    )
    async def on_case_event(body: dict[str, Any]) -> None:
        event = case_event_adapter.validate_python(body)
        if seen is None:
            await on_event(event)
        else:
            await seen.handle(event, handle)

    return broker


def tracing_requested(environ: Mapping[str, str] = os.environ) -> bool:
    """The platform's rule (services/common/observability.py): an exporter named or an OTLP
    endpoint set, and the SDK not disabled."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def tracer_provider_from_environment(
    department: str, environ: Mapping[str, str] = os.environ
) -> SdkTracerProvider | None:
    """A tracer provider exporting as `OTEL_*` says (OTLP over HTTP/protobuf, or the
    console), or None when tracing is not asked for. The SDK reads the other variables
    (endpoint, headers, `OTEL_SERVICE_NAME`, default `department-<department>`)."""
    if not tracing_requested(environ):
        return None
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override this default name.
    resource = Resource.create({"service.name": f"department-{department}"}).merge(
        OTELResourceDetector().detect()
    )
    provider = SdkTracerProvider(resource=resource)
    for name in (environ.get("OTEL_TRACES_EXPORTER") or "otlp").split(","):
        match name.strip().lower():
            case "otlp":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )

                provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            case "console":
                provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
            case other:
                raise ValueError(f"OTEL_TRACES_EXPORTER={other!r}: choose otlp, console or none")
    return provider


async def print_event(event: CaseEvent) -> None:
    match event:
        case FeedbackRouted():
            print(f"{event.feedback_number}: routed to us ({event.reason})")
        case OwnerAssigned():
            print(f"{event.feedback_number}: owner {event.owner}")
        case _:
            print(f"{event.feedback_number}: {type(event).__name__}")


if __name__ == "__main__":
    department = os.environ.get("DEPARTMENT", "customer_service")
    tracer_provider = tracer_provider_from_environment(department)
    broker = build_subscriber(
        os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        department,
        print_event,
        os.environ.get("FEEDBACK_TOPIC_PREFIX", ""),
        SeenEvents(os.environ.get("SEEN_EVENTS_DB", "department_events.sqlite3")),
        tracer_provider,
    )
    try:
        asyncio.run(FastStream(broker).run())
    finally:
        if tracer_provider is not None:
            tracer_provider.shutdown()  # exports the spans still waiting in the batch
