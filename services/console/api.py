"""The console calls the platform's own HTTP API for the signed-in person, with their token.

Every page and action goes through the same endpoints as any other client, so permission
checks, department scoping, masking of personal data, validation and the audit trail are
the API's and nowhere else. In one process (`feedback up`) the calls go in-process over
ASGI (no socket); `FEEDBACK_CONSOLE_API_URL` sends them to another address instead (the
ingress in front of separately deployed services).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI

# Loc parts that name where in the request a field is, not the field.
_LOCATION_PARTS = frozenset({"body", "query", "path", "header", "form"})


@dataclass(frozen=True)
class Answer:
    """One API answer: its status and decoded JSON body (None when not JSON)."""

    status: int
    body: Any
    headers: httpx.Headers = field(default_factory=httpx.Headers)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def problem(self) -> str:
        """The API's reason for a refusal, as one line for a person."""
        detail = self.body.get("detail") if isinstance(self.body, dict) else None
        if isinstance(detail, str):
            return detail
        if isinstance(detail, list):
            return "; ".join(_one_error(item) for item in detail)
        return f"HTTP {self.status}"

    def field_errors(self) -> dict[str, str]:
        """Validation messages by form field (the last named part of each error's loc),
        so a form can show each next to its field; "" holds what names no field."""
        detail = self.body.get("detail") if isinstance(self.body, dict) else None
        if self.ok:
            return {}
        if not isinstance(detail, list):
            return {"": self.problem}
        errors: dict[str, str] = {}
        for item in detail:
            name = _field_of(item)
            message = item.get("msg", "") if isinstance(item, dict) else str(item)
            errors[name] = f"{errors[name]}; {message}" if name in errors else str(message)
        return errors


def _field_of(item: Any) -> str:
    if not isinstance(item, dict):
        return ""
    named = [str(part) for part in item.get("loc", ()) if str(part) not in _LOCATION_PARTS]
    named = [part for part in named if not part.isdigit()]
    return named[-1] if named else ""


def _one_error(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    name = _field_of(item)
    return f"{name}: {item.get('msg', '')}" if name else str(item.get("msg", ""))


class Api:
    """Calls to the platform's API as one person (their bearer token) from one address."""

    def __init__(self, app: FastAPI, base_url: str | None = None, timeout_s: float = 30.0) -> None:
        self.app = app
        self.base_url = base_url
        self.timeout_s = timeout_s
        self._remote = httpx.AsyncClient(base_url=base_url, timeout=timeout_s) if base_url else None

    async def close(self) -> None:
        if self._remote is not None:
            await self._remote.aclose()

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None,
        client_host: str = "127.0.0.1",
        params: dict[str, Any] | None = None,
        json: Any = None,
        data: dict[str, Any] | None = None,
        files: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        sent = dict(headers or {})
        if token:
            sent["Authorization"] = f"Bearer {token}"
        query = {k: v for k, v in (params or {}).items() if v not in (None, "")}
        arguments: dict[str, Any] = {"params": query, "headers": sent}
        if json is not None:
            arguments["json"] = json
        if data is not None:
            arguments["data"] = data
        if files is not None:
            arguments["files"] = files
        if self._remote is not None:
            sent["X-Forwarded-For"] = client_host
            try:
                response = await self._remote.request(method, path, **arguments)
            except httpx.TimeoutException:
                return Answer(504, {"detail": "the API did not answer in time; try again"})
            except httpx.HTTPError as error:
                return Answer(
                    503, {"detail": f"the API cannot be reached ({type(error).__name__})"}
                )
        else:
            # The person's own address, so per-client limits (sign-in, intake) count them.
            transport = httpx.ASGITransport(app=self.app, client=(client_host, 0))
            async with httpx.AsyncClient(
                transport=transport, base_url="http://console", timeout=self.timeout_s
            ) as client:
                response = await client.request(method, path, **arguments)
        return Answer(response.status_code, json_of(response), response.headers)

    async def raw(
        self, method: str, path: str, *, token: str | None, params: dict[str, Any] | None = None
    ) -> httpx.Response:
        """An answer kept whole (downloads: XLSX, CSV)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        query = {k: v for k, v in (params or {}).items() if v not in (None, "")}
        if self._remote is not None:
            return await self._remote.request(method, path, params=query, headers=headers)
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://console", timeout=self.timeout_s
        ) as client:
            response = await client.request(method, path, params=query, headers=headers)
            await response.aread()
            return response


def json_of(response: httpx.Response) -> Any:
    """The decoded JSON body of an answer, or None when it is not JSON."""
    if "json" not in response.headers.get("content-type", ""):
        return None
    try:
        return response.json()
    except ValueError:
        return None
