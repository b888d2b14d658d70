"""Outbox relay: every stored case event, in store order, to `feedback.events`.

The store's notification log is the outbox. The relay publishes a section with the
idempotent producer, waits for every acknowledgement, then records how far it got, so a
crash repeats at most the last section (consumers drop repeats by case version). One relay
holds a PostgreSQL advisory lock at a time; other instances wait as hot standbys.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import psycopg
from aiokafka.admin import AIOKafkaAdminClient
from faststream.kafka import KafkaBroker
from prometheus_client import Counter
from psycopg import sql

from contracts import topics
from contracts.events import DeadLetter
from services.cases.published import department_topics, to_contract
from services.cases.store import CaseStore
from services.common import deadletters
from services.common.bus import EVENT_TYPE_HEADER, HeadedRecord, publish, publish_all
from services.common.database import RELAY_LOCK
from services.common.metrics import count_dead_letters
from services.common.observability import FEEDBACK_NUMBER_HEADER, case_publish_spans
from services.common.settings import Settings

log = logging.getLogger(__name__)
CHANNEL = "feedback_case_events"
SOURCE = "relay"  # the dead letters' source

SKIPPED = Counter(
    "feedback_relay_skipped_department_messages",
    "Case events not sent to a department because its dept.* topic does not exist.",
    ["department"],
)
# How long a list of the bus's topics is trusted before a department missing from it is
# looked up again (a topic created meanwhile is used from then on).
TOPICS_FRESH_S = 30.0


@dataclass
class _Section:
    """A section of the store's log, decoded: what to publish, and what cannot be."""

    records: list[HeadedRecord] = field(default_factory=list)
    dead_letters: list[tuple[DeadLetter, bytes]] = field(default_factory=list)
    # department -> how many of its messages had no topic to go to
    skipped: dict[str, int] = field(default_factory=dict)
    # case -> its feedback number, and the headers of its events (trace context goes there)
    cases: dict[UUID, str] = field(default_factory=dict)
    headers: dict[UUID, list[dict[str, str]]] = field(default_factory=dict)


