"""Pushes from chat and social platforms: finished web-chat sessions (`web_chat`), WeChat
Official Account messages (`wechat`), Weibo and Douyin comments and direct messages.

Pushes are verified before anything else (WeChat: SHA-1 signature over token, timestamp
and nonce; Weibo/Douyin: HMAC-SHA256 over timestamp and body with a shared secret); a
forged or stale push gets 403 and is not kept. An authentic push that cannot be read goes
to the dead letters with the reason, and the platform still gets its acknowledgement.

Fields relied on (documented for operators):
- WeChat XML: ToUserName, FromUserName (the openid), CreateTime, MsgType (text, voice
  with Recognition, image with PicUrl), Content, MsgId.
- Weibo JSON: type ("comment" | "direct_message"), id, created_at (ISO 8601),
  user.id, user.screen_name, text, status_id (the post, for comments).
- Douyin JSON: event ("im_receive_msg" | "item_comment_reply"), msg_id, create_time
  (unix seconds), from_user_id, content.text, item_id (the video, for comments).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from defusedxml import ElementTree
from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from psycopg_pool import AsyncConnectionPool
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_core import from_json

from contracts.codes import Channel
from contracts.events import Evidence
from services.common.boundary import Checked, cleaned_value
from services.common.deadletters import describe
from services.intake.channels.common import (
    FRESHNESS_S,
    CustomerIn,
    FeedbackAccepted,
    Short,
    Tier,
    answer,
    busy_refusal,
    fresh,
    json_body_schema,
    parse_json_body,
    same,
)
from services.intake.channels.wechat_crypto import WeChatCrypto, WeChatCryptoError
from services.intake.deadletters import DeadLetters
from services.intake.evidence import EvidenceStore
from services.intake.pii_vault import Contact
from services.intake.registration import (
    DuplicateInProgress,
    IntakeBusy,
    IntakeUnavailable,
    InvalidSubmission,
    Registrar,
    Submission,
    cleaned,
)


class ChatLine(Checked):
    model_config = ConfigDict(extra="forbid")

    speaker: Literal["customer", "agent", "bot"]
    time: AwareDatetime
    text: Annotated[str, Field(max_length=5000)]


class ChatSessionIn(Checked):
    """A finished web-chat session (在线客服), pushed by the chat system."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    session_id: Annotated[str, Field(min_length=1, max_length=100)]
    agent_id: Annotated[str, Field(max_length=100)] | None = None
    customer: CustomerIn
    customer_tier: Tier = "normal"
    product_model: Short | None = None
    transcript: Annotated[list[ChatLine], Field(min_length=1, max_length=2000)]


class WeiboPush(BaseModel):
    type: Literal["comment", "direct_message"]
    id: Annotated[str, Field(min_length=1, max_length=100)]
    created_at: AwareDatetime
    user: dict[str, str]
    text: Annotated[str, Field(min_length=1, max_length=5000)]
    status_id: str | None = None


class DouyinPush(BaseModel):
    event: Literal["im_receive_msg", "item_comment_reply"]
    msg_id: Annotated[str, Field(min_length=1, max_length=100)]
    create_time: int
    from_user_id: Annotated[str, Field(min_length=1, max_length=100)]
    content: dict[str, str]
    item_id: str | None = None


T = TypeVar("T")

SCHEMA = [
    # Signatures of pushes already taken: a replay within the freshness window is refused.
    """
    CREATE TABLE IF NOT EXISTS push_signatures (
        channel text NOT NULL,
        signature text NOT NULL,
        seen_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (channel, signature)
    )
    """
]


class ReplayGuard:
    """Refuses a signed push whose signature was already taken: within the freshness
    window a signature is only ever a replay (the platforms sign every delivery anew,
    and a retry after a failure is not recorded, so it passes)."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def claim(self, channel: str, signature: str) -> bool:
        """True for the first to present this signature (atomically: two copies racing
        cannot both pass); False for a replay."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "WITH old AS (DELETE FROM push_signatures "
                "WHERE seen_at < now() - make_interval(secs => %s)) "
                "INSERT INTO push_signatures (channel, signature) VALUES (%s, %s) "
                "ON CONFLICT DO NOTHING RETURNING 1",
                (2 * FRESHNESS_S, channel, signature[:200]),
            )
            return await cursor.fetchone() is not None

    async def release(self, channel: str, signature: str) -> None:
        """The push was not taken (an error): its sender may retry with the same signature."""
        async with self.pool.connection() as conn:
            await conn.execute(
                "DELETE FROM push_signatures WHERE channel = %s AND signature = %s",
                (channel, signature[:200]),
            )


