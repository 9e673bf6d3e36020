"""The tag database of the EtherNet/IP soft PLC: Logix atomic tags and arrays, controller- and
program-scoped, addressed by name or by symbol instance, as 1756-PM020 describes them.

Values are kept as the controller keeps them: little-endian bytes, one element after the other (arrays
row-major), so that byte offsets of the fragmented services and the masks of Read-Modify-Write work on
the very bytes a read returns. Structures (UDTs) and BOOL arrays (which Logix packs into DWORDs) are not
modelled: the simulator serves atomic tags and arrays of atomic types only.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from protocols.enip import DataType, EPath, LogicalSegment, LogicalType, Segment, SymbolicSegment
from protocols.enip.spec import ATOMIC_TYPES, ClassCode, GeneralStatus

Value = bool | int | float

# The atomic types a Logix tag can have, by the name a tag definition uses.
TYPE_CODES: dict[str, int] = {
    name: DataType[name].value
    for name in ("BOOL", "SINT", "INT", "DINT", "LINT", "USINT", "UINT", "UDINT", "ULINT", "REAL", "LREAL")
}
TYPE_NAMES = {code: name for name, code in TYPE_CODES.items()}
_FLOATS = frozenset((DataType.REAL, DataType.LREAL))

# Symbol type word (1756-PM020 "Symbol Type Attribute"): bits 0-7 the atomic type, 13-14 how many array
# dimensions, 12 a system symbol (programs, tasks, routines), 15 a structure.
SYSTEM_SYMBOL = 0x1000
DIMENSION_SHIFT = 13
PROGRAM_SYMBOL_TYPE = SYSTEM_SYMBOL | 0x68  # the values a ControlLogix lists for these
ROUTINE_SYMBOL_TYPE = SYSTEM_SYMBOL | 0x6D
TASK_SYMBOL_TYPE = SYSTEM_SYMBOL | 0x70
# Software control attribute (6): set for a base tag, clear for an alias (pycomm3 reads it so).
BASE_TAG_BIT = 1 << 26
EXTERNAL_READ_WRITE = 0
MAX_DIMENSIONS = 3

# Symbol instance ids are not contiguous in a real controller; gaps keep clients honest about paging.
_FIRST_INSTANCE = 0x0100
_INSTANCE_STRIDE = 3
_PROGRAM_PREFIX = "program:"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")
_TEXT_PART = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_:]*)(?:\[(?P<index>[0-9, ]+)\])?")


class TagError(Exception):
    """A tag request a controller refuses: the general and extended status it answers with."""

    def __init__(self, general_status: int, extended_status: tuple[int, ...] = (), text: str = "") -> None:
        super().__init__(text or f"general status 0x{general_status:02X}")
        self.general_status = general_status
        self.extended_status = extended_status


def path_error(text: str) -> TagError:
    """0x04: Logix's answer to a tag name it does not know, or to a path it cannot decode."""
    return TagError(GeneralStatus.PATH_SEGMENT_ERROR, (), text)


def destination_unknown(text: str) -> TagError:
    """0x05: an instance number (or an array index) that is not there."""
    return TagError(GeneralStatus.PATH_DESTINATION_UNKNOWN, (), text)


@dataclass(frozen=True, slots=True)
class TagSpec:
    """A tag to create: ``"Recipe", "DINT", (10,)``; ``program`` names its program (``"Main"``)."""

    name: str
    type_name: str
    dims: tuple[int, ...] = ()
    initial: Value | Sequence[Value] = 0
    program: str | None = None


@dataclass(slots=True)
class Tag:
    name: str
    data_type: int
    dims: tuple[int, ...]
    instance: int
    program: str | None
    data: bytearray
    element: struct.Struct = field(repr=False)

    @property
    def size(self) -> int:
        """Bytes per element."""
        return self.element.size

    @property
    def count(self) -> int:
        """Elements in the tag (1 for a scalar)."""
        return math.prod(self.dims) if self.dims else 1

    @property
    def full_name(self) -> str:
        return f"Program:{self.program}.{self.name}" if self.program else self.name

    @property
    def symbol_type(self) -> int:
        return self.data_type | len(self.dims) << DIMENSION_SHIFT

    def values(self, start: int = 0, count: int | None = None) -> list[Value]:
        count = self.count - start if count is None else count
        size = self.size
        raw = self.data[start * size : (start + count) * size]
        return [self._python(item[0]) for item in self.element.iter_unpack(raw)]

    def store(self, start: int, values: Sequence[Value]) -> None:
        if start < 0 or start + len(values) > self.count:
            raise IndexError(f"{self.full_name}: elements {start}..{start + len(values) - 1} do not exist")
        packed = b"".join(self._pack(value) for value in values)
        self.data[start * self.size : start * self.size + len(packed)] = packed

    def write_bytes(self, offset: int, data: bytes) -> None:
        """Store client bytes; a BOOL keeps 0 or 1 whatever nonzero byte carried it (it is one bit)."""
        if self.data_type == DataType.BOOL:
            data = bytes(1 if byte else 0 for byte in data)
        self.data[offset : offset + len(data)] = data

    def _python(self, raw: int | float) -> Value:
        return bool(raw) if self.data_type == DataType.BOOL else raw

    def _pack(self, value: Value) -> bytes:
        if self.data_type == DataType.BOOL:
            if value not in (0, 1):  # True and False compare equal to 1 and 0
                raise ValueError(f"{self.full_name}: a BOOL takes True/False or 1/0, not {value!r}")
            return self.element.pack(int(value))
        if self.data_type in _FLOATS:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{self.full_name}: {value!r} is not a number")
            try:
                return self.element.pack(value)
            except OverflowError:
                raise ValueError(f"{self.full_name}: {value!r} does not fit a REAL") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{self.full_name}: {TYPE_NAMES[self.data_type]} takes an int, not {value!r}")
        try:
            return self.element.pack(value)
        except struct.error:
            raise ValueError(f"{self.full_name}: {value} is out of range of a {self.type_name}") from None

    @property
    def type_name(self) -> str:
        return TYPE_NAMES[self.data_type]


