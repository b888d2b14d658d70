"""The console's main pages with 100,000 cases stored: median and p95 of each whole page
(session check, the API calls through the in-process API, template rendering), timed on the
server in this process: the work list (`/queue`), the SLA board (`/sla`) and the report of the
last 30 days (`/reports`, over the case facts). Target: well under 1 s for the first paint.

Local PostgreSQL and Kafka (the platform starts every service, as `feedback up` does); the
read model's rows (registrations, case_clocks, case_facts) of synthetic cases are loaded with COPY
before the platform starts: two years of cases, half of them still open (a heavy backlog),
in seven departments of uneven size, with the clocks the SLA policies start (met, running,
paused, warned and breached). Pages are asked for as a supervisor and an agent of the
largest department, and as quality (every department). (The archiving job logs that the
synthetic closed cases have no case stream to archive: they are read-model rows only.)

`python -m bench.console_queue --cases 20000` is a quick run; `python -m bench
console_queue` runs the full size.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg

from bench.harness import free_port, percentile
from deploy.local import local_infrastructure, local_keys
from services.access.roles import Actor, Role
from services.access.tokens import Tokens
from services.common import http_server
from services.common.database import apply_schema
from services.common.settings import Settings
from services.console.session import SESSION_COOKIE
from services.projections import registrations

CASES = 100_000
REQUESTS = 30
SEED = 14
OPEN_SHARE = 0.5

# Department -> (share of cases, its agents as config/agents.yaml names them).
DEPARTMENTS = {
    "after_sales": (0.25, ["as-lin", "as-xu"]),
    "customer_service": (0.2, ["cs-wang", "cs-li", "cs-zhao"]),
    "tech": (0.15, ["tech-chen", "tech-zhou"]),
    "product": (0.15, ["prod-sun", "prod-wu"]),
    "logistics": (0.12, ["log-feng", "log-he"]),
    "finance": (0.08, ["fin-ma"]),
    "operations": (0.05, ["ops-zheng"]),
}
OPEN_STATUSES = ["queued", "assigned", "accepted", "in_progress", "pending_info", "reopened",
                 "resolved", "disputed"]  # fmt: skip
CLOSED_STATUSES = ["closed", "archived"]
PRIORITIES = (["urgent"] * 4) + (["high"] * 20) + (["medium"] * 50) + (["low"] * 26)
CHANNELS = ["phone", "email", "web_chat", "web_form", "wechat", "weibo", "douyin", "store"]
TYPES = ["complaint"] * 5 + ["inquiry"] * 2 + ["help", "suggestion", "praise"]
CATEGORIES = ["product_function", "product_quality", "service_experience", "logistics",
              "after_sales", "billing", "information", "policy", "other"]  # fmt: skip
CLOCK_HOURS = {"first_response": 24, "progress_update": 24, "resolution": 72}
SUPERVISED = "after_sales"


def generated(count: int, now: datetime) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Registration rows and their clocks, with a fixed seed."""
    rng = random.Random(SEED)
    names = list(DEPARTMENTS)
    weights = [share for share, _ in DEPARTMENTS.values()]
    span_s = 2 * 365 * 86400
    for i in range(count):
        is_open = rng.random() < OPEN_SHARE
        # Open cases are mostly recent; a few have been left open for months.
        age_s = rng.randrange(30 * 86400 if rng.random() < 0.9 else span_s) if is_open else (
            rng.randrange(span_s)
        )  # fmt: skip
        received = now - timedelta(seconds=age_s)
        department = rng.choices(names, weights)[0] if rng.random() < 0.98 else None
        agents = DEPARTMENTS[department][1] if department else []
        status = rng.choice(OPEN_STATUSES) if is_open else rng.choice(CLOSED_STATUSES)
        if department is None:
            status = "triage" if is_open else status
        owner = rng.choice(agents) if agents and status != "queued" else None
        case_id = uuid.UUID(int=rng.getrandbits(128))
        clocks: list[dict[str, Any]] = []
        for clock, hours in CLOCK_HOURS.items():
            if clock == "resolution" and rng.random() < 0.5:
                continue
            started = received + timedelta(minutes=rng.randrange(1, 60))
            due = started + timedelta(hours=hours)
            warn = started + timedelta(hours=hours * 0.75)
            met = not is_open or (clock == "first_response" and status != "assigned")
            paused = is_open and not met and status == "pending_info"
            clocks.append({
                "feedback_id": case_id, "clock_key": clock, "clock": clock, "time": "business",
                "target": f"{hours}h", "started_at": started, "due_at": due, "warn_at": warn,
                "state": "met" if met else "paused" if paused else "running",
                "paused_at": started + timedelta(hours=1) if paused else None,
                "warned": warn < now, "breached": due < now,
                "met_at": min(due, now) if met else None, "late": (due < now) if met else None,
            })  # fmt: skip
        open_clocks = [c for c in clocks if c["state"] != "met"]
        yield (
            {
                "feedback_id": case_id,
                "feedback_number": f"F{received:%Y%m%d}-{i:07d}",
                "received_at": received,
                "channel": rng.choice(CHANNELS),
                "customer_tier": "vip" if rng.random() < 0.1 else "normal",
                "status": status,
                "department": department,
                "owner": owner,
                "priority": rng.choice(PRIORITIES),
                "feedback_type": rng.choice(TYPES),
                "category": rng.choice(CATEGORIES),
                "warned_clocks": [c["clock"] for c in open_clocks if c["warned"]],
                "breached_clocks": [c["clock"] for c in open_clocks if c["breached"]],
            },
            clocks,
        )


