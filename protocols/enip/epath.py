"""EPATH: the segments that address a CIP object, a Logix tag, a route or a connection (Vol 1 Appendix C).

A path is parsed into typed segments and encodes back to the same bytes: a logical segment keeps the
8/16/32-bit format it arrived in, because devices may care. Message router requests use the padded form
(every segment a whole number of 16-bit words); the packed form drops the pad bytes. Segment types the
gateway has no use for (plain symbolic 0x6n, data types, extended logical, service id) are refused rather
than passed through unread.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum

from protocols.enip.errors import CipProtocolError
from protocols.enip.spec import DEFAULT_LIMITS, CipLimits, ClassCode, GeneralStatus

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_KEY = struct.Struct("<BHHHBB")  # key format, vendor, device type, product code, major, minor
_PATH_SEGMENT_ERROR = GeneralStatus.PATH_SEGMENT_ERROR


class LogicalType(IntEnum):
    """Bits 4-2 of a logical segment's first byte."""

    CLASS_ID = 0
    INSTANCE_ID = 1
    MEMBER_ID = 2
    CONNECTION_POINT = 3
    ATTRIBUTE_ID = 4


# Vol 1 C-1.4.2: class and attribute ids come in 8 and 16 bits only.
_LOGICAL_SIZES: dict[LogicalType, tuple[int, ...]] = {
    LogicalType.CLASS_ID: (1, 2),
    LogicalType.INSTANCE_ID: (1, 2, 4),
    LogicalType.MEMBER_ID: (1, 2, 4),
    LogicalType.CONNECTION_POINT: (1, 2, 4),
    LogicalType.ATTRIBUTE_ID: (1, 2),
}
_FORMAT_OF_SIZE = {1: 0, 2: 1, 4: 2}
_SIZE_OF_FORMAT = {0: 1, 1: 2, 2: 4}
_VALUE_FORMATS = {1: struct.Struct("<B"), 2: _U16, 4: _U32}
# Logix tag names, program scopes ("Program:Main") and module tags ("Local:1:I"). Nothing that could
# read as a member separator or an index once the segments are joined into tag text.
_SYMBOL = re.compile(r"[A-Za-z0-9_:]+")


def _bad(message: str) -> CipProtocolError:
    return CipProtocolError(message, general_status=_PATH_SEGMENT_ERROR)


@dataclass(frozen=True, slots=True)
class PortSegment:
    """A hop of a route: leave through ``port`` towards ``link`` (a node number or an IP address text)."""

    port: int
    link: bytes

    @property
    def link_address(self) -> int | str:
        if len(self.link) == 1:
            return self.link[0]
        return self.link.decode("latin-1")

    def __str__(self) -> str:
        return f"{self.port}/{self.link_address}"


@dataclass(frozen=True, slots=True)
class LogicalSegment:
    """A class, instance, member, connection point or attribute id; ``size`` is 1, 2 or 4 bytes on the
    wire (0 picks the smallest that holds the value)."""

    logical_type: LogicalType
    value: int
    size: int = 0

    def __post_init__(self) -> None:
        if self.size == 0:
            size = 1 if self.value <= 0xFF else 2 if self.value <= 0xFFFF else 4
            object.__setattr__(self, "size", size)


@dataclass(frozen=True, slots=True)
class SymbolicSegment:
    """An ANSI extended symbolic segment (0x91): one part of a Logix tag name."""

    name: str


@dataclass(frozen=True, slots=True)
class ElectronicKeySegment:
    """Key format 4 (Vol 1 C-1.4.2.1): which device a Forward Open expects to find."""

    vendor_id: int
    device_type: int
    product_code: int
    major_revision: int
    minor_revision: int
    compatibility: bool = False


@dataclass(frozen=True, slots=True)
class NetworkSegment:
    """Network parameters in connection paths (0x41-0x43 carry one byte, 0x50/0x51/0x5F count words)."""

    kind: int
    data: bytes


