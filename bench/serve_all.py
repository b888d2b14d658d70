"""`python -m bench.serve_all PORT services`: chosen services in one process, on the
infrastructure named by the environment (what `feedback up` does after starting it)."""

from __future__ import annotations

import sys

import uvicorn

from services.common.http_server import server_options
from services.common.settings import Settings
from services.runtime import create_app

if __name__ == "__main__":
    port, services = int(sys.argv[1]), tuple(sys.argv[2].split(","))
    settings = Settings()
    uvicorn.run(
        create_app(settings, services), host="127.0.0.1", port=port, **server_options(settings)
    )
