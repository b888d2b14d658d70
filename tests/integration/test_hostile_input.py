"""Hostile senders (issue #15): each reproduction of the report, against the real services.

What must hold: nothing a sender sends blocks the pipeline, crashes a read, exhausts memory
or is lost; bad input gets a 4xx with a bounded reason, or (from sources that cannot be
asked again) is repaired and registered with the original kept as a dead letter.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from pydantic import SecretStr

from contracts.codes import Channel
from services.common import boundary
from services.common.settings import Settings
from services.intake import registration
from services.intake.channels.chat_social import signed_push_headers, wechat_signature
from services.intake.pii_vault import Contact
from tests.conftest import registered_row, serve, web_form

pytestmark = pytest.mark.integration
TOKEN, WEIBO, DOUYIN = "wechat-token-test", "weibo-secret-test", "douyin-secret-test"
WEB_CHAT = "web-chat-secret-test"


@pytest.fixture
def hostile_settings(settings: Settings, tmp_path) -> Settings:
    return settings.model_copy(
        update={
            "wechat_token": SecretStr(TOKEN),
            "wechat_allow_plaintext": True,
            "weibo_secret": SecretStr(WEIBO),
            "douyin_secret": SecretStr(DOUYIN),
            "web_chat_secret": SecretStr(WEB_CHAT),
            "evidence_dir": tmp_path / "evidence",
            "header_timeout_s": 1.0,
            "body_timeout_s": 1.0,
            "rate_limit_per_minute": 100_000,
        }
    )


def raw_json(text: str) -> dict[str, object]:
    """A body as raw bytes (httpx's json= cannot send a lone surrogate or NaN)."""
    return {"content": text.encode("utf-8", "surrogatepass"), "headers": JSON}


JSON = {"content-type": "application/json"}


async def assert_pipeline_flows(client: httpx.AsyncClient) -> None:
    """A valid feedback sent after the garbage becomes readable: nothing is wedged."""
    answer = await client.post("/v1/feedback", json=web_form("之后的正常反馈：洗衣机漏水"))
    assert answer.status_code == 202, answer.text
    await registered_row(client, answer.json()["feedback_number"])


def settled_dead_letters(settings: Settings, source: str) -> list[tuple[str, str]]:
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT reason, replay_result FROM deadletters WHERE source = %s ORDER BY created_at",
            (source,),
        ).fetchall()
    return [(str(reason), str(result)) for reason, result in rows]


async def test_nul_and_surrogates_are_refused_by_synchronous_channels(hostile_settings) -> None:
    async with serve(hostile_settings) as running:
        client = running.client
        nul_form = (
            '{"channel":"web_form","description":"a\\u0000b","customer":{"phone":"13912345678"}}'
        )
        answer = await client.post("/v1/feedback", **raw_json(nul_form))
        assert answer.status_code == 422
        assert "NUL" in answer.text
        for body in (
            '{"channel":"web_form","description":"坏\\ud800","customer":{"phone":"13912345678"}}',
            '{"channel":"web_form","description":"x","customer":{"phone":"139\\ud8001234"}}',
        ):
            answer = await client.post("/v1/feedback", **raw_json(body))
            assert answer.status_code == 422, answer.text
            answer.json()  # the answer itself is valid JSON
        phone = {
            "channel": "phone",
            "description": "来电\u0000内容",
            "customer": {"phone": "13912345678"},
            "call_id": "call-1",
            "agent_id": "agent.li",
        }
        agent = running.as_staff("agent", ("customer_service",), "agent.li")
        answer = await client.post("/v1/channels/phone", json=phone, headers=agent)
        assert answer.status_code == 422, answer.text
        await assert_pipeline_flows(client)


