"""Notifications: telling customers and staff what they must be told about a case.

    feedback.events ──group "notifications"──> consumer.py: rows in `notifications`
                      (+ Kafka position, one transaction: each event planned once)
    sender.py: claims due rows (FOR UPDATE SKIP LOCKED) ──> e-mail (SMTP), SMS and IM
               (signed webhooks), the in-app inbox (`inbox`, GET /v1/inbox)

What is told to whom: `consumer.py`; overdue callbacks and callback appointments:
`callback_watch.py`. Sending, retries, dead letters and the one duplicate
window: `sender.py`. Templates (zh, en): `templates/`. Staff contacts, supervisors and
heads: config/notifications.yaml (`directory.py`). Personal data is read from the PII vault
by the sender, for the message it sends, and is never stored with a notification nor put
on the bus.
"""

from __future__ import annotations

from faststream.kafka import KafkaBroker
from psycopg_pool import AsyncConnectionPool

from contracts.events import DeadLetter
from services.common.bus import publish
from services.common.settings import Settings
from services.intake.pii_vault import PiiVault
from services.notifications.callback_watch import CallbackWatch
from services.notifications.consumer import Planner, register_notifications
from services.notifications.directory import load_directory
from services.notifications.sender import Sender
from services.notifications.store import SCHEMA
from services.notifications.templates import Templates
from services.routing.classifier import RuleBook
from services.sla.calendar import BusinessCalendar
from services.sla.policies import Policies

__all__ = ["SCHEMA", "Notifications", "Sender", "build"]


class Notifications:
    """The sender and the callback watch: two tasks to run once the broker started (each
    stopped on its own: a cancelled sender first finishes the sends it started)."""

    def __init__(self, sender: Sender, watch: CallbackWatch) -> None:
        self.sender = sender
        self.watch = watch

    async def run(self) -> None:
        await self.sender.run()


def build(
    broker: KafkaBroker,
    settings: Settings,
    pool: AsyncConnectionPool,
    rulebook: RuleBook,
    calendar: BusinessCalendar,
    policies: Policies,
) -> Notifications:
    """The consumer on `broker`, the sender and the callback watch (run `run()` once the
    broker started). Raises ValueError for a bad staff directory, template or webhook
    configuration."""
    directory = load_directory(settings.notify_staff_file)
    templates = Templates(
        settings.zone,
        categories={code: c.label for code, c in rulebook.categories.items()},
        departments=rulebook.departments,
    )

    async def publish_dead_letter(letter: DeadLetter) -> None:
        await publish(broker, settings, letter)

    sender = Sender(
        settings,
        pool,
        directory,
        templates,
        PiiVault(pool, settings.pii_key_bytes),
        publish_dead_letter,
    )
    planner = Planner(settings, directory, sender.enabled)
    register_notifications(broker, settings, pool, planner, sender.wake)
    watch = CallbackWatch(pool, planner, directory, calendar, policies.escalation.to_head_after)
    return Notifications(sender, watch)
