"""Hostile mail over real SMTP and `.eml` import, on real Kafka and PostgreSQL: nothing a
sender writes wedges the read side, is lost, or makes its sender retry forever; and a reply
joins a case only when it proves it belongs there."""

from __future__ import annotations

import asyncio
import smtplib
from datetime import UTC, datetime, timedelta
from email.utils import make_msgid
from typing import Any

import httpx
import pytest

from services.common.settings import Settings
from services.intake.channels.email import record_sent
from tests.conftest import free_port, registered_row, serve

pytestmark = pytest.mark.integration


@pytest.fixture
def mail_settings(settings: Settings, tmp_path: Any) -> Settings:
    return settings.model_copy(
        update={"smtp_port": free_port(), "evidence_dir": tmp_path / "evidence"}
    )


def raw_mail(
    body: str = "洗衣机漏水，地板都湿了",
    *,
    sender: str = "li.na@example.com",
    subject: str = "投诉：洗衣机漏水",
    **headers: str,
) -> bytes:
    """Headers exactly as written (`_` in a name stands for `-`): the library would
    normalise a Date or refuse a NUL, and these mails are meant to be wrong."""
    written = {"From": f"Li Na <{sender}>", "To": "service@company.example", "Subject": subject}
    written |= {"Message-ID": make_msgid(domain="example.com")}
    written |= {name.replace("_", "-"): value for name, value in headers.items()}
    head = "".join(f"{name}: {value}\r\n" for name, value in written.items())
    return (head + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n").encode()


def smtp_send(settings: Settings, raw: bytes) -> tuple[int, str]:
    """One delivery over real SMTP: the DATA reply code and the last word of its text."""
    with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=30) as smtp:
        smtp.ehlo()
        smtp.mail("sender@example.com")
        smtp.rcpt("service@company.example")
        code, answer = smtp.data(raw)
        return code, answer.decode().split()[-1]


async def send(settings: Settings, raw: bytes) -> tuple[int, str]:
    return await asyncio.to_thread(smtp_send, settings, raw)


async def import_eml(client: httpx.AsyncClient, raw: bytes) -> dict[str, Any]:
    response = await client.post(
        "/v1/channels/email/eml", files={"file": ("mail.eml", raw, "message/rfc822")}
    )
    assert response.status_code == 202, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def kept_letters(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    listed = await client.get("/v1/deadletters", params={"all": "true", "limit": 1000})
    assert listed.status_code == 200, listed.text
    return {letter["dead_letter_id"]: letter for letter in listed.json()}


async def test_nul_is_cleaned_registered_and_the_read_side_keeps_going(
    mail_settings: Settings,
) -> None:
    async with serve(mail_settings) as running:
        client = running.client
        code, by_smtp = await send(mail_settings, raw_mail("热水器\x00不加热"))
        assert code == 250 and by_smtp.startswith("F"), by_smtp
        imported = await import_eml(
            client, raw_mail("冰箱\x00不制冷", subject="=?utf-8?q?=E5=86=B0=00?=")
        )
        assert imported["status"] == "accepted" and imported.get("original_kept_as"), imported
        by_eml = imported["feedback_number"]

        # Fed after the NUL mails: it must still become readable (nothing wedged).
        code, valid = await send(mail_settings, raw_mail("空调不制冷", sender="wang@example.com"))
        assert code == 250
        await registered_row(client, valid, channel="email")
        row = await registered_row(client, by_smtp)
        assert "\x00" not in row["description"] and "热水器不加热" in row["description"]
        row = await registered_row(client, by_eml)
        assert row["description"].startswith("冰") and "冰箱不制冷" in row["description"]

        # The originals are kept, settled: listed with all=true, not offered for replay.
        letters = await kept_letters(client)
        original = letters[imported["original_kept_as"]]
        assert original["replay_result"] == f"registered cleaned as {by_eml}"
        assert "NUL" in original["reason"] and original["replayed_at"] is not None
        assert any(
            letter["replay_result"] == f"registered cleaned as {by_smtp}"
            for letter in letters.values()
        )
        assert not (await client.get("/v1/deadletters")).json()


async def test_a_date_outside_the_window_takes_the_receipt_time(mail_settings: Settings) -> None:
    async with serve(mail_settings) as running:
        client = running.client
        numbers = []
        for date in ("Fri, 31 Dec 9999 23:59:59 -1200", "Thu, 01 Jan 2099 00:00:00 +0000"):
            code, number = await send(mail_settings, raw_mail(Date=date))
            assert code == 250 and number.startswith("F"), number
            numbers.append(number)
        imported = await import_eml(client, raw_mail(Date="Mon, 01 Jan 0001 00:00:00 +1400"))
        assert imported["status"] == "accepted" and imported["original_kept_as"]
        numbers.append(imported["feedback_number"])
        now = datetime.now(UTC)
        for number in numbers:
            row = await registered_row(client, number)  # GET /v1/feedback/{n} answers 200
            received = datetime.fromisoformat(row["received_at"])
            assert abs(received - now) < timedelta(minutes=2), (number, received)
        listed = await client.get("/v1/registrations", params={"channel": "email"})
        assert listed.status_code == 200 and len(listed.json()["items"]) == 3
        letters = await kept_letters(client)
        assert (
            sum("the receipt time is used" in letter["reason"] for letter in letters.values()) == 3
        )


def nested(depth: int) -> bytes:
    """A multipart nested `depth` deep, written by hand: the library's own writer recurses."""
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        for i in range(depth)
    )
    closing = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(depth)))
    return (
        b"From: deep@example.com\r\nSubject: deep\r\nMIME-Version: 1.0\r\n"
        + opening
        + b"Content-Type: text/plain\r\n\r\nhello\r\n"
        + closing
    )


