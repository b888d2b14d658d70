"""Run benchmarks by name (default: all) and print their figures."""

from __future__ import annotations

import importlib
import sys
import time

BENCHMARKS = [
    "classifier",
    "classifier_cv",
    "classifier_rounds",
    "routing_throughput",
    "e2e_latency",
    "intake_throughput",
    "batch_import",
    "sla_breaches",
    "search",
    "projections",
    "console_queue",
]

if __name__ == "__main__":
    chosen = sys.argv[1:] or BENCHMARKS
    for name in chosen:
        module = importlib.import_module(f"bench.{name}")
        began = time.monotonic()
        print(f"== {name}", flush=True)
        for line in module.run():
            print(line, flush=True)
        print(f"   ({time.monotonic() - began:.0f}s)", flush=True)
