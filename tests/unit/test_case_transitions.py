"""Every handling command the case's status does not allow is refused with its reason
(table-driven over every status a case can be in)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from services.cases.domain import Case, CaseError, CaseStatus

LATER = datetime.now(UTC) + timedelta(days=1)


def case_in(status: CaseStatus) -> Case:
    """A case brought to `status` through its own decisions."""
    case = Case(
        id=uuid4(),
        feedback_number="F20261128-0001",
        registration={"customer_ref": "客户-2026-0001"},
    )
    case.classify({"priority": "medium", "type": "complaint", "department": "finance"}, "routing")
    if status == CaseStatus.registered:
        return case
    if status == CaseStatus.triage:
        case.send_to_triage("unclear")
        return case
    case.route("finance", "rules")
    if status == CaseStatus.queued:
        return case
    case.assign("fin-ma", "routing", "least loaded")
    if status == CaseStatus.assigned:
        return case
    if status == CaseStatus.disputed:
        case.dispute("fin-ma", "不归我")
        return case
    case.accept("fin-ma")
    if status == CaseStatus.accepted:
        return case
    if status == CaseStatus.pending_info:
        case.request_information(["product_model"])
        return case
    case.set_plan("重复扣款", "退款", LATER, "fin-ma")
    if status == CaseStatus.in_progress:
        return case
    case.resolve("resolved", "已退款", None, None, None, "fin-ma")
    if status == CaseStatus.resolved:
        return case
    if status == CaseStatus.reopened:
        case.confirm(False, "还有问题", "customer", on_behalf=False)
        return case
    case.confirm(True, None, "customer", on_behalf=False)
    if status == CaseStatus.confirmed:
        return case
    case.close(None, "fin-ma", supervisor=False)
    if status == CaseStatus.closed:
        return case
    case.archive("sup")
    assert status == CaseStatus.archived
    return case


COMMANDS: dict[str, tuple[Callable[[Case], None], set[CaseStatus]]] = {
    # command: (how, the statuses that allow it)
    "plan": (
        lambda c: c.set_plan("d", "p", LATER, "fin-ma"),
        {CaseStatus.accepted, CaseStatus.in_progress, CaseStatus.pending_info, CaseStatus.reopened},
    ),
    "resolve": (
        lambda c: c.resolve("resolved", "s", None, None, None, "fin-ma"),
        {CaseStatus.accepted, CaseStatus.in_progress, CaseStatus.reopened},
    ),
    "confirm": (lambda c: c.confirm(True, None, "customer", False), {CaseStatus.resolved}),
    "rate": (
        lambda c: c.rate(5, 9, {}, None, "customer"),
        {CaseStatus.resolved, CaseStatus.confirmed, CaseStatus.closed},
    ),
    "reopen": (
        lambda c: c.reopen("again", "sup"),
        {CaseStatus.resolved, CaseStatus.confirmed, CaseStatus.closed},
    ),
    "close (not a supervisor)": (
        lambda c: c.close(None, "fin-ma", supervisor=False),
        {CaseStatus.confirmed},
    ),
    "archive": (lambda c: c.archive("sup"), {CaseStatus.closed}),
    "note": (
        lambda c: c.add_note("n", False, None, "fin-ma"),
        set(CaseStatus) - {CaseStatus.closed, CaseStatus.archived},
    ),
}


@pytest.mark.parametrize("status", list(CaseStatus))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_is_allowed_exactly_where_the_rules_say(
    status: CaseStatus, command: str
) -> None:
    case = case_in(status)
    assert case.status == status
    decide, allowed = COMMANDS[command]
    if status in allowed:
        decide(case)
    else:
        with pytest.raises(CaseError) as refused:
            decide(case)
        assert str(refused.value)  # a reason, never a bare refusal


def test_results_other_than_resolved_need_a_reason_and_closing_early_needs_one_too() -> None:
    case = case_in(CaseStatus.in_progress)
    with pytest.raises(CaseError, match="needs a reason"):
        case.resolve("unresolved", "s", None, None, None, "fin-ma")
    with pytest.raises(CaseError, match="needs a reason"):
        case.close("", "sup", supervisor=True)
    case.close("客户撤回", "sup", supervisor=True)
    assert case.status == CaseStatus.closed


def test_a_dissatisfied_customer_reopens_the_case_one_priority_up() -> None:
    case = case_in(CaseStatus.resolved)
    case.confirm(False, "不满意", "customer", on_behalf=False)
    assert case.status == CaseStatus.reopened and case.priority == "high"
    case.resolve("resolved", "again", None, None, None, "fin-ma")
    case.confirm(False, "还是不满意", "staff", on_behalf=True)
    assert case.priority == "urgent"
    case.resolve("resolved", "third", None, None, None, "fin-ma")
    case.confirm(False, "仍不满意", "customer", on_behalf=False)
    assert case.priority == "urgent" and case.reopened_count == 3  # urgent stays urgent


def test_a_result_is_rated_once_and_a_reopened_case_may_be_rated_again() -> None:
    case = case_in(CaseStatus.resolved)
    case.rate(4, 8, {}, None, "customer")
    with pytest.raises(CaseError, match="rated already"):
        case.rate(1, 0, {}, None, "customer")
    case.reopen("客户再次来电", "sup")
    case.add_note("再次处理", False, None, "fin-ma")
    assert case.status == CaseStatus.in_progress  # a note after a reopening resumes handling
    case.resolve("resolved", "again", None, None, None, "fin-ma")
    case.rate(5, 10, {}, None, "customer")
    assert len(case.ratings) == 2
