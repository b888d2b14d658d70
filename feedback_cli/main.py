"""`feedback`: run the platform, its services one by one, the demo, and schema export."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    help="Customer-feedback platform: intake, routing, projections on Kafka and PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
)


def _logging(verbose: bool) -> None:
    from services.common.observability import configure_logging, json_logs_requested

    # FEEDBACK_LOG_FORMAT=json: one JSON object a line (Settings validates the value later).
    configure_logging(logging.INFO if verbose else logging.WARNING, json_logs_requested())
    if not verbose:
        # aiokafka logs a coordinator lookup retry at ERROR while a fresh broker elects
        # its group coordinator; our own code reports real failures.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def _serve(services: tuple[str, ...], host: str, port: int, state_dir: Path | None) -> None:
    import uvicorn

    from deploy.local import local_infrastructure, local_keys, stop_on_sigterm
    from services.common.http_server import server_options
    from services.common.settings import Settings
    from services.runtime import create_app

    os.environ.update(local_keys(state_dir))
    if state_dir is not None:
        # The local default writes its weekly and monthly reports beside its data.
        os.environ.setdefault("FEEDBACK_REPORTS_DIR", str(state_dir / "reports"))
    # SIGTERM as Ctrl-C: the broker and PostgreSQL started below are stopped either way.
    with stop_on_sigterm(), local_infrastructure(state_dir) as infrastructure:
        os.environ.update(infrastructure.environment())
        settings = Settings()
        typer.echo(
            f"PostgreSQL: {infrastructure.postgres.url}\nKafka: {infrastructure.kafka.bootstrap_servers}\n"
            f"HTTP: http://{host}:{port}  (services: {', '.join(services)})",
            err=True,
        )
        uvicorn.run(
            create_app(settings, services), host=host, port=port, **server_options(settings)
        )


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
    service: Annotated[
        str, typer.Argument(help="intake | routing | relay | projections | sla | notifications")
    ],
    port: Annotated[int, typer.Option(help="HTTP port (health, and the service's API)")] = 8000,
    host: str = "127.0.0.1",
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="processes sharing the port (HTTP and SMTP)")
    ] = 1,
    verbose: bool = False,
) -> None:
    """Run one service alone against DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS."""
    from services.runtime import ALL_SERVICES

    _logging(verbose)
    if service not in ALL_SERVICES:
        typer.echo(f"unknown service {service!r}; choose from {', '.join(ALL_SERVICES)}", err=True)
        raise typer.Exit(2)
    for variable in (
        "DATABASE_URL",
        "KAFKA_BOOTSTRAP_SERVERS",
        "FEEDBACK_PII_KEY",
        "FEEDBACK_AUTH_TOKEN_KEY",
    ):
        if not os.environ.get(variable):
            typer.echo(
                f"{variable} must be set to run a service alone (`feedback up` starts everything locally)",
                err=True,
            )
            raise typer.Exit(2)
    import uvicorn

    from deploy.local import stop_on_sigterm
    from services.common.http_server import server_options
    from services.common.settings import Settings
    from services.runtime import create_app

    settings = Settings()
    # A container's stop (SIGTERM) ends in a graceful shutdown and exit status 0, as Ctrl-C.
    with stop_on_sigterm():
        if workers > 1:
            os.environ["FEEDBACK_SERVICES"] = service
            uvicorn.run(
                "services.runtime:app_from_environment",
                factory=True,
                workers=workers,
                host=host,
                port=port,
                **server_options(settings),
            )
            return
        uvicorn.run(
            create_app(settings, (service,)), host=host, port=port, **server_options(settings)
        )


@app.command()
def demo(
    sample: Annotated[Path, typer.Option(help="JSON lines of sample feedback")] = Path(
        "samples/feedback.jsonl"
    ),
    timeout: Annotated[float, typer.Option(help="seconds to wait for every item")] = 120.0,
    console: Annotated[
        bool | None,
        typer.Option(
            help="keep the console up with the demo data until Ctrl-C "
            "(default: when run from a terminal)"
        ),
    ] = None,
    port: Annotated[int, typer.Option(help="the console's port (another if taken)")] = 8000,
    verbose: bool = False,
) -> None:
    """Start everything, send the sample, wait until all is registered, print the table;
    then keep the console up with demo accounts (passwords generated, printed once)."""
    import sys

    from feedback_cli.demo import run_demo

    _logging(verbose)
    keep_console = sys.stdin.isatty() if console is None else console
    raise typer.Exit(run_demo(sample, timeout, port if keep_console else None))


@app.command()
def classify(
    rules: Annotated[
        Path | None, typer.Option(help="rule book (default: config/classification.yaml)")
    ] = None,
) -> None:
    """Classify JSON lines from stdin; one JSON decision per line on stdout.

    Input: {"text", "channel", "customer_tier", "customer_ref" (optional)}. Lines of the
    same customer_ref within one run count as that customer's history (repeat rule).
    """
    import json

    from pydantic import ValidationError

    from services.routing.classifier import Classifier, FeedbackText, History, load_rulebook
    from services.routing.classifier.cli_input import ClassifyInput

    classifier = Classifier.trained(load_rulebook(rules))
    seen: dict[str, set[str]] = {}
    failed = False
    for number, line in enumerate(sys.stdin, start=1):
        if not line.strip():
            continue
        try:
            item = ClassifyInput.model_validate_json(line)
        except ValidationError as error:
            typer.echo(f"line {number}: {error.errors(include_url=False)}", err=True)
            sys.stdout.write(json.dumps({"error": f"line {number}: invalid input"}) + "\n")
            failed = True
            continue
        history = (
            History(frozenset(seen.get(item.customer_ref, set()))) if item.customer_ref else None
        )
        decision = classifier.classify(
            FeedbackText(item.text, item.channel, item.customer_tier, item.customer_ref), history
        )
        if item.customer_ref and decision.category:
            seen.setdefault(item.customer_ref, set()).add(decision.category)
        sys.stdout.write(json.dumps(decision.as_dict(), ensure_ascii=False) + "\n")
    sys.stdout.flush()
    if failed:
        raise typer.Exit(1)


@app.command(name="eval")
def evaluate_rules(
    rules: Annotated[
        Path | None, typer.Option(help="rule book (default: config/classification.yaml)")
    ] = None,
    misses: Annotated[
        bool, typer.Option(help="list the misses on the tuning set (never the frozen set's)")
    ] = False,
) -> None:
    """Per-field accuracy, urgent recall and confusion on the frozen evaluation set (never
    tuned on: its items are never shown), of the rules with the model trained from
    config/training and of the rules alone (a stored active version's figures: `feedback
    train --list`); `--misses` lists the misses on the training set's tuning part only."""
    from services.routing.classifier import Classifier, load_rulebook
    from services.routing.classifier.evaluation import (
        FROZEN_EVAL,
        TUNE_SET,
        evaluate,
        frozen_report,
        load_labelled,
    )

    book = load_rulebook(rules)
    frozen = load_labelled(FROZEN_EVAL)
    for name, classifier in (
        ("rules and model", Classifier.trained(book)),
        ("rules alone", Classifier(book)),
    ):
        typer.echo(f"== {name}")
        for line in frozen_report(classifier, frozen):
            typer.echo(line)
    if misses:
        report = evaluate(Classifier.trained(book), load_labelled(TUNE_SET), "tuning set")
        for item, got in report.misses:
            diff = {k: f"{item.expected[k]}≠{got[k]}" for k in got if got[k] != item.expected[k]}
            typer.echo(f"    {item.line}: {item.text[:40]}  {diff}")


@app.command(name="train")
def train_model(
    dry_run: Annotated[
        bool, typer.Option(help="train and compare, print the figures, store nothing")
    ] = False,
    list_: Annotated[
        bool, typer.Option("--list", help="list the stored versions and their figures")
    ] = False,
    activate: Annotated[
        int | None,
        typer.Option(help="make this stored version active again (a roll-back), nothing trained"),
    ] = None,
    training: Annotated[
        list[Path] | None,
        typer.Option(help="a training file (repeatable; default: config/training/*.psv)"),
    ] = None,
    state_dir: Annotated[Path, typer.Option(help="the local default's data folder")] = Path(
        ".feedback"
    ),
) -> None:
    """Train the next classifier model on the training set plus the supervisors'
    corrections (reclassifications, priority overrides) in the event store; print its
    frozen-set figures beside the active model's (aggregates only); store it as a new
    version and make it the active one only when it is not worse: urgent recall not
    lower than the active's; non-urgent texts made urgent at most max(5 %, the active's);
    no field's accuracy more than 1 point lower and the mean of all fields not lower;
    the share sent to triage at most 2 points higher. A worse candidate is stored with
    its figures only. Services load the active version at start (else they train from
    config/training). DATABASE_URL or the local default's database; models are signed
    with FEEDBACK_MODEL_SIGNING_KEY. Exit 1 when the candidate is worse (dry run too)."""
    import getpass
    import socket

    from deploy.local import local_key
    from deploy.postgres_server import start_postgres
    from services.cases.store import CaseStore
    from services.common.config_store import effective
    from services.routing.classifier.evaluation import FROZEN_EVAL, TRAINING, load_labelled
    from services.routing.classifier.model import training_files
    from services.routing.classifier.registry import ModelRegistry, SigningKeyError, signing_key
    from services.routing.classifier.training import NOT_WORSE_RULE, side_by_side, train

    local = not os.environ.get("DATABASE_URL")
    encoded = os.environ.get("FEEDBACK_MODEL_SIGNING_KEY") or (
        local_key("FEEDBACK_MODEL_SIGNING_KEY", state_dir) if local else None
    )
    if encoded is None and not (dry_run or list_):
        typer.echo(
            "FEEDBACK_MODEL_SIGNING_KEY is not set: models cannot be stored or activated "
            "(--dry-run and --list work without it)",
            err=True,
        )
        raise typer.Exit(2)
    try:
        # Without a key nothing stored can be verified: compared, as the services without
        # one run, with the model trained from config/training.
        key = signing_key(encoded) if encoded else os.urandom(32)
    except SigningKeyError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None
    files = list(training or training_files(TRAINING))
    missing = [str(path) for path in files if not path.is_file()]
    if missing or not files:
        typer.echo(f"no training file: {', '.join(missing) or TRAINING}", err=True)
        raise typer.Exit(2)
    server = start_postgres(state_dir / "pgdata" if local else None, keep_data=True)
    try:
        registry = ModelRegistry(server.url, key)
        registry.create_schema()
        # The rule book the services run with (stored version, else the file): the model
        # learns the rules' findings, so it is trained and compared with those rules.
        book = effective(server.url).rulebook
        fingerprint = book.model_dump_json().encode()
        if list_:
            _list_models(registry)
            return
        if activate is not None:
            try:
                registry.activate(activate, fingerprint)
            except ValueError as error:
                typer.echo(str(error), err=True)
                raise typer.Exit(1) from None
            typer.echo(f"version {activate} is active; services load it at their next start")
            return
        if encoded is None:
            typer.echo("FEEDBACK_MODEL_SIGNING_KEY not set: compared with config/training's model")
        typer.echo(f"training a candidate on {len(files)} files and the corrections ...")
        store = CaseStore(server.url, create_table=False)
        outcome = train(
            registry,
            store,
            book,
            load_labelled(FROZEN_EVAL),
            files,
            TRAINING,
            created_by=f"cli:{getpass.getuser()}@{socket.gethostname()}",
            dry_run=dry_run,
        )
    finally:
        server.stop()
    corrections = outcome.corrections
    typer.echo(
        f"training set: {outcome.training_items} texts, of them {len(corrections.found)} "
        f"corrected cases ({corrections.unusable} left out: labels not in the rule book; "
        f"{corrections.in_frozen_set} left out: text in the frozen set)"
    )
    typer.echo(
        f"frozen evaluation set: {outcome.active.items} texts (figures only); "
        f"active: {outcome.active_source}"
    )
    for line in side_by_side(outcome.active, outcome.candidate):
        typer.echo(line)
    verdict = outcome.verdict
    if verdict.not_worse:
        typer.echo(f"not worse ({NOT_WORSE_RULE})")
    else:
        typer.echo("worse than the active model:")
        for reason in verdict.reasons:
            typer.echo(f"  - {reason}")
    if dry_run:
        typer.echo(
            "dry run: nothing stored; it "
            + ("would be activated" if verdict.not_worse else "would not be activated")
        )
    elif outcome.activated:
        typer.echo(
            f"stored and activated as version {outcome.stored_version}; "
            "services load it at their next start"
        )
    else:
        typer.echo(
            f"stored as version {outcome.stored_version} (figures only), not activated"
            + (f": {outcome.note}" if outcome.note else "; the active model stays")
        )
    if not verdict.not_worse or (not dry_run and not outcome.activated):
        raise typer.Exit(1)


def _list_models(registry: Any) -> None:
    from services.routing.classifier.evaluation import FIELDS

    versions = registry.versions()
    if not versions:
        typer.echo("no stored model: services train from config/training")
        return
    typer.echo(
        f"{'':2}{'version':>7}  {'created':<16}  {'texts':>6} {'corr.':>5}  "
        f"{'mean':>6} {'recall':>6} {'alarms':>6} {'triage':>6}  by / decision"
    )
    for v in versions:
        f = v.figures
        typer.echo(
            f"{'*' if v.active else ' ':2}{v.version:>7}  {v.created_at:%Y-%m-%d %H:%M}  "
            f"{v.training_items:>6} {v.corrections:>5}  {f['mean_accuracy']:>6.1%} "
            f"{f['urgent_recall']:>6.1%} {f['false_alarms']:>6.1%} {f['triage_share']:>6.1%}  "
            f"{v.created_by} / {v.decision[:60]}"
        )
        typer.echo(
            f"{'':9}fields: " + ", ".join(f"{name} {f['accuracy'][name]:.1%}" for name in FIELDS)
        )
    if any(v.active for v in versions):
        typer.echo("* active: the model services load at start")
    else:
        typer.echo("no version active: services train from config/training")


deadletter_app = typer.Typer(help="What intake received but could not read, kept with the reason.")
app.add_typer(deadletter_app, name="deadletter")
URL = Annotated[str, typer.Option(help="a running platform's HTTP address")]


def _call(method: str, url: str, **kwargs: Any) -> Any:
    """Call a running platform as the signed-in user of FEEDBACK_TOKEN (`feedback token`)."""
    import httpx

    token = os.environ.get("FEEDBACK_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.request(method, url, timeout=120, headers=headers, **kwargs)
    except httpx.TransportError as error:
        typer.echo(f"cannot reach {url}: {error}", err=True)
        raise typer.Exit(2) from error
    if response.status_code >= 400:
        typer.echo(f"{response.status_code}: {response.text}", err=True)
        raise typer.Exit(1)
    return response.json()


@app.command()
def token(
    username: str,
    url: URL = "http://127.0.0.1:8000",
    password_stdin: Annotated[
        bool, typer.Option(help="read the password from the first line of standard input")
    ] = False,
) -> None:
    """Sign in and print a bearer token, for `export FEEDBACK_TOKEN=...` (the commands that
    call a running platform send it)."""
    import getpass

    password = (
        sys.stdin.readline().rstrip("\r\n") if password_stdin else getpass.getpass("password: ")
    )
    answer = _call(
        "POST", f"{url}/v1/auth/token", data={"username": username, "password": password}
    )
    typer.echo(answer["access_token"])


@deadletter_app.command("list")
def deadletter_list(
    url: URL = "http://127.0.0.1:8000",
    all_: Annotated[bool, typer.Option("--all", help="include replayed ones")] = False,
) -> None:
    """List dead letters, newest first."""
    for letter in _call("GET", f"{url}/v1/deadletters", params={"all": all_}):
        replayed = f"  replayed: {letter['replay_result']}" if letter["replayed_at"] else ""
        typer.echo(
            f"{letter['dead_letter_id']}  {letter['created_at'][:19]}  {letter['source']:<8} "
            f"{letter['size']:>7} B  {letter['reason'][:80]}{replayed}"
        )


@deadletter_app.command("replay")
def deadletter_replay(dead_letter_id: str, url: URL = "http://127.0.0.1:8000") -> None:
    """Parse a dead letter again (after a fix) and register it."""
    result = _call("POST", f"{url}/v1/deadletters/{dead_letter_id}/replay")
    typer.echo(f"replayed: {result['result']}")


@app.command("import")
def import_batch(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="CSV or XLSX")],
    channel: Annotated[str, typer.Option(help="store | letter")],
    url: URL = "http://127.0.0.1:8000",
) -> None:
    """Import a registration table; prints what was taken, cleaned and refused, by row."""
    from services.common.settings import Settings

    # The server's default; a server configured larger refuses on its own terms.
    largest = int(Settings.model_fields["max_batch_file_bytes"].default)

    if channel not in ("store", "letter"):
        typer.echo("--channel is store or letter", err=True)
        raise typer.Exit(2)
    if file.stat().st_size > largest:
        typer.echo(f"{file.name}: batch files are at most {largest} bytes", err=True)
        raise typer.Exit(2)
    summary = _call(
        "POST", f"{url}/v1/channels/batch/{channel}", files={"file": (file.name, file.read_bytes())}
    )
    cleaned = {c["row"]: c["removed"] for c in summary.get("cleaned", [])}
    if 1 in cleaned:
        typer.echo(f"header: cleaned: {'; '.join(cleaned[1])}")
    for taken in summary["taken"]:
        note = " (already registered)" if taken["duplicate"] else ""
        if taken["row"] in cleaned:
            note += f" (cleaned: {'; '.join(cleaned[taken['row']])}; original kept)"
        typer.echo(f"row {taken['row']}: {taken['feedback_number']}{note}")
    for refused in summary["refused"]:
        typer.echo(f"row {refused['row']}: refused: {'; '.join(refused['errors'])}")
    typer.echo(
        f"{len(summary['taken'])} taken, {len(summary['refused'])} refused of {summary['rows']} rows"
    )
    if summary["refused"]:
        raise typer.Exit(1)


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


sla_app = typer.Typer(help="Deadlines: the business calendar and SLA clocks.")
app.add_typer(sla_app, name="sla")


@sla_app.command("due")
def sla_due(
    calendar_file: Annotated[
        Path | None,
        typer.Option("--calendar", help="calendar file (default: config/calendar.yaml)"),
    ] = None,
    region: Annotated[str | None, typer.Option(help="a regional calendar of the file")] = None,
) -> None:
    """Due times for JSON lines on stdin: {"start", "target", "time", "pauses"} -> {"due"} or
    {"error"}, one line each (see README, Business time)."""
    from services.sla.calendar import CalendarConfigError, load_calendars
    from services.sla.cli_due import due_lines

    try:
        calendar = load_calendars(calendar_file).get(region)
    except (CalendarConfigError, KeyError) as error:
        typer.echo(error.args[0] if isinstance(error, KeyError) else str(error), err=True)
        raise typer.Exit(2) from None
    for answer in due_lines(sys.stdin, calendar):
        typer.echo(answer)


users_app = typer.Typer(help="Staff users who sign in (no user exists until you add one).")
app.add_typer(users_app, name="users")


@users_app.command("add")
def users_add(
    name: str,
    role: Annotated[str, typer.Option(help="agent | supervisor | head | quality | admin")],
    department: Annotated[
        list[str] | None, typer.Option(help="a department the user works in (repeatable)")
    ] = None,
    agent_id: Annotated[str | None, typer.Option(help="the user's agent id in routing")] = None,
    password_stdin: Annotated[
        bool, typer.Option(help="read the password from the first line of standard input")
    ] = False,
    state_dir: Annotated[Path, typer.Option(help="the local default's data folder")] = Path(
        ".feedback"
    ),
) -> None:
    """Add a staff user, in DATABASE_URL or else the local default's database (the one
    `feedback up` uses). Without --password-stdin the user can sign in only through the
    configured OIDC provider."""
    from pydantic import ValidationError

    from services.access.users import UserIn

    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else None
    try:
        user = UserIn(
            username=name,
            password=password,
            role=role,
            departments=tuple(department or ()),
            agent_id=agent_id,
        )
    except ValidationError as error:
        for problem in error.errors(include_url=False):
            where = ".".join(str(p) for p in problem["loc"])
            typer.echo(f"{where}: {problem['msg']}", err=True)
        raise typer.Exit(2) from error
    view = _with_user_database(state_dir, _add_user, user)
    typer.echo(f"added {view.username} ({view.role.value}) {', '.join(view.departments)}")


@users_app.command("list")
def users_list(
    state_dir: Annotated[Path, typer.Option(help="the local default's data folder")] = Path(
        ".feedback"
    ),
) -> None:
    """List staff users (DATABASE_URL, or else the local default's database)."""
    for view in _with_user_database(state_dir, _list_users):
        state = "active" if view.active else "inactive"
        typer.echo(f"{view.username}\t{view.role.value}\t{','.join(view.departments)}\t{state}")


def _with_user_database(state_dir: Path, action: Any, *args: Any) -> Any:
    import asyncio

    import psycopg

    from deploy.postgres_server import start_postgres
    from services.access.users import SCHEMA, UserExists

    server = start_postgres(
        None if os.environ.get("DATABASE_URL") else state_dir / "pgdata", keep_data=True
    )
    try:
        with psycopg.connect(server.url, autocommit=True) as conn:
            for statement in SCHEMA:
                conn.execute(statement)
        return asyncio.run(action(server.url, *args))
    except UserExists as error:
        typer.echo(f"user {error} exists", err=True)
        raise typer.Exit(1) from error
    finally:
        server.stop()


async def _add_user(url: str, user: Any) -> Any:
    import getpass

    import psycopg

    from services.access.users import add_user

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        # Recorded as who ran the command on this machine (no token on the command line).
        return await add_user(conn, user, f"cli:{getpass.getuser()}")


async def _list_users(url: str) -> Any:
    import psycopg

    from services.access.users import list_users

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await list_users(conn)


archive_app = typer.Typer(help="The archive: retention of archived cases in the read side.")
app.add_typer(archive_app, name="archive")


@archive_app.command("purge")
def archive_purge(
    dry_run: Annotated[bool, typer.Option(help="print the counts, remove nothing")] = False,
    older_than_days: Annotated[
        int | None,
        typer.Option(help="retention in days (default: retention_days of config/callbacks.yaml)"),
    ] = None,
    state_dir: Annotated[Path, typer.Option(help="the local default's data folder")] = Path(
        ".feedback"
    ),
) -> None:
    """Remove from the registration table and the callback tables what belongs to cases
    archived longer ago than the retention (at least 3 years; never anything younger), in
    DATABASE_URL or else the local default's database. The event store keeps its events;
    personal data stays erasable (crypto-shredding) because the vault is separate."""
    from datetime import UTC, datetime

    from deploy.postgres_server import start_postgres
    from services.handling.callbacks import MIN_RETENTION_DAYS, load_callback_rules, purge

    if older_than_days is None:
        older_than_days = load_callback_rules().retention_days
    elif older_than_days < MIN_RETENTION_DAYS:
        typer.echo(
            f"--older-than-days {older_than_days} refused: the archive is kept at least "
            f"{MIN_RETENTION_DAYS} days (3 years)",
            err=True,
        )
        raise typer.Exit(2)
    server = start_postgres(
        None if os.environ.get("DATABASE_URL") else state_dir / "pgdata", keep_data=True
    )
    try:
        counts = purge(server.url, older_than_days, datetime.now(UTC), dry_run=dry_run)
    finally:
        server.stop()
    verb = "would remove" if dry_run else "removed"
    for table, count in counts.items():
        typer.echo(f"{table}: {verb} {count}")


projections_app = typer.Typer(help="Read models: rebuild one from the event store.")
app.add_typer(projections_app, name="projections")


@projections_app.command("rebuild")
def projections_rebuild(
    name: Annotated[str, typer.Argument(help="the projection: cases")],
    workers: Annotated[int, typer.Option(min=1, max=32, help="processes folding events")] = 3,
    state_dir: Annotated[Path, typer.Option(help="the local default's data folder")] = Path(
        ".feedback"
    ),
) -> None:
    """Build the projection's tables again from the event store while the live ones keep
    serving, then switch to them in one transaction (DATABASE_URL or the local default)."""
    import asyncio

    from deploy.postgres_server import start_postgres
    from services.projections.rebuild import projections, rebuild
    from services.sla.calendar import load_calendars

    if name not in projections():
        typer.echo(f"no projection {name!r}; there is: {', '.join(projections())}", err=True)
        raise typer.Exit(2)
    server = start_postgres(
        None if os.environ.get("DATABASE_URL") else state_dir / "pgdata", keep_data=True
    )
    try:
        report = asyncio.run(rebuild(server.url, name, load_calendars().get(None), workers=workers))
    finally:
        server.stop()
    typer.echo(
        f"{report.name}: version {report.version}, {report.events} events "
        f"({report.caught_up} while switching), {report.cases} cases, "
        f"{report.seconds:.1f} s ({report.events_per_second:,.0f} events/s)"
    )


# `feedback topics apply`: kept in its own module (it needs only the Kafka settings).
from feedback_cli.topics import topics_app  # noqa: E402

app.add_typer(topics_app, name="topics")


if __name__ == "__main__":
    app()
