"""Parsing hostile mail: every text cleaned, impossible dates and overlong Message-IDs
replaced (with the reason), nesting bounded; never an exception other than UnreadableEmail."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import pytest

from services.common.boundary import text_flaw
from services.intake.channels.email import (
    MAX_MIME_DEPTH,
    UnreadableEmail,
    bounded_reference,
    parse_email,
)


def mail(body: str = "洗衣机漏水", **headers: str) -> bytes:
    """A mail whose headers are written exactly as given (the library would normalise a
    Date, for one); `_` in a name stands for `-`."""
    written = {"From": "李娜 <li.na@example.com>", "Subject": "投诉"}
    written.update({name.replace("_", "-"): value for name, value in headers.items()})
    message = EmailMessage()
    message.set_content(body)
    head = "".join(f"{name}: {value}\r\n" for name, value in written.items())
    return head.encode() + message.as_bytes()


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


def test_nul_and_controls_are_cleaned_everywhere_and_reported() -> None:
    message = EmailMessage()
    message.set_content("打印机\x00坏了\x1b")
    message.add_attachment(
        b"%PDF-1.4", maintype="application", subtype="pdf", filename="inv\x00oice.pdf"
    )
    head = (
        "From: =?utf-8?q?=E6=9D=8E=00?= <li.na@example.com>\r\n"
        "Subject: =?utf-8?q?=E6=8A=95=00=E8=AF=89?=\r\n"
        "Message-ID: <a\x00b@example.com>\r\nIn-Reply-To: <r\x00@x>\r\n"
    )
    parsed = parse_email(head.encode() + message.as_bytes())
    texts = [parsed.body, parsed.subject, parsed.sender_name or "", parsed.message_id or ""]
    texts += parsed.references + [name or "" for _, name, _ in parsed.attachments]
    assert all(text_flaw(text) is None for text in texts), texts
    assert parsed.body == "打印机坏了" and parsed.subject == "投诉"
    assert parsed.message_id == "<ab@example.com>" and parsed.references == ["<r@x>"]
    assert parsed.attachments[0][1] == "invoice.pdf"
    reported = " | ".join(parsed.repairs)
    for what in ("body", "Subject", "From", "Message-ID", "In-Reply-To", "attachment filename"):
        assert what in reported


def test_a_clean_mail_reports_no_repairs() -> None:
    parsed = parse_email(mail(Date="Wed, 20 May 2024 09:30:00 +0800"))
    assert parsed.repairs == []
    assert parsed.received_at == datetime(2024, 5, 20, 1, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    "date",
    [
        "Fri, 31 Dec 9999 23:59:59 -1200",
        "Thu, 01 Jan 2099 00:00:00 +0000",
        "Mon, 01 Jan 0001 00:00:00 +1400",  # Python would read this as 2001
        "Fri, 01 Jan 1999 00:00:00 +0000",
        "Mon, 01 Jan 2020 00:00:00 +9999",
        "not a date at all",
    ],
)
def test_a_date_outside_the_window_gives_way_to_the_receipt_time(date: str) -> None:
    parsed = parse_email(mail(Date=date))
    assert parsed.received_at is None
    assert len(parsed.repairs) == 1 and "the receipt time is used" in parsed.repairs[0]


def test_a_date_just_now_is_kept() -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    parsed = parse_email(mail(Date=now.strftime("%a, %d %b %Y %H:%M:%S +0000")))
    assert parsed.received_at == now and parsed.repairs == []
    ahead = now + timedelta(days=1)
    later = parse_email(mail(Date=ahead.strftime("%a, %d %b %Y %H:%M:%S +0000")))
    assert later.received_at is None


def test_an_overlong_message_id_is_kept_as_its_hash_and_replies_still_match_it() -> None:
    long_id = "<" + "x" * 600 + "@example.com>"
    parsed = parse_email(mail(Message_ID=long_id))
    assert parsed.message_id == bounded_reference(long_id)
    assert parsed.message_id is not None and parsed.message_id.startswith("sha256:")
    assert len(parsed.message_id) <= 200 and "Message-ID" in parsed.repairs[0]
    reply = parse_email(mail(In_Reply_To=long_id, References=f"<a@b> {long_id}"))
    assert reply.references == [parsed.message_id, "<a@b>"]


def test_references_are_bounded_in_number() -> None:
    many = " ".join(f"<{i}@example.com>" for i in range(5000))
    assert len(parse_email(mail(References=many)).references) == 100


def test_deep_nesting_is_refused_without_recursion_error() -> None:
    with pytest.raises(UnreadableEmail, match="nested"):
        parse_email(nested(2000))
    with pytest.raises(UnreadableEmail, match="nested"):
        parse_email(nested(MAX_MIME_DEPTH + 1))
    assert parse_email(nested(MAX_MIME_DEPTH - 1)).body == "hello"


@pytest.mark.parametrize(
    "raw",
    [
        # A codec that refuses errors="replace".
        b"From: a@example.com\r\nSubject: x\r\nContent-Type: text/plain; charset=idna\r\n\r\n\xff\r\n",
        # Base64 that does not decode, in an encoded word and in a body.
        b"From: a@example.com\r\nSubject: =?utf-8?b?!!!?=\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8\r\n",
        # An unknown charset label and raw 8-bit headers.
        b"From: \xe6\x9d\x8e <a@example.com>\r\nSubject: \xe6\x8a\x95\xe8\xaf\x89\r\n"
        b"Message-ID: <\xff@x>\r\nContent-Type: text/plain; charset=no-such\r\n\r\nbody\r\n",
    ],
)
def test_odd_encodings_are_read_not_raised(raw: bytes) -> None:
    parsed = parse_email(raw)
    for text in (parsed.body, parsed.subject, parsed.sender_name or "", parsed.message_id or ""):
        assert text_flaw(text) is None


def test_nothing_but_nul_is_unreadable() -> None:
    with pytest.raises(UnreadableEmail, match="neither text nor subject"):
        parse_email(b"From: a@example.com\r\nSubject: \x00\r\n\r\n\x00\x00\r\n")
