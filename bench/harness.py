"""Start the platform in its own process on local infrastructure, for benchmarks."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import psutil

from deploy.local import LocalInfrastructure, local_infrastructure, local_keys


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServices:
    base_url: str
    env: dict[str, str]
    infrastructure: LocalInfrastructure

    def admin_headers(self) -> dict[str, str]:
        """A signed-in admin's headers (reading registrations needs a token)."""
        from services.access.roles import Actor, Role
        from services.access.tokens import Tokens
        from services.common.settings import Settings

        settings = Settings(
            database_url=self.env["DATABASE_URL"],
            kafka_bootstrap_servers=self.env["KAFKA_BOOTSTRAP_SERVERS"],
            pii_key=self.env["FEEDBACK_PII_KEY"],
            auth_token_key=self.env["FEEDBACK_AUTH_TOKEN_KEY"],
        )
        return Tokens(settings).headers(Actor("bench", Role.admin))


@contextmanager
def platform_process(
    services: tuple[str, ...] = ("intake", "routing", "relay", "projections"),
    extra_env: dict[str, str] | None = None,
    workers: int = 1,
    beside: tuple[str, ...] = (),
) -> Iterator[RunningServices]:
    """Local PostgreSQL + Kafka, and the services in a separate `feedback` process; the
    `beside` services, if any, in one more process (so that they use another core)."""
    with local_infrastructure(None) as infrastructure:
        env = {
            **os.environ,
            **infrastructure.environment(),
            **local_keys(None),
            **(extra_env or {}),
        }
        port = free_port()
        processes = [subprocess.Popen(_command(services, port, workers), env=env)]
        if beside:
            companion_port = free_port()
            processes.append(subprocess.Popen(_command(beside, companion_port, 1), env=env))
            _wait_healthy(f"http://127.0.0.1:{companion_port}")
        base_url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(base_url)
            yield RunningServices(base_url, env, infrastructure)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=60)


def _command(services: tuple[str, ...], port: int, workers: int) -> list[str]:
    if len(services) == 1:
        return [
            sys.executable,
            "-m",
            "feedback_cli.main",
            "run",
            services[0],
            "--port",
            str(port),
            "--workers",
            str(workers),
        ]
    return [sys.executable, "-m", "bench.serve_all", str(port), ",".join(services)]


def _wait_healthy(base_url: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"services at {base_url} not ready")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summary(label: str, latencies_s: list[float]) -> str:
    ms = [v * 1000 for v in latencies_s]
    return (
        f"{label}: n={len(ms)} median={statistics.median(ms):.1f} ms "
        f"p90={percentile(ms, 0.90):.1f} ms p99={percentile(ms, 0.99):.1f} ms max={max(ms):.1f} ms"
    )


def process_tree(process: psutil.Process) -> list[psutil.Process]:
    """The process and its descendants now (none when it is gone)."""
    try:
        return [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(processes: list[psutil.Process], *, reaped_children: bool = True) -> float:
    """CPU seconds (user + system) these processes used so far; with `reaped_children`,
    also what their exited, waited-for children used. Processes gone meanwhile count 0."""
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
        if reaped_children:
            total += times.children_user + times.children_system
    return total