def wechat_signature(token: str, timestamp: str, nonce: str) -> str:
    return hashlib.sha1("".join(sorted([token, timestamp, nonce])).encode()).hexdigest()  # noqa: S324 (WeChat's protocol)


def social_signature(secret: str, timestamp: str, body: bytes) -> str:
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def signed_push_headers(secret: str, raw: bytes, timestamp: str | None = None) -> dict[str, str]:
    """The headers a Weibo/Douyin push carries (what a sender, or a test, attaches)."""
    stamp = timestamp or str(int(time.time()))
    return {
        "X-Timestamp": stamp,
        "X-Signature": "sha256=" + social_signature(secret, stamp, raw),
        "content-type": "application/json",
    }


def _secret(value: SecretStr | None, channel: str) -> str:
    if value is None:
        raise HTTPException(503, detail=f"the {channel} channel is not configured (no secret)")
    return value.get_secret_value()


def chat_social_router(
    registrar: Registrar,
    evidence: EvidenceStore,
    deadletters: DeadLetters,
    wechat_token: SecretStr | None,
    weibo_secret: SecretStr | None,
    douyin_secret: SecretStr | None,
    web_chat_secret: SecretStr | None,
    replays: ReplayGuard,
    wechat_crypto: WeChatCrypto | None = None,
    wechat_allow_plaintext: bool = False,
) -> APIRouter:
    router = APIRouter(tags=["intake"])

    @router.post(
        "/v1/channels/web-chat/sessions",
        status_code=202,
        response_model=FeedbackAccepted,
        openapi_extra=json_body_schema(ChatSessionIn),
    )
    async def chat_session(
        request: Request,
        x_signature: Annotated[str, Header()],
        x_timestamp: Annotated[str, Header()],
    ) -> FeedbackAccepted | JSONResponse:
        """A finished session pushed by the chat system, signed like the social pushes. Like
        every push it is repaired rather than refused (text cleaned, a time outside the
        window replaced by the receipt time; the original kept as a settled dead letter);
        what is not a session at all gets 422."""
        secret = _secret(web_chat_secret, "web-chat")
        raw = await _verified(request, secret, x_signature, x_timestamp)
        body, repairs = repaired_session(raw)
        if not await replays.claim("web_chat", x_signature):
            raise HTTPException(403, detail="this signed push was already taken (a replay)")
        try:
            result = await _register_chat(body, x_signature)
        except BaseException:
            await replays.release("web_chat", x_signature)
            raise
        if repairs and not isinstance(result, JSONResponse) and not result.duplicate:
            await deadletters.keep(
                "web_chat",
                "; ".join(repairs),
                raw,
                settled=f"registered cleaned as {result.feedback_number}",
            )
        return result

    async def _register_chat(
        body: ChatSessionIn, signature: str
    ) -> FeedbackAccepted | JSONResponse:
        said = [
            line.text
            for line in body.transcript
            if line.speaker == "customer" and line.text.strip()
        ]
        if not said:
            raise HTTPException(422, detail="the transcript has nothing the customer said")
        transcript = json.dumps(
            [line.model_dump(mode="json") for line in body.transcript], ensure_ascii=False
        ).encode()
        kept = await evidence.put(
            transcript, f"chat-{body.session_id}.json", "application/json", kind="transcript"
        )
        submission = Submission(
            channel=Channel.web_chat,
            description="\n".join(said)[:5000],
            contact=body.customer.contact(),
            receiver=body.agent_id or "web_chat",
            received_at=body.transcript[0].time,
            channel_reference=body.session_id,
            customer_tier=body.customer_tier,
            product_model=body.product_model,
            evidence=(kept,),
        )
        result = await answer(registrar.register(submission))
        if isinstance(result, JSONResponse):  # not taken (409/503): the sender may retry
            await replays.release("web_chat", signature)
        return result

    @router.get("/v1/channels/wechat", response_class=PlainTextResponse)
    async def wechat_verify(
        signature: str, timestamp: str, nonce: str, echostr: Annotated[str, Query(max_length=200)]
    ) -> str:
        token = _secret(wechat_token, "wechat")
        if not same(wechat_signature(token, timestamp, nonce), signature):
            raise HTTPException(403, detail="signature does not match")
        return echostr

    @router.post("/v1/channels/wechat", response_class=PlainTextResponse)
    async def wechat_push(
        request: Request,
        signature: str,
        timestamp: str,
        nonce: str,
        encrypt_type: str | None = None,
        msg_signature: Annotated[str | None, Query(max_length=100)] = None,
    ) -> str:
        """Safe mode (`encrypt_type=aes`): the body's `Encrypt` is decrypted with the
        EncodingAESKey after `msg_signature` is checked. Plaintext pushes only when
        FEEDBACK_WECHAT_ALLOW_PLAINTEXT is set."""
        token = _secret(wechat_token, "wechat")
        if not same(wechat_signature(token, timestamp, nonce), signature) or not fresh(timestamp):
            raise HTTPException(403, detail="signature does not match or the push is stale")
        raw = await request.body()
        if encrypt_type == "aes":
            if wechat_crypto is None:
                raise HTTPException(503, detail="safe mode is not configured (no EncodingAESKey)")
            try:
                encrypted = _encrypted_element(raw)
                raw = wechat_crypto.decrypt(msg_signature or "", timestamp, nonce, encrypted)
            except WeChatCryptoError as error:
                raise HTTPException(403, detail=f"encrypted push refused: {error}") from error
            proof = msg_signature or ""
        elif not wechat_allow_plaintext:
            raise HTTPException(403, detail="plaintext pushes are refused; use safe mode")
        else:
            proof = signature
        # Acknowledged either way: registered, or kept as a dead letter; WeChat must not retry.
        await _once(
            replays,
            "wechat",
            f"{timestamp}:{nonce}:{proof}",
            lambda: _accept_push(registrar, deadletters, "wechat", raw),
        )
        return "success"

    @router.post("/v1/channels/weibo/webhook", status_code=202)
    async def weibo_push(
        request: Request,
        x_signature: Annotated[str, Header()],
        x_timestamp: Annotated[str, Header()],
    ) -> dict[str, str]:
        raw = await _verified(request, _secret(weibo_secret, "weibo"), x_signature, x_timestamp)
        return await _once(
            replays,
            "weibo",
            x_signature,
            lambda: _accept_push(registrar, deadletters, "weibo", raw),
        )

    @router.post("/v1/channels/douyin/webhook", status_code=202)
    async def douyin_push(
        request: Request,
        x_signature: Annotated[str, Header()],
        x_timestamp: Annotated[str, Header()],
    ) -> dict[str, str]:
        raw = await _verified(request, _secret(douyin_secret, "douyin"), x_signature, x_timestamp)
        return await _once(
            replays,
            "douyin",
            x_signature,
            lambda: _accept_push(registrar, deadletters, "douyin", raw),
        )

    return router