@dataclass(frozen=True, slots=True)
class DataSegment:
    """A simple data segment (0x80): configuration data at the end of a Forward Open connection path."""

    data: bytes


Segment = PortSegment | LogicalSegment | SymbolicSegment | ElectronicKeySegment | NetworkSegment | DataSegment


@dataclass(frozen=True, slots=True)
class EPath:
    """A parsed path and what it addresses."""

    segments: tuple[Segment, ...] = ()

    def encode(self, *, padded: bool = True) -> bytes:
        return b"".join(_encode_segment(segment, padded) for segment in self.segments)

    def _logical(self, kind: LogicalType) -> int | None:
        for segment in self.segments:
            if isinstance(segment, LogicalSegment) and segment.logical_type == kind:
                return segment.value
        return None

    @property
    def class_id(self) -> int | None:
        return self._logical(LogicalType.CLASS_ID)

    @property
    def instance_id(self) -> int | None:
        return self._logical(LogicalType.INSTANCE_ID)

    @property
    def attribute_id(self) -> int | None:
        return self._logical(LogicalType.ATTRIBUTE_ID)

    @property
    def connection_points(self) -> tuple[int, ...]:
        return tuple(
            s.value
            for s in self.segments
            if isinstance(s, LogicalSegment) and s.logical_type == LogicalType.CONNECTION_POINT
        )

    @property
    def symbolic(self) -> bool:
        """The path names a Logix tag by its name (and so addresses the Symbol object, class 0x6B)."""
        return (
            bool(self.segments)
            and isinstance(self.segments[0], SymbolicSegment)
            and not any(_is_logical(s, LogicalType.CLASS_ID) for s in self.segments)
        )

    @property
    def scope(self) -> str | None:
        """``Program:Main`` for a path into a program's own Symbol object (``Program:Main``, class 0x6B,
        instance...): how clients list a program's tags (0x55) or reach one by symbol instance."""
        segments = self.segments
        if (
            len(segments) >= 2
            and isinstance(segments[0], SymbolicSegment)
            and _is_logical(segments[1], LogicalType.CLASS_ID)
        ):
            return segments[0].name
        return None

    @property
    def tag(self) -> str | None:
        """The tag as Logix writes it: ``Program:Main.Recipe[3,1].Temp``. Logix compares tag names
        without regard to case; the text keeps the client's case."""
        return _tag_text(self.segments) if self.symbolic else None

    def tag_with(self, base: str) -> str | None:
        """For a tag addressed by symbol instance (class 0x6B, instance, members...), its text with
        ``base`` (the name the instance stands for, from a tag list) in the instance's place."""
        segments = self.segments
        scope = self.scope
        if scope is not None:
            segments = segments[1:]
        if (
            len(segments) < 2
            or self.class_id != ClassCode.SYMBOL
            or not _is_logical(segments[0], LogicalType.CLASS_ID)
            or not _is_logical(segments[1], LogicalType.INSTANCE_ID)
        ):
            return None
        name = base if scope is None else f"{scope}.{base}"
        return _tag_text((SymbolicSegment(name), *segments[2:]))

    @property
    def tag_index(self) -> tuple[int, ...]:
        """The array indices that end a tag path (``Recipe[3,1]`` -> ``(3, 1)``); empty when none."""
        index: list[int] = []
        for segment in reversed(self.segments):
            if not (isinstance(segment, LogicalSegment) and segment.logical_type == LogicalType.MEMBER_ID):
                break
            index.append(segment.value)
        return tuple(reversed(index)) if self.symbolic else ()

    @property
    def route(self) -> tuple[PortSegment, ...]:
        return tuple(s for s in self.segments if isinstance(s, PortSegment))

    def __str__(self) -> str:
        return self.tag or " ".join(_describe(s) for s in self.segments)


