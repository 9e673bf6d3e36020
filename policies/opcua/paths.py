"""Browse-path prefixes: ``browse_path = "/Objects/Plant/Line1"`` names that node and everything below it.

A browse path is the chain of browse names from the Root folder down to a node. Browse names are
qualified names (a namespace and a name); since namespace indices differ between servers, a rule writes a
segment as a plain name, which matches that name in any namespace, or as ``{URI}Name`` (Clark notation),
which matches it in that namespace only. ``2:Plant``, the index form of Part 4's relative-path text, is
refused. ``&`` takes the next character literally, as in Part 4 (A.2): ``Temp&/Pressure`` is one name.

The policy cannot know a node's path by itself: the gateway resolves it and passes it with the operation,
one browse name per element, from below the Root down to the node, each as :func:`browse_name` writes it
(``"Objects"``, ``"{urn:plant}Plant"``). An operation whose path the gateway could not resolve (None)
is inside no prefix, and touches every one a deny entry names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from policies.errors import quote, show
from policies.opcua.nodes import UA_NAMESPACE, resolve

__all__ = ["BrowsePathPrefix", "browse_name", "browse_path_of", "parse_browse_path", "split_browse_name"]

_INDEX_FORM = re.compile(r"\d+:", re.ASCII)
_MAX_PATH = 4096

Segment = tuple[str | None, str]  # (namespace URI, or None for any namespace; name)


def browse_name(uri: str, name: str) -> str:
    """One element of a path as the gateway passes it: ``Name`` in namespace 0, ``{URI}Name`` elsewhere."""
    if uri == UA_NAMESPACE and not name.startswith("{"):
        return name
    return "{" + uri + "}" + name


def browse_path_of(names: Sequence[Any], namespaces: Sequence[str]) -> tuple[str, ...] | None:
    """The path to pass for a node, from its browse names (asyncua ``ua.QualifiedName``, from below
    the Root down to the node) and the device's namespace array; None if a namespace index is not in
    the array (then no browse-path entry allows the operation)."""
    out: list[str] = []
    for qualified in names:
        uri = resolve(qualified.NamespaceIndex, namespaces)
        if uri is None or not isinstance(qualified.Name, str):
            return None
        out.append(browse_name(uri, qualified.Name))
    return tuple(out)


def split_browse_name(text: str) -> Segment:
    """``{URI}Name`` -> ``(URI, Name)``; ``Name`` -> ``(UA_NAMESPACE, Name)``. A URI holds no ``}``
    (RFC 3986), so the first one ends it."""
    if text.startswith("{"):
        end = text.find("}")
        if end > 0:
            return text[1:end], text[end + 1 :]
    return UA_NAMESPACE, text


class BrowsePathPrefix:
    """A node and everything below it, by browse path."""

    __slots__ = ("segments", "text")

    def __init__(self, text: str, segments: tuple[Segment, ...]) -> None:
        self.text = text
        self.segments = segments

    def covers(self, path: Sequence[str]) -> bool:
        """Whether a node at ``path`` is this prefix's node or below it."""
        segments = self.segments
        if len(path) < len(segments):
            return False
        for (uri, name), given in zip(segments, path, strict=False):
            if given == name and (uri is None or uri == UA_NAMESPACE) and not given.startswith("{"):
                continue  # the common case: a name in namespace 0, compared without splitting
            given_uri, given_name = split_browse_name(given)
            if given_name != name or (uri is not None and uri != given_uri):
                return False
        return True

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"BrowsePathPrefix({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BrowsePathPrefix) and self.segments == other.segments

    def __hash__(self) -> int:
        return hash(self.segments)


_HELP = 'expected a browse path from the Root such as "/Objects/Plant/Line1"'


def parse_browse_path(value: object) -> tuple[BrowsePathPrefix | None, str | None]:
    """``(prefix, None)`` from a rule's text, else ``(None, problem)``."""
    if not isinstance(value, str):
        return None, f"{show(value)}: {_HELP}"
    if not value.startswith("/"):
        return None, f"{quote(value)}: {_HELP} (it starts with /)"
    if len(value) > _MAX_PATH:
        return None, f"{quote(value)}: a browse path of more than {_MAX_PATH} characters"
    if value == "/":
        return BrowsePathPrefix(value, ()), None
    segments: list[Segment] = []
    for raw in _split(value[1:]):
        if raw is None:
            return None, f"{quote(value)}: ends in a lone & (write && for the character &)"
        if not raw:
            return None, f"{quote(value)}: an empty segment (// or a trailing /)"
        segment, problem = _segment(raw)
        if problem is not None:
            return None, f"{quote(value)}: {problem}"
        assert segment is not None
        segments.append(segment)
    return BrowsePathPrefix(value, tuple(segments)), None


def _split(text: str) -> list[str | None]:
    """Raw segments at the unescaped slashes, escapes kept (None for a dangling ``&``)."""
    out: list[str | None] = []
    current: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "&":
            if index + 1 == len(text):
                return [None]
            current.append(text[index : index + 2])
            index += 2
            continue
        if char == "/":
            out.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    out.append("".join(current))
    return out


def _unescape(raw: str) -> str:
    return re.sub(r"&(.)", r"\1", raw, flags=re.DOTALL)


def _segment(raw: str) -> tuple[Segment | None, str | None]:
    if _INDEX_FORM.match(raw):
        return None, (
            f"segment {quote(raw)}: namespace indices differ between servers; write the plain name"
            " (any namespace) or {URI}Name"
        )
    uri: str | None = None
    body = raw
    if raw.startswith("{"):
        end = raw.find("}")
        if end < 0:
            return None, f"segment {quote(raw)}: a {{ without its }} (write &{{ for the character {{)"
        uri = raw[1:end]
        if not uri or "{" in uri or uri.isdigit():
            return None, f"segment {quote(raw)}: expected {{namespace URI}}Name"
        body = raw[end + 1 :]
    name = _unescape(body)
    if not name:
        return None, f"segment {quote(raw)}: no name"
    if not name.isprintable():
        return None, f"segment {quote(raw)}: names are printable text"
    return (uri, name), None