SCHEMA = [
    """
    CREATE TABLE IF NOT EXISTS outbox_positions (
        relay text PRIMARY KEY,
        last_notification_id bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    # Stored events the relay cannot publish are kept there (see _decode).
    *deadletters.SCHEMA,
]


class OutboxRelay:
    name = "feedback.events"

    def __init__(self, settings: Settings, store: CaseStore, broker: KafkaBroker) -> None:
        self.settings = settings
        self.store = store
        self.broker = broker
        self.ready = asyncio.Event()
        self._topics: set[str] = set()
        self._topics_read_at = float("-inf")

    async def run(self) -> None:
        """Relay until cancelled; after a failure (database or Kafka away) start again."""
        while True:
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay failed; restarting in 1s")
                await asyncio.sleep(1.0)

    async def _run_once(self) -> None:
        conn = await psycopg.AsyncConnection.connect(self.settings.database_url, autocommit=True)
        try:
            while not await self._try_lock(conn):
                self.ready.set()  # a standby is healthy too
                await asyncio.sleep(1.0)
            position = await self._load_position(conn)
            await self._listen(conn)
            self.ready.set()
            while True:
                relayed = await self._relay_section(conn, position)
                if relayed is None:
                    await self._wait_for_new_events(conn)
                else:
                    position = relayed
        finally:
            await conn.close()

    async def _listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Every commit that stores case events notifies the relay (one NOTIFY per
        statement, delivered at commit), so it need not poll; PostgreSQL 14 or later."""
        table = self.store.process_recorder.events_table_name  # type: ignore[attr-defined]
        await conn.execute(
            "CREATE OR REPLACE FUNCTION feedback_case_events_stored() RETURNS trigger "
            f"LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_notify('{CHANNEL}', ''); RETURN NULL; END $$"
        )
        await conn.execute(
            sql.SQL(
                "CREATE OR REPLACE TRIGGER {} AFTER INSERT ON {} "
                "FOR EACH STATEMENT EXECUTE FUNCTION feedback_case_events_stored()"
            ).format(sql.Identifier(f"{table}_stored"), sql.Identifier(table))
        )
        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))

    async def _wait_for_new_events(self, conn: psycopg.AsyncConnection[Any]) -> None:
        # Notifications that arrive while relaying wait in psycopg's backlog; the timeout
        # is only a safety net.
        async for _ in conn.notifies(timeout=self.settings.relay_idle_poll_s, stop_after=1):
            break
        if self.settings.relay_gather_ms:
            await asyncio.sleep(self.settings.relay_gather_ms / 1000)

    async def _try_lock(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        cursor = await conn.execute("SELECT pg_try_advisory_lock(%s)", (RELAY_LOCK,))
        row = await cursor.fetchone()
        return bool(row and row[0])

    async def _load_position(self, conn: psycopg.AsyncConnection[Any]) -> int:
        cursor = await conn.execute(
            "SELECT last_notification_id FROM outbox_positions WHERE relay = %s", (self.name,)
        )
        row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def _relay_section(self, conn: psycopg.AsyncConnection[Any], position: int) -> int | None:
        notifications = await asyncio.to_thread(
            self.store.process_recorder.select_notifications,
            position + 1,
            self.settings.relay_batch_size,
        )
        if not notifications:
            return None
        existing = await self._existing_topics()
        # Decoding and serialising 1,000 events is CPU work of tens of milliseconds: in a
        # thread, so the event loop (HTTP, other consumers) is not held meanwhile.
        section = await asyncio.to_thread(self._decode, notifications, existing)
        topic = self.settings.topic(topics.FEEDBACK_EVENTS)
        with case_publish_spans(topic, section.cases) as traced:
            for case_id, context in traced.items():
                for headers in section.headers[case_id]:
                    headers.update(context)
            await publish_all(self.broker, self.settings, section.records)
        if section.dead_letters:
            # Kept and published before the position moves past them: at least once, and
            # their ids (fixed by the notification id) make a repeat record nothing.
            recorded = 0
            for letter, raw in section.dead_letters:
                recorded += await deadletters.keep(conn, letter, raw)
                log.error(
                    "relay: stored event %s cannot be published (%s); dead letter %s",
                    letter.source_offset,
                    letter.reason[:300],
                    letter.dead_letter_id,
                )
                await publish(self.broker, self.settings, letter)
            count_dead_letters(SOURCE, recorded)
        for department, count in section.skipped.items():
            SKIPPED.labels(department=department).inc(count)
            log.error(
                "relay: %d case event(s) for department %r not sent to its topic %s, which "
                "does not exist (create it: feedback topics apply); feedback.events has them",
                count,
                department,
                self.settings.topic(topics.department_topic(department)),
            )
        last = notifications[-1].id
        await conn.execute(
            "INSERT INTO outbox_positions (relay, last_notification_id) VALUES (%s, %s) "
            "ON CONFLICT (relay) DO UPDATE SET last_notification_id = EXCLUDED.last_notification_id,"
            " updated_at = now()",
            (self.name, last),
        )
        return int(last)

    def _decode(self, notifications: Sequence[Any], existing: set[str]) -> _Section:
        """The section's records. A stored event that cannot be decoded or mapped fails the
        same way on every attempt: it becomes a dead letter instead of stopping the relay.
        A department without a topic is skipped (counted), the other destinations still get
        the event."""
        section = _Section()
        topic = self.settings.topic(topics.FEEDBACK_EVENTS)
        for notification in notifications:
            try:
                domain_event = self.store.mapper.to_domain_event(notification)
                message = to_contract(domain_event, notification.id)
                if message is None:
                    continue
                body = message.model_dump_json().encode()
            except Exception as error:
                section.dead_letters.append(self._dead_letter(notification, error))
                continue
            # Every event to the company-wide topic; each department also gets its own.
            destinations = [topic]
            for department in department_topics(message):
                name = self.settings.topic(topics.department_topic(department))
                if name in existing:
                    destinations.append(name)
                else:
                    section.skipped[department] = section.skipped.get(department, 0) + 1
            # Which event this is, for any subscriber to drop a repeat without reading the
            # body (the body says it too: feedback_id, version, position), and which
            # feedback, for its logs (observability.ConsumeContext binds it).
            headers = {
                "event-id": f"{message.feedback_id}:{message.version}",
                EVENT_TYPE_HEADER: str(type(message).model_fields["event_type"].default),
                "case-version": str(message.version),
                "position": str(message.position),
                FEEDBACK_NUMBER_HEADER: message.feedback_number,
            }
            section.cases[message.feedback_id] = message.feedback_number
            section.headers.setdefault(message.feedback_id, []).append(headers)
            section.records += [
                (destination, message.key(), body, headers) for destination in destinations
            ]
        return section

    def _dead_letter(self, notification: Any, error: BaseException) -> tuple[DeadLetter, bytes]:
        table = str(self.store.process_recorder.events_table_name)  # type: ignore[attr-defined]
        raw = bytes(notification.state)
        where = SimpleNamespace(topic=table, partition=0, offset=notification.id, value=raw)
        metadata = {
            "feedback_id": str(notification.originator_id),
            "originator_version": str(notification.originator_version),
            "event_topic": str(notification.topic),
        }
        letter = deadletters.of_record(SOURCE, where, deadletters.describe(error), metadata)
        return letter, raw

    async def _existing_topics(self) -> set[str]:
        """The bus's topics, read again when older than TOPICS_FRESH_S (only then: a
        department's topic created later is picked up within that time)."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._topics_read_at >= TOPICS_FRESH_S:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap_servers)
            await admin.start()
            try:
                self._topics = set(await admin.list_topics())
            finally:
                await admin.close()
            self._topics_read_at = loop.time()
        return self._topics
