"""The contracts are the public language: they must refuse what is not in it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from uuid import uuid4

import pytest
from pydantic import ValidationError

from contracts import topics
from contracts.codes import CHANNEL_LABELS, Channel
from contracts.events import CaseRegistered, FeedbackReceived, Registration, case_event_adapter
from contracts.schemas import write_schemas


def received(**changes: object) -> FeedbackReceived:
    fields: dict[str, object] = {
        "feedback_id": uuid4(),
        "feedback_number": "F20240520-0001",
        "received_at": datetime(2024, 5, 20, 9, 30, tzinfo=UTC),
        "registered_at": datetime(2024, 5, 20, 9, 31, tzinfo=UTC),
        "channel": "web_chat",
        "customer_ref": "客户-2024-0173",
        "description": "打印机无法连接WiFi",
        "receiver": "web_chat",
    }
    fields.update(changes)
    return FeedbackReceived.model_validate(fields)


def test_feedback_received_travels_on_its_topic_keyed_by_feedback_id() -> None:
    message = received()
    assert message.TOPIC == topics.FEEDBACK_RECEIVED == "feedback.received"
    assert message.key() == str(message.feedback_id).encode()
    assert message.schema_version == 1
    assert json.loads(message.model_dump_json())["event_type"] == "FeedbackReceived"


def test_round_trip_through_json_is_lossless() -> None:
    message = received(product_model="LP-2200", purchase_date="2024-05-01", emotion="angry")
    assert FeedbackReceived.model_validate_json(message.model_dump_json()) == message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("feedback_number", "2024-0001"),
        ("customer_ref", "张三"),
        ("channel", "fax"),
        ("emotion", "furious"),
        ("received_at", datetime(2024, 5, 20, 9, 30)),  # naive: ambiguous
        ("description", ""),
        ("customer_tier", "VIP!"),
    ],
)
def test_values_outside_the_language_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        received(**{field: value})


def test_unknown_fields_are_refused_so_personal_data_cannot_slip_in() -> None:
    with pytest.raises(ValidationError):
        received(customer_phone="13812345678")


def test_case_events_are_read_back_by_event_type() -> None:
    message = received()
    registration = Registration.model_validate(
        message.model_dump(include=set(Registration.model_fields))
    )
    event = CaseRegistered(
        feedback_id=message.feedback_id,
        feedback_number=message.feedback_number,
        version=1,
        position=7,
        occurred_at=datetime.now(UTC),
        registration=registration,
    )
    assert case_event_adapter.validate_json(event.model_dump_json()) == event
    assert event.TOPIC == "feedback.events"


def test_every_channel_has_a_chinese_label() -> None:
    assert set(CHANNEL_LABELS) == set(Channel)
    assert CHANNEL_LABELS[Channel.wechat] == "公众号"


def test_json_schemas_are_written_with_topic(tmp_path) -> None:
    paths = write_schemas(tmp_path)
    schemas = {p.name: json.loads(p.read_text()) for p in paths}
    assert schemas["FeedbackReceived.v1.json"]["x-topic"] == "feedback.received"
    assert "feedback_number" in schemas["FeedbackReceived.v1.json"]["properties"]
