"""The local default: PostgreSQL and Kafka started here unless the environment names them."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from deploy.kafka_broker import LocalKafka, start_kafka
from deploy.postgres_server import LocalPostgres, start_postgres

log = logging.getLogger(__name__)


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """SIGTERM (`docker stop`, Kubernetes, systemd, `kill`) stops the process as Ctrl-C
    does: every `finally` runs, so the Kafka broker and PostgreSQL it started stop too.

    Python's default for SIGTERM is to die on the spot. uvicorn catches SIGTERM while it
    serves, shuts the app down, then raises the signal again under the handler that was
    there before it: by default that killed the process before `local_infrastructure`
    could stop its children. Here that handler raises SystemExit(0) instead (a requested
    stop that completed is a success), and ignores any further SIGTERM so that a second
    one cannot cut the clean-up short (SIGKILL still can).
    """

    def terminate(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        log.warning("%s: stopping", signal.Signals(signum).name)
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, terminate)
    # The terminal closed: stop the same way (Python's default for SIGHUP is to die on the
    # spot, leaving the children to the watchdog).
    previous_hangup = signal.signal(signal.SIGHUP, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGHUP, previous_hangup)


@dataclass
class LocalInfrastructure:
    postgres: LocalPostgres
    kafka: LocalKafka

    def environment(self) -> dict[str, str]:
        return {
            "DATABASE_URL": self.postgres.url,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
        }


# The secrets a process needs, by variable, with the file the local default keeps each in.
LOCAL_KEYS = {
    "FEEDBACK_PII_KEY": "pii.key",
    "FEEDBACK_AUTH_TOKEN_KEY": "auth.key",
    "FEEDBACK_MODEL_SIGNING_KEY": "model.key",
}


def local_key(variable: str, state_dir: Path | None) -> str:
    """A key from the environment; for a local run only, a generated key kept in the state
    folder (mode 0600). Production must set the variable."""
    configured = os.environ.get(variable)
    if configured:
        return configured
    if state_dir is None:
        return base64.b64encode(secrets.token_bytes(32)).decode()
    key_file = state_dir / LOCAL_KEYS[variable]
    if not key_file.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        key_file.write_text(base64.b64encode(secrets.token_bytes(32)).decode())
        key_file.chmod(0o600)
        log.warning("%s not set: generated a local key in %s", variable, key_file)
    return key_file.read_text().strip()


def local_keys(state_dir: Path | None) -> dict[str, str]:
    """Every key the platform needs, for the environment of a local run."""
    return {variable: local_key(variable, state_dir) for variable in LOCAL_KEYS}


class Watchdog:
    """deploy/watchdog.py, started before the children it guards: if this process dies
    without stopping them (kill -9), it stops them. Started in a session of its own, so
    Ctrl-C and signals to this process's group do not reach it; only its stdin, a pipe
    whose one writer is this process, ends it."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None
        try:
            self._process = subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name("watchdog.py"))],
                stdin=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        except OSError as error:
            log.warning("no watchdog (%s): kill -9 would leave the broker and PostgreSQL", error)

    def _tell(self, **message: str) -> None:
        if self._process is None or self._process.stdin is None:
            return
        try:
            self._process.stdin.write(json.dumps(message) + "\n")
            self._process.stdin.flush()
        except OSError as error:  # it died: carry on unguarded
            log.warning("watchdog gone (%s)", error)
            self._process = None

    # Folders as the children's command lines name them (absolute).
    def guard_postgres(self, data_dir: Path) -> None:
        self._tell(kind="postgres", folder=str(data_dir))

    def guard_kafka(self, data_dir: Path) -> None:
        self._tell(kind="kafka", folder=str(data_dir))

    def remove_after(self, folder: Path) -> None:
        self._tell(kind="remove", folder=str(folder))

    def release(self, *, stopped: bool = True) -> None:
        """With `stopped`, the children are stopped: the watchdog leaves without doing
        anything. Without (stopping them failed), closing the pipe alone has it stop them."""
        if stopped:
            self._tell(kind="done")
        if self._process is not None and self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()


@contextmanager
def local_infrastructure(state_dir: Path | None) -> Iterator[LocalInfrastructure]:
    """Start (or reuse from the environment) PostgreSQL and Kafka; stop what was started,
    also when this process is killed outright (a watchdog process stops them then).

    With `state_dir`, data survives restarts there; without, everything is temporary.
    """
    temporary = state_dir is None
    root = Path(tempfile.mkdtemp(prefix="feedback-local-")) if state_dir is None else state_dir
    # Absolute: the watchdog finds the children by the folders in their command lines.
    root = root.resolve()
    watchdog = Watchdog()
    watchdog.guard_postgres(root / "pgdata")
    watchdog.guard_kafka(root / "kafka")
    if temporary:
        watchdog.remove_after(root)
    # Each set once its child stopped; unless both are, the watchdog stops what is left.
    kafka_stopped = postgres_stopped = False
    try:
        postgres = start_postgres(root / "pgdata", keep_data=not temporary)
        try:
            kafka = start_kafka(root / "kafka")
            try:
                yield LocalInfrastructure(postgres, kafka)
            finally:
                kafka.stop()
                kafka_stopped = True
        finally:
            postgres.stop()
            postgres_stopped = True
    finally:
        stopped = kafka_stopped and postgres_stopped
        if temporary and stopped:
            shutil.rmtree(root, ignore_errors=True)
        watchdog.release(stopped=stopped)
