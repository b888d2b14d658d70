"""Registering feedback: the one path every channel adapter takes.

Adapters parse and map; this module numbers, pseudonymises, de-duplicates and publishes.
A feedback counts as accepted only once Kafka acknowledged `FeedbackReceived` (acks=all).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID, uuid4

import psycopg
from faststream.kafka import KafkaBroker
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from pydantic import BaseModel, ValidationError

from contracts.codes import Channel, Emotion, FeedbackType
from contracts.events import CustomerCorrespondence, Evidence, FeedbackReceived
from services.access.tokens import customer_token
from services.common.boundary import clean_text, flaws, text_flaw, time_flaw
from services.common.bus import (
    Keyed,
    publish,
    publish_all,
    publish_many,
    publish_records,
    record_of,
)
from services.common.database import INTAKE_OUTBOX_LOCK
from services.common.masking import Personal, mask_contacts
from services.common.metrics import INTAKE_LATENCY, INTAKE_REFUSED_BUSY
from services.common.observability import FEEDBACK_NUMBER_HEADER, bind, trace_headers
from services.common.settings import Settings
from services.intake.numbering import FeedbackNumbering
from services.intake.pii_vault import Contact, PiiVault

log = logging.getLogger(__name__)

SCHEMA = [
    """
    CREATE TABLE IF NOT EXISTS intake_deduplication (
        dedup_key text PRIMARY KEY,
        feedback_id uuid NOT NULL,
        feedback_number text NOT NULL,
        published boolean NOT NULL DEFAULT false,
        created_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    # A synchronous registration's event until Kafka acknowledged it: if its process dies
    # in between, a retry of the same delivery publishes it (see _finish_abandoned).
    "ALTER TABLE intake_deduplication ADD COLUMN IF NOT EXISTS pending_event bytea",
    "ALTER TABLE intake_deduplication ADD COLUMN IF NOT EXISTS body_digest bytea",
    # Set when Kafka did not acknowledge in time: the event may still have reached it, so the
    # claim is kept and a retry of the same delivery publishes the same id and number.
    "ALTER TABLE intake_deduplication ADD COLUMN IF NOT EXISTS unacknowledged_at timestamptz",
    # What `reconcile` looks at: claims whose event Kafka has not acknowledged yet.
    "CREATE INDEX IF NOT EXISTS intake_deduplication_unpublished ON intake_deduplication "
    "(created_at) WHERE NOT published",
    # Every accepted feedback: lets replies and supplements find their case by number or
    # by the Message-ID of the email that registered it.
    """
    CREATE TABLE IF NOT EXISTS intake_registry (
        feedback_number text PRIMARY KEY,
        feedback_id uuid NOT NULL UNIQUE,
        channel text NOT NULL,
        channel_reference text,
        registered_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    "CREATE INDEX IF NOT EXISTS intake_registry_reference ON intake_registry (channel, channel_reference)",
    # The case's customer: an email reply joins a case only from that customer's address.
    "ALTER TABLE intake_registry ADD COLUMN IF NOT EXISTS customer_ref text",
    "CREATE INDEX IF NOT EXISTS intake_registry_customer ON intake_registry (customer_ref)",
    # Message-IDs of the mails the platform sent about a case (see email.record_sent): a
    # reply naming one of them belongs to that case, whoever sends it.
    """
    CREATE TABLE IF NOT EXISTS intake_sent_messages (
        message_id text PRIMARY KEY,
        feedback_number text NOT NULL,
        sent_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    # The durable buffer: messages accepted while Kafka may be away, published in order.
    """
    CREATE TABLE IF NOT EXISTS intake_outbox (
        id bigserial PRIMARY KEY,
        topic text NOT NULL,
        message_key bytea,
        payload bytea NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )
    """,
]


class Submission(BaseModel):
    """A feedback as an adapter understood it, before numbering. Contact stays here."""

    channel: Channel
    description: str
    contact: Contact
    receiver: str
    received_at: datetime | None = None
    channel_reference: str | None = None
    customer_tier: str = "normal"
    product_model: str | None = None
    service_type: str | None = None
    purchase_date: date | None = None
    customer_attempts: str | None = None
    occurred_at: datetime | None = None
    expectation: str | None = None
    emotion: Emotion | None = None
    stated_type: FeedbackType | None = None
    evidence: tuple[Evidence, ...] = ()
    related_feedback: str | None = None


# A channel reference longer than this is kept as its hash (still unique per delivery).
MAX_REFERENCE_CHARS = 200

# The claim of a synchronous registration without a delivery key (no Idempotency-Key, no
# channel reference) is kept under this prefix and its feedback id until the registry row
# is written, so that a registry insert failing after Kafka acknowledged is repaired by
# `reconcile` instead of lost. Removed once the registry has the feedback.
UNKEYED = "unkeyed:"
# A delivery whose publish was not acknowledged keeps its id and number this long for a
# retry (and `reconcile` publishes it meanwhile); then its claim is given up. Well inside
# the PII vault's grace for provisional customers (pii_vault.PROVISIONAL_GRACE_S, 1 h), so
# the customer a kept event names still exists when it is published.
RETRY_WINDOW_S = 600.0
# How often `drain_outbox_forever` runs `reconcile`.
RECONCILE_EVERY_S = 10.0


def submission_flaws(submission: Submission) -> list[dict[str, Any]]:
    """What the boundary rule (services/common/boundary.py) refuses in a submission, as
    validation errors. Checked before a submission joins a batch, so that it fails alone."""
    found = [
        {"loc": path, "msg": problem, "type": "value_error"}
        for path, problem in flaws(submission.model_dump(exclude={"evidence"}))
    ]
    found += [
        {"loc": ("evidence", *path), "msg": problem, "type": "value_error"}
        for path, problem in flaws([e.model_dump() for e in submission.evidence])
    ]
    reference = submission.channel_reference
    if reference is not None and len(reference) > MAX_REFERENCE_CHARS:
        found.append(
            {
                "loc": ("channel_reference",),
                "msg": f"longer than {MAX_REFERENCE_CHARS} characters",
                "type": "string_too_long",
            }
        )
    return found


def cleaned(submission: Submission) -> tuple[Submission, list[str]]:
    """For sources that cannot be asked to send again (pushes, mails, batch rows): the
    submission repaired to pass the boundary rule, and what was repaired (empty if
    nothing). The caller keeps the original as a settled dead letter."""
    repairs: list[str] = []

    def text(value: Any, name: str) -> Any:
        if isinstance(value, str):
            problem = text_flaw(value)
            if problem:
                repairs.append(f"{name} {problem}: removed")
                return clean_text(value)
            return value
        if isinstance(value, dict):
            return {k: text(v, f"{name}.{k}") for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [text(v, f"{name}[{i}]") for i, v in enumerate(value)]
        return value

    data = {name: text(value, name) for name, value in submission.model_dump().items()}
    for name in ("received_at", "occurred_at", "purchase_date"):
        value = data.get(name)
        problem = time_flaw(value) if isinstance(value, date) else None
        if problem and isinstance(value, date):
            repairs.append(f"{name} {value.isoformat()} {problem}: not used")
            data[name] = None
    reference = data.get("channel_reference")
    if reference is not None and len(reference) > MAX_REFERENCE_CHARS:
        repairs.append(f"channel_reference of {len(reference)} characters: kept as its hash")
        data["channel_reference"] = "sha256:" + hashlib.sha256(reference.encode()).hexdigest()
    if not repairs:
        return submission, []
    return Submission.model_validate(data), repairs


class Accepted(BaseModel):
    feedback_id: UUID
    feedback_number: str
    duplicate: bool = False
    # Given to the customer: authorises their supplements, confirmation and rating.
    customer_token: str | None = None


class IntakeUnavailable(Exception):
    """The bus did not acknowledge the feedback; nothing was registered."""


class IntakeBusy(IntakeUnavailable):
    """Too many registrations were waiting (Settings.intake_max_pending): refused before
    anything was recorded, so the same request may simply be sent again later."""

    # What intake tells the sender to wait (HTTP Retry-After): a batch takes milliseconds,
    # a full queue drains in a few seconds.
    RETRY_AFTER_S = 2


class DuplicateInProgress(Exception):
    """The same delivery is being registered by a concurrent request right now."""


class UnknownFeedback(LookupError):
    """No feedback has this number."""


class InvalidSubmission(ValueError):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("invalid feedback")
        self.errors = errors


@dataclass(eq=False)
class _Pending:
    """One registration waiting for its batch."""

    submission: Submission
    dedup_key: str | None
    durable: bool
    outcome: asyncio.Future[Accepted]
    feedback_id: UUID = field(default_factory=uuid4)
    event: FeedbackReceived | None = None
    # Its claim, registry or outbox row is committed: it must not be registered again.
    recorded: bool = False
    # The request's trace context: the batch that publishes it runs in a task of its own.
    trace: dict[str, str] = field(default_factory=dict)

    def settle(self, result: Accepted | BaseException) -> None:
        if self.outcome.done():
            return
        if isinstance(result, BaseException):
            self.outcome.set_exception(result)
        else:
            self.outcome.set_result(result)


class Registrar:
    """Registers feedback in batches (group commit).

    Requests that arrive while a batch is being written wait for the next one, so a whole
    batch costs a handful of database round trips and one producer flush, not a dozen
    round trips per feedback. Each caller still gets its own answer: its number once Kafka
    acknowledged (or, for durable registrations, once the outbox row is committed).
    """

    MAX_BATCH = 256
    BATCHES_IN_FLIGHT = 4

    def __init__(
        self,
        settings: Settings,
        pool: AsyncConnectionPool,
        broker: KafkaBroker,
        numbering: FeedbackNumbering,
        vault: PiiVault,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.broker = broker
        self.numbering = numbering
        self.vault = vault
        self.outbox_waiting = asyncio.Event()
        # Bounded: when batches cannot keep up, callers are refused (IntakeBusy), not kept.
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(settings.intake_max_pending)
        self._in_flight: set[asyncio.Task[None]] = set()

    @property
    def waiting(self) -> int:
        """Registrations queued for a batch (at most Settings.intake_max_pending)."""
        return self._queue.qsize()

    async def register(
        self, submission: Submission, idempotency_key: str | None = None
    ) -> Accepted:
        """Accepted once Kafka acknowledged `FeedbackReceived`; IntakeUnavailable if not.

        A client's `idempotency_key` is scoped to the channel and the caller (the contact
        it gives), so two clients using the same key get two feedbacks."""
        dedup_key = None
        if idempotency_key is not None:
            caller = self.vault.caller_of(submission.contact)
            dedup_key = f"idempotency:{submission.channel.value}:{caller}:{idempotency_key}"
        return await self._submit(submission, dedup_key, durable=False)

    async def register_durably(
        self, submission: Submission, dedup_key: str | None = None
    ) -> Accepted:
        """Accept into the durable buffer (PostgreSQL) and publish when Kafka can take it.

        For channels that cannot be asked to retry (SMTP, batch files): once this returns,
        the feedback is safe even if Kafka is away; the outbox drainer publishes it later.
        """
        return await self._submit(submission, dedup_key, durable=True)

    async def _submit(
        self, submission: Submission, dedup_key: str | None, durable: bool
    ) -> Accepted:
        problems = submission_flaws(submission)
        if dedup_key is not None and text_flaw(dedup_key):
            problems.append({"loc": ("delivery key",), "msg": text_flaw(dedup_key)})
        if problems:
            raise InvalidSubmission(problems)
        started = time.perf_counter()
        pending = _Pending(
            submission,
            dedup_key or _delivery_key(submission),
            durable,
            asyncio.get_running_loop().create_future(),
            trace=trace_headers(),
        )
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            INTAKE_REFUSED_BUSY.labels(submission.channel.value).inc()
            raise IntakeBusy(f"{self._queue.maxsize} registrations are waiting already") from None
        try:
            accepted = await asyncio.shield(pending.outcome)
        except BaseException as error:
            outcome = "unavailable" if isinstance(error, IntakeUnavailable) else "error"
            INTAKE_LATENCY.labels(submission.channel.value, outcome).observe(
                time.perf_counter() - started
            )
            raise
        INTAKE_LATENCY.labels(
            submission.channel.value, "duplicate" if accepted.duplicate else "accepted"
        ).observe(time.perf_counter() - started)
        # The rest of this request's logs name the feedback.
        bind(feedback_number=accepted.feedback_number)
        if accepted.duplicate and not await self._same_submission(pending):
            # Someone else's delivery key (or a different body under it): the number, but
            # never the token that opens the customer's feedback.
            return accepted
        token = customer_token(self.settings.auth_token_key_bytes, accepted.feedback_number)
        return accepted.model_copy(update={"customer_token": token})

    async def _same_submission(self, pending: _Pending) -> bool:
        if pending.dedup_key is None:
            return False
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT body_digest FROM intake_deduplication WHERE dedup_key = %s",
                (pending.dedup_key,),
            )
            row: Any = await cursor.fetchone()
        return (
            row is not None and row[0] is not None and bytes(row[0]) == _digest(pending.submission)
        )

    async def run(self) -> None:
        """Take what is waiting, register it as one batch; up to BATCHES_IN_FLIGHT at once."""
        slots = asyncio.Semaphore(self.BATCHES_IN_FLIGHT)
        try:
            while True:
                batch = [await self._queue.get()]
                await slots.acquire()
                while len(batch) < self.MAX_BATCH and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                task = asyncio.create_task(self._register_batch(batch))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
                task.add_done_callback(lambda _: slots.release())
        finally:
            # Stopping: batches already taken finish; what never started is refused.
            if self._in_flight:
                await asyncio.wait(self._in_flight, timeout=self.settings.publish_timeout_s)
            while not self._queue.empty():
                self._queue.get_nowait().settle(IntakeUnavailable("intake is stopping"))

    async def _register_batch(self, batch: list[_Pending]) -> None:
        # The same delivery twice in one batch: the later ones answer as duplicates of the first.
        first_of: dict[str, _Pending] = {}
        repeats: list[tuple[_Pending, _Pending]] = []
        firsts: list[_Pending] = []
        for pending in batch:
            if pending.dedup_key is not None and pending.dedup_key in first_of:
                repeats.append((pending, first_of[pending.dedup_key]))
                continue
            if pending.dedup_key is not None:
                first_of[pending.dedup_key] = pending
            firsts.append(pending)
        try:
            fresh = await self._answer_known_deliveries(firsts)
            if fresh:
                await self._register_fresh(fresh)
        except Exception as error:
            await self._isolate(firsts, error)
        for repeat, first in repeats:
            failure = first.outcome.exception()
            if failure is not None:
                repeat.settle(failure)
            else:
                repeat.settle(first.outcome.result().model_copy(update={"duplicate": True}))

    async def _isolate(self, batch: list[_Pending], error: Exception) -> None:
        """A batch failed: what nothing was recorded for yet is registered again one by
        one, so that one bad submission fails alone and its neighbours are registered.
        Unless the database could not be reached: then every one of them would wait for a
        connection again and fail the same way, so they are all answered unavailable now."""
        unsettled = [p for p in batch if not p.outcome.done()]
        if len(batch) > 1 and database_unreachable(error):
            log.warning(
                "database unreachable: %d registrations answered unavailable (%s)",
                len(unsettled),
                error,
            )
            for pending in unsettled:
                pending.settle(IntakeUnavailable(str(error)))
            return
        if len(batch) == 1:
            log.warning("registration failed: %s", error)
            pending = batch[0]
            if isinstance(error, psycopg.errors.DataError) and not pending.recorded:
                # Deterministic: the database refuses this submission's values.
                pending.settle(InvalidSubmission([{"loc": (), "msg": str(error)[:300]}]))
            else:
                pending.settle(IntakeUnavailable(str(error)))
            return
        log.exception("a batch of %d registrations failed; registering them one by one", len(batch))
        for pending in unsettled:
            if pending.recorded:
                pending.settle(IntakeUnavailable(str(error)))
        again = [p for p in unsettled if not p.recorded]
        await asyncio.gather(*(self._register_batch([p]) for p in again))

    async def _answer_known_deliveries(self, batch: list[_Pending]) -> list[_Pending]:
        """Deliveries registered before get their earlier answer; the rest are returned."""
        keys = [p.dedup_key for p in batch if p.dedup_key is not None]
        if not keys:
            return batch
        known = await self._existing_many(keys)
        fresh = []
        for pending in batch:
            if pending.dedup_key in known:
                pending.settle(known[pending.dedup_key])
            else:
                fresh.append(pending)
        return fresh

    async def _register_fresh(self, batch: list[_Pending]) -> None:
        now = datetime.now(UTC)
        # Independent of each other: numbers and pseudonyms in parallel round trips.
        numbers, references = await asyncio.gather(
            self.numbering.feedback_numbers(now.astimezone(self.settings.zone), len(batch)),
            self.vault.pseudonyms_for([p.submission.contact for p in batch], now),
        )
        valid: list[_Pending] = []
        for pending, number, reference in zip(batch, numbers, references, strict=True):
            try:
                pending.event = self._received(
                    pending.submission, pending.feedback_id, number, reference, now
                )
            except ValidationError as error:
                pending.settle(InvalidSubmission(error.errors(include_url=False)))  # type: ignore[arg-type]
                continue
            valid.append(pending)
        claimed = await self._record(valid)
        if any(p.durable for p in claimed):
            self.outbox_waiting.set()
        for pending in claimed:
            if pending.durable:
                pending.settle(self._accepted(pending))
        await self._publish([p for p in claimed if not p.durable])

    async def _record(self, batch: list[_Pending]) -> list[_Pending]:
        """One statement (atomic, one round trip): de-duplication claims, then, for durable
        registrations, registry and outbox rows for the claims won. Returns the
        registrations this batch owns; a delivery claimed concurrently elsewhere gets that
        registration's answer. (The others enter the registry once Kafka has them.)"""
        if not batch:
            return []
        # Sorted by key, so that concurrent batches take the key locks in one order.
        ordered = sorted(batch, key=lambda p: p.dedup_key or "")
        events = [_event(p) for p in ordered]
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                """
                WITH batch AS (
                    SELECT * FROM unnest(%s::text[], %s::uuid[], %s::text[], %s::text[],
                        %s::text[], %s::text[], %s::bool[], %s::text[], %s::bytea[], %s::bytea[],
                        %s::bytea[])
                        WITH ORDINALITY AS b(dedup_key, feedback_id, feedback_number, channel,
                        channel_reference, customer_ref, durable, topic, message_key, payload,
                        body_digest, position)
                ), claims AS (
                    INSERT INTO intake_deduplication (dedup_key, feedback_id, feedback_number,
                        published, pending_event, body_digest)
                    SELECT dedup_key, feedback_id, feedback_number, durable,
                        CASE WHEN durable THEN NULL ELSE payload END, body_digest
                    FROM batch WHERE dedup_key IS NOT NULL ORDER BY position
                    ON CONFLICT (dedup_key) DO NOTHING RETURNING feedback_id
                ), owned AS (
                    SELECT * FROM batch WHERE dedup_key IS NULL
                        OR feedback_id IN (SELECT feedback_id FROM claims)
                ), registry AS (
                    INSERT INTO intake_registry
                        (feedback_number, feedback_id, channel, channel_reference, customer_ref)
                    SELECT feedback_number, feedback_id, channel, channel_reference, customer_ref
                    FROM owned WHERE durable ON CONFLICT DO NOTHING
                ), outbox AS (
                    INSERT INTO intake_outbox (topic, message_key, payload)
                    SELECT topic, message_key, payload FROM owned WHERE durable
                    ORDER BY position
                ), confirmed AS (
                    UPDATE pii_customers SET provisional = false WHERE provisional
                        AND customer_ref IN (SELECT customer_ref FROM owned WHERE durable)
                )
                SELECT feedback_id FROM owned
                """,
                (
                    [_claim_key(p) for p in ordered],
                    [p.feedback_id for p in ordered],
                    [e.feedback_number for e in events],
                    [e.channel.value for e in events],
                    [e.channel_reference for e in events],
                    [e.customer_ref for e in events],
                    [p.durable for p in ordered],
                    [self.settings.topic(e.TOPIC) for e in events],
                    [e.key() for e in events],
                    [
                        e.model_dump_json().encode() if p.durable or _claim_key(p) else None
                        for p, e in zip(ordered, events, strict=True)
                    ],
                    [_digest(p.submission) if p.dedup_key else None for p in ordered],
                ),
            )
            owned = {row[0] for row in await cursor.fetchall()}
        claimed = [p for p in batch if p.feedback_id in owned]
        for pending in claimed:
            pending.recorded = True
        lost = [p for p in batch if p.feedback_id not in owned]
        if lost:
            # A concurrent delivery of the same message won; answer with its number.
            known = await self._existing_many([p.dedup_key for p in lost if p.dedup_key])
            for pending in lost:
                assert pending.dedup_key is not None
                pending.settle(
                    known.get(pending.dedup_key) or DuplicateInProgress(pending.dedup_key)
                )
        return claimed

    async def _publish(self, batch: list[_Pending]) -> None:
        """Publish; acknowledged ones are accepted. The others are answered 503: with a
        delivery key their claim is kept for a retry (see below), without one it goes."""
        if not batch:
            return
        outcomes = await publish_records(
            self.broker,
            self.settings,
            [
                (
                    *record_of(self.settings, _event(p)),
                    {FEEDBACK_NUMBER_HEADER: _event(p).feedback_number, **p.trace},
                )
                for p in batch
            ],
        )
        accepted = [p for p, failure in zip(batch, outcomes, strict=True) if failure is None]
        refused = [(p, f) for p, f in zip(batch, outcomes, strict=True) if f is not None]
        if accepted:
            # Kafka has them, so they are accepted whatever happens here; the registry row is
            # what lets replies find them and keeps their customer from the vault's sweep.
            for wait in (0.05, 0.5, 2.0, None):
                try:
                    await self._enter(accepted)
                    break
                except Exception:
                    if wait is None:
                        log.exception("accepted feedback not entered in the registry")
                        break
                    await asyncio.sleep(wait)
            for pending in accepted:
                pending.settle(self._accepted(pending))
        if refused:
            # A message whose acknowledgement timed out may still reach Kafka (the producer
            # cannot take it back). A delivery with a key keeps its claim and event, marked,
            # so that a retry publishes the same id and number (routing keeps one case per
            # id) instead of a second feedback, and `reconcile` publishes it meanwhile. One
            # without a key cannot be named again by its sender: its claim goes.
            async with self.pool.connection() as conn:
                await conn.execute(
                    "WITH kept AS (UPDATE intake_deduplication SET unacknowledged_at = now() "
                    "WHERE feedback_id = ANY(%s)) "
                    "DELETE FROM intake_deduplication WHERE feedback_id = ANY(%s)",
                    (
                        [p.feedback_id for p, _ in refused if p.dedup_key is not None],
                        [p.feedback_id for p, _ in refused if p.dedup_key is None],
                    ),
                )
        for pending, failure in refused:
            log.warning("feedback %s not accepted: %s", _event(pending).feedback_number, failure)
            pending.settle(IntakeUnavailable(str(failure)))

    async def _enter(self, accepted: list[_Pending]) -> None:
        await self._enter_events(
            [_event(p) for p in accepted], [k for p in accepted if (k := _claim_key(p))]
        )

    async def _enter_events(self, events: list[FeedbackReceived], dedup_keys: list[str]) -> None:
        """Only feedback Kafka has enters the registry, where replies and supplements find
        it by number; its claims now answer retries with that number (those without a
        delivery key, see UNKEYED, are done with)."""
        unkeyed = [k for k in dedup_keys if k.startswith(UNKEYED)]
        async with self.pool.connection() as conn:
            await conn.execute(
                """
                WITH marked AS (
                    UPDATE intake_deduplication SET published = true, pending_event = NULL
                    WHERE dedup_key = ANY(%s)
                ), done AS (
                    DELETE FROM intake_deduplication WHERE dedup_key = ANY(%s)
                ), confirmed AS (
                    UPDATE pii_customers SET provisional = false
                    WHERE provisional AND customer_ref = ANY(%s)
                )
                INSERT INTO intake_registry
                    (feedback_number, feedback_id, channel, channel_reference, customer_ref)
                SELECT * FROM unnest(%s::text[], %s::uuid[], %s::text[], %s::text[], %s::text[])
                ON CONFLICT DO NOTHING
                """,
                (
                    [k for k in dedup_keys if not k.startswith(UNKEYED)],
                    unkeyed,
                    [e.customer_ref for e in events],
                    [e.feedback_number for e in events],
                    [e.feedback_id for e in events],
                    [e.channel.value for e in events],
                    [e.channel_reference for e in events],
                    [e.customer_ref for e in events],
                ),
            )

    @staticmethod
    def _accepted(pending: _Pending) -> Accepted:
        return Accepted(
            feedback_id=pending.feedback_id, feedback_number=_event(pending).feedback_number
        )

    async def _existing_many(self, dedup_keys: list[str]) -> dict[str, Accepted | Exception]:
        """Earlier registrations of these deliveries: their answer, or DuplicateInProgress
        while the earlier one is not yet acknowledged. One abandoned by its process, or
        whose publish was not acknowledged (see `_publish`), is finished here (see
        `_finish_abandoned`), so its answer is its number, the same as the first time."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT dedup_key, feedback_id, feedback_number, published, pending_event, "
                "created_at < now() - make_interval(secs => %s) OR unacknowledged_at IS NOT NULL "
                "FROM intake_deduplication WHERE dedup_key = ANY(%s)",
                (2 * self.settings.publish_timeout_s, dedup_keys),
            )
            rows = await cursor.fetchall()
        answers: dict[str, Accepted | Exception] = {}
        abandoned: list[tuple[str, bytes]] = []
        for key, feedback_id, number, published, pending_event, stale in rows:
            if published:
                answers[key] = Accepted(
                    feedback_id=feedback_id, feedback_number=number, duplicate=True
                )
            elif stale and pending_event is not None:
                abandoned.append((key, bytes(pending_event)))
            else:
                answers[key] = DuplicateInProgress(key)
        if abandoned:
            answers.update(await self._finish_abandoned(abandoned))
        return answers

    async def _finish_abandoned(
        self, abandoned: list[tuple[str, bytes]]
    ) -> dict[str, Accepted | Exception]:
        """Registrations whose process stopped between committing the claim and hearing from
        Kafka (well past the publish timeout): publish their events again, since routing
        keeps one case per feedback id whether or not the first attempt arrived."""
        events = [FeedbackReceived.model_validate_json(payload) for _, payload in abandoned]
        outcomes = await publish_many(self.broker, self.settings, events)
        done = [
            (key, event)
            for (key, _), event, failure in zip(abandoned, events, outcomes, strict=True)
            if failure is None
        ]
        if done:
            await self._enter_events([e for _, e in done], [k for k, _ in done])
        answers: dict[str, Accepted | Exception] = {
            key: IntakeUnavailable(str(failure))
            for (key, _), failure in zip(abandoned, outcomes, strict=True)
            if failure is not None
        }
        for key, event in done:
            log.warning("published feedback %s left unacknowledged earlier", event.feedback_number)
            answers[key] = Accepted(
                feedback_id=event.feedback_id, feedback_number=event.feedback_number, duplicate=True
            )
        return answers

    async def reconcile(self, older_than_s: float | None = None, limit: int = 500) -> int:
        """Finish registrations left between the claim and the registry row: the process
        died before Kafka answered, Kafka did not acknowledge in time (the event may have
        reached it), or the registry insert failed after Kafka acknowledged. Their kept
        events are published again (routing keeps one case per feedback id) and entered in
        the registry. Claims of unacknowledged deliveries older than RETRY_WINDOW_S are
        given up. Returns how many were finished."""
        stale_s = 2 * self.settings.publish_timeout_s if older_than_s is None else older_than_s
        async with self.pool.connection() as conn:
            await conn.execute(
                "DELETE FROM intake_deduplication WHERE NOT published "
                "AND unacknowledged_at IS NOT NULL "
                "AND created_at < now() - make_interval(secs => %s)",
                (RETRY_WINDOW_S,),
            )
            cursor = await conn.execute(
                "SELECT dedup_key, pending_event FROM intake_deduplication WHERE NOT published "
                "AND pending_event IS NOT NULL AND created_at <= now() - make_interval(secs => %s) "
                "ORDER BY created_at LIMIT %s",
                (stale_s, limit),
            )
            rows = await cursor.fetchall()
        if not rows:
            return 0
        answers = await self._finish_abandoned([(key, bytes(event)) for key, event in rows])
        return sum(isinstance(answer, Accepted) for answer in answers.values())

    async def drain_outbox(self, limit: int = 500) -> int:
        """Publish buffered messages in order; each row goes once Kafka acknowledged it.

        One drainer at a time across intake instances (a transaction-scoped advisory lock),
        so that rows are published once each and in order."""
        async with self.pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "SELECT pg_try_advisory_xact_lock(%s)", (INTAKE_OUTBOX_LOCK,)
            )
            locked: Any = await cursor.fetchone()
            if not locked[0]:
                return 0
            cursor = await conn.execute(
                "SELECT id, topic, message_key, payload FROM intake_outbox ORDER BY id LIMIT %s",
                (limit,),
            )
            rows = await cursor.fetchall()
            if not rows:
                return 0
            await publish_all(
                self.broker,
                self.settings,
                [
                    (topic, bytes(key) if key is not None else None, bytes(payload))
                    for _, topic, key, payload in rows
                ],
            )
            await conn.execute(
                "DELETE FROM intake_outbox WHERE id = ANY(%s)", ([r[0] for r in rows],)
            )
        return len(rows)

    async def drain_outbox_forever(self) -> None:
        loop = asyncio.get_running_loop()
        reconciled_at = loop.time()
        while True:
            if loop.time() - reconciled_at >= RECONCILE_EVERY_S:
                reconciled_at = loop.time()
                try:
                    await self.reconcile()
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    log.warning("intake registrations not reconciled yet (%s); retrying", error)
            try:
                while await self.drain_outbox():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("intake outbox not drained yet (%s); retrying", error)
                await asyncio.sleep(1.0)
                continue
            self.outbox_waiting.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.outbox_waiting.wait()

    async def buffered(self) -> int:
        async with self.pool.connection() as conn:
            cursor = await conn.execute("SELECT count(*) FROM intake_outbox")
            row: Any = await cursor.fetchone()
        return int(row[0])

    async def find(self, feedback_number: str) -> UUID | None:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT feedback_id FROM intake_registry WHERE feedback_number = %s",
                (feedback_number,),
            )
            row: Any = await cursor.fetchone()
        return row[0] if row else None

    async def find_by_reference(self, channel: Channel, references: list[str]) -> str | None:
        """The feedback number registered from any of these channel references."""
        if not references:
            return None
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT feedback_number FROM intake_registry WHERE channel = %s "
                "AND channel_reference = ANY(%s) ORDER BY registered_at LIMIT 1",
                (channel.value, references),
            )
            row: Any = await cursor.fetchone()
        return str(row[0]) if row else None

    async def case_of(self, feedback_number: str) -> tuple[UUID, str | None] | None:
        """A registered case's id and customer (None for cases registered before the
        registry kept it), or None if no feedback has this number."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT feedback_id, customer_ref FROM intake_registry WHERE feedback_number = %s",
                (feedback_number,),
            )
            row: Any = await cursor.fetchone()
        return (row[0], row[1]) if row else None

    async def correspond(
        self,
        feedback_number: str,
        channel: Channel,
        text: str,
        *,
        supplied: dict[str, str] | None = None,
        evidence: tuple[Evidence, ...] = (),
        channel_reference: str | None = None,
        received_at: datetime | None = None,
        durable: bool = False,
    ) -> CustomerCorrespondence:
        """A customer's message about an existing feedback goes to its case."""
        feedback_id = await self.find(feedback_number)
        if feedback_id is None:
            raise UnknownFeedback(feedback_number)
        message = CustomerCorrespondence(
            correspondence_id=uuid4(),
            feedback_id=feedback_id,
            feedback_number=feedback_number,
            channel=channel,
            channel_reference=channel_reference,
            received_at=received_at or datetime.now(UTC),
            text=mask_contacts(text),
            supplied=supplied or {},
            evidence=evidence,
        )
        if durable:
            async with self.pool.connection() as conn:
                await enqueue(conn, self.settings, message)
            self.outbox_waiting.set()
            return message
        try:
            await publish(self.broker, self.settings, message)
        except Exception as error:
            raise IntakeUnavailable(str(error)) from error
        return message

    def _received(
        self,
        submission: Submission,
        feedback_id: UUID,
        number: str,
        customer_ref: str,
        now: datetime,
    ) -> FeedbackReceived:
        own = Personal(name=submission.contact.name, address=submission.contact.address)
        return FeedbackReceived(
            feedback_id=feedback_id,
            feedback_number=number,
            received_at=submission.received_at or now,
            registered_at=now,
            channel=submission.channel,
            channel_reference=submission.channel_reference,
            customer_ref=customer_ref,
            customer_tier=submission.customer_tier,
            product_model=submission.product_model,
            service_type=submission.service_type,
            purchase_date=submission.purchase_date,
            description=mask_contacts(submission.description, own),
            customer_attempts=_masked(submission.customer_attempts, own),
            occurred_at=submission.occurred_at,
            expectation=_masked(submission.expectation, own),
            emotion=submission.emotion,
            stated_type=submission.stated_type,
            evidence=submission.evidence,
            receiver=submission.receiver,
            related_feedback=submission.related_feedback,
        )


