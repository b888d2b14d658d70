"""The case read models: projection lag at 1,000 events/s, and rebuild speed on 1,000,000
stored events.

Lag: local PostgreSQL and Kafka, the relay and the projections consumer in their own
process (as `feedback run` runs them); this process stores whole case lives (14 events
each) through the case store at 1,000 events/s for 30 s and polls the registration table;
lag = a case's last event stored -> its row at that version visible. CPU per event is the
whole machine's (every process) over the run.

Rebuild: PostgreSQL alone; 1,000,000 events of case lives stored, then
`feedback projections rebuild cases` (`services.projections.rebuild`) timed.

`python -m bench.projections [EVENTS]` for a smaller rebuild run.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import psycopg

from bench.harness import percentile, platform_process
from contracts.codes import Channel
from contracts.events import Classification, Registration
from deploy.postgres_server import start_postgres
from services.cases.domain import Case
from services.cases.store import CaseStore
from services.common.database import apply_schema
from services.handling import callbacks
from services.projections import bi, registrations
from services.projections.rebuild import rebuild
from services.sla.calendar import load_calendars

EVENTS_PER_CASE = 14
REBUILD_EVENTS = 1_000_000
LAG_RATE = 1_000  # events per second
LAG_SECONDS = 30
DEPARTMENTS = ("after_sales", "logistics", "tech", "product", "finance")
TEXTS = (
    "洗衣机漏水，地板都泡了，要求上门维修",
    "账单里多扣了一笔39元的服务费，要求退款",
    "路由器X200每天晚上断网",
    "快递三天没有更新物流信息",
    "客服态度很好，表扬一下",
)


def case_life(i: int, received: datetime) -> Case:
    """A case from registration to closing: 14 stored events, as the services make them."""
    registration = Registration(
        feedback_number=f"F{received:%Y%m%d}-{i:06d}",
        received_at=received,
        registered_at=received + timedelta(minutes=1),
        channel=list(Channel)[i % len(Channel)],
        customer_ref=f"客户-2026-{i % 50_000:05d}",
        product_model=f"X{100 + i % 40}",
        description=TEXTS[i % len(TEXTS)],
        receiver="bench",
    )
    case = Case.register(uuid4(), registration)
    department = DEPARTMENTS[i % len(DEPARTMENTS)]
    decision = Classification(
        type="complaint", category="product_quality", subcategory="leak",
        priority=("urgent", "high", "medium", "low")[i % 4], department=department,
        emotion="dissatisfied", confidence=0.9,
    ).model_dump(mode="json")  # fmt: skip
    case.classify(decision, "rules")
    case.route(department, "rules")
    case.assign(f"agent-{i % 30}", "routing", "least loaded")
    at = received + timedelta(minutes=2)
    case.start_clock("first_response", None, "24h", "business", received,
                     received + timedelta(hours=24), received + timedelta(hours=18))  # fmt: skip
    case.start_clock("resolution", None, "3wd", "business", received,
                     received + timedelta(days=3), received + timedelta(days=2))  # fmt: skip
    case.accept(f"agent-{i % 30}")
    case.meet_clock("first_response", at + timedelta(hours=1), "OwnerAccepted")
    case.add_note("已联系客户", True, "沟通", f"agent-{i % 30}")
    case.resolve("resolved", "已上门维修", None, None, None, f"agent-{i % 30}")
    case.meet_clock("resolution", at + timedelta(hours=30), "CaseResolved")
    case.confirm(True, None, "customer", False)
    case.rate(4 + i % 2, 9, {}, None, "customer")
    case.close(None, f"agent-{i % 30}", False)
    return case


def machine_busy_s() -> float:
    """CPU seconds used by every process on the machine (all cores) so far."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()[1:]
    ticks = [int(f) for f in fields]
    busy = sum(ticks) - ticks[3] - ticks[4]  # minus idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def lag_run(lines: list[str]) -> None:
    with platform_process(("relay", "projections")) as running:
        url = running.env["DATABASE_URL"]
        store = CaseStore(url)
        stored_at: dict[UUID, float] = {}
        visible_at: dict[UUID, float] = {}
        done = threading.Event()
        cases_per_tick = LAG_RATE // EVENTS_PER_CASE // 10  # every 100 ms

        def write() -> None:
            began = time.monotonic()
            i = 0
            tick = 0
            while time.monotonic() - began < LAG_SECONDS:
                batch = [
                    case_life(i + k, datetime.now(UTC) - timedelta(hours=40))
                    for k in range(cases_per_tick)
                ]
                i += cases_per_tick
                store.save(*batch)
                moment = time.monotonic()
                for case in batch:
                    stored_at[case.id] = moment
                tick += 1
                time.sleep(max(0.0, began + tick * 0.1 - time.monotonic()))
            done.set()

        busy_before = machine_busy_s()
        writer = threading.Thread(target=write)
        writer.start()
        with psycopg.connect(url, autocommit=True) as conn:
            deadline = None
            while True:
                waiting = [c for c in list(stored_at) if c not in visible_at]
                if waiting:
                    rows = conn.execute(
                        "SELECT feedback_id FROM registrations WHERE feedback_id = ANY(%s) "
                        "AND last_version >= %s",
                        (waiting, EVENTS_PER_CASE),
                    ).fetchall()
                    moment = time.monotonic()
                    for (case_id,) in rows:
                        visible_at[case_id] = moment
                if done.is_set():
                    deadline = deadline or time.monotonic() + 60
                    if len(visible_at) == len(stored_at) or time.monotonic() > deadline:
                        break
                time.sleep(0.01)
        writer.join()
        busy = machine_busy_s() - busy_before
        store.close()
    lags = [(visible_at[c] - stored_at[c]) * 1000 for c in visible_at]
    events = len(stored_at) * EVENTS_PER_CASE
    lines.append(
        f"lag at {LAG_RATE:,} events/s for {LAG_SECONDS} s: {len(visible_at):,} of "
        f"{len(stored_at):,} cases visible; last event stored -> visible median "
        f"{percentile(lags, 0.5):.0f} ms, p99 {percentile(lags, 0.99):.0f} ms, "
        f"max {max(lags):.0f} ms"
    )
    lines.append(
        f"machine CPU (relay, Kafka, consumer, PostgreSQL, the writer): "
        f"{busy / events * 1000:.2f} ms per event"
    )