async def test_unreadable_mail_is_a_dead_letter_and_never_retried(mail_settings: Settings) -> None:
    async with serve(mail_settings) as running:
        client = running.client
        # Over SMTP: accepted as a dead letter (250), every time, never 451.
        for _ in range(2):
            assert await send(mail_settings, nested(2000)) == (250, "dead-letter")
        assert await send(mail_settings, raw_mail(From="not an address")) == (250, "dead-letter")
        kept = await import_eml(client, nested(2000))
        assert kept["status"] == "kept as a dead letter"
        letters = await kept_letters(client)
        assert "nested" in letters[kept["dead_letter_id"]]["reason"]
        unsettled = (await client.get("/v1/deadletters")).json()
        assert len(unsettled) == 4 and sum("nested" in d["reason"] for d in unsettled) == 3
        replayed = await client.post(f"/v1/deadletters/{kept['dead_letter_id']}/replay")
        assert replayed.status_code == 409 and "nested" in replayed.text
        assert len((await client.get("/v1/deadletters")).json()) == 4  # no new letter

        # A Message-ID over the contract's 500 characters still registers, by its hash,
        # and the same mail again is recognised as the same delivery.
        long_id = "<" + "x" * 600 + "@example.com>"
        first = await import_eml(client, raw_mail(Message_ID=long_id))
        assert first["status"] == "accepted", first
        row = await registered_row(client, first["feedback_number"])
        assert row["channel_reference"].startswith("sha256:")
        code, again = await send(mail_settings, raw_mail(Message_ID=long_id))
        assert (code, again) == (250, first["feedback_number"])


async def correspondence(client: httpx.AsyncClient, number: str) -> int:
    row = (await client.get(f"/v1/feedback/{number}")).json()
    return int(row["correspondence_count"])


async def test_a_reply_joins_a_case_only_when_it_proves_it(mail_settings: Settings) -> None:
    async with serve(mail_settings) as running:
        client = running.client
        original_id = make_msgid(domain="example.com")
        # A product fault without the model: the case waits for it (a leak that wets the
        # floor would be urgent property damage, which never waits).
        complaint = raw_mail(
            "洗衣机脱水的时候噪音特别大，像拖拉机一样",
            subject="投诉：洗衣机噪音大",
            Message_ID=original_id,
        )
        code, case = await send(mail_settings, complaint)
        assert code == 250
        await registered_row(client, case, status="pending_info")

        # A stranger naming the case in the subject, or quoting the mail that registered
        # it, opens feedback of their own and is not linked to the case.
        _, stranger = await send(
            mail_settings, raw_mail("我也要投诉", sender="x@evil.example", subject=f"Re: {case}")
        )
        _, quoting = await send(
            mail_settings,
            raw_mail(
                "看看这个", sender="x@evil.example", subject="Re: 投诉", In_Reply_To=original_id
            ),
        )
        assert case not in (stranger, quoting) and stranger != quoting
        row = await registered_row(client, stranger)
        assert row["related_feedback"] is None and row["correspondence_count"] == 0
        await registered_row(client, quoting, related_feedback=None)
        assert await correspondence(client, case) == 0

        # The customer's own reply, by number in the subject only, joins.
        _, own = await send(mail_settings, raw_mail("型号：W10", subject=f"Re: {case} 补充"))
        assert own == case
        await registered_row(client, case, correspondence_count=1)

        # A reply to a mail the platform sent about the case joins, from any address.
        notice_id = make_msgid(domain="company.example")
        assert running.platform.pool is not None
        await record_sent(running.platform.pool, notice_id, case)
        _, helper = await send(
            mail_settings,
            raw_mail("我是她丈夫，补充一下", sender="husband@example.org", In_Reply_To=notice_id),
        )
        assert helper == case
        await registered_row(client, case, correspondence_count=2)
        assert await correspondence(client, case) == 2
