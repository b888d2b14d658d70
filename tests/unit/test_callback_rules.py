"""The callback rules file: the shipped one loads; a bad one is refused with key and reason;
ids, quarters and the retention floor."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from feedback_cli.main import app
from services.handling.callbacks import (
    RULES_FILE,
    CallbackRulesError,
    TaskType,
    load_callback_rules,
    previous_quarter,
    purge,
    render,
    task_id,
)
from services.sla.calendar import load_calendars


def test_the_shipped_rules_load_with_the_requirements_defaults() -> None:
    rules = load_callback_rules()
    assert rules.retention_days >= 3 * 365
    assert rules.types.post_complaint.due == "3wd"
    assert (rules.types.after_sales.window_from_days, rules.types.after_sales.due_days) == (7, 15)
    assert rules.types.churn_warning.after_days == 90
    assert rules.priority_delta.total_seconds() == 24 * 3600
    for kind in TaskType:
        assert "您好" in rules.types.of(kind).script


def _written(tmp_path: Path, change: dict[str, object]) -> Path:
    data = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    for dotted, value in change.items():
        node = data
        *parents, last = dotted.split(".")
        for name in parents:
            node = node[name]
        if value is None:
            del node[last]
        else:
            node[last] = value
    path = tmp_path / "callbacks.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"retention_days": 365}, "retention_days"),
        ({"types.post_complaint.due": "3 days"}, "types.post_complaint.due"),
        ({"priority_within": "1wd"}, "priority_within"),
        ({"types.after_sales.window_from_days": 20}, "window_from_days must not be later"),
        ({"types.churn_warning.script": "您好 {name}"}, "unknown placeholders ['name']"),
        ({"types.quarterly_survey": None}, "types.quarterly_survey: Field required"),
        ({"types.after_sales.goals": "x"}, "types.after_sales.goals"),
        ({"types.product_in_use.high_value_models": [" "]}, "keyword must not be empty"),
    ],
)
def test_a_bad_file_is_refused_with_the_key_and_the_reason(
    tmp_path: Path, change: dict[str, object], reason: str
) -> None:
    with pytest.raises(CallbackRulesError, match=r"callbacks\.yaml") as refused:
        load_callback_rules(_written(tmp_path, change))
    assert reason in str(refused.value)


def test_unreadable_yaml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "callbacks.yaml"
    path.write_text("types: [unclosed", encoding="utf-8")
    with pytest.raises(CallbackRulesError):
        load_callback_rules(path)


def test_ids_are_deterministic_and_scripts_fill_known_placeholders_only() -> None:
    assert task_id(TaskType.churn_warning, "a") == task_id(TaskType.churn_warning, "a")
    assert task_id(TaskType.churn_warning, "a") != task_id(TaskType.quarterly_survey, "a")
    assert render("{feedback_number} {x} {", {"feedback_number": "F1"}) == "F1 {x} {"


def test_the_previous_quarter_in_local_time() -> None:
    calendar = load_calendars().get(None)
    # 2024-03-31 17:00 UTC is 2024-04-01 01:00 in Shanghai: Q2 has begun there.
    start, end, label = previous_quarter(calendar, datetime(2024, 3, 31, 17, tzinfo=UTC))
    assert label == "2024Q1" and (start.month, end.month) == (1, 4)
    assert previous_quarter(calendar, datetime(2024, 2, 1, tzinfo=UTC))[2] == "2023Q4"


def test_purge_refuses_less_than_three_years() -> None:
    with pytest.raises(ValueError, match="at least 1095"):
        purge("postgresql://nobody@127.0.0.1:1/none", 1094, datetime.now(UTC), dry_run=True)
    refused = CliRunner().invoke(app, ["archive", "purge", "--older-than-days", "100"])
    assert refused.exit_code == 2
    assert "at least 1095 days" in refused.output
