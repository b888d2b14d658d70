"""Feedback numbers (`F20240520-0001`) and customer references (`客户-2024-0173`).

Serials come from a counter row per scope in PostgreSQL, incremented atomically, so any
number of intake instances get distinct serials and none is ever reused. A batch of
registrations takes all its serials in one round trip; a number whose registration then
fails (a crash, a refused event, a delivery another instance registered first) stays
unused, a gap. Each instance may also reserve blocks of serials ahead (more gaps).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

SCHEMA = [
    """
    CREATE TABLE IF NOT EXISTS intake_serials (
        scope text PRIMARY KEY,
        last_value bigint NOT NULL
    )
    """
]


def feedback_number(day: datetime, serial: int) -> str:
    return f"F{day:%Y%m%d}-{serial:04d}"


def customer_reference(year: int, serial: int) -> str:
    return f"客户-{year:04d}-{serial:04d}"


class SerialAllocator:
    """Hands out serials per scope, reserving `block_size` at a time from the database."""

    def __init__(self, pool: AsyncConnectionPool, block_size: int = 1) -> None:
        self.pool = pool
        self.block_size = block_size
        self._blocks: dict[str, tuple[int, int]] = {}  # scope -> (next, last)
        self._lock = asyncio.Lock()

    async def take(self, scope: str, count: int) -> list[int]:
        """`count` distinct serials of `scope`, in increasing order."""
        if count <= 0:
            return []
        if self.block_size == 1:
            last = await self._reserve(scope, count)
            return list(range(last - count + 1, last + 1))
        async with self._lock:
            next_value, last = self._blocks.get(scope, (1, 0))
            taken = list(range(next_value, min(last, next_value + count - 1) + 1))
            next_value += len(taken)
            missing = count - len(taken)
            if missing:
                size = max(self.block_size, missing)
                last = await self._reserve(scope, size)
                first = last - size + 1
                taken += range(first, first + missing)
                next_value = first + missing
            self._blocks[scope] = (next_value, last)
            return taken

    async def _reserve(self, scope: str, count: int) -> int:
        """Reserve `count` serials and return the last one reserved."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "INSERT INTO intake_serials (scope, last_value) VALUES (%s, %s) "
                "ON CONFLICT (scope) DO UPDATE SET last_value = intake_serials.last_value + %s "
                "RETURNING last_value",
                (scope, count, count),
            )
            row: Any = await cursor.fetchone()
            return int(row[0])


class FeedbackNumbering:
    def __init__(self, serials: SerialAllocator) -> None:
        self.serials = serials

    async def feedback_numbers(self, local_registration_time: datetime, count: int) -> list[str]:
        scope = f"F{local_registration_time:%Y%m%d}"
        serials = await self.serials.take(scope, count)
        return [feedback_number(local_registration_time, serial) for serial in serials]

    async def customer_references(self, year: int, count: int) -> list[str]:
        serials = await self.serials.take(f"C{year:04d}", count)
        return [customer_reference(year, serial) for serial in serials]
