"""WeChat safe mode (issue #10): encrypted pushes are decrypted and registered, plaintext
pushes are refused unless allowed, a replayed signature is refused, and a push for another
account or with a forged msg_signature is refused."""

from __future__ import annotations

import base64
import secrets
import time

import pytest
from pydantic import SecretStr

from contracts.codes import Channel
from services.common.settings import Settings
from services.intake.channels.chat_social import wechat_signature
from services.intake.channels.wechat_crypto import WeChatCrypto, WeChatCryptoError
from tests.conftest import registered_row, serve, wait_for

pytestmark = pytest.mark.integration
TOKEN, APP_ID = "wechat-safe-token", "wx5823bf96d3bd56c7"
AES_KEY = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def message(msg_id: str, text: str) -> bytes:
    return (
        "<xml><ToUserName>gh_1</ToUserName><FromUserName>openid-safe</FromUserName>"
        f"<CreateTime>{int(time.time())}</CreateTime><MsgType>text</MsgType>"
        f"<Content><![CDATA[{text}]]></Content><MsgId>{msg_id}</MsgId></xml>"
    ).encode()


def encrypted_push(crypto: WeChatCrypto, plain: bytes, nonce: str) -> tuple[dict[str, str], bytes]:
    timestamp = str(int(time.time()))
    encrypted, msg_signature = crypto.encrypt(plain, timestamp, nonce)
    params = {
        "signature": wechat_signature(TOKEN, timestamp, nonce),
        "timestamp": timestamp,
        "nonce": nonce,
        "encrypt_type": "aes",
        "msg_signature": msg_signature,
    }
    body = f"<xml><ToUserName>gh_1</ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
    return params, body.encode()


def test_the_cipher_round_trips_and_refuses_other_accounts_and_forgeries() -> None:
    crypto = WeChatCrypto(TOKEN, AES_KEY, APP_ID)
    plain = message("1", "热水器不出热水")
    encrypted, signature = crypto.encrypt(plain, "1700000000", "nonce")
    assert crypto.decrypt(signature, "1700000000", "nonce", encrypted) == plain
    with pytest.raises(WeChatCryptoError, match="msg_signature"):
        crypto.decrypt("0" * 40, "1700000000", "nonce", encrypted)
    other_account = WeChatCrypto(TOKEN, AES_KEY, "wx0000000000000000")
    with pytest.raises(WeChatCryptoError, match="AppID"):
        other_account.decrypt(signature, "1700000000", "nonce", encrypted)
    other_key = WeChatCrypto(TOKEN, base64.b64encode(b"k" * 32).decode().rstrip("="), APP_ID)
    with pytest.raises(WeChatCryptoError):
        other_key.decrypt(signature, "1700000000", "nonce", encrypted)


async def test_safe_mode_pushes_are_taken_and_plaintext_and_replays_refused(
    settings: Settings,
) -> None:
    safe = settings.model_copy(
        update={
            "wechat_token": SecretStr(TOKEN),
            "wechat_encoding_aes_key": SecretStr(AES_KEY),
            "wechat_app_id": APP_ID,
        }
    )
    crypto = WeChatCrypto(TOKEN, AES_KEY, APP_ID)
    async with serve(safe) as running:
        client = running.client
        params, body = encrypted_push(crypto, message("9001", "热水器不出热水，已经两天"), "s1")
        taken = await client.post("/v1/channels/wechat", params=params, content=body)
        assert taken.status_code == 200 and taken.text == "success"
        replayed = await client.post("/v1/channels/wechat", params=params, content=body)
        assert replayed.status_code == 403 and "replay" in replayed.text
        forged = await client.post(
            "/v1/channels/wechat",
            params=params | {"msg_signature": "0" * 40},  # the rest exactly as signed
            content=body,
        )
        assert forged.status_code == 403 and "msg_signature" in forged.text
        timestamp, nonce = str(int(time.time())), "p1"
        plaintext = await client.post(
            "/v1/channels/wechat",
            params={"signature": wechat_signature(TOKEN, timestamp, nonce), "timestamp": timestamp, "nonce": nonce},
            content=message("9002", "明文推送"),
        )  # fmt: skip
        assert plaintext.status_code == 403 and "plaintext" in plaintext.text

        async def registered() -> str | None:
            assert running.platform.registrar is not None
            return await running.platform.registrar.find_by_reference(Channel.wechat, ["9001"])

        number = await wait_for(registered, timeout=30, what="the safe-mode push registered")
        row = await registered_row(client, number, channel="wechat")
        assert row["description"] == "热水器不出热水，已经两天"
        assert (
            await running.platform.registrar.find_by_reference(  # type: ignore[union-attr]
                Channel.wechat, ["9002"]
            )
            is None
        )
