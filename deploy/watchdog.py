"""Stops what a local run started when the run dies without cleaning up (kill -9, the OOM
killer): `feedback up` and `feedback demo` start PostgreSQL and a Kafka broker, and a
process killed outright runs no `finally`.

The run starts this process first and tells it, one JSON line at a time on its stdin, which
folders to guard. That pipe's only writer is the run: when the run ends, however it ends,
the kernel closes it. End of file after a `done` line is a clean stop (the run stopped its
children itself); end of file without one means the run is gone: every process whose
arguments name a guarded folder exactly (`kafka.Kafka <folder>/server.properties`, a
`postgres` program with `-D <data folder>`) is stopped, then temporary folders are removed.

Why not prctl(PR_SET_PDEATHSIG) on the children: `pg_ctl` daemonises PostgreSQL (the
setting is cleared on fork, and on the user switch the embedded server makes when run as
root), the signal follows the thread that started the child rather than the process, and
it exists on Linux only. A pipe closing is the same on Linux and macOS.

Standard library only: it starts in a few tens of milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# How long a guarded process may take to stop on its own signal before it is killed.
GRACE_S = 10.0


@dataclass(frozen=True)
class Target:
    # consecutive arguments of the process's command line, each compared whole (a
    # neighbouring run's folder that merely starts with this one is not it)
    marker: tuple[str, ...]
    # the signal that stops it gracefully
    signum: int
    # a PostgreSQL data folder: left running while another live process holds the server
    postgres_data: str | None = None


@dataclass
class Guarded:
    """What to do once the run is gone."""

    targets: list[Target] = field(default_factory=list)
    removals: list[str] = field(default_factory=list)
    done: bool = False

    def read(self, line: str) -> None:
        message = json.loads(line)
        match message.get("kind"):
            case "kafka":
                marker = ("kafka.Kafka", f"{message['folder']}/server.properties")
                self.targets.append(Target(marker, signal.SIGTERM))
            case "postgres":
                folder = str(message["folder"])
                # SIGINT: fast shutdown (sessions ended, no waiting for clients)
                self.targets.append(Target(("-D", folder), signal.SIGINT, folder))
            case "remove":
                self.removals.append(str(message["folder"]))
            case "done":
                self.done = True
            case other:
                raise ValueError(f"unknown watchdog message {other!r}")


def _names(arguments: list[str], marker: tuple[str, ...]) -> bool:
    width = len(marker)
    if marker[0] == "-D" and not (arguments and Path(arguments[0]).name == "postgres"):
        return False  # only the server itself (pg_ctl names the folder too)
    return any(tuple(arguments[i : i + width]) == marker for i in range(len(arguments) - width + 1))


def processes_naming(marker: tuple[str, ...]) -> list[int]:
    """Live processes (not zombies) whose arguments contain `marker`, consecutively."""
    me = os.getpid()
    proc = Path("/proc")
    if proc.is_dir():
        found = []
        for entry in proc.iterdir():
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            try:
                raw = (entry / "cmdline").read_bytes()
                arguments = raw.rstrip(b"\0").decode().split("\0")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError, UnicodeDecodeError):
                continue
            if state != "Z" and _names(arguments, marker):
                found.append(int(entry.name))
        return found
    # Without /proc (macOS): ps joins the arguments with spaces; folders without spaces
    # (the local default's) still split back exactly.
    listing = subprocess.run(
        ["ps", "-axww", "-o", "pid=,stat=,command="], capture_output=True, text=True, check=False
    ).stdout
    found = []
    for row in listing.splitlines():
        pid, status, command = [*row.strip().split(None, 2), "", ""][:3]
        if (
            pid.isdigit()
            and int(pid) != me
            and not status.startswith("Z")
            and _names(command.split(), marker)
        ):
            found.append(int(pid))
    return found


def _other_holders(data_folder: str, run_pid: int) -> list[int]:
    """Live processes besides the run that hold the embedded PostgreSQL server (the
    wheel's own list of handles: it stops the server with the last one)."""
    try:
        pids = [int(p) for p in json.loads((Path(data_folder) / ".handle_pids.json").read_text())]
    except (OSError, ValueError, TypeError):
        return []
    return [p for p in pids if p != run_pid and alive(p)]


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _say(text: str) -> None:
    # The run's terminal may be gone (closing it is one way the run died): saying so must
    # not stop the clean-up.
    with contextlib.suppress(OSError):
        print(text, file=sys.stderr, flush=True)


def clean_up(guarded: Guarded, run_pid: int) -> None:
    """Stop every guarded process, gracefully and then for sure; remove temporary folders."""
    stopping: list[tuple[str, ...]] = []
    for target in guarded.targets:
        data = target.postgres_data
        if data is not None and (holders := _other_holders(data, run_pid)):
            _say(f"watchdog: PostgreSQL in {data} still held by {holders}")
            continue
        pids = processes_naming(target.marker)
        for pid in pids:
            _signal(pid, target.signum)
        if pids:
            stopping.append(target.marker)
            _say(f"watchdog: run {run_pid} gone; stopping {pids} ({' '.join(target.marker)})")
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline and any(processes_naming(m) for m in stopping):
        time.sleep(0.1)
    for marker in stopping:
        for pid in processes_naming(marker):
            _say(f"watchdog: killing {pid} ({' '.join(marker)})")
            _signal(pid, signal.SIGKILL)
    for folder in guarded.removals:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    run_pid = os.getppid()
    guarded = Guarded()
    for line in sys.stdin:
        if line.strip():
            try:
                guarded.read(line)
            except (ValueError, KeyError) as error:  # a torn last line must not skip clean-up
                _say(f"watchdog: unreadable message {line!r}: {error}")
    if not guarded.done:
        clean_up(guarded, run_pid)


if __name__ == "__main__":
    main()
