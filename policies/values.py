"""Bounds for written values - CIP atomic types, OPC UA numeric built-in types: integers and floats,
negative ones too.

Spelled ``7``, ``-2.5``, ``"0..1500"``, ``"-40.5..120"``, ``"0x00..0xFF"`` or a list of these. Ranges use
``..`` (not Modbus's ``-``) because CIP values may be negative. Bounds are finite numbers, so NaN and
the infinities are inside no bound; a deny entry treats them as touching every bound, because a value
that compares with nothing could stand for anything.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from policies.errors import show

__all__ = ["ValueBounds", "parse_value_bounds"]

Number = int | float

_LOWEST = -(1 << 63)  # LINT
_HIGHEST = (1 << 64) - 1  # ULINT, LWORD
_NUMBER = r"[+-]?(?:0[xX][0-9A-Fa-f]{1,16}|\d{1,20}(?:\.\d{1,20})?(?:[eE][+-]?\d{1,3})?)"
_RANGE = re.compile(rf"\s*({_NUMBER})\s*(?:\.\.\s*({_NUMBER})\s*)?", re.ASCII)
_HELP = 'expected a number or a range "low..high" such as "0..1500" or "-40.5..120"'


class ValueBounds:
    """Sorted, merged ``(low, high)`` intervals of numbers; every bound finite."""

    __slots__ = ("high", "low", "ranges", "single")

    def __init__(self, ranges: Sequence[tuple[Number, Number]]) -> None:
        merged: list[tuple[Number, Number]] = []
        for low, high in sorted(ranges):
            if merged and low <= merged[-1][1]:
                if high > merged[-1][1]:
                    merged[-1] = (merged[-1][0], high)
            else:
                merged.append((low, high))
        self.ranges = tuple(merged)
        self.single = len(merged) == 1
        self.low, self.high = merged[0][0], merged[-1][1]

    def __contains__(self, value: Number) -> bool:
        # Comparisons with NaN are false, and the bounds are finite, so neither NaN nor an infinity
        # is ever inside.
        return any(low <= value <= high for low, high in self.ranges)

    def covers(self, values: Sequence[Number]) -> bool:
        """Whether every value is inside."""
        if self.single:
            low, high = self.low, self.high
            # Not min()/max(): with a NaN among the values their answer depends on its position. A
            # plain loop: this runs for every bounded write.
            for value in values:  # noqa: SIM110
                if not low <= value <= high:
                    return False
            return True
        return all(value in self for value in values)

    def includes(self, other: ValueBounds) -> bool:
        """Whether every value inside ``other`` is inside these bounds."""
        return all(
            any(low <= other_low and other_high <= high for low, high in self.ranges)
            for other_low, other_high in other.ranges
        )

    def touches(self, values: Sequence[Number]) -> bool:
        """Whether any value is inside, or is NaN or infinite (it could stand for anything)."""
        return any(value in self or not _finite(value) for value in values)

    def __str__(self) -> str:
        return ", ".join(
            _text(low) if low == high else f"{_text(low)}..{_text(high)}" for low, high in self.ranges
        )

    def __repr__(self) -> str:
        return f"ValueBounds({self})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ValueBounds) and self.ranges == other.ranges

    def __hash__(self) -> int:
        return hash(self.ranges)


def _finite(value: Number) -> bool:
    return isinstance(value, int) or math.isfinite(value)


def _text(value: Number) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _number(text: str) -> Number:
    body = text.lstrip("+-")
    sign = -1 if text.startswith("-") else 1
    if body[:2].lower() == "0x":
        return sign * int(body, 16)
    if "." in body or "e" in body.lower():
        return float(text)
    return sign * int(body)


def _check(value: Number, item: object, holds: str) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return f"{show(item)}: bounds must be finite numbers (NaN and infinities are never inside)"
    if not _LOWEST <= value <= _HIGHEST:
        return f"{show(item)}: {_text(value)} is outside what {holds} holds"
    return None


def _one(item: object, out: list[tuple[Number, Number]], holds: str) -> str | None:
    if isinstance(item, bool):
        return f"{show(item)}: {_HELP}"
    if isinstance(item, int | float):
        problem = _check(item, item, holds)
        if problem is None:
            out.append((item, item))
        return problem
    if not isinstance(item, str):
        return f"{show(item)}: {_HELP}"
    match = _RANGE.fullmatch(item)
    if match is None:
        hint = ' (CIP values may be negative, so ranges use "..")' if "-" in item.strip()[1:] else ""
        return f"{show(item)}: {_HELP}{hint}"
    low = _number(match[1])
    high = low if match[2] is None else _number(match[2])
    for value in (low, high):
        problem = _check(value, item, holds)
        if problem is not None:
            return problem
    if low > high:
        return f"{show(item)}: range start {_text(low)} is above its end {_text(high)}"
    out.append((low, high))
    return None


def parse_value_bounds(
    value: object, holds: str = "any CIP atomic type"
) -> tuple[ValueBounds | None, list[tuple[int | None, str]]]:
    """Bounds from a number, a range string or a list of these; problems as (list index, message).
    ``holds`` names the types the bounds are for, in the message for a number none of them holds."""
    ranges: list[tuple[Number, Number]] = []
    problems: list[tuple[int | None, str]] = []
    if isinstance(value, list):
        if not value:
            return None, [(None, "the list is empty: name at least one number or range")]
        for index, item in enumerate(value):
            message = _one(item, ranges, holds)
            if message is not None:
                problems.append((index, message))
    else:
        message = _one(value, ranges, holds)
        if message is not None:
            problems.append((None, message))
    if problems:
        return None, problems
    return ValueBounds(ranges), []
