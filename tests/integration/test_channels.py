"""One end-to-end test per channel, on real Kafka, PostgreSQL and SMTP over loopback."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import smtplib
import sys
import time
from email.header import Header
from email.message import EmailMessage
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr, make_msgid

import pytest
from openpyxl import Workbook
from pydantic import SecretStr

from services.common.settings import Settings
from services.intake.channels.chat_social import signed_push_headers, wechat_signature
from services.intake.evidence import FolderBlobs
from tests.conftest import free_port, registered_row, serve, wait_for, web_form

pytestmark = pytest.mark.integration
TOKEN, WEIBO, DOUYIN = "wechat-token-test", "weibo-secret-test", "douyin-secret-test"
WEB_CHAT = "web-chat-secret-test"


@pytest.fixture
def channel_settings(settings: Settings, tmp_path) -> Settings:
    return settings.model_copy(
        update={
            "wechat_token": SecretStr(TOKEN),
            "wechat_allow_plaintext": True,
            "weibo_secret": SecretStr(WEIBO),
            "douyin_secret": SecretStr(DOUYIN),
            "web_chat_secret": SecretStr(WEB_CHAT),
            "smtp_port": free_port(),
            "evidence_dir": tmp_path / "evidence",
        }
    )


def send_mail(settings: Settings, message: bytes | EmailMessage | MIMEMultipart) -> str:
    with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=30) as smtp:
        raw = message if isinstance(message, bytes) else message.as_bytes()
        smtp.ehlo()
        code, _ = smtp.mail("customer@example.com")
        assert code == 250
        smtp.rcpt("service@company.example")
        code, answer = smtp.data(raw)
        assert code == 250, answer
        return answer.decode().split()[-1]


def gbk_mail(
    subject: str, body: str, sender_name: str, message_id: str, **headers: str
) -> MIMEMultipart:
    mail = MIMEMultipart()
    mail["Subject"] = Header(subject, "gb2312").encode()
    mail["From"] = formataddr((str(Header(sender_name, "gbk").encode()), "li.na@example.com"))
    mail["To"] = "service@company.example"
    mail["Message-ID"] = message_id
    for name, value in headers.items():
        mail[name.replace("_", "-")] = value
    mail.attach(MIMEText(body, "plain", "gbk"))
    return mail


async def test_web_form_with_attachments(channel_settings: Settings) -> None:
    async with serve(channel_settings) as running:
        photo = b"\x89PNG\r\n\x1a\n" + b"0" * 2048
        response = await running.client.post(
            "/v1/feedback/multipart",
            data={
                "feedback": json.dumps(web_form("洗衣机外壳有明显划痕", product_model="洗衣机 W10"))
            },
            files=[("attachments", ("scratch.png", photo, "image/png"))],
        )
        assert response.status_code == 202, response.text
        row = await registered_row(
            running.client, response.json()["feedback_number"], status="assigned"
        )
        evidence = row["evidence"][0]
        assert evidence["sha256"] == hashlib.sha256(photo).hexdigest()
        assert evidence["reference"] == f"evidence://sha256/{evidence['sha256']}"
        store = running.platform.evidence
        assert store is not None and await store.open(evidence["reference"]) == photo
        assert isinstance(store.blobs, FolderBlobs)
        on_disk = store.blobs.path_of(evidence["sha256"]).read_bytes()
        assert photo not in on_disk and len(on_disk) == len(photo) + 12 + 16  # encrypted at rest
        refused = await running.client.post(
            "/v1/feedback/multipart",
            data={"feedback": json.dumps(web_form())},
            files=[("attachments", ("run.exe", b"MZ", "application/x-msdownload"))],
        )
        assert refused.status_code == 422 and "not accepted" in refused.text


async def test_email_over_smtp_in_chinese_encodings_and_a_reply(channel_settings: Settings) -> None:
    async with serve(channel_settings) as running:
        message_id = make_msgid(domain="example.com")
        mail = gbk_mail(
            "投诉：打印机无法连接WiFi",
            "您好，打印机无法连接WiFi，提示驱动安装失败，已尝试重启无效。型号：LP-2200\n\n"
            "> 以前的邮件内容不应出现\n",
            "李娜",
            message_id,
        )
        attachment = MIMEApplication(b"%PDF-1.4 invoice", _subtype="pdf")
        attachment.add_header("Content-Disposition", "attachment", filename=("gbk", "", "发票.pdf"))
        mail.attach(attachment)
        number = await asyncio.to_thread(send_mail, channel_settings, mail)
        row = await registered_row(running.client, number, status="assigned")
        assert row["channel"] == "email" and row["channel_reference"] == message_id
        assert row["description"].startswith("投诉：打印机无法连接WiFi")
        assert "以前的邮件" not in row["description"]
        assert row["product_model"] == "LP-2200"
        assert row["evidence"][0]["filename"] == "发票.pdf"
        assert "李娜" not in json.dumps(row, ensure_ascii=False)

        # The same mail delivered again registers nothing new.
        assert await asyncio.to_thread(send_mail, channel_settings, mail) == number

        reply = gbk_mail(
            "回复：投诉",
            "补充一下：重启了三次还是不行",
            "李娜",
            make_msgid(),
            In_Reply_To=message_id,
        )
        assert await asyncio.to_thread(send_mail, channel_settings, reply) == number
        await registered_row(running.client, number, correspondence_count=1)
        by_subject = gbk_mail(f"关于 {number} 的进展", "请尽快处理", "李娜", make_msgid())
        assert await asyncio.to_thread(send_mail, channel_settings, by_subject) == number
        await registered_row(running.client, number, correspondence_count=2)

        eml = gbk_mail("Smart lock", "The smart lock keeps disconnecting.", "Tom", make_msgid())
        imported = await running.client.post(
            "/v1/channels/email/eml", files={"file": ("mail.eml", eml.as_bytes(), "message/rfc822")}
        )
        assert imported.status_code == 202
        await registered_row(running.client, imported.json()["feedback_number"], channel="email")


async def test_unreadable_email_becomes_a_dead_letter_that_can_be_listed(
    channel_settings: Settings,
) -> None:
    async with serve(channel_settings) as running:
        answer = await asyncio.to_thread(send_mail, channel_settings, b"\r\n\r\n")
        assert answer == "dead-letter"
        letters = (await running.client.get("/v1/deadletters")).json()
        assert letters and letters[0]["source"] == "email" and letters[0]["reason"]
        replay = await running.client.post(f"/v1/deadletters/{letters[0]['dead_letter_id']}/replay")
        assert replay.status_code == 409  # still unreadable; kept
        cli = [
            sys.executable,
            "-m",
            "feedback_cli.main",
            "deadletter",
            "list",
            "--url",
            str(running.client.base_url),
        ]
        anonymous = await asyncio.create_subprocess_exec(
            *cli,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "FEEDBACK_TOKEN": ""},
        )
        await anonymous.communicate()
        assert anonymous.returncode == 1  # 401: dead letters are for admins
        token = running.client.headers["Authorization"].removeprefix("Bearer ")
        listed = await asyncio.create_subprocess_exec(
            *cli, stdout=asyncio.subprocess.PIPE, env={**os.environ, "FEEDBACK_TOKEN": token}
        )  # fmt: skip
        out, _ = await listed.communicate()
        assert listed.returncode == 0 and letters[0]["dead_letter_id"] in out.decode()


async def test_web_chat_session(channel_settings: Settings) -> None:
    async with serve(channel_settings) as running:
        session = {
            "session_id": "chat-20240520-77",
            "agent_id": "cs-wang",
            "customer": {"name": "王芳", "phone": "13812345678"},
            "transcript": [
                {
                    "speaker": "customer",
                    "time": "2024-05-20T09:30:00+08:00",
                    "text": "退款申请提交十天了一直显示处理中",
                },
                {"speaker": "agent", "time": "2024-05-20T09:31:00+08:00", "text": "我帮您查一下"},
                {
                    "speaker": "customer",
                    "time": "2024-05-20T09:32:00+08:00",
                    "text": "没有人告诉我进度",
                },
            ],
        }
        raw = json.dumps(session).encode()
        unsigned = await running.client.post(
            "/v1/channels/web-chat/sessions",
            content=raw,
            headers={"content-type": "application/json"},
        )
        assert unsigned.status_code == 422  # the signature headers are required
        forged = await running.client.post(
            "/v1/channels/web-chat/sessions",
            content=raw,
            headers=signed_push_headers("not-the-secret", raw),
        )
        assert forged.status_code == 403
        response = await running.client.post(
            "/v1/channels/web-chat/sessions",
            content=raw,
            headers=signed_push_headers(WEB_CHAT, raw),
        )
        assert response.status_code == 202, response.text
        row = await registered_row(running.client, response.json()["feedback_number"])
        assert row["channel"] == "web_chat" and "我帮您查一下" not in row["description"]
        assert row["evidence"][0]["kind"] == "transcript"


async def test_wechat_push_signed_and_forged(channel_settings: Settings) -> None:
    async with serve(channel_settings) as running:
        timestamp, nonce = str(int(time.time())), "nonce-1"
        signature = wechat_signature(TOKEN, timestamp, nonce)
        echo = await running.client.get(
            "/v1/channels/wechat",
            params={
                "signature": signature,
                "timestamp": timestamp,
                "nonce": nonce,
                "echostr": "hi",
            },
        )
        assert echo.text == "hi"
        xml = (
            "<xml><ToUserName><![CDATA[gh_company]]></ToUserName><FromUserName><![CDATA[oUser123]]></FromUserName>"
            f"<CreateTime>{timestamp}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
            "<Content><![CDATA[电暖器插头冒烟了，有焦味！]]></Content><MsgId>23456789</MsgId></xml>"
        ).encode()
        params = {"signature": signature, "timestamp": timestamp, "nonce": nonce}
        pushed = await running.client.post("/v1/channels/wechat", params=params, content=xml)
        assert pushed.text == "success"
        forged = await running.client.post(
            "/v1/channels/wechat", params={**params, "signature": "0" * 40}, content=xml
        )
        assert forged.status_code == 403
        stale_ts = str(int(time.time()) - 3600)
        stale = await running.client.post(
            "/v1/channels/wechat",
            params={
                "signature": wechat_signature(TOKEN, stale_ts, nonce),
                "timestamp": stale_ts,
                "nonce": nonce,
            },
            content=xml,
        )
        assert stale.status_code == 403
        rows = await wait_for(
            lambda: _channel_rows(running.client, "wechat"), timeout=30, what="wechat registration"
        )
        assert len(rows) == 1 and rows[0]["channel_reference"] == "23456789"
        row = await registered_row(running.client, rows[0]["feedback_number"], priority="urgent")
        assert "safety" in row["flags"]


async def _channel_rows(client, channel: str) -> list[dict]:
    return (await client.get("/v1/registrations", params={"channel": channel})).json()["items"]


def signed(secret: str, body: dict) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body, ensure_ascii=False).encode()
    return raw, signed_push_headers(secret, raw)


async def test_weibo_and_douyin_webhooks_signed_and_forged(channel_settings: Settings) -> None:
    async with serve(channel_settings) as running:
        weibo = {
            "type": "comment",
            "id": "wb-4990001",
            "created_at": "2024-05-20T10:00:00+08:00",
            "user": {"id": "560001", "screen_name": "小明同学"},
            "text": "@官方客服 订单说好三天送达，现在第七天了还没有收到货",
            "status_id": "4990000",
        }
        raw, headers = signed(WEIBO, weibo)
        ok = await running.client.post("/v1/channels/weibo/webhook", content=raw, headers=headers)
        assert ok.status_code == 202 and ok.json()["status"] == "accepted", ok.text
        forged_raw, forged_headers = signed("wrong-secret", weibo)
        assert (
            await running.client.post(
                "/v1/channels/weibo/webhook", content=forged_raw, headers=forged_headers
            )
        ).status_code == 403
        tampered = await running.client.post(
            "/v1/channels/weibo/webhook", content=raw.replace(b"wb-", b"xx-"), headers=headers
        )
        assert tampered.status_code == 403

        douyin = {
            "event": "im_receive_msg",
            "msg_id": "dy-778899",
            "create_time": int(time.time()),
            "from_user_id": "dyu-1001",
            "content": {"text": "必须表扬一下你们的上门安装师傅，特别专业！"},
        }
        raw, headers = signed(DOUYIN, douyin)
        ok = await running.client.post("/v1/channels/douyin/webhook", content=raw, headers=headers)
        assert ok.status_code == 202 and ok.json()["status"] == "accepted"
        row = await registered_row(
            running.client, ok.json()["feedback_number"], feedback_type="praise"
        )
        assert row["channel"] == "douyin"
        broken_raw, broken_headers = signed(DOUYIN, {"event": "im_receive_msg", "msg_id": "x"})
        kept = await running.client.post(
            "/v1/channels/douyin/webhook", content=broken_raw, headers=broken_headers
        )
        assert kept.status_code == 202 and kept.json()["status"] == "kept as a dead letter"


async def test_phone_entry_and_callback_finding(channel_settings: Settings) -> None:
    async with serve(channel_settings) as running:
        call = web_form("客户来电：冰箱买回来一周就不制冷了", product_model="冰箱 F5") | {
            "channel": "phone",
            "call_id": "call-0001",
            "recording_ref": "rec://2024/05/20/call-0001.wav",
        }
        cs_li = running.as_staff("agent", ("customer_service",), "cs-li")
        anonymous = await running.client.post(
            "/v1/channels/phone", json=call, headers={"Authorization": ""}
        )
        assert anonymous.status_code == 401
        quality = running.as_staff("quality")
        assert (
            await running.client.post("/v1/channels/phone", json=call, headers=quality)
        ).status_code == 403
        response = await running.client.post("/v1/channels/phone", json=call, headers=cs_li)
        assert response.status_code == 202, response.text
        earlier = response.json()["feedback_number"]
        row = await registered_row(running.client, earlier)
        assert row["receiver"] == "cs-li" and row["evidence"][0]["kind"] == "recording"

        finding = {
            "callback_id": "cb-1",
            "earlier_feedback_number": earlier,
            "customer": {"phone": "13812345678"},
            "description": "回访时客户表示维修后冰箱仍然不制冷，问题未彻底解决",
            "product_model": "冰箱 F5",
        }
        cs_zhao = running.as_staff("agent", ("customer_service",), "cs-zhao")
        linked = await running.client.post("/v1/channels/callback", json=finding, headers=cs_zhao)
        assert linked.status_code == 202, linked.text
        row = await registered_row(running.client, linked.json()["feedback_number"])
        assert row["channel"] == "callback" and row["related_feedback"] == earlier
        assert row["receiver"] == "cs-zhao"  # the signed-in agent, not a body field
        unknown = await running.client.post(
            "/v1/channels/callback", json=finding | {"earlier_feedback_number": "F20000101-0001"}
        )
        assert unknown.status_code == 422


async def test_store_csv_and_letter_xlsx_batches(channel_settings: Settings) -> None:
    async with serve(channel_settings) as running:
        csv_text = (
            "接收时间,客户名称/联系人,联系方式,产品型号/服务类型,问题描述,客户情绪,接收人\n"
            "2024-05-20 09:30,张伟,13812345678,吸尘器 V8,吸尘器使用三天后无法启动,不满,门店-王\n"
            "2024-05-20 10:00,王芳,,扫地机器人 R7,没有联系方式的一行,平静,门店-王\n"
            "not a time,李娜,13900001111,,时间写错的一行,平静,门店-王\n"
            "2024-05-20 11:00,赵敏,zhao.min@example.com,,顾客表扬店员耐心讲解产品功能,平静,门店-李\n"
        ).encode("gb18030")
        first = await running.client.post(
            "/v1/channels/batch/store", files={"file": ("门店登记表.csv", csv_text, "text/csv")}
        )
        assert first.status_code == 200, first.text
        summary = first.json()
        assert summary["rows"] == 4
        assert [t["row"] for t in summary["taken"]] == [2, 5]
        assert [r["row"] for r in summary["refused"]] == [3, 4]
        assert all(r["errors"] for r in summary["refused"])
        again = await running.client.post(
            "/v1/channels/batch/store", files={"file": ("门店登记表.csv", csv_text, "text/csv")}
        )
        assert [t["feedback_number"] for t in again.json()["taken"]] == [
            t["feedback_number"] for t in summary["taken"]
        ]
        assert all(t["duplicate"] for t in again.json()["taken"])

        book = Workbook()
        sheet = book.active
        sheet.append(["反馈时间", "联系人", "邮箱", "问题描述", "客户级别", "受理人"])
        sheet.append(
            [
                "2024-05-18 14:00",
                "周杰",
                "zhou.jie@example.com",
                "对三月份账单金额有异议，请核查",
                "VIP",
                "信件-刘",
            ]
        )
        buffer = io.BytesIO()
        book.save(buffer)
        letter = await running.client.post(
            "/v1/channels/batch/letter",
            files={
                "file": (
                    "letters.xlsx",
                    buffer.getvalue(),
                    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                )
            },
        )
        assert letter.status_code == 200 and len(letter.json()["taken"]) == 1, letter.text
        row = await registered_row(
            running.client, letter.json()["taken"][0]["feedback_number"], status="assigned"
        )
        assert (
            row["channel"] == "letter"
            and row["customer_tier"] == "vip"
            and row["registration_late"] is True
        )


async def test_pending_information_is_requested_then_supplied(channel_settings: Settings) -> None:
    async with serve(channel_settings) as running:
        response = await running.client.post(
            "/v1/feedback", json=web_form("吸尘器使用三天后无法启动")
        )
        number = response.json()["feedback_number"]
        customer = {"X-Customer-Token": response.json()["customer_token"], "Authorization": ""}
        row = await registered_row(running.client, number, status="pending_info")
        assert row["missing_information"] == ["product_model"]
        supplements = f"/v1/feedback/{number}/supplements"
        body = {"channel": "phone", "product_model": "吸尘器 V8"}
        stranger = await running.client.post(supplements, json=body, headers={"Authorization": ""})
        assert stranger.status_code == 401
        other = await running.client.post(
            "/v1/feedback", json=web_form("另一位客户的反馈", customer={"phone": "13900002222"})
        )
        not_theirs = {"X-Customer-Token": other.json()["customer_token"], "Authorization": ""}
        assert (
            await running.client.post(supplements, json=body, headers=not_theirs)
        ).status_code == 401
        supplied = await running.client.post(supplements, json=body, headers=customer)
        assert supplied.status_code == 202
        row = await registered_row(running.client, number, status="assigned")
        assert row["product_model"] == "吸尘器 V8" and row["missing_information"] == []
        assert (
            await running.client.post(
                "/v1/feedback/F20000101-0001/supplements", json={"channel": "phone", "text": "x"}
            )
        ).status_code == 404
