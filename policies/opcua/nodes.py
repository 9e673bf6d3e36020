"""OPC UA node ids in policies: namespaces by URI, identifier patterns, and (object, method) pairs.

Namespace *indices* differ between servers (and between restarts of some), so rules name a namespace by
its URI; the gateway passes the device's namespace array and an operation's ``NamespaceIndex`` is looked
up in it. Index 0 is the standard address space on every server (Part 3, 8.2.2). An index the array does
not have resolves to nothing, and no pattern matches it.

Identifier patterns follow the four identifier types of a NodeId, written as Part 6 writes them:

- ``"i=2253"``, ``"i=1000-1999"`` or a TOML integer: numeric ids, a number or inclusive ranges;
- ``"s=Plant.Line1.*"`` or ``"Plant.Line1.*"``: string ids, where ``*`` stands for any run of characters
  (dots included) and everything else is literal and case-sensitive;
- ``"g=09087e75-8e5e-499b-954f-f2a9603db28a"``: a GUID, exactly;
- ``"b=M/RbKBsRVkePCePcx24oRA=="``: an opaque (ByteString) id in base64, exactly.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Sequence

from policies.errors import quote, show
from policies.ranges import IntervalSet, parse_ranges

__all__ = [
    "NUMERIC_BOUNDS",
    "UA_NAMESPACE",
    "IdPattern",
    "MethodPair",
    "NodePattern",
    "identifier_text",
    "node_text",
    "parse_id",
    "parse_namespace",
    "resolve",
    "split_expanded",
]

UA_NAMESPACE = "http://opcfoundation.org/UA/"
NUMERIC_BOUNDS = (0, 0xFFFF_FFFF)
_MAX_ID = 4096  # characters of a string id pattern; servers keep ids far shorter
_PREFIX = re.compile(r"([isgb])=", re.ASCII)
_EXPANDED = re.compile(r"nsu=([^;]*);([isgb]=.*)", re.ASCII | re.DOTALL)
_INDEXED = re.compile(r"ns=\d+;", re.ASCII)
_ID_HELP = (
    'expected a node id pattern: "s=Plant.Line1.*" (or "Plant.Line1.*"), "i=2253", "i=1000-1999",'
    ' a number, "g=<GUID>" or "b=<base64>"'
)


def resolve(index: int, namespaces: Sequence[str]) -> str | None:
    """The URI of a namespace index in the device's namespace array; None when the array lacks it."""
    if index == 0:
        return UA_NAMESPACE
    if 0 < index < len(namespaces):
        return namespaces[index]
    return None


class IdPattern:
    """Identifiers of one type: ``kind`` is ``i`` (numeric), ``s`` (string), ``g`` (GUID) or ``b``
    (opaque); ``text`` is the pattern as the rule wrote it, after the ``x=`` prefix."""

    __slots__ = ("exact", "kind", "numbers", "prefix", "regex", "text")

    def __init__(self, kind: str, text: str, value: object = None) -> None:
        self.kind = kind
        self.text = text
        self.numbers: IntervalSet | None = value if isinstance(value, IntervalSet) else None
        self.exact: object = None
        self.prefix: str | None = None
        self.regex: re.Pattern[str] | None = None
        if kind == "s":
            stars = text.count("*")
            if stars == 0:
                self.exact = text
            elif stars == 1 and text.endswith("*"):
                self.prefix = text[:-1]  # the common "Plant.Line1.*": a startswith, no regex
            else:
                body = ".*".join(re.escape(part) for part in text.split("*"))
                self.regex = re.compile(body, re.DOTALL)
        elif kind in ("g", "b"):
            self.exact = value

    def matches(self, identifier: object) -> bool:
        """Whether an operation's identifier (int, str, UUID or bytes, as asyncua decodes them)
        is one of this pattern's."""
        kind = self.kind
        if kind == "s":
            if type(identifier) is not str:
                return False
            if self.prefix is not None:
                return identifier.startswith(self.prefix)
            if self.regex is not None:
                return self.regex.fullmatch(identifier) is not None
            return identifier == self.exact
        if kind == "i":
            assert self.numbers is not None
            return type(identifier) is int and identifier in self.numbers
        if kind == "g":
            return isinstance(identifier, uuid.UUID) and identifier == self.exact
        return type(identifier) is bytes and identifier == self.exact

    def includes(self, other: IdPattern) -> bool:
        """Whether every identifier ``other`` matches, this pattern matches too. A string pattern with
        ``*`` inside another only by a shared prefix, or when both are the same."""
        if self.kind != other.kind:
            return False
        if self.kind == "i":
            assert self.numbers is not None and other.numbers is not None
            return all(self.numbers.contains_span(low, high) for low, high in other.numbers.ranges)
        if self.kind != "s":
            return bool(self.exact == other.exact)
        if "*" not in other.text:
            return self.matches(other.text)
        if self.prefix is not None:
            # Every id ``other`` matches starts with its text before the first "*".
            return other.text.startswith(self.prefix)
        return self.text == other.text

    def __str__(self) -> str:
        return f"{self.kind}={self.text}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdPattern) and (self.kind, self.text) == (other.kind, other.text)

    def __hash__(self) -> int:
        return hash((self.kind, self.text))


