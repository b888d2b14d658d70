"""`feedback demo`: the whole pipeline on the local default and the realistic sample.

Website-form items go through the HTTP API; the other channels enter through the same
registration path their adapters use (the channel adapters come with the intake issue).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from pydantic import SecretStr

from contracts.codes import (
    CHANNEL_LABELS,
    FEEDBACK_TYPE_LABELS,
    PRIORITY_LABELS,
    Channel,
    FeedbackType,
    Priority,
)
from deploy.local import local_infrastructure, local_keys
from feedback_cli.demo_channels import SECRETS, deliver, deliver_batches
from services.access.roles import Actor, Role
from services.access.tokens import Tokens
from services.common import http_server
from services.common.settings import Settings
from services.routing.classifier import load_rulebook
from services.runtime import Platform, create_app


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load_sample(path: Path) -> list[dict[str, Any]]:
    items = [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    if not items:
        raise ValueError(f"{path} has no feedback")
    return items


def run_demo(sample_path: Path, timeout: float, console_port: int | None) -> int:
    """Send the sample and print the table; with `console_port`, then keep the console up
    on that port (demo accounts with generated passwords) until Ctrl-C or SIGTERM."""
    items = load_sample(sample_path)
    os.environ.update(local_keys(None))
    began = time.monotonic()

    async def report(client: httpx.AsyncClient, rows: list[dict[str, Any]], port: int) -> None:
        _print_table(rows, ZoneInfo(settings_zone()))
        print(
            f"\n{len(rows)} of {len(items)} feedback registered across "
            f"{len({r['channel'] for r in rows})} channels in {time.monotonic() - began:.1f}s",
            file=sys.stderr,
        )
        if console_port is not None and len(rows) == len(items):
            await _serve_console(client, port)

    with local_infrastructure(None) as infrastructure:
        os.environ.update(infrastructure.environment())
        print(
            f"PostgreSQL ready in {infrastructure.postgres.started_in_s:.1f}s, "
            f"Kafka ready in {infrastructure.kafka.started_in_s:.1f}s",
            file=sys.stderr,
        )
        rows = asyncio.run(_run_pipeline(Settings(), items, timeout, report, console_port))
    return 0 if len(rows) == len(items) else 1


# The demo's accounts: one per kind of console user, each with a password generated for
# this run and printed once (there is no default password anywhere).
DEMO_ACCOUNTS = (
    ("demo-supervisor", Role.supervisor, ("customer_service", "after_sales", "tech")),
    ("demo-agent", Role.agent, ("customer_service",)),
    ("demo-quality", Role.quality, ()),
    ("demo-admin", Role.admin, ()),
)


async def _serve_console(client: httpx.AsyncClient, port: int) -> None:
    accounts: list[tuple[str, str, str]] = []
    for username, role, departments in DEMO_ACCOUNTS:
        password = secrets.token_urlsafe(12)
        body: dict[str, Any] = {
            "username": username,
            "password": password,
            "role": role.value,
            "departments": list(departments),
        }
        if role is Role.agent:
            body["agent_id"] = "cs-li"  # an agent of the roster: cases are routed to them
        answer = await client.post("/v1/users", json=body)
        answer.raise_for_status()
        accounts.append((username, role.value, password))
    print(f"\nConsole: http://127.0.0.1:{port}/  (API documentation: /docs)")
    print("Sign in as (passwords generated for this run, shown once):")
    for username, role_name, password in accounts:
        print(f"  {username:<16} {role_name:<11} {password}")
    print("The data is temporary: Ctrl-C stops the demo and removes it.", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _run_pipeline(
    settings: Settings,
    items: list[dict[str, Any]],
    timeout: float,
    report: Callable[[httpx.AsyncClient, list[dict[str, Any]], int], Awaitable[None]],
    console_port: int | None = None,
) -> list[dict[str, Any]]:
    settings = settings.model_copy(
        update={
            "smtp_port": _free_port(),
            "wechat_token": SecretStr(SECRETS["wechat"]),
            "wechat_allow_plaintext": True,
            "weibo_secret": SecretStr(SECRETS["weibo"]),
            "douyin_secret": SecretStr(SECRETS["douyin"]),
            "web_chat_secret": SecretStr(SECRETS["web_chat"]),
            "evidence_dir": Path(tempfile.mkdtemp(prefix="feedback-evidence-")),
        }
    )
    app = create_app(settings)
    platform: Platform = app.state.platform
    port = console_port if console_port and _port_free(console_port) else _free_port()
    server = http_server.server(app, settings, "127.0.0.1", port)
    serving = asyncio.create_task(server.serve())
    try:
        # The demo reads the registration table as an administrator would.
        admin = _signed_in(settings, Actor("demo-admin", Role.admin))
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=30, headers=admin
        ) as client:
            await _wait_healthy(client, timeout)
            numbers = await _send(client, platform, items)
            rows = await _wait_registered(client, numbers, timeout)
            await report(client, rows, port)
            return rows
    finally:
        server.should_exit = True
        # Bounded: open console tabs are closed by the server's graceful-shutdown timeout.
        await asyncio.wait_for(serving, 15)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _signed_in(settings: Settings, actor: Actor) -> dict[str, str]:
    return Tokens(settings).headers(actor)


async def _wait_healthy(client: httpx.AsyncClient, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if (await client.get("/health")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise TimeoutError("services did not become ready")


async def _send(
    client: httpx.AsyncClient, platform: Platform, items: list[dict[str, Any]]
) -> list[str]:
    numbers: list[str] = []
    batches: dict[str, list[tuple[dict[str, Any], datetime]]] = {"store": [], "letter": []}
    now = datetime.now(UTC)
    first_number: str | None = None
    for item in items:
        received_at = now - timedelta(minutes=int(item.get("received_minutes_ago", 0)))
        if item["channel"] in batches:
            batches[item["channel"]].append((item, received_at))
            continue
        number = await deliver(
            client,
            platform.settings.smtp_port,
            item,
            received_at,
            first_number,
            lambda agent: _signed_in(
                platform.settings,
                Actor(agent, Role.agent, ("customer_service",), agent_id=agent),
            ),
        )
        if number is None:  # WeChat answers "success" only: find it by its reference
            number = await _number_by_reference(platform, item)
        numbers.append(number)
        first_number = first_number or number
    return numbers + await deliver_batches(client, batches)


async def _number_by_reference(platform: Platform, item: dict[str, Any]) -> str:
    assert platform.registrar is not None
    for _ in range(100):
        number = await platform.registrar.find_by_reference(
            Channel(item["channel"]), [str(abs(hash(item["channel_reference"])))]
        )
        if number:
            return number
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{item['channel_reference']} was not registered")


async def _wait_registered(
    client: httpx.AsyncClient, numbers: list[str], timeout: float
) -> list[dict[str, Any]]:
    wanted = set(numbers)
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        page = (await client.get("/v1/registrations", params={"limit": 1000})).json()
        rows = [r for r in page["items"] if r["feedback_number"] in wanted]
        settled = [
            r for r in rows if r["status"] in ("assigned", "queued", "triage", "pending_info")
        ]
        if len(settled) == len(wanted):
            return rows
        await asyncio.sleep(0.2)
    return rows


def _width(text: str) -> int:
    return sum(2 if ord(ch) > 0x2E80 else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _width(text))


def _excerpt(text: str, width: int) -> str:
    out = ""
    for ch in text:
        if _width(out + ch) > width - 1:
            return out + "…"
        out += ch
    return out


DEPARTMENTS = load_rulebook().departments


def settings_zone() -> str:
    return os.environ.get("FEEDBACK_TIMEZONE", "Asia/Shanghai")


def _print_table(rows: list[dict[str, Any]], zone: ZoneInfo) -> None:
    headers = [
        "反馈编号",
        "接收时间",
        "渠道",
        "客户(匿名)",
        "问题类型",
        "紧急程度",
        "责任部门",
        "问题描述",
    ]
    widths = [16, 17, 12, 16, 10, 10, 12, 44]
    print("  ".join(_pad(h, w) for h, w in zip(headers, widths, strict=True)))
    for row in sorted(rows, key=lambda r: r["feedback_number"]):
        received = (
            datetime.fromisoformat(row["received_at"]).astimezone(zone).strftime("%Y-%m-%d %H:%M")
        )
        kind = row.get("feedback_type") or row.get("stated_type")
        kind_label = FEEDBACK_TYPE_LABELS[FeedbackType(kind)] if kind else "待分类"
        department = DEPARTMENTS.get(row.get("department") or "", "待分诊")
        if row["status"] == "pending_info":
            department = "待补充"
        cells = [
            row["feedback_number"],
            received,
            CHANNEL_LABELS[Channel(row["channel"])],
            row["customer_ref"],
            kind_label,
            PRIORITY_LABELS[Priority(row["priority"])] if row.get("priority") else "-",
            department,
            _excerpt(" ".join(row["description"].split()), widths[-1]),
        ]
        print("  ".join(_pad(c, w) for c, w in zip(cells, widths, strict=True)))