async def test_a_web_chat_push_is_repaired_not_refused(hostile_settings) -> None:
    """A push cannot be asked again: its text is cleaned, a time outside the window is
    replaced by the receipt time, the original is kept; only what is no session is 422."""
    async with serve(hostile_settings) as running:
        client = running.client
        chat = {
            "session_id": "s\ud800x",
            "customer": {"name": "王\x00芳", "phone": "13912345678"},
            "transcript": [
                {
                    "speaker": "customer",
                    "time": "9999-12-31T23:59:59-12:00",
                    "text": "打印机\x00坏了",
                }
            ],
        }
        raw = json.dumps(chat).encode()  # ensure_ascii keeps NUL and the surrogate escaped
        answer = await client.post(
            "/v1/channels/web-chat/sessions",
            content=raw,
            headers=signed_push_headers(WEB_CHAT, raw),
        )
        assert answer.status_code == 202, answer.text
        row = await registered_row(client, answer.json()["feedback_number"])
        assert row["description"] == "打印机坏了"
        assert abs(datetime.fromisoformat(row["received_at"]) - datetime.now(UTC)) < timedelta(
            minutes=5
        )
        [(reason, result)] = settled_dead_letters(hostile_settings, "web_chat")
        assert (
            "NUL" in reason and "receipt time" in reason and result.startswith("registered cleaned")
        )
        not_a_session = b'{"session_id": 1}'
        refused = await client.post(
            "/v1/channels/web-chat/sessions",
            content=not_a_session,
            headers=signed_push_headers(WEB_CHAT, not_a_session),
        )
        assert refused.status_code == 422


async def test_one_bad_submission_fails_alone_in_its_batch(
    hostile_settings, monkeypatch, caplog
) -> None:
    """A web-chat session id with a NUL used to fail the whole group-commit batch. The
    boundary rule now refuses it before it joins a batch, so to prove the batch itself
    isolates what the database refuses, the rule is switched off here, and the
    submissions are queued together so that they share one batch."""
    monkeypatch.setattr(boundary, "text_flaw", lambda value: None)
    monkeypatch.setattr(registration, "text_flaw", lambda value: None)
    async with serve(hostile_settings) as running:
        registrar = running.platform.registrar
        assert registrar is not None

        def submission(i: int, reference: str | None = None) -> registration.Submission:
            return registration.Submission(
                channel=Channel.web_chat,
                description=f"第{i}台冰箱不制冷",
                contact=Contact(phone=f"1390000{i:04d}"),
                receiver="web_chat",
                channel_reference=reference,
            )

        bad = [submission(i, f"s\x00x{i}") for i in range(3)]
        good = [submission(i) for i in range(3, 33)]
        with caplog.at_level(logging.ERROR, logger="services.intake.registration"):
            answers = await asyncio.gather(
                *(registrar.register(s) for s in [*bad, *good]), return_exceptions=True
            )
        assert "registering them one by one" in caplog.text  # the batch failed, then split
        assert all(isinstance(a, registration.InvalidSubmission) for a in answers[:3]), answers[:3]
        accepted = answers[3:]
        assert all(isinstance(a, registration.Accepted) for a in accepted), accepted
        numbers = {a.feedback_number for a in accepted}  # type: ignore[union-attr]
        assert len(numbers) == 30
        await registered_row(running.client, sorted(numbers)[-1])


async def test_out_of_range_times_never_reach_the_read_side(hostile_settings) -> None:
    async with serve(hostile_settings) as running:
        client = running.client
        for when in (
            "9999-12-31T23:59:59-12:00",
            "0001-01-01T00:00:00+00:00",
            "2099-01-01T00:00:00+08:00",
        ):
            answer = await client.post("/v1/feedback", json=web_form(received_at=when))
            assert answer.status_code == 422, (when, answer.text)
        # Weibo cannot be asked again: registered with the receipt time, original kept.
        push = {
            "type": "comment",
            "id": "wb-9999",
            "created_at": "9999-12-31T23:59:59-12:00",
            "user": {"id": "u1", "screen_name": "用户"},
            "text": "快递丢件，客服不理",
        }
        raw = json.dumps(push).encode()
        answer = await client.post(
            "/v1/channels/weibo/webhook", content=raw, headers=signed_push_headers(WEIBO, raw)
        )
        assert answer.status_code == 202, answer.text
        row = await registered_row(client, answer.json()["feedback_number"])
        received = datetime.fromisoformat(row["received_at"])
        assert abs(received - datetime.now(UTC)) < timedelta(minutes=5)
        assert (await client.get("/v1/registrations?limit=1000")).status_code == 200
        [(reason, result)] = settled_dead_letters(hostile_settings, "weibo")
        assert "received_at" in reason and result.startswith("registered cleaned as F")


