"""A department's subscriber (examples/department_subscriber.py) continues the case's trace
that the relay puts in each message's `traceparent` header, when given a tracer provider;
without one (the default) it traces nothing, even when the messages carry a trace."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest

from contracts import topics
from contracts.events import CaseEvent, FeedbackRouted, OwnerAssigned
from examples.department_subscriber import build_subscriber, tracer_provider_from_environment
from services.common.settings import Settings
from tests.conftest import serve, wait_for, web_form
from tests.integration.test_observability import spans  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DELAYED_ORDER = "订单说好三天送达，现在已经第七天了还没有收到货"


def test_tracing_is_off_unless_the_environment_asks() -> None:
    assert tracer_provider_from_environment("logistics", {}) is None
    assert tracer_provider_from_environment("logistics", {"OTEL_TRACES_EXPORTER": "none"}) is None
    disabled = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}
    assert tracer_provider_from_environment("logistics", disabled) is None
    provider = tracer_provider_from_environment("logistics", {"OTEL_TRACES_EXPORTER": "console"})
    assert provider is not None
    try:
        assert provider.resource.attributes["service.name"] == "department-logistics"
    finally:
        provider.shutdown()
    with pytest.raises(ValueError, match="choose otlp, console or none"):
        tracer_provider_from_environment("logistics", {"OTEL_TRACES_EXPORTER": "zipkin"})


def test_the_standard_service_name_variable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "logistics-worker")
    provider = tracer_provider_from_environment("logistics", {"OTEL_TRACES_EXPORTER": "console"})
    assert provider is not None
    try:
        assert provider.resource.attributes["service.name"] == "logistics-worker"
    finally:
        provider.shutdown()


async def test_the_department_continues_the_case_trace(
    settings: Settings,
    spans: Any,  # noqa: F811
) -> None:
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    topic = settings.topic(topics.department_topic("logistics"))
    # (event, trace id and span id current while the department handled it)
    handled: list[tuple[CaseEvent, int, int]] = []

    async def on_event(event: CaseEvent) -> None:
        context = trace.get_current_span().get_span_context()
        handled.append((event, context.trace_id, context.span_id))

    def heard(number: str) -> list[tuple[CaseEvent, int, int]]:
        ours = [h for h in handled if h[0].feedback_number == number]
        return ours if {FeedbackRouted, OwnerAssigned} <= {type(h[0]) for h in ours} else []

    async with serve(settings, ("intake", "routing", "relay")) as running:

        async def department_handles_one(tracer_provider: Any) -> list[tuple[CaseEvent, int, int]]:
            subscriber = build_subscriber(
                settings.kafka_bootstrap_servers,
                "logistics",
                on_event,
                settings.topic_prefix,
                tracer_provider=tracer_provider,
            )
            await subscriber.start()
            try:
                response = await running.client.post("/v1/feedback", json=web_form(DELAYED_ORDER))
                assert response.status_code == 202, response.text
                number = response.json()["feedback_number"]
                found: list[tuple[CaseEvent, int, int]] = await wait_for(
                    lambda: heard(number), timeout=40, what=f"logistics handling {number}"
                )
                return found
            finally:
                await subscriber.stop()

        traced = await department_handles_one(trace.get_tracer_provider())
        # Off by default: the same kind of messages, carrying a trace, and no span.
        untraced = await department_handles_one(None)

    case_id = traced[0][0].feedback_id
    assert isinstance(case_id, UUID)
    number = traced[0][0].feedback_number
    finished = spans.get_finished_spans()
    # The relay's publish spans of the case (one per section, named for feedback.events:
    # the department's messages carry the same context).
    relayed = [
        s
        for s in finished
        if s.kind is SpanKind.PRODUCER and s.attributes.get("feedback.number") == number
    ]
    department = [
        s
        for s in finished
        if s.kind is SpanKind.CONSUMER
        and s.context.trace_id == case_id.int
        and s.name == f"{topic} process"
    ]
    assert relayed, "the relay published no traced message of the case"
    assert department, "the department's handling made no span in the case's trace"
    # Each of the department's spans is a child of a relay publish span of the case.
    assert all(s.parent is not None for s in department)
    assert {s.parent.span_id for s in department if s.parent} <= {
        s.context.span_id for s in relayed
    }
    # The handler ran inside the department's span: the case's trace, that span current.
    for event, trace_id, span_id in traced:
        assert trace_id == case_id.int, event
        assert span_id in {s.context.span_id for s in department}, event
    assert all(trace_id == 0 for _, trace_id, _ in untraced), "traced while off"
    untraced_number = untraced[0][0].feedback_number
    assert not [
        s
        for s in spans.get_finished_spans()
        if s.name == f"{topic} process" and s.context.trace_id == untraced[0][0].feedback_id.int
    ], f"a department span for {untraced_number} while off"
    print(
        f"{number}: {len(traced)} event(s) handled in trace {case_id.hex}, "
        f"{len(department)} department span(s) under {len(relayed)} relay span(s); "
        f"{untraced_number}: {len(untraced)} handled untraced"
    )