class NodePattern:
    """Nodes of one namespace, by URI: all of them (``ids`` None) or those an identifier pattern
    matches."""

    __slots__ = ("ids", "uri")

    def __init__(self, uri: str, ids: IdPattern | None) -> None:
        self.uri = uri
        self.ids = ids

    def matches(self, uri: str, identifier: object) -> bool:
        return uri == self.uri and (self.ids is None or self.ids.matches(identifier))

    def includes(self, other: NodePattern) -> bool:
        """Whether every node ``other`` matches, this pattern matches too."""
        if self.uri != other.uri:
            return False
        return self.ids is None or (other.ids is not None and self.ids.includes(other.ids))

    def __str__(self) -> str:
        if self.ids is None:
            return "every node of " + ("namespace 0" if self.uri == UA_NAMESPACE else self.uri)
        if self.uri == UA_NAMESPACE:
            return str(self.ids)
        return f"nsu={self.uri};{self.ids}"

    def __repr__(self) -> str:
        return f"NodePattern({self})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NodePattern) and (self.uri, self.ids) == (other.uri, other.ids)

    def __hash__(self) -> int:
        return hash((self.uri, self.ids))


class MethodPair:
    """A Call of ``method`` on ``object``: both ids are checked, because a server need not check that
    the object is the method's parent (asyncua's does not, and runs the method on whatever object the
    client names)."""

    __slots__ = ("methods", "objects")

    def __init__(self, objects: tuple[NodePattern, ...], methods: tuple[NodePattern, ...]) -> None:
        self.objects = objects
        self.methods = methods

    def __str__(self) -> str:
        objects = ", ".join(str(p) for p in self.objects)
        methods = ", ".join(str(p) for p in self.methods)
        return f"object {objects} method {methods}"

    def __repr__(self) -> str:
        return f"MethodPair({self})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MethodPair) and (self.objects, self.methods) == (
            other.objects,
            other.methods,
        )

    def __hash__(self) -> int:
        return hash((self.objects, self.methods))


def parse_namespace(value: object) -> tuple[str | None, str | None]:
    """``(uri, None)`` from ``0`` or a namespace URI, else ``(None, problem)``."""
    if isinstance(value, bool):
        return None, f"{show(value)}: expected a namespace URI or 0"
    if isinstance(value, int):
        if value == 0:
            return UA_NAMESPACE, None
        return None, (
            f"{value}: namespace indices differ between servers (and may change when one restarts):"
            ' name the namespace by its URI, e.g. namespace = "urn:plant1:line1"; 0 is the standard'
            " address space"
        )
    if not isinstance(value, str):
        return None, f"{show(value)}: expected a namespace URI or 0"
    if not value or len(value) > _MAX_ID or not value.isprintable() or value != value.strip():
        return None, f"{quote(value)}: expected a namespace URI (printable, no surrounding spaces)"
    if value.isdigit():
        return None, f"{quote(value)}: a namespace index in a string; name the namespace by its URI"
    return value, None


