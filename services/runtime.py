"""Composes the services into one process: any subset of intake, routing, relay, projections.

`feedback up` runs them all on the local default; `feedback run <service>` runs one. Each
process has one Kafka broker connection, one database pool and an HTTP server with
`GET /health` (200 once every service in it is ready).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from contracts import topics
from services.access import audit as access_audit
from services.access import users as staff_users
from services.access.http import access_router
from services.access.tokens import InvalidToken, Tokens
from services.cases.relay import SCHEMA as RELAY_SCHEMA
from services.cases.relay import OutboxRelay
from services.cases.store import CaseStore
from services.common import boundary, config_store, kafka_positions
from services.common.boundary import excerpt, shown_errors
from services.common.bus import (
    consume_exactly_once,
    ensure_topics,
    make_broker,
    platform_topics,
)
from services.common.database import apply_schema, open_pool, schema_lock
from services.common.deadletters import SCHEMA as DEADLETTERS_SCHEMA
from services.common.deadletters import configure_sealing
from services.common.metrics import ConsumerLag, metrics_router
from services.common.observability import (
    configure_logging,
    configure_tracing,
    instrument_app,
    json_logs_requested,
)
from services.common.settings import Settings
from services.console.web import install_console
from services.handling import callbacks
from services.handling.archiving import archive_forever
from services.handling.callbacks_http import callbacks_router
from services.handling.http import handling_router
from services.intake import deadletters as intake_deadletters
from services.intake import numbering, pii_vault, registration
from services.intake.channels import chat_social
from services.intake.channels.chat_social import ReplayGuard, chat_social_router
from services.intake.channels.common import with_body_components
from services.intake.channels.email import EmailIntake, start_smtp
from services.intake.channels.records import records_router
from services.intake.channels.web import web_router
from services.intake.channels.wechat_crypto import WeChatCrypto
from services.intake.evidence import Blobs, EvidenceStore, FolderBlobs, S3Blobs
from services.intake.operations import operations_router
from services.notifications import Notifications
from services.notifications import build as build_notifications
from services.notifications.http import inbox_router
from services.notifications.store import SCHEMA as NOTIFICATIONS_SCHEMA
from services.projections import bi, registrations, report_schedule
from services.projections import library as case_library
from services.projections.http import projections_router
from services.projections.report_files import Labels as ReportLabels
from services.projections.reports_http import reports_router
from services.projections.search_http import library_router, search_router
from services.routing import worklist as routing_worklist
from services.routing.assignment import load_roster
from services.routing.classifier import Classifier, RuleBook, load_rulebook
from services.routing.classifier.registry import ModelRegistry
from services.routing.consumer import PARKED_SCHEMA, register_routing
from services.routing.http import routing_router
from services.routing.service import RoutingService
from services.sla import service as sla_service
from services.sla.consumer import register_sla, schedule_forever
from services.sla.service import SlaService

log = logging.getLogger(__name__)

ALL_SERVICES = ("intake", "routing", "relay", "projections", "sla", "notifications")


@dataclass
class Platform:
    settings: Settings
    services: tuple[str, ...] = ALL_SERVICES
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    broker: Any = None
    pool: AsyncConnectionPool | None = None
    store: CaseStore | None = None
    routing: RoutingService | None = None
    routing_pool: ConnectionPool | None = None
    models: ModelRegistry | None = None
    # Applies correspondence parked because its case was not stored yet (routing).
    retry_parked: Callable[[], Coroutine[Any, Any, None]] | None = None
    sla: SlaService | None = None
    sla_pool: ConnectionPool | None = None
    relay: OutboxRelay | None = None
    registrar: registration.Registrar | None = None
    rulebook: RuleBook = field(default_factory=load_rulebook)
    # SLA policies, calendar and rule book: the latest stored version, else the file.
    configured: config_store.Configured = field(default_factory=config_store.from_files)
    evidence: EvidenceStore | None = None
    deadletters: intake_deadletters.DeadLetters | None = None
    email: EmailIntake | None = None
    vault: pii_vault.PiiVault | None = None
    smtp_server: asyncio.AbstractServer | None = None
    notifier: Notifications | None = None
    callback_rules: callbacks.CallbackRules | None = None
    reports: report_schedule.ReportSchedule | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = set(self.services) - set(ALL_SERVICES)
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)}; choose from {ALL_SERVICES}")

    def schema(self) -> list[str]:
        # Every process signs staff in and records access to personal data.
        statements: list[str] = [*staff_users.SCHEMA, *access_audit.SCHEMA, *config_store.SCHEMA]
        if "intake" in self.services:
            statements += (
                numbering.SCHEMA
                + pii_vault.SCHEMA
                + registration.SCHEMA
                + intake_deadletters.SCHEMA
                + chat_social.SCHEMA
            )
        if "routing" in self.services:
            # Routing keeps the feedback it cannot route in the dead-letter table; it also
            # serves the callback worklist that the projections process fills.
            statements += (
                routing_worklist.SCHEMA + DEADLETTERS_SCHEMA + callbacks.SCHEMA + PARKED_SCHEMA
            )
        if "relay" in self.services:
            statements += RELAY_SCHEMA
        if "projections" in self.services:
            statements += registrations.SCHEMA + callbacks.SCHEMA + case_library.SCHEMA
            # The BI views read the tables above: they come after them.
            statements += report_schedule.SCHEMA + bi.schema(
                self.configured.calendars.get(None).zone.key, self.settings.bi_statement_timeout_s
            )
        if "notifications" in self.services:
            # The callback watch reads the callback tasks (whoever else runs, they exist).
            statements += NOTIFICATIONS_SCHEMA + callbacks.SCHEMA
        if "sla" in self.services:
            statements += kafka_positions.SCHEMA + sla_service.SCHEMA + DEADLETTERS_SCHEMA
        # Shared tables (the dead letters) are listed by each service that writes them.
        return list(dict.fromkeys(statements))

    def build(self) -> None:
        """Wire everything that must exist before the HTTP app is assembled."""
        settings = self.settings
        # Configuration an admin stored (config_store.py) overrides the files in config/.
        self.configured = config_store.effective(settings.database_url)
        self.rulebook = self.configured.rulebook
        boundary.configure(settings.max_future_skew_s)
        configure_sealing(settings.pii_key_bytes)
        self.broker = make_broker(settings, client_id="feedback-" + "-".join(self.services))
        # Without PostgreSQL a request waits for a connection no longer than for Kafka: then
        # intake answers 503 (PoolTimeout), not after psycopg_pool's default 30 s.
        self.pool = open_pool(
            settings.database_url, max_size=20, timeout=settings.publish_timeout_s
        )
        if {"routing", "relay", "sla"} & set(self.services):
            # The store creates its tables; routing, relay and sla processes starting at
            # once on a new database raced there and one exited (found by kill -9 tests).
            with schema_lock(settings.database_url):
                self.store = CaseStore(settings.database_url)
        if "routing" in self.services:
            assert self.store is not None
            # The active model `feedback train` stored (signed), else one trained from files.
            self.models = ModelRegistry.of(settings)
            self.routing_pool = ConnectionPool(
                settings.database_url,
                min_size=1,
                max_size=8,
                open=False,
                kwargs={"autocommit": True},
            )
            self.routing = RoutingService(
                self.store,
                routing_worklist.Worklist(self.routing_pool),
                Classifier.trained(self.rulebook, registry=self.models),
                load_roster(),
            )
            self.retry_parked = register_routing(self.broker, settings, self.routing)
        if "projections" in self.services:
            calendar = self.configured.calendars.get(None)
            self.callback_rules = callbacks.load_callback_rules()
            # The read models and the callbacks read the case events in one subscription.
            consume_exactly_once(
                self.broker,
                settings,
                self.pool,
                topics.FEEDBACK_EVENTS,
                registrations.GROUP,
                [
                    registrations.consumer(calendar),
                    callbacks.consumer(self.callback_rules, calendar),
                ],
            )
        if "projections" in self.services and settings.reports_dir is not None:
            self.reports = report_schedule.ReportSchedule(
                self.pool,
                self.broker,
                settings,
                settings.reports_dir,
                self.configured.calendars.get(None).zone,
                ReportLabels.of_rulebook(self.rulebook),
                poll_s=settings.reports_poll_s,
            )
        if "notifications" in self.services:
            self.notifier = build_notifications(
                self.broker, settings, self.pool, self.rulebook,
                self.configured.calendars.get(None), self.configured.policies,
            )  # fmt: skip
        if "sla" in self.services:
            assert self.store is not None
            self.sla_pool = ConnectionPool(
                settings.database_url,
                min_size=1,
                max_size=4,
                open=False,
                kwargs={"autocommit": True},
            )
            self.sla = SlaService(
                self.store,
                self.sla_pool,
                self.configured.policies,
                self.configured.calendars.get(None),
            )
            register_sla(self.broker, settings, self.sla, self.pool)
        if "intake" in self.services:
            serials = numbering.SerialAllocator(self.pool, settings.number_block_size)
            feedback_numbering = numbering.FeedbackNumbering(serials)
            self.vault = pii_vault.PiiVault(self.pool, settings.pii_key_bytes, feedback_numbering)
            self.registrar = registration.Registrar(
                settings, self.pool, self.broker, feedback_numbering, self.vault
            )
            self.evidence = evidence_store(settings)
            self.deadletters = intake_deadletters.DeadLetters(self.pool, settings)
            self.email = EmailIntake(self.registrar, self.evidence, self.deadletters)
        if "relay" in self.services:
            assert self.store is not None
            self.relay = OutboxRelay(settings, self.store, self.broker)

    async def start(self) -> None:
        assert self.pool is not None
        await asyncio.to_thread(apply_schema, self.settings.database_url, self.schema())
        if "projections" in self.services and self.settings.bi_reader_password is not None:
            await asyncio.to_thread(
                bi.enable_login,
                self.settings.database_url,
                self.settings.bi_reader_password.get_secret_value(),
            )
        await ensure_topics(
            self.settings, platform_topics(self.settings, self.rulebook.departments)
        )
        await self.pool.open(wait=True)
        self._tasks.append(
            asyncio.create_task(
                config_store.ConfigWatcher(
                    self.pool,
                    self.configured.versions,
                    config_store.live_appliers(self.sla, self.routing, self.models),
                ).run(),
                name="config-watch",
            )
        )
        if self.evidence is not None and isinstance(self.evidence.blobs, S3Blobs):
            await asyncio.to_thread(self.evidence.blobs.check)
        if self.routing is not None:
            assert self.routing_pool is not None
            await asyncio.to_thread(self.routing_pool.open, True)
            await asyncio.to_thread(self.routing.worklist.seed, load_roster())
            if self.store is not None:
                # The registration table (the projections service's, in the same database)
                # says which cases closed when; the store archives them.
                self._tasks.append(
                    asyncio.create_task(
                        archive_forever(self.store, self.pool, self.settings.archive_after_days),
                        name="archiving",
                    )
                )
            self._tasks.append(
                asyncio.create_task(self._reconcile_forever(), name="routing-reconcile")
            )
        if self.sla is not None:
            assert self.sla_pool is not None
            await asyncio.to_thread(self.sla_pool.open, True)
        await self.broker.start()
        if self.retry_parked is not None:
            self._tasks.append(asyncio.create_task(self.retry_parked(), name="routing-parked"))
        self._tasks.append(asyncio.create_task(ConsumerLag(self.broker).run(), name="consumer-lag"))
        if self.sla is not None:
            self._tasks.append(
                asyncio.create_task(schedule_forever(self.sla), name="sla-scheduler")
            )
        if self.reports is not None:
            self._tasks.append(
                asyncio.create_task(self.reports.run_forever(), name="scheduled-reports")
            )
        if self.callback_rules is not None:
            self._tasks.append(
                asyncio.create_task(
                    callbacks.sweep_forever(
                        self.pool, self.callback_rules, self.configured.calendars.get(None)
                    ),
                    name="callback-sweep",
                )
            )
        if self.registrar is not None:
            self._tasks.append(asyncio.create_task(self.registrar.run(), name="intake-batches"))
            self._tasks.append(
                asyncio.create_task(self.registrar.drain_outbox_forever(), name="intake-outbox")
            )
            self._tasks.append(asyncio.create_task(self._sweep_vault_forever(), name="vault-sweep"))
            if self.settings.smtp_port and self.email is not None:
                self.smtp_server = await start_smtp(
                    self.email,
                    self.settings.smtp_host,
                    self.settings.smtp_port,
                    self.settings.smtp_max_message_bytes,
                )
        if self.relay is not None:
            self._tasks.append(asyncio.create_task(self.relay.run(), name="outbox-relay"))
            await asyncio.wait_for(self.relay.ready.wait(), timeout=30)
        if self.notifier is not None:
            self._tasks.append(
                asyncio.create_task(self.notifier.run(), name="notifications-sender")
            )
            self._tasks.append(
                asyncio.create_task(self.notifier.watch.run(), name="callback-watch")
            )
        self.ready.set()
        log.info("services ready: %s", ", ".join(self.services))

    async def _sweep_vault_forever(self) -> None:
        """Personal data that only refused or failed submissions left is removed."""
        assert self.vault is not None
        while True:
            await asyncio.sleep(300)
            try:
                swept = await self.vault.sweep_provisional()
                if swept:
                    log.info("removed %d customers no accepted feedback names", swept)
            except Exception:
                log.exception("sweeping the PII vault failed; retrying")

    async def _reconcile_forever(self) -> None:
        """Owners chosen outside a slice (a queue drained by another instance, or before a
        crash) get recorded on their cases."""
        assert self.routing is not None
        while True:
            try:
                await asyncio.to_thread(self.routing.reconcile)
            except Exception:
                log.exception("routing reconciliation failed; retrying")
            await asyncio.sleep(1.0)

    async def stop(self) -> None:
        self.ready.clear()
        if self.smtp_server is not None:
            self.smtp_server.close()
            await self.smtp_server.wait_closed()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded: a task that swallowed its cancellation (asyncio.wait_for on Python
            # 3.11 can) must not hold the stop for ever; it is named and left behind.
            done, pending = await asyncio.wait(self._tasks, timeout=10)
            for task in done:
                if not task.cancelled():
                    task.exception()  # retrieved: a task that failed has said so in its log
            for task in pending:
                log.error("background task %s did not stop within 10 s", task.get_name())
        if self.broker is not None:
            try:
                # With the bus gone the producer would wait for it forever; consumers
                # commit nothing unprocessed, so bounding the wait loses nothing.
                await asyncio.wait_for(self.broker.stop(), timeout=15)
            except TimeoutError:
                log.warning("Kafka connection did not close within 15s; leaving it")
        if self.pool is not None:
            await self.pool.close()
        if self.routing_pool is not None:
            await asyncio.to_thread(self.routing_pool.close)
        if self.sla_pool is not None:
            await asyncio.to_thread(self.sla_pool.close)
        if self.store is not None:
            self.store.close()


def wechat_crypto(settings: Settings) -> WeChatCrypto | None:
    if settings.wechat_encoding_aes_key is None or settings.wechat_token is None:
        return None
    if not settings.wechat_app_id:
        raise ValueError("FEEDBACK_WECHAT_APP_ID is needed with FEEDBACK_WECHAT_ENCODING_AES_KEY")
    return WeChatCrypto(
        settings.wechat_token.get_secret_value(),
        settings.wechat_encoding_aes_key.get_secret_value(),
        settings.wechat_app_id,
    )


def evidence_blobs(settings: Settings) -> Blobs:
    if settings.evidence_s3_bucket:
        return S3Blobs(
            settings.evidence_s3_bucket,
            settings.evidence_s3_prefix,
            settings.evidence_s3_endpoint_url,
            settings.evidence_s3_region,
        )
    return FolderBlobs(settings.evidence_dir)


def evidence_store(settings: Settings) -> EvidenceStore:
    return EvidenceStore(
        evidence_blobs(settings),
        settings.max_attachment_bytes,
        settings.allowed_attachment_types,
        settings.max_attachments,
        key=settings.pii_key_bytes,
    )


def app_from_environment() -> FastAPI:
    """The app for each of several uvicorn workers (`feedback run --workers N`): settings
    from the environment, services from FEEDBACK_SERVICES (comma-separated)."""
    services = os.environ.get("FEEDBACK_SERVICES", ",".join(ALL_SERVICES)).split(",")
    if json_logs_requested():
        # A worker process starts without the CLI's logging set-up, and uvicorn was told to
        # leave logging alone: without this its records would have no handler.
        configure_logging(logging.WARNING, json_format=True)
    return create_app(Settings(), services)


def offline_docs(app: FastAPI) -> None:
    """The API documentation (Swagger UI) with its scripts and styles from the
    swagger-ui-bundle package, so it works without the internet."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} — API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )


