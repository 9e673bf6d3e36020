"""Logix tag patterns (``Line1.*``, ``Recipe[0..9]``, ``Program:Main.*``, ``Motor.Speed``, ``*``) and
the tags requests name (``Program:Main.Recipe[3,1].Temp``), compared part by part, ignoring case.

A tag is a sequence of parts, each a name with an optional array index (one number per dimension).
A pattern is the same, where an index is a set of ranges per dimension, optionally ending in ``.*``.
What a pattern stands for is data: ``Motor`` is the whole tag ``Motor`` - every element and member of
it - and ``Motor.*`` is every member of ``Motor`` but not ``Motor`` as a whole. A request stands for
the data it reads or writes: the part it names, and from its last index on, ``element_count``
elements of the last dimension. So:

- :meth:`TagPattern.covers` (allow entries): the request's data lies inside the pattern's;
- :meth:`TagPattern.touches` (deny entries): the request's data and the pattern's share something
  (a request for ``Line1`` as a whole touches ``Line1.Speed``).

The controller does not tell the gateway how big an array is; docs/policy.md spells out what follows
from that (a multi-element request on a multi-dimensional array covers no index range).
"""

from __future__ import annotations

import re
from functools import lru_cache

from policies.errors import quote
from policies.ranges import IntervalSet

__all__ = [
    "MAX_INDEX",
    "REQUEST_TAG_CACHE",
    "RequestTag",
    "TagPattern",
    "parse_request_tag",
    "parse_tag_pattern",
]

MAX_INDEX = 0xFFFF_FFFF  # member ids (array indices) are at most 32 bits on the wire
REQUEST_TAG_CACHE = 4096
_MAX_DIMENSIONS = 3  # Logix arrays have one to three dimensions
# The names the codec accepts in a symbolic segment: letters, digits, "_" and ":" (program scope
# "Program:Main", module tags "Local:1:I").
_PART = re.compile(r"([A-Za-z0-9_:]+)(?:\[([^\]]*)\])?", re.ASCII)
_INDEX_RANGE = re.compile(r"\s*(\d{1,10})\s*(?:\.\.\s*(\d{1,10})\s*)?", re.ASCII)

# A request's tag: ((name in lower case, index or None), ...).
RequestTag = tuple[tuple[str, tuple[int, ...] | None], ...]
_Dims = tuple[IntervalSet, ...]


@lru_cache(maxsize=REQUEST_TAG_CACHE)
def parse_request_tag(text: str) -> RequestTag:
    """The parts of a tag as the codec writes it (``A.B[1,2].C``); names in lower case, because
    Logix compares tag names without regard to case. Cached (bounded, shared by every view): sessions
    name the same tags over and over."""
    parts: list[tuple[str, tuple[int, ...] | None]] = []
    for part in text.lower().split("."):
        name, bracket, rest = part.partition("[")
        index = tuple(int(i) for i in rest[:-1].split(",")) if bracket else None
        parts.append((name, index))
    return tuple(parts)


