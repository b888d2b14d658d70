"""Faults under load: each service in its own OS process (`feedback run <service>`) on the
session's Kafka and PostgreSQL; for each of intake, routing, relay, projections and sla, a
steady load of web-form feedback, `kill -9` of that service's process in the middle, a
restart, the rest of the load, then: every feedback answered 202 is registered exactly once,
has exactly one case whose facts are each recorded once, appears once in every projection,
and has its SLA clocks once. Answers other than 202 are allowed only while intake itself is
down (the connection fails) or as 503. Keyed submissions that were not answered 202 are sent
again with the same Idempotency-Key until they are, and must then be there exactly once too.

One deployment serves all five rounds (starting five processes is the slow part); each round
checks its own feedback, told apart by a prefix in the description, and the whole database.
`pytest -s` prints what was injected and the counts."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from contracts import topics
from deploy.kafka_broker import LocalKafka
from deploy.postgres_server import LocalPostgres
from services.common.settings import Settings
from tests.conftest import (
    committed_offsets,
    free_port,
    fresh_settings,
    messages_in,
    wait_for,
    web_form,
)

pytestmark = pytest.mark.integration

SERVICES = ("intake", "routing", "relay", "projections", "sla")
RUN = (sys.executable, "-m", "feedback_cli.main", "run")
# The load of one round: ITEMS at RATE per second (CONCURRENCY at most in flight), the kill
# after KILL_AFTER of them were sent, then TAIL more once the killed service is back.
ITEMS = 360
RATE = 120.0
CONCURRENCY = 16
KILL_AFTER = 120
TAIL = 60
# Consumer groups and the topic each reads: all must have caught up before checking (the
# callbacks are read in the projections' group).
GROUPS = (
    ("routing", topics.FEEDBACK_RECEIVED),
    ("projections", topics.FEEDBACK_EVENTS),
    ("sla", topics.FEEDBACK_EVENTS),
    ("sla-timers", topics.FEEDBACK_EVENTS),
)
# Read models with one row per feedback (by number); department_stints has one per stay.
PROJECTIONS = ("registrations", "case_facts", "case_search", "routing_cases")


class Deployment:
    """The five services as separate processes, one port each, logs in files."""

    def __init__(self, settings: Settings, folder: Path) -> None:
        self.settings = settings
        self.folder = folder
        self.env = {
            **os.environ,
            "DATABASE_URL": settings.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
            "FEEDBACK_TOPIC_PREFIX": settings.topic_prefix,
            "FEEDBACK_PII_KEY": settings.pii_key.get_secret_value(),
            "FEEDBACK_AUTH_TOKEN_KEY": settings.auth_token_key.get_secret_value(),
            "FEEDBACK_EVIDENCE_DIR": str(folder / "evidence"),
            # One client address sends the whole load.
            "FEEDBACK_RATE_LIMIT_PER_MINUTE": "1000000",
            # A claim left by a killed intake is finished by a retry after 2 x this.
            "FEEDBACK_PUBLISH_TIMEOUT_S": "3",
        }
        self.ports = {service: free_port() for service in SERVICES}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.starts: Counter[str] = Counter()

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def start(self, service: str) -> None:
        self.starts[service] += 1
        log = self.folder / f"{service}.{self.starts[service]}.log"
        with open(log, "wb") as out:
            self.processes[service] = subprocess.Popen(
                [*RUN, service, "--port", str(self.ports[service])],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )

    def kill9(self, service: str) -> None:
        process = self.processes[service]
        process.send_signal(signal.SIGKILL)  # no shutdown, no final commit or flush
        process.wait(timeout=10)

    async def healthy(self, service: str) -> bool:
        process = self.processes[service]
        if process.poll() is not None:
            raise AssertionError(
                f"{service} exited with {process.returncode}:\n{self.log(service)}"
            )
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(f"{self.url(service)}/health")).status_code == 200
        except httpx.TransportError:
            return False

    async def wait_healthy(self, service: str, timeout: float = 120) -> None:
        await wait_for(
            lambda: self.healthy(service), timeout=timeout, what=f"{service} healthy", interval=0.1
        )

    def log(self, service: str) -> str:
        return (self.folder / f"{service}.{self.starts[service]}.log").read_text()[-3000:]

    def ensure_running(self) -> None:
        for service in SERVICES:
            process = self.processes.get(service)
            if process is None or process.poll() is not None:
                self.start(service)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def deployment(
    postgres: LocalPostgres, kafka: LocalKafka, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    settings = fresh_settings(postgres, kafka, topic_partitions=4)
    running = Deployment(settings, tmp_path_factory.mktemp("kill9"))
    try:
        yield running
    finally:
        running.stop()


@dataclass
class Item:
    """One feedback of the load, and every answer it got."""

    text: str
    key: str | None
    answers: list[tuple[float, str]] = field(default_factory=list)
    number: str | None = None

    @property
    def accepted(self) -> bool:
        return self.number is not None


async def _send(client: httpx.AsyncClient, item: Item) -> str:
    headers = {"Idempotency-Key": item.key} if item.key else {}
    try:
        response = await client.post("/v1/feedback", json=web_form(item.text), headers=headers)
    except httpx.TransportError as error:
        answer = type(error).__name__
    else:
        answer = str(response.status_code)
        if response.status_code == 202:
            number = response.json()["feedback_number"]
            assert item.number in (None, number), f"{item.text}: {item.number}, then {number}"
            item.number = number
    item.answers.append((time.monotonic(), answer))
    return answer


async def _drive(
    client: httpx.AsyncClient, items: list[Item], kill_after: int | None, kill: asyncio.Event
) -> None:
    """Send at RATE a second, at most CONCURRENCY at once; set `kill` after `kill_after`."""
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(CONCURRENCY)
    began = loop.time()
    sending: list[asyncio.Task[str]] = []
    for index, item in enumerate(items):
        await asyncio.sleep(max(0.0, began + index / RATE - loop.time()))
        await slots.acquire()
        task = asyncio.create_task(_send(client, item))
        task.add_done_callback(lambda _: slots.release())
        sending.append(task)
        if index + 1 == kill_after:
            kill.set()
    await asyncio.gather(*sending)


async def _resend_until_accepted(client: httpx.AsyncClient, items: list[Item]) -> int:
    """Keyed items not answered 202: the same request again until it is (409 while the
    first attempt's claim is still fresh, see Registrar._existing_many)."""
    again = [item for item in items if item.key and not item.accepted]
    deadline = time.monotonic() + 60
    for item in again:
        while not item.accepted:
            assert time.monotonic() < deadline, f"{item.text} never accepted: {item.answers}"
            if await _send(client, item) != "202":
                await asyncio.sleep(0.5)
    return len(again)


def _rows(settings: Settings, query: str | sql.Composed, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.database_url) as conn:
        return conn.execute(query, params).fetchall()


async def _settled(settings: Settings) -> bool:
    """Intake has finished what a killed process left (its reconcile loop publishes kept
    claims), the relay has published every stored event and every group has read its topic."""
    [(unfinished, stored, relayed)] = _rows(
        settings,
        "SELECT (SELECT count(*) FROM intake_deduplication WHERE NOT published) "
        "+ (SELECT count(*) FROM intake_outbox), "
        "(SELECT coalesce(max(notification_id), 0) FROM cases_events), "
        "(SELECT coalesce(max(last_notification_id), 0) FROM outbox_positions)",
    )
    if unfinished or stored != relayed:
        return False
    for group, topic in GROUPS:
        if await committed_offsets(settings, group, topic) != await messages_in(settings, topic):
            return False
    return True


@pytest.mark.timeout(150)
@pytest.mark.parametrize("victim", SERVICES)
async def test_kill_9_under_load_loses_and_repeats_nothing(
    deployment: Deployment, victim: str
) -> None:
    settings = deployment.settings
    deployment.ensure_running()
    began = time.monotonic()
    for service in SERVICES:
        await deployment.wait_healthy(service)
    print(f"\n[{victim}] deployment healthy after {time.monotonic() - began:.1f}s")

    prefix = f"故障注入[{victim}]"
    items = [
        Item(f"{prefix}第{i}件：洗衣机脱水时异响", f"{victim}-{i}" if i % 2 == 0 else None)
        for i in range(ITEMS + TAIL)
    ]
    kill = asyncio.Event()
    window: dict[str, float] = {}

    async def inject() -> None:
        await kill.wait()
        [(stored_cases,)] = _rows(settings, "SELECT count(*) FROM registrations")
        window["down"] = time.monotonic()
        deployment.kill9(victim)
        deployment.start(victim)
        answered = sum(item.accepted for item in items)
        print(
            f"[{victim}] kill -9 after {KILL_AFTER} of {ITEMS} sent ({answered} answered 202, "
            f"{stored_cases} registrations visible in all rounds); restarted at once"
        )
        await deployment.wait_healthy(victim)
        window["up"] = time.monotonic()

    async with httpx.AsyncClient(base_url=deployment.url("intake"), timeout=30) as client:
        injector = asyncio.create_task(inject())
        await _drive(client, items[:ITEMS], KILL_AFTER, kill)
        await injector
        print(f"[{victim}] healthy again {window['up'] - window['down']:.1f}s after the kill")
        await _drive(client, items[ITEMS:], None, asyncio.Event())
        resent = await _resend_until_accepted(client, items)

    # Answers other than 202: 503, or a failed connection while intake was down.
    answers = Counter(answer for item in items for _, answer in item.answers)
    for item in items:
        for at, answer in item.answers:
            if answer in ("202", "503") or (answer == "409" and item.key):
                continue
            assert victim == "intake", f"{item.text} answered {answer} while {victim} was killed"
            assert answer.endswith("Error") and window["down"] <= at <= window["up"], (
                f"{item.text} answered {answer} outside intake's restart"
            )

    drain_began = time.monotonic()
    await wait_for(lambda: _settled(settings), timeout=90, what="drained", interval=0.5)
    print(f"[{victim}] drained {time.monotonic() - drain_began:.1f}s after the load")

    # Exactly once in the registration table: every item at most once, and once if accepted.
    registered = {
        text: numbers
        for text, numbers in _rows(
            settings,
            "SELECT description, array_agg(feedback_number) FROM registrations "
            "WHERE description LIKE %s GROUP BY description",
            prefix + "%",
        )
    }
    accepted = [item for item in items if item.accepted]
    assert all(item.key is None or item.accepted for item in items)
    missing = [item.text for item in accepted if item.text not in registered]
    assert not missing, f"answered 202 but never registered: {missing[:5]} ({len(missing)})"
    twice = {text: numbers for text, numbers in registered.items() if len(numbers) > 1}
    assert not twice, f"registered more than once: {list(twice.items())[:5]} ({len(twice)})"
    wrong = [i.text for i in accepted if registered[i.text] != [i.number]]
    assert not wrong, f"registered under another number than answered: {wrong[:5]}"
    numbers = [n for found in registered.values() for n in found]

    # One row per feedback in every read model (and none missing).
    for table in PROJECTIONS:
        rows = _rows(
            settings,
            sql.SQL(
                "SELECT feedback_number, count(*) FROM {} "
                "WHERE feedback_number = ANY(%s) GROUP BY 1"
            ).format(sql.Identifier(table)),
            numbers,
        )
        assert len(rows) == len(numbers), f"{table}: {len(numbers) - len(rows)} missing"
        assert all(n == 1 for _, n in rows), f"{table}: {[r for r in rows if r[1] > 1][:5]}"

    # One case per feedback with each fact recorded once (clock facts once per clock), and
    # its SLA clocks, each started once.
    per_case = _rows(
        settings,
        "SELECT e.originator_id, split_part(e.topic, '.', -1), count(*) FROM cases_events e "
        "JOIN registrations r ON r.feedback_id = e.originator_id "
        "WHERE r.feedback_number = ANY(%s) GROUP BY 1, 2",
        numbers,
    )
    clocks: dict[Any, int] = dict(
        _rows(
            settings,
            "SELECT r.feedback_id, count(c.feedback_id) FROM registrations r "
            "LEFT JOIN case_clocks c USING (feedback_id) "
            "WHERE r.feedback_number = ANY(%s) GROUP BY 1",
            numbers,
        )
    )
    kinds: Counter[str] = Counter()
    for _, kind, count in per_case:
        kinds[kind] += count
    assert len({case for case, _, _ in per_case}) == len(numbers) == kinds["Registered"]
    no_clock = [case for case, count in clocks.items() if count == 0]
    assert not no_clock, f"cases without an SLA clock: {no_clock[:5]} ({len(no_clock)})"
    repeated = [
        (case, kind, count)
        for case, kind, count in per_case
        if count > (clocks[case] if kind.startswith("Clock") else 1)
        or (kind == "ClockStarted" and count != clocks[case])
    ]
    assert not repeated, f"facts recorded more than once: {repeated[:5]} ({len(repeated)})"

    # The whole database agrees too (earlier rounds included): no stray or phantom rows.
    [totals] = _rows(
        settings,
        "SELECT (SELECT count(*) FROM registrations), "
        "(SELECT count(DISTINCT originator_id) FROM cases_events), "
        "(SELECT count(*) FROM case_facts), (SELECT count(*) FROM routing_cases), "
        "(SELECT count(*) FROM intake_registry)",
    )
    assert len(set(totals)) == 1, f"registrations, cases, facts, worklist, registry: {totals}"

    print(
        f"[{victim}] answers {dict(answers)}; resent with their key {resent}; "
        f"{len(accepted)} of {len(items)} answered 202, {len(numbers)} registered once each; "
        f"case events {dict(kinds)}; clocks {sum(clocks.values())}; "
        f"all rounds {totals[0]} feedback"
    )