def create_app(settings: Settings, services: Iterable[str] = ALL_SERVICES) -> FastAPI:
    platform = Platform(settings, tuple(services))
    # Before the broker is made: it gets the tracing middleware only when tracing is on.
    configure_tracing("feedback-" + "-".join(platform.services))
    platform.build()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await platform.start()
        # What start-up built lives as long as the process: keep it out of the garbage
        # collector's full passes, which otherwise show up as latency spikes under load.
        gc.freeze()
        try:
            yield
        finally:
            console = getattr(app.state, "console", None)
            if console is not None:
                await console.stop()
            await platform.stop()

    app = FastAPI(
        title="Customer feedback platform",
        version="0.1.0",
        lifespan=lifespan,
        # /docs is served below from packaged assets: FastAPI's own loads them from a CDN
        # and shows a blank page on a closed network.
        docs_url=None,
        redoc_url=None,
    )
    offline_docs(app)
    instrument_app(app)
    app.state.platform = platform
    with_body_components(app)
    app.state.tokens = Tokens(settings)
    assert platform.pool is not None
    app.state.staff = staff_users.StaffDirectory(platform.pool)

    # One plain-ASGI guard in front of everything: body size, and the rate limit on intake.
    limiter = RateLimiter(settings.rate_limit_per_minute)
    app.add_middleware(
        GuardMiddleware,
        default_limit=settings.max_request_bytes,
        limits=body_limits(settings),
        body_timeout_s=settings.body_timeout_s,
        limiter=limiter,
        tokens=app.state.tokens,
    )

    @app.exception_handler(psycopg.DataError)
    async def unstorable(_: Request, error: psycopg.DataError) -> JSONResponse:
        # A parameter the database cannot take (a NUL in a query string, a number out of
        # range): the request's fault, not the server's.
        reason = excerpt(str(error).splitlines()[0] if str(error) else type(error).__name__)
        return JSONResponse({"detail": f"a value the database cannot take: {reason}"}, 422)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes every input whole: NaN, a lone surrogate or a 40 MB
        # body cannot (or should not) go back as sent.
        return JSONResponse({"detail": shown_errors(error.errors())}, status_code=422)

    @app.get("/health", tags=["operations"])
    async def health() -> JSONResponse:
        ready = platform.ready.is_set()
        return JSONResponse(
            {"status": "ready" if ready else "starting", "services": list(platform.services)},
            status_code=200 if ready else 503,
        )

    app.include_router(metrics_router())
    assert platform.pool is not None
    app.include_router(access_router(platform.pool, app.state.tokens))
    app.include_router(config_store.config_router(platform.pool))

    if platform.registrar is not None:
        assert platform.evidence is not None and platform.deadletters is not None
        assert platform.email is not None and platform.vault is not None

        app.include_router(
            web_router(platform.registrar, platform.evidence, settings.customer_tiers)
        )
        app.include_router(
            chat_social_router(
                platform.registrar,
                platform.evidence,
                platform.deadletters,
                settings.wechat_token,
                settings.weibo_secret,
                settings.douyin_secret,
                settings.web_chat_secret,
                ReplayGuard(platform.pool),
                wechat_crypto(settings),
                settings.wechat_allow_plaintext,
            )
        )
        app.include_router(records_router(platform.registrar, settings.zone))
        app.include_router(
            operations_router(
                platform.registrar, platform.deadletters, platform.email, platform.vault
            )
        )
    if platform.routing is not None:
        assert platform.pool is not None
        app.include_router(
            handling_router(
                platform.routing.store,
                platform.routing.worklist,
                settings.auth_token_key_bytes,
                # Routing alone reads the same attachments (folder or bucket) intake keeps.
                platform.evidence or evidence_store(settings),
                platform.pool,
            )
        )
        app.include_router(callbacks_router(platform.pool))
        app.include_router(
            routing_router(
                platform.routing,
                pii_vault.PiiVault(platform.pool, settings.pii_key_bytes),
                settings.pii_reveal_roles,
            )
        )
    if "projections" in platform.services:
        assert platform.pool is not None
        app.include_router(projections_router(platform.pool))
        app.include_router(
            reports_router(
                platform.pool,
                platform.configured.calendars.get(None).zone,
                ReportLabels.of_rulebook(platform.rulebook),
            )
        )
        app.include_router(search_router(platform.pool, settings.zone))
        app.include_router(library_router(platform.pool))
    if "notifications" in platform.services:
        assert platform.pool is not None
        app.include_router(inbox_router(platform.pool))
    if set(platform.services) == set(ALL_SERVICES) or settings.console_api_url:
        # The console calls the API in-process when every service is here.
        install_console(app, settings, ReportLabels.of_rulebook(platform.rulebook))
    return app


