"""What is wrong with a policy file, where, and how it is shown to the person who wrote it.

Every problem found in a file becomes one :class:`PolicyIssue`; loading collects all of them and raises
one :class:`PolicyError`, so ``ztgate policy check`` can list every mistake in a single run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from policies import toml

__all__ = [
    "FieldPath",
    "PolicyError",
    "PolicyIssue",
    "format_path",
    "quote",
    "show",
    "syntax_issue",
]

# A field's place in the document: keys and array indices, e.g. ("rules", 1, "modbus", 0, "address").
FieldPath = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class PolicyIssue:
    """One problem in a policy file. ``line`` and ``column`` are 1-based; ``path`` names the field."""

    source: str
    line: int | None
    column: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.source
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        if self.path:
            return f"{where}: {self.path}: {self.message}"
        return f"{where}: {self.message}"


class PolicyError(Exception):
    """A policy file was refused. ``issues`` holds every problem found, in file order."""

    def __init__(self, issues: Iterable[PolicyIssue]) -> None:
        # Issues without a line (file-level problems) go last: the rest read top to bottom.
        self.issues: list[PolicyIssue] = sorted(
            issues, key=lambda issue: math.inf if issue.line is None else issue.line
        )
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")


def format_path(path: Sequence[str | int]) -> str:
    """``("rules", 1, "modbus", 0, "address")`` -> ``rules[1].modbus[0].address``.

    Keys that are not bare TOML keys are quoted as TOML would (``assets."line1.press-3"``), which also
    keeps long or hostile keys from reaching a terminal as they are.
    """
    out: list[str] = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        else:
            key = part if _BARE_KEY.fullmatch(part) else quote(part, 40)
            out.append(f".{key}" if out else key)
    return "".join(out)


def quote(text: str, limit: int = 80) -> str:
    """A string as TOML would spell it, shortened and safe to print to a terminal."""
    shown = text if len(text) <= limit else text[:limit] + "..."
    escaped = shown.replace("\\", "\\\\").replace('"', '\\"')
    if not escaped.isprintable():
        escaped = "".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in escaped)
    return f'"{escaped}"'


def show(value: object, limit: int = 80) -> str:
    """Any parsed TOML value in TOML spelling, for "quote the bad value" messages."""
    text = _show(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show(value: object) -> str:
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_show(item) for item in value[:10]) + (", ...]" if len(value) > 10 else "]")
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = list(value.items())[:6]
        body = ", ".join(f"{key} = {_show(item)}" for key, item in items)
        return "{ " + body + (", ... }" if len(value) > 6 else " }")
    return str(value)


_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_TOML_END = re.compile(r"\s*\(at end of document\)$")


def syntax_issue(source: str, text: str, error: toml.TOMLDecodeError) -> PolicyIssue:
    """Turn the TOML parser's message (which carries the position only in its text) into an issue."""
    message = str(error)
    line: int | None = None
    column: int | None = None
    match = _TOML_POSITION.search(message)
    if match is not None:
        line, column = int(match[1]), int(match[2])
        message = message[: match.start()]
    else:
        match = _TOML_END.search(message)
        if match is not None:
            line = text.count("\n") + 1
            message = message[: match.start()]
    return PolicyIssue(source, line, column, "", f"TOML syntax: {message}")
