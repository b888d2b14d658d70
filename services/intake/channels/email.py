"""Email: a real SMTP listener (aiosmtpd) and `.eml` import.

MIME is parsed with the standard library: plain and HTML bodies, quoted replies stripped,
GBK/GB18030/UTF-8 bodies and RFC 2047 encoded subjects and names, attachments kept as
evidence. The `Message-ID` is the channel reference. A reply to an earlier feedback (by
`In-Reply-To`/`References`, or the feedback number in the subject) goes to that case as
correspondence instead of becoming new feedback, but only when it proves it belongs there
(see `EmailIntake._proven_case`): numbers are sequential and anyone can quote them.

Mail cannot be asked again, so nothing a sender writes is refused outright: text is cleaned
(`boundary.clean_text`), an impossible `Date` gives way to the receipt time and an overlong
Message-ID to its hash, and the original is kept as a settled dead letter. What cannot be
read at all becomes a dead letter and the sender is told it was accepted; only transient
faults (database or bus away) ask it to retry.
"""

from __future__ import annotations

import asyncio
import email
import email.errors
import email.header
import email.message
import email.utils
import hashlib
import html.parser
import logging
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any
from uuid import UUID

import psycopg
from aiosmtpd.smtp import SMTP, Envelope, Session
from psycopg_pool import AsyncConnectionPool
from pydantic import ValidationError

from contracts.codes import Channel
from contracts.events import FEEDBACK_NUMBER_PATTERN, Evidence
from services.common.boundary import (
    clean_text,
    excerpt,
    is_blank,
    sane_or_now,
    text_flaw,
    time_flaw,
)
from services.intake.deadletters import DeadLetters
from services.intake.evidence import EvidenceRefused, EvidenceStore
from services.intake.pii_vault import Contact
from services.intake.registration import (
    MAX_REFERENCE_CHARS,
    DuplicateInProgress,
    IntakeBusy,
    IntakeUnavailable,
    InvalidSubmission,
    Registrar,
    Submission,
    UnknownFeedback,
    cleaned,
)

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
# The parser and `walk` recurse once per level: a mail nested thousands deep would end in
# RecursionError. Real mail nests a handful of levels (a forward of a signed reply...).
MAX_MIME_DEPTH = 50
# Enough for any real thread; a References header of thousands is only a cost.
MAX_REFERENCES = 100
MAX_SUBJECT_NUMBERS = 5
MAX_CORRESPONDENCE_CHARS = 20_000  # what CustomerCorrespondence.text holds
MESSAGE_ID = re.compile(r"<[^<>\s]+>")
# Python reads a four-digit year below 100 ("0001") as a two-digit one (2001); RFC 5322
# takes four digits literally.
WRITTEN_YEAR = re.compile(r"\b\d{1,2}\s+[A-Za-z]{3,}\s+(\d+)\b")
# Faults that pass: the sender should try again later (SMTP 451, HTTP 503). Anything else
# a mail causes would fail the same way on every retry, so it becomes a dead letter.
TRANSIENT_FAULTS: tuple[type[Exception], ...] = (
    IntakeUnavailable,
    DuplicateInProgress,
    psycopg.OperationalError,
    psycopg.InterfaceError,
    OSError,
)


class UnreadableEmail(ValueError):
    pass


@dataclass
class ParsedEmail:
    message_id: str | None
    subject: str
    sender_name: str | None
    sender_email: str | None
    # None: the mail's Date is missing or impossible, so the receipt time stands.
    received_at: datetime | None
    body: str
    references: list[str]
    attachments: list[tuple[bytes, str | None, str]] = field(default_factory=list)
    # What was changed to take the mail (cleaned text, a Date replaced...): the original is
    # then kept as a settled dead letter.
    repairs: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Received:
    """What became of one mail."""

    # Registered under, or (joined) filed with; None: kept as a dead letter.
    feedback_number: str | None = None
    joined: bool = False
    # The kept original: the unreadable mail, or the one registered cleaned.
    dead_letter_id: UUID | None = None
    # Why it is a dead letter, or what was repaired to take it.
    reason: str | None = None


