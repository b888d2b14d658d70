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
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from faststream import FastStream
from faststream.kafka import KafkaBroker

from contracts import topics
from contracts.events import CaseEvent, FeedbackRouted, OwnerAssigned, case_event_adapter


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
) -> KafkaBroker:
    """The department's consumer; with `seen`, each event is handled once."""
    broker = KafkaBroker(bootstrap_servers)

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
        SeenEvents(os.environ.get("SEEN_EVENTS_DB", "department_events.sqlite3")),
    )
    asyncio.run(FastStream(broker).run())
