"""Deadlines under load: 1,000,000 open timers, 1,000 falling due per second.

PostgreSQL only (the scheduler does not need Kafka): cases with a running first-response
clock are stored through the case store; the timer table gets one row per clock plus far
future rows up to 1,000,000 (the index the scheduler scans is that large). Then due times
are spread so that 1,000 clocks fall due each second for 10 s, and one scheduler process
(this one, as `feedback run sla` runs it) fires them. Printed: time to load, breach
detection lag (due time -> breach stored) median and p99, RSS of this process, CPU.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import psycopg
from psycopg_pool import ConnectionPool

from bench.harness import percentile
from deploy.postgres_server import start_postgres
from services.cases.domain import Case
from services.cases.store import CaseStore
from services.common.database import apply_schema
from services.sla.calendar import load_calendars
from services.sla.policies import load_policies
from services.sla.service import SCHEMA, SlaService

TIMERS = 1_000_000
DUE_PER_S = 1_000
SECONDS = 10


class WallClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class TimedSla(SlaService):
    """Notes when each case's breach was stored."""

    stored_at: dict[UUID, datetime]

    def stored(self, case_ids: list[UUID]) -> None:
        moment = datetime.now(UTC)
        for case_id in case_ids:
            self.stored_at[case_id] = moment


def run() -> list[str]:
    lines: list[str] = []
    server = start_postgres()
    url = server.url
    try:
        os.environ.setdefault("DATABASE_URL", url)
        apply_schema(url, SCHEMA)
        store = CaseStore(url)
        real = DUE_PER_S * SECONDS
        began = time.monotonic()
        start = datetime.now(UTC) + timedelta(seconds=120)  # after loading
        case_ids = []
        batch: list[Case] = []
        for i in range(real):
            case = Case(id=uuid4(), feedback_number=f"F20261201-{i:05d}", registration={})
            due = start + timedelta(seconds=i / DUE_PER_S)
            case.start_clock(
                "first_response", None, "4h", "calendar", due - timedelta(hours=4), due, due
            )
            case.clocks["first_response"]["warned"] = True  # only the breach is measured
            batch.append(case)
            case_ids.append((case.id, due))
            if len(batch) == 500:
                store.save(*batch)
                batch = []
        if batch:
            store.save(*batch)
        stored_s = time.monotonic() - began
        with psycopg.connect(url, autocommit=True) as conn:
            with conn.cursor().copy(
                "COPY sla_timers (case_id, clock_key, kind, fire_at) FROM STDIN"
            ) as copy:
                for case_id, due in case_ids:
                    copy.write_row((case_id, "first_response", "breach", due))
                far = datetime(2030, 1, 1, tzinfo=UTC)
                for i in range(TIMERS - real):
                    copy.write_row(
                        (uuid4(), "first_response", "breach", far + timedelta(seconds=i))
                    )
            conn.execute("ANALYZE sla_timers")
        loaded_s = time.monotonic() - began
        lines.append(
            f"{real:,} cases stored in {stored_s:.1f} s; {TIMERS:,} timers loaded in {loaded_s:.1f} s"
        )
        pool = ConnectionPool(url, min_size=1, max_size=2, kwargs={"autocommit": True})
        sla = TimedSla(store, pool, load_policies(), load_calendars().get(None), WallClock())
        sla.stored_at = {}
        cpu_before = time.process_time()
        asyncio.run(_schedule_until(sla, start + timedelta(seconds=SECONDS + 5)))
        cpu = time.process_time() - cpu_before
        due_of = dict(case_ids)
        lag_ms = [
            (stored - due_of[case_id]).total_seconds() * 1000
            for case_id, stored in sla.stored_at.items()
        ]
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        lines.append(
            f"breaches stored: {len(lag_ms):,} of {real:,}; lag due -> stored median "
            f"{percentile(lag_ms, 0.5):.0f} ms, p99 {percentile(lag_ms, 0.99):.0f} ms, "
            f"max {max(lag_ms):.0f} ms"
        )
        lines.append(
            f"scheduler process: max RSS {rss_mb:.0f} MB (with the loader's memory), "
            f"CPU {cpu:.1f} s = {cpu / max(1, len(lag_ms)) * 1000:.2f} ms per breach"
        )
        pool.close()
        store.close()
    finally:
        server.stop()
    return lines


async def _schedule_until(sla: SlaService, until: datetime) -> None:
    while datetime.now(UTC) < until:
        fired = await asyncio.to_thread(sla.fire_due)
        if not fired:
            await asyncio.sleep(0.05)


if __name__ == "__main__":
    for line in run():
        print(line)
