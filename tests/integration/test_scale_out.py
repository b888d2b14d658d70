"""Scale-out: two instances of the routing consumer and two of projections, each its own
`feedback run` process in the same consumer group, share the topic's partitions (each
instance's /metrics lists the partitions it holds); a load is processed exactly once (every
feedback one case, one registration); `kill -9` of one instance of each in the middle of a
load hands its partitions to the other, and nothing is lost or doubled.

`pytest -s` prints how fast two instances and then one drained the same load: figures only,
no timed assertion (this machine has two cores shared by everything in the test)."""

from __future__ import annotations

import asyncio
import functools
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from contracts import topics
from services.common.settings import Settings
from tests.conftest import free_port, serve, signed_in, wait_for, web_form

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

RUN = (sys.executable, "-m", "feedback_cli.main", "run")
LOAD = 300  # feedback per phase
CONCURRENCY = 16
# The consumer group and topic each scaled service reads.
SCALED = {
    "routing": ("routing", topics.FEEDBACK_RECEIVED),
    "projections": ("projections", topics.FEEDBACK_EVENTS),
}


class Instance:
    """One `feedback run <service>` process on its own port, its log in a file."""

    def __init__(self, service: str, name: str, env: dict[str, str], folder: Path) -> None:
        self.service, self.name = service, name
        self.port = free_port()
        self.log = folder / f"{name}.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [*RUN, service, "--port", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    async def healthy(self) -> bool:
        if not self.alive():
            raise AssertionError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(f"{self.url}/health")).status_code == 200
        except httpx.TransportError:
            return False

    async def metrics(self, headers: dict[str, str]) -> str:
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(f"{self.url}/metrics", headers=headers)
        assert response.status_code == 200, response.text
        return response.text

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def instances(settings: Settings, tmp_path: Path) -> Iterator[dict[str, list[Instance]]]:
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "FEEDBACK_TOPIC_PREFIX": settings.topic_prefix,
        "FEEDBACK_TOPIC_PARTITIONS": str(settings.topic_partitions),
        "FEEDBACK_PII_KEY": settings.pii_key.get_secret_value(),
        "FEEDBACK_AUTH_TOKEN_KEY": settings.auth_token_key.get_secret_value(),
        "FEEDBACK_EVIDENCE_DIR": str(tmp_path / "evidence"),
    }
    running = {
        service: [Instance(service, f"{service}-{i}", env, tmp_path) for i in (1, 2)]
        for service in SCALED
    }
    try:
        yield running
    finally:
        for group in running.values():
            for instance in group:
                instance.stop()


def _held_partitions(metrics: str, group: str, topic: str) -> set[int]:
    """Partitions of `topic` this instance's consumer in `group` holds: the lag gauge has a
    series for each assigned partition only (services/common/metrics.py ConsumerLag)."""
    held = set()
    for match in re.finditer(r"^feedback_consumer_lag\{(.*)\} ", metrics, re.MULTILINE):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if labels.get("group") == group and labels.get("topic") == topic:
            held.add(int(labels["partition"]))
    return held


async def _assignment(
    settings: Settings, group: list[Instance], service: str
) -> dict[str, set[int]]:
    group_id, topic = SCALED[service]
    headers = signed_in(settings, "admin")
    return {
        i.name: _held_partitions(await i.metrics(headers), group_id, settings.topic(topic))
        for i in group
        if i.alive()
    }


def _shared(assignment: dict[str, set[int]], partitions: int) -> bool:
    """Every partition held by exactly one of the live instances, and each holds some."""
    held = [p for ps in assignment.values() for p in ps]
    return sorted(held) == list(range(partitions)) and all(assignment.values())


