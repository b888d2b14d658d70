"""PostgreSQL access shared by the services: URL parsing, async pool, schema set-up."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool


def eventsourcing_env(
    database_url: str, *, pool_size: int = 5, create_table: bool = True
) -> dict[str, str]:
    """The eventsourcing library reads its PostgreSQL settings from an env mapping
    (`create_table=False` for a reader that must not race others creating the tables)."""
    params = conninfo_to_dict(database_url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": str(params.get("dbname", "postgres")),
        "POSTGRES_HOST": str(params.get("host", "127.0.0.1")),
        "POSTGRES_PORT": str(params.get("port", "5432")),
        "POSTGRES_USER": str(params.get("user", "postgres")),
        "POSTGRES_PASSWORD": str(params.get("password", "")),
        "POSTGRES_POOL_SIZE": str(pool_size),
        "POSTGRES_LOCK_TIMEOUT": "5",
        "CREATE_TABLE": "y" if create_table else "n",
    }


# PostgreSQL advisory lock keys, one per purpose, kept here so that none is used twice.
SCHEMA_LOCK = 7321001  # applying schema statements
RELAY_LOCK = 7321002  # the one case-event relay
INTAKE_OUTBOX_LOCK = 7321003  # the one intake outbox drainer


def open_pool(
    database_url: str, *, min_size: int = 1, max_size: int = 10, timeout: float = 30.0
) -> AsyncConnectionPool:
    """`timeout`: how long a caller waits for a connection before PoolTimeout (while
    PostgreSQL is away the pool has none to give)."""
    return AsyncConnectionPool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        open=False,
        kwargs={"autocommit": True},
    )


@contextmanager
def schema_lock(database_url: str) -> Iterator[psycopg.Connection]:
    """One process at a time creates tables: several services may start at once against
    one database, and concurrent CREATE TABLE IF NOT EXISTS of one table can fail in
    PostgreSQL's catalog (duplicate key in pg_type) instead of finding it there."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK,))
        try:
            yield conn
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK,))


def apply_schema(database_url: str, statements: Iterable[str]) -> None:
    """Create tables idempotently; every service calls this for its own tables at start."""
    with schema_lock(database_url) as conn:
        for statement in statements:
            conn.execute(statement.encode())
