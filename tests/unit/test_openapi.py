"""The HTTP contract is documented: every intake endpoint, with a resolvable body schema,
including the ones that parse their own bodies."""

from __future__ import annotations

import base64
import json
from typing import Any

from services.common.settings import Settings
from services.runtime import create_app


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def test_the_web_form_endpoint_is_documented_with_its_body_and_header() -> None:
    settings = Settings(
        database_url="postgresql://nobody@127.0.0.1:1/none",
        kafka_bootstrap_servers="127.0.0.1:1",
        pii_key=base64.b64encode(b"k" * 32).decode(),
        auth_token_key=base64.b64encode(b"t" * 32).decode(),
    )
    spec = create_app(settings, ("intake",)).openapi()
    post = spec["paths"]["/v1/feedback"]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert {"channel", "description", "customer"} <= set(body["properties"])
    assert set(body["required"]) >= {"channel", "description", "customer"}
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in post["parameters"])
    assert "202" in post["responses"] and "422" in post["responses"]
    components = spec["components"]["schemas"]
    for reference in _refs(spec):
        assert reference.startswith("#/components/schemas/"), reference
        assert reference.rsplit("/", 1)[-1] in components, f"{reference} does not resolve"
    assert json.dumps(spec)  # serialisable as served at /openapi.json


def test_the_api_documentation_works_offline() -> None:
    """/docs loads Swagger UI from the app itself, never from a CDN."""
    from fastapi.testclient import TestClient

    settings = Settings(
        database_url="postgresql://nobody@127.0.0.1:1/none",
        kafka_bootstrap_servers="127.0.0.1:1",
        pii_key=base64.b64encode(b"k" * 32).decode(),
        auth_token_key=base64.b64encode(b"t" * 32).decode(),
    )
    client = TestClient(create_app(settings, ("intake",)))  # no lifespan: nothing started
    page = client.get("/docs")
    assert page.status_code == 200
    assert "/docs-assets/swagger-ui-bundle.js" in page.text
    assert "http://" not in page.text and "https://" not in page.text
    script = client.get("/docs-assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 100_000
    assert client.get("/docs-assets/swagger-ui.css").status_code == 200
