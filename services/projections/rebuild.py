"""Rebuilding a read model from the event store, blue/green.

`rebuild("cases")` creates the projection's tables afresh in a schema of their own
(`rebuild_cases`), folds every stored case event into them in store order while the live
tables keep serving and the live consumer keeps writing, then, in one transaction: locks
the live tables (readers and the consumer wait for a moment), applies what was stored
since, moves the live tables out (schema `retired_cases`) and the new ones in, recreates
the views that read them, and records the new version. The consumer's Kafka position
stays valid: the new tables hold every event stored up to the switch, and the consumer
drops what it then receives again by each case's `last_version`.

Cases the retention purge removed from the registration table (archived, absent from
the live table) are left out again, so a rebuild never brings purged rows back.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

import psycopg
import psycopg.errors
from eventsourcing.persistence import Notification
from psycopg import sql

from services.cases.published import to_contract
from services.cases.store import CaseStore
from services.common import deadletters
from services.projections import casefile, facts_schema
from services.sla.calendar import BusinessCalendar

log = logging.getLogger(__name__)

SCHEMA = [
    """
    CREATE TABLE IF NOT EXISTS projection_versions (
        name text PRIMARY KEY,
        version integer NOT NULL,
        switched_at timestamptz NOT NULL,
        last_position bigint NOT NULL,
        events integer NOT NULL,
        seconds double precision NOT NULL
    )
    """
]
PAGE = 5_000
# The switch waits this long for readers of the live tables, then tries again.
LOCK_TIMEOUT = "5s"
SWITCH_ATTEMPTS = 10
# Files held in memory before they are written to the new tables.
FLUSH_FILES = 50_000


@dataclass(frozen=True)
class Projection:
    name: str
    tables: tuple[str, ...]
    schema: tuple[str, ...]
    # Statements that recreate what depends on the tables (views), run after the switch.
    dependents: Callable[[], Sequence[str]] = lambda: ()


def projections() -> dict[str, Projection]:
    from services.projections import registrations

    return {
        "cases": Projection(
            "cases",
            ("registrations", *facts_schema.TABLES, "case_search"),
            tuple(registrations.TABLE_SCHEMA),
            registrations.dependent_views,
        )
    }


@dataclass
class RebuildReport:
    name: str
    version: int
    events: int
    cases: int
    seconds: float
    caught_up: int
    skipped: int = 0

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def stored_pages(
    store: CaseStore, after: int, *, upto: int | None = None, share: tuple[int, int] = (0, 1)
) -> Iterator[tuple[int, list[Any]]]:
    """The public case events stored after notification `after` (up to `upto`), a page at
    a time, in store order, each page with the last notification id it covers. With
    `share` (k, n): only the cases whose id falls in share k of n (read in SQL, so a worker
    decodes only its own cases' events)."""
    recorder: Any = store.process_recorder
    table = sql.Identifier(recorder.events_table_name)
    k, n = share
    statement = sql.SQL(
        "SELECT notification_id, originator_id, originator_version, topic, state FROM {} "
        "WHERE notification_id > %s AND notification_id <= %s "
        "AND (hashtext(originator_id::text) & 2147483647) %% %s = %s "
        "ORDER BY notification_id LIMIT %s"
    ).format(table)
    last = upto if upto is not None else (recorder.max_notification_id() or 0)
    while True:
        with recorder.datastore.get_connection() as conn, conn.cursor() as cursor:
            cursor.execute(statement, (after, last, n, k, PAGE), prepare=True)
            rows = cursor.fetchall()
        if not rows:
            return
        events = []
        for row in rows:
            notification = Notification(
                id=row["notification_id"],
                originator_id=row["originator_id"],
                originator_version=row["originator_version"],
                topic=row["topic"],
                state=bytes(row["state"]),
            )
            event = to_contract(store.mapper.to_domain_event(notification), notification.id)
            if event is not None:
                events.append(event)
        after = rows[-1]["notification_id"]
        yield after, events


def _fold_share(
    database_url: str, schema: str, calendar: BusinessCalendar, upto: int, share: tuple[int, int]
) -> tuple[int, int]:
    """Fold one share of the cases' events (up to `upto`) into the build schema's tables;
    returns (events, skipped). Runs in a worker process of its own, without the cyclic
    garbage collector: the tens of thousands of case files held between flushes made its
    full passes the slowest part (they hold no cycles; the process ends afterwards)."""
    gc.disable()
    return asyncio.run(_fold_share_async(database_url, schema, calendar, upto, share))


async def _fold_share_async(
    database_url: str, schema: str, calendar: BusinessCalendar, upto: int, share: tuple[int, int]
) -> tuple[int, int]:
    # The tables exist (the rebuild's own store made sure): two workers creating them at
    # once would collide in the catalogue.
    store = CaseStore(database_url, create_table=False)
    events = skipped = 0
    files = casefile.CaseFiles(calendar)
    try:
        async with (
            await psycopg.AsyncConnection.connect(database_url) as conn,
            conn.transaction(),
        ):
            await conn.execute(
                sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema))
            )
            for _, page in stored_pages(store, 0, upto=upto, share=share):
                # Cases written out by an earlier flush are read back when they return.
                await files.load(conn, (e.feedback_id for e in page))
                for event in page:
                    try:
                        files.apply(event)
                    except deadletters.Unapplicable as why:
                        # The live consumer made it a dead letter: it is not applied here either.
                        log.warning(
                            "rebuild skips %s v%s: %s",
                            event.feedback_number,
                            event.version,
                            why,
                        )
                        skipped += 1
                events += len(page)
                if len(files.files) >= FLUSH_FILES:
                    await files.save(conn, bulk=True)
                    files = casefile.CaseFiles(calendar)
            await files.save(conn, bulk=True)
    finally:
        store.close()
    return events, skipped


