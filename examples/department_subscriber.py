"""A department's own subscriber: copy this to receive only your department's cases.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 DEPARTMENT=logistics \\
        .venv/bin/python -m examples.department_subscriber

It depends on `contracts` only: it reads `dept.<department>` with its own consumer group
and gets every event of the cases routed to the department (routed, assigned, accepted,
co-handling requests, priority changes), one case's events in order.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

from faststream import FastStream
from faststream.kafka import KafkaBroker

from contracts import topics
from contracts.events import CaseEvent, FeedbackRouted, OwnerAssigned, case_event_adapter


def build_subscriber(
    bootstrap_servers: str,
    department: str,
    on_event: Callable[[CaseEvent], Awaitable[None]],
    topic_prefix: str = "",
) -> KafkaBroker:
    broker = KafkaBroker(bootstrap_servers)

    @broker.subscriber(
        f"{topic_prefix}{topics.department_topic(department)}",
        group_id=f"department-{department}",
        auto_offset_reset="earliest",
    )
    async def on_case_event(body: dict[str, Any]) -> None:
        await on_event(case_event_adapter.validate_python(body))

    return broker


async def print_event(event: CaseEvent) -> None:
    match event:
        case FeedbackRouted():
            print(f"{event.feedback_number}: routed to us ({event.reason})")
        case OwnerAssigned():
            print(f"{event.feedback_number}: owner {event.owner}")
        case _:
            print(f"{event.feedback_number}: {type(event).__name__}")


if __name__ == "__main__":
    broker = build_subscriber(
        os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        os.environ.get("DEPARTMENT", "customer_service"),
        print_event,
        os.environ.get("FEEDBACK_TOPIC_PREFIX", ""),
    )
    asyncio.run(FastStream(broker).run())
