"""Outbox relay: every stored case event, in store order, to `feedback.events`.

The store's notification log is the outbox. The relay publishes a section with the
idempotent producer, waits for every acknowledgement, then records how far it got, so a
crash repeats at most the last section (consumers drop repeats by case version). One relay
holds a PostgreSQL advisory lock at a time; other instances wait as hot standbys.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
from faststream.kafka import KafkaBroker
from psycopg import sql

from contracts import topics
from services.cases.published import department_topics, to_contract
from services.cases.store import CaseStore
from services.common.bus import HeadedRecord, publish_all
from services.common.database import RELAY_LOCK
from services.common.settings import Settings

log = logging.getLogger(__name__)
CHANNEL = "feedback_case_events"

SCHEMA = [
    """
    CREATE TABLE IF NOT EXISTS outbox_positions (
        relay text PRIMARY KEY,
        last_notification_id bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """
]


class OutboxRelay:
    name = "feedback.events"

    def __init__(self, settings: Settings, store: CaseStore, broker: KafkaBroker) -> None:
        self.settings = settings
        self.store = store
        self.broker = broker
        self.ready = asyncio.Event()

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
        topic = self.settings.topic(topics.FEEDBACK_EVENTS)
        records: list[HeadedRecord] = []
        for notification in notifications:
            domain_event = self.store.mapper.to_domain_event(notification)
            message = to_contract(domain_event, notification.id)
            if message is None:
                continue
            body = message.model_dump_json().encode()
            # Every event to the company-wide topic; each department also gets its own.
            destinations = [topic] + [
                self.settings.topic(topics.department_topic(d)) for d in department_topics(message)
            ]
            # Which event this is, for any subscriber to drop a repeat without reading the
            # body (the body says it too: feedback_id, version, position).
            headers = {
                "event-id": f"{message.feedback_id}:{message.version}",
                "case-version": str(message.version),
                "position": str(message.position),
            }
            records += [(destination, message.key(), body, headers) for destination in destinations]
        await publish_all(self.broker, self.settings, records)
        last = notifications[-1].id
        await conn.execute(
            "INSERT INTO outbox_positions (relay, last_notification_id) VALUES (%s, %s) "
            "ON CONFLICT (relay) DO UPDATE SET last_notification_id = EXCLUDED.last_notification_id,"
            " updated_at = now()",
            (self.name, last),
        )
        return int(last)
