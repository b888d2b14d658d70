"""Business calendars: the time that deadlines (SLA clocks) are counted on.

A calendar has a time zone (default Asia/Shanghai), working hours per weekday (default Monday to
Friday 09:00–18:00, optional breaks such as 12:00–13:00), the statutory public holidays and the
make-up working days (调休) of the State Council notice (data from the `chinesecalendar`
package), and a centre's own extra closed and extra working days from `config/calendar.yaml`.
A region may have a calendar of its own (`regions:` in the file), built on the default one.

Which days are working days (the first rule that applies):

1. a configured extra closed day is closed; 2. a configured extra working day works;
3. a statutory holiday is closed and a make-up working day (调休) works, from the data;
4. otherwise the weekday rule: a weekday with working hours works.

A working day whose weekday has no hours (a 调休 Saturday) works `makeup_day_hours` (default:
the first configured weekday's hours, Monday's). For a year the holiday data does not cover yet,
rules 1, 2 and 4 alone decide: a warning is logged once per year and
`feedback_calendar_fallback_total{year}` counts the days so decided; nothing fails.

How a target counts (the contract of `feedback sla due`):

- business `Nh` / `Nm`: only time inside working hours on working days counts. A start outside
  hours counts from the next opening. A clock used up exactly at closing time is due at closing
  time (18:00 stays 18:00, not 09:00 the next day); the same at the start of a break.
- calendar `Nh` / `Nm`: wall-clock time (elapsed time; nights, weekends and holidays count).
- `Nwd` (N working days): closing time of the Nth working day after the day of receipt. The day
  of receipt never counts, whether or not it is a working day and whatever the hour.
- pauses (waiting for the customer): the clock stops, so the due time moves later by exactly the
  counted time that fell inside each pause: business time for business targets, wall time for
  calendar targets, working minutes for `Nwd` (a paused `Nwd` may then fall due inside a day).
  Only counted time moves it: a pause on the day of receipt of an `Nwd` target, before the
  start, or after the clock ran out moves nothing, and overlapping pauses count once.
- Times are aware datetimes; a naive one is read in the calendar's zone. Due times come back in
  the calendar's zone. Working hours are the zone's wall-clock hours.
- A target is a whole number above zero, at most ten years' worth; `Nwd` is business time only.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import chinese_calendar
import yaml
from prometheus_client import Counter
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

log = logging.getLogger(__name__)

CALENDAR_FALLBACK = Counter(
    "feedback_calendar_fallback",
    "Days decided by the weekday rule and overrides alone because the holiday data does not "
    "cover their year (each day once per calendar in this process).",
    ["year"],
)

DEFAULT_CALENDAR_FILE = Path(__file__).resolve().parents[2] / "config" / "calendar.yaml"

TargetUnit = Literal["h", "m", "wd"]
TimeKind = Literal["business", "calendar"]
TIME_KINDS: tuple[str, ...] = get_args(TimeKind)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_US_PER_MINUTE = 60_000_000
_US_PER_SECOND = 1_000_000
# A calendar that shows no working time for this long is misconfigured; stop looking.
_MAX_IDLE_DAYS = 3_700
_LAST_ORDINAL = date.max.toordinal()

# Statutory holidays (including the weekend days inside a holiday period) and the make-up
# working days, from the package's tables.
_STATUTORY_HOLIDAYS: Mapping[date, str] = chinese_calendar.holidays
_MAKEUP_WORKDAYS: Mapping[date, str] = chinese_calendar.workdays
# Every yearly notice lists the Spring Festival: a year without it is not covered, even if a
# neighbouring year's holiday spills into it.
_COVERED_YEARS = frozenset(
    day.year
    for day, name in _STATUTORY_HOLIDAYS.items()
    if name == chinese_calendar.Holiday.spring_festival.value
)

_warned_years: set[int] = set()
_warned_lock = threading.Lock()


# ---------------------------------------------------------------------------------------------
# Targets


# Ten years: keeps arithmetic inside datetime's range and each computation short.
_LONGEST = {"h": 87_600, "m": 5_256_000, "wd": 2_600}


@dataclass(frozen=True, slots=True)
class Target:
    """A deadline's length: `amount` hours (h), minutes (m) or working days (wd)."""

    amount: int
    unit: TargetUnit

    def __post_init__(self) -> None:
        if self.unit not in _LONGEST:
            raise ValueError(f"target unit must be h, m or wd, not {self.unit!r}")
        if self.amount <= 0:
            raise ValueError(f"target {self} must be more than zero")
        if self.amount > _LONGEST[self.unit]:
            raise ValueError(f"target {self} is longer than ten years")

    @property
    def minutes(self) -> int:
        if self.unit == "wd":
            raise ValueError("a working-day target has no fixed length in minutes")
        return self.amount * 60 if self.unit == "h" else self.amount

    def __str__(self) -> str:
        return f"{self.amount}{self.unit}"


