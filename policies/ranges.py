"""Integer ranges as policies spell them (``40``, ``"0-999"``, lists of these) and the sets they make.

:class:`IntervalSet` answers the three questions the evaluator asks of a field - is a point inside, is
a whole span inside, does a span touch it - with one binary search. :class:`SegmentIndex` answers
"which items cover this point" for many items at once, which is how a view finds the few entries that
can allow a request without looking at the others.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

from policies.errors import show

__all__ = ["IntervalSet", "RangeProblem", "SegmentIndex", "parse_ranges"]

# ASCII digits only, and few of them: int() of a few thousand digits raises rather than fails neatly.
_RANGE = re.compile(r"\s*(\d{1,9})\s*(?:-\s*(\d{1,9})\s*)?", re.ASCII)

T = TypeVar("T")


class IntervalSet:
    """A set of integers stored as sorted, disjoint, non-adjacent inclusive intervals."""

    __slots__ = ("_ends", "_starts", "ranges")

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        given = list(ranges)
        if len(given) == 1:
            self.ranges: tuple[tuple[int, int], ...] = (given[0],)
            self._starts = [given[0][0]]
            self._ends = [given[0][1]]
            return
        merged: list[tuple[int, int]] = []
        for low, high in sorted(given):
            # Adjacent intervals merge too: for integers, 0-5 and 6-9 hold every span that 0-9 holds.
            if merged and low <= merged[-1][1] + 1:
                if high > merged[-1][1]:
                    merged[-1] = (merged[-1][0], high)
            else:
                merged.append((low, high))
        self.ranges = tuple(merged)
        self._starts = [low for low, _ in merged]
        self._ends = [high for _, high in merged]

    @classmethod
    def single(cls, low: int, high: int) -> IntervalSet:
        """The set ``low..high`` (the most common field value), built without merging."""
        return cls(((low, high),))

    def __contains__(self, point: int) -> bool:
        index = bisect_right(self._starts, point) - 1
        return index >= 0 and point <= self._ends[index]

    def contains_span(self, low: int, high: int) -> bool:
        """Whether every integer of ``low..high`` is in the set."""
        index = bisect_right(self._starts, low) - 1
        return index >= 0 and high <= self._ends[index]

    def overlaps(self, low: int, high: int) -> bool:
        """Whether any integer of ``low..high`` is in the set."""
        index = bisect_right(self._starts, high) - 1
        return index >= 0 and self._ends[index] >= low

    def covers_values(self, values: Sequence[int], function_code: int) -> bool:
        """Whether every written value is inside (FC 22: the whole lowest..highest result span)."""
        if function_code == 22:
            return self.contains_span(values[0], values[1])
        if len(self.ranges) == 1:
            low, high = self.ranges[0]
            return low <= min(values) and max(values) <= high
        return all(value in self for value in set(values))

    def touches_values(self, values: Sequence[int], function_code: int) -> bool:
        """Whether any written value is inside (FC 22: any value the register may end up with)."""
        if function_code == 22:
            return self.overlaps(values[0], values[1])
        return any(value in self for value in set(values))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IntervalSet) and self.ranges == other.ranges

    def __hash__(self) -> int:
        return hash(self.ranges)

    def __str__(self) -> str:
        return ", ".join(str(low) if low == high else f"{low}-{high}" for low, high in self.ranges)

    def __repr__(self) -> str:
        return f"IntervalSet({self})"


class RangeProblem:
    """A problem with one element of a range field; ``index`` is its list position, or None."""

    __slots__ = ("index", "message")

    def __init__(self, index: int | None, message: str) -> None:
        self.index = index
        self.message = message


def _one_range(item: object, low: int, high: int, out: list[tuple[int, int]]) -> str | None:
    if isinstance(item, bool):
        return f'{show(item)}: expected a number or a range such as "{low}-{high}"'
    if isinstance(item, int):
        if not low <= item <= high:
            return f"{item} is outside {low}..{high}"
        out.append((item, item))
        return None
    if isinstance(item, str):
        match = _RANGE.fullmatch(item)
        if match is None:
            return f'{show(item)}: expected a number or a range "low-high" such as "{low}-{high}"'
        start = int(match[1])
        end = int(match[2]) if match[2] is not None else start
        for number in (start, end):
            if not low <= number <= high:
                return f"{show(item)}: {number} is outside {low}..{high}"
        if start > end:
            return f"{show(item)}: range start {start} is above its end {end}"
        out.append((start, end))
        return None
    return f'{show(item)}: expected a number or a range such as "{low}-{high}"'


def parse_ranges(value: object, low: int, high: int) -> tuple[IntervalSet | None, list[RangeProblem]]:
    """Parse ``7``, ``"0-999"`` or a list of these, each bound inside ``low..high``."""
    if type(value) is str:
        # Most fields are one well-formed range: parse it straight, leave the rest to the careful path.
        match = _RANGE.fullmatch(value)
        if match is not None:
            start = int(match[1])
            end = start if match[2] is None else int(match[2])
            if low <= start <= end <= high:
                return IntervalSet.single(start, end), []
    elif type(value) is int and low <= value <= high:
        return IntervalSet.single(value, value), []
    ranges: list[tuple[int, int]] = []
    problems: list[RangeProblem] = []
    if isinstance(value, list):
        if not value:
            return None, [RangeProblem(None, "the list is empty: name at least one number or range")]
        for index, item in enumerate(value):
            if isinstance(item, list):
                problems.append(RangeProblem(index, f"{show(item)}: lists do not nest here"))
                continue
            message = _one_range(item, low, high, ranges)
            if message is not None:
                problems.append(RangeProblem(index, message))
    else:
        message = _one_range(value, low, high, ranges)
        if message is not None:
            problems.append(RangeProblem(None, message))
    if problems:
        return None, problems
    return IntervalSet(ranges), []


_BELOW_ALL = -(1 << 62)


class SegmentIndex(Generic[T]):
    """Which items cover a point, for items that each cover some intervals.

    The number line is cut at every interval boundary into elementary segments; each segment keeps the
    items that cover all of it, in the order they were given (file order, for the policy). A lookup is
    one bisect, whatever the number of items.
    """

    __slots__ = ("_items", "_starts")

    def __init__(self, covered: Sequence[tuple[int, int, T]]) -> None:
        cuts = {_BELOW_ALL}
        for low, high, _ in covered:
            cuts.add(low)
            cuts.add(high + 1)
        starts = sorted(cuts)
        buckets: list[list[T]] = [[] for _ in starts]
        for low, high, item in covered:
            first = bisect_right(starts, low) - 1
            last = bisect_right(starts, high) - 1
            for segment in range(first, last + 1):
                buckets[segment].append(item)
        # Neighbouring segments often hold the same items: share one tuple between them.
        interned: dict[tuple[int, ...], tuple[T, ...]] = {}
        items: list[tuple[T, ...]] = []
        for bucket in buckets:
            key = tuple(id(item) for item in bucket)
            shared = interned.get(key)
            if shared is None:
                shared = interned[key] = tuple(bucket)
            items.append(shared)
        self._starts = starts
        self._items = items

    def at(self, point: int) -> tuple[T, ...]:
        return self._items[bisect_right(self._starts, point) - 1]

    def segments(self) -> list[tuple[int, tuple[T, ...]]]:
        """Each elementary segment's first point and its items (for building per-segment tables)."""
        return list(zip(self._starts, self._items, strict=True))
