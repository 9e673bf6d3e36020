"""Service data of Logix tag services (1756-PM020 chapter 1) and of the common services a policy decides
on (Vol 1 Appendix A), with the written values of atomic types decoded so that a policy can bound them.

Tag services: Read Tag 0x4C (element count), Write Tag 0x4D (type, structure handle for 0x02A0, element
count, data), Read-Modify-Write 0x4E (mask size, OR masks, AND masks), Read/Write Tag Fragmented
0x52/0x53 (as Read/Write Tag, plus a byte offset), Get Instance Attribute List 0x55 (attribute ids).
Their data is parsed exactly: a write of an atomic type must carry exactly the bytes its count and type
call for, because its values are what the policy bounds. Data of services whose values the codec cannot
type (attribute values, structures, strings) is kept as it is and flagged opaque.

Bytes after the fields a service defines are refused (0x15 too much data), except for the services in
``TRAILING_BYTES_IGNORED``: there devices are known to ignore them and clients are known to send them.
Such a request is decided on what it declares and forwarded as the canonical encoding of that alone.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from protocols.enip.errors import cip_error
from protocols.enip.spec import (
    ATOMIC_TYPES,
    READ_MODIFY_WRITE_MASK_SIZES,
    STRUCTURE_TYPE,
    ClassCode,
    GeneralStatus,
    Service,
)

_Status = GeneralStatus
_U16 = struct.Struct("<H")
_U16_U32 = struct.Struct("<HI")

Value = int | float


def decode_values(data_type: int, data: bytes) -> tuple[Value, ...] | None:
    """The elements of ``data`` as numbers, or ``None`` when ``data_type`` is not atomic (opaque).
    BOOL reads as 0 or 1 whatever nonzero byte carries it."""
    atomic = ATOMIC_TYPES.get(data_type)
    if atomic is None or len(data) % atomic.size:
        return None
    values = tuple(item[0] for item in atomic.unpack.iter_unpack(data))
    if data_type == 0xC1:  # BOOL
        return tuple(int(bool(value)) for value in values)
    return values


@dataclass(frozen=True, slots=True)
class ReadTag:
    element_count: int
    byte_offset: int | None = None  # Read Tag Fragmented only

    def encode(self) -> bytes:
        if self.byte_offset is None:
            return _U16.pack(self.element_count)
        return _U16_U32.pack(self.element_count, self.byte_offset)


@dataclass(frozen=True, slots=True)
class WriteTag:
    """Write Tag and (with ``byte_offset``) Write Tag Fragmented. ``values`` is ``None`` for structures,
    strings and other types whose bytes the codec cannot read as numbers."""

    data_type: int
    element_count: int
    data: bytes
    structure_handle: int | None = None
    byte_offset: int | None = None
    values: tuple[Value, ...] | None = None

    @property
    def element_offset(self) -> int | None:
        """The first element the data lands on, relative to the element the path names."""
        if self.byte_offset is None:
            return 0
        atomic = ATOMIC_TYPES.get(self.data_type)
        return None if atomic is None else self.byte_offset // atomic.size

    def encode(self) -> bytes:
        head = _U16.pack(self.data_type)
        if self.structure_handle is not None:
            head += _U16.pack(self.structure_handle)
        head += _U16.pack(self.element_count)
        if self.byte_offset is not None:
            head += struct.pack("<I", self.byte_offset)
        return head + self.data


@dataclass(frozen=True, slots=True)
class ReadModifyWrite:
    """New value = (old AND and_mask) OR or_mask, over ``mask_size`` bytes. Whatever the tag's type,
    the bits set in ``or_mask`` become 1 and the bits clear in both masks become 0."""

    mask_size: int
    or_mask: int
    and_mask: int

    def encode(self) -> bytes:
        size = self.mask_size
        return (
            _U16.pack(size) + self.or_mask.to_bytes(size, "little") + self.and_mask.to_bytes(size, "little")
        )


@dataclass(frozen=True, slots=True)
class AttributeList:
    """Get_Attribute_List (0x03) and Get Instance Attribute List (0x55): the attribute ids asked for."""

    attribute_ids: tuple[int, ...]

    def encode(self) -> bytes:
        return struct.pack(f"<H{len(self.attribute_ids)}H", len(self.attribute_ids), *self.attribute_ids)


@dataclass(frozen=True, slots=True)
class NoData:
    """A service that takes no request data (Get_Attributes_All, Get_Attribute_Single): what a client
    appends anyway is ignored and never forwarded."""

    def encode(self) -> bytes:
        return b""


@dataclass(frozen=True, slots=True)
class Opaque:
    """Service data the codec keeps as it is: attribute values of unknown type, Reset's type byte."""

    data: bytes
    writes: bool = False  # the data is a value that gets written (Set_Attribute_*)

    def encode(self) -> bytes:
        return self.data


