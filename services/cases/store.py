"""The case event store (eventsourcing on PostgreSQL).

Writers that consume Kafka record the position they consumed in the same transaction as
the events (eventsourcing tracking records, one tracking name per topic and partition), so
a redelivered message changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.application import Application, project_aggregate
from eventsourcing.persistence import IntegrityError, ProcessRecorder, StoredEvent, Tracking

from services.cases.domain import Case
from services.common.database import eventsourcing_env


class _WorkFailed(Exception):
    def __init__(self, error: psycopg.Error) -> None:
        super().__init__(str(error))
        self.error = error


class CaseConflict(Exception):
    """Other writers kept changing the case; the command may be tried again."""


@dataclass(frozen=True)
class KafkaPosition:
    """Where a consumer is in one partition; `next_offset` follows Kafka's commit meaning."""

    consumer: str
    topic: str
    partition: int
    next_offset: int

    @property
    def tracking_name(self) -> str:
        return f"{self.consumer}@{self.topic}/{self.partition}"


class CaseStore(Application[UUID]):
    name = "cases"

    def __init__(self, database_url: str, *, create_table: bool = True) -> None:
        super().__init__(env=eventsourcing_env(database_url, create_table=create_table))

    def construct_recorder(self) -> ProcessRecorder:
        return self.factory.process_recorder()

    @property
    def process_recorder(self) -> ProcessRecorder:
        assert isinstance(self.recorder, ProcessRecorder)
        return self.recorder

    def next_offset(self, consumer: str, topic: str, partition: int) -> int:
        """First offset of the partition that this consumer has not yet recorded."""
        name = KafkaPosition(consumer, topic, partition, 0).tracking_name
        recorded = self.process_recorder.max_tracking_id(name)
        return 0 if recorded is None else recorded

    def record(self, cases: Iterable[Case], position: KafkaPosition) -> None:
        """Store the cases' new events and the consumed position atomically."""
        events: list[Any] = []
        for case in cases:
            events.extend(case.collect_events())
        # Tracking ids must be positive and increasing; next_offset is both.
        tracking = Tracking(position.tracking_name, position.next_offset)
        self.events.put(events, tracking=tracking)

    def record_with(self, work: Callable[[Any], Iterable[Case]], position: KafkaPosition) -> None:
        """One transaction: `work` runs on the store's connection (its writes, e.g. the
        routing worklist's rows and owners), then the events of the cases it returns and the
        consumed position are stored. All of it commits, or none: no row without its case."""
        recorder: Any = self.process_recorder
        tracking = Tracking(position.tracking_name, position.next_offset)
        try:
            with recorder.datastore.transaction(commit=True) as cursor:
                try:
                    cases = list(work(cursor.connection))
                except psycopg.Error as error:
                    # Kept as psycopg's: eventsourcing would turn a unique violation of the
                    # caller's own table into its IntegrityError, which means "another
                    # writer stored this position first" (retried), not "never storable".
                    raise _WorkFailed(error) from error
                events: list[Any] = []
                for case in cases:
                    events.extend(case.collect_events())
                stored = [self.mapper.to_stored_event(event) for event in events]
                # What eventsourcing's insert_events does, on this transaction's cursor: the
                # tracking record, then the table lock (commit order = notification order)
                # and the events.
                recorder._insert_events(cursor, stored, tracking=tracking)
                if stored:
                    recorder._insert_stored_events(cursor, stored)
        except _WorkFailed as failed:
            raise failed.error from None

    def existing(self, case_ids: Sequence[UUID]) -> set[UUID]:
        """Which of these cases are already in the store (one query for a whole batch)."""
        if not case_ids:
            return set()
        datastore: Any = self.process_recorder.datastore  # type: ignore[attr-defined]
        table = self.process_recorder.events_table_name  # type: ignore[attr-defined]
        with datastore.get_connection() as conn, conn.cursor() as cursor:
            cursor.execute(
                f"SELECT DISTINCT originator_id FROM {table} WHERE originator_id = ANY(%s)",
                (list(case_ids),),
            )
            return {UUID(str(row["originator_id"])) for row in cursor.fetchall()}

    def change(self, case_id: UUID, decide: Callable[[Case], None], attempts: int = 5) -> Case:
        """Load the case, let it decide, store what it decided. Another writer (the sla
        service, a second instance) may append meanwhile: then it decides again on the
        newer case, since its decisions depend only on its state. CaseError (a refusal)
        passes through; CaseConflict after `attempts`."""
        for _ in range(attempts):
            case = self.get_case(case_id)
            decide(case)
            try:
                self.save(case)
                return case
            except IntegrityError:
                continue
        raise CaseConflict(f"case {case_id} kept changing meanwhile; try again")

    def timeline(self, case_id: UUID) -> list[dict[str, Any]]:
        """Every fact of the case in order: when, what, by whom, its version."""
        facts = []
        for event in self.repository.event_store.get(case_id):
            data: Any = event
            facts.append(
                {
                    "at": data.timestamp.astimezone(UTC),
                    "what": type(event).__name__,
                    "by": getattr(data, "by", None) or getattr(data, "owner", None),
                    "version": data.originator_version,
                }
            )
        return facts

    def get_cases(self, case_ids: Iterable[UUID]) -> dict[UUID, Case]:
        """These cases, each rebuilt from its events, read with one query for all of them
        (a consumer deciding on a slice of many cases would otherwise pay a round trip
        per case). Cases not in the store are absent from the answer."""
        wanted = list(dict.fromkeys(case_ids))
        if not wanted:
            return {}
        datastore: Any = self.process_recorder.datastore  # type: ignore[attr-defined]
        table = self.process_recorder.events_table_name  # type: ignore[attr-defined]
        events: dict[UUID, list[Any]] = {}
        with datastore.get_connection() as conn, conn.cursor() as cursor:
            cursor.execute(
                "SELECT originator_id, originator_version, topic, state "
                f"FROM {table} WHERE originator_id = ANY(%s) "
                "ORDER BY originator_id, originator_version",
                (wanted,),
            )
            for row in cursor.fetchall():
                stored = StoredEvent(
                    originator_id=row["originator_id"],
                    originator_version=row["originator_version"],
                    topic=row["topic"],
                    state=bytes(row["state"]),
                )
                case_id = UUID(str(row["originator_id"]))
                events.setdefault(case_id, []).append(self.mapper.to_domain_event(stored))
        cases: dict[UUID, Case] = {}
        for case_id, history in events.items():
            case = project_aggregate(None, history)
            assert isinstance(case, Case)
            cases[case_id] = case
        return cases

    def get_case(self, case_id: UUID) -> Case:
        case: object = self.repository.get(case_id)
        assert isinstance(case, Case)
        return case
