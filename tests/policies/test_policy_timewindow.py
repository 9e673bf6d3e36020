"""Time windows: syntax, wall-clock semantics across midnight and daylight-saving changes, and the
cache that makes a check cheap - which must never change an answer, whatever order time is asked in."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.timewindow import Period, TimeWindow, parse_days, parse_hours, parse_time_zone


def naive_open(window: TimeWindow, now: float) -> bool:
    local = datetime.fromtimestamp(now, ZoneInfo(window.tz_name))
    minute, day = local.hour * 60 + local.minute, local.weekday()
    if window.start < window.end:
        return day in window.days and window.start <= minute < window.end
    return (day in window.days and minute >= window.start) or (
        (day - 1) % 7 in window.days and minute < window.end
    )


def window(days: str = "mon-sun", hours: str = "00:00-24:00", tz: str = "UTC") -> TimeWindow:
    parsed_days, _ = parse_days(days)
    parsed_hours, _ = parse_hours(hours)
    assert parsed_days is not None and parsed_hours is not None
    return TimeWindow(parsed_days, *parsed_hours, tz)


def test_day_syntax() -> None:
    assert parse_days("mon-fri") == (frozenset(range(5)), None)
    assert parse_days("sat,sun") == (frozenset({5, 6}), None)
    assert parse_days("mon, wed-fri") == (frozenset({0, 2, 3, 4}), None)
    assert parse_days("fri-mon") == (frozenset({4, 5, 6, 0}), None)
    assert parse_days("Sun") == (frozenset({6}), None)
    for bad in ("", "mon-", "monday", "mon,,tue", "mon-fry"):
        assert parse_days(bad)[1] is not None, bad


def test_hour_syntax() -> None:
    assert parse_hours("06:00-18:00") == ((360, 1080), None)
    assert parse_hours("22:00-06:00") == ((1320, 360), None)
    assert parse_hours("00:00-24:00") == ((0, 1440), None)
    for bad in ("6:00-18:00", "24:00-01:00", "10:60-11:00", "10:00-24:01", "08:00-08:00", "08:00"):
        assert parse_hours(bad)[1] is not None, bad


def test_time_zone_names() -> None:
    assert parse_time_zone("Europe/Berlin") == ("Europe/Berlin", None)
    for bad in ("Europe/Berln", "../etc/passwd", "", 5):
        assert parse_time_zone(bad)[0] is None


def test_description() -> None:
    assert str(window("mon-fri", "06:00-18:00", "Europe/Berlin")) == "mon-fri 06:00-18:00 Europe/Berlin"
    assert str(window("sat,sun,mon")) == "mon,sat,sun 00:00-24:00 UTC"
    assert str(window()) == "every day 00:00-24:00 UTC"


def test_end_is_exclusive_and_start_inclusive() -> None:
    w = window("mon-sun", "06:00-18:00")
    six = datetime(2026, 11, 26, 6, 0, tzinfo=UTC).timestamp()
    assert not w.is_open(six - 0.125)
    assert w.is_open(six)
    assert w.is_open(six + 12 * 3600 - 0.125)
    assert not w.is_open(six + 12 * 3600)


WINDOWS = [
    ("mon-sun", "02:00-03:00"),
    ("mon-sun", "01:30-02:30"),
    ("fri,sat,sun", "22:00-06:00"),
    ("sun", "00:00-24:00"),
    ("mon-fri", "06:00-18:00"),
    ("sat-mon", "02:30-02:45"),
]
# 2026 transitions: EU 29 Mar / 25 Oct, US 8 Mar / 1 Nov, Lord Howe (30-minute shift) 5 Apr / 4 Oct.
SWEEPS = [
    ("Europe/Berlin", datetime(2026, 3, 28, tzinfo=UTC)),
    ("Europe/Berlin", datetime(2026, 10, 24, tzinfo=UTC)),
    ("America/New_York", datetime(2026, 3, 7, 12, tzinfo=UTC)),
    ("America/New_York", datetime(2026, 10, 31, 12, tzinfo=UTC)),
    ("Australia/Lord_Howe", datetime(2026, 4, 3, 12, tzinfo=UTC)),
    ("Australia/Lord_Howe", datetime(2026, 10, 2, 12, tzinfo=UTC)),
]


@pytest.mark.parametrize(("tz", "start"), SWEEPS)
def test_cached_answers_match_the_naive_ones_across_daylight_saving(tz: str, start: datetime) -> None:
    windows = [window(days, hours, tz) for days, hours in WINDOWS]
    first = int(start.timestamp())
    # Every 37 s for two days, forwards then backwards, so cache spans are entered from both sides.
    instants = list(range(first, first + 2 * 86_400, 37))
    for now in instants + instants[::-1]:
        for w in windows:
            assert w.is_open(now) == naive_open(w, now), (str(w), datetime.fromtimestamp(now, UTC))


def test_a_window_in_the_skipped_hour_does_not_open_on_the_day_of_the_change() -> None:
    w = window("sun", "02:00-03:00", "Europe/Berlin")
    day = datetime(2026, 3, 29, tzinfo=UTC).timestamp()
    assert not any(w.is_open(day + s) for s in range(0, 86_400, 60))
    # ... and stays open through both passes of the repeated hour when the clocks go back.
    back = datetime(2026, 10, 24, 12, tzinfo=UTC).timestamp()
    open_minutes = [m for m in range(0, 24 * 60) if w.is_open(back + 60 * m)]
    assert len(open_minutes) == 120 and open_minutes == list(range(open_minutes[0], open_minutes[0] + 120))


windows_drawn = st.builds(
    window,
    st.sampled_from(["mon-fri", "sat,sun", "fri-mon", "wed", "mon-sun"]),
    st.sampled_from(["06:00-18:00", "22:00-06:00", "00:00-24:00", "01:59-03:01", "23:30-00:30"]),
    st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu"]),
)
instants = st.integers(
    int(datetime(2026, 1, 1, tzinfo=UTC).timestamp()), int(datetime(2027, 1, 1, tzinfo=UTC).timestamp())
).map(float)


@settings(max_examples=200, deadline=None)
@given(w=windows_drawn, start=instants, steps=st.lists(st.integers(-90_000, 90_000), min_size=1, max_size=30))
def test_cache_is_invisible_whatever_order_time_is_asked_in(
    w: TimeWindow, start: float, steps: list[int]
) -> None:
    now = start
    for step in steps:
        now += step + 0.5
        assert w.is_open(now) == naive_open(w, now) == w.open_at(now)


@settings(max_examples=200, deadline=None)
@given(
    w=windows_drawn, start=instants, fractions=st.lists(st.floats(0.0, 1.0, exclude_max=True), max_size=20)
)
def test_a_window_answers_the_same_until_the_instant_it_names(
    w: TimeWindow, start: float, fractions: list[float]
) -> None:
    """What a session keeps decisions by: ``steady_until(now)`` is later than ``now``, and every instant
    before it gets ``now``'s answer, asked in any order and from scratch."""
    now = start + 0.25
    until = w.steady_until(now)
    assert until > now
    assert until - now <= 86_400  # a window's answer is checked again at least every local day
    state = naive_open(w, now)
    for at in [until - 0.125, *(min(now + f * (until - now), until - 0.125) for f in fractions)]:
        assert w.is_open(at) == naive_open(w, at) == state, datetime.fromtimestamp(at, UTC)
    assert w.steady_until(until - 0.125) == until


def test_a_period_answers_the_same_until_it_starts_and_until_it_ends() -> None:
    period = Period(1_000.0, 2_000.0)
    assert [period.steady_until(t) for t in (0.0, 999.5, 1_000.0, 1_999.5)] == [1_000.0] * 2 + [2_000.0] * 2
    assert period.steady_until(2_000.0) == period.steady_until(1e12) == float("inf")