class _DepthBoundMessage(email.message.Message):
    """A MIME part that knows how deep it is; the parser attaches each part to its parent
    as it opens it, so a mail nested too deep is refused before the recursion gets deep."""

    depth = 0

    def attach(self, payload: Any) -> None:
        if isinstance(payload, _DepthBoundMessage):
            payload.depth = self.depth + 1
            if payload.depth > MAX_MIME_DEPTH:
                raise UnreadableEmail(f"MIME parts nested more than {MAX_MIME_DEPTH} deep")
        super().attach(payload)


def decode_header_text(value: Any) -> str:
    """RFC 2047 words in any charset; GB2312-labelled text decoded as GB18030 (a superset
    that also covers the characters mail clients put there anyway). Raw 8-bit headers
    (which the parser hands over as `Header` objects) are read as UTF-8."""
    if not value:
        return ""
    try:
        chunks = email.header.decode_header(value)
    except email.errors.HeaderParseError:
        return str(value).strip()
    parts = []
    for chunk, charset in chunks:
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
    except (LookupError, UnicodeError):
        # Unknown labels, and codecs that refuse "replace" (idna): read it as UTF-8.
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


def bounded_reference(value: str) -> str:
    """A Message-ID as a channel reference: one too long to keep becomes its hash, the same
    for every delivery of the mail and for every reply that quotes it."""
    if len(value) <= MAX_REFERENCE_CHARS:
        return value
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def parse_email(raw: bytes) -> ParsedEmail:
    """Every text taken from the mail is cleaned; what was cleaned is in `repairs`."""
    message = email.message_from_bytes(raw, _class=_DepthBoundMessage)
    if not message.keys():
        raise UnreadableEmail("no headers: not an email")
    repairs: list[str] = []

    def clean(value: str, what: str) -> str:
        problem = text_flaw(value)
        if problem is None:
            return value
        repairs.append(f"{what} {problem}: removed")
        return clean_text(value)

    def header(name: str) -> str:
        return clean(decode_header_text(message.get(name)), name)

    sender_name, sender_email = email.utils.parseaddr(header("From"))
    plain: str | None = None
    markup: str | None = None
    attachments: list[tuple[bytes, str | None, str]] = []
    for part in message.walk():
        if part.is_multipart():
            continue
        content_type = part.get_content_type()
        disposition = str(part.get("Content-Disposition") or "").lower()
        filename = part.get_filename()
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        if "attachment" in disposition or (
            filename and content_type not in ("text/plain", "text/html")
        ):
            name = clean(decode_header_text(filename), "attachment filename") if filename else None
            attachments.append((payload, name, content_type))
        elif content_type == "text/plain" and plain is None:
            plain = _decode(payload, part.get_content_charset())
        elif content_type == "text/html" and markup is None:
            markup = _decode(payload, part.get_content_charset())
    body = plain if plain and plain.strip() else html_to_text(markup or "")
    body = clean(strip_quoted(body), "body")
    subject = header("Subject")
    if is_blank(body) and is_blank(subject):
        raise UnreadableEmail("the email has neither text nor subject")
    message_id = header("Message-ID") or None
    if message_id is not None and len(message_id) > MAX_REFERENCE_CHARS:
        repairs.append(f"Message-ID of {len(message_id)} characters: kept as its sha256")
        message_id = bounded_reference(message_id)
    return ParsedEmail(
        message_id=message_id,
        subject=subject,
        sender_name=sender_name or None,
        sender_email=sender_email or None,
        received_at=_sent_at(decode_header_text(message.get("Date")), repairs),
        body=body,
        references=_references(header("In-Reply-To"), header("References")),
        attachments=attachments,
        repairs=repairs,
    )


def _sent_at(value: str, repairs: list[str]) -> datetime | None:
    """The mail's Date if it is a time everything downstream can hold, else None (the
    receipt time), with the reason in `repairs`."""
    if not value:
        return None
    try:
        sent = email.utils.parsedate_to_datetime(value)
        if sent.tzinfo is None:
            sent = sent.replace(tzinfo=UTC)
        written = WRITTEN_YEAR.search(value)
        if written and len(written.group(1)) == 4 and int(written.group(1)) < 100:
            problem = "before 2000-01-01"
        elif (kept := sane_or_now(sent)) is not None:
            return kept
        else:
            problem = time_flaw(sent) or "outside the accepted window"
    except (TypeError, ValueError, OverflowError, IndexError):
        problem = "not a date"
    repairs.append(f"Date {excerpt(value, 80)!r} is {problem}: the receipt time is used")
    return None


