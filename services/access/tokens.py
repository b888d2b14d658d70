"""Bearer tokens: signed (HS256) by this platform after a local sign-in, or issued by an
OIDC provider configured instead of local passwords (RS256/ES256, verified against the
provider's published keys or a configured public key).

Local tokens carry the actor (username, role, departments, agent id) and expire after
`auth_token_ttl_s`. OIDC tokens must carry the role in the claim `oidc_role_claim`
(default `feedback_role`), departments in `oidc_departments_claim` and the agent id in
`oidc_agent_claim`; issuer and audience are checked.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from typing import Any

import jwt

from services.access.roles import Actor, Role
from services.common.settings import Settings

ISSUER = "feedback-platform"
ALGORITHM = "HS256"
OIDC_ALGORITHMS = ["RS256", "ES256", "PS256"]


class InvalidToken(Exception):
    pass


def customer_token(key: bytes, feedback_number: str) -> str:
    """The token a customer gets with their feedback number: it authorises their own
    supplements, confirmation and rating of that feedback (`X-Customer-Token`), and
    nothing else. Derived, not stored: a keyed digest of the number."""
    digest = hmac.new(key, b"customer-token:" + feedback_number.encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()[:24]).decode()


def customer_token_valid(key: bytes, feedback_number: str, token: str | None) -> bool:
    return token is not None and hmac.compare_digest(
        customer_token(key, feedback_number).encode(), token.encode()
    )


class Tokens:
    def __init__(self, settings: Settings) -> None:
        self.key = settings.auth_token_key_bytes
        self.ttl_s = settings.auth_token_ttl_s
        self.settings = settings
        self.oidc = settings.oidc_issuer is not None
        self._jwks = (
            jwt.PyJWKClient(settings.oidc_jwks_url, cache_keys=True)
            if settings.oidc_jwks_url
            else None
        )

    def issue(self, actor: Actor) -> str:
        now = time.time()
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": ISSUER,
            "sub": actor.username,
            "role": actor.role.value,
            "departments": list(actor.departments),
            # Sub-second: a change to the user just before a sign-in must not revoke it.
            "iat": round(now, 3),
            "exp": int(now) + self.ttl_s,
        }
        if actor.agent_id:
            claims["agent_id"] = actor.agent_id
        return jwt.encode(claims, self.key, algorithm=ALGORITHM)

    def headers(self, actor: Actor) -> dict[str, str]:
        """The HTTP headers of a request signed in as `actor` (demo, benchmarks, tests)."""
        return {"Authorization": f"Bearer {self.issue(actor)}"}

    async def verify_async(self, token: str) -> Actor:
        """`verify`, with the provider's key set fetched off the event loop when needed."""
        if self._jwks is not None:
            return await asyncio.to_thread(self.verify, token)
        return self.verify(token)

    def verify(self, token: str) -> Actor:
        try:
            if self.oidc:
                return self._oidc_actor(token)
            claims = jwt.decode(
                token,
                self.key,
                algorithms=[ALGORITHM],
                audience=ISSUER,
                issuer=ISSUER,
                options={"require": ["exp", "sub", "iss", "aud"]},
            )
            return _actor(claims, "role", "departments", "agent_id", "sub")
        except (jwt.PyJWTError, ValueError, KeyError, TypeError) as error:
            raise InvalidToken(str(error)[:200]) from error

    def _oidc_actor(self, token: str) -> Actor:
        s = self.settings
        if self._jwks is not None:
            key: Any = self._jwks.get_signing_key_from_jwt(token).key
        elif s.oidc_public_key:
            key = s.oidc_public_key
        else:
            raise InvalidToken("OIDC is configured without keys (oidc_jwks_url or oidc_public_key)")
        claims = jwt.decode(
            token,
            key,
            algorithms=OIDC_ALGORITHMS,
            audience=s.oidc_audience,
            issuer=s.oidc_issuer,
            options={"require": ["exp", "iss", "aud"]},
        )
        return _actor(
            claims,
            s.oidc_role_claim,
            s.oidc_departments_claim,
            s.oidc_agent_claim,
            s.oidc_username_claim,
        )


def _actor(
    claims: dict[str, Any], role: str, departments: str, agent_id: str, username: str
) -> Actor:
    named = claims.get(departments) or []
    if isinstance(named, str):
        named = [named]
    return Actor(
        username=str(claims.get(username) or claims["sub"]),
        role=Role(claims[role]),
        departments=tuple(str(d) for d in named),
        agent_id=str(claims[agent_id]) if claims.get(agent_id) else None,
        issued_at=float(claims["iat"]) if isinstance(claims.get("iat"), int | float) else None,
    )
