"""Bad input gets a 4xx with reasons and nothing reaches the bus."""

from __future__ import annotations

import json

import pytest

from contracts import topics
from services.common.settings import Settings
from tests.conftest import messages_in, serve, web_form

pytestmark = pytest.mark.integration

INVALID = [
    pytest.param(web_form() | {"description": None}, "description", id="missing-description"),
    pytest.param(
        {k: v for k, v in web_form().items() if k != "customer"}, "customer", id="missing-customer"
    ),
    pytest.param(web_form(customer={"name": "张伟"}), "customer", id="no-way-to-reach"),
    pytest.param(web_form(customer={"email": "not-an-email"}), "email", id="bad-email"),
    pytest.param(web_form(description=12345), "description", id="wrong-type"),
    pytest.param(web_form(description="长" * 5001), "description", id="oversize-text"),
    pytest.param(web_form(description="   "), "description", id="blank-text"),
    pytest.param(web_form(channel="fax"), "channel", id="bad-channel"),
    pytest.param(web_form(channel="email"), "channel", id="channel-with-its-own-adapter"),
    pytest.param(web_form(purchase_date="2024-13-45"), "purchase_date", id="bad-date"),
    pytest.param(web_form(received_at="2024-05-20T09:30:00"), "received_at", id="naive-time"),
    pytest.param(web_form(emotion="furious"), "emotion", id="bad-emotion"),
    pytest.param(web_form(customer_tier="platinum"), "customer_tier", id="unknown-tier"),
    pytest.param(web_form(unexpected="x"), "unexpected", id="unknown-field"),
    pytest.param([web_form()], "body", id="array-not-object"),
]


async def test_invalid_payloads_get_422_with_field_reasons_and_publish_nothing(
    settings: Settings,
) -> None:
    async with serve(settings, ("intake",)) as running:
        before = await messages_in(settings, topics.FEEDBACK_RECEIVED)
        for case in INVALID:
            body, field = case.values
            response = await running.client.post("/v1/feedback", json=body)
            assert response.status_code == 422, (case.id, response.text)
            detail = response.json()["detail"]
            assert any(field in json.dumps(d["loc"], ensure_ascii=False) for d in detail), (
                case.id,
                detail,
            )
            assert all(d.get("msg") for d in detail)

        malformed = await running.client.post(
            "/v1/feedback",
            content=b'{"channel": "web_form", "description": ',
            headers={"content-type": "application/json"},
        )
        assert malformed.status_code == 422
        assert malformed.json()["detail"][0]["type"] == "json_invalid"

        huge = await running.client.post(
            "/v1/feedback",
            content=b"x" * (settings.max_request_bytes + 1),
            headers={"content-type": "application/json"},
        )
        assert huge.status_code == 413

        assert await messages_in(settings, topics.FEEDBACK_RECEIVED) == before
        ok = await running.client.post("/v1/feedback", json=web_form())
        assert ok.status_code == 202
        assert await messages_in(settings, topics.FEEDBACK_RECEIVED) == before + 1


async def test_clients_over_the_rate_limit_get_429(settings: Settings) -> None:
    settings = settings.model_copy(update={"rate_limit_per_minute": 3})
    async with serve(settings, ("intake",)) as running:
        answers = [
            (await running.client.post("/v1/feedback", json=web_form())).status_code
            for _ in range(5)
        ]
        assert answers[:3] == [202, 202, 202] and answers[3:] == [429, 429]
        assert (await running.client.get("/health")).status_code == 200  # reads are not limited
