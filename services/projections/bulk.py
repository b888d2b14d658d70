"""Writing many read-model rows at once: COPY into a staging table, then one upsert."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


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
    keys = {k.strip() for k in key.split(",")}
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c not in keys)
    async with conn.cursor() as cursor:
        async with cursor.copy(f"COPY {stage} ({names}) FROM STDIN") as copy:
            for row in rows:
                await copy.write_row(row)
        await cursor.execute(
            f"INSERT INTO {table} ({names}) SELECT {names} FROM {stage} "
            f"ON CONFLICT ({key}) DO UPDATE SET {updates}"
        )
        await cursor.execute(f"TRUNCATE {stage}")
