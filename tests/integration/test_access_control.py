"""Access control (issue #10), driven by the OpenAPI document: every operation that is not
public needs a token (401 without), and each role gets 403 exactly where the permission
table says it may not act. Then sign-in, lockout, OIDC tokens, users, audit, and personal
data never shown to quality."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import sys
import time
import uuid
from typing import Any

import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from services.access.roles import PERMISSIONS, Role
from services.common.settings import Settings
from tests.conftest import registered_row, serve, web_form

pytestmark = pytest.mark.integration

# What anyone may call: customers, channels (with their own signatures) and operations.
PUBLIC = {
    ("get", "/health"),
    ("post", "/v1/auth/token"),
    ("post", "/v1/feedback"),
    ("post", "/v1/feedback/multipart"),
    ("post", "/v1/channels/web-chat/sessions"),
    ("get", "/v1/channels/wechat"),
    ("post", "/v1/channels/wechat"),
    ("post", "/v1/channels/weibo/webhook"),
    ("post", "/v1/channels/douyin/webhook"),
    ("post", "/v1/feedback/{number}/supplements"),
    # The customer's own, by their X-Customer-Token (or staff on their behalf).
    ("post", "/v1/cases/{number}/confirmation"),
    ("post", "/v1/cases/{number}/rating"),
}
SAMPLES = {
    "number": "F20240101-0001",
    "agent_id": "agent.nobody",
    "department": "finance",
    "dead_letter_id": str(uuid.UUID(int=1)),
    "customer_ref": "客户-2024-0001",
    "username": "nobody.x",
    "channel": "store",
    "item_id": str(uuid.UUID(int=2)),
    "task_id": str(uuid.UUID(int=3)),
    "kind": "sla_policies",
    "sha256": "0" * 64,
}
PHONE_OR_EMAIL = re.compile(r"1[3-9]\d{9}|[\w.+-]+@[\w-]+\.[\w.]+")


def operations(spec: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """(method, path template, action or None for public) of every documented operation."""
    found = []
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            security = operation.get("security") or []
            scopes = [
                scope
                for requirement in security
                for scopes in requirement.values()
                for scope in scopes
            ]
            found.append((method, path, scopes[0] if scopes else None))
    return found


def filled(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: SAMPLES[m.group(1)], path)


@pytest.fixture
def access_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"pii_reveal_roles": ("supervisor", "head", "admin")})


async def test_every_operation_is_public_or_guarded_by_the_permission_table(
    access_settings,
) -> None:
    async with serve(access_settings) as running:
        client = running.client
        spec = (await client.get("/openapi.json")).json()
        found = operations(spec)
        assert len(found) > 25
        public = {(m, p) for m, p, action in found if action is None}
        assert public == PUBLIC, public ^ PUBLIC
        for method, path, action in found:
            if action is None:
                continue
            assert action in PERMISSIONS, (method, path, action)
            url = filled(path)
            anonymous = await client.request(method, url, headers={"Authorization": ""})
            assert anonymous.status_code == 401, (method, path, anonymous.text)
            forged = await client.request(method, url, headers={"Authorization": "Bearer x.y.z"})
            assert forged.status_code == 401, (method, path)
            for role in Role:
                headers = running.as_staff(role.value, ("finance",), agent_id="agent.x")
                answer = await client.request(method, url, headers=headers, json={})
                if role in PERMISSIONS[action]:
                    assert answer.status_code not in (401, 403), (role, method, path, answer.text)
                else:
                    assert answer.status_code == 403, (role, method, path, answer.text)


async def test_sign_in_with_a_password_lockout_and_the_users_api(access_settings, tmp_path) -> None:
    async with serve(access_settings) as running:
        client = running.client
        env = {
            "DATABASE_URL": access_settings.database_url,
            "PATH": "/usr/bin:/bin",
        }
        added = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "feedback_cli.main", "users", "add", "sup.liu", "--role",
             "supervisor", "--department", "finance", "--password-stdin"],
            input="correct horse battery staple\n", capture_output=True, text=True, env=env,
            timeout=120, check=False,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        form = {"username": "sup.liu", "password": "correct horse battery staple"}
        token = await client.post("/v1/auth/token", data=form, headers={"Authorization": ""})
        assert token.status_code == 200, token.text
        body = token.json()
        assert body["token_type"] == "bearer" and body["expires_in"] > 0
        mine = {"Authorization": f"Bearer {body['access_token']}"}
        assert (await client.get("/v1/triage", headers=mine)).status_code == 200
        assert (await client.get("/v1/users", headers=mine)).status_code == 403
        # Wrong passwords: 401, then the account waits (429 with Retry-After), even for
        # the right password, until the wait is over.
        wrong = form | {"password": "not the password at all"}
        answers = [(await client.post("/v1/auth/token", data=wrong)).status_code for _ in range(6)]
        assert answers[:5] == [401] * 5 and answers[5] == 429
        locked = await client.post("/v1/auth/token", data=form)
        assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0
        unknown = await client.post(
            "/v1/auth/token", data={"username": "ghost", "password": "x" * 12}
        )
        assert unknown.status_code == 401
        # Admins manage users; no user exists that nobody added.
        created = await client.post(
            "/v1/users",
            json={"username": "ag.wu", "password": "another long password", "role": "agent",
                  "departments": ["finance"], "agent_id": "fin-ma"},
        )  # fmt: skip
        assert created.status_code == 201, created.text
        assert (
            await client.post("/v1/users", json={"username": "ag.wu", "role": "agent"})
        ).status_code == 409
        short = await client.post(
            "/v1/users", json={"username": "ag.x", "password": "short", "role": "agent"}
        )
        assert short.status_code == 422
        off = await client.patch("/v1/users/ag.wu", json={"active": False})
        assert off.status_code == 200 and off.json()["active"] is False
        refused = await client.post(
            "/v1/auth/token", data={"username": "ag.wu", "password": "another long password"}
        )
        assert refused.status_code == 401
        names = [u["username"] for u in (await client.get("/v1/users")).json()]
        assert names == ["ag.wu", "sup.liu"]
        with psycopg.connect(access_settings.database_url) as conn:
            hashes = [r[0] for r in conn.execute("SELECT password_hash FROM staff_users")]
        assert all(h.startswith("$argon2id$") for h in hashes)


async def test_an_oidc_token_is_accepted_instead_of_local_passwords(settings: Settings) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    oidc = settings.model_copy(
        update={
            "oidc_issuer": "https://sso.example.test",
            "oidc_audience": "feedback",
            "oidc_public_key": public_pem,
        }
    )

    def token(**claims: Any) -> dict[str, str]:
        now = int(time.time())
        body = {"iss": "https://sso.example.test", "aud": "feedback", "sub": "u-1",
                "preferred_username": "li.na", "feedback_role": "supervisor",
                "feedback_departments": ["finance"], "iat": now, "exp": now + 300} | claims  # fmt: skip
        return {"Authorization": f"Bearer {jwt.encode(body, key, algorithm='RS256')}"}

    async with serve(oidc) as running:
        client = running.client
        assert (await client.get("/v1/triage", headers=token())).status_code == 200
        assert (await client.get("/v1/triage", headers=token(aud="other"))).status_code == 401
        assert (
            await client.get("/v1/triage", headers=token(exp=int(time.time()) - 5))
        ).status_code == 401
        assert (
            await client.get("/v1/triage", headers=token(feedback_role="agent"))
        ).status_code == 403
        # A token this platform signed itself is not what the provider signed.
        assert (
            await client.get("/v1/triage", headers=running.as_staff("admin"))
        ).status_code == 401
        local = await client.post("/v1/auth/token", data={"username": "x", "password": "y" * 12})
        assert local.status_code == 400


async def test_departments_see_only_their_cases_and_quality_never_sees_contacts(
    access_settings,
) -> None:
    async with serve(access_settings) as running:
        client = running.client
        body = web_form(
            "账单里多扣了一笔39元的服务费，张伟，请打138-1234-5678或发邮件 zhang.wei @ example.com",
            customer={"name": "张伟", "phone": "13812345678", "email": "zhang.wei@example.com"},
        )
        number = (await client.post("/v1/feedback", json=body)).json()["feedback_number"]
        row = await registered_row(client, number, department="finance")
        finance = running.as_staff("supervisor", ("finance",), username="sup.fin")
        logistics = running.as_staff("supervisor", ("logistics",), username="sup.log")
        quality = running.as_staff("quality", username="qa.zhou")
        assert (await client.get(f"/v1/feedback/{number}", headers=finance)).status_code == 200
        assert (await client.get(f"/v1/feedback/{number}", headers=logistics)).status_code == 403
        assert (await client.get(f"/v1/cases/{number}", headers=logistics)).status_code == 403
        listed = (await client.get("/v1/registrations", headers=logistics)).json()
        assert number not in [item["feedback_number"] for item in listed["items"]]
        assert (
            await client.get("/v1/departments/finance/queue", headers=logistics)
        ).status_code == 403
        # Quality reads everything, and nothing it reads holds a phone or an e-mail address.
        for url in (f"/v1/feedback/{number}", "/v1/registrations", f"/v1/cases/{number}",
                    "/v1/departments/finance/queue", "/v1/triage", "/v1/agents"):  # fmt: skip
            answer = await client.get(url, headers=quality)
            assert answer.status_code == 200, (url, answer.text)
            assert not PHONE_OR_EMAIL.search(answer.text), (url, answer.text[:300])
            assert "1234-5678" not in answer.text and "zhang.wei" not in answer.text
            assert "张伟" not in answer.text  # the customer's own name, from the form
        reveal = f"/v1/cases/{number}/contact"
        assert (
            await client.get(reveal, params={"reason": "回访客户"}, headers=quality)
        ).status_code == 403
        assert (
            await client.get(reveal, headers=finance)
        ).status_code == 422  # a reason is required
        shown = await client.get(reveal, params={"reason": "客户要求回电"}, headers=finance)
        assert shown.status_code == 200 and shown.json()["phone"] == "13812345678"
        log = (await client.get("/v1/audit/pii-access")).json()
        assert [(e["actor"], e["action"], e["feedback_number"], e["reason"]) for e in log] == [
            ("sup.fin", "reveal", number, "客户要求回电")
        ]
        assert (await client.get("/v1/audit/pii-access", headers=finance)).status_code == 403
        # Erasure: admins only, with a reason, audited.
        ref = row["customer_ref"]
        erase = f"/v1/customers/{ref}/personal-data"
        assert (
            await client.delete(erase, headers=finance, params={"reason": "客户要求删除"})
        ).status_code == 403
        assert (await client.delete(erase)).status_code == 422
        assert (
            await client.delete(erase, params={"reason": "客户依法要求删除"})
        ).status_code == 200
        log = (await client.get("/v1/audit/pii-access", params={"customer_ref": ref})).json()
        assert log[0]["action"] == "erase" and log[0]["actor"] == "test-admin"
        gone = await client.get(reveal, params={"reason": "客户再次来电回访"}, headers=finance)
        assert gone.status_code == 404


def test_tokens_expire_and_carry_no_secret(settings: Settings) -> None:
    from services.access.roles import Actor
    from services.access.tokens import InvalidToken, Tokens

    tokens = Tokens(settings.model_copy(update={"auth_token_ttl_s": 60}))
    token = tokens.issue(Actor("a.b", Role.agent, ("finance",), "fin-ma"))
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["role"] == "agent" and 59 < claims["exp"] - claims["iat"] <= 60
    assert tokens.verify(token).agent_id == "fin-ma"
    other_key = settings.model_copy(
        update={"auth_token_key": SecretStr(base64.b64encode(b"o" * 32).decode())}
    )
    with pytest.raises(InvalidToken):
        Tokens(other_key).verify(token)
    expired = jwt.encode(
        claims | {"exp": int(time.time()) - 1}, settings.auth_token_key_bytes, "HS256"
    )
    with pytest.raises(InvalidToken):
        tokens.verify(expired)


async def test_two_clients_with_the_same_idempotency_key_get_two_feedbacks(
    settings: Settings,
) -> None:
    async with serve(settings, ("intake",)) as running:
        client = running.client
        key = {"Idempotency-Key": "order-form-1"}
        first = await client.post("/v1/feedback", json=web_form("冰箱不制冷"), headers=key)
        again = await client.post("/v1/feedback", json=web_form("冰箱不制冷"), headers=key)
        other = await client.post(
            "/v1/feedback",
            json=web_form("洗衣机漏水", customer={"name": "李娜", "phone": "139 0000 3333"}),
            headers=key,
        )
        assert first.status_code == again.status_code == other.status_code == 202
        assert again.json()["feedback_number"] == first.json()["feedback_number"]
        assert again.json()["duplicate"] is True
        assert other.json()["feedback_number"] != first.json()["feedback_number"]
        assert other.json()["duplicate"] is False
        # A customer's token opens only their own feedback, and a repeat with another body
        # (someone who knows the phone and the key) is told the number, never the token.
        assert other.json()["customer_token"] != first.json()["customer_token"]
        assert again.json()["customer_token"] == first.json()["customer_token"]
        guess = await client.post("/v1/feedback", json=web_form("我想看看别人的反馈"), headers=key)
        assert guess.json()["feedback_number"] == first.json()["feedback_number"]
        assert guess.json()["customer_token"] is None


async def test_deactivating_a_user_or_changing_their_role_revokes_their_tokens(
    access_settings, monkeypatch
) -> None:
    from services.access.users import StaffDirectory

    monkeypatch.setattr(StaffDirectory, "CACHE_S", 0.0)
    async with serve(access_settings) as running:
        client = running.client
        created = await client.post(
            "/v1/users",
            json={"username": "sup.he", "password": "a long enough secret", "role": "supervisor",
                  "departments": ["customer_service"]},
        )  # fmt: skip
        assert created.status_code == 201
        form = {"username": "sup.he", "password": "a long enough secret"}
        token = (await client.post("/v1/auth/token", data=form)).json()["access_token"]
        mine = {"Authorization": f"Bearer {token}"}
        assert (await client.get("/v1/triage", headers=mine)).status_code == 200
        await client.patch("/v1/users/sup.he", json={"role": "agent"})
        assert (await client.get("/v1/triage", headers=mine)).status_code == 401
        token = (await client.post("/v1/auth/token", data=form)).json()["access_token"]
        mine = {"Authorization": f"Bearer {token}"}
        assert (await client.get("/v1/triage", headers=mine)).status_code == 403  # now an agent
        await client.patch("/v1/users/sup.he", json={"active": False})
        assert (
            await client.get("/v1/departments/customer_service/queue", headers=mine)
        ).status_code == 401
        anonymous_upload = await client.post(
            "/v1/channels/batch/store",
            files={"file": ("big.csv", b"x" * 1_000_000, "text/csv")},
            headers={"Authorization": ""},
        )
        assert anonymous_upload.status_code == 401  # refused before the body is read
        nul = await client.post("/v1/auth/token", data={"username": "a\x00b", "password": "x" * 12})
        assert nul.status_code == 422
