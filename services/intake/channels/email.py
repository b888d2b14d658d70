"""Email: a real SMTP listener (aiosmtpd) and `.eml` import.

MIME is parsed with the standard library: plain and HTML bodies, quoted replies stripped,
GBK/GB18030/UTF-8 bodies and RFC 2047 encoded subjects and names, attachments kept as
evidence. The `Message-ID` is the channel reference. A reply to an earlier feedback (by
`In-Reply-To`/`References`, or the feedback number in the subject) goes to that case as
correspondence instead of becoming new feedback.
"""

from __future__ import annotations

import asyncio
import email
import email.header
import email.message
import email.utils
import html.parser
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from contracts.codes import Channel
from contracts.events import FEEDBACK_NUMBER_PATTERN, Evidence
from services.intake.deadletters import DeadLetters
from services.intake.evidence import EvidenceRefused, EvidenceStore
from services.intake.pii_vault import Contact
from services.intake.registration import Registrar, Submission, UnknownFeedback

log = logging.getLogger(__name__)

CHINESE_CHARSETS = {"gb2312", "gbk", "gb18030", "x-gbk", "cp936", "euc-cn"}
NUMBER_IN_TEXT = re.compile(FEEDBACK_NUMBER_PATTERN.strip("^$"))
QUOTE_STARTS = re.compile(
    r"^\s*(-{2,}\s*(原始邮件|Original Message)\s*-{2,}|On .{1,200} wrote:\s*$|在.{1,200}写道[:：]\s*$|"
    r"发件人[:：]|From:\s.+@)",
    re.IGNORECASE,
)
SUPPLIED_FIELDS = {
    "product_model": re.compile(r"(?:产品)?型号\s*[:：]\s*([^\s，。,;；]{1,60})"),
    "purchase_date": re.compile(r"购买日期\s*[:：]\s*(\d{4}-\d{2}-\d{2})"),
}


class UnreadableEmail(ValueError):
    pass


@dataclass
class ParsedEmail:
    message_id: str | None
    subject: str
    sender_name: str | None
    sender_email: str | None
    received_at: datetime
    body: str
    references: list[str]
    attachments: list[tuple[bytes, str | None, str]] = field(default_factory=list)


def decode_header_text(value: str | None) -> str:
    """RFC 2047 words in any charset; GB2312-labelled text decoded as GB18030 (a superset
    that also covers the characters mail clients put there anyway)."""
    if not value:
        return ""
    parts = []
    for chunk, charset in email.header.decode_header(value):
        if isinstance(chunk, bytes):
            parts.append(_decode(chunk, charset))
        else:
            parts.append(chunk)
    return "".join(parts).strip()


def _decode(data: bytes, charset: str | None) -> str:
    name = (charset or "utf-8").lower()
    if name in CHINESE_CHARSETS:
        name = "gb18030"
    try:
        return data.decode(name, errors="replace")
    except LookupError:
        return data.decode("utf-8", errors="replace")


