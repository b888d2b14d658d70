"""Consumers pass over case events by the relay's event-type header; a record without the
header is always read (it may be anything), and every case event has a distinct type name."""

from __future__ import annotations

from types import SimpleNamespace

from contracts.events import CASE_EVENTS, CLOCK_EVENTS, ClockStarted, type_names
from services.common.bus import EVENT_TYPE_HEADER, concerns
from services.handling.callbacks import FOLLOWED
from services.sla.service import DECIDES_ON_TYPES, OWN_EVENT_TYPES


def record(headers: list[tuple[str, bytes]]) -> SimpleNamespace:
    return SimpleNamespace(headers=headers)


def test_every_case_event_has_its_own_type_name() -> None:
    names = type_names(*CASE_EVENTS)
    assert len(names) == len(CASE_EVENTS)
    assert "ClockStarted" in names and "CaseRegistered" in names


def test_a_record_is_read_unless_its_header_names_an_unwanted_type() -> None:
    wanted = frozenset({"CaseResolved"})
    assert concerns(record([(EVENT_TYPE_HEADER, b"CaseResolved")]), wanted)
    assert not concerns(record([("event-id", b"x:1"), (EVENT_TYPE_HEADER, b"ClockMet")]), wanted)
    assert concerns(record([]), wanted)  # no header: read it to find out
    # A type from a newer version is read too: it becomes a dead letter, not a silent skip.
    assert concerns(record([(EVENT_TYPE_HEADER, b"CaseTeleported")]), wanted)
    assert concerns(SimpleNamespace(headers=None), wanted)


def test_the_sla_decides_on_no_clock_event_and_its_timers_follow_every_one() -> None:
    clocks = type_names(*CLOCK_EVENTS)
    assert not DECIDES_ON_TYPES & clocks
    assert clocks <= OWN_EVENT_TYPES


def test_callbacks_follow_everything_but_the_clocks() -> None:
    assert type_names(ClockStarted).isdisjoint(FOLLOWED)
    assert FOLLOWED | type_names(*CLOCK_EVENTS) == type_names(*CASE_EVENTS)
