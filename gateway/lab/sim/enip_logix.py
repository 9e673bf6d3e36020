"""Logix tag services on the simulator's tag database (1756-PM020 chapter 1): Read Tag 0x4C, Write Tag
0x4D, Read-Modify-Write 0x4E, Read/Write Tag Fragmented 0x52/0x53 and Get Instance Attribute List 0x55
on the Symbol object, with the statuses a Logix controller answers.

Service data is decoded with the codec's parsers (``protocols.enip.parse_payload``); what a controller
checks before the length of the data, and answers differently from the codec's generic status, is
checked first: the path (0x04/0x05), the data type of a write (0xFF/0x2107) and the element range
(0xFF/0x2104, 0xFF/0x2105).

Bytes after the fields a service defines are ignored, as a Logix controller ignores them: pycomm3
1.2.16 sends its single-tag Write Tag with the sequence count and the whole request repeated after the
value, and its Read-Modify-Write with an AND mask of 8 bytes whatever the mask size, and real
controllers carry those writes out (ottowayi/pycomm3 issue #330, on a 1756-L81 at v37). Each handler
reports how many bytes it ignored, for the simulator's log.

``room`` is what the reply may take in all (message router reply header included): the connection's
size for connected messages, the unconnected buffer otherwise. Reads that do not fit answer 0x06
(partial transfer) with what fits, as Logix does; the client goes on with the fragmented service.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from gateway.lab.sim.enip_tags import (
    BASE_TAG_BIT,
    EXTERNAL_READ_WRITE,
    Ref,
    Scope,
    Symbol,
    TagError,
    TagTable,
    logical_value,
    path_error,
)
from protocols.enip import (
    AttributeList,
    CipProtocolError,
    LogicalType,
    MessageRouterRequest,
    MessageRouterResponse,
    ReadModifyWrite,
    ReadTag,
    ReadTagReply,
    WriteTag,
    parse_payload,
    reply_to,
)
from protocols.enip.spec import ClassCode, GeneralStatus, Service

_Status = GeneralStatus
_P = TypeVar("_P", ReadTag, WriteTag, ReadModifyWrite, AttributeList)
_U16 = struct.Struct("<H")
_U16_U16 = struct.Struct("<HH")
_U32 = struct.Struct("<I")
_REPLY_HEADER_BYTES = 4  # reply service, reserved, general status, additional status size
_TYPE_BYTES = 2

# 1756-PM020 "General Error" extended statuses (general status 0xFF).
GENERAL_ERROR = 0xFF
OFFSET_BEYOND_END = 0x2104
BEYOND_END_OF_OBJECT = 0x2105
DATA_TYPE_MISMATCH = 0x2107


@dataclass(frozen=True, slots=True)
class TagReply:
    reply: MessageRouterResponse
    ignored_bytes: int = 0  # service data after the fields the service defines


def _general(extended: int, text: str) -> TagError:
    return TagError(GENERAL_ERROR, (extended,), text)


def _payload(service: int, data: bytes, kind: type[_P]) -> _P:
    """The codec's reading of ``data``; its refusal becomes the controller's (same general status)."""
    try:
        payload = parse_payload(ClassCode.SYMBOL, service, data)
    except CipProtocolError as error:
        status = error.general_status or _Status.INVALID_PARAMETER_VALUE
        raise TagError(status, error.extended_status, str(error)) from None
    if not isinstance(payload, kind):
        raise TypeError(f"the codec read service 0x{service:02X} as {type(payload).__name__}")
    return payload


def _need(data: bytes, length: int) -> None:
    if len(data) < length:
        raise TagError(_Status.NOT_ENOUGH_DATA, (), f"{len(data)} bytes of service data, need {length}")


def _check_range(ref: Ref, count: int) -> None:
    if count == 0:
        raise TagError(_Status.INVALID_PARAMETER_VALUE, (), "no elements")
    if ref.start + count > ref.tag.count:
        raise _general(BEYOND_END_OF_OBJECT, f"{count} elements from {ref.text} run past the tag")


def _fit(data: bytes, size: int, space: int) -> tuple[int, bytes]:
    """As many whole elements of ``data`` as ``space`` takes: success, or 0x06 with those that fit."""
    if len(data) <= space:
        return _Status.SUCCESS, data
    fit = space // size * size
    if fit <= 0:
        raise TagError(_Status.REPLY_DATA_TOO_LARGE, (), "not one element fits the reply")
    return _Status.PARTIAL_TRANSFER, data[:fit]


# ---------------------------------------------------------------------------------------- reads


def read_tag(table: TagTable, request: MessageRouterRequest, room: int) -> TagReply:
    ref = table.resolve(request.path)
    payload = _payload(request.service, request.data[:2], ReadTag)
    tag, count = ref.tag, payload.element_count
    _check_range(ref, count)
    data = bytes(tag.data[ref.start * tag.size : (ref.start + count) * tag.size])
    status, data = _fit(data, tag.size, room - _REPLY_HEADER_BYTES - _TYPE_BYTES)
    reply = reply_to(request.service, status, (), ReadTagReply(tag.data_type, data).encode())
    return TagReply(reply, max(0, len(request.data) - 2))


def read_tag_fragmented(table: TagTable, request: MessageRouterRequest, room: int) -> TagReply:
    ref = table.resolve(request.path)
    payload = _payload(request.service, request.data[:6], ReadTag)
    tag, count, offset = ref.tag, payload.element_count, payload.byte_offset or 0
    _check_range(ref, count)
    first, total = ref.start * tag.size, count * tag.size
    if offset >= total:
        raise _general(OFFSET_BEYOND_END, f"byte offset {offset} of {total}")
    if offset % tag.size:
        raise TagError(_Status.INVALID_PARAMETER_VALUE, (), f"byte offset {offset} splits a {tag.type_name}")
    data = bytes(tag.data[first + offset : first + total])
    status, data = _fit(data, tag.size, room - _REPLY_HEADER_BYTES - _TYPE_BYTES)
    reply = reply_to(request.service, status, (), ReadTagReply(tag.data_type, data).encode())
    return TagReply(reply, max(0, len(request.data) - 6))


# --------------------------------------------------------------------------------------- writes


def _written_type(ref: Ref, data: bytes) -> None:
    _need(data, _TYPE_BYTES)
    (data_type,) = _U16.unpack_from(data)
    if data_type != ref.tag.data_type:
        raise _general(DATA_TYPE_MISMATCH, f"type 0x{data_type:04X} written to a {ref.tag.type_name}")


def write_tag(table: TagTable, request: MessageRouterRequest, room: int) -> TagReply:
    ref = table.resolve(request.path)
    data = request.data
    _written_type(ref, data)
    _need(data, 4)
    tag = ref.tag
    (count,) = _U16.unpack_from(data, 2)
    _check_range(ref, count)
    length = 4 + count * tag.size
    payload = _payload(request.service, data[:length], WriteTag)
    tag.write_bytes(ref.start * tag.size, payload.data)
    return TagReply(reply_to(request.service, _Status.SUCCESS), max(0, len(data) - length))


def write_tag_fragmented(table: TagTable, request: MessageRouterRequest, room: int) -> TagReply:
    ref = table.resolve(request.path)
    data = request.data
    _written_type(ref, data)
    _need(data, 8)
    tag = ref.tag
    count, offset = _U16.unpack_from(data, 2)[0], _U32.unpack_from(data, 4)[0]
    total = count * tag.size
    # A fragment is all the data there is: nothing after it can be told from the values.
    if offset >= total:
        raise _general(OFFSET_BEYOND_END, f"byte offset {offset} of {total}")
    if offset + len(data) - 8 > total:
        raise _general(BEYOND_END_OF_OBJECT, "the fragment runs past the elements of the transfer")
    _check_range(ref, count)
    payload = _payload(request.service, data, WriteTag)
    tag.write_bytes(ref.start * tag.size + offset, payload.data)
    return TagReply(reply_to(request.service, _Status.SUCCESS))


def read_modify_write(table: TagTable, request: MessageRouterRequest, room: int) -> TagReply:
    ref = table.resolve(request.path)
    data = request.data
    _need(data, 2)
    (size,) = _U16.unpack_from(data)
    payload = _payload(request.service, data[: 2 + 2 * size], ReadModifyWrite)
    tag = ref.tag
    if size > tag.size:
        raise TagError(_Status.INVALID_PARAMETER_VALUE, (), f"{size}-byte masks on a {tag.type_name}")
    at = ref.start * tag.size
    old = int.from_bytes(tag.data[at : at + size], "little")
    new = old & payload.and_mask | payload.or_mask
    tag.write_bytes(at, new.to_bytes(size, "little"))
    return TagReply(reply_to(request.service, _Status.SUCCESS), max(0, len(data) - 2 - 2 * size))


# ------------------------------------------------------------------------------- symbol listing


def _name(symbol: Symbol) -> bytes:
    name = symbol.name.encode("ascii")
    return _U16.pack(len(name)) + name


def _dimensions(symbol: Symbol) -> bytes:
    dims = symbol.tag.dims if symbol.tag else ()
    return struct.pack("<3I", *dims, *(0,) * (3 - len(dims)))


# Symbol object instance attributes as Logix lists them (pycomm3 asks 1, 2, 3, 5, 6, 8 and, from
# v18, 10; pylogix 1, 2, 8). Addresses are made up but stable: clients only carry them along.
SYMBOL_ATTRIBUTES: dict[int, Callable[[Symbol], bytes]] = {
    1: _name,
    2: lambda symbol: _U16.pack(symbol.symbol_type),
    3: lambda symbol: _U32.pack(0x2000_0000 + symbol.instance * 0x40),
    5: lambda symbol: _U32.pack(0x4000_0000 + symbol.instance * 0x20),
    6: lambda symbol: _U32.pack(BASE_TAG_BIT if symbol.tag else 0),
    7: lambda symbol: _U16.pack(symbol.tag.size if symbol.tag else 0),
    8: _dimensions,
    10: lambda symbol: bytes((EXTERNAL_READ_WRITE,)),
}


def _listing_start(table: TagTable, request: MessageRouterRequest) -> tuple[Scope, int]:
    """``[Program:Name] class 0x6B, instance N``: the scope and the first instance to list."""
    scope, segments = table.scope_of(request.path)
    if len(segments) == 2 and logical_value(segments[0], LogicalType.CLASS_ID) == ClassCode.SYMBOL:
        start = logical_value(segments[1], LogicalType.INSTANCE_ID)
        if start is not None:
            return scope, start
    raise path_error("Get Instance Attribute List takes class 0x6B and a start instance")


def get_instance_attribute_list(table: TagTable, request: MessageRouterRequest, room: int) -> TagReply:
    scope, start = _listing_start(table, request)
    data = request.data
    _need(data, 2)
    (count,) = _U16.unpack_from(data)
    payload = _payload(request.service, data[: 2 + 2 * count], AttributeList)
    encoders = []
    for attribute in payload.attribute_ids:
        encoder = SYMBOL_ATTRIBUTES.get(attribute)
        if encoder is None:
            raise TagError(_Status.ATTRIBUTE_NOT_SUPPORTED, (), f"symbol attribute {attribute}")
        encoders.append(encoder)
    space = room - _REPLY_HEADER_BYTES
    out = bytearray()
    status = _Status.SUCCESS
    for symbol in scope.from_instance(start):
        entry = _U32.pack(symbol.instance) + b"".join(encode(symbol) for encode in encoders)
        if len(out) + len(entry) > space:
            # The client asks again from the instance after the last one it got.
            if not out:
                raise TagError(_Status.REPLY_DATA_TOO_LARGE, (), "not one symbol fits the reply")
            status = _Status.PARTIAL_TRANSFER
            break
        out += entry
    return TagReply(reply_to(request.service, status, (), bytes(out)), max(0, len(data) - 2 - 2 * count))


TAG_SERVICES: dict[int, Callable[[TagTable, MessageRouterRequest, int], TagReply]] = {
    Service.READ_TAG: read_tag,
    Service.READ_TAG_FRAGMENTED: read_tag_fragmented,
    Service.WRITE_TAG: write_tag,
    Service.WRITE_TAG_FRAGMENTED: write_tag_fragmented,
    Service.READ_MODIFY_WRITE_TAG: read_modify_write,
    Service.GET_INSTANCE_ATTRIBUTE_LIST: get_instance_attribute_list,
}

WRITE_SERVICES = frozenset((Service.WRITE_TAG, Service.WRITE_TAG_FRAGMENTED, Service.READ_MODIFY_WRITE_TAG))


def tag_service(table: TagTable, request: MessageRouterRequest, room: int) -> TagReply:
    """Answer a request on the Symbol object (by name or by class 0x6B); errors become replies."""
    handler = TAG_SERVICES.get(request.service)
    if handler is None:
        return TagReply(reply_to(request.service, _Status.SERVICE_NOT_SUPPORTED))
    try:
        return handler(table, request, room)
    except TagError as error:
        return TagReply(reply_to(request.service, error.general_status, error.extended_status))


__all__ = [
    "BEYOND_END_OF_OBJECT",
    "DATA_TYPE_MISMATCH",
    "GENERAL_ERROR",
    "OFFSET_BEYOND_END",
    "SYMBOL_ATTRIBUTES",
    "TAG_SERVICES",
    "WRITE_SERVICES",
    "TagReply",
    "get_instance_attribute_list",
    "read_modify_write",
    "read_tag",
    "read_tag_fragmented",
    "tag_service",
    "write_tag",
    "write_tag_fragmented",
]