def _tag_text(segments: Iterable[Segment]) -> str:
    out: list[str] = []
    in_index = False  # consecutive member ids are one multi-dimensional index: [3,1]
    for segment in segments:
        if isinstance(segment, SymbolicSegment):
            out.append(f".{segment.name}" if out else segment.name)
            in_index = False
        elif isinstance(segment, LogicalSegment):
            if in_index:
                out[-1] = f"{out[-1][:-1]},{segment.value}]"
            else:
                out.append(f"[{segment.value}]")
            in_index = True
    return "".join(out)


_TAG_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_:]*)(?:\[(\d+(?:,\d+)*)\])?")


def tag_path(text: str) -> EPath:
    """The path of a tag written as Logix writes it (``Program:Main.Recipe[3,1].Temp``): the inverse of
    :attr:`EPath.tag`. Raises ValueError for text that is no tag."""
    segments: list[Segment] = []
    for part in text.split("."):
        match = _TAG_PART.fullmatch(part)
        if match is None:
            raise ValueError(f"{text!r} is not a Logix tag name")
        segments.append(SymbolicSegment(match[1]))
        if match[2]:
            segments.extend(LogicalSegment(LogicalType.MEMBER_ID, int(i)) for i in match[2].split(","))
    return EPath(tuple(segments))


def _describe(segment: Segment) -> str:
    if isinstance(segment, LogicalSegment):
        return f"{segment.logical_type.name.lower()}=0x{segment.value:X}"
    if isinstance(segment, PortSegment):
        return f"port={segment}"
    return type(segment).__name__


# ------------------------------------------------------------------------------------------- parsing

_Parser = Callable[[bytes, int, int, bool], tuple[Segment, int]]


def _need(data: bytes, end: int, what: str) -> None:
    if end > len(data):
        raise _bad(f"{what} runs past the end of the path")


def _parse_port(data: bytes, offset: int, first: int, padded: bool) -> tuple[Segment, int]:
    start = offset
    port = first & 0x0F
    offset += 1
    if first & 0x10:
        _need(data, offset + 1, "port segment")
        link_size = data[offset]
        offset += 1
    else:
        link_size = 1
    if port == 0x0F:
        _need(data, offset + 2, "extended port")
        port = _U16.unpack_from(data, offset)[0]
        offset += 2
        if port < 0x0F:
            raise _bad(f"extended port identifier {port} fits the short form")
    if port == 0:
        raise _bad("port 0 is reserved")
    if first & 0x10 and link_size < 2:
        raise _bad(f"extended link address of {link_size} bytes")
    _need(data, offset + link_size, "link address")
    link = data[offset : offset + link_size]
    offset += link_size
    if padded and (offset - start) & 1:
        offset = _pad(data, offset)
    return PortSegment(port, link), offset


def _pad(data: bytes, offset: int) -> int:
    _need(data, offset + 1, "pad byte")
    if data[offset]:
        raise _bad("pad byte is not zero")
    return offset + 1


def _logical_parser(kind: LogicalType, size: int) -> _Parser:
    value_format = _VALUE_FORMATS[size]

    def parse(data: bytes, offset: int, first: int, padded: bool) -> tuple[Segment, int]:
        offset += 1
        if padded and size > 1:
            offset = _pad(data, offset)
        _need(data, offset + size, "logical segment")
        return LogicalSegment(kind, value_format.unpack_from(data, offset)[0], size), offset + size

    return parse


def _parse_key(data: bytes, offset: int, first: int, padded: bool) -> tuple[Segment, int]:
    _need(data, offset + 1 + _KEY.size, "electronic key")
    key_format, vendor, device_type, product, major, minor = _KEY.unpack_from(data, offset + 1)
    if key_format != 4:
        raise _bad(f"electronic key format {key_format}")
    key = ElectronicKeySegment(vendor, device_type, product, major & 0x7F, minor, bool(major & 0x80))
    return key, offset + 1 + _KEY.size


