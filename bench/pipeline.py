"""The whole pipeline on this machine: bus and storage limits, sustained throughput
(accepted -> visible in the registration table), CPU per feedback per component, and
received -> visible latency at 500/s.

Everything shares the machine's cores, as deployed on one box: PostgreSQL, one Kafka
broker, intake, each consumer (routing, relay, projections, sla, notifications) in its own
`feedback run` process, and the load generator (`wrk`, a paced closed loop, little CPU of
its own; aiohttp for the fixed-rate latency run). CPU is read from each process (and
PostgreSQL's backends) before and after a phase.

Phases:
1. bus limit: 600-byte messages produced with acks=all from one aiokafka producer;
   storage limit: 600-byte JSON rows, executemany 500 per transaction; divided by the
   rows the pipeline itself writes per feedback (inserts + updates + deletes over every
   table, from `pg_stat_user_tables`) it is the storage bound in feedback/s.
2. sustained: load for DURATION_S with wrk at the highest pace the pipeline keeps up
   with (found by a short saturating run first, then confirmed): delivered/s is rows
   visible per second over the load; "kept up" means the backlog at the end drains in a
   few seconds.
3. latency: 500 feedback/s, open loop for LATENCY_S, each one's POST-sent -> row visible.

Results also go to bench/results.json under "pipeline" (keys in the README).
`python -m bench.pipeline [DURATION_S]`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil
import psycopg
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.harness import (
    _command,
    _wait_healthy,
    cpu_seconds,
    free_port,
    percentile,
    process_tree,
)
from deploy.local import LocalInfrastructure, local_infrastructure, local_keys
from services.routing.classifier.evaluation import HOLDOUT_SET, TUNE_SET, load_labelled

DURATION_S = 60.0
LATENCY_RATE = 500.0
LATENCY_S = 20.0
CONSUMERS = ("routing", "relay", "projections", "sla", "notifications")
RESULTS = Path(__file__).with_name("results.json")
WRK_SCRIPT = Path(__file__).with_name("wrk_pipeline.lua")
WRK_CONNECTIONS = 32


# --- the raw limits -------------------------------------------------------------------


async def _bus_limit(bootstrap: str, messages: int = 100_000) -> float:
    topic = f"bench-bus-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024
    )
    await producer.start()
    payload = b"x" * 600
    try:
        began = time.perf_counter()
        batch = []
        for n in range(messages):
            batch.append(await producer.send(topic, payload, key=str(n % 64).encode()))
            if len(batch) >= 5000:
                await asyncio.gather(*batch)
                batch = []
        await asyncio.gather(*batch)
        return messages / (time.perf_counter() - began)
    finally:
        await producer.stop()


def _storage_limit(url: str, rows: int = 50_000) -> float:
    row = json.dumps({"text": "订单说好三天送达" * 20, "n": 0}, ensure_ascii=False)[:600]
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE bench_storage (id bigserial PRIMARY KEY, body jsonb)")
        conn.commit()
        began = time.perf_counter()
        with conn.cursor() as cursor:
            for _ in range(rows // 500):
                cursor.executemany("INSERT INTO bench_storage (body) VALUES (%s)", [(row,)] * 500)
                conn.commit()
        rate = rows / (time.perf_counter() - began)
        conn.execute("DROP TABLE bench_storage")
        conn.commit()
        return rate


def _rows_written(url: str) -> int:
    """Every row inserted, updated or deleted so far, all tables (statistics are flushed
    by each backend within a second of its transaction)."""
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables"
        ).fetchone()
    return int(found[0]) if found else 0


def _transactions_and_statements(url: str) -> tuple[int, int | None]:
    """Transactions committed in this database so far, and SQL statements run in it when
    the server has `pg_stat_statements` loaded (a DATABASE_URL server set up for it; the
    embedded one has not), else None."""
    with psycopg.connect(url, autocommit=True) as conn:
        found = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        transactions = int(found[0]) if found else 0
        try:
            calls = conn.execute(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
                "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ).fetchone()
        except psycopg.Error:
            return transactions, None
    return transactions, int(calls[0]) if calls else None


# --- processes and their CPU ----------------------------------------------------------


@dataclass
class Pipeline:
    infrastructure: LocalInfrastructure
    env: dict[str, str]
    base_url: str
    services: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def components(self) -> dict[str, list[psutil.Process]]:
        found = {name: [psutil.Process(p.pid)] for name, p in self.services.items()}
        kafka = self.infrastructure.kafka.process
        found["kafka"] = [psutil.Process(kafka.pid)] if kafka else []
        found["postgresql"] = _postgres_processes(self.infrastructure.postgres.url)
        return found


def _postgres_processes(url: str) -> list[psutil.Process]:
    with psycopg.connect(url) as conn:
        found = conn.execute("SHOW data_directory").fetchone()
    assert found is not None
    postmaster = int((Path(found[0]) / "postmaster.pid").read_text().split()[0])
    return process_tree(psutil.Process(postmaster))


def component_cpu(pipeline: Pipeline) -> dict[str, float]:
    """CPU seconds so far of each component's processes (live ones only)."""
    return {
        name: cpu_seconds(processes, reaped_children=False)
        for name, processes in pipeline.components().items()
    }


