"""Time windows (``when = { days = "mon-fri", hours = "06:00-18:00", tz = "Europe/Berlin" }``), and
periods (``when = { from = 2026-12-07T14:00:00Z, until = 2026-12-07T16:00:00Z }``): the once-only
window of a just-in-time grant's rule, after which the gateway cuts the sessions it carried.

A window follows the wall clock of its time zone, so it opens at 06:00 local time on both sides of a
daylight-saving change. Whether it is open is a pure function of the instant asked about; the answer is
cached together with the span of instants over which it cannot change (up to the next boundary of the
window, local midnight or change of UTC offset), so the evaluator's check is a comparison and a tuple
read, not a time-zone conversion.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from policies.errors import quote

__all__ = [
    "DAY_NAMES",
    "Period",
    "TimeWindow",
    "Window",
    "parse_days",
    "parse_hours",
    "parse_instant",
    "parse_time_zone",
]

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_INDEX = {name: index for index, name in enumerate(DAY_NAMES)}
_HOURS = re.compile(r"(\d\d):(\d\d)-(\d\d):(\d\d)", re.ASCII)
_DAY_SECONDS = 86_400
_ALL_DAYS = frozenset(range(7))


class TimeWindow:
    """Open on ``days`` (0 = Monday) from ``start`` to ``end`` (minutes after local midnight).

    ``end`` is exclusive and may be 1440 (24:00). When ``end <= start`` the window spans midnight and the
    hours after midnight belong to the day on which the window opened.
    """

    __slots__ = ("_cache", "_end_s", "_start_s", "days", "end", "start", "tz", "tz_name")

    def __init__(self, days: frozenset[int], start: int, end: int, tz_name: str) -> None:
        self.days = days
        self.start = start
        self.end = end
        self.tz_name = tz_name
        self.tz = ZoneInfo(tz_name)
        self._start_s = start * 60
        self._end_s = end * 60
        # (first instant, instant after the last, open?): empty until the first question.
        self._cache: tuple[float, float, bool] = (0.0, 0.0, False)

    def is_open(self, now: float) -> bool:
        first, after, state = self._cache
        if first <= now < after:
            return state
        return self._refresh(now)

    def open_at(self, now: float) -> bool:
        """The same answer as :meth:`is_open`, computed from scratch (for explanations and tests)."""
        return self._state_and_next_change(math.floor(now))[0]

    def steady_until(self, now: float) -> float:
        """The first instant after ``now`` at which :meth:`is_open` may answer otherwise (epoch seconds):
        it gives ``now``'s answer for every instant from ``now`` up to, not including, this one."""
        first, after, _ = self._cache
        if not first <= now < after:
            self._refresh(now)
        return self._cache[1]

    def _refresh(self, now: float) -> bool:
        second = math.floor(now)
        state, after = self._state_and_next_change(second)
        self._cache = (float(second), float(after), state)
        return state

    def _open_local(self, weekday: int, second_of_day: int) -> bool:
        if self._start_s < self._end_s:
            return weekday in self.days and self._start_s <= second_of_day < self._end_s
        return (weekday in self.days and second_of_day >= self._start_s) or (
            (weekday - 1) % 7 in self.days and second_of_day < self._end_s
        )

    def _state_and_next_change(self, second: int) -> tuple[bool, int]:
        """Whether the window is open at ``second`` and the first later second it may change.

        Boundaries are whole local minutes and UTC offsets whole seconds, so deciding on the whole
        second is the same as deciding on the exact instant, and the cached span is exact.
        """
        local = datetime.fromtimestamp(second, self.tz)
        of_day = local.hour * 3600 + local.minute * 60 + local.second
        state = self._open_local(local.weekday(), of_day)
        # Wall-clock seconds to the next moment the answer could change: a window edge or midnight.
        step = min(edge for edge in (self._start_s, self._end_s, _DAY_SECONDS) if edge > of_day) - of_day
        after = second + step
        offset = local.utcoffset()
        if datetime.fromtimestamp(after - 1, self.tz).utcoffset() != offset:
            # The offset changes before that edge, so the wall clock jumps: stop the span at the jump.
            low, high = second, after - 1  # offset(low) == offset, offset(high) != offset
            while high - low > 1:
                middle = (low + high) // 2
                if datetime.fromtimestamp(middle, self.tz).utcoffset() == offset:
                    low = middle
                else:
                    high = middle
            after = high
        return state, after

    def __str__(self) -> str:
        return f"{describe_days(self.days)} {_hhmm(self.start)}-{_hhmm(self.end)} {self.tz_name}"

    def __repr__(self) -> str:
        return f"TimeWindow({self})"


