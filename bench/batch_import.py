"""Batch import: one 10,000-row registration table (CSV) posted to `/v1/channels/batch/store`.

The services run in their own process (all four, as `feedback up` runs them). Figures: the
request's wall time and rows/s (every row durably registered when it answers), then the
time until the last row is readable at GET /v1/feedback/{n}; CPU seconds per row of the
services process, PostgreSQL (postmaster and backends) and Kafka over each span.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import psutil

from bench.harness import RunningServices, cpu_seconds, platform_process, process_tree
from services.intake.channels.records import MAX_ROWS

ROWS = MAX_ROWS
HEADER = "接收时间,客户名称/联系人,联系方式,产品型号/服务类型,问题描述,客户情绪,接收人\n"


def table(rows: int) -> bytes:
    lines = [HEADER]
    for i in range(rows):
        lines.append(
            f"2024-05-20 {9 + i % 9:02d}:{i % 60:02d},客户{i},139{i:08d},吸尘器 V8,"
            f"第{i}条：吸尘器使用三天后无法启动，充电指示灯不亮,不满,门店-王\n"
        )
    return "".join(lines).encode("gb18030")


def _meters(running: RunningServices) -> dict[str, Callable[[], float]]:
    """CPU seconds so far of each part: services, PostgreSQL, Kafka (where found)."""
    services = [
        p
        for p in psutil.Process().children(recursive=True)
        if "bench.serve_all" in " ".join(p.cmdline())
    ]
    meters: dict[str, Callable[[], float]] = {
        "services": lambda: cpu_seconds([q for p in services for q in process_tree(p)])
    }
    import psycopg

    with psycopg.connect(running.env["DATABASE_URL"]) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    if row is not None:
        postmaster = psutil.Process(int(row[0])).parent()
        if postmaster is not None:
            meters["postgresql"] = lambda: cpu_seconds(process_tree(postmaster))
    kafka = running.infrastructure.kafka.process
    if kafka is not None:
        broker = psutil.Process(kafka.pid)
        meters["kafka"] = lambda: cpu_seconds(process_tree(broker))
    return meters


def run(rows: int = ROWS) -> list[str]:
    data = table(rows)
    lines = [f"{rows} rows, {len(data) / 1e6:.1f} MB CSV (GB18030), one request"]
    extra_env = {"FEEDBACK_RATE_LIMIT_PER_MINUTE": "100000"}
    with (
        platform_process(extra_env=extra_env) as running,
        httpx.Client(
            base_url=running.base_url, timeout=600, headers=running.admin_headers()
        ) as client,
    ):
        meters = _meters(running)
        before = {name: meter() for name, meter in meters.items()}
        began = time.perf_counter()
        response = client.post(
            "/v1/channels/batch/store", files={"file": ("门店登记表.csv", data, "text/csv")}
        )
        answered = time.perf_counter() - began
        response.raise_for_status()
        summary = response.json()
        at_answer = {name: meter() for name, meter in meters.items()}
        last = summary["taken"][-1]["feedback_number"]
        while (shown := client.get(f"/v1/feedback/{last}")).status_code != 200:
            if shown.status_code != 404:
                shown.raise_for_status()  # not "not there yet": would wait forever
            time.sleep(0.05)
        visible = time.perf_counter() - began
        at_visible = {name: meter() for name, meter in meters.items()}
    taken = len(summary["taken"])
    lines.append(
        f"import answered: {answered:.2f} s wall, {taken / answered:.0f} rows/s "
        f"({taken} taken, {len(summary['refused'])} refused)"
    )
    lines.append(
        "  CPU per row until answered: "
        + ", ".join(
            f"{name} {(at_answer[name] - before[name]) / rows * 1e3:.2f} ms" for name in meters
        )
    )
    lines.append(f"last row readable (GET /v1/feedback/{{n}}): {visible:.2f} s after posting")
    lines.append(
        "  CPU per row until readable: "
        + ", ".join(
            f"{name} {(at_visible[name] - before[name]) / rows * 1e3:.2f} ms" for name in meters
        )
    )
    return lines


if __name__ == "__main__":
    for line in run():
        print(line)
