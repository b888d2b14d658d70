"""Logs and traces of this process: structured JSON logs (opt-in) and OpenTelemetry tracing
across the HTTP and Kafka hops (off unless the standard `OTEL_*` variables ask for it).

- `FEEDBACK_LOG_FORMAT=json`: one JSON object a line (time, level, logger, message, and the
  feedback number and trace id when known); the default stays the human-readable line.
- Tracing is on when `OTEL_TRACES_EXPORTER` names an exporter (`otlp`, `console`) or
  `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, and
  `OTEL_SDK_DISABLED` is not true. The SDK reads the rest of `OTEL_*` itself (service name,
  resource attributes, sampler, OTLP headers). Off, nothing is imported or wrapped: the
  HTTP app is not instrumented, the broker gets no tracing middleware and producers add no
  headers.
- The W3C trace context (`traceparent`) travels in Kafka message headers: intake captures
  it in the request (its publishing runs in a batch task that has no request context),
  other producers inject their current one, and consumers start their span as its child.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from faststream._internal.middlewares import BaseMiddleware

if TYPE_CHECKING:
    from fastapi import FastAPI
    from faststream.message import StreamMessage
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)

# Set by intake on the producer side: lets a consumer's logs name the feedback without
# decoding the body.
FEEDBACK_NUMBER_HEADER = "feedback-number"
TRACEPARENT = "traceparent"


# -- log context ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogContext:
    feedback_number: str | None = None
    trace_id: str | None = None


# LogContext is frozen: the shared default cannot be changed through the variable.
_log_context: contextvars.ContextVar[LogContext] = contextvars.ContextVar(
    "feedback_log_context",
    default=LogContext(),  # noqa: B039
)


def bind(
    feedback_number: str | None = None, trace_id: str | None = None
) -> contextvars.Token[LogContext]:
    """What the logs of this task (a request, a consumed batch) name from now on; what is
    not given stays as bound before."""
    before = _log_context.get()
    return _log_context.set(
        LogContext(feedback_number or before.feedback_number, trace_id or before.trace_id)
    )


def unbind(token: contextvars.Token[LogContext]) -> None:
    _log_context.reset(token)


def log_context() -> LogContext:
    return _log_context.get()


class JsonFormatter(logging.Formatter):
    """One JSON object per record, for log pipelines (Loki, Elasticsearch, Cloud Logging)."""

    def format(self, record: logging.LogRecord) -> str:
        bound = _log_context.get()
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        # `extra={"feedback_number": ...}` on a call wins over the task's binding.
        number = getattr(record, "feedback_number", None) or bound.feedback_number
        if number:
            entry["feedback_number"] = number
        trace_id = bound.trace_id or _current_trace_id()
        if trace_id:
            entry["trace_id"] = trace_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def json_logs_requested(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get("FEEDBACK_LOG_FORMAT", "text").strip().lower() == "json"


def configure_logging(level: int, json_format: bool) -> None:
    """The root handler on stderr, in the chosen format (the CLI calls this first)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_format else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)


# -- tracing --------------------------------------------------------------------------------

_tracing = False


def tracing_requested(environ: Mapping[str, str] = os.environ) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def tracing_enabled() -> bool:
    return _tracing


