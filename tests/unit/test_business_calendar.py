"""Business time: the calendar deadlines are counted on (services/sla/calendar.py)."""

from __future__ import annotations

import logging
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import chinese_calendar
import holidays
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from services.sla import calendar as calendar_module
from services.sla.calendar import (
    BusinessCalendar,
    CalendarConfigError,
    CalendarRules,
    Target,
    calendars_from,
    load_calendars,
    parse_target,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
CALENDAR = BusinessCalendar()
WITH_LUNCH = BusinessCalendar(CalendarRules(breaks=("12:00-13:00",)))
REPO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "calendar.yaml"


def at(text: str) -> datetime:
    """A Shanghai wall-clock time."""
    return datetime.fromisoformat(text).replace(tzinfo=SHANGHAI)


def due(start: str, target: str, kind: str = "business", pauses=(), calendar=CALENDAR):
    paused = [(at(paused_from), at(paused_to)) for paused_from, paused_to in pauses]
    return calendar.due(at(start), parse_target(target), kind, paused)


# Targets --------------------------------------------------------------------------------------


def test_targets_are_checked_however_they_are_made():
    with pytest.raises(ValueError, match="more than zero"):
        Target(0, "h")
    with pytest.raises(ValueError, match="unit"):
        Target(3, "d")  # type: ignore[arg-type]


def test_targets_parse():
    assert parse_target("4h") == Target(4, "h")
    assert parse_target("30m") == Target(30, "m")
    assert parse_target(" 3wd ") == Target(3, "wd")
    assert parse_target("72h").minutes == 72 * 60


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("-4h", "negative"),
        ("4", "malformed"),
        ("4.5h", "malformed"),
        ("4 h", "malformed"),
        ("4d", "malformed"),
        ("h", "malformed"),
        ("", "malformed"),
        ("0m", "zero"),
        ("99999999h", "ten years"),
    ],
)
def test_bad_targets_are_refused_with_the_reason(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_target(text)


# Business hours, nights, weekends --------------------------------------------------------------


def test_business_hours_inside_one_day():
    assert due("2026-03-02T09:00", "4h") == at("2026-03-02T13:00")  # a Monday
    assert due("2026-03-02T09:00:30", "1m") == at("2026-03-02T09:01:30")


def test_used_up_exactly_at_closing_is_due_at_closing():
    assert due("2026-03-02T14:00", "4h") == at("2026-03-02T18:00")
    assert due("2026-03-02T09:00", "9h") == at("2026-03-02T18:00")
    assert due("2026-03-06T17:30", "30m") == at("2026-03-06T18:00")  # Friday: not Monday 09:00


def test_a_start_outside_hours_counts_from_the_next_opening():
    assert due("2026-03-02T07:15", "1h") == at("2026-03-02T10:00")
    assert due("2026-03-02T18:00", "30m") == at("2026-03-03T09:30")  # closing is not working
    assert due("2026-03-02T20:00", "4h") == at("2026-03-03T13:00")  # a night
    assert due("2026-03-07T10:00", "30m") == at("2026-03-09T09:30")  # Saturday → Monday


def test_weekends_do_not_count():
    assert due("2026-03-06T16:00", "4h") == at("2026-03-09T11:00")
    assert due("2026-03-06T09:00", "72h") == at("2026-03-17T18:00")  # 8 working days


def test_calendar_time_is_wall_clock():
    assert due("2026-03-06T16:00", "24h", "calendar") == at("2026-03-07T16:00")
    assert due("2026-02-16T03:00", "30m", "calendar") == at("2026-02-16T03:30")  # a holiday night


def test_aware_and_naive_times():
    utc_start = datetime.fromisoformat("2026-03-02T01:00+00:00")  # 09:00 in Shanghai
    answer = CALENDAR.due(utc_start, parse_target("4h"), "business")
    assert answer == at("2026-03-02T13:00")
    assert answer.tzinfo == SHANGHAI
    naive = CALENDAR.due(datetime(2026, 3, 2, 9), parse_target("4h"), "business")
    assert naive.isoformat() == "2026-03-02T13:00:00+08:00"


def test_working_time_and_next_opening():
    assert CALENDAR.is_working_time(at("2026-03-02T09:00"))
    assert not CALENDAR.is_working_time(at("2026-03-02T18:00"))
    assert not CALENDAR.is_working_time(at("2026-03-07T10:00"))
    assert CALENDAR.next_opening(at("2026-03-02T10:00")) == at("2026-03-02T10:00")
    assert CALENDAR.next_opening(at("2026-03-06T18:00")) == at("2026-03-09T09:00")
    assert CALENDAR.next_opening(at("2026-09-30T19:00")) == at("2026-10-08T09:00")


def test_business_minutes_between():
    assert CALENDAR.business_minutes_between(at("2026-03-06T17:00"), at("2026-03-09T10:00")) == 120
    assert CALENDAR.business_minutes_between(at("2026-03-09T10:00"), at("2026-03-06T17:00")) == 0
    assert CALENDAR.business_time_between(
        at("2026-03-02T09:00"), at("2026-03-03T09:00")
    ) == timedelta(hours=9)


# Holidays and make-up working days (调休), as the package says -----------------------------------


def test_the_package_has_2026_with_its_make_up_working_weekends():
    for make_up_day in (date(2026, 2, 14), date(2026, 9, 20), date(2026, 10, 10)):
        assert make_up_day in chinese_calendar.workdays
        assert make_up_day.weekday() >= 5
    assert chinese_calendar.is_holiday(date(2026, 2, 17))
    assert chinese_calendar.is_holiday(date(2026, 10, 1))


def test_every_make_up_working_weekend_day_of_2025_and_2026_works():
    make_up_weekends = [
        day for day in chinese_calendar.workdays if day.year in (2025, 2026) and day.weekday() >= 5
    ]
    assert len(make_up_weekends) >= 10
    for day in make_up_weekends:
        assert CALENDAR.is_working_day(day), day
        moment = datetime(day.year, day.month, day.day, 10, tzinfo=SHANGHAI)
        assert CALENDAR.is_working_time(moment)


def test_every_statutory_holiday_of_2025_and_2026_is_closed():
    for day in chinese_calendar.holidays:
        if day.year in (2025, 2026):
            assert not CALENDAR.is_working_day(day), day


def test_spring_festival_2026():
    closed = [date(2026, 2, 15) + timedelta(days=offset) for offset in range(9)]  # 15th–23rd
    assert all(not CALENDAR.is_working_day(day) for day in closed)
    # Friday 13th → the make-up Saturday 14th counts → then nothing until Tuesday the 24th.
    assert due("2026-02-13T17:00", "2h") == at("2026-02-14T10:00")
    assert due("2026-02-14T17:00", "2h") == at("2026-02-24T10:00")
    assert due("2026-02-18T10:00", "30m") == at("2026-02-24T09:30")


def test_national_day_2026():
    assert due("2026-09-30T17:00", "4h") == at("2026-10-08T12:00")
    # The make-up Sunday before it works.
    assert due("2026-09-19T10:00", "1h") == at("2026-09-20T10:00")


# Breaks --------------------------------------------------------------------------------------


def test_breaks_do_not_count():
    assert due("2026-03-02T09:00", "4h", calendar=WITH_LUNCH) == at("2026-03-02T14:00")
    assert due("2026-03-02T12:30", "30m", calendar=WITH_LUNCH) == at("2026-03-02T13:30")
    assert not WITH_LUNCH.is_working_time(at("2026-03-02T12:30"))
    assert WITH_LUNCH.next_opening(at("2026-03-02T12:00")) == at("2026-03-02T13:00")


def test_used_up_at_the_start_of_a_break_is_due_then():
    assert due("2026-03-02T11:00", "1h", calendar=WITH_LUNCH) == at("2026-03-02T12:00")
    assert due("2026-03-02T09:00", "8h", calendar=WITH_LUNCH) == at("2026-03-02T18:00")


# Pauses --------------------------------------------------------------------------------------


def test_a_business_pause_moves_the_due_time_by_the_business_time_inside_it():
    assert due("2026-03-02T09:00", "4h", pauses=[("2026-03-02T10:00", "2026-03-02T11:00")]) == at(
        "2026-03-02T14:00"
    )
    # 30 min on Monday and 1 h on Tuesday are paused; the night between is not counted anyway.
    assert due("2026-03-02T17:00", "4h", pauses=[("2026-03-02T17:30", "2026-03-03T10:00")]) == at(
        "2026-03-03T13:30"
    )


def test_a_pause_outside_counted_time_moves_nothing():
    plain = due("2026-03-02T17:00", "4h")
    for pause in [
        ("2026-03-02T19:00", "2026-03-03T08:00"),  # a night
        ("2026-03-01T08:00", "2026-03-02T17:00"),  # before the start
        ("2026-03-05T09:00", "2026-03-05T12:00"),  # after the clock ran out
        ("2026-03-02T18:00", "2026-03-02T18:00"),  # empty
    ]:
        assert due("2026-03-02T17:00", "4h", pauses=[pause]) == plain


def test_overlapping_pauses_count_once():
    overlapping = [
        ("2026-03-02T10:00", "2026-03-02T11:00"),
        ("2026-03-02T10:30", "2026-03-02T11:30"),
    ]
    assert due("2026-03-02T09:00", "4h", pauses=overlapping) == at("2026-03-02T14:30")


def test_a_calendar_pause_moves_the_due_time_by_the_wall_time_inside_it():
    assert due(
        "2026-03-02T09:00", "4h", "calendar", pauses=[("2026-03-02T10:00", "2026-03-02T10:20")]
    ) == at("2026-03-02T13:20")
    # Wall time counts at night too.
    assert due(
        "2026-03-02T20:00", "8h", "calendar", pauses=[("2026-03-02T22:00", "2026-03-03T01:00")]
    ) == at("2026-03-03T07:00")


def test_a_pause_that_ends_before_it_starts_is_refused():
    with pytest.raises(ValueError, match="ends before it starts"):
        due("2026-03-02T09:00", "4h", pauses=[("2026-03-02T11:00", "2026-03-02T10:00")])


# Working days --------------------------------------------------------------------------------


def test_working_days_from_a_friday_evening():
    assert due("2026-03-06T20:00", "3wd") == at("2026-03-11T18:00")


def test_the_day_of_receipt_never_counts():
    assert due("2026-03-02T08:00", "1wd") == at("2026-03-03T18:00")
    assert due("2026-03-02T23:59", "1wd") == at("2026-03-03T18:00")


def test_working_days_from_a_holiday():
    # National Day: 1–7 Oct closed; Thu 8, Fri 9 and the make-up Saturday 10 Oct work.
    assert due("2026-10-01T10:00", "3wd") == at("2026-10-10T18:00")
    assert due("2026-02-16T10:00", "1wd") == at("2026-02-24T18:00")


def test_working_days_paused_move_by_the_working_minutes_paused():
    assert due("2026-03-02T10:00", "3wd") == at("2026-03-05T18:00")
    paused = [("2026-03-03T09:00", "2026-03-03T13:00")]  # 4 working hours on Tuesday
    assert due("2026-03-02T10:00", "3wd", pauses=paused) == at("2026-03-06T13:00")


def test_working_days_paused_on_the_day_of_receipt_or_a_weekend_move_nothing():
    receipt_day = [("2026-03-02T10:00", "2026-03-02T17:00")]
    assert due("2026-03-02T10:00", "3wd", pauses=receipt_day) == at("2026-03-05T18:00")
    weekend = [("2026-03-06T18:00", "2026-03-09T09:00")]
    assert due("2026-03-05T10:00", "3wd", pauses=weekend) == at("2026-03-10T18:00")


def test_working_days_are_business_time_only():
    with pytest.raises(ValueError, match="business time only"):
        due("2026-03-02T10:00", "3wd", "calendar")


# A year the data does not cover ------------------------------------------------------------


def _fallbacks(year: int) -> float:
    return REGISTRY.get_sample_value("feedback_calendar_fallback_total", {"year": str(year)}) or 0


def test_a_year_outside_the_data_falls_back_to_the_weekday_rule(monkeypatch, caplog):
    monkeypatch.setattr(calendar_module, "_warned_years", set())
    covered = calendar_module._COVERED_YEARS
    year = max(covered) + 5
    assert year not in covered
    calendar = BusinessCalendar()
    before = _fallbacks(year)
    with caplog.at_level(logging.WARNING, logger=calendar_module.__name__):
        # 1 January falls on a weekday this year: without data it is an ordinary working day.
        new_year = date(year, 1, 1)
        assert new_year.weekday() < 5
        assert calendar.is_working_day(new_year)
        friday = next(
            date(year, 1, day) for day in range(1, 8) if date(year, 1, day).weekday() == 4
        )
        monday = friday + timedelta(days=3)
        start = datetime.combine(friday, time(17), tzinfo=SHANGHAI)
        assert calendar.due(start, parse_target("2h")) == datetime.combine(
            monday, time(10), tzinfo=SHANGHAI
        )
        assert calendar.due(start, parse_target("1wd")) == datetime.combine(
            monday, time(18), tzinfo=SHANGHAI
        )
        BusinessCalendar().is_working_day(date(year, 3, 3))
    warnings = [record for record in caplog.records if str(year) in record.getMessage()]
    assert len(warnings) == 1  # once per year, however many days and calendars
    assert _fallbacks(year) > before


def test_a_year_before_the_data_falls_back_too():
    assert CALENDAR.is_working_day(date(1999, 10, 4))  # a National Day Monday, no data
    assert not CALENDAR.is_working_day(date(1999, 10, 2))  # a Saturday


# Overrides and regions -----------------------------------------------------------------------


def test_overrides_close_and_open_days():
    calendar = BusinessCalendar(
        CalendarRules(
            extra_closed=frozenset({date(2026, 3, 2), date(2026, 2, 14)}),  # a Monday; a 调休
            extra_working=frozenset({date(2026, 3, 8), date(2026, 10, 2)}),  # a Sunday; a holiday
        )
    )
    assert not calendar.is_working_day(date(2026, 3, 2))
    assert not calendar.is_working_day(date(2026, 2, 14))
    assert calendar.is_working_day(date(2026, 3, 8))
    assert calendar.is_working_day(date(2026, 10, 2))
    assert calendar.due(at("2026-03-07T10:00"), parse_target("1h")) == at("2026-03-08T10:00")
    assert calendar.due(at("2026-02-28T20:00"), parse_target("1wd")) == at("2026-03-03T18:00")


def test_a_centre_open_on_saturdays_still_closes_on_holidays():
    calendar = BusinessCalendar(CalendarRules.model_validate({"hours": {"sat": ["09:00-12:00"]}}))
    assert calendar.is_working_day(date(2026, 3, 7))
    assert not calendar.is_working_day(date(2026, 10, 3))  # a Saturday in National Day
    assert calendar.due(at("2026-03-06T17:00"), parse_target("2h")) == at("2026-03-07T10:00")


def test_a_round_the_clock_calendar_counts_like_wall_time():
    every_hour = {day: ["00:00-24:00"] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
    calendar = BusinessCalendar(
        CalendarRules.model_validate({"hours": every_hour, "public_holidays": "none"})
    )
    start = at("2026-10-01T22:30")
    assert calendar.due(start, parse_target("72h")) == start + timedelta(hours=72)


def test_regions_build_on_the_default():
    calendars = calendars_from(
        {
            "hours": {"mon": ["08:00-17:00"]},
            "extra_closed": [date(2026, 3, 2)],
            "regions": {
                "hong-kong": {
                    "zone": "Asia/Hong_Kong",
                    "public_holidays": "none",
                    "extra_closed": [date(2026, 7, 1)],
                },
                "night-shift": {
                    "extra_working": [date(2026, 3, 2)],
                    "hours": {"sat": ["20:00-24:00"]},
                },
            },
        }
    )
    hong_kong = calendars.get("hong-kong")
    assert hong_kong.zone == ZoneInfo("Asia/Hong_Kong")
    assert hong_kong.is_working_day(date(2026, 10, 2))  # no mainland holidays
    assert not hong_kong.is_working_day(date(2026, 7, 1))
    assert not hong_kong.is_working_day(date(2026, 3, 2))  # the default's closed day
    night_shift = calendars.get("night-shift")
    assert night_shift.is_working_day(date(2026, 3, 2))  # reopened
    assert night_shift.is_working_time(at("2026-03-07T21:00"))  # its own Saturday hours
    assert night_shift.is_working_time(at("2026-03-09T08:30"))  # the default's Monday hours
    assert not calendars.get().is_working_day(date(2026, 3, 2))
    with pytest.raises(KeyError, match="no calendar for region"):
        calendars.get("mars")


# Configuration -------------------------------------------------------------------------------


def test_the_repository_calendar_file_is_the_documented_default():
    calendars = load_calendars(REPO_CONFIG)
    default = calendars.get()
    assert default.zone == SHANGHAI
    for start, target in [("2026-03-06T16:00", "4h"), ("2026-09-30T17:00", "3wd")]:
        assert due(start, target, calendar=default) == due(start, target)


@pytest.mark.parametrize(
    ("content", "key", "reason"),
    [
        ("zone: Mars/Olympus\n", "zone", "unknown time zone"),
        ("hours:\n  mon: [9:00-18:00]\n", "hours.mon.0", "HH:MM-HH:MM"),
        ("hours:\n  mon: [09:00]\n", "hours.mon.0", "HH:MM-HH:MM"),
        ("hours:\n  mon: [9:00]\n", "hours.mon.0", "string"),  # YAML reads 9:00 as 540
        ('hours:\n  mon: ["18:00-09:00"]\n', "hours.mon.0", "closes before it opens"),
        ('hours:\n  mon: ["09:00-25:00"]\n', "hours.mon.0", "times of day"),
        ('hours:\n  mon: ["09:00-13:00", "12:00-18:00"]\n', "hours", "overlap"),
        ('hours:\n  funday: ["09:00-18:00"]\n', "hours.funday", "Extra inputs"),
        ("holidays: CN\n", "holidays", "Extra inputs"),
        ("extra_closed: [2026-13-01]\n", "extra_closed.0", "date"),
        ("extra_closed: [someday]\n", "extra_closed.0", "date"),
        ("extra_closed: [2026-03-02]\nextra_working: [2026-03-02]\n", "", "both list 2026-03-02"),
        (
            "hours: {mon: [], tue: [], wed: [], thu: [], fri: []}\n",
            "",
            "no weekday has working hours",
        ),
        ("regions:\n  north:\n    zone: Nowhere/City\n", "regions.north.zone", "unknown time zone"),
        ("- just\n- a list\n", "", "mapping"),
        ("zone: [unclosed\n", "", "not valid YAML"),
    ],
)
def test_a_bad_calendar_file_is_refused_with_the_key_and_reason(tmp_path, content, key, reason):
    path = tmp_path / "calendar.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CalendarConfigError) as refused:
        load_calendars(path)
    message = str(refused.value)
    assert str(path) in message
    assert key in message
    assert reason in message


def test_an_empty_calendar_file_means_every_default(tmp_path):
    path = tmp_path / "calendar.yaml"
    path.write_text("# nothing configured\n", encoding="utf-8")
    assert due("2026-02-13T17:00", "2h", calendar=load_calendars(path).get()) == at(
        "2026-02-14T10:00"
    )


# Cross-check against the `holidays` package ----------------------------------------------------


@pytest.mark.parametrize("year", [2025, 2026])
def test_working_days_agree_with_the_holidays_package(year):
    # The two packages list holidays differently: chinesecalendar lists every day of a holiday
    # period, weekends included; holidays.China lists the statutory days and the weekdays taken
    # off in lieu. What matters for deadlines is whether a day works, and on that they agree on
    # every day of both years (no deliberate difference).
    china = holidays.China(years=year)
    day = date(year, 1, 1)
    disagreements = []
    while day.year == year:
        if CALENDAR.is_working_day(day) != china.is_working_day(day):
            disagreements.append((day, china.get(day)))
        day += timedelta(days=1)
    assert disagreements == []
    assert sorted(day for day in china.weekend_workdays if day.year == year) == sorted(
        day for day in chinese_calendar.workdays if day.year == year and day.weekday() >= 5
    )
    for holiday in china:
        assert not CALENDAR.is_working_day(holiday), holiday


# Properties ----------------------------------------------------------------------------------

# Across 2025–2027: covered years, and a year that falls back.
starts = st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2027, 12, 31)).map(
    lambda moment: moment.replace(tzinfo=SHANGHAI)
)
calendars = st.sampled_from([CALENDAR, WITH_LUNCH])
PROPERTIES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTIES
@given(starts, st.integers(min_value=1, max_value=6000), calendars)
def test_business_due_counts_exactly_the_target(start, minutes, calendar):
    answer = calendar.due(start, Target(minutes, "m"), "business")
    assert answer >= start
    target = timedelta(minutes=minutes)
    assert calendar.business_time_between(start, answer) == target
    # The earliest such moment: a moment earlier has not used the clock up.
    assert calendar.business_time_between(start, answer - timedelta(microseconds=1)) < target