Payload = ReadTag | WriteTag | ReadModifyWrite | AttributeList | NoData | Opaque


def _exact(data: bytes, length: int, what: str, service: int) -> None:
    if len(data) < length:
        raise cip_error(
            _Status.NOT_ENOUGH_DATA, f"{what}: {len(data)} bytes, expected {length}", service=service
        )
    if len(data) > length:
        raise cip_error(
            _Status.TOO_MUCH_DATA, f"{what}: {len(data)} bytes, expected {length}", service=service
        )


def _parse_read_tag(data: bytes) -> Payload:
    _exact(data, 2, "Read Tag", Service.READ_TAG)
    return ReadTag(_U16.unpack(data)[0])


def _parse_read_tag_fragmented(data: bytes) -> Payload:
    _exact(data, 6, "Read Tag Fragmented", Service.READ_TAG_FRAGMENTED)
    count, offset = _U16_U32.unpack(data)
    return ReadTag(count, offset)


def _write_tag_parser(fragmented: bool) -> Callable[[bytes], Payload]:
    service = Service.WRITE_TAG_FRAGMENTED if fragmented else Service.WRITE_TAG
    what = "Write Tag Fragmented" if fragmented else "Write Tag"

    def parse(data: bytes) -> Payload:
        if len(data) < 2:
            raise cip_error(_Status.NOT_ENOUGH_DATA, f"{what} without a type", service=service)
        (data_type,) = _U16.unpack_from(data)
        offset = 2
        handle = None
        if data_type == STRUCTURE_TYPE:
            if len(data) < 4:
                raise cip_error(
                    _Status.NOT_ENOUGH_DATA, f"{what} without a structure handle", service=service
                )
            handle = _U16.unpack_from(data, 2)[0]
            offset = 4
        head = 6 if fragmented else 2
        if len(data) < offset + head:
            raise cip_error(_Status.NOT_ENOUGH_DATA, f"{what} without an element count", service=service)
        count = _U16.unpack_from(data, offset)[0]
        byte_offset = struct.unpack_from("<I", data, offset + 2)[0] if fragmented else None
        body = data[offset + head :]
        if count == 0:
            raise cip_error(_Status.INVALID_PARAMETER_VALUE, f"{what} of no elements", service=service)
        atomic = ATOMIC_TYPES.get(data_type)
        if atomic is not None:
            if byte_offset is None and len(body) > atomic.size * count:
                # Bytes after the declared elements: Logix controllers ignore them, and pycomm3 1.2.16
                # sends them with every single-tag write. The request is decided on what it declares,
                # and only its canonical encoding (without them) is ever forwarded.
                body = body[: atomic.size * count]
            _check_atomic_write(what, service, atomic.size, count, byte_offset, len(body))
        values = decode_values(data_type, body)
        return WriteTag(data_type, count, body, handle, byte_offset, values)

    return parse


