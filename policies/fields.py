"""Checking single fields of a parsed TOML document, collecting problems instead of stopping.

Each check returns the validated value, or None after recording a problem under the field's path; the
caller carries on with the next field, so one run reports every mistake in a file.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable
from typing import TypeVar

from policies.errors import FieldPath, quote, show
from policies.ranges import IntervalSet, parse_ranges

__all__ = ["FieldChecker", "expected"]

T = TypeVar("T")


def expected(value: object, what: str) -> str:
    return f"{show(value)}: expected {what}"


def type_name(value: object) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a float", list: "an array"}
    return names.get(type(value), "a table" if isinstance(value, dict) else type(value).__name__)


class FieldChecker:
    """Records ``(path, message)`` problems; subclasses add checks for their document's structure."""

    def __init__(self) -> None:
        self.problems: list[tuple[FieldPath, str]] = []
        self._ranges_memo: dict[tuple[tuple[int, int], object], IntervalSet] = {}

    def error(self, path: FieldPath, message: str) -> None:
        self.problems.append((path, message))

    # ------------------------------------------------------------------------------ generic checks

    def keys(self, table: dict[str, object], path: FieldPath, allowed: tuple[str, ...]) -> None:
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = (
                    f'; did you mean "{close[0]}"?' if close else f" (expected one of: {', '.join(allowed)})"
                )
                self.error((*path, key), f"unknown key {quote(key)}{hint}")

    def table(self, value: object, path: FieldPath) -> dict[str, object] | None:
        if isinstance(value, dict):
            return value
        self.error(path, f"{show(value)}: expected a table, got {type_name(value)}")
        return None

    def string(self, value: object, path: FieldPath) -> str | None:
        if isinstance(value, str):
            return value
        self.error(path, f"{show(value)}: expected a string, got {type_name(value)}")
        return None

    def choice(self, value: object, path: FieldPath, choices: Iterable[str]) -> str | None:
        text = self.string(value, path)
        if text is None:
            return None
        options = tuple(choices)
        if text not in options:
            self.error(path, f"{quote(text)} is not one of: {', '.join(options)}")
            return None
        return text

    def integer(self, value: object, path: FieldPath, low: int, high: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(path, expected(value, f"an integer in {low}..{high}"))
            return None
        if not low <= value <= high:
            self.error(path, f"{value} is outside {low}..{high}")
            return None
        return value

    def seconds(self, value: object, path: FieldPath, high: float) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(path, expected(value, f"a number of seconds above 0 and at most {high:g}"))
            return None
        if not (math.isfinite(value) and 0 < value <= high):
            self.error(path, f"{show(value)} is outside (0, {high:g}] seconds")
            return None
        return float(value)

    def string_list(self, value: object, path: FieldPath, what: str) -> list[tuple[int, str]]:
        """The strings of a non-empty array, each with its index; wrong elements are reported."""
        if not isinstance(value, list):
            self.error(path, expected(value, f"an array of {what}"))
            return []
        if not value:
            self.error(path, f"the array is empty: name at least one of {what}")
            return []
        out: list[tuple[int, str]] = []
        for index, item in enumerate(value):
            if isinstance(item, str):
                out.append((index, item))
            else:
                self.error((*path, index), expected(item, f"a string ({what})"))
        return out

    def ranges(
        self, value: object, parent: FieldPath, key: str | int, bounds: tuple[int, int]
    ) -> IntervalSet | None:
        """The range field ``parent.key``; the path is only built when there is a problem to report."""
        memo_key = (bounds, value if type(value) is str else repr(value))
        known = self._ranges_memo.get(memo_key)
        if known is not None:
            return known
        parsed, problems = parse_ranges(value, *bounds)
        for problem in problems:
            path = (*parent, key)
            self.error(path if problem.index is None else (*path, problem.index), problem.message)
        if parsed is not None:
            self._ranges_memo[memo_key] = parsed
        return parsed

    def optional(
        self,
        table: dict[str, object],
        key: str,
        path: FieldPath,
        check: Callable[[object, FieldPath], T | None],
        default: T,
    ) -> T | None:
        if key not in table:
            return default
        return check(table[key], (*path, key))