class _TextOfHtml(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in ("br", "p", "div", "tr", "li"):
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    parser = _TextOfHtml()
    parser.feed(markup)
    return re.sub(r"\n\s*\n+", "\n", "".join(parser.parts)).strip()


def strip_quoted(text: str) -> str:
    """Keep what the customer wrote now, not the history quoted below it."""
    kept = []
    for line in text.splitlines():
        if QUOTE_STARTS.match(line):
            break
        if line.lstrip().startswith(">"):
            continue
        kept.append(line)
    return "\n".join(kept).strip()


def parse_email(raw: bytes) -> ParsedEmail:
    message = email.message_from_bytes(raw)
    if not message.keys():
        raise UnreadableEmail("no headers: not an email")
    sender_name, sender_email = email.utils.parseaddr(decode_header_text(message.get("From")))
    plain: str | None = None
    markup: str | None = None
    attachments: list[tuple[bytes, str | None, str]] = []
    for part in message.walk():
        if part.is_multipart():
            continue
        content_type = part.get_content_type()
        disposition = (part.get("Content-Disposition") or "").lower()
        filename = part.get_filename()
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        if "attachment" in disposition or (
            filename and content_type not in ("text/plain", "text/html")
        ):
            attachments.append(
                (payload, decode_header_text(filename) if filename else None, content_type)
            )
        elif content_type == "text/plain" and plain is None:
            plain = _decode(payload, part.get_content_charset())
        elif content_type == "text/html" and markup is None:
            markup = _decode(payload, part.get_content_charset())
    body = plain if plain and plain.strip() else html_to_text(markup or "")
    body = strip_quoted(body)
    subject = decode_header_text(message.get("Subject"))
    if not body and not subject:
        raise UnreadableEmail("the email has neither text nor subject")
    date = message.get("Date")
    try:
        received_at = email.utils.parsedate_to_datetime(date) if date else datetime.now(UTC)
        if received_at.tzinfo is None:
            received_at = received_at.replace(tzinfo=UTC)
    except (TypeError, ValueError):
        received_at = datetime.now(UTC)
    references = (message.get("In-Reply-To") or "").split() + (
        message.get("References") or ""
    ).split()
    return ParsedEmail(
        message_id=(message.get("Message-ID") or "").strip() or None,
        subject=subject,
        sender_name=sender_name or None,
        sender_email=sender_email or None,
        received_at=received_at,
        body=body,
        references=[r.strip() for r in references if r.strip()],
        attachments=attachments,
    )


def supplied_fields(text: str) -> dict[str, str]:
    found = {}
    for name, pattern in SUPPLIED_FIELDS.items():
        match = pattern.search(text)
        if match:
            found[name] = match.group(1)
    return found


class EmailIntake:
    """Registers an email, or files it with the case it replies to."""

    def __init__(
        self, registrar: Registrar, evidence: EvidenceStore, deadletters: DeadLetters
    ) -> None:
        self.registrar = registrar
        self.evidence = evidence
        self.deadletters = deadletters

    async def receive(self, raw: bytes, receiver: str = "smtp") -> str:
        """Returns the feedback number it was registered under or filed with."""
        try:
            parsed = parse_email(raw)
            kept = await self._keep_attachments(parsed)
        except (UnreadableEmail, EvidenceRefused) as error:
            await self.deadletters.keep("email", str(error), raw, {"receiver": receiver})
            return "dead-letter"
        text = parsed.body or parsed.subject
        earlier = await self.registrar.find_by_reference(Channel.email, parsed.references)
        if earlier is None:
            subject_number = NUMBER_IN_TEXT.search(parsed.subject)
            earlier = subject_number.group(0) if subject_number else None
        if earlier is not None:
            try:
                await self.registrar.correspond(
                    earlier,
                    Channel.email,
                    text,
                    supplied=supplied_fields(text),
                    evidence=kept,
                    channel_reference=parsed.message_id,
                    received_at=parsed.received_at,
                    durable=True,
                )
                return earlier
            except UnknownFeedback:
                pass  # a number that is not ours: treat the email as new feedback
        if not parsed.sender_email:
            await self.deadletters.keep("email", "no sender address to reach the customer", raw)
            return "dead-letter"
        description = f"{parsed.subject}\n{parsed.body}".strip() if parsed.subject else parsed.body
        submission = Submission(
            channel=Channel.email,
            description=description[:5000],
            contact=Contact(name=parsed.sender_name, email=parsed.sender_email),
            receiver=receiver,
            received_at=parsed.received_at,
            channel_reference=parsed.message_id,
            evidence=kept,
            **supplied_fields(parsed.body),
        )
        accepted = await self.registrar.register_durably(submission)
        return accepted.feedback_number

    async def _keep_attachments(self, parsed: ParsedEmail) -> tuple[Evidence, ...]:
        if len(parsed.attachments) > self.evidence.max_count:
            raise EvidenceRefused(
                f"{len(parsed.attachments)} attachments; at most {self.evidence.max_count}"
            )
        return tuple(
            [await self.evidence.put(data, name, kind) for data, name, kind in parsed.attachments]
        )


class _SmtpHandler:
    def __init__(self, intake: EmailIntake) -> None:
        self.intake = intake
        self.received = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or (
            envelope.content
            if isinstance(envelope.content, bytes)
            else str(envelope.content or "").encode()
        )
        try:
            number = await self.intake.receive(raw, receiver="smtp")
        except Exception:
            log.exception("email not accepted")
            return "451 Requested action aborted: try again later"
        self.received += 1
        return f"250 OK {number}"


async def start_smtp(
    intake: EmailIntake, host: str, port: int, max_bytes: int
) -> asyncio.AbstractServer:
    """A real SMTP listener on this event loop."""
    handler = _SmtpHandler(intake)
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        partial(SMTP, handler, data_size_limit=max_bytes, decode_data=False, enable_SMTPUTF8=True),
        host=host,
        port=port,
        # Several intake workers may listen on one port; the kernel spreads connections.
        reuse_port=True,
    )