async def test_malformed_push_fields_are_kept_not_lost(hostile_settings) -> None:
    async with serve(hostile_settings) as running:
        client = running.client
        # WeChat: a 20-digit CreateTime and a 600-character MsgId.
        stamp, nonce = str(int(time.time())), "n1"
        query = {
            "signature": wechat_signature(TOKEN, stamp, nonce),
            "timestamp": stamp,
            "nonce": nonce,
        }
        xml = (
            "<xml><ToUserName>gh_1</ToUserName><FromUserName>openid-1</FromUserName>"
            f"<CreateTime>{'9' * 20}</CreateTime><MsgType>text</MsgType>"
            f"<Content>净水器\x00漏水</Content><MsgId>{'7' * 600}</MsgId></xml>"
        ).replace("\x00", "&#0;")
        answer = await client.post("/v1/channels/wechat", params=query, content=xml.encode())
        assert answer.status_code == 200, answer.text
        xml = xml.replace("&#0;", "")  # a NUL character reference is not XML either
        query |= {"nonce": "n2", "signature": wechat_signature(TOKEN, stamp, "n2")}
        answer = await client.post("/v1/channels/wechat", params=query, content=xml.encode())
        assert answer.status_code == 200, answer.text
        # Douyin: create_time 10**20.
        push = {
            "event": "im_receive_msg",
            "msg_id": "dy-1",
            "create_time": 10**20,
            "from_user_id": "dy-user",
            "content": {"text": "直播间买的耳机是坏的"},
        }
        raw = json.dumps(push).encode()
        answer = await client.post(
            "/v1/channels/douyin/webhook", content=raw, headers=signed_push_headers(DOUYIN, raw)
        )
        assert answer.status_code == 202, answer.text
        await registered_row(client, answer.json()["feedback_number"], channel="douyin")
        wechat_letters = settled_dead_letters(hostile_settings, "wechat")
        # The first push is not XML (a dead letter to replay); the second was repaired.
        assert wechat_letters[0][1] == "None"
        repaired = [reason for reason, result in wechat_letters if result.startswith("registered")]
        assert len(repaired) == 1
        assert "CreateTime" in repaired[0] or "received_at" in repaired[0]
        assert "channel_reference" in repaired[0]
        number = wechat_letters[1][1].rsplit(" ", 1)[-1]
        row = await registered_row(client, number, channel="wechat")
        assert row["channel_reference"].startswith("sha256:")
        await assert_pipeline_flows(client)


async def test_garbage_gets_a_422_never_a_500(hostile_settings) -> None:
    async with serve(hostile_settings) as running:
        client = running.client
        for literal in ("NaN", "Infinity", "-Infinity", "1e999999"):
            body = f'{{"channel":"web_form","description":{literal},"customer":{{"phone":"13912345678"}}}}'
            for path in ("/v1/feedback", "/v1/channels/phone", "/v1/channels/callback"):
                answer = await client.post(path, **raw_json(body))
                assert answer.status_code == 422, (path, literal, answer.text)
                answer.json()
        deep = "[" * 10_000 + "]" * 10_000
        answer = await client.post(
            "/v1/feedback/multipart",
            data={"feedback": f'{{"channel":"web_form","description":{deep}}}'},
        )
        assert answer.status_code == 422, answer.text
        for name in ("张\u0000三", "\u200b\u200b", "\ufeff "):
            agent = {"name": name, "department": "after_sales"}
            answer = await client.put("/v1/agents/agent.x", content=json.dumps(agent), headers=JSON)
            assert answer.status_code == 422, (name, answer.text)
        answer = await client.put(
            "/v1/agents/agent.x", **raw_json('{"name":"\\ud800","department":"after_sales"}')
        )
        assert answer.status_code == 422
        for limit in ("-1", "0", "100000000", "99999999999999999999"):
            answer = await client.get(f"/v1/deadletters?limit={limit}")
            assert answer.status_code == 422, (limit, answer.text)
        form = await client.post("/v1/feedback", json=web_form())
        number = form.json()["feedback_number"]
        await registered_row(client, number)
        answer = await client.post(
            f"/v1/cases/{number}/dispute",
            content=b'{"reason":"\\udc00"}',
            headers=JSON | running.as_staff("agent", (), "agent.li"),
        )
        assert answer.status_code == 422, answer.text
        big = "x" * 100_000
        answer = await client.post("/v1/feedback", json=web_form(big))
        assert answer.status_code == 422
        assert len(answer.content) < 10_000  # the 422 shows an excerpt, not the input