def configure_tracing(service_name: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Turn tracing on if the environment asks for it; True when it is on.

    A tracer provider someone set already (a test's, with an in-memory exporter) is kept;
    otherwise one is made with the exporter `OTEL_TRACES_EXPORTER` names (default otlp, over
    HTTP/protobuf). Idempotent: several apps in one process share the provider."""
    global _tracing
    if _tracing:
        return True
    if not tracing_requested(environ):
        return False
    from opentelemetry import trace
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override this default name.
        resource = Resource.create({"service.name": service_name}).merge(
            OTELResourceDetector().detect()
        )
        provider = TracerProvider(resource=resource)
        for exporter in _exporters(environ):
            provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
    _tracing = True
    log.info("OpenTelemetry tracing on (service %s)", service_name)
    return True


def enable_tracing_for_tests() -> None:
    """Tracing on with whatever provider the caller set (tests with an in-memory exporter)."""
    global _tracing
    _tracing = True


def disable_tracing_for_tests() -> None:
    global _tracing
    _tracing = False


def _exporters(environ: Mapping[str, str]) -> list[SpanExporter]:
    names = [
        n.strip().lower()
        for n in (environ.get("OTEL_TRACES_EXPORTER") or "otlp").split(",")
        if n.strip()
    ]
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "otlp":
            protocol = environ.get(
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            )
            if protocol != "http/protobuf":
                # Only the HTTP exporter is installed (no grpcio): say so instead of
                # silently sending nothing.
                raise ValueError(
                    f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: only http/protobuf is supported"
                )
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
        else:
            raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: choose otlp, console or none")
    return exporters


def _current_trace_id() -> str | None:
    if not _tracing:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


_NO_HEADERS: dict[str, str] = {}


def trace_headers() -> dict[str, str]:
    """The current trace context as message headers (W3C `traceparent`); empty when off.

    The dict returned when off is shared: callers copy it into their own headers."""
    if not _tracing:
        return _NO_HEADERS
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@contextmanager
def case_publish_spans(
    destination: str, cases: Mapping[UUID, str]
) -> Iterator[dict[UUID, dict[str, str]]]:
    """PRODUCER spans around publishing stored events of `cases` (feedback id -> number);
    yields each case's headers (`traceparent`), empty when tracing is off.

    Stored events carry no trace context, so each case's trace is its own: trace id = the
    feedback id (a random UUID, 128 bits like a trace id), below a fixed parent that is
    never recorded. Every relayed event of a case, and what subscribers do with it, is then
    one trace, found by the feedback id; logs join by the feedback number."""
    if not _tracing or not cases:
        yield {}
        return
    from opentelemetry import propagate, trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags

    tracer = trace.get_tracer("feedback.kafka")
    spans = []
    headers: dict[UUID, dict[str, str]] = {}
    for case_id, number in cases.items():
        root = SpanContext(
            trace_id=case_id.int,
            span_id=(case_id.int & 0xFFFF_FFFF_FFFF_FFFF) or 1,
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
        span = tracer.start_span(
            f"{destination} publish",
            context=trace.set_span_in_context(NonRecordingSpan(root)),
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "publish",
                "messaging.destination.name": destination,
                "feedback.number": number,
                "feedback.id": str(case_id),
            },
        )
        spans.append(span)
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        headers[case_id] = carrier
    try:
        yield headers
    except BaseException as error:
        for span in spans:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        raise
    finally:
        for span in spans:
            span.end()


def instrument_app(app: FastAPI) -> None:
    """HTTP server spans for every request (not for /health and /metrics, which probes and
    scrapers call every few seconds)."""
    if not _tracing:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, excluded_urls="/health,/metrics")


# -- consumers ------------------------------------------------------------------------------


def _headers_of(record: Any) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in record.headers or ():
        if name in (TRACEPARENT, "tracestate", FEEDBACK_NUMBER_HEADER) and value is not None:
            found[name] = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return found


class ConsumeContext(BaseMiddleware[Any, Any]):
    """Around every consumed batch: a consumer span per trace its records carry (a child of
    the producer's context, so one feedback is one trace from HTTP through Kafka), and the
    feedback number and trace id bound for the handler's logs when the batch is about one
    feedback."""

    async def consume_scope(self, call_next: Any, msg: StreamMessage[Any]) -> Any:
        raw = msg.raw_message
        records: Sequence[Any] = raw if isinstance(raw, tuple) else (raw,)
        headers = [_headers_of(r) for r in records]
        numbers = {h[FEEDBACK_NUMBER_HEADER] for h in headers if FEEDBACK_NUMBER_HEADER in h}
        number = next(iter(numbers)) if len(numbers) == 1 else None
        if not _tracing:
            token = bind(feedback_number=number)
            try:
                return await call_next(msg)
            finally:
                unbind(token)
        with _consumer_spans(records, headers) as trace_id:
            token = bind(feedback_number=number, trace_id=trace_id)
            try:
                return await call_next(msg)
            finally:
                unbind(token)


@contextmanager
def _consumer_spans(records: Sequence[Any], headers: list[dict[str, str]]) -> Iterator[str | None]:
    """One CONSUMER span per distinct producer context in the batch, lasting as long as the
    batch's work. With exactly one, it is made current, so what the handler publishes
    continues the trace; yields that trace id (None for a batch of several traces)."""
    from opentelemetry import propagate, trace

    tracer = trace.get_tracer("feedback.kafka")
    by_parent: dict[str, list[Any]] = {}
    for record, found in zip(records, headers, strict=True):
        by_parent.setdefault(found.get(TRACEPARENT, ""), []).append(record)
    with ExitStack() as stack:
        spans = []
        for traceparent, group in by_parent.items():
            first = group[0]
            span = tracer.start_span(
                f"{first.topic} process",
                context=propagate.extract({TRACEPARENT: traceparent}) if traceparent else None,
                kind=trace.SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "kafka",
                    "messaging.operation.type": "process",
                    "messaging.destination.name": first.topic,
                    "messaging.destination.partition.id": str(first.partition),
                    "messaging.kafka.offset": first.offset,
                    "messaging.batch.message_count": len(group),
                },
            )
            stack.callback(span.end)
            spans.append(span)
        if len(spans) != 1:
            yield None
            return
        stack.enter_context(trace.use_span(spans[0], end_on_exit=False))
        yield format(spans[0].get_span_context().trace_id, "032x")
