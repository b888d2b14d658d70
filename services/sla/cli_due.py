"""`feedback sla due`: due times for JSON lines, one answer line per input line.

In:  {"start": ISO-8601 (no offset: the calendar's zone), "target": "4h" | "30m" | "3wd",
      "time": "business" | "calendar" (default business), "pauses": [[from, to], ...] (optional)}
Out: {"due": ISO-8601 with offset} or {"error": "reason"} for that line; the command goes on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from services.sla.calendar import TIME_KINDS, BusinessCalendar, TimeKind, parse_target

REQUIRED_FIELDS = ("start", "target")
KNOWN_FIELDS = frozenset({"start", "target", "time", "pauses"})


def due_lines(lines: Iterable[str], calendar: BusinessCalendar) -> Iterator[str]:
    """One JSON answer line (without the newline) per input line, in order."""
    for line in lines:
        yield due_line(line, calendar)


def due_line(line: str, calendar: BusinessCalendar) -> str:
    try:
        due = _due_of(line, calendar)
    except (ValueError, OverflowError) as error:
        return json.dumps({"error": str(error)}, ensure_ascii=False)
    return json.dumps({"due": due.isoformat()})


def _due_of(line: str, calendar: BusinessCalendar) -> datetime:
    if not line.strip():
        # Answered rather than skipped, so answers stay line for line with the input.
        raise ValueError("empty line")
    try:
        request = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON: {error}") from None
    if not isinstance(request, dict):
        raise ValueError("expected a JSON object")
    missing = [field for field in REQUIRED_FIELDS if request.get(field) is None]
    if missing:
        raise ValueError(f"missing field: {', '.join(missing)}")
    # A misspelt "pauses" would otherwise be ignored and give a due time without them.
    unknown = sorted(set(request) - KNOWN_FIELDS)
    if unknown:
        raise ValueError(f"unknown field: {', '.join(unknown)}")
    start = _time(request["start"], "start", calendar)
    target_text = request["target"]
    if not isinstance(target_text, str):
        raise ValueError(f"target: expected a string like 4h, 30m or 3wd, got {target_text!r}")
    target = parse_target(target_text)
    kind = _kind(request.get("time", "business"))
    pauses = _pauses(request.get("pauses"), calendar)
    return calendar.due(start, target, kind, pauses)


def _kind(value: Any) -> TimeKind:
    if value == "business":
        return "business"
    if value == "calendar":
        return "calendar"
    raise ValueError(f"time: expected {' or '.join(TIME_KINDS)}, got {value!r}")


def _time(value: Any, field: str, calendar: BusinessCalendar) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"{field}: expected an ISO-8601 time string, got {value!r}")
    try:
        return calendar.aware(datetime.fromisoformat(value.strip()))
    except ValueError:
        raise ValueError(f"{field}: unparseable time {value!r}") from None


def _pauses(value: Any, calendar: BusinessCalendar) -> list[tuple[datetime, datetime]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError("pauses: expected a list of [from, to] pairs")
    pauses = []
    for index, pause in enumerate(value):
        where = f"pauses[{index}]"
        if not isinstance(pause, list) or len(pause) != 2:
            raise ValueError(f"{where}: expected a [from, to] pair")
        paused_from = _time(pause[0], f"{where}[0]", calendar)
        paused_to = _time(pause[1], f"{where}[1]", calendar)
        if paused_to < paused_from:
            raise ValueError(f"{where}: the pause ends before it starts")
        pauses.append((paused_from, paused_to))
    return pauses