FACT_COLUMNS = (
    "feedback_id", "feedback_number", "customer_ref", "received_at", "registered_at", "channel",
    "feedback_type", "category", "priority", "department", "owner", "customer_tier",
    "product_model", "status", "first_response_at", "resolved_at", "closed_at",
    "first_response_business_minutes", "first_response_calendar_minutes",
    "resolution_business_minutes", "resolution_calendar_minutes", "csat", "nps", "repeat",
    "breached_count", "last_version", "updated_at",
)  # fmt: skip
MODELS = [f"W{n}" for n in range(10, 30)]


def facts(
    rows: Iterator[tuple[dict[str, Any], list[dict[str, Any]]]], now: datetime
) -> Iterator[tuple[Any, ...]]:
    """One case_facts row per case (what the reports read), from the same cases."""
    rng = random.Random(SEED + 1)
    for row, clocks in rows:
        received = row["received_at"]
        closed = row["status"] in CLOSED_STATUSES
        first_minutes = rng.uniform(5, 60 * 24)
        resolution_minutes = rng.uniform(60, 60 * 96) if closed else None
        resolved = received + timedelta(minutes=resolution_minutes) if resolution_minutes else None
        yield (
            row["feedback_id"], row["feedback_number"], f"客户-{rng.randrange(40_000):05d}",
            received, received, row["channel"], row["feedback_type"], row["category"],
            row["priority"], row["department"], row["owner"], row["customer_tier"],
            rng.choice(MODELS), row["status"], received + timedelta(minutes=first_minutes),
            resolved, resolved, first_minutes, first_minutes * 1.4, resolution_minutes,
            resolution_minutes * 1.4 if resolution_minutes else None,
            rng.randint(1, 5) if closed and rng.random() < 0.6 else None,
            rng.randint(0, 10) if closed and rng.random() < 0.4 else None,
            rng.random() < 0.05, sum(1 for c in clocks if c["breached"]), 1, now,
        )  # fmt: skip


def load(url: str, count: int, now: datetime) -> list[str]:
    tables = [s for s in registrations.SCHEMA if "CREATE INDEX" not in s]
    indexes = [s for s in registrations.SCHEMA if "CREATE INDEX" in s]
    apply_schema(url, tables)
    began = time.monotonic()
    clock_columns = ("feedback_id", "clock_key", "clock", "time", "target", "started_at",
                     "due_at", "warn_at", "state", "paused_at", "warned", "breached", "met_at",
                     "late")  # fmt: skip
    all_clocks: list[dict[str, Any]] = []
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cursor:
        with cursor.copy(
            "COPY registrations (feedback_id, feedback_number, received_at, registered_at, "
            "channel, customer_ref, customer_tier, description, receiver, registration_late, "
            "status, last_version, updated_at, department, owner, priority, feedback_type, "
            "category, warned_clocks, breached_clocks) FROM STDIN"
        ) as copy:
            for row, clocks in generated(count, now):
                all_clocks += clocks
                copy.write_row(
                    (row["feedback_id"], row["feedback_number"], row["received_at"],
                     row["received_at"], row["channel"], "客户-bench", row["customer_tier"],
                     "洗衣机漏水，要求上门维修", "bench", False, row["status"], 1,
                     row["received_at"], row["department"], row["owner"], row["priority"],
                     row["feedback_type"], row["category"], row["warned_clocks"],
                     row["breached_clocks"])
                )  # fmt: skip
        with cursor.copy(f"COPY case_clocks ({', '.join(clock_columns)}) FROM STDIN") as copy:
            for clock in all_clocks:
                copy.write_row(tuple(clock[c] for c in clock_columns))
        with cursor.copy(f"COPY case_facts ({', '.join(FACT_COLUMNS)}) FROM STDIN") as copy:
            for fact in facts(generated(count, now), now):
                copy.write_row(fact)
        for statement in indexes:
            conn.execute(statement.encode())
        conn.execute("VACUUM (ANALYZE) registrations")
        conn.execute("VACUUM (ANALYZE) case_clocks")
        conn.execute("VACUUM (ANALYZE) case_facts")
        open_count = conn.execute(
            "SELECT count(*) FROM registrations WHERE status NOT IN ('closed', 'archived')"
        ).fetchone()
    assert open_count is not None
    return [
        f"{count:,} cases ({open_count[0]:,} open) and {len(all_clocks):,} clocks loaded and "
        f"indexed in {time.monotonic() - began:.0f} s"
    ]


