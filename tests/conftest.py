"""Shared fixtures: one real Kafka broker and one real PostgreSQL server per test session;
each test gets its own database and its own topic prefix, so tests never see each other."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import pytest

from deploy.kafka_broker import LocalKafka, start_kafka
from deploy.postgres_server import LocalPostgres, create_database, start_postgres
from services.access.roles import Actor, Role
from services.access.tokens import Tokens
from services.common import http_server
from services.common.settings import Settings
from services.runtime import ALL_SERVICES, Platform, create_app


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kafka() -> Iterator[LocalKafka]:
    broker = start_kafka()
    yield broker
    broker.stop()


def fresh_settings(postgres: LocalPostgres, kafka: LocalKafka, **overrides: Any) -> Settings:
    """Settings of a platform of its own on the session's servers: a new database, its own
    topic prefix and new keys; `overrides` for whatever else a test sets."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    return Settings(
        database_url=create_database(postgres.url, name),
        kafka_bootstrap_servers=kafka.bootstrap_servers,
        topic_prefix=f"{name}.",
        pii_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        auth_token_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        **overrides,
    )


@pytest.fixture
def settings(postgres: LocalPostgres, kafka: LocalKafka) -> Settings:
    return fresh_settings(postgres, kafka, topic_partitions=4, publish_timeout_s=5.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def signed_in(
    settings: Settings,
    role: str,
    departments: tuple[str, ...] = (),
    agent_id: str | None = None,
    username: str | None = None,
) -> dict[str, str]:
    """Headers of a staff member with this role (a token signed with the platform's key)."""
    actor = Actor(username or agent_id or f"test-{role}", Role(role), departments, agent_id)
    return Tokens(settings).headers(actor)


class RunningPlatform:
    """The services, and a client signed in as an admin (public endpoints ignore it);
    `as_staff` gives the headers of other staff."""

    def __init__(self, platform: Platform, client: httpx.AsyncClient) -> None:
        self.platform = platform
        self.client = client
        self.base_url = str(client.base_url)

    def as_staff(
        self,
        role: str,
        departments: tuple[str, ...] = (),
        agent_id: str | None = None,
        username: str | None = None,
    ) -> dict[str, str]:
        return signed_in(self.platform.settings, role, departments, agent_id, username)


@asynccontextmanager
async def serve(
    settings: Settings, services: tuple[str, ...] = ALL_SERVICES
) -> AsyncIterator[RunningPlatform]:
    """Run the services in this event loop with a real HTTP server, until the block ends."""
    app = create_app(settings, services)
    port = free_port()
    server = http_server.server(app, settings, "127.0.0.1", port)
    task = asyncio.create_task(server.serve())
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            timeout=30,
            headers=signed_in(settings, "admin", username="test-admin"),
        ) as client:
            await wait_for(lambda: _healthy(client), timeout=60, what="services ready")
            yield RunningPlatform(app.state.platform, client)
    finally:
        server.should_exit = True
        await task


@contextmanager
def serve_in_thread(settings: Settings, services: tuple[str, ...] = ALL_SERVICES) -> Iterator[str]:
    """The services on their own event loop in a thread (for synchronous tests such as
    hypothesis properties); yields the base URL once healthy."""
    import threading

    port = free_port()
    server = http_server.server(create_app(settings, services), settings, "127.0.0.1", port)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)


async def _healthy(client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get("/health")).status_code == 200
    except httpx.TransportError:
        return False


async def wait_for(
    condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll `condition` (sync or async) until it returns a truthy value or time runs out."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def web_form(
    description: str = "打印机无法连接WiFi，提示驱动安装失败", **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "channel": "web_form",
        "description": description,
        "customer": {"name": "张伟", "phone": "13812345678"},
    }
    body.update(extra)
    return body


os.environ.setdefault("FEEDBACK_TIMEZONE", "Asia/Shanghai")


async def messages_in(settings: Settings, topic: str) -> int:
    """How many messages a topic holds (sum of partition end offsets)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await consumer.start()
    try:
        name = settings.topic(topic)
        partitions = range(settings.topic_partitions)
        ends = await consumer.end_offsets([TopicPartition(name, p) for p in partitions])
        return sum(ends.values())
    finally:
        await consumer.stop()


async def committed_offsets(settings: Settings, group: str, topic: str) -> int:
    """Sum of the offsets a consumer group has committed on a topic."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        total = 0
        for partition in range(settings.topic_partitions):
            total += await consumer.committed(TopicPartition(settings.topic(topic), partition)) or 0
        return total
    finally:
        await consumer.stop()


async def rewind_group(settings: Settings, group: str, topic: str) -> None:
    """Make a stopped consumer group read the topic again from the start (redelivery)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(settings.topic(topic), p) for p in range(settings.topic_partitions)
        ]
        consumer.assign(partitions)
        await consumer.commit(dict.fromkeys(partitions, 0))
    finally:
        await consumer.stop()


def facts_per_case(settings: Settings) -> dict[str, int]:
    """How many cases recorded each kind of fact, and the most any case recorded of one."""
    import psycopg

    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT split_part(topic, '.', -1), count(DISTINCT originator_id), "
            "max(n) FROM (SELECT topic, originator_id, count(*) OVER "
            "(PARTITION BY topic, originator_id) AS n FROM cases_events) t GROUP BY 1"
        ).fetchall()
    counts = {str(kind): int(cases) for kind, cases, _ in rows}
    counts["most_of_one_kind"] = max((int(n) for _, _, n in rows), default=0)
    return counts


def case_counts(settings: Settings) -> tuple[int, int]:
    """(events, distinct cases) in the case store."""
    import psycopg

    with psycopg.connect(settings.database_url) as conn:
        exists = conn.execute("SELECT to_regclass('cases_events')").fetchone()
        if exists is None or exists[0] is None:
            return (0, 0)
        row = conn.execute(
            "SELECT count(*), count(DISTINCT originator_id) FROM cases_events"
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])


async def registered_row(client: httpx.AsyncClient, number: str, **expected: Any) -> dict[str, Any]:
    """Wait until the registration table shows `number` with the expected values."""

    async def matches() -> dict[str, Any] | None:
        got = await client.get(f"/v1/feedback/{number}")
        if got.status_code != 200:
            return None
        row: dict[str, Any] = got.json()
        return row if all(row.get(k) == v for k, v in expected.items()) else None

    return await wait_for(matches, timeout=30, what=f"{number} with {expected}")  # type: ignore[no-any-return]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Browser tests run last: pytest-playwright's sync API keeps an event loop running in
    the main thread for the rest of the session, and async tests after it cannot start."""
    items.sort(key=lambda item: item.nodeid.startswith("tests/browser/"))
