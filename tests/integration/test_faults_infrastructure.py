"""Faults under load (#13): the Kafka broker and PostgreSQL stopped and started again while web
forms come in, consumers stuck on their own tables beside working ones, and poison on the
intake topic and on `feedback.events`.

This module has a broker and a server of its own (stopping them must not disturb the
session's), and runs the platform as `feedback up` does, in one process that is never
restarted: it has to come back by itself. Each test prints what it injected and the counts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from contracts import topics
from deploy.kafka_broker import LocalKafka, start_kafka
from deploy.postgres_server import LocalPostgres, create_database, start_postgres
from services.common.settings import Settings
from tests.conftest import free_port, signed_in, wait_for, web_form
from tests.integration.test_poison_events import (
    case_registered,
    dead_letters_on_topic,
    feedback_received,
)

pytestmark = pytest.mark.integration

# Intake answers 503 when Kafka has not acknowledged within this, or when the database gave
# no connection within it. A request may first wait for a batch slot (the batches in flight
# each wait up to this), then its batch waits once: two timeouts with Kafka away (a batch that
# found no connection is answered at once, not registered again one by one:
# services/intake/registration.py `_isolate`). With the database away, a batch accepted just
# as it comes back may also wait while the pool replaces its broken connections: a third
# (measured: 8.6 s once in CI, 5.9 s usually). Never as long as the outage itself.
PUBLISH_TIMEOUT_S = 3.0
LONGEST_ANSWER_KAFKA_DOWN_S = 2 * PUBLISH_TIMEOUT_S + 2.0
LONGEST_ANSWER_POSTGRES_DOWN_S = 3 * PUBLISH_TIMEOUT_S + 2.5
OUTAGE_S = 12.0  # longer than either bound: a request that waits for the end fails them
LOAD_PER_S = 25
MAX_IN_FLIGHT = 64
PARTITIONS = 4


# -- the module's own infrastructure and platform ------------------------------------------


@dataclass
class Infrastructure:
    kafka: LocalKafka
    postgres: LocalPostgres


@dataclass
class PlatformProcess:
    process: subprocess.Popen[bytes]
    base_url: str
    settings: Settings
    log: Path
    # Every feedback id answered 202 by any test here: the store must hold these cases only.
    accepted: set[uuid.UUID] = field(default_factory=set)

    def admin(self) -> dict[str, str]:
        return signed_in(self.settings, "admin", username="faults-admin")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def assert_running(self) -> None:
        assert self.process.poll() is None, f"platform exited:\n{self.log_tail()}"


@pytest.fixture(scope="module")
def infrastructure() -> Iterator[Infrastructure]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or os.environ.get("DATABASE_URL"):
        pytest.skip("stops its own broker and server; an external one cannot be stopped here")
    folder = Path(tempfile.mkdtemp(prefix="feedback-faults-"))
    postgres = start_postgres(folder / "pgdata")
    try:
        # A data folder of the test's own: `start_again` brings the broker back with its data.
        kafka = start_kafka(folder / "kafka")
        try:
            yield Infrastructure(kafka, postgres)
        finally:
            kafka.stop()
    finally:
        postgres.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def platform(infrastructure: Infrastructure) -> Iterator[PlatformProcess]:
    folder = Path(tempfile.mkdtemp(prefix="feedback-faults-platform-"))
    settings = Settings(
        database_url=create_database(infrastructure.postgres.url, "faults"),
        kafka_bootstrap_servers=infrastructure.kafka.bootstrap_servers,
        topic_partitions=PARTITIONS,
        pii_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        auth_token_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        publish_timeout_s=PUBLISH_TIMEOUT_S,
    )
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FEEDBACK_")},
        "FEEDBACK_CACHE_DIR": os.environ.get("FEEDBACK_CACHE_DIR", ""),
        "FEEDBACK_TIMEZONE": os.environ.get("FEEDBACK_TIMEZONE", "Asia/Shanghai"),
        # With both named, `feedback up` uses them instead of starting its own.
        "DATABASE_URL": settings.database_url,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "FEEDBACK_PII_KEY": settings.pii_key.get_secret_value(),
        "FEEDBACK_AUTH_TOKEN_KEY": settings.auth_token_key.get_secret_value(),
        "FEEDBACK_TOPIC_PARTITIONS": str(PARTITIONS),
        "FEEDBACK_PUBLISH_TIMEOUT_S": str(PUBLISH_TIMEOUT_S),
        "FEEDBACK_EVIDENCE_DIR": str(folder / "evidence"),
        # One client sends the whole load: the per-client limit is not under test here.
        "FEEDBACK_RATE_LIMIT_PER_MINUTE": "1000000",
    }
    if not environment["FEEDBACK_CACHE_DIR"]:
        del environment["FEEDBACK_CACHE_DIR"]
    port = free_port()
    log = folder / "platform.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "feedback_cli.main", "up"),
                *("--port", str(port), "--state-dir", str(folder / "state")),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environment,
        )
    running = PlatformProcess(process, f"http://127.0.0.1:{port}", settings, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            running.assert_running()
            try:
                if httpx.get(f"{running.base_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"platform not ready in 120 s:\n{running.log_tail()}")
            time.sleep(0.3)
        yield running
    finally:
        # Shown with the failures (pytest keeps a passing test's output to itself).
        print(f"platform log (end):\n{running.log_tail()}")
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(folder, ignore_errors=True)


# -- load -------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int  # 0: no answer (transport error or client timeout)
    seconds: float
    at: float  # since the load began
    retry_after: str | None = None
    feedback_id: uuid.UUID | None = None
    error: str | None = None


@dataclass
class Load:
    """Web forms at a steady rate, each with its own Idempotency-Key (a client that retries
    a refused one sends the same key again)."""

    client: httpx.AsyncClient
    # Every feedback id answered 202 in this module (the store must hold these cases only).
    everyone: set[uuid.UUID]
    began: float = field(default_factory=time.monotonic)
    answers: list[Answer] = field(default_factory=list)
    accepted: dict[str, uuid.UUID] = field(default_factory=dict)  # key -> feedback id
    refused: set[str] = field(default_factory=set)  # keys never answered 202 yet
    skipped: int = 0  # ticks with MAX_IN_FLIGHT requests still open
    retried: int = 0

    def now(self) -> float:
        return time.monotonic() - self.began

    async def send(self, key: str) -> Answer:
        started = time.monotonic()
        try:
            response = await self.client.post(
                "/v1/feedback",
                json=web_form(f"第{key}条：打印机无法连接WiFi，提示驱动安装失败"),
                headers={"Idempotency-Key": key},
            )
        except httpx.HTTPError as error:
            answer = Answer(0, time.monotonic() - started, self.now(), error=repr(error))
        else:
            answer = Answer(
                response.status_code,
                time.monotonic() - started,
                self.now(),
                retry_after=response.headers.get("Retry-After"),
                feedback_id=uuid.UUID(response.json()["feedback_id"])
                if response.status_code == 202
                else None,
                error=None if response.status_code in (202, 503) else response.text[:300],
            )
        self.answers.append(answer)
        if answer.feedback_id is not None:
            assert self.accepted.get(key, answer.feedback_id) == answer.feedback_id, key
            self.accepted[key] = answer.feedback_id
            self.everyone.add(answer.feedback_id)
            self.refused.discard(key)
        else:
            self.refused.add(key)
        return answer

    async def run(self, stop: asyncio.Event, label: str) -> None:
        """LOAD_PER_S new forms a second until `stop` is set, then wait for those in flight."""
        in_flight: set[asyncio.Task[Answer]] = set()
        serial = 0
        while not stop.is_set():
            if len(in_flight) < MAX_IN_FLIGHT:
                serial += 1
                task = asyncio.create_task(self.send(f"{label}-{serial}"))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            else:
                self.skipped += 1
            await asyncio.sleep(1 / LOAD_PER_S)
        if in_flight:
            await asyncio.wait(in_flight)

    async def retry_refused(self, timeout: float) -> None:
        """The clients whose forms were refused send them again (same key) until taken."""
        deadline = time.monotonic() + timeout
        while self.refused and time.monotonic() < deadline:
            keys = sorted(self.refused)
            self.retried += len(keys)
            for chunk in range(0, len(keys), 32):
                await asyncio.gather(*(self.send(k) for k in keys[chunk : chunk + 32]))
            if self.refused:
                await asyncio.sleep(1)
        assert not self.refused, (
            f"still refused after {timeout}s: {sorted(self.refused)[:5]}; answers now "
            f"{dict(self.statuses(self.now() - 5))}: {self.answers[-1]}"
        )

    def statuses(self, since: float = 0.0, until: float = float("inf")) -> Counter[int]:
        return Counter(a.status for a in self.answers if since <= a.at < until)

    def report(self, label: str) -> str:
        slowest = max(a.seconds for a in self.answers)
        refused = [a for a in self.answers if a.status == 503]
        waits = sorted(a.seconds for a in refused) or [0.0]
        return (
            f"{label}: {len(self.answers)} answers {dict(self.statuses())}, "
            f"503 with Retry-After {sum(1 for a in refused if a.retry_after)}/{len(refused)} "
            f"(answered in median {waits[len(waits) // 2]:.2f} s, max {waits[-1]:.2f} s), "
            f"slowest answer {slowest:.2f} s, {self.skipped} ticks skipped (in flight full), "
            f"{self.retried} retries of refused forms, {len(self.accepted)} forms accepted"
        )


def client_of(platform: PlatformProcess) -> httpx.AsyncClient:
    # Longer than any answer may take, so a hang shows as a slow answer, not a lost one.
    return httpx.AsyncClient(
        base_url=platform.base_url,
        timeout=OUTAGE_S + 30,
        # Idle connections are dropped before uvicorn's 5 s keep-alive ends them: else a
        # request may go out on a connection the server is closing (a ReadError, no answer).
        limits=httpx.Limits(max_connections=MAX_IN_FLIGHT + 32, keepalive_expiry=2.0),
    )


async def load_around(
    platform: PlatformProcess, label: str, outage: Any, recovered_s: float = 4.0
) -> tuple[Load, float, float]:
    """Load for a while, `outage()` (an async callable returning once the fault is over)
    in its middle, then load on until everything was taken for `recovered_s`; returns the
    load and when the outage began and ended (seconds into the load)."""
    async with client_of(platform) as client:
        load = Load(client, platform.accepted)
        stop = asyncio.Event()
        running = asyncio.create_task(load.run(stop, label))
        await asyncio.sleep(3)
        assert load.statuses() == Counter({202: len(load.answers)}), load.report(label)
        down_at = load.now()
        await outage()
        up_at = load.now()
        # Load on until it has been taken for `recovered_s` since the last refusal (a slow
        # leader election on a loaded machine moves that moment), at most 30 s.
        deadline = up_at + 30
        while load.now() < deadline:
            refused = [a.at for a in load.answers if a.status != 202]
            if load.now() - max([up_at, *refused]) >= recovered_s:
                break
            await asyncio.sleep(0.2)
        stop.set()
        await running
        await load.retry_refused(timeout=60)
    return load, down_at, up_at


# -- what the store and the read side hold ----------------------------------------------------


def _query(platform: PlatformProcess, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    with psycopg.connect(platform.settings.database_url, connect_timeout=5) as conn:
        return conn.execute(sql, params).fetchall()


def visible(platform: PlatformProcess, ids: list[uuid.UUID]) -> int:
    rows = _query(
        platform, "SELECT count(*) FROM registrations WHERE feedback_id = ANY(%s)", (ids,)
    )
    return int(rows[0][0])


async def assert_each_once(platform: PlatformProcess, load: Load, label: str) -> None:
    """Every feedback answered 202 is visible exactly once and is exactly one case; the
    store holds no case nobody was told about."""
    ids = sorted(set(load.accepted.values()))
    assert len(ids) == len(load.accepted), "two keys were given one feedback id"
    await wait_for(
        lambda: visible(platform, ids) == len(ids),
        timeout=90,
        interval=0.5,
        what=f"{len(ids)} accepted feedbacks visible",
    )
    registered = dict(
        _query(
            platform,
            "SELECT originator_id, count(*) FROM cases_events WHERE originator_id = ANY(%s) "
            "AND topic = 'services.cases.domain:Case.Registered' GROUP BY 1",
            (ids,),
        )
    )
    assert set(registered) == set(ids) and set(registered.values()) == {1}
    (cases,) = _query(platform, "SELECT count(DISTINCT originator_id) FROM cases_events")
    assert cases[0] == len(platform.accepted), "a case nobody was answered 202 for"
    (rows,) = _query(
        platform,
        "SELECT count(*), count(DISTINCT feedback_number), count(DISTINCT feedback_id) "
        "FROM registrations",
    )
    assert rows[0] == rows[1] == rows[2] == len(platform.accepted)
    print(f"{label}: {len(ids)} accepted, all visible once, {len(ids)} cases; store {cases[0]}")


# What each consumer of `feedback.events` writes per case, beside the read side.
CONSUMER_TABLES = {
    "notifications": "SELECT count(*) FROM notification_cases WHERE feedback_id = ANY(%s)",
    "sla timers": "SELECT count(DISTINCT case_id) FROM sla_timers WHERE case_id = ANY(%s)",
    "callbacks": "SELECT count(*) FROM callback_cases WHERE feedback_id = ANY(%s)",
}


async def consumers_caught_up(
    platform: PlatformProcess, ids: list[uuid.UUID], consumers: tuple[str, ...]
) -> None:
    """Wait until each of these consumers has written its row for every case."""
    expected = dict.fromkeys(consumers, len(ids))
    seen: dict[str, int] = {}

    def matches() -> bool:
        seen.update({c: int(_query(platform, CONSUMER_TABLES[c], (ids,))[0][0]) for c in consumers})
        return seen == expected

    try:
        await wait_for(matches, timeout=60, interval=0.5, what=f"{', '.join(consumers)} caught up")
    except AssertionError as error:
        raise AssertionError(f"{error}: {seen}, expected {expected}") from None


def assert_outage_answers(
    load: Load, down_at: float, up_at: float, label: str, longest_s: float
) -> None:
    print(load.report(label))
    never = [a for a in load.answers if a.status not in (202, 503)]
    assert not never, f"answers other than 202/503: {never[:5]}"
    assert all(a.retry_after for a in load.answers if a.status == 503)
    slowest = max(load.answers, key=lambda a: a.seconds)
    assert slowest.seconds < longest_s, f"an answer took {slowest}"
    during = load.statuses(down_at + 1, up_at)
    assert during[503] > 0, f"no 503 while down: {dict(during)}"
    # Recovered by itself: in the last seconds of the load, everything is taken again.
    tail_from = max(a.at for a in load.answers if a.status == 503) if during else up_at
    after = load.statuses(tail_from + 0.001)
    assert after[202] >= LOAD_PER_S, f"did not recover: {dict(after)} after {tail_from:.1f} s"


# -- (a) the Kafka broker stopped and started again -------------------------------------------


async def test_kafka_stopped_and_started_under_load(
    platform: PlatformProcess, infrastructure: Infrastructure
) -> None:
    kafka = infrastructure.kafka
    stopped_for: list[float] = []

    async def outage() -> None:
        began = time.monotonic()
        await asyncio.to_thread(kafka.stop)
        await asyncio.sleep(OUTAGE_S)
        await asyncio.to_thread(kafka.start_again)
        stopped_for.append(time.monotonic() - began)

    load, down_at, up_at = await load_around(platform, "kafka", outage)
    print(
        f"injected: Kafka stopped at {down_at:.1f} s, answering again at {up_at:.1f} s "
        f"({stopped_for[0]:.1f} s down)"
    )
    assert_outage_answers(load, down_at, up_at, "kafka outage", LONGEST_ANSWER_KAFKA_DOWN_S)
    await assert_each_once(platform, load, "kafka outage")
    platform.assert_running()


# -- (b) PostgreSQL stopped and started again -------------------------------------------------


async def test_postgres_stopped_and_started_under_load(
    platform: PlatformProcess, infrastructure: Infrastructure
) -> None:
    postgres = infrastructure.postgres

    async def outage() -> None:
        await asyncio.to_thread(postgres.stop_server)
        await asyncio.sleep(OUTAGE_S)
        await asyncio.to_thread(postgres.start_again)

    load, down_at, up_at = await load_around(platform, "postgres", outage)
    print(f"injected: PostgreSQL stopped (fast) at {down_at:.1f} s, back at {up_at:.1f} s")
    assert_outage_answers(load, down_at, up_at, "postgres outage", LONGEST_ANSWER_POSTGRES_DOWN_S)
    await assert_each_once(platform, load, "postgres outage")
    platform.assert_running()


# -- (c) stuck consumers do not stall the others ----------------------------------------------


async def test_stuck_consumers_do_not_stall_the_others(platform: PlatformProcess) -> None:
    """The notifications consumer and the sla timers consumer (and the sla scheduler) wait
    on locks the test holds on their own tables; routing, the relay and the projections
    deliver meanwhile, and the stuck ones catch up once released, missing nothing."""
    sent = 40
    async with client_of(platform) as client:
        load = Load(client, platform.accepted)
        with psycopg.connect(platform.settings.database_url) as holder:
            holder.execute("LOCK TABLE notification_cases, sla_timers IN ACCESS EXCLUSIVE MODE")
            began = time.monotonic()
            for i in range(sent):
                await load.send(f"stuck-{i}")
                await asyncio.sleep(1 / LOAD_PER_S)
            assert load.statuses() == Counter({202: sent}), load.report("stuck")
            ids = sorted(load.accepted.values())

            def routed() -> bool:
                rows = holder.execute(
                    "SELECT count(*) FROM registrations WHERE feedback_id = ANY(%s) "
                    "AND department IS NOT NULL",
                    (ids,),
                ).fetchone()
                return rows is not None and rows[0] == sent

            await wait_for(routed, timeout=30, interval=0.2, what="routed and projected")
            delivered_in = time.monotonic() - began
            # Really stuck: nothing of these cases reached the locked tables.
            planned = holder.execute(
                "SELECT count(*) FROM notification_cases WHERE feedback_id = ANY(%s)", (ids,)
            ).fetchone()
            timers = holder.execute(
                "SELECT count(*) FROM sla_timers WHERE case_id = ANY(%s)", (ids,)
            ).fetchone()
            assert planned == (0,) and timers == (0,)
            waiting = holder.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"
            ).fetchone()
            held_for = time.monotonic() - began
            holder.rollback()
    print(
        f"injected: notification_cases and sla_timers locked for {held_for:.1f} s "
        f"({waiting[0] if waiting else 0} sessions waiting on them); {sent} forms sent, "
        f"all routed and visible in {delivered_in:.1f} s meanwhile"
    )

    started = time.monotonic()
    await consumers_caught_up(platform, ids, ("notifications", "sla timers"))
    print(f"released: notifications and sla timers caught up in {time.monotonic() - started:.1f} s")
    await assert_each_once(platform, load, "stuck consumers")
    platform.assert_running()


# -- (d) poison on the intake topic and on feedback.events ------------------------------------

UNDECODABLE = b"\xff\xfe\x00 not JSON at all"


def poison_of(good: dict[str, Any], invalid: dict[str, Any]) -> list[tuple[str, bytes]]:
    future = {**good, "schema_version": 2, "language": "zh-CN"}  # what a v2 producer might add
    return [
        ("undecodable", UNDECODABLE),
        ("schema-invalid", json.dumps(invalid).encode()),
        ("future version", json.dumps(future, default=str).encode()),
    ]


def partition_of(feedback_id: uuid.UUID) -> int:
    """Where the producers' default partitioner puts a message keyed by this feedback."""
    partitions = list(range(PARTITIONS))
    return int(DefaultPartitioner()(str(feedback_id).encode(), partitions, partitions))


