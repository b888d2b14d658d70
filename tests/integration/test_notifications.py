"""Notifications through the real bus and database, to a real SMTP sink (aiosmtpd) and a
local HTTP receiver: the customer's acknowledgement, staff told of assignment, breach and
escalation, retries and the dead letter, redelivery and a sender stopped mid-batch
sending nothing twice (checked by the per-message id at the receivers)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiosmtpd.controller import Controller
from psycopg.rows import dict_row

from contracts import topics
from contracts.events import (
    CaseEvent,
    ClockBreached,
    ClockStarted,
    DeadLetter,
    EscalationRaised,
    EscalationRequested,
    OwnerAssigned,
)
from services.common.bus import ensure_topics, platform_topics
from services.common.settings import Settings
from services.notifications import store
from services.notifications.sender import MARK_TRIES
from services.notifications.store import notification_id
from tests.conftest import free_port, rewind_group, serve, signed_in, wait_for, web_form

pytestmark = pytest.mark.integration

SECRET = "webhook-secret-for-tests"
MAIL_DOMAIN = "service.example.com"


# --- receivers -------------------------------------------------------------------------


class MailSink:
    """A real SMTP server (aiosmtpd) keeping every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if m["To"] == address]

    def ids(self) -> list[str]:
        return [str(m["Message-ID"]) for m in self.messages]


@dataclass
class Receiver:
    """A local HTTP receiver for the SMS and IM webhooks. `answer(body, tries)` gives the
    status for a request (tries: how many requests with its Idempotency-Key so far)."""

    answer: Callable[[dict[str, Any], int], int] = lambda body, tries: 200
    delay_s: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    tries: Counter[str] = field(default_factory=Counter)
    accepted: Counter[str] = field(default_factory=Counter)
    port: int = field(default_factory=free_port)

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        signature = (
            "sha256="
            + hmac.new(
                SECRET.encode(),
                request.headers["X-Timestamp"].encode() + b"." + raw,
                hashlib.sha256,
            ).hexdigest()
        )
        key = request.headers["Idempotency-Key"]
        body = json.loads(raw)
        self.tries[key] += 1
        self.requests.append(
            {
                "path": request.path,
                "key": key,
                "signed": hmac.compare_digest(signature, request.headers["X-Signature"]),
                **body,
            }
        )
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        status = self.answer(body, self.tries[key])
        if status == 200:
            self.accepted[key] += 1
        return web.Response(status=status, text="ok" if status == 200 else "no")

    def sent_to(self, to: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["to"] == to and self.accepted[r["key"]]]