_TARGET = re.compile(r"(-?)([0-9]{1,12})(h|m|wd)")


def parse_target(text: str) -> Target:
    """`"4h"`, `"30m"` or `"3wd"` as a Target; ValueError with the reason otherwise."""
    match = _TARGET.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f"malformed target {text!r}: expected a whole number and h, m or wd (4h, 30m, 3wd)"
        )
    sign, digits, unit = match.groups()
    amount = int(digits)
    if sign and amount:
        raise ValueError(f"negative target {text!r}")
    if amount == 0:
        raise ValueError(f"target {text!r} is zero: a deadline needs some time")
    return Target(amount, unit)  # type: ignore[arg-type]  # the pattern allows only the three units


# ---------------------------------------------------------------------------------------------
# Configuration

Span = tuple[int, int]
"""Minutes after local midnight: opening (inclusive) to closing (exclusive)."""

_SPAN = re.compile(r"([0-9]{2}):([0-9]{2})-([0-9]{2}):([0-9]{2})")


def parse_span(text: str) -> Span:
    """`"09:00-18:00"` as minutes after midnight; ValueError with the reason otherwise."""
    match = _SPAN.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"expected 'HH:MM-HH:MM', got {text!r}")
    open_h, open_m, close_h, close_m = (int(part) for part in match.groups())
    if open_h > 23 or open_m > 59 or close_m > 59 or close_h > 24 or (close_h == 24 and close_m):
        raise ValueError(f"{text!r} is not a range of times of day (00:00 to 24:00)")
    opening, closing = open_h * 60 + open_m, close_h * 60 + close_m
    if closing <= opening:
        raise ValueError(f"{text!r} closes before it opens (a range stays within one day)")
    return opening, closing


def _checked_span(text: str) -> str:
    parse_span(text)
    return text.strip()


# Kept as text in the model (so a dumped model validates again); parsed where it is used.
# Strings only: unquoted YAML like 9:00 would arrive as a number and is refused.
SpanText = Annotated[str, Field(strict=True), AfterValidator(_checked_span)]


def _ordered(spans: Sequence[str], what: str) -> tuple[Span, ...]:
    ordered = tuple(sorted(parse_span(text) for text in spans))
    for earlier, later in pairwise(ordered):
        if later[0] < earlier[1]:
            raise ValueError(f"{what}: ranges overlap")
    return ordered


def _without_breaks(spans: Sequence[Span], breaks: Sequence[Span]) -> tuple[Span, ...]:
    remaining = list(spans)
    for break_from, break_to in breaks:
        cut: list[Span] = []
        for opening, closing in remaining:
            if break_to <= opening or closing <= break_from:
                cut.append((opening, closing))
                continue
            if opening < break_from:
                cut.append((opening, break_from))
            if break_to < closing:
                cut.append((break_to, closing))
        remaining = cut
    return tuple(sorted(remaining))


def _checked_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ValueError(f"unknown time zone {name!r}") from error
    return name


ZoneName = Annotated[str, Field(strict=True, min_length=1), AfterValidator(_checked_zone)]
OFFICE_HOURS: tuple[str, ...] = ("09:00-18:00",)