@contextmanager
def pipeline_running() -> Iterator[Pipeline]:
    with local_infrastructure(None) as infrastructure:
        env = {
            **os.environ,
            **infrastructure.environment(),
            **local_keys(None),
            "FEEDBACK_RATE_LIMIT_PER_MINUTE": "100000000",
        }
        port = free_port()
        pipeline = Pipeline(infrastructure, env, f"http://127.0.0.1:{port}")
        try:
            pipeline.services["intake"] = subprocess.Popen(_command(("intake",), port, 1), env=env)
            _wait_healthy(pipeline.base_url)
            for name in CONSUMERS:
                own_port = free_port()
                pipeline.services[name] = subprocess.Popen(_command((name,), own_port, 1), env=env)
                _wait_healthy(f"http://127.0.0.1:{own_port}")
            yield pipeline
        finally:
            for process in pipeline.services.values():
                process.terminate()
            for process in pipeline.services.values():
                process.wait(timeout=60)


def _visible(url: str) -> int:
    with psycopg.connect(url) as conn:
        if conn.execute("SELECT to_regclass('registrations')").fetchone() == (None,):
            return 0
        found = conn.execute("SELECT count(*) FROM registrations").fetchone()
    return int(found[0]) if found else 0


def _wait_drained(url: str, quiet_s: float = 2.0, limit_s: float = 300) -> None:
    """Until no new registration row appeared for `quiet_s` (the backlog is worked off)."""
    last, since = -1, time.monotonic()
    began = since
    while time.monotonic() - began < limit_s:
        now_visible = _visible(url)
        if now_visible != last:
            last, since = now_visible, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.2)


# --- phases -----------------------------------------------------------------------------


def _texts_file() -> Path:
    texts = [item.text for item in load_labelled(TUNE_SET) + load_labelled(HOLDOUT_SET)]
    with tempfile.NamedTemporaryFile(
        "w", suffix=".jsonl", prefix="bench-texts-", delete=False, encoding="utf-8"
    ) as handle:
        for text in texts:
            handle.write(json.dumps(text, ensure_ascii=False) + "\n")
    return Path(handle.name)


@dataclass
class LoadRun:
    seconds: float
    accepted: int
    failed: int
    delivered_during_load: int
    drain_s: float | None
    cpu: dict[str, float]
    rows_per_feedback: float
    transactions_per_feedback: float
    statements_per_feedback: float | None

    @property
    def accepted_per_s(self) -> float:
        return self.accepted / self.seconds

    @property
    def delivered_per_s(self) -> float:
        return self.delivered_during_load / self.seconds