TIME_FLAWS = ("in the future", "before 2000-01-01")


def repaired_session(raw: bytes) -> tuple[ChatSessionIn, list[str]]:
    """The session with what the boundary rule refuses repaired, and what was repaired;
    422 (as FastAPI reports it) for what cannot be a session."""
    try:
        data = from_json(raw)
    except ValueError:
        try:  # Python's parser takes lone surrogates (escaped in the JSON), which are repaired
            data = json.loads(raw)
        except (ValueError, RecursionError):
            return parse_json_body(ChatSessionIn, raw), []  # raises the 422 for bad JSON
    data, repairs = cleaned_value(data)
    now = datetime.now(UTC).isoformat()
    for _ in range(2):  # once to find the bad times, once more with them replaced
        try:
            return ChatSessionIn.model_validate(data), repairs
        except ValidationError as error:
            bad_times = [
                e["loc"]
                for e in error.errors(include_url=False)
                if any(flaw in e["msg"] for flaw in TIME_FLAWS)
            ]
            if not bad_times or not isinstance(data, dict):
                raise RequestValidationError(
                    [{**e, "loc": ("body", *e["loc"])} for e in error.errors(include_url=False)]
                ) from error
            for location in bad_times:
                target: Any = data
                for step in location[:-1]:
                    target = target[step]
                repairs.append(
                    f"{'.'.join(str(p) for p in location)} {target[location[-1]]!r:.60}: the receipt time is used"
                )
                target[location[-1]] = now
    return parse_json_body(ChatSessionIn, raw), repairs


async def _once(
    replays: ReplayGuard, channel: str, signature: str, handle: Callable[[], Awaitable[T]]
) -> T:
    """Handle a verified push unless its signature was taken before."""
    if not await replays.claim(channel, signature):
        raise HTTPException(403, detail="this signed push was already taken (a replay)")
    try:
        return await handle()
    except BaseException:
        await replays.release(channel, signature)
        raise


def _encrypted_element(raw: bytes) -> str:
    try:
        root = ElementTree.fromstring(raw)
    except Exception as error:
        raise WeChatCryptoError(f"not WeChat XML: {str(error)[:200]}") from error
    element = root.find("Encrypt")
    if element is None or not (element.text or "").strip():
        raise WeChatCryptoError("no Encrypt element")
    return (element.text or "").strip()


