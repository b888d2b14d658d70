"""`feedback topics apply`: the platform's Kafka topics as declared in code
(services/common/topics_setup.py), created where missing, differences reported."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated, cast

import typer

if TYPE_CHECKING:
    from services.common.topics_setup import TopicSettings

topics_app = typer.Typer(help="Kafka topics as declared in code (partitions, retention, policy).")

# Only what the topics need: the job that runs this needs no database or keys.
TOPIC_FIELDS = (
    "kafka_bootstrap_servers",
    "topic_prefix",
    "topic_partitions",
    "topic_replication_factor",
    "topic_min_insync_replicas",
)


def topic_settings_from_environment() -> TopicSettings:
    """The topic fields of Settings, read from the environment with Settings' own names,
    aliases, defaults and bounds (the rest of Settings, e.g. the keys, is not required)."""
    from pydantic import create_model
    from pydantic_settings import BaseSettings

    from services.common.settings import Settings

    fields: dict[str, object] = {
        name: (Settings.model_fields[name].annotation, Settings.model_fields[name])
        for name in TOPIC_FIELDS
    }
    model = create_model("TopicSettings", __base__=BaseSettings, **fields)  # type: ignore[call-overload]
    model.model_config.update(Settings.model_config)
    return cast("TopicSettings", model())


@topics_app.command("apply")
def topics_apply(
    dry_run: Annotated[
        bool, typer.Option(help="only say what would be created and what differs")
    ] = False,
) -> None:
    """Create the topics that are missing on KAFKA_BOOTSTRAP_SERVERS and report how the
    existing ones differ from their declarations (never changing them). Exit status 0 when
    done (differences are printed, not failures), 2 when it could not reach Kafka or create."""
    from pydantic import ValidationError

    from services.common.topics_setup import apply_sync, platform_departments

    if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and not os.environ.get(
        "FEEDBACK_KAFKA_BOOTSTRAP_SERVERS"
    ):
        typer.echo("KAFKA_BOOTSTRAP_SERVERS must name the cluster", err=True)
        raise typer.Exit(2)
    try:
        settings = topic_settings_from_environment()
        reports = apply_sync(settings, platform_departments(), dry_run=dry_run)
    except ValidationError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from error
    except Exception as error:  # the broker refused or is away: say which and why
        typer.echo(f"topics not applied: {type(error).__name__}: {error}", err=True)
        raise typer.Exit(2) from error
    for report in reports:
        typer.echo(report.line())
    counts: dict[str, int] = {}
    for report in reports:
        counts[report.action] = counts.get(report.action, 0) + 1
    summary = ", ".join(f"{n} {action}" for action, n in sorted(counts.items()))
    typer.echo(f"{len(reports)} topics: {summary}" + (" (dry run)" if dry_run else ""))
