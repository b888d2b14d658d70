"""How a message leaves: e-mail over SMTP, SMS and instant messages through HTTP webhooks.
(The in-app inbox is a table: see `store.deliver_to_inbox`.)

Each message carries an id the receiver can drop a repeat by: the notification row's id,
as the mail's Message-ID (`<row-id@sender-domain>`) and as the webhooks' `Idempotency-Key`.
A failure says whether another try could succeed (`SendFailed.permanent`), and its reason
never holds the address (reasons end up in dead letters, which are not personal data).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import smtplib
import ssl
import time
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from uuid import UUID

import httpx

from services.common.boundary import clean_text
from services.common.masking import mask_contacts
from services.common.settings import Settings


class SendFailed(Exception):
    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


def _shown(text: str) -> str:
    """A server's own words, bounded and with any address masked."""
    return mask_contacts(clean_text(text))[:300]


class EmailAdapter:
    """A real SMTP client (stdlib smtplib, run in a thread): one connection per message,
    optional STARTTLS and login."""

    def __init__(self, settings: Settings) -> None:
        self.host = settings.notify_smtp_host
        self.port = settings.notify_smtp_port
        self.starttls = settings.notify_smtp_starttls
        self.username = settings.notify_smtp_username
        self.password = (
            settings.notify_smtp_password.get_secret_value()
            if settings.notify_smtp_password
            else None
        )
        self.sender = settings.notify_from
        self.timeout_s = settings.notify_send_timeout_s
        address = parseaddr(settings.notify_from)[1]
        self.domain = address.rpartition("@")[2] or "localhost"

    @property
    def enabled(self) -> bool:
        return self.port > 0

    def message_id(self, row_id: UUID) -> str:
        return f"<{row_id}@{self.domain}>"

    async def send(
        self, row_id: UUID, to: str, title: str, body: str, feedback_number: str
    ) -> None:
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = to
        message["Subject"] = title
        message["Message-ID"] = self.message_id(row_id)
        message["Date"] = formatdate(localtime=False)
        message["X-Feedback-Number"] = feedback_number
        message["Auto-Submitted"] = "auto-generated"  # no auto-replies back at us
        message.set_content(body)
        await asyncio.to_thread(self._send, message)

    def _send(self, message: EmailMessage) -> None:
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.username and self.password is not None:
                    smtp.login(self.username, self.password)
                smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as error:
            codes = sorted({code for code, _ in error.recipients.values()})
            raise SendFailed(
                f"SMTP refused the recipient ({', '.join(map(str, codes))})",
                permanent=all(500 <= c < 600 for c in codes),
            ) from None
        except smtplib.SMTPAuthenticationError as error:
            # Our configuration, not the message: worth trying again once it is fixed.
            raise SendFailed(f"SMTP login refused ({error.smtp_code})", permanent=False) from None
        except smtplib.SMTPResponseException as error:
            said = error.smtp_error
            if isinstance(said, bytes):
                said = said.decode("utf-8", "replace")
            raise SendFailed(
                f"SMTP {error.smtp_code} {_shown(str(said or ''))}".strip(),
                permanent=500 <= error.smtp_code < 600,
            ) from None
        except (smtplib.SMTPException, OSError) as error:
            raise SendFailed(f"SMTP {type(error).__name__}", permanent=False) from None


class WebhookAdapter:
    """POSTs `{"id", "to", "title", "text", "feedback_number", "template", "language"}` as
    JSON, signed like the platform's inbound pushes: `X-Signature: sha256=<hex HMAC-SHA256
    of "timestamp.body">` with `X-Timestamp`, and `Idempotency-Key: <row id>`.

    2xx is delivered; 408, 409, 425, 429 and 5xx are worth another try; another 4xx
    means this message will never be taken."""

    RETRYABLE = frozenset({408, 409, 425, 429})

    def __init__(self, kind: str, url: str | None, secret: bytes | None, timeout_s: float) -> None:
        if url and not secret:
            raise ValueError(
                f"the {kind} webhook needs FEEDBACK_NOTIFY_WEBHOOK_SECRET to sign its requests"
            )
        self.kind = kind
        self.url = url
        self.secret = secret or b""
        self.timeout_s = timeout_s

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def sign(self, timestamp: str, body: bytes) -> str:
        digest = hmac.new(self.secret, timestamp.encode() + b"." + body, hashlib.sha256)
        return "sha256=" + digest.hexdigest()

    async def send(
        self,
        client: httpx.AsyncClient,
        row_id: UUID,
        to: str,
        title: str,
        text: str,
        feedback_number: str,
        template: str,
        language: str,
    ) -> None:
        assert self.url is not None
        body = json.dumps(
            {
                "id": str(row_id),
                "to": to,
                "title": title,
                "text": text,
                "feedback_number": feedback_number,
                "template": template,
                "language": language,
            },
            ensure_ascii=False,
        ).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Idempotency-Key": str(row_id),
            "X-Timestamp": timestamp,
            "X-Signature": self.sign(timestamp, body),
        }
        try:
            response = await client.post(
                self.url, content=body, headers=headers, timeout=self.timeout_s
            )
        except httpx.HTTPError as error:
            raise SendFailed(
                f"{self.kind} webhook: {type(error).__name__}", permanent=False
            ) from None
        status = response.status_code
        if 200 <= status < 300:
            return
        permanent = 400 <= status < 500 and status not in self.RETRYABLE
        raise SendFailed(f"{self.kind} webhook answered {status}", permanent=permanent)
