"""`feedback`: run the platform, its services one by one, the demo, and schema export."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Customer-feedback platform: intake, routing, projections on Kafka and PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
)


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        # aiokafka logs a coordinator lookup retry at ERROR while a fresh broker elects
        # its group coordinator; our own code reports real failures.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def _serve(services: tuple[str, ...], host: str, port: int, state_dir: Path | None) -> None:
    import uvicorn

    from deploy.local import local_infrastructure, local_pii_key
    from services.common.settings import Settings
    from services.runtime import create_app

    os.environ["FEEDBACK_PII_KEY"] = local_pii_key(state_dir)
    with local_infrastructure(state_dir) as infrastructure:
        os.environ.update(infrastructure.environment())
        settings = Settings()
        typer.echo(
            f"PostgreSQL: {infrastructure.postgres.url}\nKafka: {infrastructure.kafka.bootstrap_servers}\n"
            f"HTTP: http://{host}:{port}  (services: {', '.join(services)})",
            err=True,
        )
        uvicorn.run(create_app(settings, services), host=host, port=port, log_level="warning")


@app.command()
def up(
    port: Annotated[int, typer.Option(help="HTTP port")] = 8000,
    host: Annotated[str, typer.Option(help="HTTP address")] = "127.0.0.1",
    state_dir: Annotated[
        Path, typer.Option(help="where local PostgreSQL and Kafka keep data")
    ] = Path(".feedback"),
    verbose: bool = False,
) -> None:
    """Run every service in one process on the local default (Ctrl-C stops)."""
    from services.runtime import ALL_SERVICES

    _logging(verbose)
    _serve(ALL_SERVICES, host, port, state_dir.resolve())


@app.command()
def run(
    service: Annotated[str, typer.Argument(help="intake | routing | relay | projections")],
    port: Annotated[int, typer.Option(help="HTTP port (health, and the service's API)")] = 8000,
    host: str = "127.0.0.1",
    verbose: bool = False,
) -> None:
    """Run one service alone against DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS."""
    from services.runtime import ALL_SERVICES

    _logging(verbose)
    if service not in ALL_SERVICES:
        typer.echo(f"unknown service {service!r}; choose from {', '.join(ALL_SERVICES)}", err=True)
        raise typer.Exit(2)
    for variable in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "FEEDBACK_PII_KEY"):
        if not os.environ.get(variable):
            typer.echo(
                f"{variable} must be set to run a service alone (`feedback up` starts everything locally)",
                err=True,
            )
            raise typer.Exit(2)
    import uvicorn

    from services.common.settings import Settings
    from services.runtime import create_app

    settings = Settings()
    uvicorn.run(create_app(settings, (service,)), host=host, port=port, log_level="warning")


@app.command()
def demo(
    sample: Annotated[Path, typer.Option(help="JSON lines of sample feedback")] = Path(
        "samples/feedback.jsonl"
    ),
    timeout: Annotated[float, typer.Option(help="seconds to wait for every item")] = 120.0,
    verbose: bool = False,
) -> None:
    """Start everything, send the sample, wait until all is registered, print the table."""
    from feedback_cli.demo import run_demo

    _logging(verbose)
    raise typer.Exit(run_demo(sample, timeout))


@app.command()
def schemas(
    out: Annotated[Path, typer.Option(help="folder for the JSON Schemas")] = Path(
        "contracts/schemas"
    ),
) -> None:
    """Write the JSON Schema of every contract message."""
    from contracts.schemas import write_schemas

    for path in write_schemas(out):
        typer.echo(str(path))


if __name__ == "__main__":
    app()
