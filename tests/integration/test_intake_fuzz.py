"""Property: whatever a client sends to the intake endpoints, the answer is never a 5xx."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from services.common.settings import Settings
from tests.conftest import serve_in_thread

pytestmark = pytest.mark.integration

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
field_values = json_values | st.sampled_from(
    [
        "web_form",
        "phone",
        "",
        "2024-13-45",
        "2024-05-20T09:30:00+08:00",
        "vip",
        "angry",
        "13812345678",
        "x" * 6000,
    ]
)
near_valid = st.fixed_dictionaries(
    {
        "channel": st.sampled_from(["web_form", "email", "fax"]) | field_values,
        "description": st.text(min_size=0, max_size=300) | field_values,
        "customer": st.fixed_dictionaries(
            {},
            optional={
                "name": st.text(max_size=20) | field_values,
                "phone": st.from_regex(r"\+?[0-9 -]{3,22}", fullmatch=True) | field_values,
                "email": st.emails() | field_values,
            },
        )
        | field_values,
    },
    optional={
        "customer_tier": field_values,
        "product_model": field_values,
        "purchase_date": st.dates().map(str) | field_values,
        "received_at": st.datetimes().map(lambda d: d.isoformat()) | field_values,
        "emotion": field_values,
        "type": field_values,
        "unexpected": field_values,
    },
)


@pytest.fixture(scope="module")
def live_intake(postgres, kafka) -> Iterator[str]:
    import base64
    import secrets
    import uuid

    from deploy.postgres_server import create_database

    name = f"fuzz_{uuid.uuid4().hex[:10]}"
    settings = Settings(
        database_url=create_database(postgres.url, name),
        kafka_bootstrap_servers=kafka.bootstrap_servers,
        topic_prefix=f"{name}.",
        pii_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        auth_token_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        rate_limit_per_minute=100_000,
    )
    with serve_in_thread(settings, ("intake",)) as base:
        yield base


@hypothesis_settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=near_valid | json_values)
def test_random_feedback_payloads_never_cause_a_server_error(live_intake: str, payload) -> None:
    response = httpx.post(f"{live_intake}/v1/feedback", json=payload, timeout=30)
    assert response.status_code < 500, response.text
    assert response.status_code in (202, 409, 413, 422)


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.binary(max_size=2000))
def test_random_bytes_to_every_intake_endpoint_never_cause_a_server_error(
    live_intake: str, raw: bytes
) -> None:
    for path in (
        "/v1/feedback",
        "/v1/channels/phone",
        "/v1/channels/web-chat/sessions",
        "/v1/channels/callback",
    ):
        response = httpx.post(
            f"{live_intake}{path}",
            content=raw,
            headers={"content-type": "application/json"},
            timeout=30,
        )
        assert response.status_code < 500, (path, response.text)