# Read and dropped before a refusal, so that a client still sending reads the answer
# instead of a reset connection; a larger body is cut off (it is abuse, not a mistake).
DRAIN_BYTES = 4 * 1024 * 1024


async def _drain(receive: Any, timeout_s: float) -> None:
    dropped = 0
    try:
        async with asyncio.timeout(timeout_s):
            while dropped < DRAIN_BYTES:
                message = await receive()
                if message["type"] != "http.request":
                    return
                dropped += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return
    except TimeoutError:
        return


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413, f"request body larger than {limit} bytes", headers={"Connection": "close"}
        )


class BodyTooSlow(HTTPException):
    def __init__(self, timeout_s: float) -> None:
        super().__init__(
            408, f"request body paused longer than {timeout_s:g} s", headers={"Connection": "close"}
        )


@dataclass(frozen=True)
class BodyLimit:
    prefix: str
    max_bytes: int
    # Staff uploads: without a valid token the body is not read at all (401).
    staff_only: bool = False


def body_limits(settings: Settings) -> list[BodyLimit]:
    """The most bytes a request body may have, by path prefix (first match wins; else
    `max_request_bytes`). Uploads are spooled to disk by the multipart parser."""
    slack = 64 * 1024  # multipart boundaries and form fields around the file
    return [
        BodyLimit(
            "/v1/feedback/multipart",
            settings.max_attachments * settings.max_attachment_bytes + settings.max_request_bytes,
        ),
        BodyLimit("/v1/channels/email/eml", settings.smtp_max_message_bytes + slack, True),
        BodyLimit("/v1/channels/batch/", settings.max_batch_file_bytes + slack, True),
    ]