async def test_bodies_are_limited_by_bytes_read_and_documented_limits_are_reachable(
    hostile_settings,
) -> None:
    async with serve(hostile_settings) as running:
        client = running.client

        port = _port(client)

        def chunked_post(megabytes: int) -> bytes:
            """A chunked body (no Content-Length) of this size; the server's answer."""
            with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
                sock.sendall(
                    b"POST /v1/feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )
                chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
                try:
                    for _ in range(megabytes * 16):
                        sock.sendall(chunk)
                except OSError:
                    pass  # the server stopped reading: what it answered is what counts
                received = b""
                try:
                    while piece := sock.recv(65536):
                        received += piece
                except OSError:
                    pass
                return received

        started = time.monotonic()
        answer = await asyncio.to_thread(chunked_post, 40)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
        assert len(answer) < 2000  # nothing of the body is echoed
        assert time.monotonic() - started < 10
        # A declared oversize body: the client reads the 413 (no reset mid-upload).
        declared = await client.post("/v1/feedback", content=b"x" * 3_000_000, headers=JSON)
        assert declared.status_code == 413 and declared.headers["connection"] == "close"
        photo = b"\x89PNG\r\n\x1a\n" + b"\0" * (1024 * 1024)
        answer = await client.post(
            "/v1/feedback/multipart",
            data={"feedback": json.dumps(web_form("屏幕有划痕，见照片"))},
            files=[("attachments", ("scratch.png", photo, "image/png"))],
        )
        assert answer.status_code == 202, answer.text
        description = "很长的来信" * 330_000  # a 5 MB cell: refused as a row, not as a file
        csv = f"接收时间,客户名称,联系电话,问题描述,接收人\n2026-11-20 10:00,王五,13700000000,{description},门店A\n"
        answer = await client.post(
            "/v1/channels/batch/store", files={"file": ("big.csv", csv.encode(), "text/csv")}
        )
        assert answer.status_code in (200, 422), answer.text[:300]
        # An 8 MB mail (a scanned invoice attached) is within the .eml limit.
        from email.message import EmailMessage

        mail = EmailMessage()
        mail["From"], mail["To"], mail["Subject"] = "li@example.com", "service@example.com", "发票"
        mail["Message-ID"] = "<big-mail@example.com>"
        mail.set_content("发票金额开错了，扫描件见附件")
        mail.add_attachment(
            b"%PDF-1.4\n" + b"0" * (6 * 1024 * 1024), maintype="application", subtype="pdf",
            filename="invoice.pdf",
        )  # fmt: skip
        raw_mail = mail.as_bytes()
        assert len(raw_mail) > 8_000_000
        taken = await client.post(
            "/v1/channels/email/eml", files={"file": ("big.eml", raw_mail, "message/rfc822")}
        )
        assert taken.status_code == 202, taken.text[:300]
        # Empty and lying attachments.
        for name, data, kind in (
            ("empty.png", b"", "image/png"),
            ("calc.png", b"MZ\x90\x00\x03" + b"\0" * 4000, "image/png"),
            ("calc.txt", b"\x7fELF\x02\x01\x01" + b"\0" * 4000, "text/plain"),
        ):
            answer = await client.post(
                "/v1/feedback/multipart",
                data={"feedback": json.dumps(web_form("附件"))},
                files=[("attachments", (name, data, kind))],
            )
            assert answer.status_code == 422, (name, answer.text)
        await assert_pipeline_flows(client)


async def test_unfinished_requests_are_timed_out(hostile_settings) -> None:
    async with serve(hostile_settings) as running:
        port = _port(running.client)

        def talk(payload: bytes) -> tuple[bytes, float]:
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
                sock.sendall(payload)
                received = b""
                while chunk := sock.recv(65536):
                    received += chunk
            return received, time.monotonic() - started

        # Headers that never finish: the connection is closed after the header timeout.
        answer, took = await asyncio.to_thread(talk, b"POST /v1/feedback HTTP/1.1\r\nHost: x\r\n")
        assert took < 5, took
        # A body shorter than its Content-Length: 408, and the connection closes.
        answer, took = await asyncio.to_thread(
            talk,
            b"POST /v1/feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"channel"',
        )
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"connection: close" in answer.lower()
        assert took < 5, took
        await assert_pipeline_flows(running.client)


def _port(client: httpx.AsyncClient) -> int:
    return int(client.base_url.port or 0)


def _now() -> str:
    return datetime.now(UTC).isoformat()
