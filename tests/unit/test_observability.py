"""Structured logs and the switches of tracing (services/common/observability.py)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable

import pytest

from services.common import observability
from services.common.observability import JsonFormatter, bind, unbind


def _logged(logger: logging.Logger, emit: Callable[[], None]) -> list[dict[str, object]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.propagate = False
    try:
        emit()
    finally:
        logger.removeHandler(handler)
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_time_level_logger_message_and_the_bound_feedback() -> None:
    logger = logging.getLogger("test.observability.json")
    token = bind(feedback_number="F20261129-0007", trace_id="ab" * 16)
    try:
        lines = _logged(logger, lambda: logger.warning("routed to %s", "售后服务部"))
    finally:
        unbind(token)
    [line] = lines
    assert line["level"] == "WARNING"
    assert line["logger"] == "test.observability.json"
    assert line["message"] == "routed to 售后服务部"  # not escaped: readable in the pipeline
    assert line["feedback_number"] == "F20261129-0007"
    assert line["trace_id"] == "ab" * 16
    assert str(line["time"]).endswith("+00:00")


def test_nothing_bound_means_no_such_keys_and_extra_wins() -> None:
    logger = logging.getLogger("test.observability.extra")

    def emit() -> None:
        logger.error("plain")
        logger.error("named", extra={"feedback_number": "F20261129-0001"})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")

    plain, named, failed = _logged(logger, emit)
    assert "feedback_number" not in plain and "trace_id" not in plain
    assert named["feedback_number"] == "F20261129-0001"
    assert "ValueError: boom" in str(failed["exception"])


def test_binding_is_undone_and_keeps_what_was_bound_before() -> None:
    outer = bind(feedback_number="F1")
    inner = bind(trace_id="t" * 32)
    assert observability.log_context().feedback_number == "F1"
    unbind(inner)
    assert observability.log_context().trace_id is None
    unbind(outer)
    assert observability.log_context().feedback_number is None


@pytest.mark.parametrize(
    ("environment", "on"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_on_only_when_the_standard_variables_ask(
    environment: dict[str, str], on: bool
) -> None:
    assert observability.tracing_requested(environment) is on


def test_off_costs_nothing_on_the_producer_side() -> None:
    if observability.tracing_enabled():
        pytest.skip("another test in this process turned tracing on")
    assert observability.trace_headers() == {}
    assert observability.configure_tracing("feedback-test", {}) is False


def test_log_format_setting() -> None:
    assert observability.json_logs_requested({"FEEDBACK_LOG_FORMAT": "JSON"})
    assert not observability.json_logs_requested({})


def test_exporters_named_by_the_standard_variables() -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    exporters = observability._exporters({"OTEL_TRACES_EXPORTER": "otlp,console"})
    assert [type(e) for e in exporters] == [OTLPSpanExporter, ConsoleSpanExporter]
    # An endpoint alone means OTLP.
    [default] = observability._exporters({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert isinstance(default, OTLPSpanExporter)
    with pytest.raises(ValueError, match="http/protobuf"):
        observability._exporters({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    with pytest.raises(ValueError, match="otlp, console or none"):
        observability._exporters({"OTEL_TRACES_EXPORTER": "jaeger"})