class GuardMiddleware:
    """In front of everything, plain ASGI (Starlette's BaseHTTPMiddleware cost about a
    fifth of intake's CPU per request):
    - bodies larger than their endpoint's limit get 413, counted by the bytes actually
      read (a chunked body has no Content-Length), refused before reading when declared;
    - a body that pauses longer than `body_timeout_s` gets 408;
    - clients over the rate limit on intake posts get 429;
    - an unexpected error answers 500 with a JSON reason and keeps the connection usable
      (uvicorn would close it without saying so)."""

    def __init__(
        self,
        app: Any,
        default_limit: int,
        limits: list[BodyLimit],
        body_timeout_s: float,
        limiter: RateLimiter | None,
        tokens: Tokens | None = None,
    ) -> None:
        self.app = app
        self.default_limit = default_limit
        self.limits = limits
        self.tokens = tokens
        self.body_timeout_s = body_timeout_s
        self.limiter = limiter

    def limit_for(self, path: str) -> BodyLimit:
        found = next((limit for limit in self.limits if path.startswith(limit.prefix)), None)
        return found or BodyLimit(path, self.default_limit)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = self.limit_for(scope.get("path", ""))
        limit = endpoint.max_bytes
        headers = dict(scope.get("headers") or [])
        refusal = self._refusal(scope, headers, limit) or self._unsigned(headers, endpoint)
        if refusal is not None:
            await _drain(receive, self.body_timeout_s)
            await refusal(scope, receive, send)
            return
        received = 0
        body_done = headers.get(b"content-length", b"0") == b"0" and (
            b"transfer-encoding" not in headers
        )
        started = False

        async def guarded_receive() -> Any:
            nonlocal received, body_done
            if body_done:
                return await receive()  # e.g. waiting for a disconnect: no deadline
            try:
                async with asyncio.timeout(self.body_timeout_s):
                    message = await receive()
            except TimeoutError:
                raise BodyTooSlow(self.body_timeout_s) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if message.get("more_body", False):
                        await _drain(receive, self.body_timeout_s)
                    raise BodyTooLarge(limit)
                body_done = not message.get("more_body", False)
            return message

        async def tracked_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracked_send)
        except Exception:
            if started:
                raise  # uvicorn closes the connection: the answer is already under way
            log.exception("unexpected error on %s %s", scope["method"], scope.get("path"))
            answer = JSONResponse({"detail": "internal error; it has been logged"}, 500)
            if not body_done:
                # Unread body bytes would be taken for the next request.
                answer.headers["Connection"] = "close"
            await answer(scope, receive, send)

    def _unsigned(self, headers: dict[bytes, bytes], endpoint: BodyLimit) -> JSONResponse | None:
        """A large staff upload from someone who is not signed in is refused unread."""
        if not endpoint.staff_only or self.tokens is None:
            return None
        header = headers.get(b"authorization", b"").decode("latin-1")
        if header.lower().startswith("bearer "):
            try:
                self.tokens.verify(header[7:].strip())
                return None
            except InvalidToken:
                pass
        return JSONResponse(
            {"detail": "sign in first (POST /v1/auth/token)"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer", "Connection": "close"},
        )

    def _refusal(self, scope: Any, headers: dict[bytes, bytes], limit: int) -> JSONResponse | None:
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return JSONResponse(
                {"detail": f"request body larger than {limit} bytes"},
                status_code=413,
                headers={"Connection": "close"},
            )
        if self.limiter is not None and scope["method"] == "POST":
            path = scope.get("path", "")
            if path.startswith(("/v1/feedback", "/v1/channels", "/v1/auth/")):
                client = (scope.get("client") or ("unknown", 0))[0]
                if not self.limiter.allow(client):
                    return JSONResponse(
                        {"detail": f"more than {self.limiter.per_minute} requests a minute"},
                        status_code=429,
                        headers={"Retry-After": "60"},
                    )
        return None


class RateLimiter:
    """Requests per client per minute, in a fixed one-minute window (per process)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.window = 0
        self.counts: dict[str, int] = {}

    def allow(self, client: str) -> bool:
        window = int(time.monotonic() // 60)
        if window != self.window:
            self.window, self.counts = window, {}
        self.counts[client] = self.counts.get(client, 0) + 1
        return self.counts[client] <= self.per_minute