class TagPattern:
    """One compiled pattern. ``parts`` are (lower-case name, index ranges per dimension or None)."""

    __slots__ = ("first", "parts", "text", "wildcard")

    def __init__(self, text: str, parts: tuple[tuple[str, _Dims | None], ...], wildcard: bool) -> None:
        self.text = text
        self.parts = parts
        self.wildcard = wildcard
        self.first = parts[0][0] if parts else None  # None: "*", any tag

    def covers(self, tag: RequestTag, count: int) -> bool:
        """Whether every element a request of ``count`` elements at ``tag`` reaches is inside."""
        parts = self.parts
        depth = len(parts)
        length = len(tag)
        if length < depth or (self.wildcard and length == depth):
            return False
        last = length - 1
        for level in range(depth):
            name, dims = parts[level]
            have, index = tag[level]
            if have != name:
                return False
            if dims is None:
                continue
            if index is None:
                if level != last:
                    return False  # an array in the middle of a path needs its index
                index = (0,) * len(dims)  # Logix reads an array named without an index from element 0
            if len(index) != len(dims):
                return False
            span = count if level == last else 1
            if span > 1 and len(dims) > 1:
                return False  # runs on in row-major order over dimensions the gateway does not know
            for dim in range(len(dims) - 1):
                if index[dim] not in dims[dim]:
                    return False
            if not dims[-1].contains_span(index[-1], index[-1] + span - 1):
                return False
        return True

    def touches(self, tag: RequestTag, count: int) -> bool:
        """Whether a request of ``count`` elements at ``tag`` reaches any element inside."""
        parts = self.parts
        last = len(tag) - 1
        for level in range(min(len(parts), len(tag))):
            name, dims = parts[level]
            have, index = tag[level]
            if have != name:
                return False
            if dims is None:
                continue
            if index is None:
                if level != last:
                    continue  # the device refuses such a path; a deny entry matches it anyway
                index = (0,) * len(dims)
            span = count if level == last else 1
            if len(index) != len(dims) or (span > 1 and len(dims) > 1):
                continue  # cannot tell which elements it reaches: it may reach these
            for dim in range(len(dims) - 1):
                if index[dim] not in dims[dim]:
                    return False
            if not dims[-1].overlaps(index[-1], index[-1] + span - 1):
                return False
        # The names agree on every level both have: one's data contains the other's.
        return True

    def includes(self, other: TagPattern) -> bool:
        """Whether every tag ``other`` stands for is inside this pattern (an operation a vendor asks
        for, inside what ``[vendor_access]`` lets be asked for). False when that cannot be told: an
        index range against a whole array, names that differ."""
        if self.first is None:
            return True
        mine, theirs = self.parts, other.parts
        if other.first is None or len(theirs) < len(mine):
            return False
        if self.wildcard and len(theirs) == len(mine) and not other.wildcard:
            return False  # "Motor.*" is every member of Motor, not Motor as a whole
        for (name, dims), (have, index) in zip(mine, theirs, strict=False):
            if name != have:
                return False
            if dims is None:
                continue
            if index is None or len(index) != len(dims):
                return False
            for allowed, asked in zip(dims, index, strict=True):
                if not all(allowed.contains_span(low, high) for low, high in asked.ranges):
                    return False
        return True

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"TagPattern({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TagPattern) and self.text.lower() == other.text.lower()

    def __hash__(self) -> int:
        return hash(self.text.lower())


_PATTERN_HELP = 'e.g. "Line1.*", "Recipe[0..9]", "Program:Main.*", "Motor.Speed" or "*"'


def parse_tag_pattern(text: str) -> tuple[TagPattern | None, str | None]:
    """A tag pattern, or the reason it is not one."""
    stripped = text.strip()
    if stripped == "*":
        return TagPattern("*", (), True), None
    if not stripped:
        return None, f"an empty tag pattern; {_PATTERN_HELP}"
    pieces = _split_parts(stripped)
    wildcard = pieces[-1] == "*"
    if wildcard:
        pieces.pop()
    parts: list[tuple[str, _Dims | None]] = []
    for piece in pieces:
        if "*" in piece:
            return None, f'{quote(text)}: "*" stands only for a whole last part ("Line1.*") or alone'
        match = _PART.fullmatch(piece)
        if match is None:
            if not piece:
                return None, f"{quote(text)}: an empty part between dots"
            return None, (
                f'{quote(text)}: {quote(piece)} is not a tag name (letters, digits, "_" and ":")'
                f" with an optional index such as [3] or [0..9]; {_PATTERN_HELP}"
            )
        name, index_text = match[1], match[2]
        dims: _Dims | None = None
        if index_text is not None:
            dims, problem = _parse_index(index_text)
            if problem is not None:
                return None, f"{quote(text)}: [{index_text}]: {problem}"
        parts.append((name.lower(), dims))
    return TagPattern(stripped, tuple(parts), wildcard), None


def _split_parts(text: str) -> list[str]:
    """Split at the dots between parts, not those of an index range (``Recipe[0..9].Temp``)."""
    pieces: list[str] = []
    start = depth = 0
    for position, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "." and depth == 0:
            pieces.append(text[start:position])
            start = position + 1
    pieces.append(text[start:])
    return pieces


def _parse_index(text: str) -> tuple[_Dims | None, str | None]:
    dims: list[IntervalSet] = []
    items = text.split(",")
    if len(items) > _MAX_DIMENSIONS:
        return None, f"more than {_MAX_DIMENSIONS} dimensions"
    for item in items:
        match = _INDEX_RANGE.fullmatch(item)
        if match is None:
            return None, 'expected an index or a range "low..high" per dimension, e.g. [0..9] or [2,0..3]'
        low = int(match[1])
        high = low if match[2] is None else int(match[2])
        if high > MAX_INDEX:
            return None, f"{high} is outside 0..{MAX_INDEX}"
        if low > high:
            return None, f"range start {low} is above its end {high}"
        dims.append(IntervalSet.single(low, high))
    return tuple(dims), None