def _references(in_reply_to: str, references: str) -> list[str]:
    """The Message-IDs a reply names, In-Reply-To first, each bounded like a channel
    reference (so a quoted overlong Message-ID still matches the hash it was kept as)."""
    found: dict[str, None] = {}
    for value in (in_reply_to, references):
        for reference in MESSAGE_ID.findall(value) or value.split():
            found.setdefault(bounded_reference(reference), None)
    return list(found)[:MAX_REFERENCES]


def supplied_fields(text: str) -> dict[str, str]:
    found = {}
    for name, pattern in SUPPLIED_FIELDS.items():
        match = pattern.search(text)
        if match:
            found[name] = match.group(1)
    return found


async def record_sent(
    conn_or_pool: psycopg.AsyncConnection[Any] | AsyncConnectionPool,
    message_id: str,
    feedback_number: str,
) -> None:
    """Remember the Message-ID (angle brackets included, as in the header) of a mail the
    platform sent about a case: a reply naming it joins that case, from any address."""
    statement = (
        "INSERT INTO intake_sent_messages (message_id, feedback_number) VALUES (%s, %s) "
        "ON CONFLICT (message_id) DO NOTHING"
    )
    values = (bounded_reference(message_id.strip()), feedback_number)
    if isinstance(conn_or_pool, AsyncConnectionPool):
        async with conn_or_pool.connection() as conn:
            await conn.execute(statement, values)
    else:
        await conn_or_pool.execute(statement, values)


async def _sent_about(pool: AsyncConnectionPool, references: list[str]) -> str | None:
    """The case a mail the platform sent (and this one replies to) was about."""
    if not references:
        return None
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT feedback_number FROM intake_sent_messages WHERE message_id = ANY(%s) "
            "ORDER BY sent_at DESC LIMIT 1",
            (references,),
        )
        row: Any = await cursor.fetchone()
    return str(row[0]) if row else None


