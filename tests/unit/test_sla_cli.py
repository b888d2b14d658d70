"""The `feedback sla due` contract: JSON lines in, one JSON answer line per input line."""

from __future__ import annotations

import json

import pytest

from services.sla.calendar import BusinessCalendar
from services.sla.cli_due import due_lines

CALENDAR = BusinessCalendar()


def answer(request: dict | str) -> dict:
    line = request if isinstance(request, str) else json.dumps(request)
    (output,) = due_lines([line], CALENDAR)
    return json.loads(output)


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        ({"start": "2026-03-02T09:00", "target": "4h"}, "2026-03-02T13:00:00+08:00"),
        ({"start": "2026-03-02T14:00", "target": "4h"}, "2026-03-02T18:00:00+08:00"),
        ({"start": "2026-03-06T20:00", "target": "3wd"}, "2026-03-11T18:00:00+08:00"),
        ({"start": "2026-09-30T17:00", "target": "2h"}, "2026-10-08T10:00:00+08:00"),
        ({"start": "2026-02-13T17:00", "target": "2h"}, "2026-02-14T10:00:00+08:00"),
        (
            {"start": "2026-03-02T09:00", "target": "4h", "time": "calendar"},
            "2026-03-02T13:00:00+08:00",
        ),
        (
            {"start": "2026-03-06T16:00", "target": "24h", "time": "calendar"},
            "2026-03-07T16:00:00+08:00",
        ),
        ({"start": "2026-03-02T01:00Z", "target": "4h"}, "2026-03-02T13:00:00+08:00"),
        ({"start": "2026-03-02T09:00+08:00", "target": "1m"}, "2026-03-02T09:01:00+08:00"),
        (
            {
                "start": "2026-03-02T09:00",
                "target": "4h",
                "pauses": [["2026-03-02T10:00", "2026-03-02T11:00"]],
            },
            "2026-03-02T14:00:00+08:00",
        ),
        (
            {
                "start": "2026-03-02T09:00",
                "target": "4h",
                "time": "calendar",
                "pauses": [["2026-03-02T10:00", "2026-03-02T10:20"]],
            },
            "2026-03-02T13:20:00+08:00",
        ),
        (
            {
                "start": "2026-03-02T10:00",
                "target": "3wd",
                "pauses": [["2026-03-03T09:00", "2026-03-03T13:00"]],
            },
            "2026-03-06T13:00:00+08:00",
        ),
        ({"start": "2026-03-02T09:00", "target": "4h", "pauses": []}, "2026-03-02T13:00:00+08:00"),
    ],
)
def test_good_lines_get_a_due_time_with_offset(request_, expected):
    assert answer(request_) == {"due": expected}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ({"start": "yesterday", "target": "4h"}, "start: unparseable time"),
        ({"start": 1772413200, "target": "4h"}, "start: expected an ISO-8601"),
        ({"start": "2026-03-02T09:00", "target": "-4h"}, "negative target"),
        ({"start": "2026-03-02T09:00", "target": "4x"}, "malformed target"),
        ({"start": "2026-03-02T09:00", "target": 4}, "target: expected a string"),
        ({"start": "2026-03-02T09:00", "target": "0h"}, "zero"),
        ({"target": "4h"}, "missing field: start"),
        ({"start": "2026-03-02T09:00"}, "missing field: target"),
        ({}, "missing field: start, target"),
        ({"start": "2026-03-02T09:00", "target": "4h", "time": "wall"}, "time: expected"),
        ({"start": "2026-03-02T09:00", "target": "3wd", "time": "calendar"}, "business time only"),
        (
            {
                "start": "2026-03-02T09:00",
                "target": "4h",
                "pauses": [["2026-03-02T11:00", "2026-03-02T10:00"]],
            },
            "pauses[0]: the pause ends before it starts",
        ),
        (
            {"start": "2026-03-02T09:00", "target": "4h", "pauses": [["2026-03-02T11:00"]]},
            "pauses[0]: expected a [from, to] pair",
        ),
        (
            {"start": "2026-03-02T09:00", "target": "4h", "pauses": [["later", "2026-03-02"]]},
            "pauses[0][0]: unparseable time",
        ),
        ({"start": "2026-03-02T09:00", "target": "4h", "pauses": "none"}, "pauses: expected"),
        ({"start": "2026-03-02T09:00", "target": "4h", "pause": []}, "unknown field: pause"),
        ({"start": "9999-12-31T09:00", "target": "72h"}, "supported"),
        ("not json", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ("", "empty line"),
    ],
)
def test_bad_lines_get_an_error_with_the_reason(line, reason):
    result = answer(line)
    assert set(result) == {"error"}
    assert reason in result["error"]


def test_one_answer_per_line_in_order_and_bad_lines_do_not_stop_the_rest():
    lines = [
        '{"start": "2026-03-02T09:00", "target": "4h"}\n',
        "garbage\n",
        '{"start": "2026-03-02T09:00", "target": "-1h"}\n',
        '{"start": "2026-03-06T20:00", "target": "3wd"}\n',
    ]
    answers = [json.loads(line) for line in due_lines(lines, CALENDAR)]
    assert len(answers) == 4
    assert answers[0] == {"due": "2026-03-02T13:00:00+08:00"}
    assert "error" in answers[1]
    assert "error" in answers[2]
    assert answers[3] == {"due": "2026-03-11T18:00:00+08:00"}


def test_answers_are_single_json_lines():
    for output in due_lines(['{"start": "2026-03-02T09:00", "target": "4h"}', "{bad"], CALENDAR):
        assert "\n" not in output
        json.loads(output)