@asynccontextmanager
async def receivers(receiver: Receiver) -> AsyncIterator[Receiver]:
    app = web.Application()
    app.router.add_post("/sms", receiver.handle)
    app.router.add_post("/im", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", receiver.port)
    await site.start()
    try:
        yield receiver
    finally:
        await runner.cleanup()


@asynccontextmanager
async def mail_sink() -> AsyncIterator[MailSink]:
    sink = MailSink()
    sink.controller.start()
    try:
        yield sink
    finally:
        sink.controller.stop()


def staff_file(tmp_path: Path, staff: dict[str, dict[str, str]], **departments: Any) -> Path:
    path = tmp_path / "notifications.yaml"
    path.write_text(
        json.dumps(
            {
                "staff": staff,
                "departments": departments,
                "default": {"supervisors": ["cs-supervisor"], "heads": ["service-head"]},
            }
        ),
        encoding="utf-8",
    )
    return path


def notifying(
    settings: Settings,
    staff: Path,
    receiver: Receiver | None = None,
    sink: MailSink | None = None,
    **changes: Any,
) -> Settings:
    """Settings with the adapters pointed at the test's receivers and short backoffs."""
    update: dict[str, Any] = {
        "notify_staff_file": staff,
        "notify_from": f"客户服务中心 <noreply@{MAIL_DOMAIN}>",
        "notify_webhook_secret": SECRET,
        "notify_backoff_s": 0.2,
        "notify_backoff_max_s": 1.0,
        "notify_poll_s": 0.1,
        "notify_send_timeout_s": 5.0,
        "notify_ack_hold_s": 0.0,
        **changes,
    }
    if receiver is not None:
        update["notify_sms_webhook_url"] = f"http://127.0.0.1:{receiver.port}/sms"
        update["notify_im_webhook_url"] = f"http://127.0.0.1:{receiver.port}/im"
    if sink is not None:
        update["notify_smtp_port"] = sink.port
    return Settings.model_validate({**settings.model_dump(), **update})


# --- the bus and the tables -------------------------------------------------------------


async def publish_events(settings: Settings, events: list[CaseEvent]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        for event in events:
            await producer.send_and_wait(
                settings.topic(topics.FEEDBACK_EVENTS),
                event.model_dump_json().encode(),
                key=event.key(),
            )
    finally:
        await producer.stop()


async def everything_on_the_bus(settings: Settings) -> bytes:
    """Every message of every topic of this test, keys and values."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    try:
        names = [t for t in await consumer.topics() if t.startswith(settings.topic_prefix)]
        partitions = [
            TopicPartition(name, p)
            for name in names
            for p in range(settings.topic_partitions)  # every topic is created so
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        seen = bytearray()
        while [p for p in partitions if await consumer.position(p) < ends[p]]:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    seen += (record.key or b"") + b"\n" + (record.value or b"") + b"\n"
        return bytes(seen)
    finally:
        await consumer.stop()


async def dead_letters_on_topic(settings: Settings) -> list[DeadLetter]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    try:
        name = settings.topic(topics.DEADLETTER)
        partitions = [TopicPartition(name, p) for p in range(settings.topic_partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        found: list[DeadLetter] = []
        while [p for p in partitions if await consumer.position(p) < ends[p]]:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                found += [DeadLetter.model_validate_json(r.value) for r in records]
        return found
    finally:
        await consumer.stop()


def rows(settings: Settings, where: str = "TRUE", params: tuple[Any, ...] = ()) -> list[dict]:
    with psycopg.connect(settings.database_url, row_factory=dict_row) as conn:
        return conn.execute(
            f"SELECT * FROM notifications WHERE {where} ORDER BY created_at, id", params
        ).fetchall()


def states(settings: Settings) -> Counter[str]:
    return Counter(r["state"] for r in rows(settings))


def all_settled(settings: Settings, expected: int) -> bool:
    found = rows(settings)
    return len(found) == expected and all(r["state"] in ("sent", "dead") for r in found)


def consumed(settings: Settings) -> int:
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(next_offset), 0) FROM consumer_positions WHERE consumer = %s",
            ("notifications",),
        ).fetchone()
    return int(row[0]) if row else 0


def event(kind: type[CaseEvent], case: uuid.UUID, number: str, version: int, **fields: Any) -> Any:
    return kind(
        feedback_id=case,
        feedback_number=number,
        version=version,
        position=version,
        occurred_at=datetime.now(UTC),
        **fields,
    )


async def inbox(running: Any, settings: Settings, role: str, name: str) -> list[dict[str, Any]]:
    agent = name if role == "agent" else None
    headers = signed_in(settings, role, ("tech",), agent_id=agent, username=name)
    answer = await running.client.get("/v1/inbox", headers=headers)
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


# --- tests -------------------------------------------------------------------------------


async def test_the_customer_is_acknowledged_by_mail_and_the_owner_told_without_contacts_on_the_bus(
    settings: Settings, tmp_path: Path
) -> None:
    staff = staff_file(
        tmp_path,
        {
            "log-feng": {"email": f"log-feng@{MAIL_DOMAIN}", "im": "im-log-feng"},
            "log-he": {"email": f"log-he@{MAIL_DOMAIN}", "im": "im-log-he"},
        },
        logistics={"supervisors": ["log-supervisor"]},
    )
    phone, address, second = "13812345678", "zhang.wei@example.com", "li.na@example.com"
    async with mail_sink() as sink, receivers(Receiver()) as receiver:
        configured = notifying(settings, staff, receiver, sink, notify_ack_hold_s=8.0)
        services = ("intake", "routing", "relay", "notifications")
        async with serve(configured, services=services) as running:
            answer = await running.client.post(
                "/v1/feedback",
                json=web_form(
                    "订单说好三天送达，现在已经第七天了还没有收到货",
                    customer={"name": "张伟", "phone": phone, "email": address},
                ),
            )
            assert answer.status_code == 202, answer.text
            number = answer.json()["feedback_number"]
            with psycopg.connect(settings.database_url) as conn:
                found = conn.execute(
                    "SELECT feedback_id FROM intake_registry WHERE feedback_number = %s",
                    (number,),
                ).fetchone()
            assert found is not None
            case = found[0]
            # The deadline service's first-response clock (published as it would be).
            now = datetime.now(UTC)
            due = now + timedelta(hours=4)
            clock = event(
                ClockStarted, case, number, 90, clock="first_response", target="4h",
                time="business", started_at=now, due_at=due, warn_at=now + timedelta(hours=3),
            )  # fmt: skip
            await publish_events(settings, [clock])

            mails = await wait_for(lambda: sink.to(address), timeout=30, what="acknowledgement")
            (mail,) = mails
            assert number in mail["Subject"]
            text = mail.get_content()
            assert number in text
            assert "4 小时" in text
            assert due.astimezone(configured.zone).strftime("%Y-%m-%d %H:%M") in text
            # The sender marks the row right after the SMTP server took the mail.
            (ack,) = await wait_for(
                lambda: rows(settings, "template = 'customer_acknowledgement' AND state = 'sent'"),
                timeout=30,
                what="the acknowledgement marked sent",
            )
            assert mail["Message-ID"] == f"<{ack['id']}@{MAIL_DOMAIN}>"
            assert ack["sent_via"] == "email"
            # A reply to the acknowledgement joins the case (intake knows the Message-ID).
            with psycopg.connect(settings.database_url) as conn:
                assert conn.execute(
                    "SELECT feedback_number FROM intake_sent_messages WHERE message_id = %s",
                    (mail["Message-ID"],),
                ).fetchone() == (number,)

            # The owner routing chose: inbox, IM and e-mail.
            assigned = await wait_for(
                lambda: rows(settings, "template = 'staff_assignment' AND state = 'sent'"),
                timeout=30,
                what="the assignment sent",
            )
            owner = assigned[0]["recipient"]
            assert owner in {"log-feng", "log-he"}
            await wait_for(
                lambda: (
                    len(rows(settings, "template = 'staff_assignment' AND state = 'sent'")) == 3
                ),
                timeout=30,
                what="inbox, IM and e-mail to the owner",
            )
            items = await inbox(running, configured, "agent", owner)
            assert [i["feedback_number"] for i in items] == [number]
            assert "分派" in items[0]["title"]
            (message,) = receiver.sent_to(f"im-{owner}")
            assert message["path"] == "/im" and message["signed"]
            assert message["feedback_number"] == number
            (im_row,) = rows(settings, "template = 'staff_assignment' AND channel = 'im'")
            assert message["key"] == str(im_row["id"])
            assert im_row["id"] == notification_id(case, im_row["event_version"], owner, "im")
            assert len(sink.to(f"{owner}@{MAIL_DOMAIN}")) == 1
            # Another agent's inbox does not show it.
            other = "log-he" if owner == "log-feng" else "log-feng"
            assert await inbox(running, configured, "agent", other) == []

            # Missing mandatory information: the customer is asked for it.
            answer = await running.client.post(
                "/v1/feedback",
                json=web_form("吸尘器使用三天后无法启动", customer={"email": second}),
            )
            assert answer.status_code == 202, answer.text
            pending = answer.json()["feedback_number"]

            def asked() -> list[EmailMessage]:
                return [m for m in sink.to(second) if "请补充" in m["Subject"]]

            (request,) = await wait_for(asked, timeout=30, what="information requested")
            assert pending in request["Subject"]
            assert "- 产品型号" in request.get_content()

    on_bus = await everything_on_the_bus(settings)
    assert number.encode() in on_bus  # the topics were read
    for contact in (phone, address, second):
        assert contact.encode() not in on_bus
    with psycopg.connect(settings.database_url) as conn:
        stored = conn.execute(
            "SELECT string_agg(payload::text || recipient, ' ') FROM notifications"
        ).fetchone()
        facts = conn.execute("SELECT string_agg(t::text, ' ') FROM notification_cases t").fetchone()
    assert stored is not None and facts is not None
    for kept in (stored[0], facts[0]):
        assert phone not in kept and address not in kept and second not in kept


async def test_staff_are_told_of_breach_and_escalation_and_a_redelivery_sends_nothing_twice(
    settings: Settings, tmp_path: Path
) -> None:
    staff = staff_file(
        tmp_path,
        {
            "tech-chen": {"email": f"tech-chen@{MAIL_DOMAIN}", "im": "im-tech-chen"},
            "tech-lead": {"im": "im-tech-lead", "language": "en"},
            "tech-head": {"email": f"tech-head@{MAIL_DOMAIN}"},
        },
        tech={"supervisors": ["tech-lead"], "heads": ["tech-head"]},
    )
    await ensure_topics(settings, platform_topics(settings))
    case, number = uuid.uuid4(), "F20260520-0001"
    now = datetime.now(UTC)
    events = [
        event(OwnerAssigned, case, number, 4, department="tech", owner="tech-chen",
              by="routing", reason="least loaded"),
        # No owner on the event: the case's owner (tech-chen) is told, and the supervisor.
        event(ClockBreached, case, number, 7, department="tech", clock="resolution",
              due_at=now - timedelta(minutes=1)),
        event(EscalationRaised, case, number, 8, department="tech", level=2, to_role="head",
              reason="resolution overdue", clock="resolution"),
        event(EscalationRequested, case, number, 9, department="tech", by="tech-chen",
              reason="需要供应商配合", support_needed="联系供应商"),
    ]  # fmt: skip
    await publish_events(settings, events)
    expected = {
        # (recipient, channel) per event version
        4: {("tech-chen", "inbox"), ("tech-chen", "email"), ("tech-chen", "im")},
        7: {("tech-chen", "inbox"), ("tech-chen", "email"), ("tech-chen", "im"),
            ("tech-lead", "inbox"), ("tech-lead", "im")},
        8: {("tech-head", "inbox"), ("tech-head", "email")},
        9: {("tech-lead", "inbox"), ("tech-lead", "im")},
    }  # fmt: skip
    total = sum(len(v) for v in expected.values())
    async with mail_sink() as sink, receivers(Receiver()) as receiver:
        configured = notifying(settings, staff, receiver, sink)
        async with serve(configured, services=("notifications",)) as running:
            await wait_for(lambda: all_settled(settings, total), timeout=30, what="all sent")
            assert states(settings) == {"sent": total}
            assert {(r["event_version"], r["recipient"], r["channel"]) for r in rows(settings)} == {
                (v, who, ch) for v, pairs in expected.items() for who, ch in pairs
            }

            owner_inbox = await inbox(running, configured, "agent", "tech-chen")
            assert len(owner_inbox) == 2
            assert any("已超时" in i["title"] and "请立即处理" in i["body"] for i in owner_inbox)
            lead_inbox = await inbox(running, configured, "supervisor", "tech-lead")
            titles = sorted(i["title"] for i in lead_inbox)
            assert titles[0].startswith("Deadline missed: F20260520-0001")  # in English
            assert titles[1].startswith("Escalation requested")
            assert any("Owner: tech-chen" in i["body"] for i in lead_inbox)
            (head_item,) = await inbox(running, configured, "head", "tech-head")
            assert "升级（第 2 级）" in head_item["title"]
            mark = await running.client.post(
                f"/v1/inbox/{head_item['id']}/read",
                headers=signed_in(configured, "head", ("tech",), username="tech-head"),
            )
            assert mark.status_code == 204
            foreign = await running.client.post(
                f"/v1/inbox/{head_item['id']}/read",
                headers=signed_in(configured, "agent", ("tech",), agent_id="tech-chen"),
            )
            assert foreign.status_code == 404
            assert {r["to"] for r in receiver.requests} == {"im-tech-chen", "im-tech-lead"}
            assert all(r["signed"] for r in receiver.requests)
            assert sorted(m["To"] for m in sink.messages) == sorted(
                [f"tech-chen@{MAIL_DOMAIN}"] * 2 + [f"tech-head@{MAIL_DOMAIN}"]
            )
        requests, mails = len(receiver.requests), len(sink.messages)
        assert requests == 4 and mails == 3

        # Redelivery: Kafka and the stored position both rewound (a crash before either
        # was recorded). Every event is read and planned again; nothing new is sent.
        await rewind_group(settings, "notifications", topics.FEEDBACK_EVENTS)
        with psycopg.connect(settings.database_url) as conn:
            conn.execute("DELETE FROM consumer_positions")
        async with serve(configured, services=("notifications",)):
            await wait_for(lambda: consumed(settings) == 4, timeout=30, what="read again")
            await asyncio.sleep(1.0)  # the sender polls every 0.1 s: time to misbehave
        assert len(rows(settings)) == total and states(settings) == {"sent": total}
        assert len(receiver.requests) == requests and len(sink.messages) == mails
        assert max(receiver.accepted.values()) == 1
        assert len(set(sink.ids())) == len(sink.ids())


async def test_a_failing_receiver_is_retried_and_one_that_never_takes_it_is_a_dead_letter(
    settings: Settings, tmp_path: Path
) -> None:
    staff = staff_file(
        tmp_path, {"flaky": {"im": "im-flaky"}, "broken": {"im": "im-broken"},
                   "refusing": {"im": "im-refusing"}},
    )  # fmt: skip

    def answer(body: dict[str, Any], tries: int) -> int:
        if body["to"] == "im-flaky":
            return 503 if tries <= 2 else 200
        if body["to"] == "im-refusing":
            return 400  # never to be taken: no retry
        return 500

    await ensure_topics(settings, platform_topics(settings))
    cases = {name: uuid.uuid4() for name in ("flaky", "broken", "refusing")}
    await publish_events(
        settings,
        [
            event(OwnerAssigned, case, f"F20260520-000{i}", 4, department="tech", owner=name,
                  by="routing", reason="least loaded")
            for i, (name, case) in enumerate(cases.items(), start=1)
        ],
    )  # fmt: skip
    async with receivers(Receiver(answer=answer)) as receiver:
        configured = notifying(settings, staff, receiver, notify_max_attempts=3)
        async with serve(configured, services=("notifications",)):
            await wait_for(lambda: all_settled(settings, 6), timeout=30, what="settled")
            im = {r["recipient"]: r for r in rows(settings, "channel = 'im'")}
            assert im["flaky"]["state"] == "sent" and im["flaky"]["attempts"] == 3
            assert im["broken"]["state"] == "dead" and im["broken"]["attempts"] == 3
            assert im["refusing"]["state"] == "dead" and im["refusing"]["attempts"] == 1
            assert "gave up after 3 attempts" in im["broken"]["last_error"]
            assert "answered 500" in im["broken"]["last_error"]
            assert "refused" in im["refusing"]["last_error"]
            assert "answered 400" in im["refusing"]["last_error"]
            # Delivered once: three requests under one id, one accepted.
            flaky_key = str(im["flaky"]["id"])
            assert receiver.tries[flaky_key] == 3 and receiver.accepted[flaky_key] == 1
            assert receiver.tries[str(im["broken"]["id"])] == 3
            assert receiver.tries[str(im["refusing"]["id"])] == 1

            def letters() -> list[dict[str, Any]]:
                with psycopg.connect(settings.database_url, row_factory=dict_row) as conn:
                    return conn.execute(
                        "SELECT dead_letter_id, reason, metadata, sealed FROM deadletters "
                        "WHERE source = 'notifications.sender' ORDER BY reason"
                    ).fetchall()

            kept = await wait_for(lambda: len(letters()) == 2 and letters(), timeout=10,
                                  what="dead letters")  # fmt: skip
            assert {k["metadata"]["notification_id"] for k in kept} == {
                str(im["broken"]["id"]),
                str(im["refusing"]["id"]),
            }
            assert all(k["sealed"] and "im-" not in k["reason"] for k in kept)

            async def published() -> list[DeadLetter]:
                found = await dead_letters_on_topic(settings)
                return found if len(found) >= 2 else []

            on_topic = await wait_for(published, timeout=15, what="dead letters published")
            assert {d.dead_letter_id for d in on_topic} == {k["dead_letter_id"] for k in kept}
            assert all(d.payload_encoding == "sealed" for d in on_topic)
    # The inbox copies went through regardless of the IM gateway.
    assert {r["recipient"] for r in rows(settings, "channel = 'inbox' AND state = 'sent'")} == set(
        cases
    )


async def test_a_sender_stopped_mid_batch_and_restarted_sends_everything_once(
    settings: Settings, tmp_path: Path
) -> None:
    staff = staff_file(tmp_path, {"busy": {"im": "im-busy"}})
    await ensure_topics(settings, platform_topics(settings))
    count = 20
    await publish_events(
        settings,
        [
            event(OwnerAssigned, uuid.uuid4(), f"F20260520-{i:04d}", 4, department="tech",
                  owner="busy", by="routing", reason="least loaded")
            for i in range(1, count + 1)
        ],
    )  # fmt: skip
    # A slow gateway and two sends at once: the sender is stopped with most of its
    # claimed batch not started.
    async with receivers(Receiver(delay_s=0.3)) as receiver:
        configured = notifying(
            settings, staff, receiver, notify_concurrency=2, notify_batch_size=count * 2
        )
        async with serve(configured, services=("notifications",)) as running:
            platform = running.platform
            (task,) = [t for t in platform._tasks if t.get_name() == "notifications-sender"]
            await wait_for(lambda: len(receiver.requests) >= 4, timeout=30, what="some sends")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            platform._tasks.remove(task)
            # What it had started finished and is recorded; nothing is left claimed.
            im = rows(settings, "channel = 'im'")
            sent = [r for r in im if r["state"] == "sent"]
            assert 4 <= len(sent) < count, "stopped mid-batch"
            assert {str(r["id"]) for r in sent} == set(receiver.accepted)
            unsent = [r for r in im if r["state"] != "sent"]
            assert all(r["attempts"] == 0 for r in unsent), "claims handed back"
            stopped_at = len(receiver.requests)
            await asyncio.sleep(0.5)
            assert len(receiver.requests) == stopped_at  # it really stopped

            assert platform.notifier is not None
            platform._tasks.append(
                asyncio.create_task(platform.notifier.run(), name="notifications-sender")
            )
            await wait_for(
                lambda: all_settled(settings, count * 2), timeout=30, what="all delivered"
            )
    im = rows(settings, "channel = 'im'")
    assert len(im) == count and all(r["state"] == "sent" for r in im)
    assert set(receiver.accepted) == {str(r["id"]) for r in im}
    # None twice: every id reached the receiver exactly once.
    assert len(receiver.requests) == count
    assert set(receiver.tries.values()) == {1}


async def test_a_send_whose_mark_is_lost_goes_again_under_the_same_id(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one duplicate window: sent, but `sent` not recorded. After the claim runs out
    the message goes again with the same Idempotency-Key, for the receiver to drop."""
    staff = staff_file(tmp_path, {"owner": {"im": "im-owner"}})
    await ensure_topics(settings, platform_topics(settings))
    await publish_events(
        settings,
        [event(OwnerAssigned, uuid.uuid4(), "F20260520-0001", 4, department="tech",
               owner="owner", by="routing", reason="least loaded")],
    )  # fmt: skip
    original = store.mark_sent
    calls: Counter[uuid.UUID] = Counter()

    async def mark_sent(conn: Any, row_id: uuid.UUID, via: str) -> bool:
        calls[row_id] += 1
        if via == "im" and calls[row_id] <= MARK_TRIES:  # every try of the first attempt
            raise psycopg.OperationalError("the database went away")
        return await original(conn, row_id, via)

    monkeypatch.setattr(store, "mark_sent", mark_sent)
    async with receivers(Receiver()) as receiver:
        # The shortest claim a 1 s send allows (three sends' time and 5 s).
        configured = notifying(
            settings, staff, receiver, notify_send_timeout_s=1.0, notify_lease_s=1.0
        )
        async with serve(configured, services=("notifications",)):
            await wait_for(lambda: all_settled(settings, 2), timeout=30, what="sent")
    (im,) = rows(settings, "channel = 'im'")
    assert im["state"] == "sent" and im["attempts"] == 2
    assert receiver.tries == {str(im["id"]): 2}  # twice, under one id
    assert {r["key"] for r in receiver.requests} == {str(im["id"])}