class EmailIntake:
    """Registers an email, or files it with the case it proves it replies to."""

    def __init__(
        self, registrar: Registrar, evidence: EvidenceStore, deadletters: DeadLetters
    ) -> None:
        self.registrar = registrar
        self.evidence = evidence
        self.deadletters = deadletters

    async def receive(self, raw: bytes, receiver: str = "smtp", *, keep: bool = True) -> Received:
        """Register or file the mail; what cannot be read is kept as a dead letter, and a
        mail taken only after cleaning keeps its original as a settled one. With
        `keep=False` (a replay of a dead letter) no new dead letter is written.

        Raises only TRANSIENT_FAULTS (and whatever keeping a dead letter raises when the
        database is away): then, and only then, the sender should try again."""
        try:
            # Off the event loop: a 25 MiB mail takes a while to walk and decode.
            parsed = await asyncio.to_thread(parse_email, raw)
        except Exception as error:  # parsing is pure: it would fail alike on every retry
            if not isinstance(error, UnreadableEmail):
                log.warning("email unreadable (%s: %s)", type(error).__name__, excerpt(error))
            return await self._unreadable(raw, receiver, _why(error), keep)
        try:
            received = await self._take(parsed, receiver)
        except TRANSIENT_FAULTS:
            raise
        except Exception as error:
            if not isinstance(error, UnreadableEmail | EvidenceRefused | InvalidSubmission):
                log.exception("email not registrable; kept as a dead letter")
            return await self._unreadable(raw, receiver, _why(error), keep)
        if not received.reason or not keep:
            return received
        assert received.feedback_number is not None
        done = "filed cleaned with" if received.joined else "registered cleaned as"
        dead_letter_id = await self.deadletters.keep(
            "email",
            received.reason,
            raw,
            {"receiver": receiver, "feedback_number": received.feedback_number},
            settled=f"{done} {received.feedback_number}",
        )
        return replace(received, dead_letter_id=dead_letter_id)

    async def _unreadable(self, raw: bytes, receiver: str, reason: str, keep: bool) -> Received:
        if not keep:
            return Received(reason=reason)
        dead_letter_id = await self.deadletters.keep("email", reason, raw, {"receiver": receiver})
        return Received(dead_letter_id=dead_letter_id, reason=reason)

    async def _take(self, parsed: ParsedEmail, receiver: str) -> Received:
        kept = await self._keep_attachments(parsed)
        case = await self._proven_case(parsed)
        if case is not None:
            text = parsed.body or parsed.subject
            try:
                await self.registrar.correspond(
                    case,
                    Channel.email,
                    text[:MAX_CORRESPONDENCE_CHARS],
                    supplied=supplied_fields(text),
                    evidence=kept,
                    channel_reference=parsed.message_id,
                    received_at=parsed.received_at,
                    durable=True,
                )
                return Received(case, joined=True, reason="; ".join(parsed.repairs) or None)
            except UnknownFeedback:
                pass  # a sent message about a number that is not ours: new feedback
        if not parsed.sender_email:
            raise UnreadableEmail("no sender address to reach the customer")
        try:
            contact = Contact(name=parsed.sender_name, email=parsed.sender_email)
        except ValidationError as error:
            # The address itself stays out of the reason: reasons travel in clear.
            raise UnreadableEmail(
                "the sender address is not an address the customer can be reached at"
            ) from error
        description = f"{parsed.subject}\n{parsed.body}".strip() if parsed.subject else parsed.body
        submission, more = cleaned(
            Submission(
                channel=Channel.email,
                description=description[:5000],
                contact=contact,
                receiver=receiver,
                received_at=parsed.received_at,
                channel_reference=parsed.message_id,
                evidence=kept,
                **supplied_fields(parsed.body),
            )
        )
        accepted = await self.registrar.register_durably(submission)
        return Received(
            accepted.feedback_number, reason="; ".join([*parsed.repairs, *more]) or None
        )

    async def _proven_case(self, parsed: ParsedEmail) -> str | None:
        """The existing case this mail may join, or None: then it is new feedback.

        Naming a case is not proof (numbers are sequential; Message-IDs get quoted). A
        reply joins when it names a mail the platform sent about the case, or when the
        case it names (by the Message-ID that registered it, or by the number in the
        subject) is the sender's own: the vault knows the sender's address as that case's
        customer."""
        sent_about = await _sent_about(self.registrar.pool, parsed.references)
        if sent_about is not None:
            return sent_about
        named: list[str] = []
        registered_by = await self.registrar.find_by_reference(Channel.email, parsed.references)
        if registered_by is not None:
            named.append(registered_by)
        for number in NUMBER_IN_TEXT.findall(parsed.subject)[:MAX_SUBJECT_NUMBERS]:
            if number not in named:
                named.append(number)
        if not named or not parsed.sender_email:
            return None
        sender = await self.registrar.vault.customer_of_email(parsed.sender_email)
        if sender is None:
            return None
        for number in named:
            case = await self.registrar.case_of(number)
            if case is not None and case[1] == sender:
                return number
        return None

    async def _keep_attachments(self, parsed: ParsedEmail) -> tuple[Evidence, ...]:
        """The attachments the evidence store takes; one it refuses (empty, too large, not
        what it claims, one too many) is left out and noted, so the mail is still taken
        (its original, with every attachment, is kept as a settled dead letter)."""
        kept: list[Evidence] = []
        for index, (data, name, kind) in enumerate(parsed.attachments):
            if index >= self.evidence.max_count:
                parsed.repairs.append(
                    f"{len(parsed.attachments) - index} attachments over the limit of "
                    f"{self.evidence.max_count}: left out"
                )
                break
            try:
                kept.append(await self.evidence.put(data, name, kind))
            except EvidenceRefused as error:
                parsed.repairs.append(f"{error}: left out")
        return tuple(kept)


def _why(error: Exception) -> str:
    """A dead letter's reason: ours as written, others with their kind; bounded."""
    if isinstance(error, InvalidSubmission):
        shown = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))} {e.get('msg')}".strip()
            for e in error.errors[:10]
        ]
        return "not registrable: " + "; ".join(shown)
    if isinstance(error, UnreadableEmail | EvidenceRefused):
        return str(error)
    return f"could not be taken ({type(error).__name__}): {excerpt(str(error), 500)}"


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
            received = await self.intake.receive(raw, receiver="smtp")
        except IntakeBusy:
            # Nothing was recorded: the sending server keeps the mail and tries again.
            return "451 4.3.2 Too busy to take mail now: try again later"
        except Exception:
            log.exception("email not accepted now; the sender will retry")
            return "451 Requested action aborted: try again later"
        self.received += 1
        # A dead letter is accepted too: it is kept, and retrying would not change it.
        return f"250 OK {received.feedback_number or 'dead-letter'}"


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
