"""Closed cases are archived automatically after `archive_after_days` (read-only from then
on: registration, tracking log, correspondence, evidence references and confirmation kept
together in the case's stream)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from psycopg import errors
from psycopg_pool import AsyncConnectionPool

from services.cases.domain import CaseError
from services.cases.store import CaseConflict, CaseStore

log = logging.getLogger(__name__)
SYSTEM = "archiving"


async def archive_closed(store: CaseStore, pool: AsyncConnectionPool, after_days: float) -> int:
    """Archive the cases closed longer ago than `after_days`; returns how many."""
    async with pool.connection() as conn:
        try:
            cursor = await conn.execute(
                "SELECT feedback_id FROM registrations WHERE status = 'closed' "
                "AND updated_at < now() - make_interval(secs => %s) LIMIT 500",
                (after_days * 86400,),
            )
        except errors.UndefinedTable:
            # The projections service creates the read model; a service started before it
            # on a new database has nothing to archive yet (not a failure to report).
            return 0
        due: list[Any] = [row[0] for row in await cursor.fetchall()]
    archived = 0
    for case_id in due:
        try:
            await asyncio.to_thread(store.change, case_id, lambda case: case.archive(SYSTEM))
            archived += 1
        except (CaseError, CaseConflict) as error:  # reopened meanwhile, or busy: next round
            log.info("not archived now: %s", error)
    return archived


async def archive_forever(
    store: CaseStore, pool: AsyncConnectionPool, after_days: float, every_s: float = 3600
) -> None:
    while True:
        try:
            archived = await archive_closed(store, pool, after_days)
            if archived:
                log.info("archived %d closed cases", archived)
        except Exception:
            log.exception("archiving closed cases failed; retrying")
        await asyncio.sleep(every_s)
