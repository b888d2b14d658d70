"""kill -9 of `feedback up` (or anything running `local_infrastructure`, as `feedback demo`
does) leaves no Kafka broker or PostgreSQL behind: deploy/watchdog.py, started first, sees
the run's pipe close and stops them, and removes temporary data."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.test_sigterm import (  # noqa: F401  (state_dir is a fixture)
    FEEDBACK,
    _processes_naming,
    _wait_healthy,
    state_dir,
)

pytestmark = pytest.mark.integration

GONE_WITHIN_S = 15.0


def _local_environment() -> dict[str, str]:
    # The local default starts its own broker and PostgreSQL only when none is named.
    return {
        k: v
        for k, v in os.environ.items()
        if (k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS") and not k.startswith("FEEDBACK_"))
        or k in ("FEEDBACK_CACHE_DIR", "FEEDBACK_TIMEZONE")
    }


def _kill_and_time_until_gone(process: subprocess.Popen[bytes], folder: Path) -> float:
    """SIGKILL the run; seconds until nothing names `folder` (at most GONE_WITHIN_S)."""
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    killed = time.monotonic()
    while _processes_naming(str(folder)) and time.monotonic() - killed < GONE_WITHIN_S:
        time.sleep(0.2)
    return time.monotonic() - killed


@pytest.mark.timeout(420)
def test_kill9_of_up_takes_broker_and_postgres_with_it(state_dir: Path) -> None:  # noqa: F811
    port = free_port()
    log = state_dir.parent / f"{state_dir.name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [FEEDBACK, "up", "--port", str(port), "--state-dir", str(state_dir)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_local_environment(),
        )
    try:
        _wait_healthy(process, f"http://127.0.0.1:{port}/health", 300, log)
        children = _processes_naming(str(state_dir))
        commands = " ".join(children.values())
        assert "kafka.Kafka" in commands and "postgres -D" in commands, children
        took = _kill_and_time_until_gone(process, state_dir)
        left = _processes_naming(str(state_dir))
        assert left == {}, f"left running {GONE_WITHIN_S}s after kill -9: {left}"
        print(f"broker and PostgreSQL ({sorted(children)}) gone {took:.1f}s after kill -9")
        # The data stays (a state folder), and the next `feedback up` starts on it.
        assert (state_dir / "pgdata" / "PG_VERSION").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.unlink(missing_ok=True)


# What `feedback demo` does, without the platform: temporary infrastructure, then waiting.
RUN_TEMPORARY = """
import sys, time
from deploy.local import local_infrastructure
with local_infrastructure(None) as infrastructure:
    print(infrastructure.kafka.data_dir.parent, flush=True)
    time.sleep(600)
"""


@pytest.mark.timeout(180)
def test_kill9_of_a_temporary_run_stops_its_children_and_removes_its_data(
    tmp_path: Path,
) -> None:
    log = tmp_path / "run.log"
    with open(log, "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-c", RUN_TEMPORARY],
            stdout=subprocess.PIPE,
            stderr=err,
            env=_local_environment(),
        )
    root: Path | None = None
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode().strip()  # once both answer
        assert line, log.read_text()[-3000:]
        root = Path(line)
        assert root.name.startswith("feedback-local-"), root
        children = _processes_naming(str(root))
        commands = " ".join(children.values())
        assert "kafka.Kafka" in commands and "postgres -D" in commands, children
        took = _kill_and_time_until_gone(process, root)
        assert _processes_naming(str(root)) == {}, f"left running after kill -9: {children}"
        deadline = time.monotonic() + 5
        while root.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not root.exists(), f"temporary data left: {sorted(root.rglob('*'))[:5]}"
        print(f"temporary broker and PostgreSQL gone {took:.1f}s after kill -9, data removed")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if root is not None:  # whatever the outcome, nothing of this run stays
            for pid in _processes_naming(str(root)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            shutil.rmtree(root, ignore_errors=True)