def _check_atomic_write(
    what: str, service: int, size: int, count: int, offset: int | None, length: int
) -> None:
    total = size * count
    if offset is None:
        if length != total:
            status = _Status.NOT_ENOUGH_DATA if length < total else _Status.TOO_MUCH_DATA
            raise cip_error(status, f"{what}: {length} bytes for {count} elements of {size}", service=service)
        return
    if offset % size or length % size or not length:
        raise cip_error(
            _Status.INVALID_PARAMETER_VALUE, f"{what}: fragment not whole elements", service=service
        )
    if offset + length > total:
        raise cip_error(
            _Status.TOO_MUCH_DATA, f"{what}: fragment ends past {count} elements", service=service
        )


def _parse_read_modify_write(data: bytes) -> Payload:
    service = Service.READ_MODIFY_WRITE_TAG
    if len(data) < 2:
        raise cip_error(_Status.NOT_ENOUGH_DATA, "Read-Modify-Write without a mask size", service=service)
    (size,) = _U16.unpack_from(data)
    if size not in READ_MODIFY_WRITE_MASK_SIZES:
        raise cip_error(
            _Status.INVALID_PARAMETER_VALUE, f"Read-Modify-Write mask size {size}", service=service
        )
    if len(data) < 2 + 2 * size:
        _exact(data, 2 + 2 * size, "Read-Modify-Write", service)
    # Longer masks than the declared size are cut, as a controller reads them: pycomm3 1.2.16 sends an
    # 8-byte AND mask whatever the size. Only the canonical encoding is forwarded.
    or_mask = int.from_bytes(data[2 : 2 + size], "little")
    and_mask = int.from_bytes(data[2 + size : 2 + 2 * size], "little")
    return ReadModifyWrite(size, or_mask, and_mask)


def _attribute_list_parser(service: int, what: str) -> Callable[[bytes], Payload]:
    def parse(data: bytes) -> Payload:
        if len(data) < 2:
            raise cip_error(_Status.NOT_ENOUGH_DATA, f"{what} without a count", service=service)
        (count,) = _U16.unpack_from(data)
        if count == 0:
            raise cip_error(_Status.INVALID_PARAMETER_VALUE, f"{what} of no attributes", service=service)
        length = 2 + 2 * count
        trailing = (None, service) in TRAILING_BYTES_IGNORED
        _exact(data[:length] if trailing else data, length, what, service)
        return AttributeList(struct.unpack_from(f"<{count}H", data, 2))

    return parse


def _no_data(data: bytes) -> Payload:
    return NoData()


def _opaque(writes: bool) -> Callable[[bytes], Payload]:
    return lambda data: Opaque(data, writes)


# Where bytes after the declared fields are ignored, and why (each is still decided in full, and only its
# canonical encoding forwarded). pycomm3 1.2.16's generic messages over UCMM append their route path
# (``00 00`` when empty) after the request data, and devices answer these services all the same: OpENer
# (GetAttributeList reads the count and the ids and no more), Micro800 controllers (pycomm3's
# get_plc_info reaches them so), cpppo and our simulator:
# - Get_Attribute_List 0x03: the count says how many ids there are;
# - Get_Attributes_All 0x01, Get_Attribute_Single 0x0E: they take no request data at all;
# - Write Tag 0x4D and Read-Modify-Write 0x4E: pycomm3 sends such bytes with every single-tag and bit
#   write, and Logix controllers ignore them (see their parsers).
# Everything else stays exact: Read Tag, the fragmented services and Get Instance Attribute List (no
# client is known to append bytes to them, and no device to ignore them), and the writes of attributes,
# whose data the codec cannot delimit.
TRAILING_BYTES_IGNORED: frozenset[tuple[int | None, int]] = frozenset(
    (
        (None, Service.GET_ATTRIBUTE_LIST),
        (None, Service.GET_ATTRIBUTES_ALL),
        (None, Service.GET_ATTRIBUTE_SINGLE),
        (ClassCode.SYMBOL, Service.WRITE_TAG),
        (ClassCode.SYMBOL, Service.READ_MODIFY_WRITE_TAG),
    )
)


