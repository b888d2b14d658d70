"""What the customer is told as the case is handled: a visible progress note and the result
(with their confirmation key, derived only when the message is rendered)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from uuid import uuid4
from zoneinfo import ZoneInfo

from contracts.events import CaseResolved, NoteAdded
from services.access.tokens import customer_token
from services.common.settings import Settings
from services.notifications.consumer import Planner
from services.notifications.directory import StaffDirectory
from services.notifications.templates import Templates

SETTINGS = Settings(
    database_url="postgresql://nobody@127.0.0.1:1/none",
    kafka_bootstrap_servers="127.0.0.1:1",
    pii_key=base64.b64encode(b"k" * 32).decode(),
    auth_token_key=base64.b64encode(b"t" * 32).decode(),
)
CASE = {"customer_ref": "客户-2026-0001", "channel": "web_form", "department": "finance"}


def common(kind: type, **fields: object) -> object:
    return kind(
        feedback_id=uuid4(),
        feedback_number="F20261128-0001",
        version=7,
        position=70,
        occurred_at=datetime.now(UTC),
        department="finance",
        **fields,
    )


def test_a_visible_note_and_a_result_are_told_to_the_customer_an_internal_note_is_not() -> None:
    planner = Planner(SETTINGS, StaffDirectory(), enabled={"email"})
    visible = planner.plan(
        common(NoteAdded, text="工程师明天上门", visible_to_customer=True, by="fin-ma"), CASE
    )  # type: ignore[arg-type]
    internal = planner.plan(
        common(NoteAdded, text="内部备注", visible_to_customer=False, by="fin-ma"), CASE
    )  # type: ignore[arg-type]
    result = planner.plan(
        common(CaseResolved, result="resolved", summary="已退款", by="fin-ma"), CASE
    )  # type: ignore[arg-type]
    assert [r.template for r in visible] == ["customer_progress"]
    assert internal == []
    assert [r.template for r in result] == ["customer_result"]
    assert result[0].recipient == "客户-2026-0001"  # a pseudonym: contacts only at send time
    assert "customer_token" not in result[0].payload  # never stored with the row


def test_the_result_message_carries_the_customers_confirmation_key() -> None:
    templates = Templates(ZoneInfo("Asia/Shanghai"))
    token = customer_token(SETTINGS.auth_token_key_bytes, "F20261128-0001")
    shown = templates.render(
        "customer_result",
        "zh",
        {"number": "F20261128-0001", "result": "partially_resolved", "summary": "已退部分款项",
         "customer_token": token},
    )  # fmt: skip
    assert "部分解决" in shown.body and token in shown.body and "F20261128-0001" in shown.title


def test_a_reopened_case_is_followed_up_by_the_departments_supervisors() -> None:
    from contracts.events import CaseReopened
    from services.notifications.directory import Ladder

    directory = StaffDirectory(departments={"finance": Ladder(supervisors=("sup.zhou",))})
    planner = Planner(SETTINGS, directory, enabled={"email"})
    event = common(
        CaseReopened,
        reason="客户不满意",
        by="customer",
        previous_priority="medium",
        priority="high",
    )
    rows = planner.plan(event, CASE)  # type: ignore[arg-type]
    assert {(r.recipient, r.template) for r in rows} >= {("sup.zhou", "staff_reopened")}
