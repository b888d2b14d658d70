"""The HTTP server every service runs (uvicorn), with the limits a public server needs.

Uvicorn times out idle keep-alive connections but not a client that sends its headers
slowly, or a body shorter than its Content-Length, and it holds any number of them. Here:
- headers must be complete within `header_timeout_s` of the connection (or of the
  previous request's end), else the connection is closed (`GuardedHttpProtocol`);
- the body must keep coming: no more than `body_timeout_s` between two reads, else 408
  (`services.runtime.GuardMiddleware`, which also caps the bytes actually read);
- at most `max_connections` connections and requests at once, beyond which new ones get
  503 (uvicorn's `limit_concurrency`).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from services.common.observability import json_logs_requested
from services.common.settings import Settings

HEADER_TIMEOUT_ENV = "FEEDBACK_HEADER_TIMEOUT_S"


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing connections whose headers do not arrive in time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = float(os.environ.get(HEADER_TIMEOUT_ENV, "10"))
        self._header_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next request on this connection gets its own header deadline; until its first
        # byte, uvicorn's keep-alive timeout applies.
        self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def server_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.run` / `uvicorn.Config` (also read by worker processes,
    hence the header timeout through the environment)."""
    os.environ[HEADER_TIMEOUT_ENV] = str(settings.header_timeout_s)
    return {
        "http": GuardedHttpProtocol,
        "limit_concurrency": settings.max_connections,
        "timeout_keep_alive": 5,
        # Open streams (a console tab's live updates) must not hold a shutdown forever: after
        # this long, the remaining connections are closed and the app's clean-up runs.
        "timeout_graceful_shutdown": 5,
        "log_level": "warning",
        # JSON logs: uvicorn's loggers go to the root handler instead of its own text one.
        **({"log_config": None} if json_logs_requested() else {}),
    }


def server(app: Any, settings: Settings, host: str, port: int) -> uvicorn.Server:
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, **server_options(settings)))
