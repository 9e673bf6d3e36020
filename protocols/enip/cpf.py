"""Common Packet Format (Vol 2 §2-6): the item list inside SendRRData, SendUnitData, ListIdentity and
ListServices.

An item is a type id (UINT), a length (UINT) and that many bytes. Items the gateway knows are parsed into
typed items whose fixed lengths are checked; any other type stays an :class:`UnknownItem` for the caller
to refuse. A malformed list raises :class:`CipProtocolError` with encapsulation status 0x0003 (incorrect
data): the encapsulation frame itself was intact.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from protocols.enip.errors import CipProtocolError
from protocols.enip.spec import (
    DEFAULT_LIMITS,
    LIST_SERVICES_NAME_BYTES,
    SOCKADDR_BYTES,
    CipLimits,
    CpfItemType,
    EncapsulationStatus,
)

_U16 = struct.Struct("<H")
_ITEM_HEADER = struct.Struct("<HH")
_CONNECTED_ADDRESS = struct.Struct("<I")
_SEQUENCED_ADDRESS = struct.Struct("<II")
_SOCKADDR = struct.Struct(">hHI8s")  # sin_family, sin_port, sin_addr, sin_zero: big-endian, as in BSD
_IDENTITY_HEAD = struct.Struct("<H")  # encapsulation protocol version, then a sockaddr
_IDENTITY_BODY = struct.Struct("<HHHBBHI")  # vendor, device type, product code, revision, status, serial
_SERVICE = struct.Struct(f"<HH{LIST_SERVICES_NAME_BYTES}s")


def _bad(message: str) -> CipProtocolError:
    return CipProtocolError(message, encapsulation_status=EncapsulationStatus.INCORRECT_DATA)


@dataclass(frozen=True, slots=True)
class NullAddressItem:
    @property
    def type_id(self) -> int:
        return CpfItemType.NULL_ADDRESS

    def encode_data(self) -> bytes:
        return b""


@dataclass(frozen=True, slots=True)
class ConnectedAddressItem:
    connection_id: int

    @property
    def type_id(self) -> int:
        return CpfItemType.CONNECTED_ADDRESS

    def encode_data(self) -> bytes:
        return _CONNECTED_ADDRESS.pack(self.connection_id)


@dataclass(frozen=True, slots=True)
class SequencedAddressItem:
    connection_id: int
    sequence: int

    @property
    def type_id(self) -> int:
        return CpfItemType.SEQUENCED_ADDRESS

    def encode_data(self) -> bytes:
        return _SEQUENCED_ADDRESS.pack(self.connection_id, self.sequence)


@dataclass(frozen=True, slots=True)
class UnconnectedDataItem:
    """An unconnected message: one message router request or reply."""

    message: bytes

    @property
    def type_id(self) -> int:
        return CpfItemType.UNCONNECTED_DATA

    def encode_data(self) -> bytes:
        return self.message


@dataclass(frozen=True, slots=True)
class ConnectedDataItem:
    """A class 3 connected message: the 16-bit sequence count, then a message router request or reply."""

    sequence: int
    message: bytes

    @property
    def type_id(self) -> int:
        return CpfItemType.CONNECTED_DATA

    def encode_data(self) -> bytes:
        return _U16.pack(self.sequence) + self.message


@dataclass(frozen=True, slots=True)
class SockaddrItem:
    """Where UDP I/O for a connection goes (O->T 0x8000, T->O 0x8001)."""

    type_id: int
    family: int
    port: int
    address: int

    def encode_data(self) -> bytes:
        return _SOCKADDR.pack(self.family, self.port, self.address, bytes(8))


@dataclass(frozen=True, slots=True)
class IdentityItem:
    """The ListIdentity reply item (Vol 2 §2-4.3.2), which the gateway builds from configuration."""

    vendor_id: int
    device_type: int
    product_code: int
    revision_major: int
    revision_minor: int
    status: int
    serial_number: int
    product_name: str
    state: int = 0xFF
    protocol_version: int = 1
    sin_family: int = 2  # AF_INET
    sin_port: int = 44818
    sin_addr: int = 0

    @property
    def type_id(self) -> int:
        return CpfItemType.LIST_IDENTITY

    def encode_data(self) -> bytes:
        name = self.product_name.encode("latin-1")
        return b"".join(
            (
                _IDENTITY_HEAD.pack(self.protocol_version),
                _SOCKADDR.pack(self.sin_family, self.sin_port, self.sin_addr, bytes(8)),
                _IDENTITY_BODY.pack(
                    self.vendor_id,
                    self.device_type,
                    self.product_code,
                    self.revision_major,
                    self.revision_minor,
                    self.status,
                    self.serial_number,
                ),
                bytes((len(name),)),
                name,
                bytes((self.state,)),
            )
        )


@dataclass(frozen=True, slots=True)
class ServiceItem:
    """The ListServices reply item: the "Communications" service and what it can carry."""

    capability_flags: int
    name: str = "Communications"
    protocol_version: int = 1

    @property
    def type_id(self) -> int:
        return CpfItemType.LIST_SERVICES

    def encode_data(self) -> bytes:
        return _SERVICE.pack(self.protocol_version, self.capability_flags, self.name.encode("ascii"))


@dataclass(frozen=True, slots=True)
class UnknownItem:
    type_id: int
    data: bytes

    def encode_data(self) -> bytes:
        return self.data


CpfItem = (
    NullAddressItem
    | ConnectedAddressItem
    | SequencedAddressItem
    | UnconnectedDataItem
    | ConnectedDataItem
    | SockaddrItem
    | IdentityItem
    | ServiceItem
    | UnknownItem
)

# ------------------------------------------------------------------------------------------- parsing


def _exact(size: int, build: Callable[[bytes], CpfItem]) -> Callable[[int, bytes], CpfItem]:
    def parse(type_id: int, data: bytes) -> CpfItem:
        if len(data) != size:
            raise _bad(f"CPF item 0x{type_id:04X} of {len(data)} bytes, expected {size}")
        return build(data)

    return parse


def _parse_connected_data(type_id: int, data: bytes) -> CpfItem:
    if len(data) < 2:
        raise _bad("connected data item without a sequence count")
    return ConnectedDataItem(_U16.unpack_from(data)[0], data[2:])


def _parse_sockaddr(type_id: int, data: bytes) -> CpfItem:
    if len(data) != SOCKADDR_BYTES:
        raise _bad(f"sockaddr item of {len(data)} bytes")
    family, port, address, zero = _SOCKADDR.unpack(data)
    if any(zero):
        raise _bad("sockaddr sin_zero is not zero")
    return SockaddrItem(type_id, family, port, address)


def _parse_identity(type_id: int, data: bytes) -> CpfItem:
    fixed = _IDENTITY_HEAD.size + _SOCKADDR.size + _IDENTITY_BODY.size
    if len(data) < fixed + 2:
        raise _bad("ListIdentity item too short")
    (version,) = _IDENTITY_HEAD.unpack_from(data)
    family, port, address, zero = _SOCKADDR.unpack_from(data, _IDENTITY_HEAD.size)
    vendor, device_type, product, major, minor, status, serial = _IDENTITY_BODY.unpack_from(
        data, _IDENTITY_HEAD.size + _SOCKADDR.size
    )
    name_length = data[fixed]
    if len(data) != fixed + 1 + name_length + 1 or any(zero):
        raise _bad("ListIdentity item length does not match its product name")
    name = data[fixed + 1 : fixed + 1 + name_length].decode("latin-1")
    return IdentityItem(
        vendor,
        device_type,
        product,
        major,
        minor,
        status,
        serial,
        name,
        data[-1],
        version,
        family,
        port,
        address,
    )


def _parse_service(type_id: int, data: bytes) -> CpfItem:
    if len(data) != _SERVICE.size:
        raise _bad(f"ListServices item of {len(data)} bytes")
    version, flags, raw = _SERVICE.unpack(data)
    name = raw.rstrip(b"\x00")
    if b"\x00" in name or not name.isascii():
        raise _bad("ListServices name is not a NUL-padded ASCII string")
    return ServiceItem(flags, name.decode("ascii"), version)


_ITEM_PARSERS: dict[int, Callable[[int, bytes], CpfItem]] = {
    CpfItemType.NULL_ADDRESS: _exact(0, lambda data: NullAddressItem()),
    CpfItemType.CONNECTED_ADDRESS: _exact(
        4, lambda data: ConnectedAddressItem(*_CONNECTED_ADDRESS.unpack(data))
    ),
    CpfItemType.SEQUENCED_ADDRESS: _exact(
        8, lambda data: SequencedAddressItem(*_SEQUENCED_ADDRESS.unpack(data))
    ),
    CpfItemType.UNCONNECTED_DATA: lambda type_id, data: UnconnectedDataItem(data),
    CpfItemType.CONNECTED_DATA: _parse_connected_data,
    CpfItemType.SOCKADDR_O_T: _parse_sockaddr,
    CpfItemType.SOCKADDR_T_O: _parse_sockaddr,
    CpfItemType.LIST_IDENTITY: _parse_identity,
    CpfItemType.LIST_SERVICES: _parse_service,
}


def parse_cpf(data: bytes, *, limits: CipLimits = DEFAULT_LIMITS) -> tuple[CpfItem, ...]:
    """Parse an item count and exactly that many items filling all of ``data``."""
    if len(data) < 2:
        raise _bad("CPF without an item count")
    (count,) = _U16.unpack_from(data)
    if count > limits.max_cpf_items:
        raise _bad(f"{count} CPF items exceed the cap of {limits.max_cpf_items}")
    items: list[CpfItem] = []
    offset = 2
    for _ in range(count):
        if offset + _ITEM_HEADER.size > len(data):
            raise _bad("CPF item header runs past the data")
        type_id, length = _ITEM_HEADER.unpack_from(data, offset)
        offset += _ITEM_HEADER.size
        if offset + length > len(data):
            raise _bad(f"CPF item 0x{type_id:04X} of {length} bytes runs past the data")
        body = data[offset : offset + length]
        offset += length
        parser = _ITEM_PARSERS.get(type_id)
        items.append(UnknownItem(type_id, body) if parser is None else parser(type_id, body))
    if offset != len(data):
        raise _bad(f"{len(data) - offset} bytes after the last CPF item")
    return tuple(items)


def encode_cpf(items: Iterable[CpfItem]) -> bytes:
    items = tuple(items)
    out = bytearray(_U16.pack(len(items)))
    for item in items:
        body = item.encode_data()
        out += _ITEM_HEADER.pack(item.type_id, len(body)) + body
    return bytes(out)


__all__ = [
    "ConnectedAddressItem",
    "ConnectedDataItem",
    "CpfItem",
    "IdentityItem",
    "NullAddressItem",
    "SequencedAddressItem",
    "ServiceItem",
    "SockaddrItem",
    "UnconnectedDataItem",
    "UnknownItem",
    "encode_cpf",
    "parse_cpf",
]
