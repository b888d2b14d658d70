"""The weekly and monthly reports, written to a folder (FEEDBACK_REPORTS_DIR) as XLSX and
HTML and announced on `feedback.reports` (`ReportPublished`), once per period.

Once: a period is claimed by inserting its row into `report_runs` in the transaction that
computes the report, writes the files and waits for Kafka's acknowledgement of the
announcement; a second instance blocks on the row and then finds it taken, and a failure
rolls the claim back so the next round tries again. Files are written under a temporary
name and renamed, so a reader never sees half a file; a retry rewrites the same names. The
announcement carries a report id derived from the period: a crash between Kafka's
acknowledgement and the commit can announce a period twice with the same id.

Periods are the calendar zone's: a week is Monday to Sunday (ISO week), a month its first
to its last day. Each round writes the latest finished week and month if not yet written
(a period missed while nothing ran is not written afterwards; ask the API for it).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from faststream.kafka import KafkaBroker
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from contracts.events import ReportFile, ReportPublished
from services.common.bus import publish
from services.common.settings import Settings
from services.projections import report_files, reports
from services.projections.report_files import Labels

log = logging.getLogger(__name__)

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "feedback-platform/reports")

SCHEMA = [
    """
    CREATE TABLE IF NOT EXISTS report_runs (
        kind text NOT NULL CHECK (kind IN ('weekly', 'monthly')),
        period text NOT NULL,
        period_from date NOT NULL,
        period_to date NOT NULL,
        report_id uuid NOT NULL,
        claimed_at timestamptz NOT NULL,
        files jsonb NOT NULL DEFAULT '[]',
        total integer NOT NULL,
        PRIMARY KEY (kind, period)
    )
    """
]


@dataclass(frozen=True)
class Period:
    kind: str  # weekly | monthly
    name: str  # 2026-W07 | 2026-02
    first: date
    last: date

    @property
    def report_id(self) -> uuid.UUID:
        return uuid.uuid5(_NAMESPACE, f"{self.kind}:{self.name}")

    @property
    def stem(self) -> str:
        return f"{self.kind}-{self.name}"


def finished_periods(now: datetime, zone: ZoneInfo) -> list[Period]:
    """The latest finished week and month at `now`, in the zone's local dates."""
    today = now.astimezone(zone).date()
    monday = today - timedelta(days=today.weekday())
    week_first, week_last = monday - timedelta(days=7), monday - timedelta(days=1)
    year, week, _ = week_first.isocalendar()
    month_last = today.replace(day=1) - timedelta(days=1)
    month_first = month_last.replace(day=1)
    return [
        Period("weekly", f"{year}-W{week:02d}", week_first, week_last),
        Period("monthly", f"{month_first:%Y-%m}", month_first, month_last),
    ]


def _write_atomically(path: Path, body: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "wb") as handle:
        handle.write(body)
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(path)


def write_files(
    folder: Path, period: Period, made: reports.Summary, labels: Labels, zone: ZoneInfo
) -> list[ReportFile]:
    """The period's XLSX and HTML files in `folder`; what was written."""
    folder.mkdir(parents=True, exist_ok=True)
    sections = report_files.tables(made, labels, zone)
    bodies = {
        "xlsx": report_files.xlsx(made, sections),
        "html": report_files.html(made, sections, labels, zone).encode("utf-8"),
    }
    written = []
    for extension, body in bodies.items():
        name = f"{period.stem}.{extension}"
        _write_atomically(folder / name, body)
        written.append(
            ReportFile(
                name=name,
                format=extension,
                sha256=hashlib.sha256(body).hexdigest(),
                size_bytes=len(body),
            )
        )
    return written


class ReportSchedule:
    """Writes and announces each finished week's and month's report once."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        broker: KafkaBroker,
        settings: Settings,
        folder: Path,
        zone: ZoneInfo,
        labels: Labels,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        poll_s: float = 300.0,
    ) -> None:
        self.pool = pool
        self.broker = broker
        self.settings = settings
        self.folder = folder
        self.zone = zone
        self.labels = labels
        self.now = now
        self.poll_s = poll_s

    async def run_once(self, now: datetime | None = None) -> list[ReportPublished]:
        """Write and announce every finished period not written yet; what was announced."""
        at = now or self.now()
        announced = []
        for period in finished_periods(at, self.zone):
            message = await self._produce(period, at)
            if message is not None:
                announced.append(message)
        return announced

    async def _produce(self, period: Period, at: datetime) -> ReportPublished | None:
        async with self.pool.connection() as conn, conn.transaction():
            claimed = await conn.execute(
                "INSERT INTO report_runs (kind, period, period_from, period_to, report_id, "
                "claimed_at, total) VALUES (%s, %s, %s, %s, %s, %s, 0) "
                "ON CONFLICT DO NOTHING RETURNING 1",
                (period.kind, period.name, period.first, period.last, period.report_id, at),
            )
            if await claimed.fetchone() is None:
                return None  # written already (or being written by another instance)
            made = await reports.summary(
                conn, period.first, period.last, self.zone, reports.Scope(), at
            )
            files = await asyncio.to_thread(
                write_files, self.folder, period, made, self.labels, self.zone
            )
            message = ReportPublished(
                report_id=period.report_id,
                kind=period.kind,
                period=period.name,
                period_from=period.first,
                period_to=period.last,
                zone=self.zone.key,
                total=made.total,
                folder=str(self.folder),
                files=tuple(files),
                generated_at=at,
            )
            await conn.execute(
                "UPDATE report_runs SET files = %s, total = %s WHERE kind = %s AND period = %s",
                (Jsonb([f.model_dump() for f in files]), made.total, period.kind, period.name),
            )
            # Acknowledged before the claim commits: a refusal rolls the claim back.
            await publish(self.broker, self.settings, message)
        log.info("wrote the %s report %s (%d feedback)", period.kind, period.name, made.total)
        return message

    async def run_forever(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:
                log.exception("writing the scheduled reports failed; retrying")
            await asyncio.sleep(self.poll_s)