def _parse_network(data: bytes, offset: int, first: int, padded: bool) -> tuple[Segment, int]:
    if first < 0x50:
        _need(data, offset + 2, "network segment")
        return NetworkSegment(first, data[offset + 1 : offset + 2]), offset + 2
    _need(data, offset + 2, "network segment")
    end = offset + 2 + 2 * data[offset + 1]
    _need(data, end, "network segment")
    return NetworkSegment(first, data[offset + 2 : end]), end


def _parse_data(data: bytes, offset: int, first: int, padded: bool) -> tuple[Segment, int]:
    _need(data, offset + 2, "data segment")
    end = offset + 2 + 2 * data[offset + 1]
    _need(data, end, "data segment")
    return DataSegment(data[offset + 2 : end]), end


def _parse_symbolic(data: bytes, offset: int, first: int, padded: bool) -> tuple[Segment, int]:
    _need(data, offset + 2, "symbolic segment")
    length = data[offset + 1]
    end = offset + 2 + length
    _need(data, end, "symbol")
    raw = data[offset + 2 : end]
    if not _SYMBOL.fullmatch(raw.decode("latin-1")):
        raise _bad(f"symbol {raw!r} is not a Logix tag name")
    if padded and length & 1:
        end = _pad(data, end)
    return SymbolicSegment(raw.decode("ascii")), end


def _segment_parsers() -> dict[int, _Parser]:
    table: dict[int, _Parser] = {}
    for first in range(0x01, 0x20):
        if first != 0x10:  # port 0 with an extended link: reserved
            table[first] = _parse_port
    for kind, sizes in _LOGICAL_SIZES.items():
        for size in sizes:
            table[0x20 | kind << 2 | _FORMAT_OF_SIZE[size]] = _logical_parser(kind, size)
    table[0x34] = _parse_key
    for first in (0x41, 0x42, 0x43, 0x50, 0x51, 0x5F):
        table[first] = _parse_network
    table[0x80] = _parse_data
    table[0x91] = _parse_symbolic
    return table


_SEGMENT_PARSERS = _segment_parsers()


def parse_epath(data: bytes, *, padded: bool = True, limits: CipLimits = DEFAULT_LIMITS) -> EPath:
    """Parse all of ``data`` as one path. Raises :class:`CipProtocolError` (path segment error) only."""
    if len(data) > limits.max_path_bytes:
        raise _bad(f"path of {len(data)} bytes exceeds the cap of {limits.max_path_bytes}")
    segments: list[Segment] = []
    offset = 0
    while offset < len(data):
        if len(segments) == limits.max_path_segments:
            raise _bad(f"path has more than {limits.max_path_segments} segments")
        first = data[offset]
        parser = _SEGMENT_PARSERS.get(first)
        if parser is None:
            raise _bad(f"segment type 0x{first:02X} is not supported")
        segment, offset = parser(data, offset, first, padded)
        segments.append(segment)
    return EPath(tuple(segments))


# ------------------------------------------------------------------------------------------ encoding