async def rebuild(
    database_url: str,
    name: str,
    calendar: BusinessCalendar,
    *,
    workers: int = 3,
    before_switch: Callable[[], Awaitable[None]] | None = None,
) -> RebuildReport:
    """Build `name` again from the store and switch to it. `workers` processes fold a
    share of the cases each (1: in this process; three on two cores measured fastest, as
    PostgreSQL works while a worker waits for it); `before_switch` lets a test store more
    events while the new version is being built."""
    projection = projections().get(name)
    if projection is None:
        raise ValueError(f"no projection {name!r}; there is: {', '.join(projections())}")
    started = time.perf_counter()
    store = CaseStore(database_url)
    schema = f"rebuild_{name}"
    build = sql.Identifier(schema)
    retired = sql.Identifier(f"retired_{name}")
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        async with conn.transaction():
            await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(build))
            await conn.execute(sql.SQL("CREATE SCHEMA {}").format(build))
            await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(build))
            for statement in projection.schema:
                await conn.execute(statement)
        last = store.process_recorder.max_notification_id() or 0
        shares = [(k, max(1, workers)) for k in range(max(1, workers))]
        if len(shares) == 1:
            folded = [await _fold_share_async(database_url, schema, calendar, last, shares[0])]
        else:
            loop = asyncio.get_running_loop()
            with ProcessPoolExecutor(len(shares), mp_context=get_context("spawn")) as pool:
                folded = await asyncio.gather(
                    *(
                        loop.run_in_executor(
                            pool, _fold_share, database_url, schema, calendar, last, share
                        )
                        for share in shares
                    )
                )
        events = sum(e for e, _ in folded)
        skipped = sum(s for _, s in folded)
        log.info("%s: folded %s events in %.1f s", name, events, time.perf_counter() - started)
        async with conn.transaction():
            await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(build))
            # Shares folded side by side could not see each other's cases.
            await casefile.mark_all_repeats(conn)
        log.info("%s: repeats marked at %.1f s; switching", name, time.perf_counter() - started)
        if before_switch is not None:
            await before_switch()
        caught_up = 0
        for attempt in range(1, SWITCH_ATTEMPTS + 1):
            # What was stored while building, first without the lock (it may be many), ...
            async with conn.transaction():
                await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(build))
                for through, page in stored_pages(store, last):
                    await casefile.apply_events(conn, page, calendar)
                    caught_up += len(page)
                    last = through
            try:
                async with conn.transaction():
                    tail, through, cases = await _switch(
                        conn, projection, store, calendar, build, retired, last
                    )
                    seconds = time.perf_counter() - started
                    total = events + caught_up + tail
                    version = await _record_version(conn, name, through, total, seconds)
                break
            except psycopg.errors.LockNotAvailable:
                # Long readers (a BI query) hold the live tables: let them finish, try again.
                log.warning("%s: live tables busy (attempt %s); trying again", name, attempt)
                if attempt == SWITCH_ATTEMPTS:
                    raise
                await asyncio.sleep(1.0)
        caught_up += tail
        events = total
    store.close()
    return RebuildReport(name, version, events, cases, seconds, caught_up, skipped)