async def test_poison_is_dead_lettered_and_each_partition_moves_on(
    platform: PlatformProcess,
) -> None:
    received = feedback_received("F20240520-0001").model_dump(mode="json")
    event = case_registered("F20240520-0002", 1).model_dump(mode="json")
    poison = {
        topics.FEEDBACK_RECEIVED: poison_of(received, {**received, "feedback_number": "F-1"}),
        topics.FEEDBACK_EVENTS: poison_of(event, {**event, "version": 0, "registration": {}}),
    }
    # Every partition of both topics gets the three, in this order.
    where: dict[tuple[str, int, int], str] = {}  # (topic, partition, offset) -> kind
    producer = AIOKafkaProducer(
        bootstrap_servers=platform.settings.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=True,
    )
    await producer.start()
    try:
        for topic, bodies in poison.items():
            for partition in range(PARTITIONS):
                for kind, body in bodies:
                    sent = await producer.send_and_wait(topic, body, partition=partition)
                    where[(topic, partition, sent.offset)] = kind
    finally:
        await producer.stop()

    # Good messages behind the poison in every partition: forms until each partition has one.
    async with client_of(platform) as client:
        load = Load(client, platform.accepted)
        covered: set[int] = set()
        for i in range(80):
            answer = await load.send(f"after-poison-{i}")
            assert answer.feedback_id is not None, answer
            covered.add(partition_of(answer.feedback_id))
            if len(covered) == PARTITIONS and i >= 7:
                break
        assert covered == set(range(PARTITIONS))
    ids = sorted(load.accepted.values())
    await assert_each_once(platform, load, "after poison")

    await consumers_caught_up(platform, ids, tuple(CONSUMER_TABLES))

    rows = _query(
        platform,
        "SELECT dead_letter_id, source, reason, metadata FROM deadletters "
        "WHERE metadata->>'topic' = ANY(%s)",
        (list(poison),),
    )
    letters: dict[tuple[str, str], dict[tuple[int, int], str]] = {}
    for _, source, reason, metadata in rows:
        spot = (int(metadata["partition"]), int(metadata["offset"]))
        letters.setdefault((metadata["topic"], source), {})[spot] = reason
    expected_sources = {
        topics.FEEDBACK_RECEIVED: {"routing"},
        topics.FEEDBACK_EVENTS: {
            "projections.registrations",
            "callbacks",
            "notifications",
            "sla.timers",
        },
    }
    assert {key: set(spots) for key, spots in letters.items()} == {
        (topic, source): {(p, o) for (t, p, o) in where if t == topic}
        for topic, sources in expected_sources.items()
        for source in sources
    }
    for (topic, source), reasons in letters.items():
        for (partition, offset), reason in reasons.items():
            kind = where[(topic, partition, offset)]
            if kind == "future version":
                assert "unsupported schema_version 2" in reason, (source, reason)
            else:
                assert "ValidationError" in reason, (source, reason)
    on_topic = {d.dead_letter_id for d in await dead_letters_on_topic(platform.settings)}
    assert {row[0] for row in rows} <= on_topic
    counts = Counter((topic, source) for (topic, source), spots in letters.items() for _ in spots)
    print(
        f"injected: {len(where)} poison records ({', '.join(k for k, _ in poison_of({}, {}))} "
        f"in each of {PARTITIONS} partitions of {' and '.join(poison)}); dead letters "
        f"{dict(counts)}; {len(ids)} good forms behind them all delivered"
    )
