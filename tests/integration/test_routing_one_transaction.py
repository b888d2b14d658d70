"""Routing writes a new case's worklist row, its owner, its events and the Kafka position in
one transaction (#13): when storing the events fails, no worklist row is left behind to
take an agent's capacity for a case that does not exist, and the redelivery routes it once."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from eventsourcing.persistence import OperationalError
from psycopg_pool import ConnectionPool

from contracts import topics
from services.cases.store import CaseStore
from services.common.database import apply_schema
from services.common.settings import Settings
from services.routing import worklist as routing_worklist
from services.routing.assignment import load_roster
from services.routing.classifier import Classifier, load_rulebook
from services.routing.service import RoutingService
from tests.integration.test_exactly_once import received_message

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    value: bytes


@pytest.fixture
def routing(settings: Settings) -> Iterator[RoutingService]:
    apply_schema(settings.database_url, routing_worklist.SCHEMA)
    pool = ConnectionPool(
        settings.database_url, min_size=1, max_size=2, kwargs={"autocommit": True}
    )
    worklist = routing_worklist.Worklist(pool)
    worklist.seed(load_roster())
    yield RoutingService(
        CaseStore(settings.database_url),
        worklist,
        Classifier.trained(load_rulebook()),
        load_roster(),
    )
    pool.close()


def worklist_rows(settings: Settings) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.database_url) as conn:
        return conn.execute(
            "SELECT feedback_number, state, owner, owner_announced FROM routing_cases"
        ).fetchall()


def test_a_failed_store_leaves_no_worklist_row_and_the_redelivery_routes_once(
    settings: Settings, routing: RoutingService, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = received_message(0)
    records = [Record(topics.FEEDBACK_RECEIVED, 0, 0, message.model_dump_json().encode())]
    recorder: Any = routing.store.process_recorder

    def database_gone(*_: Any, **__: Any) -> None:
        raise OperationalError("the database went away while storing the events")

    # The worklist's writes happen first in the transaction; the events fail after them.
    monkeypatch.setattr(recorder, "_insert_stored_events", database_gone)
    with pytest.raises(OperationalError):
        routing.commit(routing.prepare(topics.FEEDBACK_RECEIVED, 0, records))
    assert worklist_rows(settings) == []
    assert routing.store.next_offset("routing", topics.FEEDBACK_RECEIVED, 0) == 0

    monkeypatch.undo()  # the redelivery, with the database back
    routing.commit(routing.prepare(topics.FEEDBACK_RECEIVED, 0, records))
    rows = worklist_rows(settings)
    assert len(rows) == 1
    number, state, owner, announced = rows[0]
    assert number == message.feedback_number and announced is True
    case = routing.store.get_case(message.feedback_id)
    assert (case.owner, state) == (owner, "owned") if owner else state in ("queued", "triage")
    assert routing.store.next_offset("routing", topics.FEEDBACK_RECEIVED, 0) == 1

    # A third delivery of the same record is below the stored position: nothing to do.
    events = len(routing.store.timeline(message.feedback_id))
    assert routing.prepare(topics.FEEDBACK_RECEIVED, 0, records).next_offset is None
    assert worklist_rows(settings) == rows
    assert len(routing.store.timeline(message.feedback_id)) == events