def rebuild_run(lines: list[str], total: int) -> None:
    server = start_postgres()
    try:
        url = server.url
        # What the projections process creates: the BI views read the callback tables too.
        zone = load_calendars().get(None).zone.key
        apply_schema(url, [*registrations.SCHEMA, *callbacks.SCHEMA, *bi.schema(zone, 30)])
        store = CaseStore(url)
        began = time.monotonic()
        received = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
        batch: list[Case] = []
        for i in range(total // EVENTS_PER_CASE):
            batch.append(case_life(i, received + timedelta(seconds=i)))
            if len(batch) == 20:
                store.save(*batch)
                batch = []
        if batch:
            store.save(*batch)
        store.close()
        lines.append(f"{total:,} events stored in {time.monotonic() - began:.0f} s")
        busy = machine_busy_s()
        report = asyncio.run(rebuild(url, "cases", load_calendars().get(None)))
        busy = machine_busy_s() - busy
        lines.append(
            f"rebuild: {report.events:,} events, {report.cases:,} cases in "
            f"{report.seconds:.1f} s = {report.events_per_second:,.0f} events/s "
            f"(three worker processes; machine CPU, PostgreSQL included: "
            f"{busy / report.events * 1e6:.0f} µs per event)"
        )
    finally:
        server.stop()


def run(rebuild_events: int = REBUILD_EVENTS) -> list[str]:
    lines: list[str] = []
    lag_run(lines)
    rebuild_run(lines, rebuild_events)
    return lines


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    events = int(sys.argv[1]) if len(sys.argv) > 1 else REBUILD_EVENTS
    lines: list[str] = []
    if "--lag-only" not in sys.argv:
        rebuild_run(lines, events)
    for line in lines:
        print(line, flush=True)