def _load(pipeline: Pipeline, texts: Path, seconds: float, delay_ms: int) -> LoadRun:
    url = pipeline.infrastructure.postgres.url
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("bench.pipeline needs wrk (apt-get install wrk)")
    visible_before = _visible(url)
    rows_before = _rows_written(url)
    transactions_before, statements_before = _transactions_and_statements(url)
    command = [wrk, "-t2", f"-c{WRK_CONNECTIONS}", f"-d{seconds:.0f}s", "-s", str(WRK_SCRIPT)]
    load_env = {**os.environ, "FEEDBACK_TEXTS": str(texts), "FEEDBACK_DELAY_MS": str(delay_ms)}
    cpu_before = component_cpu(pipeline)
    generator = subprocess.Popen(
        [*command, pipeline.base_url], env=load_env, stdout=subprocess.PIPE, text=True
    )
    generator_process = psutil.Process(generator.pid)
    generator_cpu = 0.0
    while generator.poll() is None:
        try:
            times = generator_process.cpu_times()
            generator_cpu = times.user + times.system
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    out = generator.communicate()[0]
    figures = json.loads(out.strip().splitlines()[-1])
    accepted = figures["requests"] - figures["failed"]
    delivered = _visible(url) - visible_before
    # Drained: every accepted feedback visible (bounded wait).
    drain_began = time.monotonic()
    drain_s: float | None = None
    while time.monotonic() - drain_began < 300:
        if _visible(url) - visible_before >= accepted:
            drain_s = time.monotonic() - drain_began
            break
        time.sleep(0.1)
    time.sleep(1.5)  # let idle consumers' last commits and statistics land
    cpu_after = component_cpu(pipeline)
    cpu = {name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after}
    cpu["load generator"] = generator_cpu
    rows = _rows_written(url) - rows_before
    transactions_after, statements_after = _transactions_and_statements(url)
    statements = (
        None
        if statements_before is None or statements_after is None
        else (statements_after - statements_before) / max(1, accepted)
    )
    return LoadRun(
        seconds=figures["seconds"],
        accepted=accepted,
        failed=figures["failed"],
        delivered_during_load=delivered,
        drain_s=drain_s,
        cpu=cpu,
        rows_per_feedback=rows / max(1, accepted),
        transactions_per_feedback=(transactions_after - transactions_before) / max(1, accepted),
        statements_per_feedback=statements,
    )


async def _latency(base_url: str, url: str, rate: float, seconds: float) -> list[float]:
    """Open loop at `rate`: each feedback's POST sent -> its registration row visible."""
    texts = [item.text for item in load_labelled(TUNE_SET)]
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = threading.Event()

    def watch() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            while not done.is_set() or len(seen) < len(sent):
                waiting = [n for n in list(sent) if n not in seen]
                if waiting:
                    rows = conn.execute(
                        "SELECT feedback_number FROM registrations WHERE feedback_number = ANY(%s)",
                        (waiting,),
                    ).fetchall()
                    now = time.perf_counter()
                    for (number,) in rows:
                        seen[number] = now
                time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(base_url, connector=connector) as session:

        async def one(i: int) -> None:
            body = {
                "channel": "web_form",
                "description": texts[i % len(texts)],
                "customer": {"phone": f"15{i:09d}"[:11]},
            }
            began = time.perf_counter()
            async with session.post("/v1/feedback", json=body) as response:
                if response.status == 202:
                    number = (await response.json())["feedback_number"]
                    sent[number] = began

        tasks = []
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            pause = start + i / rate - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    done.set()
    await asyncio.to_thread(watcher.join, 120)
    return [seen[n] - sent[n] for n in sent if n in seen]


def _cpu_lines(run: LoadRun) -> tuple[list[str], dict[str, float]]:
    per_feedback = {name: 1000 * s / max(1, run.accepted) for name, s in run.cpu.items()}
    order = ["intake", *CONSUMERS, "kafka", "postgresql", "load generator"]
    pipeline_total = sum(v for k, v in per_feedback.items() if k != "load generator")
    lines = [
        "  CPU ms per feedback: "
        + ", ".join(f"{name} {per_feedback.get(name, 0.0):.2f}" for name in order),
        f"  CPU ms per feedback, pipeline total (without the load generator): "
        f"{pipeline_total:.2f} -> at most {2000 / pipeline_total:,.0f}/s on 2 cores",
    ]
    return lines, {**per_feedback, "total": pipeline_total}