async def _record_version(conn: Any, name: str, last: int, events: int, seconds: float) -> int:
    cursor = await conn.execute(
        """
        INSERT INTO projection_versions AS v
            (name, version, switched_at, last_position, events, seconds)
        VALUES (%s, 1, now(), %s, %s, %s)
        ON CONFLICT (name) DO UPDATE SET version = v.version + 1,
            switched_at = now(), last_position = EXCLUDED.last_position,
            events = EXCLUDED.events, seconds = EXCLUDED.seconds
        RETURNING version
        """,
        (name, last, events, seconds),
    )
    row = await cursor.fetchone()
    return int(row[0]) if row else 1


async def _switch(
    conn: Any,
    projection: Projection,
    store: CaseStore,
    calendar: BusinessCalendar,
    build: sql.Identifier,
    retired: sql.Identifier,
    last: int,
) -> tuple[int, int, int]:
    """In the caller's transaction: lock the live tables (waiting at most LOCK_TIMEOUT),
    apply the last events, swap the tables and recreate the views; returns (events applied
    here, last position, cases)."""
    await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    live = ", ".join(f"public.{t}" for t in projection.tables)
    await conn.execute(f"LOCK TABLE {live} IN ACCESS EXCLUSIVE MODE")
    await conn.execute("SET LOCAL lock_timeout = 0")
    await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(build))
    tail = 0
    for through, page in stored_pages(store, last):
        await casefile.apply_events(conn, page, calendar)
        tail += len(page)
        last = through
    await _drop_purged(conn)
    await conn.execute("SET LOCAL search_path TO public")
    await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(retired))
    await conn.execute(sql.SQL("CREATE SCHEMA {}").format(retired))
    for table in projection.tables:
        await conn.execute(
            sql.SQL("ALTER TABLE public.{} SET SCHEMA {}").format(sql.Identifier(table), retired)
        )
        await conn.execute(
            sql.SQL("ALTER TABLE {}.{} SET SCHEMA public").format(build, sql.Identifier(table))
        )
    # Views follow the table they were made on: make them on the new ones.
    for statement in projection.dependents():
        await conn.execute(statement)
    await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(retired))
    await conn.execute(sql.SQL("DROP SCHEMA {}").format(build))
    cursor = await conn.execute("SELECT count(*) FROM registrations")
    row = await cursor.fetchone()
    return tail, last, int(row[0]) if row else 0


async def _drop_purged(conn: Any) -> None:
    """Archived cases the retention purge removed from the live table stay removed."""
    gone = """
        SELECT n.feedback_id FROM registrations n
        WHERE n.status = 'archived'
          AND NOT EXISTS (SELECT 1 FROM public.registrations l WHERE l.feedback_id = n.feedback_id)
    """
    for table in facts_schema.PURGED_WITH_REGISTRATION:
        await conn.execute(f"DELETE FROM {table} WHERE feedback_id IN ({gone})")
    await conn.execute(f"DELETE FROM registrations WHERE feedback_id IN ({gone})")
