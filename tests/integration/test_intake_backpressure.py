"""Intake applies backpressure: registrations waiting for a batch are bounded
(`intake_max_pending`); beyond it every submitting path refuses at once (HTTP 503 with
Retry-After, SMTP 451) and counts the refusal, and what it did answer 202 is delivered.

The batches are held up for real: the test holds an EXCLUSIVE lock on the claims table,
so every batch's one INSERT waits in PostgreSQL, the in-flight slots fill, then the queue."""

from __future__ import annotations

import asyncio
import re
import smtplib
from email.message import EmailMessage
from email.utils import make_msgid
from functools import partial
from pathlib import Path

import httpx
import psycopg
import pytest

from services.common.settings import Settings
from services.intake.registration import IntakeBusy, Registrar
from tests.conftest import free_port, registered_row, serve, wait_for, web_form

pytestmark = pytest.mark.integration

MAX_PENDING = 5
REFUSED_METRIC = re.compile(r'^feedback_intake_refused_busy_total\{channel="(\w+)"\} (\S+)$', re.M)


def _refused_so_far(metrics_text: str) -> dict[str, float]:
    return {channel: float(n) for channel, n in REFUSED_METRIC.findall(metrics_text)}


async def _lock_waiters(settings: Settings) -> int:
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        cursor = await conn.execute(
            # Batches' claims only: the reconcile loop's DELETE may wait on the lock too.
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE '%%INSERT INTO intake_deduplication%%'"
        )
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


def _mail(subject: str) -> EmailMessage:
    mail = EmailMessage()
    mail["Subject"] = subject
    mail["From"] = "buyer@example.com"
    mail["To"] = "service@company.example"
    mail["Message-ID"] = make_msgid()
    mail.set_content("订单说好三天送达，现在已经第七天了还没有收到货")
    return mail


def _smtp_answer(settings: Settings, mail: EmailMessage) -> tuple[int, str]:
    with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=30) as smtp:
        smtp.ehlo()
        smtp.mail("buyer@example.com")
        smtp.rcpt("service@company.example")
        try:
            code, answer = smtp.data(mail.as_bytes())
        except smtplib.SMTPDataError as refused:
            error = refused.smtp_error
            return refused.smtp_code, error.decode() if isinstance(error, bytes) else error
        return code, answer.decode()


async def test_full_queue_refuses_with_retry_after_and_delivers_what_it_accepted(
    settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(
        update={
            "intake_max_pending": MAX_PENDING,
            "smtp_port": free_port(),
            "evidence_dir": tmp_path / "evidence",
        }
    )
    async with serve(settings) as running:
        client = running.client
        registrar = running.platform.registrar
        assert isinstance(registrar, Registrar)
        # Warm up: tables, topics and consumers are there before the lock is taken.
        warm = await client.post("/v1/feedback", json=web_form("预热：洗衣机异响"))
        assert warm.status_code == 202, warm.text
        refused_before = _refused_so_far((await client.get("/metrics")).text)

        locker = await psycopg.AsyncConnection.connect(settings.database_url)
        waiting: list[asyncio.Task[httpx.Response]] = []
        try:
            await locker.execute("LOCK TABLE intake_deduplication IN EXCLUSIVE MODE")

            def submit(i: int) -> asyncio.Task[httpx.Response]:
                return asyncio.create_task(
                    client.post("/v1/feedback", json=web_form(f"第{i}条：冰箱不制冷"))
                )

            # One request at a time, each its own batch stuck on the lock: the slots fill.
            for i in range(Registrar.BATCHES_IN_FLIGHT):
                waiting.append(submit(i))
                await wait_for(
                    partial(_lock_waiters_are, settings, i + 1),
                    timeout=15,
                    what=f"{i + 1} batches waiting on the lock",
                )
            # Then the batch loop takes one more (it waits for a slot) and the queue fills.
            # Paced so each lands before the next; one sent as the queue filled is refused.
            for i in range(len(waiting), len(waiting) + 3 * MAX_PENDING):
                if registrar.waiting == MAX_PENDING:
                    break
                waiting.append(submit(i))
                await asyncio.sleep(0.1)
            await wait_for(
                lambda: registrar.waiting == MAX_PENDING, timeout=15, what="the queue full"
            )

            refused = await client.post("/v1/feedback", json=web_form("队列已满时的反馈"))
            assert refused.status_code == 503, refused.text
            assert refused.headers["Retry-After"] == str(IntakeBusy.RETRY_AFTER_S)
            assert "busy" in refused.json()["detail"]

            eml = await client.post(
                "/v1/channels/email/eml",
                files={"file": ("mail.eml", _mail("导入的邮件").as_bytes(), "message/rfc822")},
            )
            assert eml.status_code == 503, eml.text
            assert eml.headers["Retry-After"] == str(IntakeBusy.RETRY_AFTER_S)

            csv_text = (
                "接收时间,客户名称/联系人,联系方式,问题描述,接收人\n"
                "2024-05-20 09:30,张伟,13812345678,吸尘器使用三天后无法启动,门店-王\n"
            ).encode()
            batch = await client.post(
                "/v1/channels/batch/store", files={"file": ("登记表.csv", csv_text, "text/csv")}
            )
            assert batch.status_code == 503, batch.text
            assert batch.headers["Retry-After"] == str(IntakeBusy.RETRY_AFTER_S)
            # A file says how far it got (here nowhere) and that importing it again is safe.
            assert "0 row(s) of this file were registered" in batch.json()["detail"]

            code, answer = await asyncio.to_thread(_smtp_answer, settings, _mail("SMTP 来信"))
            assert code == 451, answer
            print(f"queue full at {MAX_PENDING}: web 503, eml 503, batch 503, SMTP {code}")
        finally:
            await locker.rollback()  # the held batches go on
            await locker.close()

        answered = await asyncio.gather(*waiting)
        busy = [a for a in answered if a.status_code == 503 and "busy" in a.text]
        answers = [a for a in answered if a.status_code == 202]
        assert len(answers) + len(busy) == len(waiting), [a.text for a in answered]
        assert len(answers) >= Registrar.BATCHES_IN_FLIGHT + MAX_PENDING
        refused_after = _refused_so_far((await client.get("/metrics")).text)
        counted = {
            channel: refused_after.get(channel, 0) - refused_before.get(channel, 0)
            for channel in refused_after
        }
        print(f"refusals counted: {counted}")
        assert counted.get("web_form") == 1 + len(busy)
        assert counted.get("email") == 2  # the .eml import and the SMTP mail
        assert counted.get("store") == 1  # the batch's one row

        # Everything answered 202 is delivered; nothing refused was registered.
        for response in answers:
            await registered_row(client, response.json()["feedback_number"])
        with psycopg.connect(settings.database_url) as conn:
            registry = conn.execute("SELECT count(*) FROM intake_registry").fetchone()
            outbox = conn.execute("SELECT count(*) FROM intake_outbox").fetchone()
        assert registry == (len(answers) + 1,), "a refused submission was registered"
        assert outbox == (0,)
        print(f"accepted {len(answers)} while the batches were held, all delivered")


async def _lock_waiters_are(settings: Settings, expected: int) -> bool:
    return await _lock_waiters(settings) == expected