def _encode_segment(segment: Segment, padded: bool) -> bytes:
    if isinstance(segment, LogicalSegment):
        first = 0x20 | segment.logical_type << 2 | _FORMAT_OF_SIZE[segment.size]
        pad = b"\x00" if padded and segment.size > 1 else b""
        return bytes((first,)) + pad + _VALUE_FORMATS[segment.size].pack(segment.value)
    if isinstance(segment, SymbolicSegment):
        name = segment.name.encode("ascii")
        pad = b"\x00" if padded and len(name) & 1 else b""
        return bytes((0x91, len(name))) + name + pad
    if isinstance(segment, PortSegment):
        return _encode_port(segment, padded)
    if isinstance(segment, ElectronicKeySegment):
        major = segment.major_revision | (0x80 if segment.compatibility else 0)
        key = (4, segment.vendor_id, segment.device_type, segment.product_code, major, segment.minor_revision)
        return b"\x34" + _KEY.pack(*key)
    if isinstance(segment, NetworkSegment):
        if segment.kind < 0x50:
            return bytes((segment.kind,)) + segment.data
        return bytes((segment.kind, len(segment.data) // 2)) + segment.data
    return bytes((0x80, len(segment.data) // 2)) + segment.data


def _encode_port(segment: PortSegment, padded: bool) -> bytes:
    extended_link = len(segment.link) != 1
    out = bytearray((min(segment.port, 0x0F) | (0x10 if extended_link else 0),))
    if extended_link:
        out.append(len(segment.link))
    if segment.port >= 0x0F:
        out += _U16.pack(segment.port)
    out += segment.link
    if padded and len(out) & 1:
        out.append(0)
    return bytes(out)


def encode_epath(segments: Iterable[Segment], *, padded: bool = True) -> bytes:
    return EPath(tuple(segments)).encode(padded=padded)


# ------------------------------------------------------------------------------------------- shapes


def check_request_path(path: EPath) -> None:
    """A message router request path has one of three shapes, so that its class, instance, attribute
    and tag cannot be read two ways:

    - a tag by name: symbolic, then symbolic members and array indices (member ids);
    - a tag by symbol instance: class 0x6B, instance, then symbolic members and array indices — also
      inside a program's scope: ``Program:Main``, class 0x6B, instance... (how pycomm3 and pylogix list
      a program's tags);
    - an object: class [instance [attribute | connection point]] [member ids].
    """
    segments = path.segments
    if not segments:
        raise _bad("empty request path")
    if path.symbolic:
        _check_tag_members(segments)
        return
    scope = path.scope
    if scope is not None:
        if not scope.lower().startswith("program:") or path.class_id != ClassCode.SYMBOL:
            raise _bad("only a program's Symbol object may follow a symbol in a path")
        segments = segments[1:]
    first = segments[0]
    if not _is_logical(first, LogicalType.CLASS_ID):
        raise _bad("request path starts with neither a class nor a symbol")
    rest = segments[1:]
    if rest and _is_logical(rest[0], LogicalType.INSTANCE_ID):
        rest = rest[1:]
        if rest and isinstance(rest[0], LogicalSegment) and rest[0].logical_type in _TARGETS:
            rest = rest[1:]
        elif isinstance(first, LogicalSegment) and first.value == ClassCode.SYMBOL:
            _check_tag_members(rest)
            return
    if not all(_is_logical(s, LogicalType.MEMBER_ID) for s in rest):
        raise _bad("logical request path is not class, instance, attribute, members")


_TARGETS = (LogicalType.ATTRIBUTE_ID, LogicalType.CONNECTION_POINT)


def _check_tag_members(segments: tuple[Segment, ...]) -> None:
    if not all(isinstance(s, SymbolicSegment) or _is_logical(s, LogicalType.MEMBER_ID) for s in segments):
        raise _bad("a tag path holds more than symbols and array indices")


def _is_logical(segment: Segment, kind: LogicalType) -> bool:
    return isinstance(segment, LogicalSegment) and segment.logical_type == kind


def check_route_path(path: EPath) -> None:
    """An Unconnected Send route is port segments only."""
    if not all(isinstance(s, PortSegment) for s in path.segments):
        raise _bad("route path holds more than port segments")


def check_connection_path(path: EPath) -> None:
    """A Forward Open connection path: port segments, then an optional electronic key, network segments,
    the application path (logical segments) and configuration data; never a tag name."""
    seen_other = False
    for segment in path.segments:
        if isinstance(segment, SymbolicSegment):
            raise _bad("symbolic segment in a connection path")
        if isinstance(segment, PortSegment):
            if seen_other:
                raise _bad("port segment after the application path")
        else:
            seen_other = True


__all__ = [
    "DataSegment",
    "EPath",
    "ElectronicKeySegment",
    "LogicalSegment",
    "LogicalType",
    "NetworkSegment",
    "PortSegment",
    "Segment",
    "SymbolicSegment",
    "check_connection_path",
    "check_request_path",
    "check_route_path",
    "encode_epath",
    "parse_epath",
    "tag_path",
]