# SQLSTATEs of a server that cannot take work: shutting down, starting, crashed, full.
_SERVER_UNAVAILABLE = frozenset({"57P01", "57P02", "57P03", "53300"})


def database_unreachable(error: BaseException) -> bool:
    """The failure is the database being away, not anything in the rows: no connection in
    time from the pool, or a connection refused, lost (no SQLSTATE, or class 08) or closed
    by a server that cannot take work. Other operational errors can be one row's (54000: an
    index row too large), so they are not counted here."""
    if isinstance(error, PoolTimeout):
        return True
    if not isinstance(error, psycopg.OperationalError) or isinstance(
        error,
        psycopg.errors.PipelineAborted,  # follows another statement's own error
    ):
        return False
    state = error.sqlstate
    return state is None or state.startswith("08") or state in _SERVER_UNAVAILABLE


def _delivery_key(submission: Submission) -> str | None:
    """The same channel message delivered twice has the same channel reference."""
    if submission.channel_reference:
        return f"{submission.channel.value}:{submission.channel_reference}"
    return None


async def enqueue(conn: Any, settings: Settings, message: Keyed) -> None:
    """Put a contract message into the durable outbox, inside the caller's transaction;
    the drainer publishes it once Kafka acknowledges."""
    await enqueue_many(conn, settings, [message])