@dataclass(frozen=True, slots=True)
class Symbol:
    """One entry of a scope's symbol table, as the Get Instance Attribute List service lists it."""

    instance: int
    name: str
    symbol_type: int
    tag: Tag | None = None  # None for the system symbols (programs, tasks, routines)


@dataclass(frozen=True, slots=True)
class Ref:
    """A tag element a request addresses: the tag, and the element (row-major) the path names."""

    tag: Tag
    start: int
    indexed: bool = False  # the path named an element, not the tag as a whole

    @property
    def text(self) -> str:
        if not self.indexed:
            return self.tag.full_name
        index, rest = [], self.start
        for dim in reversed(self.tag.dims):
            rest, position = divmod(rest, dim)
            index.append(position)
        return f"{self.tag.full_name}[{','.join(map(str, reversed(index)))}]"


class Scope:
    """The controller's symbol table or one program's."""

    def __init__(self, program: str | None) -> None:
        self.program = program
        self.symbols: list[Symbol] = []  # in instance order
        self._by_name: dict[str, Symbol] = {}
        self._by_instance: dict[int, Symbol] = {}

    def add(self, symbol: Symbol) -> None:
        key = symbol.name.lower()  # Logix tag names ignore case
        if key in self._by_name:
            raise ValueError(f"tag {symbol.name!r} is defined twice in {self.program or 'the controller'}")
        self.symbols.append(symbol)
        self._by_name[key] = symbol
        self._by_instance[symbol.instance] = symbol

    def by_name(self, name: str) -> Symbol | None:
        return self._by_name.get(name.lower())

    def by_instance(self, instance: int) -> Symbol | None:
        return self._by_instance.get(instance)

    def from_instance(self, start: int) -> Iterable[Symbol]:
        return (symbol for symbol in self.symbols if symbol.instance >= start)


