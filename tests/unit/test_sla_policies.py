"""Deadline policies (config/sla.yaml): the defaults of the seeds, and a bad file refused
with its line and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.sla.policies import PolicyError, load_policies


@pytest.mark.parametrize(
    ("priority", "target", "time"),
    [("urgent", "4h", "calendar"), ("high", "8h", "business"), ("medium", "24h", "business"),
     ("low", "72h", "business")],
)  # fmt: skip
def test_first_response_by_priority(priority: str, target: str, time: str) -> None:
    rule = load_policies().rule_for("first_response", {"priority": priority})
    assert rule is not None and (rule.target, rule.time) == (target, time)


def test_complaints_are_resolved_in_three_working_days_five_when_complex() -> None:
    policies = load_policies()
    plain = policies.rule_for("resolution", {"type": "complaint", "complex": False})
    complex_ = policies.rule_for("resolution", {"type": "complaint", "complex": True})
    assert plain is not None and plain.target == "3wd"
    assert complex_ is not None and complex_.target == "5wd"
    assert policies.rule_for("resolution", {"type": "inquiry"}) is None
    co = policies.rule_for("co_handler_response", {})
    assert co is not None and co.target == "24h" and policies.warn_at_share == 0.75


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("clocks:\n  first_response:\n    - {target: 4x}\n", "malformed target"),
        ("clocks:\n  first_response:\n    - {target: -4h}\n", "negative"),
        ("clocks:\n  lunch_break:\n    - {target: 1h}\n", "unknown clocks"),
        (
            "clocks:\n  first_response:\n    - {when: {colour: red}, target: 4h}\n",
            "unknown conditions",
        ),
        ("warn_at_share: 1.5\nclocks: {}\n", "less than 1"),
        ("clocks: [\n", "expected"),
    ],
)
def test_a_bad_policy_file_is_refused_with_the_line_and_reason(
    tmp_path: Path, text: str, reason: str
) -> None:
    bad = tmp_path / "sla.yaml"
    bad.write_text(text)
    with pytest.raises(PolicyError, match=reason) as refused:
        load_policies(bad)
    assert str(bad) in str(refused.value)