# Tag services by class (0x6B for a symbolic path too), common services on every class (key None).
PAYLOAD_PARSERS: dict[tuple[int | None, int], Callable[[bytes], Payload]] = {
    (ClassCode.SYMBOL, Service.READ_TAG): _parse_read_tag,
    (ClassCode.SYMBOL, Service.READ_TAG_FRAGMENTED): _parse_read_tag_fragmented,
    (ClassCode.SYMBOL, Service.WRITE_TAG): _write_tag_parser(fragmented=False),
    (ClassCode.SYMBOL, Service.WRITE_TAG_FRAGMENTED): _write_tag_parser(fragmented=True),
    (ClassCode.SYMBOL, Service.READ_MODIFY_WRITE_TAG): _parse_read_modify_write,
    (ClassCode.SYMBOL, Service.GET_INSTANCE_ATTRIBUTE_LIST): _attribute_list_parser(
        Service.GET_INSTANCE_ATTRIBUTE_LIST, "Get Instance Attribute List"
    ),
    (None, Service.GET_ATTRIBUTE_LIST): _attribute_list_parser(
        Service.GET_ATTRIBUTE_LIST, "Get_Attribute_List"
    ),
    (None, Service.GET_ATTRIBUTES_ALL): _no_data,
    (None, Service.GET_ATTRIBUTE_SINGLE): _no_data,
    (None, Service.SET_ATTRIBUTE_LIST): _opaque(writes=True),
    (None, Service.SET_ATTRIBUTE_SINGLE): _opaque(writes=True),
    (None, Service.SET_ATTRIBUTES_ALL): _opaque(writes=True),
}

# Services that change the device: their data is a value even when the codec cannot read it.
WRITING_SERVICES: frozenset[tuple[int | None, int]] = frozenset(
    (
        (ClassCode.SYMBOL, Service.WRITE_TAG),
        (ClassCode.SYMBOL, Service.WRITE_TAG_FRAGMENTED),
        (ClassCode.SYMBOL, Service.READ_MODIFY_WRITE_TAG),
        (None, Service.SET_ATTRIBUTE_LIST),
        (None, Service.SET_ATTRIBUTE_SINGLE),
        (None, Service.SET_ATTRIBUTES_ALL),
    )
)


def parse_payload(class_id: int | None, service: int, data: bytes) -> Payload:
    """Decode the service data of ``service`` on ``class_id``; unknown pairs keep their data opaque."""
    parser = PAYLOAD_PARSERS.get((class_id, service))
    if parser is None and service < 0x4B:
        parser = PAYLOAD_PARSERS.get((None, service))
    return Opaque(data) if parser is None else parser(data)


# ------------------------------------------------------------------------------------------ replies


@dataclass(frozen=True, slots=True)
class ReadTagReply:
    """The data of a Read Tag (Fragmented) reply: the tag's type and the elements' bytes."""

    data_type: int
    data: bytes
    structure_handle: int | None = None

    def encode(self) -> bytes:
        handle = b"" if self.structure_handle is None else _U16.pack(self.structure_handle)
        return _U16.pack(self.data_type) + handle + self.data


def parse_read_tag_reply(data: bytes) -> ReadTagReply:
    if len(data) < 2:
        raise cip_error(_Status.INVALID_REPLY_RECEIVED, "Read Tag reply without a type")
    (data_type,) = _U16.unpack_from(data)
    if data_type == STRUCTURE_TYPE:
        if len(data) < 4:
            raise cip_error(_Status.INVALID_REPLY_RECEIVED, "Read Tag reply without a structure handle")
        return ReadTagReply(data_type, data[4:], _U16.unpack_from(data, 2)[0])
    return ReadTagReply(data_type, data[2:])


__all__ = [
    "PAYLOAD_PARSERS",
    "TRAILING_BYTES_IGNORED",
    "WRITING_SERVICES",
    "AttributeList",
    "NoData",
    "Opaque",
    "Payload",
    "ReadModifyWrite",
    "ReadTag",
    "ReadTagReply",
    "Value",
    "WriteTag",
    "decode_values",
    "parse_payload",
    "parse_read_tag_reply",
]
