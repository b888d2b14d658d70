"""How the demo delivers each sample item: through its own channel adapter, as the
channel's real sender would (signed pushes, SMTP, batch files, agent forms)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import secrets
import smtplib
import time
from collections.abc import Callable
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

import httpx

from services.intake.channels.chat_social import signed_push_headers, wechat_signature

SECRETS = {
    "wechat": "demo-wechat-token",
    "weibo": "demo-weibo-secret",
    "douyin": "demo-douyin-secret",
    "web_chat": "demo-web-chat-secret",
}
# Who enters what staff enter: the agent on the phone, the agent calling back.
PHONE_AGENT, CALLBACK_AGENT = "cs-li", "cs-zhao"


def _customer(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item["customer"].items() if k in ("name", "phone", "email")}


def _form(item: dict[str, Any], received_at: datetime) -> dict[str, Any]:
    body: dict[str, Any] = {
        "description": item["description"],
        "customer": _customer(item),
        "customer_tier": item.get("customer_tier", "normal"),
        "received_at": received_at.isoformat(),
    }
    for name in ("product_model", "purchase_date", "expectation", "emotion"):
        if item.get(name):
            body[name] = item[name]
    return body


def _signed(secret: str, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(payload, ensure_ascii=False).encode()
    return raw, signed_push_headers(secret, raw)


async def deliver(
    client: httpx.AsyncClient,
    smtp_port: int,
    item: dict[str, Any],
    received_at: datetime,
    earlier_number: str | None,
    staff: Callable[[str], dict[str, str]],
) -> str | None:
    """Send one item through its channel; returns its feedback number when the channel
    answers with one (batch channels are sent together by `deliver_batches`). `staff`
    gives the signed-in headers of an agent, by agent id."""
    channel, ref = item["channel"], item.get("channel_reference", "")
    if channel == "web_form":
        response = await client.post(
            "/v1/feedback", json={"channel": "web_form", **_form(item, received_at)}
        )
    elif channel == "phone":
        response = await client.post(
            "/v1/channels/phone",
            json={"channel": "phone", **_form(item, received_at), "call_id": ref},
            headers=staff(PHONE_AGENT),
        )
    elif channel == "web_chat":
        raw, headers = _signed(
            SECRETS["web_chat"],
            {
                "session_id": ref,
                "agent_id": "cs-wang",
                "customer": _customer(item),
                "customer_tier": item.get("customer_tier", "normal"),
                **({"product_model": item["product_model"]} if item.get("product_model") else {}),
                "transcript": [
                    {
                        "speaker": "customer",
                        "time": received_at.isoformat(),
                        "text": item["description"],
                    },
                    {
                        "speaker": "agent",
                        "time": received_at.isoformat(),
                        "text": "好的，已为您登记。",
                    },
                ],
            },
        )
        response = await client.post("/v1/channels/web-chat/sessions", content=raw, headers=headers)
    elif channel == "callback":
        response = await client.post(
            "/v1/channels/callback",
            json={
                "callback_id": ref,
                "earlier_feedback_number": earlier_number,
                "customer": _customer(item),
                "description": item["description"],
                **({"product_model": item["product_model"]} if item.get("product_model") else {}),
            },
            headers=staff(CALLBACK_AGENT),
        )
    elif channel == "wechat":
        timestamp, nonce = str(int(time.time())), secrets.token_hex(8)
        xml = (
            f"<xml><ToUserName>gh_demo</ToUserName><FromUserName>o{ref}</FromUserName>"
            f"<CreateTime>{int(received_at.timestamp())}</CreateTime><MsgType>text</MsgType>"
            f"<Content><![CDATA[{item['description']}]]></Content><MsgId>{abs(hash(ref))}</MsgId></xml>"
        ).encode()
        params = {
            "signature": wechat_signature(SECRETS["wechat"], timestamp, nonce),
            "timestamp": timestamp,
            "nonce": nonce,
        }
        response = await client.post("/v1/channels/wechat", params=params, content=xml)
        response.raise_for_status()
        return None  # WeChat only hears "success"; the number is looked up by reference
    elif channel == "weibo":
        raw, headers = _signed(
            SECRETS["weibo"],
            {"type": "comment", "id": ref, "created_at": received_at.isoformat(),
             "user": {"id": ref, "screen_name": "微博用户"}, "text": item["description"]},
        )  # fmt: skip
        response = await client.post("/v1/channels/weibo/webhook", content=raw, headers=headers)
    elif channel == "douyin":
        raw, headers = _signed(
            SECRETS["douyin"],
            {"event": "im_receive_msg", "msg_id": ref, "create_time": int(received_at.timestamp()),
             "from_user_id": ref, "content": {"text": item["description"]}},
        )  # fmt: skip
        response = await client.post("/v1/channels/douyin/webhook", content=raw, headers=headers)
    elif channel == "email":
        return await asyncio.to_thread(_mail, smtp_port, item, received_at)
    else:
        return None
    response.raise_for_status()
    return str(response.json()["feedback_number"])


def _mail(smtp_port: int, item: dict[str, Any], received_at: datetime) -> str:
    mail = EmailMessage()
    mail["Subject"] = "客户反馈"
    customer = item["customer"]
    address = customer.get("email") or f"{item.get('channel_reference', 'customer')}@example.com"
    mail["From"] = f"{customer.get('name', '')} <{address}>"
    mail["Message-ID"] = make_msgid(domain="example.com")
    mail["Date"] = format_datetime(received_at)
    text = item["description"] + (
        f"\n型号：{item['product_model']}" if item.get("product_model") else ""
    )
    mail.set_content(text, charset="gb18030")
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as smtp:
        smtp.ehlo()
        smtp.mail("customer@example.com")
        smtp.rcpt("service@company.example")
        code, answer = smtp.data(mail.as_bytes())
        if code != 250:
            raise RuntimeError(f"SMTP refused the mail: {code} {answer!r}")
        return answer.decode().split()[-1]


async def deliver_batches(
    client: httpx.AsyncClient, batch_items: dict[str, list[tuple[dict[str, Any], datetime]]]
) -> list[str]:
    """Stores and letters arrive as registration tables (CSV, Chinese headers)."""
    numbers: list[str] = []
    for channel, rows in batch_items.items():
        if not rows:
            continue
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(
            [
                "接收时间",
                "客户名称/联系人",
                "联系方式",
                "产品型号/服务类型",
                "购买日期",
                "问题描述",
                "期望解决方案",
                "单号",
                "接收人",
            ]
        )
        for item, received_at in rows:
            customer = item["customer"]
            writer.writerow([
                received_at.isoformat(), customer.get("name", ""),
                customer.get("phone") or customer.get("email", ""), item.get("product_model", ""),
                item.get("purchase_date", ""), item["description"], item.get("expectation", ""),
                item.get("channel_reference", ""), f"{channel}-staff",
            ])  # fmt: skip
        response = await client.post(
            f"/v1/channels/batch/{channel}",
            files={"file": (f"{channel}.csv", out.getvalue().encode("gb18030"), "text/csv")},
        )
        response.raise_for_status()
        summary = response.json()
        if summary["refused"]:
            raise RuntimeError(f"{channel} rows refused: {summary['refused']}")
        numbers += [t["feedback_number"] for t in summary["taken"]]
    return numbers