@PROPERTIES
@given(starts, st.integers(min_value=1, max_value=6000))
def test_calendar_due_is_wall_clock(start, minutes):
    assert CALENDAR.due(start, Target(minutes, "m"), "calendar") == start + timedelta(
        minutes=minutes
    )


@PROPERTIES
@given(starts, st.integers(min_value=1, max_value=20), calendars)
def test_working_days_due_is_a_closing_time_after_the_day_of_receipt(start, days, calendar):
    answer = calendar.due(start, Target(days, "wd"), "business")
    assert answer.date() > start.date()
    assert calendar.is_working_day(answer.date())
    assert not calendar.is_working_time(answer)
    assert calendar.is_working_time(answer - timedelta(minutes=1))
    working_days = 0
    day = start.date() + timedelta(days=1)
    while day <= answer.date():
        working_days += calendar.is_working_day(day)
        day += timedelta(days=1)
    assert working_days == days


targets = st.one_of(
    st.builds(Target, st.integers(min_value=1, max_value=6000), st.just("m")),
    st.builds(Target, st.integers(min_value=1, max_value=10), st.just("wd")),
)


@PROPERTIES
@given(
    starts,
    targets,
    st.sampled_from(["business", "calendar"]),
    st.integers(min_value=-3000, max_value=20000),
    st.integers(min_value=0, max_value=5000),
)
def test_a_pause_never_makes_the_due_time_earlier(start, target, kind, offset, length):
    if target.unit == "wd":
        kind = "business"
    pause_from = start + timedelta(minutes=offset)
    pause = (pause_from, pause_from + timedelta(minutes=length))
    plain = CALENDAR.due(start, target, kind)
    paused = CALENDAR.due(start, target, kind, [pause])
    assert paused >= plain


@PROPERTIES
@given(
    starts,
    st.integers(min_value=1, max_value=6000),
    st.integers(min_value=-3000, max_value=20000),
    st.integers(min_value=0, max_value=5000),
    calendars,
)
def test_a_business_pause_moves_the_due_time_by_the_counted_time_inside_it(
    start, minutes, offset, length, calendar
):
    pause_from = start + timedelta(minutes=offset)
    pause_to = pause_from + timedelta(minutes=length)
    answer = calendar.due(start, Target(minutes, "m"), "business", [(pause_from, pause_to)])
    counted = calendar.business_time_between(start, answer)
    paused = calendar.business_time_between(max(pause_from, start), min(pause_to, answer))
    assert counted - paused == timedelta(minutes=minutes)


@PROPERTIES
@given(starts, calendars)
def test_next_opening_is_the_first_working_moment(start, calendar):
    opening = calendar.next_opening(start)
    assert opening >= start
    assert calendar.is_working_time(opening)
    assert calendar.business_time_between(start, opening) == timedelta(0)