def split_expanded(text: str) -> tuple[str | None, str, str | None]:
    """``nsu=URI;s=...`` -> ``(URI, "s=...", None)``; other text -> ``(None, text, None)``; an indexed
    ``ns=2;s=...`` -> a problem."""
    if _INDEXED.match(text):
        return (
            None,
            text,
            (
                f"{quote(text)}: namespace indices differ between servers; write nsu=<namespace URI>;"
                f"{text.split(';', 1)[1][:40]} or give the entry a namespace"
            ),
        )
    match = _EXPANDED.fullmatch(text)
    if match is None:
        if text.startswith("nsu="):
            return None, text, f'{quote(text)}: expected "nsu=<namespace URI>;s=<id pattern>" (or i=, g=, b=)'
        return None, text, None
    return match[1], match[2], None


def parse_id(value: object) -> tuple[IdPattern | None, str | None]:
    """An identifier pattern from a TOML integer or a string in the forms above."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None, f"{show(value)}: {_ID_HELP}"
    if isinstance(value, int):
        if not NUMERIC_BOUNDS[0] <= value <= NUMERIC_BOUNDS[1]:
            return None, f"{value}: numeric ids are 0..{NUMERIC_BOUNDS[1]}"
        return IdPattern("i", str(value), IntervalSet.single(value, value)), None
    match = _PREFIX.match(value)
    kind, body = (match[1], value[2:]) if match else ("s", value)
    if kind == "s":
        if not body:
            return None, f"{quote(value)}: an empty string id; {_ID_HELP}"
        if len(body) > _MAX_ID:
            return None, f"{quote(value)}: a string id pattern of more than {_MAX_ID} characters"
        return IdPattern("s", body), None
    if kind == "i":
        if body.strip() == "*":
            return IdPattern("i", "*", IntervalSet.single(*NUMERIC_BOUNDS)), None
        numbers, problems = parse_ranges(body, *NUMERIC_BOUNDS)
        if numbers is None:
            detail = problems[0].message if problems else _ID_HELP
            return None, f"{quote(value)}: {detail}"
        return IdPattern("i", body, numbers), None
    if kind == "g":
        try:
            guid = uuid.UUID(body)
        except ValueError:
            return None, f"{quote(value)}: not a GUID (expected g=09087e75-8e5e-499b-954f-f2a9603db28a)"
        return IdPattern("g", str(guid), guid), None
    try:
        opaque = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return None, f"{quote(value)}: not base64 (an opaque id is written b=<base64>)"
    if not opaque:
        return None, f"{quote(value)}: an empty opaque id"
    return IdPattern("b", body, opaque), None


def identifier_text(identifier: object) -> str:
    """An operation's identifier as Part 6 writes it (``s=...``), shortened and safe to print: ids come
    from clients."""
    if type(identifier) is int:
        return f"i={identifier}"
    if isinstance(identifier, uuid.UUID):
        return f"g={identifier}"
    if isinstance(identifier, bytes):
        return (
            "b=" + base64.b64encode(identifier[:48]).decode("ascii") + ("..." if len(identifier) > 48 else "")
        )
    text = str(identifier)
    return "s=" + quote(text, 80)[1:-1]


def node_text(uri: str | None, index: int, identifier: object) -> str:
    """A node as rules and tools write it: ``i=85`` in namespace 0, ``nsu=URI;s=...`` elsewhere."""
    ident = identifier_text(identifier)
    if uri is None:
        return f"ns={index};{ident} (namespace index {index} is not in the device's namespace array)"
    if uri == UA_NAMESPACE:
        return ident
    return f"nsu={quote(uri, 80)[1:-1]};{ident}"