def run(duration_s: float = DURATION_S) -> list[str]:
    lines: list[str] = []
    results: dict[str, object] = {}
    texts = _texts_file()
    try:
        with pipeline_running() as pipeline:
            url = pipeline.infrastructure.postgres.url
            bus = asyncio.run(_bus_limit(pipeline.infrastructure.kafka.bootstrap_servers))
            storage = _storage_limit(url)
            # Warm-up (connections, JIT-free caches, the classifier model) and the first
            # estimate of what the pipeline can take: a saturating load.
            warm = _load(pipeline, texts, 15, 0)
            lines.append(
                f"saturating 15 s ({WRK_CONNECTIONS} connections, no pause): accepted "
                f"{warm.accepted_per_s:,.0f}/s, delivered {warm.delivered_per_s:,.0f}/s, "
                f"drained in {warm.drain_s or float('nan'):.1f} s"
            )
            rows_per_feedback = warm.rows_per_feedback
            # Pace the connections at what was delivered (90 %), then confirm it holds.
            target = max(50.0, 0.9 * warm.delivered_per_s)
            latency_ms = 20.0
            delay_ms = max(0, int(WRK_CONNECTIONS * 1000 / target - latency_ms))
            sustained = _load(pipeline, texts, duration_s, delay_ms)
            kept_up = sustained.drain_s is not None and sustained.drain_s < 5
            lines += [
                f"bus limit: {bus:,.0f} msg/s (600 B, acks=all, one producer)",
                f"storage limit: {storage:,.0f} rows/s (executemany 500 per transaction); "
                f"the pipeline writes {rows_per_feedback:.1f} rows per feedback -> "
                f"{storage / rows_per_feedback:,.0f} feedback/s",
                f"sustained {duration_s:.0f} s (paced, {delay_ms} ms between requests per "
                f"connection): accepted {sustained.accepted_per_s:,.0f}/s, delivered "
                f"{sustained.delivered_per_s:,.0f}/s, drained "
                + (
                    f"{sustained.drain_s:.1f} s after the load"
                    if sustained.drain_s is not None
                    else "not within 300 s"
                )
                + (" (kept up)" if kept_up else " (fell behind)")
                + f", errors {sustained.failed}",
            ]
            cpu_lines, per_feedback = _cpu_lines(sustained)
            lines += cpu_lines
            statements_note = (
                f", {sustained.statements_per_feedback:.1f} SQL statements"
                if sustained.statements_per_feedback is not None
                else " (SQL statements: with pg_stat_statements loaded only)"
            )
            lines.append(
                f"  per feedback in PostgreSQL: {sustained.transactions_per_feedback:.1f} "
                f"transactions, {sustained.rows_per_feedback:.1f} rows written" + statements_note
            )
            # The pipeline's own latency at half what it sustains, then at the target's 500/s
            # (beyond what it sustains, that one measures the backlog).
            comfortable = max(10.0, round(0.5 * sustained.delivered_per_s / 10) * 10)
            latency_figures: dict[str, float] = {}
            for rate in (comfortable, LATENCY_RATE):
                latencies = asyncio.run(_latency(pipeline.base_url, url, rate, LATENCY_S))
                ms = [v * 1000 for v in latencies]
                sent = int(rate * LATENCY_S)
                lines.append(
                    f"received -> visible at {rate:.0f}/s for {LATENCY_S:.0f} s: "
                    f"n={len(ms)}/{sent} p50 {percentile(ms, 0.5):.0f} ms, "
                    f"p99 {percentile(ms, 0.99):.0f} ms, max {max(ms):.0f} ms"
                )
                latency_figures[f"received_to_visible_at_{rate:.0f}_p50_ms"] = round(
                    percentile(ms, 0.5)
                )
                latency_figures[f"received_to_visible_at_{rate:.0f}_p99_ms"] = round(
                    percentile(ms, 0.99)
                )
                _wait_drained(url)
            sustained_rate = sustained.delivered_per_s if kept_up else warm.delivered_per_s
            lines.append(
                f"ratios: sustained / bus limit {sustained_rate / bus:.1%}, sustained / "
                f"storage limit {sustained_rate / (storage / rows_per_feedback):.1%}"
            )
            results = {
                "bus_limit_msg_per_s": round(bus),
                "storage_limit_rows_per_s": round(storage),
                "rows_per_feedback": round(rows_per_feedback, 2),
                "storage_limit_feedback_per_s": round(storage / rows_per_feedback),
                "saturating_accepted_per_s": round(warm.accepted_per_s),
                "saturating_delivered_per_s": round(warm.delivered_per_s),
                "sustained_accepted_per_s": round(sustained.accepted_per_s),
                "sustained_delivered_per_s": round(sustained.delivered_per_s),
                "sustained_kept_up": kept_up,
                "sustained_seconds": duration_s,
                "cpu_ms_per_feedback": {k: round(v, 3) for k, v in per_feedback.items()},
                "transactions_per_feedback": round(sustained.transactions_per_feedback, 2),
                "statements_per_feedback": (
                    None
                    if sustained.statements_per_feedback is None
                    else round(sustained.statements_per_feedback, 1)
                ),
                **latency_figures,
            }
    finally:
        texts.unlink(missing_ok=True)
    _save(results)
    return lines


def _save(results: dict[str, object]) -> None:
    existing = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    existing["pipeline"] = {"measured": time.strftime("%Y-%m-%d %H:%M"), **results}
    RESULTS.write_text(json.dumps(existing, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    for line in run(float(sys.argv[1]) if len(sys.argv) > 1 else DURATION_S):
        print(line, flush=True)