class Period:
    """Open from ``start`` (inclusive) to ``end`` (exclusive), epoch seconds: once, never again."""

    __slots__ = ("end", "start")

    def __init__(self, start: float, end: float) -> None:
        self.start = start
        self.end = end

    def is_open(self, now: float) -> bool:
        return self.start <= now < self.end

    def open_at(self, now: float) -> bool:
        return self.start <= now < self.end

    def steady_until(self, now: float) -> float:
        """As :meth:`TimeWindow.steady_until`: the start, the end, or never once it has ended."""
        if now < self.start:
            return self.start
        return self.end if now < self.end else math.inf

    def __str__(self) -> str:
        return f"{_utc(self.start)} until {_utc(self.end)}"

    def __repr__(self) -> str:
        return f"Period({self})"


Window = TimeWindow | Period


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_instant(value: object) -> tuple[float | None, str | None]:
    """A TOML offset date-time (``2026-12-07T14:00:00Z``) or the same as an ISO 8601 string -> epoch
    seconds; a time without a UTC offset is refused (whose midnight would it be?)."""
    moment = value
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None, f"{quote(value)}: expected a date and time such as 2026-12-07T14:00:00Z"
    if not isinstance(moment, datetime):
        return None, f"expected a date and time such as 2026-12-07T14:00:00Z, got {type(value).__name__}"
    if moment.tzinfo is None:
        return None, f"{moment.isoformat()}: needs a UTC offset, such as 2026-12-07T14:00:00Z"
    return moment.timestamp(), None


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def describe_days(days: frozenset[int]) -> str:
    """``{0, 1, 2, 3, 4}`` -> ``"mon-fri"``; runs of three or more days become ranges."""
    if days == _ALL_DAYS:
        return "every day"
    runs: list[list[int]] = []
    for day in sorted(days):
        if runs and runs[-1][-1] == day - 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    parts: list[str] = []
    for run in runs:
        if len(run) >= 3:
            parts.append(f"{DAY_NAMES[run[0]]}-{DAY_NAMES[run[-1]]}")
        else:
            parts.extend(DAY_NAMES[day] for day in run)
    return ",".join(parts)


def parse_days(text: object) -> tuple[frozenset[int] | None, str | None]:
    """``"mon-fri"``, ``"sat,sun"``, ``"mon,wed-fri"``; a range may wrap (``"fri-mon"``)."""
    if not isinstance(text, str):
        return None, f'expected a string such as "mon-fri", got {type(text).__name__}'
    days: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().lower().partition("-")
        names = (first.strip(), last.strip()) if dash else (first,)
        indices = [_DAY_INDEX.get(name) for name in names]
        if None in indices or not part.strip():
            return (
                None,
                f'{quote(text)}: expected days such as "mon-fri" or "sat,sun" ({", ".join(DAY_NAMES)})',
            )
        start, end = indices[0], indices[-1]
        assert start is not None and end is not None
        day = start
        days.add(day)
        while day != end:
            day = (day + 1) % 7
            days.add(day)
    return frozenset(days), None


def parse_hours(text: object) -> tuple[tuple[int, int] | None, str | None]:
    """``"HH:MM-HH:MM"``, start inclusive, end exclusive; ``"24:00"`` only as an end."""
    if not isinstance(text, str):
        return None, f'expected a string such as "06:00-18:00", got {type(text).__name__}'
    match = _HOURS.fullmatch(text.strip())
    if match is None:
        return None, f'{quote(text)}: expected "HH:MM-HH:MM" such as "06:00-18:00"'
    start_h, start_m, end_h, end_m = (int(group) for group in match.groups())
    if start_h > 23 or start_m > 59:
        return None, f"{quote(text)}: the start must lie in 00:00..23:59"
    if end_m > 59 or end_h > 24 or (end_h == 24 and end_m):
        return None, f"{quote(text)}: the end must lie in 00:00..24:00"
    start, end = start_h * 60 + start_m, end_h * 60 + end_m
    if start == end:
        return None, f'{quote(text)}: start and end are equal; use "00:00-24:00" for the whole day'
    return (start, end), None


def parse_time_zone(name: object) -> tuple[str | None, str | None]:
    if not isinstance(name, str):
        return None, f'expected an IANA time zone name such as "Europe/Berlin", got {type(name).__name__}'
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None, f'{quote(name)} is not an IANA time zone name (such as "Europe/Berlin" or "UTC")'
    return name, None