async def enqueue_many(conn: Any, settings: Settings, messages: Sequence[Keyed]) -> None:
    records = [record_of(settings, m) for m in messages]
    await conn.execute(
        "INSERT INTO intake_outbox (topic, message_key, payload) "
        "SELECT topic, message_key, payload FROM unnest(%s::text[], %s::bytea[], %s::bytea[]) "
        "WITH ORDINALITY "
        "AS m(topic, message_key, payload, position) ORDER BY position",
        (
            [topic for topic, _, _ in records],
            [key for _, key, _ in records],
            [body for _, _, body in records],
        ),
    )


def _digest(submission: Submission) -> bytes:
    """What a repeat of one delivery must match to be told the customer's token."""
    return hashlib.sha256(submission.model_dump_json().encode()).digest()


def _event(pending: _Pending) -> FeedbackReceived:
    assert pending.event is not None, "the event is made before anything is recorded"
    return pending.event


def _dedup_key(pending: _Pending) -> str:
    return pending.dedup_key or ""


def _claim_key(pending: _Pending) -> str | None:
    """The claim a registration records before publishing: its delivery key, or for a
    synchronous one without any, a key of its own (see UNKEYED). Durable ones need none
    without a key: their outbox row is written in the same transaction."""
    if pending.dedup_key is not None or pending.durable:
        return pending.dedup_key
    return f"{UNKEYED}{pending.feedback_id}"


def _masked(text: str | None, own: Personal) -> str | None:
    return mask_contacts(text, own) if text else text
