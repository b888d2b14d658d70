"""`feedback up` and `feedback run` stop on SIGTERM (docker stop, Kubernetes, systemd) as on
Ctrl-C: the process shuts down gracefully and exits 0, and the Kafka broker and PostgreSQL
that `feedback up` started are gone with it (before, SIGTERM killed the process on the spot
and left both running)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.common.settings import Settings
from tests.conftest import free_port

pytestmark = pytest.mark.integration

FEEDBACK = str(Path(sys.executable).with_name("feedback"))


def _processes_naming(text: str) -> dict[int, str]:
    """Live processes whose command line names `text` (the state folder: the broker's
    server.properties and PostgreSQL's data folder are in it)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in command and state != "Z":  # a zombie is already gone
            found[int(entry.name)] = command
    return found


def _wait_healthy(process: subprocess.Popen[bytes], url: str, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"not healthy within {timeout}s:\n{log.read_text()[-3000:]}")


def _terminate_and_wait(process: subprocess.Popen[bytes], timeout: float) -> int:
    began = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"still running {timeout}s after SIGTERM") from None
    print(f"exited {code} {time.monotonic() - began:.1f}s after SIGTERM")
    return code


@pytest.fixture
def state_dir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="feedback-sigterm-"))
    try:
        yield folder
    finally:
        # Whatever the outcome, leave nothing running that names this folder.
        for pid in _processes_naming(str(folder)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.timeout(420)
def test_up_stops_broker_and_postgres_on_sigterm(state_dir: Path) -> None:
    environment = {
        k: v
        for k, v in os.environ.items()
        # The local default starts its own broker and PostgreSQL only when none is named.
        if (k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS") and not k.startswith("FEEDBACK_"))
        or k in ("FEEDBACK_CACHE_DIR", "FEEDBACK_TIMEZONE")
    }
    port = free_port()
    log = state_dir.parent / f"{state_dir.name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [FEEDBACK, "up", "--port", str(port), "--state-dir", str(state_dir)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environment,
        )
    try:
        _wait_healthy(process, f"http://127.0.0.1:{port}/health", 300, log)
        children = _processes_naming(str(state_dir))
        commands = " ".join(children.values())
        assert "kafka.Kafka" in commands and "postgres" in commands, children

        assert _terminate_and_wait(process, 90) == 0, log.read_text()[-3000:]
        deadline = time.monotonic() + 30
        while _processes_naming(str(state_dir)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _processes_naming(str(state_dir)) == {}, "left running after SIGTERM"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.unlink(missing_ok=True)


@pytest.mark.timeout(180)
def test_run_shuts_down_gracefully_on_sigterm(settings: Settings, tmp_path: Path) -> None:
    environment = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "FEEDBACK_TOPIC_PREFIX": settings.topic_prefix,
        "FEEDBACK_PII_KEY": settings.pii_key.get_secret_value(),
        "FEEDBACK_AUTH_TOKEN_KEY": settings.auth_token_key.get_secret_value(),
        "FEEDBACK_EVIDENCE_DIR": str(tmp_path / "evidence"),
    }
    port = free_port()
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [FEEDBACK, "run", "intake", "--port", str(port), "--verbose"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environment,
        )
    try:
        _wait_healthy(process, f"http://127.0.0.1:{port}/health", 120, log)
        assert _terminate_and_wait(process, 60) == 0, log.read_text()[-3000:]
        # uvicorn raises the signal again under our handler only after its graceful
        # shutdown (the app's lifespan end) has finished.
        assert "SIGTERM: stopping" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
