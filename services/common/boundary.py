"""The boundary rule for what senders send: text and times, checked in one place.

Every adapter uses it. Synchronous callers (forms, agents, commands) get a 422 naming the
flaw; asynchronous sources that cannot be asked again (pushes, mails, batch rows) are
cleaned and kept, with the original in a dead letter (see `clean_text`, `sane_or_now`).

- Text: no NUL or other control characters except tab, newline and carriage return
  (PostgreSQL text cannot hold NUL; the others are never typed), and no unpaired
  surrogates (they cannot be encoded as UTF-8, so nothing downstream could store or send
  them).
- Times: not before 2000-01-01 and not more than the configured skew in the future
  (`FEEDBACK_MAX_FUTURE_SKEW_S`); everything downstream can then store, order and show them.
- Numbers: finite.
- Echoes: an error shows at most a bounded, printable excerpt of what was sent.
- Versions: a message on the bus whose `schema_version` is newer than any this code's
  contracts know was written by a newer producer; the dead letter says so
  (`unsupported_schema_version`), to be replayed once the consumer is upgraded.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import Any, ClassVar, get_args

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
DEFAULT_FUTURE_SKEW = timedelta(minutes=5)
# How far ahead a promised time (an expected completion, a callback) may be.
PROMISE_HORIZON = timedelta(days=3 * 366)
EXCERPT_CHARS = 120
MAX_ERRORS_SHOWN = 20

# C0 controls except \t \n \r, DEL, and lone UTF-16 surrogates.
_BAD_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_INVISIBLE = re.compile(r"[\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff]")


class _Window:
    """The accepted range of times; the future skew is set once at start from Settings."""

    future_skew: timedelta = DEFAULT_FUTURE_SKEW


WINDOW = _Window()


def configure(future_skew_s: float) -> None:
    WINDOW.future_skew = timedelta(seconds=future_skew_s)


def text_flaw(value: str) -> str | None:
    """Why this text cannot be accepted as it is, or None."""
    found = _BAD_CHARS.search(value)
    if found is None:
        return None
    char = found.group()
    if char == "\x00":
        return "contains a NUL character"
    if "\ud800" <= char <= "\udfff":
        return "contains an unpaired surrogate (not valid Unicode)"
    return f"contains the control character U+{ord(char):04X}"


def clean_text(value: str) -> str:
    """The text without what `text_flaw` refuses: controls dropped, surrogates replaced."""
    return _BAD_CHARS.sub(lambda m: "" if m.group() < "\ud800" else "\ufffd", value)


def cleaned_value(value: Any, path: str = "") -> tuple[Any, list[str]]:
    """A parsed JSON value with every string cleaned (`clean_text`), and what was cleaned
    where: for pushes that are repaired rather than refused."""
    repairs: list[str] = []

    def walk(item: Any, where: str) -> Any:
        if isinstance(item, str):
            problem = text_flaw(item)
            if problem:
                repairs.append(f"{where or 'text'} {problem}: removed")
                return clean_text(item)
            return item
        if isinstance(item, dict):
            return {
                walk(k, where): walk(v, f"{where}.{k}" if where else str(k))
                for k, v in item.items()
            }
        if isinstance(item, list):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(item)]
        return item

    return walk(value, path), repairs


def is_blank(value: str) -> bool:
    """Only spaces and invisible characters (zero-width space, BOM, direction marks)."""
    return not _INVISIBLE.sub("", value).strip()


def time_flaw(
    value: datetime | date, now: datetime | None = None, *, promise: bool = False
) -> str | None:
    """Why this time is outside the accepted window, or None. Dates compare by day.

    A `promise` (a time something is due) may lie ahead, up to PROMISE_HORIZON."""
    now = now or datetime.now(UTC)
    ahead = PROMISE_HORIZON if promise else WINDOW.future_skew
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)  # its adapter gives it a zone; ±14 h is moot here
        if value < EARLIEST:
            return "before 2000-01-01"
        if value > now + ahead:
            return "too far in the future" if promise else "in the future"
        return None
    if value < EARLIEST.date():
        return "before 2000-01-01"
    if value > (now + ahead + timedelta(days=1)).date():
        return "too far in the future" if promise else "in the future"
    return None


def sane_or_now(value: datetime | None, now: datetime | None = None) -> datetime | None:
    """For sources that cannot be refused: a time outside the window becomes None (the
    registration then takes its receipt time); the caller keeps the original."""
    if value is None or time_flaw(value, now) is None:
        return value
    return None


Path = tuple[str | int, ...]


def flaws(value: Any, path: Path = (), *, promise: bool = False) -> list[tuple[Path, str]]:
    """Every flaw in a parsed value (strings, times, floats, nested lists and dicts)."""
    found: list[tuple[Path, str]] = []
    if isinstance(value, str):
        problem = text_flaw(value)
        if problem:
            found.append((path, problem))
    elif isinstance(value, datetime | date):
        problem = time_flaw(value, promise=promise)
        if problem:
            found.append((path, problem))
    elif isinstance(value, float):
        if not math.isfinite(value):
            found.append((path, "not a finite number"))
    elif isinstance(value, dict):
        for key, item in value.items():
            found += flaws(key, (*path, str(key)))
            found += flaws(item, (*path, str(key)))
    elif isinstance(value, list | tuple | set | frozenset):
        for index, item in enumerate(value):
            found += flaws(item, (*path, index))
    return found


class Checked(BaseModel):
    """Base of every model a sender fills: each field passes the boundary rule.

    A failure is a pydantic error, so FastAPI answers 422 with the field and the reason.
    Fields named in `promises` hold times something is due, which may lie ahead."""

    model_config = ConfigDict(allow_inf_nan=False)
    promises: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="after")
    @classmethod
    def _within_boundary(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, BaseModel):
            return value  # a nested Checked model checked itself
        problems = flaws(value, promise=info.field_name in cls.promises)
        if problems:
            raise ValueError(
                "; ".join(
                    " ".join(filter(None, (".".join(str(p) for p in path), problem)))
                    for path, problem in problems
                )
            )
        return value


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> Any:
    """What an error may echo of the input: JSON-safe, printable and short."""
    if value is None or isinstance(value, bool | int):
        return value if not isinstance(value, int) or abs(value) < 10**15 else str(value)[:limit]
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        value = repr(value)
    shown = clean_text(value)
    return shown if len(shown) <= limit else shown[:limit] + "…"


def spreadsheet_safe(value: str) -> str:
    """A cell value that a spreadsheet shows as text, never runs as a formula (CSV/XLSX
    injection). Text is stored as sent; every export must write its cells through this
    (none exists yet: the reports issue adds them)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def shown_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Validation errors as a 422 may show them: each echoed input a bounded, printable,
    JSON-safe excerpt (a 40 MB body, NaN or a lone surrogate cannot go back as sent)."""
    shown = []
    for error in errors[:MAX_ERRORS_SHOWN]:
        if not isinstance(error, dict):
            shown.append({"msg": excerpt(error)})
            continue
        item = {
            "type": excerpt(error.get("type")),
            "loc": [excerpt(part) for part in error.get("loc", ())],
            "msg": excerpt(error.get("msg"), limit=500),
        }
        if "input" in error:
            item["input"] = excerpt(error["input"])
        shown.append(item)
    return shown


@cache
def newest_schema_version() -> int:
    """The newest `schema_version` of any contract message this code reads."""
    from contracts import events

    return max(
        int(version)
        for model in vars(events).values()
        if isinstance(model, type) and issubclass(model, BaseModel)
        if "schema_version" in model.model_fields
        for version in get_args(model.model_fields["schema_version"].annotation)
    )


def unsupported_schema_version(raw: bytes) -> str | None:
    """Why a bus message cannot be read here if a newer producer wrote it (its
    `schema_version` is above `newest_schema_version`), else None. Only for a message that
    already failed to decode: it parses the body again."""
    try:
        document = json.loads(raw)
    except ValueError:  # not JSON, or not UTF-8
        return None
    version = document.get("schema_version") if isinstance(document, dict) else None
    if not isinstance(version, int) or isinstance(version, bool):
        return None
    newest = newest_schema_version()
    if version <= newest:
        return None
    return (
        f"unsupported schema_version {version} (this consumer reads up to {newest}): "
        "a newer producer's message, to replay once this consumer is upgraded"
    )