class TagTable:
    """Every tag of the controller, with lookups by text (for tests and the plant) and by request path."""

    def __init__(self, specs: Iterable[TagSpec], *, task: str = "MainTask") -> None:
        self.controller = Scope(None)
        self.programs: dict[str, Scope] = {}
        self._next_instance = _FIRST_INSTANCE
        specs = tuple(specs)
        for spec in specs:
            if spec.program is not None and spec.program.lower() not in self.programs:
                name = spec.program
                self.programs[name.lower()] = scope = Scope(name)
                self.controller.add(Symbol(self._instance(), f"Program:{name}", PROGRAM_SYMBOL_TYPE))
                scope.add(Symbol(self._instance(), "Routine:MainRoutine", ROUTINE_SYMBOL_TYPE))
        self.controller.add(Symbol(self._instance(), f"Task:{task}", TASK_SYMBOL_TYPE))
        for spec in specs:
            tag = self._create(spec)
            scope = self.controller if spec.program is None else self.programs[spec.program.lower()]
            scope.add(Symbol(tag.instance, tag.name, tag.symbol_type, tag))

    def _instance(self) -> int:
        instance = self._next_instance
        self._next_instance += _INSTANCE_STRIDE
        return instance

    def _create(self, spec: TagSpec) -> Tag:
        if not _NAME.fullmatch(spec.name):
            raise ValueError(f"{spec.name!r} is not a Logix tag name")
        code = TYPE_CODES.get(spec.type_name.upper())
        if code is None:
            raise ValueError(f"{spec.name}: type {spec.type_name!r} is not one of {', '.join(TYPE_CODES)}")
        if len(spec.dims) > MAX_DIMENSIONS or any(dim < 1 for dim in spec.dims):
            raise ValueError(f"{spec.name}: dimensions {spec.dims} (1 to 3, each at least 1)")
        element = ATOMIC_TYPES[code].unpack
        count = math.prod(spec.dims) if spec.dims else 1
        tag = Tag(
            spec.name,
            code,
            spec.dims,
            self._instance(),
            spec.program,
            bytearray(count * element.size),
            element,
        )
        initial = spec.initial
        tag.store(0, list(initial) if isinstance(initial, Sequence) else [initial] * count)
        return tag

    # ----------------------------------------------------------------------------------- by text

    def lookup(self, text: str) -> tuple[Tag, int | None]:
        """``"Recipe"`` -> (tag, None); ``"Recipe[3]"``, ``"Zones[1,2]"`` -> (tag, element);
        ``"Program:Main.Step"`` for a program's tag. KeyError for an unknown tag, IndexError outside it."""
        scope, rest = self.controller, text
        if text.lower().startswith(_PROGRAM_PREFIX):
            program, dot, rest = text[len(_PROGRAM_PREFIX) :].partition(".")
            found = self.programs.get(program.lower())
            if found is None or not dot:
                raise KeyError(f"no program tag {text!r}")
            scope = found
        part = _TEXT_PART.fullmatch(rest)
        symbol = scope.by_name(part["name"]) if part else None
        if part is None or symbol is None or symbol.tag is None:
            raise KeyError(f"no tag {text!r}")
        tag = symbol.tag
        if part["index"] is None:
            return tag, None
        index = tuple(int(i) for i in part["index"].split(","))
        try:
            return tag, _element(tag, index)
        except TagError as error:
            raise IndexError(str(error)) from None

    # ----------------------------------------------------------------------------------- by path

    def scope_of(self, path: EPath) -> tuple[Scope, tuple[Segment, ...]]:
        """The scope a path starts in and the segments after the program's name, if any."""
        segments = path.segments
        first = segments[0] if segments else None
        if isinstance(first, SymbolicSegment) and first.name.lower().startswith(_PROGRAM_PREFIX):
            scope = self.programs.get(first.name[len(_PROGRAM_PREFIX) :].lower())
            if scope is None:
                raise path_error(f"no program {first.name!r}")
            return scope, segments[1:]
        return self.controller, segments

    def resolve(self, path: EPath) -> Ref:
        """The element a Read/Write Tag path addresses: a name (or class 0x6B + instance) in the
        controller's or a program's scope, then as many indices as the tag has dimensions."""
        scope, segments = self.scope_of(path)
        if not segments:
            raise path_error("the path names a program, not a tag")
        first, rest = segments[0], list(segments[1:])
        if isinstance(first, SymbolicSegment):
            symbol = scope.by_name(first.name)
            if symbol is None:
                raise path_error(f"no tag {first.name!r}")
        elif logical_value(first, LogicalType.CLASS_ID) == ClassCode.SYMBOL and rest:
            instance = logical_value(rest.pop(0), LogicalType.INSTANCE_ID)
            if instance is None:
                raise path_error("class 0x6B without an instance")
            symbol = scope.by_instance(instance)
            if symbol is None:
                raise destination_unknown(f"no symbol instance {instance}")
        else:
            raise path_error("the path names no tag")
        tag = symbol.tag
        if tag is None:
            raise path_error(f"{symbol.name} is not a data tag")
        index: list[int] = []
        for segment in rest:
            value = logical_value(segment, LogicalType.MEMBER_ID)
            if value is None:
                # A member of an atomic tag (Logix has no bit members in paths) or a stray segment.
                raise path_error(f"{tag.full_name} has no members")
            index.append(value)
        if not index:
            return Ref(tag, 0)
        return Ref(tag, _element(tag, tuple(index)), indexed=True)


def logical_value(segment: Segment, kind: LogicalType) -> int | None:
    """The value of a logical segment of ``kind`` (None for any other segment)."""
    if isinstance(segment, LogicalSegment) and segment.logical_type == kind:
        return segment.value
    return None


def _element(tag: Tag, index: tuple[int, ...]) -> int:
    """The row-major element of ``index``: a wrong number of indices is a path error (0x04), an index
    outside its dimension a destination that is not there (0x05)."""
    if len(index) != len(tag.dims):
        raise path_error(f"{tag.full_name} takes {len(tag.dims)} indices, not {len(index)}")
    linear = 0
    for position, dim in zip(index, tag.dims, strict=True):
        if not 0 <= position < dim:
            raise destination_unknown(f"{tag.full_name}{list(index)} is outside {list(tag.dims)}")
        linear = linear * dim + position
    return linear


__all__ = [
    "BASE_TAG_BIT",
    "EXTERNAL_READ_WRITE",
    "TYPE_CODES",
    "TYPE_NAMES",
    "Ref",
    "Scope",
    "Symbol",
    "Tag",
    "TagError",
    "TagSpec",
    "TagTable",
    "destination_unknown",
    "logical_value",
    "path_error",
]
