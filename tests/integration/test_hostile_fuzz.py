"""Property (issue #15): whatever hostile values a sender puts in any field of any intake
endpoint (NUL, unpaired surrogates, invisible text, extreme dates, NaN, huge numbers), the
answer is never a 5xx, every feedback accepted becomes readable within seconds, and a valid
feedback sent after all the garbage is readable too."""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import SecretStr

from deploy.postgres_server import create_database
from services.common.settings import Settings
from services.intake.channels.chat_social import signed_push_headers, wechat_signature
from tests.conftest import serve_in_thread, signed_in, web_form

pytestmark = pytest.mark.integration
TOKEN, WEIBO, DOUYIN = "wechat-token-fuzz", "weibo-secret-fuzz", "douyin-secret-fuzz"
WEB_CHAT = "web-chat-secret-fuzz"
STAFF: dict[str, str] = {}  # an admin's token, set when the platform starts

HOSTILE_TEXT = [
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfffy",
    "\u200b\u200b",
    "\ufeff",
    "\x1b[31m",
    "=cmd|' /C calc'!A0",
    "'; DROP TABLE registrations; --",
    "x" * 6000,
    "",
]
HOSTILE_TIMES = [
    "9999-12-31T23:59:59-12:00",
    "0001-01-01T00:00:00+00:00",
    "2099-01-01T00:00:00+08:00",
    "1970-01-01T00:00:00Z",
    "2026-02-30T10:00:00+08:00",
]
HOSTILE_NUMBERS = [float("nan"), float("inf"), float("-inf"), 10**30, -(10**20), 1e308]

hostile = (
    st.sampled_from(HOSTILE_TEXT)
    | st.sampled_from(HOSTILE_TIMES)
    | st.sampled_from(HOSTILE_NUMBERS)
    | st.text(max_size=40)
    | st.text(alphabet=st.characters(codec=None), max_size=20)  # surrogates included
)


def encode(value: Any) -> bytes:
    """JSON as a hostile sender writes it: NaN literals and lone surrogates escaped."""
    return json.dumps(value, allow_nan=True).encode()


@pytest.fixture(scope="module")
def live(postgres, kafka, tmp_path_factory) -> Iterator[str]:
    name = f"hfuzz_{uuid.uuid4().hex[:10]}"
    settings = Settings(
        database_url=create_database(postgres.url, name),
        kafka_bootstrap_servers=kafka.bootstrap_servers,
        topic_prefix=f"{name}.",
        pii_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        auth_token_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        rate_limit_per_minute=1_000_000,
        wechat_token=SecretStr(TOKEN),
        wechat_allow_plaintext=True,
        weibo_secret=SecretStr(WEIBO),
        douyin_secret=SecretStr(DOUYIN),
        web_chat_secret=SecretStr(WEB_CHAT),
        evidence_dir=tmp_path_factory.mktemp("evidence"),
    )
    with serve_in_thread(settings) as base:
        STAFF.update(signed_in(settings, "admin"))
        yield base


ACCEPTED: list[str] = []


def check(response: httpx.Response, where: str) -> None:
    assert response.status_code < 500, (where, response.status_code, response.text[:500])
    response.json()  # every answer, refusals included, is valid JSON
    number = response.json().get("feedback_number") if response.status_code in (200, 202) else None
    if isinstance(number, str) and number.startswith("F"):
        ACCEPTED.append(number)


FUZZ = hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def spoiled(
    valid: dict[str, Any], paths: list[tuple[str, ...]]
) -> st.SearchStrategy[dict[str, Any]]:
    """The valid body with one field (a path into it) replaced by a hostile value, so that
    the hostile value is what decides the answer."""

    def put(path_value: tuple[tuple[str, ...], Any]) -> dict[str, Any]:
        path, value = path_value
        body = json.loads(json.dumps(valid))
        target = body
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return body

    return st.tuples(st.sampled_from(paths), hostile).map(put)


def valid_form() -> dict[str, Any]:
    return {
        "channel": "web_form",
        "description": "冰箱不制冷，已经三天了",
        "customer": {"name": "张伟", "phone": "139-1234-5678"},
        "product_model": "BCD-500",
        "received_at": "2026-11-20T10:00:00+08:00",
    }


FORM_FIELDS = [
    ("description",),
    ("customer", "name"),
    ("customer", "phone"),
    ("product_model",),
    ("received_at",),
    ("purchase_date",),
    ("expectation",),
]


@FUZZ
@given(body=spoiled(valid_form(), FORM_FIELDS))
def test_web_form(live: str, body) -> None:
    check(httpx.post(f"{live}/v1/feedback", content=encode(body), timeout=30), "web form")


@FUZZ
@given(
    body=spoiled(
        {**valid_form(), "channel": "phone", "call_id": "c-1", "agent_id": "agent.li"},
        [*FORM_FIELDS, ("call_id",), ("recording_ref",)],
    )
)
def test_phone(live: str, body) -> None:
    body["call_id"] = (
        f"{body['call_id']}-{uuid.uuid4()}" if isinstance(body["call_id"], str) else body["call_id"]
    )
    response = httpx.post(
        f"{live}/v1/channels/phone", content=encode(body), headers=STAFF, timeout=30
    )
    check(response, "phone")


