"""End-to-end latency: POST /v1/feedback until GET /v1/feedback/{number} shows it.

1,000 items sent one at a time from this process to the services in another process.
"""

from __future__ import annotations

import time

import httpx

from bench.harness import platform_process, summary

ITEMS = 1000


def run(items: int = ITEMS) -> list[str]:
    accept: list[float] = []
    visible: list[float] = []
    with (
        platform_process(extra_env={"FEEDBACK_RATE_LIMIT_PER_MINUTE": "100000"}) as running,
        httpx.Client(
            base_url=running.base_url, timeout=30, headers=running.admin_headers()
        ) as client,
    ):
        for i in range(items):
            body = {
                "channel": "web_form",
                "description": f"第{i}条：手环数据同步频繁失败，运动记录丢失",
                "customer": {"phone": f"139{i:08d}"},
                "product_model": "手环 B5",
            }
            began = time.perf_counter()
            response = client.post("/v1/feedback", json=body)
            response.raise_for_status()
            accept.append(time.perf_counter() - began)
            number = response.json()["feedback_number"]
            while client.get(f"/v1/feedback/{number}").status_code != 200:
                time.sleep(0.001)
            visible.append(time.perf_counter() - began)
    return [
        summary("POST accepted (Kafka acked)", accept),
        summary("POST to visible in GET (end to end)", visible),
    ]


if __name__ == "__main__":
    for line in run():
        print(line)