class WeekHours(BaseModel):
    """Working hours per weekday; a weekday with none is a rest day."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mon: tuple[SpanText, ...] = OFFICE_HOURS
    tue: tuple[SpanText, ...] = OFFICE_HOURS
    wed: tuple[SpanText, ...] = OFFICE_HOURS
    thu: tuple[SpanText, ...] = OFFICE_HOURS
    fri: tuple[SpanText, ...] = OFFICE_HOURS
    sat: tuple[SpanText, ...] = ()
    sun: tuple[SpanText, ...] = ()

    @model_validator(mode="after")
    def _no_overlaps(self) -> WeekHours:
        for weekday in WEEKDAYS:
            _ordered(getattr(self, weekday), weekday)
        return self

    def of(self, weekday: int) -> tuple[Span, ...]:
        """Hours of `weekday` (Monday 0), in order."""
        return _ordered(getattr(self, WEEKDAYS[weekday]), WEEKDAYS[weekday])


class CalendarRules(BaseModel):
    """One calendar's settings: the top level of `config/calendar.yaml` without `regions`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    zone: ZoneName = "Asia/Shanghai"
    hours: WeekHours = WeekHours()
    # Hours of a working day whose weekday has none (调休 Saturday, extra working day).
    makeup_day_hours: tuple[SpanText, ...] | None = None
    breaks: tuple[SpanText, ...] = ()
    # CN: statutory holidays and 调休 of mainland China; none: the weekday rule and overrides only.
    public_holidays: Literal["CN", "none"] = "CN"
    extra_closed: frozenset[date] = frozenset()
    extra_working: frozenset[date] = frozenset()

    @model_validator(mode="after")
    def _consistent(self) -> CalendarRules:
        _ordered(self.breaks, "breaks")
        if self.makeup_day_hours is not None:
            _ordered(self.makeup_day_hours, "makeup_day_hours")
        both = sorted(self.extra_closed & self.extra_working)
        if both:
            listed = ", ".join(day.isoformat() for day in both)
            raise ValueError(f"extra_closed and extra_working both list {listed}")
        if not any(self.weekday_spans()):
            raise ValueError("no weekday has working hours (after breaks)")
        if not self.makeup_spans():
            raise ValueError("makeup_day_hours leave no working time (after breaks)")
        return self

    def weekday_spans(self) -> tuple[tuple[Span, ...], ...]:
        """Working hours per weekday (Monday first) with the breaks taken out."""
        breaks = _ordered(self.breaks, "breaks")
        return tuple(_without_breaks(self.hours.of(weekday), breaks) for weekday in range(7))

    def makeup_spans(self) -> tuple[Span, ...]:
        if self.makeup_day_hours is not None:
            return _without_breaks(
                _ordered(self.makeup_day_hours, "makeup_day_hours"), _ordered(self.breaks, "breaks")
            )
        first_with_hours = next((spans for spans in self.weekday_spans() if spans), ())
        return first_with_hours