CHAT = {
    "session_id": "s-1",
    "customer": {"phone": "13912345678"},
    "transcript": [
        {"speaker": "customer", "time": "2026-11-20T10:00:00+08:00", "text": "路由器断网"}
    ],
}


@FUZZ
@given(
    body=spoiled(
        CHAT,
        [
            ("session_id",),
            ("transcript", 0, "time"),
            ("transcript", 0, "text"),
            ("customer", "phone"),
        ],  # type: ignore[list-item]
    )
)
def test_web_chat(live: str, body) -> None:
    if isinstance(body["session_id"], str):
        body["session_id"] += str(uuid.uuid4())
    raw = encode(body)
    response = httpx.post(
        f"{live}/v1/channels/web-chat/sessions",
        content=raw,
        headers=signed_push_headers(WEB_CHAT, raw),
        timeout=30,
    )
    check(response, "web chat")


WEIBO_PUSH = {
    "type": "comment",
    "id": "wb",
    "created_at": "2026-11-20T10:00:00+08:00",
    "user": {"id": "u1", "screen_name": "用户"},
    "text": "快递丢件",
}
DOUYIN_PUSH = {
    "event": "im_receive_msg",
    "msg_id": "dy",
    "create_time": 1763600000,
    "from_user_id": "dy-user",
    "content": {"text": "耳机是坏的"},
}


@FUZZ
@given(
    weibo=spoiled(WEIBO_PUSH, [("id",), ("created_at",), ("text",), ("user", "screen_name")]),
    douyin=spoiled(
        DOUYIN_PUSH, [("msg_id",), ("create_time",), ("content", "text"), ("from_user_id",)]
    ),
)
def test_weibo_and_douyin_pushes(live: str, weibo, douyin) -> None:
    if isinstance(weibo["id"], str):
        weibo["id"] += str(uuid.uuid4())
    raw = encode(weibo)
    response = httpx.post(
        f"{live}/v1/channels/weibo/webhook",
        content=raw,
        headers=signed_push_headers(WEIBO, raw),
        timeout=30,
    )
    check(response, "weibo")
    if isinstance(douyin["msg_id"], str):
        douyin["msg_id"] += str(uuid.uuid4())
    raw = encode(douyin)
    response = httpx.post(
        f"{live}/v1/channels/douyin/webhook",
        content=raw,
        headers=signed_push_headers(DOUYIN, raw),
        timeout=30,
    )
    check(response, "douyin")


@FUZZ
@given(
    text=st.text(alphabet=st.characters(codec="utf-8"), max_size=60)
    | st.sampled_from(HOSTILE_TEXT),
    created=st.sampled_from(["1", "9" * 20, "-5", "abc", str(int(time.time()))]),
    message_id=st.sampled_from(["1", "7" * 600]) | st.text(max_size=30),
)
def test_wechat_push(live: str, text, created, message_id) -> None:
    from xml.sax.saxutils import escape

    def xml_safe(value: str) -> str:
        # What XML can carry at all; the rest a platform cannot send.
        return escape(
            "".join(
                c
                for c in value
                if c in "\t\n\r" or (ord(c) >= 32 and not 0xD800 <= ord(c) <= 0xDFFF)
            )
        )

    stamp, nonce = str(int(time.time())), uuid.uuid4().hex
    query = {"signature": wechat_signature(TOKEN, stamp, nonce), "timestamp": stamp, "nonce": nonce}
    xml = (
        "<xml><ToUserName>gh</ToUserName><FromUserName>openid-f</FromUserName>"
        f"<CreateTime>{created}</CreateTime><MsgType>text</MsgType>"
        f"<Content>{xml_safe(text)}</Content><MsgId>{xml_safe(message_id)}</MsgId></xml>"
    )
    response = httpx.post(
        f"{live}/v1/channels/wechat", params=query, content=xml.encode(), timeout=30
    )
    assert response.status_code == 200, response.text[:300]


def test_everything_accepted_is_readable_and_a_valid_feedback_still_flows(live: str) -> None:
    assert ACCEPTED, "the fuzzing accepted nothing at all: the strategies are too hostile"
    answer = httpx.post(f"{live}/v1/feedback", json=web_form("最后一条正常反馈"), timeout=30)
    assert answer.status_code == 202
    waiting = {*ACCEPTED, answer.json()["feedback_number"]}
    deadline = time.monotonic() + 60
    while waiting and time.monotonic() < deadline:
        for number in list(waiting):
            response = httpx.get(f"{live}/v1/feedback/{number}", headers=STAFF, timeout=30)
            assert response.status_code in (200, 404), response.text[:300]
            if response.status_code == 200:
                waiting.discard(number)
        time.sleep(0.2)
    assert not waiting, f"{len(waiting)} accepted feedbacks never became readable"
    page = httpx.get(f"{live}/v1/registrations?limit=1000", headers=STAFF, timeout=30)
    assert page.status_code == 200
