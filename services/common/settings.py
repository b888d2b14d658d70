"""Settings from the environment (prefix `FEEDBACK_`, plus `DATABASE_URL` and
`KAFKA_BOOTSTRAP_SERVERS`), validated once at start."""

from __future__ import annotations

import base64
import binascii
from functools import cached_property
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEEDBACK_", extra="ignore", populate_by_name=True)

    database_url: str = Field(
        validation_alias=AliasChoices("DATABASE_URL", "FEEDBACK_DATABASE_URL")
    )
    kafka_bootstrap_servers: str = Field(
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "FEEDBACK_KAFKA_BOOTSTRAP_SERVERS")
    )
    topic_prefix: str = ""
    topic_partitions: int = Field(default=4, ge=1, le=256)
    # Replicas of every topic, and how many must have a write before Kafka acknowledges it
    # (acks=all): 1/1 for a single local broker; 3/2 on a cluster survives one broker down
    # without losing an acknowledged write (services/common/topics_setup.py).
    topic_replication_factor: int = Field(default=1, ge=1, le=16)
    topic_min_insync_replicas: int = Field(default=1, ge=1, le=16)
    # The service centre's time zone: feedback numbers carry its local date.
    timezone: str = "Asia/Shanghai"
    # AES-256 key for personal data, base64; required, never defaulted.
    pii_key: SecretStr
    customer_tiers: tuple[str, ...] = ("vip", "normal")
    max_description_chars: int = 5_000
    # How far ahead of this server's clock a sender's time may be (see common/boundary.py).
    max_future_skew_s: float = Field(default=300.0, ge=0)
    # Bytes actually read per request body: JSON and push endpoints; uploads have their own
    # limits (attachments, .eml, batch files; see services/runtime.py `body_limits`).
    max_request_bytes: int = 256 * 1024
    # A client must finish its headers within this, and send its body without pausing
    # longer than this between reads; at most this many connections at once.
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=10.0, gt=0)
    max_connections: int = Field(default=1000, ge=1)
    # Serials reserved per database round trip by each intake instance (1 = no gaps).
    number_block_size: int = Field(default=1, ge=1, le=1000)
    # How long intake waits for Kafka's acknowledgement before answering 503.
    publish_timeout_s: float = Field(default=10.0, gt=0)
    # Registrations waiting for a batch in one intake process; beyond it intake answers 503
    # with Retry-After (SMTP 451) instead of growing memory. Above one batch import's chunk
    # (2,048 rows) plus `max_connections`; about 5 s of the target 1,000 feedback/s.
    intake_max_pending: int = Field(default=5_000, ge=1)
    # Cases per store transaction. eventsourcing 9.5.6 with psycopg 3.3.9 stalled forever in
    # a pipeline sync inserting ~2,000 event rows at once (500 cases); 200 cases (~600 rows)
    # was fine and routes ~1,100 cases/s here (100: ~870/s).
    consumer_batch_size: int = Field(default=200, ge=1, le=250)
    relay_batch_size: int = Field(default=1000, ge=1, le=10_000)
    # How long a consumer's fetch may wait on the broker for a fuller batch (64 KiB), and the
    # relay after a wake-up for more commits: each batch costs a transaction and fixed
    # per-batch work in every consumer, so under a steady load small waits buy large batches
    # (at the price of that much latency per hop when quiet). At ~70 feedback/s, 100/50 ms
    # cut the pipeline's CPU per feedback by 17 % (bench.pipeline); 0 turns either off.
    consumer_fetch_wait_ms: int = Field(default=50, ge=0, le=1000)
    relay_gather_ms: int = Field(default=20, ge=0, le=1000)
    # The relay wakes on PostgreSQL NOTIFY; this is only its fallback poll.
    relay_idle_poll_s: float = Field(default=1.0, gt=0)
    # Evidence (attachments): a content-addressed folder; sizes and types enforced.
    evidence_dir: Path = Path(".feedback/evidence")
    # Or an S3-compatible bucket (credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
    evidence_s3_bucket: str | None = None
    evidence_s3_endpoint_url: str | None = None
    evidence_s3_prefix: str = "evidence/"
    evidence_s3_region: str = ""
    max_attachment_bytes: int = 10 * 1024 * 1024
    max_attachments: int = 10
    max_batch_file_bytes: int = 50 * 1024 * 1024
    allowed_attachment_types: tuple[str, ...] = (
        "image/jpeg", "image/png", "image/gif", "image/webp", "application/pdf", "text/plain",
        "audio/mpeg", "audio/wav", "audio/x-wav", "audio/amr", "message/rfc822",
        "application/json", "application/octet-stream",
    )  # fmt: skip
    # Channel secrets: push and webhook channels refuse requests they cannot verify.
    wechat_token: SecretStr | None = None
    weibo_secret: SecretStr | None = None
    douyin_secret: SecretStr | None = None
    web_chat_secret: SecretStr | None = None
    # WeChat safe mode (安全模式): the account's EncodingAESKey and AppID. Plaintext pushes
    # are refused unless allowed here (e.g. while switching the account over).
    wechat_encoding_aes_key: SecretStr | None = None
    wechat_app_id: str | None = None
    wechat_allow_plaintext: bool = False
    # SMTP intake (aiosmtpd); port 0 disables it.
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 0
    smtp_max_message_bytes: int = 25 * 1024 * 1024
    # Requests per minute per client address on the intake endpoints.
    rate_limit_per_minute: int = Field(default=600, ge=1)
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    state_dir: Path = Path(".feedback")

    # Staff sign-in: the key signing bearer tokens (base64, 32 bytes; required, never
    # defaulted; the local default generates one like the PII key) and their lifetime.
    auth_token_key: SecretStr
    auth_token_ttl_s: int = Field(default=8 * 3600, ge=60, le=7 * 24 * 3600)
    # Or an OIDC provider instead of local passwords: tokens it signs are accepted when
    # their issuer and audience match; keys from its JWKS URL or a PEM public key.
    # Closed cases are archived (read-only) this long after closing.
    archive_after_days: float = Field(default=30.0, ge=0)
    # Roles that may reveal a customer's contact details (with a reason, audited); quality
    # and BI never, whatever is configured here.
    pii_reveal_roles: tuple[str, ...] = ("supervisor", "head")
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = None
    oidc_public_key: str | None = None
    oidc_role_claim: str = "feedback_role"
    oidc_departments_claim: str = "feedback_departments"
    oidc_agent_claim: str = "feedback_agent_id"
    oidc_username_claim: str = "preferred_username"

    # Notifications (services/notifications). E-mail through this SMTP server (port 0: no
    # e-mail); SMS and instant messages POSTed to these webhooks, signed with HMAC-SHA256
    # of `timestamp.body` under the secret (a webhook without a secret refuses to start);
    # staff contacts from this YAML file (default config/notifications.yaml).
    notify_smtp_host: str = "127.0.0.1"
    notify_smtp_port: int = Field(default=0, ge=0, le=65535)
    notify_smtp_starttls: bool = False
    notify_smtp_username: str | None = None
    notify_smtp_password: SecretStr | None = None
    notify_from: str = "feedback-noreply@localhost"
    notify_sms_webhook_url: str | None = None
    notify_im_webhook_url: str | None = None
    notify_webhook_secret: SecretStr | None = None
    notify_staff_file: Path | None = None
    # The sender: rows claimed per round, sends at once, tries before the dead letter,
    # backoff doubling from `notify_backoff_s` up to `notify_backoff_max_s`, the time one
    # send may take, how long a claim keeps other senders off a row (at least three sends'
    # time), and the fallback poll (a consumer in the same process wakes it at once).
    notify_batch_size: int = Field(default=50, ge=1, le=1000)
    notify_concurrency: int = Field(default=8, ge=1, le=100)
    notify_max_attempts: int = Field(default=6, ge=1, le=50)
    notify_backoff_s: float = Field(default=30.0, gt=0)
    notify_backoff_max_s: float = Field(default=3600.0, gt=0)
    notify_send_timeout_s: float = Field(default=10.0, gt=0)
    notify_lease_s: float = Field(default=120.0, gt=0)
    notify_poll_s: float = Field(default=1.0, gt=0)
    # The customer's acknowledgement waits up to this long for the first-response clock
    # (its due time goes into the message); it leaves as soon as the clock is known.
    notify_ack_hold_s: float = Field(default=15.0, ge=0)
    # Case events older than this tell nobody (a new consumer group reads the whole topic;
    # customers must not be told about last year's cases).
    notify_max_event_age_s: float = Field(default=3 * 86400.0, gt=0)

    # BI (`bi` schema, services/projections/bi.py): the read-only `bi_reader` role signs in
    # with this password (stored as a SCRAM verifier); without one the role cannot sign in.
    # There is no default password. Its statements stop after `bi_statement_timeout_s`.
    bi_reader_password: SecretStr | None = None
    bi_statement_timeout_s: int = Field(default=30, ge=1, le=3600)
    # The weekly and monthly reports are written here (XLSX and HTML) by the projections
    # process and announced on `feedback.reports`; unset: no scheduled reports. Checked
    # every `reports_poll_s`.
    reports_dir: Path | None = None
    reports_poll_s: float = Field(default=300.0, gt=0)
    # The web console (served at `/` with every service in one process) calls the API
    # in-process; set this to call it at another address instead (an ingress in front of
    # separately deployed services).
    console_api_url: str | None = None
    # Mark the console's session cookie Secure even when the app sees plain HTTP (TLS ends
    # at an ingress in front of it). Off for the local default on 127.0.0.1.
    console_secure_cookie: bool = False
    # Logs on stderr: "text" (a line a record) or "json" (an object a line with the feedback
    # number and trace id, for a log pipeline). The CLI reads it before anything else starts
    # (services/common/observability.py); here it is validated.
    log_format: Literal["text", "json"] = "text"
    # Signs (HMAC-SHA256) the classifier models `feedback train` stores in PostgreSQL: a
    # service unpickles only a model signed with it, so writing the table is not running
    # code in the services. A key of its own (base64, 32 bytes; required in deploy/, no
    # default anywhere); unset, no stored model is loaded (trained from config/training).
    model_signing_key: SecretStr | None = None

    @field_validator("model_signing_key")
    @classmethod
    def _model_key_is_32_bytes(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        try:
            raw = base64.b64decode(value.get_secret_value(), validate=True)
        except (binascii.Error, ValueError) as error:
            raise ValueError("FEEDBACK_MODEL_SIGNING_KEY must be base64") from error
        if len(raw) != 32:
            raise ValueError("FEEDBACK_MODEL_SIGNING_KEY must decode to 32 bytes")
        return value

    @field_validator("pii_key", "auth_token_key")
    @classmethod
    def _key_is_32_bytes(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        name = f"FEEDBACK_{str(info.field_name).upper()}"
        try:
            raw = base64.b64decode(value.get_secret_value(), validate=True)
        except (binascii.Error, ValueError) as error:
            raise ValueError(f"{name} must be base64") from error
        if len(raw) != 32:
            raise ValueError(f"{name} must decode to 32 bytes")
        return value

    @property
    def auth_token_key_bytes(self) -> bytes:
        return base64.b64decode(self.auth_token_key.get_secret_value())

    @cached_property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def pii_key_bytes(self) -> bytes:
        return base64.b64decode(self.pii_key.get_secret_value())

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"
