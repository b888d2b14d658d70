"""The sender: claims due notification rows, renders them, looks up the address, sends,
and records the outcome.

Claiming (`store.claim`) counts the attempt and keeps the row from other senders for a
lease, in a short transaction of its own (`FOR UPDATE SKIP LOCKED`, so any number of
senders share the work); nothing holds a database transaction across a send. Customer
contacts are read from the PII vault here, for this one message, and never stored.

Once, not twice: a row is marked `sent` right after its send, one row at a time. The
in-app inbox writes the message and the mark in one transaction: exactly once. The other
channels leave the platform, so one window stays: the send succeeded and the mark did not
happen (the process died, the database went away). Marking before sending would close it
by losing the message instead, which is worse for a customer waiting for an answer; so
delivery is at least once with a per-message id receivers drop repeats by (the mail's
Message-ID, the webhooks' Idempotency-Key: both the row id). The window is kept small:
- a stopping sender (its task cancelled) finishes the sends it started and their marks,
  and hands back the rows it claimed but did not start;
- a failed mark is retried a few times before the row is left to its lease;
- only a row whose lease ran out is sent again, and a late outcome of the earlier
  attempt changes nothing (outcomes name the attempt they settle).

Failures: a permanent one (refused recipient, a 4xx webhook answer, a template that cannot
render) makes the row `dead` at once; a transient one is tried again after a backoff
doubling from `notify_backoff_s` (with jitter) up to `notify_backoff_max_s`, and after
`notify_max_attempts` the row is `dead`. A dead row is kept as a dead letter (table, in the
transaction that marks it) and published to `feedback.deadletter`, its reason naming the
channel, template, recipient id or pseudonym and the cause, never an address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import httpx
from prometheus_client import Counter
from psycopg_pool import AsyncConnectionPool

from contracts.events import DeadLetter
from services.access.tokens import customer_token
from services.common import deadletters
from services.common.metrics import count_dead_letters
from services.common.settings import Settings
from services.intake.channels.email import record_sent
from services.intake.pii_vault import PiiVault
from services.notifications import store
from services.notifications.adapters import EmailAdapter, SendFailed, WebhookAdapter
from services.notifications.directory import StaffDirectory
from services.notifications.store import Notification
from services.notifications.templates import TemplateProblem, Templates

log = logging.getLogger(__name__)

SOURCE = "notifications.sender"
_LETTERS = uuid.UUID("9d7c1b3e-52a4-4c0f-8f6e-1e2d3c4b5a69")
MARK_TRIES = 3

NOTIFICATIONS = Counter(
    "feedback_notifications",
    "Notifications by channel used and outcome (sent, failed, dead, skipped).",
    ["channel", "outcome"],
)

PublishDeadLetter = Callable[[DeadLetter], Awaitable[None]]


def dead_letter_of(row: Notification, reason: str) -> tuple[DeadLetter, bytes]:
    """The dead letter of a row given up on, and the payload kept with it (the row: no
    contacts); the same id however often it is built."""
    raw = row.model_copy(update={"state": "dead", "last_error": reason}).model_dump_json()
    letter = DeadLetter(
        dead_letter_id=uuid.uuid5(_LETTERS, str(row.id)),
        source=SOURCE,
        reason=reason[:10_000],
        payload="",
        metadata={
            "notification_id": str(row.id),
            "feedback_id": str(row.feedback_id),
            "feedback_number": row.feedback_number,
            "template": row.template,
            "channel": row.channel,
            "recipient": row.recipient,
            "payload_encoding": "utf-8",
        },
        failed_at=datetime.now(UTC),
    )
    return deadletters.sealed_message(letter, raw.encode()), raw.encode()


class Sender:
    def __init__(
        self,
        settings: Settings,
        pool: AsyncConnectionPool,
        directory: StaffDirectory,
        templates: Templates,
        vault: PiiVault,
        publish_dead_letter: PublishDeadLetter,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.directory = directory
        self.templates = templates
        self.vault = vault
        self.publish_dead_letter = publish_dead_letter
        secret = (
            settings.notify_webhook_secret.get_secret_value().encode()
            if settings.notify_webhook_secret
            else None
        )
        timeout = settings.notify_send_timeout_s
        self.email = EmailAdapter(settings)
        self.webhooks = {
            "sms": WebhookAdapter("sms", settings.notify_sms_webhook_url, secret, timeout),
            "im": WebhookAdapter("im", settings.notify_im_webhook_url, secret, timeout),
        }
        # A claim must outlast any one send, or a slow send would be taken over mid-way.
        self.lease_s = max(settings.notify_lease_s, 3 * timeout + 5)
        self._wake = asyncio.Event()
        self._http: httpx.AsyncClient | None = None

    @property
    def enabled(self) -> set[str]:
        """Channels with an adapter configured (the inbox always)."""
        found = {"inbox"} | {kind for kind, w in self.webhooks.items() if w.enabled}
        return found | ({"email"} if self.email.enabled else set())

    def wake(self) -> None:
        """New rows may be due (called by the consumer in this process)."""
        self._wake.set()

    async def run(self) -> None:
        async with httpx.AsyncClient(follow_redirects=False) as self._http:
            while True:
                self._wake.clear()
                rows: list[Notification] = []
                try:
                    await self.publish_dead_letters()
                    rows = await store.claim(
                        self.pool, self.settings.notify_batch_size, self.lease_s
                    )
                except Exception:
                    log.exception("claiming notifications failed; trying again")
                if rows:
                    await self.deliver_all(rows)
                    continue  # more may be due already
                # asyncio.timeout: wait_for (3.11) can swallow a cancellation in a loop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.notify_poll_s):
                        await self._wake.wait()

    async def deliver_all(self, rows: list[Notification]) -> None:
        """Send a claimed batch, `notify_concurrency` at a time. Cancelled, the sends
        already started finish (with their marks) and the rest are handed back."""
        waiting = list(rows)
        running: set[asyncio.Task[None]] = set()
        try:
            while waiting:
                while len(running) >= self.settings.notify_concurrency:
                    _, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                row = waiting.pop(0)
                running.add(asyncio.create_task(self.deliver(row), name=f"notify-{row.id}"))
            if running:
                await asyncio.wait(running)
        except asyncio.CancelledError:
            # asyncio.wait does not cancel what it waits for: the started sends go on.
            await asyncio.shield(self._hand_back(waiting, running))
            raise

    async def _hand_back(
        self, waiting: list[Notification], running: set[asyncio.Task[None]]
    ) -> None:
        try:
            await store.release(self.pool, waiting)
        except Exception:
            log.exception("could not hand back %d claimed notifications", len(waiting))
        if running:
            await asyncio.wait(running, timeout=self.settings.notify_send_timeout_s + 5)

    async def deliver(self, row: Notification) -> None:
        try:
            await self._deliver(row)
        except Exception as error:
            # Not the channel's answer (the vault or the database failed): try again later.
            log.exception("notification %s: unexpected failure", row.id)
            with contextlib.suppress(Exception):
                await self._failed(row, SendFailed(f"{type(error).__name__}", permanent=False))

    async def _deliver(self, row: Notification) -> None:
        try:
            payload = row.payload
            if row.template in ("customer_acknowledgement", "customer_result"):
                # The customer's key to confirm: derived at send time, never stored or on the bus.
                key = self.settings.auth_token_key_bytes
                payload = {**payload, "customer_token": customer_token(key, row.feedback_number)}
            rendered = self.templates.render(row.template, row.language, payload)
        except TemplateProblem as error:
            await self._failed(row, SendFailed(f"template: {error}", permanent=True))
            return
        if row.channel == "inbox":
            async with self.pool.connection() as conn, conn.transaction():
                await store.deliver_to_inbox(conn, row, rendered.title, rendered.body)
                await store.mark_sent(conn, row.id, "inbox")
            NOTIFICATIONS.labels(channel="inbox", outcome="sent").inc()
            return
        route = await self._route(row)
        if isinstance(route, str):
            await store.mark_skipped(self.pool, row, route)
            NOTIFICATIONS.labels(channel=row.channel, outcome="skipped").inc()
            log.info("notification %s skipped: %s", row.id, route)
            return
        channel, address = route
        try:
            if channel == "email":
                if row.audience == "customer":
                    # Before sending: a reply naming this mail joins the case.
                    await record_sent(self.pool, self.email.message_id(row.id), row.feedback_number)
                await self.email.send(
                    row.id, address, rendered.title, rendered.body, row.feedback_number
                )
            else:
                assert self._http is not None
                await self.webhooks[channel].send(
                    self._http,
                    row.id,
                    address,
                    rendered.title,
                    rendered.body,
                    row.feedback_number,
                    row.template,
                    row.language,
                )
        except SendFailed as error:
            await self._failed(row, error, channel)
            return
        await self._mark_sent(row, channel)

    async def _route(self, row: Notification) -> tuple[str, str] | str:
        """(channel, address) to send by, or why nothing can be sent."""
        if row.audience == "staff":
            address = self.directory.address(row.recipient, row.channel)
            if address is None:
                return f"no {row.channel} address for {row.recipient} in the staff directory"
            if row.channel not in self.enabled:
                return f"no {row.channel} adapter configured"
            return row.channel, address
        contact = await self.vault.reveal(row.recipient)
        if contact is None:
            return "the customer has no contact on record (erased or unknown)"
        addresses = {"email": contact.email, "sms": contact.phone, "im": contact.account}
        for channel in row.payload.get("routes") or [row.channel]:
            address = addresses.get(channel)
            if address and channel in self.enabled:
                return channel, str(address)
        return "no configured channel reaches this customer"

    async def _mark_sent(self, row: Notification, via: str) -> None:
        for attempt in range(1, MARK_TRIES + 1):
            try:
                async with self.pool.connection() as conn:
                    await store.mark_sent(conn, row.id, via)
                NOTIFICATIONS.labels(channel=via, outcome="sent").inc()
                return
            except Exception:
                if attempt == MARK_TRIES:
                    # The duplicate window: sent, not recorded. The row goes again when
                    # its lease runs out, under the same id, for the receiver to drop.
                    log.exception("notification %s was sent but not marked sent", row.id)
                    return
                await asyncio.sleep(0.2 * attempt)

    def backoff_s(self, attempts: int) -> float:
        base = self.settings.notify_backoff_s * 2 ** max(attempts - 1, 0)
        capped: float = min(base, self.settings.notify_backoff_max_s)
        return capped * (0.8 + 0.4 * random.random())

    async def _failed(self, row: Notification, error: SendFailed, via: str | None = None) -> None:
        channel = via or row.channel
        if not error.permanent and row.attempts < self.settings.notify_max_attempts:
            await store.mark_failed(self.pool, row, error.reason, self.backoff_s(row.attempts))
            NOTIFICATIONS.labels(channel=channel, outcome="failed").inc()
            log.info("notification %s attempt %d failed: %s", row.id, row.attempts, error.reason)
            return
        why = "refused" if error.permanent else f"gave up after {row.attempts} attempts"
        reason = f"{channel} {row.template} to {row.recipient}: {why}: {error.reason}"
        recorded = False
        async with self.pool.connection() as conn, conn.transaction():
            if await store.mark_dead(conn, row, reason):
                letter, raw = dead_letter_of(row, reason)
                recorded = await deadletters.keep(conn, letter, raw)
        if recorded:
            count_dead_letters(SOURCE, 1)
            NOTIFICATIONS.labels(channel=channel, outcome="dead").inc()
            log.warning("notification %s is dead: %s", row.id, reason)
            self._wake.set()  # publish its dead letter soon

    async def publish_dead_letters(self) -> None:
        """Dead rows' letters onto `feedback.deadletter`, after the row is recorded dead
        (at least once; subscribers drop repeats by the letter's id)."""
        for row in await store.unpublished_dead(self.pool, 100):
            letter, _ = dead_letter_of(row, row.last_error or "dead")
            try:
                await self.publish_dead_letter(letter)
            except Exception as error:
                log.warning("dead letter of %s not published yet: %s", row.id, type(error).__name__)
                return
            await store.mark_dead_letter_published(self.pool, row.id)
