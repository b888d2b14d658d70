"""An unexpected error answers 500 with a JSON reason and the keep-alive connection stays
usable (uvicorn used to close it without `Connection: close`, so clients got a reset on
their next request). Real uvicorn with the platform's guard; no Kafka needed."""

from __future__ import annotations

import asyncio
import socket

import pytest
from fastapi import FastAPI

from services.common import http_server
from services.common.settings import Settings
from services.runtime import GuardMiddleware
from tests.conftest import free_port, wait_for

pytestmark = pytest.mark.integration


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One HTTP/1.1 response with a Content-Length: (head, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(4096)
    return head, body


async def test_a_500_keeps_the_connection_usable(settings: Settings) -> None:
    app = FastAPI()

    @app.get("/boom")
    async def boom() -> dict[str, str]:
        raise RuntimeError("a bug")

    @app.get("/fine")
    async def fine() -> dict[str, str]:
        return {"status": "fine"}

    app.add_middleware(
        GuardMiddleware, default_limit=1024, limits=[], body_timeout_s=1.0, limiter=None
    )
    port = free_port()
    server = http_server.server(app, settings, "127.0.0.1", port)
    task = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.started, timeout=10, what="server started")

        def two_requests() -> list[tuple[bytes, bytes]]:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                answers = []
                for path in (b"/boom", b"/fine"):
                    sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                    answers.append(read_response(sock))
                return answers

        (error_head, error_body), (fine_head, fine_body) = await asyncio.to_thread(two_requests)
        assert error_head.startswith(b"HTTP/1.1 500")
        assert b"internal error" in error_body
        assert b"connection: close" not in error_head.lower()
        assert fine_head.startswith(b"HTTP/1.1 200")
        assert fine_body == b'{"status":"fine"}'
    finally:
        server.should_exit = True
        await task
