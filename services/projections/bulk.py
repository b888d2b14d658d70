"""Writing many read-model rows at once: COPY into a staging table, then one upsert."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Columns another writer may set between our read and our write: an upsert keeps theirs.
# (`repeat` is marked on an earlier case by the transaction registering a later one.)
MERGED = {("case_facts", "repeat"): "case_facts.repeat OR EXCLUDED.repeat"}


def update_list(table: str, key: str, columns: Sequence[str]) -> str:
    """The SET list of an upsert: every non-key column from the new row (merged ones kept)."""
    keys = {k.strip() for k in key.split(",")}
    return ", ".join(
        f"{c} = {MERGED.get((table, c), f'EXCLUDED.{c}')}" for c in columns if c not in keys
    )


async def copy_upsert(
    conn: Any, table: str, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Insert or replace `rows` (values in `columns` order) in the caller's transaction;
    `key` names the conflict columns."""
    if not rows:
        return
    stage = f"stage_{table}"
    await conn.execute(
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} (LIKE {table}) ON COMMIT DELETE ROWS"
    )
    names = ", ".join(columns)
    updates = update_list(table, key, columns)
    async with conn.cursor() as cursor:
        async with cursor.copy(f"COPY {stage} ({names}) FROM STDIN") as copy:
            for row in rows:
                await copy.write_row(row)
        await cursor.execute(
            f"INSERT INTO {table} ({names}) SELECT {names} FROM {stage} "
            f"ON CONFLICT ({key}) DO UPDATE SET {updates}"
        )
        await cursor.execute(f"TRUNCATE {stage}")