async def _send(client: httpx.AsyncClient, tag: str, count: int, sent: list[str]) -> None:
    """`count` web-form feedback, CONCURRENCY at a time; their numbers into `sent`."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        queue.put_nowait(index)

    async def worker() -> None:
        while not queue.empty():
            index = queue.get_nowait()
            response = await client.post(
                "/v1/feedback",
                json=web_form(f"{tag} {index}: 打印机无法连接WiFi，提示驱动安装失败"),
            )
            assert response.status_code == 202, response.text
            sent.append(response.json()["feedback_number"])

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


def _exactly_once(settings: Settings, numbers: list[str]) -> tuple[int, int]:
    """(registrations, cases) of `numbers`: each number must have one of each."""
    with psycopg.connect(settings.database_url) as conn:
        registrations = conn.execute(
            "SELECT feedback_number, count(*) FROM registrations "
            "WHERE feedback_number = ANY(%s) GROUP BY 1",
            (numbers,),
        ).fetchall()
        cases = conn.execute(
            "SELECT originator_id, count(*) FROM cases_events WHERE topic LIKE %s GROUP BY 1",
            ("%.Registered",),
        ).fetchall()
        # A routing slice handled twice (two members, or a redelivery after a kill) would
        # show as a second Classified/Routed/OwnerAssigned fact of a case: the version key
        # alone cannot tell (a repeat gets new versions).
        facts = conn.execute(
            "SELECT originator_id, topic, count(*) FROM cases_events "
            "WHERE topic NOT LIKE %s GROUP BY 1, 2 HAVING count(*) > 1",
            ("%.Clock%",),
        ).fetchall()
    assert all(n == 1 for _, n in registrations), "a feedback registered twice"
    assert all(n == 1 for _, n in cases), "a case registered twice"
    assert not facts, f"facts recorded twice: {facts[:5]}"
    return len(registrations), len(cases)


async def _drained(settings: Settings, numbers: list[str], timeout: float) -> float:
    """Seconds until every number has its registration (through routing, the relay and
    projections), counted from now."""
    began = time.monotonic()

    async def all_registered() -> bool:
        found = await asyncio.to_thread(_exactly_once, settings, numbers)
        return found[0] == len(numbers)

    await wait_for(
        all_registered,
        timeout=timeout,
        what=f"{len(numbers)} feedback registered",
        interval=0.2,
    )
    return time.monotonic() - began


async def test_two_instances_share_partitions_and_one_takes_over(
    settings: Settings, instances: dict[str, list[Instance]]
) -> None:
    partitions = settings.topic_partitions
    assert partitions >= 4
    # One client address sends every load.
    settings = settings.model_copy(update={"rate_limit_per_minute": 1_000_000})
    # Intake and the relay here (they do not scale by consumer groups: intake is HTTP, the
    # relay one lock holder); routing and projections in two processes each.
    async with serve(settings, ("intake", "relay")) as running:
        everyone = [i for group in instances.values() for i in group]
        for instance in everyone:
            await wait_for(instance.healthy, timeout=120, what=f"{instance.name} healthy")
        for service, group in instances.items():
            assignment = await wait_for(
                functools.partial(_shared_or_none, settings, group, service, partitions),
                timeout=60,
                what=f"{service}'s partitions shared by both instances",
                interval=1.0,
            )
            print(f"{service}: {assignment}")

        # Phase 1: two instances of each drain a backlog.
        first: list[str] = []
        took = await _backlog_drained(settings, running.client, everyone, "two", first)
        registrations, cases = _exactly_once(settings, first)
        assert registrations == LOAD and cases == LOAD

        # Phase 2: kill -9 one instance of each while a load is being sent.
        second: list[str] = []
        sending = asyncio.create_task(_send(running.client, "kill", LOAD, second))
        await wait_for(lambda: len(second) >= LOAD // 3, timeout=60, what="a third sent")
        killed = [group[0] for group in instances.values()]
        for instance in killed:
            instance.kill9()
        print(f"killed -9: {[i.name for i in killed]} after {len(second)} of {LOAD} were sent")
        await sending
        await _drained(settings, second, timeout=90)
        registrations, cases = _exactly_once(settings, first + second)
        assert registrations == 2 * LOAD and cases == 2 * LOAD
        for service, group in instances.items():
            # The survivor holds every partition (after the group's session timeout).
            assignment = await wait_for(
                functools.partial(_shared_or_none, settings, group, service, partitions),
                timeout=60,
                what=f"{service}'s partitions taken over",
                interval=1.0,
            )
            [(survivor, held)] = assignment.items()
            assert held == set(range(partitions))
            print(f"{service}: {survivor} took over, holds {sorted(held)}")

        # Phase 3: the same backlog on one instance of each, for comparison.
        third: list[str] = []
        survivors = [i for i in everyone if i.alive()]
        took_alone = await _backlog_drained(settings, running.client, survivors, "one", third)
        registrations, cases = _exactly_once(settings, first + second + third)
        assert registrations == 3 * LOAD and cases == 3 * LOAD
        print(f"two instances of each drained it {took_alone / took:.2f}x as fast as one")


async def _backlog_drained(
    settings: Settings,
    client: httpx.AsyncClient,
    consumers: list[Instance],
    tag: str,
    numbers: list[str],
) -> float:
    """Seconds the consumers take to drain LOAD feedback sent while they were paused
    (SIGSTOP for a few seconds: less than the group's session timeout, so no rebalance)."""
    for instance in consumers:
        instance.process.send_signal(signal.SIGSTOP)
    try:
        began = time.monotonic()
        await _send(client, tag, LOAD, numbers)
        sent_in = time.monotonic() - began
    finally:
        for instance in consumers:
            instance.process.send_signal(signal.SIGCONT)
    took = await _drained(settings, numbers, timeout=90)
    print(
        f"{len(consumers)} consumer processes ({', '.join(i.name for i in consumers)}): "
        f"{LOAD} feedback accepted in {sent_in:.1f}s while paused, then drained in "
        f"{took:.1f}s ({LOAD / took:.0f}/s)"
    )
    return took


async def _shared_or_none(
    settings: Settings, group: list[Instance], service: str, partitions: int
) -> dict[str, set[int]] | None:
    assignment = await _assignment(settings, group, service)
    return assignment if _shared(assignment, partitions) else None
