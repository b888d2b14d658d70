"""A service that archives (routing) may start before projections has created the read
model it reads: on a new database that is "nothing to archive yet", not an error logged
with a traceback every hour."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

from services.common.settings import Settings
from services.handling.archiving import archive_closed


async def test_nothing_to_archive_before_the_read_model_exists(settings: Settings) -> None:
    name = f"fresh_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(settings.database_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = make_conninfo(settings.database_url, dbname=name)
        store: Any = None  # never reached: no registration row, no case to change
        async with AsyncConnectionPool(url, min_size=1, max_size=1, open=False) as pool:
            assert await archive_closed(store, pool, after_days=30) == 0
    finally:
        with psycopg.connect(settings.database_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