async def _verified(request: Request, secret: str, signature: str, timestamp: str) -> bytes:
    raw = await request.body()
    expected = social_signature(secret, timestamp, raw)
    if not same(f"sha256={expected}", signature) or not fresh(timestamp):
        raise HTTPException(403, detail="signature does not match or the push is stale")
    return raw


async def _accept_push(
    registrar: Registrar, deadletters: DeadLetters, source: str, raw: bytes
) -> dict[str, str]:
    """A verified push is never refused (the platform would only send it again): what
    cannot be read is a dead letter; what can be repaired (see `cleaned`) is registered
    repaired, with the original kept as a settled dead letter."""
    try:
        submission, repairs = cleaned(PUSH_PARSERS[source](raw))
        # Pushes cannot be asked to retry later: accept durably, Kafka or not.
        accepted = await registrar.register_durably(submission)
    except (ValueError, ArithmeticError) as error:  # ValidationError, InvalidSubmission too
        reason = describe(error)
        if isinstance(error, InvalidSubmission):
            reason = "; ".join(str(e.get("msg")) for e in error.errors)
        letter = await deadletters.keep(source, reason, raw)
        return {"status": "kept as a dead letter", "dead_letter_id": str(letter)}
    except IntakeBusy as error:
        raise busy_refusal(error) from error
    except (IntakeUnavailable, DuplicateInProgress) as error:
        raise HTTPException(503, detail="not accepted now; retry") from error
    if repairs:
        await deadletters.keep(
            source,
            "; ".join(repairs),
            raw,
            settled=f"registered cleaned as {accepted.feedback_number}",
        )
    return {"status": "accepted", "feedback_number": accepted.feedback_number}


def from_unix(seconds: str | int) -> datetime:
    """A platform's unix time. One too far out to represent becomes the farthest
    datetime on its side, which the boundary rule then refuses (see `cleaned`)."""
    value = int(seconds)
    try:
        return datetime.fromtimestamp(value, UTC)
    except (ValueError, OverflowError, OSError):
        return (datetime.max if value > 0 else datetime.min).replace(tzinfo=UTC)


def weibo_submission(raw: bytes) -> Submission:
    push = WeiboPush.model_validate_json(raw)
    return Submission(
        channel=Channel.weibo,
        description=push.text,
        contact=Contact(
            name=push.user.get("screen_name"), account=f"weibo:{push.user.get('id', '')}"
        ),
        receiver=f"weibo-{push.type}",
        received_at=push.created_at,
        channel_reference=push.id,
    )


def douyin_submission(raw: bytes) -> Submission:
    push = DouyinPush.model_validate_json(raw)
    text = push.content.get("text", "").strip()
    if not text:
        raise ValueError("the message has no text")
    return Submission(
        channel=Channel.douyin,
        description=text[:5000],
        contact=Contact(account=f"douyin:{push.from_user_id}"),
        receiver=f"douyin-{push.event}",
        received_at=from_unix(push.create_time),
        channel_reference=push.msg_id,
    )


def wechat_submission(raw: bytes) -> Submission:
    try:
        root = ElementTree.fromstring(raw)
    except Exception as error:
        raise ValueError(f"not WeChat XML: {error}") from error
    fields: dict[str, Any] = {child.tag: (child.text or "").strip() for child in root}
    kind = fields.get("MsgType")
    if kind == "text":
        text = fields.get("Content", "")
    elif kind == "voice":
        text = fields.get("Recognition", "")
    elif kind == "image":
        text = "[图片]"
    else:
        raise ValueError(f"unsupported WeChat message type {kind!r}")
    openid, message_id, created = (
        fields.get("FromUserName"),
        fields.get("MsgId"),
        fields.get("CreateTime"),
    )
    if not openid or not message_id or not created or not text:
        raise ValueError("WeChat message lacks FromUserName, MsgId, CreateTime or content")
    evidence: tuple[Evidence, ...] = ()
    if kind == "image" and fields.get("PicUrl"):
        evidence = (Evidence(kind="image", reference=fields["PicUrl"][:500]),)
    return Submission(
        channel=Channel.wechat,
        description=text[:5000],
        contact=Contact(account=f"wechat:{openid}"),
        receiver="wechat",
        received_at=from_unix(created),
        channel_reference=message_id,
        evidence=evidence,
    )


# Parsers of pushes, by source: used on arrival and when an operator replays a dead letter.
PUSH_PARSERS = {"wechat": wechat_submission, "weibo": weibo_submission, "douyin": douyin_submission}