RegionName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class RegionRules(BaseModel):
    """A regional calendar: what differs from the default one. Weekdays given under `hours`
    replace the default's for those weekdays; extra days add to the default's (a region's
    working day reopens a day the default closes, and the other way round)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    zone: ZoneName | None = None
    hours: WeekHours | None = None
    makeup_day_hours: tuple[SpanText, ...] | None = None
    breaks: tuple[SpanText, ...] | None = None
    public_holidays: Literal["CN", "none"] | None = None
    extra_closed: frozenset[date] = frozenset()
    extra_working: frozenset[date] = frozenset()


class CalendarFile(CalendarRules):
    """`config/calendar.yaml`."""

    regions: dict[RegionName, RegionRules] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _regions_consistent(self) -> CalendarFile:
        for name in self.regions:
            try:
                self.region_rules(name)
            except ValidationError as error:
                reasons = "; ".join(_reasons(error))
                raise ValueError(f"region {name}: {reasons}") from None
        return self

    def default_rules(self) -> CalendarRules:
        return CalendarRules.model_validate(self.model_dump(exclude={"regions"}))

    def region_rules(self, name: str) -> CalendarRules:
        region = self.regions[name]
        own = region.model_dump(
            exclude_none=True, exclude={"extra_closed", "extra_working", "hours"}
        )
        merged: dict[str, Any] = self.model_dump(exclude={"regions"}) | own
        if region.hours is not None:
            merged["hours"] = merged["hours"] | region.hours.model_dump(exclude_unset=True)
        merged["extra_closed"] = (self.extra_closed - region.extra_working) | region.extra_closed
        merged["extra_working"] = (self.extra_working - region.extra_closed) | region.extra_working
        return CalendarRules.model_validate(merged)


class CalendarConfigError(ValueError):
    """The calendar file is refused: where and why."""


def _reasons(error: ValidationError) -> list[str]:
    reasons = []
    for problem in error.errors(include_url=False):
        where = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        reasons.append(f"{where}: {problem['msg'].removeprefix('Value error, ')}")
    return reasons


# ---------------------------------------------------------------------------------------------
# The calendar


class BusinessCalendar:
    """Working time of one centre or region; see the module docstring for the rules."""

    def __init__(self, rules: CalendarRules | None = None, *, name: str = "default") -> None:
        self.rules = rules if rules is not None else CalendarRules()
        self.name = name
        self.zone = ZoneInfo(self.rules.zone)
        self._weekday_spans = self.rules.weekday_spans()
        self._makeup_spans = self.rules.makeup_spans()
        # Working intervals per local day (proleptic ordinal) as microseconds since the epoch.
        # Days are few (a few hundred a year), so the cache is never trimmed.
        self._day_spans: dict[int, tuple[tuple[int, int], ...]] = {}

    def __repr__(self) -> str:
        return f"BusinessCalendar({self.name!r}, zone={self.rules.zone!r})"

    # Public API ------------------------------------------------------------------------------

    def aware(self, moment: datetime) -> datetime:
        """`moment` with a zone: a naive one is read in the calendar's zone."""
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=self.zone)

    def is_working_day(self, day: date) -> bool:
        return bool(self._spans(day.toordinal()))

    def is_working_time(self, moment: datetime) -> bool:
        instant = self._instant(moment)
        return any(
            opening <= instant < closing
            for opening, closing in self._spans(self._local_ordinal(instant))
        )

    def next_opening(self, moment: datetime) -> datetime:
        """`moment` itself during working time, otherwise the next time work starts."""
        instant = self._instant(moment)
        ordinal = self._local_ordinal(instant)
        for _ in range(_MAX_IDLE_DAYS):
            for opening, closing in self._spans(ordinal):
                if instant < closing:
                    return self._moment(max(opening, instant))
            ordinal += 1
        raise ValueError(f"no working time within {_MAX_IDLE_DAYS} days of {moment.isoformat()}")

    def business_time_between(self, start: datetime, end: datetime) -> timedelta:
        """Working time in [start, end); zero when end is not after start."""
        return self._business_between(self._instant(start), self._instant(end)) * _MICROSECOND

    def business_minutes_between(self, start: datetime, end: datetime) -> float:
        """Working minutes in [start, end); zero when end is not after start."""
        return self._business_between(self._instant(start), self._instant(end)) / _US_PER_MINUTE

    def due(
        self,
        start: datetime,
        target: Target,
        kind: TimeKind = "business",
        pauses: Sequence[tuple[datetime, datetime]] = (),
    ) -> datetime:
        """When a clock started at `start` with `target` runs out, pauses excluded."""
        start_at = self._instant(start)
        paused = []
        for pause_from, pause_to in pauses:
            paused_from, paused_to = self._instant(pause_from), self._instant(pause_to)
            if paused_to < paused_from:
                raise ValueError(
                    f"pause {pause_from.isoformat()} – {pause_to.isoformat()} ends before it starts"
                )
            paused.append((paused_from, paused_to))
        try:
            if target.unit == "wd":
                if kind != "business":
                    raise ValueError("a working-day target (wd) counts business time only")
                due_at = self._working_days_due(start_at, target.amount, _merged(paused))
            elif kind == "business":
                due_at = self._due_with_pauses(
                    start_at, target.minutes * _US_PER_MINUTE, _merged(paused), business=True
                )
            elif kind == "calendar":
                due_at = self._due_with_pauses(
                    start_at, target.minutes * _US_PER_MINUTE, _merged(paused), business=False
                )
            else:
                raise ValueError(f"time must be one of {', '.join(TIME_KINDS)}, not {kind!r}")
            return self._moment(due_at)
        except OverflowError as error:
            raise ValueError("the due time is beyond the supported dates") from error

    # Arithmetic on microseconds since the epoch ------------------------------------------------

    def _instant(self, moment: datetime) -> int:
        return (self.aware(moment) - _EPOCH) // _MICROSECOND

    def _moment(self, instant: int) -> datetime:
        return (_EPOCH + timedelta(microseconds=instant)).astimezone(self.zone)

    def _local_ordinal(self, instant: int) -> int:
        # Zone offsets are whole seconds, so whole seconds decide the local date.
        return datetime.fromtimestamp(instant // _US_PER_SECOND, self.zone).toordinal()

    def _spans(self, ordinal: int) -> tuple[tuple[int, int], ...]:
        spans = self._day_spans.get(ordinal)
        if spans is None:
            if not 1 <= ordinal <= _LAST_ORDINAL:
                raise OverflowError(f"day {ordinal} is outside the supported dates")
            spans = self._day_spans[ordinal] = self._compute_spans(ordinal)
        return spans

    def _compute_spans(self, ordinal: int) -> tuple[tuple[int, int], ...]:
        day = date.fromordinal(ordinal)
        if not self._works(day):
            return ()
        spans = self._weekday_spans[day.weekday()] or self._makeup_spans
        midnight = datetime(day.year, day.month, day.day, tzinfo=self.zone)
        # Aware + timedelta is wall-clock arithmetic: 09:00 is 09:00 on the clock, then the
        # zone's offset of that wall time converts it.
        instants = (
            (
                self._instant(midnight + timedelta(minutes=opening)),
                self._instant(midnight + timedelta(minutes=closing)),
            )
            for opening, closing in spans
        )
        return tuple((opening, closing) for opening, closing in instants if opening < closing)

    def _works(self, day: date) -> bool:
        rules = self.rules
        if day in rules.extra_closed:
            return False
        if day in rules.extra_working:
            return True
        if rules.public_holidays == "CN":
            if day.year in _COVERED_YEARS:
                if day in _MAKEUP_WORKDAYS:
                    return True
                if day in _STATUTORY_HOLIDAYS:
                    return False
            else:
                self._note_fallback(day.year)
        return bool(self._weekday_spans[day.weekday()])

    def _note_fallback(self, year: int) -> None:
        CALENDAR_FALLBACK.labels(year=str(year)).inc()
        with _warned_lock:
            if year in _warned_years:
                return
            _warned_years.add(year)
        log.warning(
            "calendar %s: no holiday data for %d (chinesecalendar %s covers %d–%d); "
            "using the weekday rule and configured overrides only",
            self.name,
            year,
            chinese_calendar.__version__,
            min(_COVERED_YEARS),
            max(_COVERED_YEARS),
        )

    def _business_due(self, start: int, budget: int) -> int:
        """The instant at which `budget` microseconds of working time after `start` are used up
        (the earliest such instant, so a budget ending at closing time is due at closing)."""
        ordinal = self._local_ordinal(start)
        idle_days = 0
        while True:
            spans = self._spans(ordinal)
            for opening, closing in spans:
                if closing <= start:
                    continue
                counted_from = opening if opening > start else start
                available = closing - counted_from
                if budget <= available:
                    return counted_from + budget
                budget -= available
            idle_days = 0 if spans else idle_days + 1
            if idle_days > _MAX_IDLE_DAYS:
                raise ValueError(f"no working time within {_MAX_IDLE_DAYS} days")
            ordinal += 1

    def _business_between(self, start: int, end: int) -> int:
        total = 0
        if end <= start:
            return total
        ordinal = self._local_ordinal(start)
        last = self._local_ordinal(end)
        while ordinal <= last:
            for opening, closing in self._spans(ordinal):
                overlap = min(closing, end) - max(opening, start)
                if overlap > 0:
                    total += overlap
            ordinal += 1
        return total

    def _due_with_pauses(
        self, start: int, budget: int, pauses: Sequence[tuple[int, int]], *, business: bool
    ) -> int:
        """Run the clock from `start`, stopped during `pauses` (merged, in order), until
        `budget` microseconds of counted time (working or wall) are used up."""
        position = start
        for pause_from, pause_to in pauses:
            if pause_to <= position:
                continue
            if pause_from > position:
                if business:
                    available = self._business_between(position, pause_from)
                    if budget <= available:
                        return self._business_due(position, budget)
                else:
                    available = pause_from - position
                    if budget <= available:
                        return position + budget
                budget -= available
            position = pause_to
        return self._business_due(position, budget) if business else position + budget

    def _working_days_due(
        self, start: int, working_days: int, pauses: Sequence[tuple[int, int]]
    ) -> int:
        ordinal = self._local_ordinal(start)
        first_opening: int | None = None
        closing_time = start
        idle_days = 0
        while working_days:
            ordinal += 1
            spans = self._spans(ordinal)
            if not spans:
                idle_days += 1
                if idle_days > _MAX_IDLE_DAYS:
                    raise ValueError(f"no working day within {_MAX_IDLE_DAYS} days")
                continue
            idle_days = 0
            working_days -= 1
            closing_time = spans[-1][1]
            if first_opening is None:
                first_opening = spans[0][0]
        if not pauses or first_opening is None:
            return closing_time
        # The clock counts the working minutes from the first working day after receipt; a
        # pause moves the due time by the working minutes it stopped.
        budget = self._business_between(first_opening, closing_time)
        return self._due_with_pauses(first_opening, budget, pauses, business=True)


def _merged(pauses: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Pauses in order, overlapping or touching ones joined (paused time counts once)."""
    merged: list[tuple[int, int]] = []
    for pause_from, pause_to in sorted(pauses):
        if pause_to <= pause_from:
            continue
        if merged and pause_from <= merged[-1][1]:
            if pause_to > merged[-1][1]:
                merged[-1] = (merged[-1][0], pause_to)
        else:
            merged.append((pause_from, pause_to))
    return merged


# ---------------------------------------------------------------------------------------------
# Loading


class Calendars:
    """The default calendar and the named regional ones of a calendar file."""

    def __init__(
        self, default: BusinessCalendar, regions: Mapping[str, BusinessCalendar] | None = None
    ) -> None:
        self.default = default
        self.regions = dict(regions or {})

    def get(self, region: str | None = None) -> BusinessCalendar:
        """The region's calendar; the default one for None."""
        if region is None:
            return self.default
        try:
            return self.regions[region]
        except KeyError:
            known = ", ".join(sorted(self.regions)) or "none"
            raise KeyError(f"no calendar for region {region!r} (configured: {known})") from None


def calendars_from(settings: Mapping[str, Any] | None, source: str = "calendar") -> Calendars:
    """Calendars from the parsed content of a calendar file; CalendarConfigError names the key
    and the reason when it is refused."""
    if settings is None:
        settings = {}  # an empty file: every default
    if not isinstance(settings, Mapping):
        raise CalendarConfigError(f"{source}: expected a mapping of settings at the top level")
    try:
        parsed = CalendarFile.model_validate(settings)
    except ValidationError as error:
        raise CalendarConfigError(f"{source}: " + "; ".join(_reasons(error))) from None
    return Calendars(
        BusinessCalendar(parsed.default_rules()),
        {name: BusinessCalendar(parsed.region_rules(name), name=name) for name in parsed.regions},
    )


class _DatesAsTextLoader(yaml.SafeLoader):
    """SafeLoader that leaves dates as text, so the model checks them and names the key of a
    bad one (PyYAML fails 2026-13-01 with a bare ValueError)."""


_DatesAsTextLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_calendars(path: Path | None = None) -> Calendars:
    """Calendars from `path`, `FEEDBACK_CALENDAR`, or `config/calendar.yaml`."""
    chosen = path or Path(os.environ.get("FEEDBACK_CALENDAR") or DEFAULT_CALENDAR_FILE)
    try:
        text = chosen.read_text(encoding="utf-8")
    except OSError as error:
        raise CalendarConfigError(f"{chosen}: cannot read: {error.strerror or error}") from None
    try:
        settings = yaml.load(text, Loader=_DatesAsTextLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as error:
        raise CalendarConfigError(f"{chosen}: not valid YAML: {error}") from None
    return calendars_from(settings, str(chosen))


def load_calendar(path: Path | None = None, region: str | None = None) -> BusinessCalendar:
    return load_calendars(path).get(region)
