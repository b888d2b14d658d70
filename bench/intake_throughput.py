"""HTTP intake throughput and latency, and SMTP intake rate.

Intake runs in its own processes (`feedback run intake`, one and two workers), then with
routing, relay and projections consuming everything in a second process. The load comes from another
process: N concurrent clients posting feedback for a fixed time (accepted = Kafka
acknowledged), with `wrk` (C, little CPU of its own) when it is installed, else aiohttp;
then a fixed rate of 500/s (open loop; `vegeta` when installed, else aiohttp) for the p99
target; then mails over SMTP.
Everything shares this machine's cores: load generator, intake, Kafka and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import smtplib
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import aiohttp

from bench.harness import free_port, percentile, platform_process

DURATION_S = 10.0
WRK_SCRIPT = Path(__file__).with_name("wrk_feedback.lua")


def body(i: int) -> dict[str, object]:
    return {
        "channel": "web_form",
        "description": f"第{i}条：订单说好三天送达，现在已经第七天了还没有收到货",
        "customer": {"phone": f"13{i % 10}{i:08d}"[:11]},
    }


async def closed_loop(base_url: str, clients: int, seconds: float) -> tuple[int, list[float], int]:
    """`clients` connections, each posting again as soon as its answer arrives."""
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    counter = iter(range(10**9))
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(base_url, connector=connector) as session:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                began = time.perf_counter()
                async with session.post("/v1/feedback", json=body(next(counter))) as response:
                    await response.read()
                    if response.status == 202:
                        latencies.append(time.perf_counter() - began)
                    else:
                        errors += 1

        await asyncio.gather(*[worker() for _ in range(clients)])
    return len(latencies), latencies, errors


async def open_loop(base_url: str, rate: float, seconds: float) -> tuple[list[float], int]:
    """A fixed arrival rate, whatever the answers do (latency under a given load)."""
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(base_url, connector=connector) as session:

        async def one(i: int) -> None:
            nonlocal errors
            began = time.perf_counter()
            async with session.post("/v1/feedback", json=body(i)) as response:
                await response.read()
                if response.status == 202:
                    latencies.append(time.perf_counter() - began)
                else:
                    errors += 1

        tasks = []
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return latencies, errors


def smtp_rate(port: int, mails: int, connections: int = 1) -> float:
    """Mails accepted per second (250 after DATA) over `connections` parallel sessions."""

    def session(offset: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
            for i in range(offset, mails, connections):
                mail = EmailMessage()
                mail["Subject"] = f"投诉 {i}：快递还没到"
                mail["From"] = f"buyer{i}@example.com"
                mail["Message-ID"] = make_msgid()
                mail.set_content("订单说好三天送达，现在已经第七天了还没有收到货")
                smtp.send_message(mail, to_addrs=["service@company.example"])

    began = time.perf_counter()
    with ThreadPoolExecutor(connections) as pool:
        list(pool.map(session, range(connections)))
    return mails / (time.perf_counter() - began)


def closed_loop_line(base_url: str, clients: int) -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        accepted, latencies, errors = asyncio.run(closed_loop(base_url, clients, DURATION_S))
        ms = [v * 1000 for v in latencies]
        return (
            f"{clients:>2} clients (aiohttp): {accepted / DURATION_S:,.0f} accepted/s, "
            f"p50 {percentile(ms, 0.5):.1f} ms, p99 {percentile(ms, 0.99):.1f} ms, errors {errors}"
        )
    out = subprocess.run(
        [wrk, "-t1", f"-c{clients}", f"-d{DURATION_S:.0f}s", "-s", str(WRK_SCRIPT), base_url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    figures = json.loads(out.strip().splitlines()[-1])
    accepted = figures["requests"] - figures["failed"]
    return (
        f"{clients:>2} clients (wrk): {accepted / figures['seconds']:,.0f} accepted/s, "
        f"p50 {figures['p50_us'] / 1000:.1f} ms, p99 {figures['p99_us'] / 1000:.1f} ms, "
        f"errors {figures['failed']}"
    )


def fixed_rate_line(base_url: str, rate: float) -> str:
    vegeta = shutil.which("vegeta") or shutil.which(str(Path.home() / "go" / "bin" / "vegeta"))
    if vegeta is None:
        latencies, errors = asyncio.run(open_loop(base_url, rate, DURATION_S))
        ms = [v * 1000 for v in latencies]
        return (
            f"fixed {rate:.0f}/s for {DURATION_S:.0f}s (aiohttp): p50 {percentile(ms, 0.5):.1f} ms, "
            f"p99 {percentile(ms, 0.99):.1f} ms, errors {errors}"
        )
    # Open loop at a constant rate from a C-speed generator: each target a new customer.
    targets = "\n".join(
        json.dumps(
            {
                "method": "POST",
                "url": f"{base_url}/v1/feedback",
                "header": {"Content-Type": ["application/json"]},
                "body": base64.b64encode(json.dumps(body(i)).encode()).decode(),
            }
        )
        for i in range(int(rate * DURATION_S))
    )
    attack = subprocess.run(
        [vegeta, "attack", "-format=json", f"-rate={rate:.0f}/s", f"-duration={DURATION_S:.0f}s"],
        input=targets.encode(),
        capture_output=True,
        check=True,
    ).stdout
    report = json.loads(
        subprocess.run(
            [vegeta, "report", "-type=json"], input=attack, capture_output=True, check=True
        ).stdout
    )
    accepted = report["status_codes"].get("202", 0)
    return (
        f"fixed {rate:.0f}/s for {DURATION_S:.0f}s (vegeta): p50 "
        f"{report['latencies']['50th'] / 1e6:.1f} ms, p99 {report['latencies']['99th'] / 1e6:.1f} ms, "
        f"errors {report['requests'] - accepted}"
    )


def run() -> list[str]:
    lines = []
    unlimited = {"FEEDBACK_RATE_LIMIT_PER_MINUTE": "10000000"}
    for workers in (1, 2):
        lines.append(f"intake alone, {workers} worker(s):")
        smtp_port = free_port()
        with platform_process(
            ("intake",), {**unlimited, "FEEDBACK_SMTP_PORT": str(smtp_port)}, workers=workers
        ) as running:
            lines += [f"  {closed_loop_line(running.base_url, c)}" for c in (1, 16, 64)]
            fixed_rate_line(running.base_url, 500)  # warm-up: connections, caches, JIT
            lines.append(f"  {fixed_rate_line(running.base_url, 500)}")
            for connections in (1, 8):
                rate = smtp_rate(smtp_port, 500, connections)
                lines.append(f"  SMTP, {connections} connection(s): {rate:,.0f} mails/s accepted")
    smtp_port = free_port()
    # The whole pipeline behind the intake: routing, relay and projections consume every
    # accepted feedback at the same time, in a second process as a deployment would.
    lines.append("intake, with routing + relay + projections in a second process:")
    with platform_process(
        ("intake",),
        {**unlimited, "FEEDBACK_SMTP_PORT": str(smtp_port)},
        beside=("routing", "relay", "projections"),
    ) as running:
        lines += [f"  {closed_loop_line(running.base_url, c)}" for c in (1, 16, 64)]
        fixed_rate_line(running.base_url, 500)
        lines.append(f"  {fixed_rate_line(running.base_url, 500)}")
        for connections in (1, 8):
            rate = smtp_rate(smtp_port, 500, connections)
            lines.append(f"  SMTP, {connections} connection(s): {rate:,.0f} mails/s accepted")
    return lines


if __name__ == "__main__":
    for line in run():
        print(line)