async def measure(settings: Settings, requests: int) -> list[str]:
    from services.runtime import create_app

    app = create_app(settings)
    port = free_port()
    server = http_server.server(app, settings, "127.0.0.1", port)
    task = asyncio.create_task(server.serve())
    tokens = Tokens(settings)
    viewers = {
        f"supervisor ({SUPERVISED})": Actor("bench-supervisor", Role.supervisor, (SUPERVISED,)),
        f"agent ({SUPERVISED})": Actor("bench-agent", Role.agent, (SUPERVISED,), "as-lin"),
        "quality (every department)": Actor("bench-quality", Role.quality),
    }
    pages = {
        "/queue": ("supervisor", "agent", "quality"),
        "/queue?mine=true": ("agent",),
        # One priority: every open case in scope is in the first sort group.
        "/queue?priority=medium": ("supervisor", "quality"),
        "/queue?priority=high&channel=phone": ("supervisor",),
        "/queue?status=pending_info&tier=vip": ("supervisor",),
        "/queue/list?pages=3": ("supervisor",),
        "/sla": ("supervisor", "quality"),
        # The last 30 days by default: about half the open cases and their facts.
        "/reports": ("supervisor", "quality"),
    }
    lines: list[str] = []
    try:
        # In process, no socket: the server's own time for each page.
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            deadline = time.monotonic() + 120
            while (await client.get("/health")).status_code != 200:
                if time.monotonic() > deadline:
                    raise TimeoutError("platform not ready")
                await asyncio.sleep(0.2)
            for label, actor in viewers.items():
                client.cookies.set(SESSION_COOKIE, tokens.issue(actor))
                for path, who in pages.items():
                    if label.split()[0] not in who:
                        continue
                    latencies, rows = await timed(client, path, requests)
                    lines.append(
                        f"GET {path} as {label}: median {statistics.median(latencies):.0f} ms, "
                        f"p95 {percentile(latencies, 0.95):.0f} ms, max {max(latencies):.0f} ms "
                        f"({rows} rows shown, {len(latencies)} requests)"
                    )
                client.cookies.clear()
    finally:
        server.should_exit = True
        await task
    return lines


async def timed(client: httpx.AsyncClient, path: str, requests: int) -> tuple[list[float], int]:
    latencies: list[float] = []
    body = ""
    for i in range(requests + 2):
        began = time.perf_counter()
        answer = await client.get(path)
        elapsed = (time.perf_counter() - began) * 1000
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
        body = answer.text
        if i >= 2:  # the first two warm the caches (templates, plans, pool)
            latencies.append(elapsed)
    assert 'class="error"' not in body and 'role="alert"' not in body, body[:2000]
    return latencies, body.count("data-number=")


def run(cases: int = CASES, requests: int = REQUESTS) -> list[str]:
    now = datetime.now(UTC)
    with local_infrastructure(None) as infrastructure:
        keys = local_keys(None)
        name = f"bench_queue_{uuid.uuid4().hex[:8]}"
        settings = Settings(
            database_url=infrastructure.postgres.url,
            kafka_bootstrap_servers=infrastructure.kafka.bootstrap_servers,
            topic_prefix=f"{name}.",
            pii_key=keys["FEEDBACK_PII_KEY"],
            auth_token_key=keys["FEEDBACK_AUTH_TOKEN_KEY"],
        )
        lines = load(settings.database_url, cases, now)
        lines += asyncio.run(measure(settings, requests))
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=CASES)
    parser.add_argument("--requests", type=int, default=REQUESTS)
    arguments = parser.parse_args()
    for line in run(arguments.cases, arguments.requests):
        print(line, flush=True)
