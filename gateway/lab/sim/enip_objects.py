"""The CIP objects of the EtherNet/IP soft PLC besides its tags: Identity (0x01) and what ListIdentity
tells, the Connection Manager's class 3 connections (0x06: Forward Open, Large Forward Open, Forward
Close), and objects of plain attributes: Program Name (0x64), Wall Clock Time (0x8B) and TCP/IP
Interface (0xF5). The message router in ``enip_router`` dispatches to them; service data is parsed with
the codec in ``protocols.enip`` and replies are the codec's ``MessageRouterResponse``.
"""

from __future__ import annotations

import itertools
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from protocols.enip import (
    EPath,
    ForwardClose,
    ForwardCloseReply,
    ForwardOpen,
    ForwardOpenFailure,
    ForwardOpenReply,
    IdentityItem,
    LogicalSegment,
    LogicalType,
    MessageRouterRequest,
    MessageRouterResponse,
    reply_to,
)
from protocols.enip.spec import ClassCode, ConnectionManagerStatus, GeneralStatus, Service

_Status = GeneralStatus
_CM = ConnectionManagerStatus
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

UNCONNECTED_ROOM = 504  # bytes of message router reply a Logix controller sends unconnected
MIN_LARGE_FORWARD_OPEN_REVISION = 20  # Large Forward Open came with Logix v20
MAX_CONNECTION_SIZE = 511  # a Forward Open's 9-bit size field
MIN_CONNECTION_SIZE = 2 + 6  # a sequence count and a reply header with one extended status word
MAX_LARGE_CONNECTION_SIZE = 4002  # what a Logix controller accepts (pylogix asks exactly this)


@dataclass(frozen=True, slots=True)
class Identity:
    """What the Identity object and ListIdentity tell. Revision 20.11 by default: pycomm3 addresses tags
    by name below v21 and by symbol instance from v21 on, and asks for external access from v18."""

    vendor_id: int = 1  # Rockwell Automation/Allen-Bradley
    device_type: int = 0x0E  # programmable logic controller
    product_code: int = 55
    revision: tuple[int, int] = (20, 11)
    serial_number: int = 0x5A7E_0001
    product_name: str = "1756-L71/B ztgate sim"
    status: int = 0x3060  # owned, running, keyswitch in REMOTE RUN (pycomm3 reads it so)
    controller_name: str = "ZTGATE_SIM"  # the program name (class 0x64) pycomm3 shows as the PLC's name

    def __post_init__(self) -> None:
        major, minor = self.revision
        if not (1 <= major <= 0x7F and 0 <= minor <= 0xFF):
            raise ValueError(f"revision {major}.{minor}: major 1-127, minor 0-255")
        if len(self.product_name.encode("latin-1")) > 32:
            raise ValueError("the product name is a SHORT_STRING of at most 32 characters")

    def attributes(self) -> dict[int, bytes]:
        name = self.product_name.encode("latin-1")
        return {
            1: _U16.pack(self.vendor_id),
            2: _U16.pack(self.device_type),
            3: _U16.pack(self.product_code),
            4: bytes(self.revision),
            5: _U16.pack(self.status),
            6: _U32.pack(self.serial_number),
            7: bytes((len(name),)) + name,
        }

    def item(self, port: int, address: int) -> IdentityItem:
        major, minor = self.revision
        return IdentityItem(
            self.vendor_id,
            self.device_type,
            self.product_code,
            major,
            minor,
            self.status,
            self.serial_number,
            self.product_name,
            state=3,  # operational
            sin_port=port,
            sin_addr=address,
        )


@dataclass(slots=True)
class Connection:
    """A class 3 connection: the client sends on ``o_t_id`` (ours), we answer on ``t_o_id`` (its)."""

    o_t_id: int
    t_o_id: int
    triad: tuple[int, int, int]
    session: int
    o_t_size: int
    t_o_size: int
    last_sequence: int | None = None
    last_reply: bytes = b""  # answered again, not executed again, for a repeated sequence count

    @property
    def room(self) -> int:
        """Message router reply bytes per packet: the T->O size less the 2-byte sequence count."""
        return self.t_o_size - 2


def _failure(
    service: int, extended: tuple[int, ...], request: ForwardOpen | ForwardClose
) -> MessageRouterResponse:
    """Connection failure (0x01) with the Connection Manager's extended status and the triad."""
    serial, vendor, originator = request.triad
    data = ForwardOpenFailure(serial, vendor, originator).encode()
    return reply_to(service, _Status.CONNECTION_FAILURE, tuple(map(int, extended)), data)


def _check_connection_path(path: EPath) -> int | None:
    """A connection to this controller's message router: ``[1/0] class 0x02 instance 1``. The extended
    status for anything else (None when the path is good)."""
    for port in path.route:
        if port.port != 1:
            return _CM.INVALID_PORT
        if port.link != b"\x00":
            return _CM.INVALID_LINK_ADDRESS
    logical = [(s.logical_type, s.value) for s in path.segments if isinstance(s, LogicalSegment)]
    if logical != [(LogicalType.CLASS_ID, ClassCode.MESSAGE_ROUTER), (LogicalType.INSTANCE_ID, 1)]:
        return _CM.INVALID_SEGMENT_IN_CONNECTION_PATH
    return None


class ConnectionManager:
    """Class 3 connections made by Forward Open, capped in number, each bound to its session."""

    def __init__(
        self, *, max_connections: int, large_forward_open: bool, max_size: int | None = None
    ) -> None:
        self.max_connections = max_connections
        self.large_forward_open = large_forward_open
        self.max_size = max_size  # a smaller device than a Logix controller
        self._by_id: dict[int, Connection] = {}
        self._ids = itertools.count(0x0E5E_0001)

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, o_t_id: int) -> Connection | None:
        return self._by_id.get(o_t_id)

    def forward_open(self, request: ForwardOpen, session: int) -> MessageRouterResponse:
        service = request.service
        if request.transport_class != 3:
            return _failure(service, (_CM.TRANSPORT_CLASS_NOT_SUPPORTED,), request)
        path_status = _check_connection_path(request.connection_path)
        if path_status is not None:
            return _failure(service, (path_status,), request)
        limit = MAX_LARGE_CONNECTION_SIZE if request.large else MAX_CONNECTION_SIZE
        limit = limit if self.max_size is None else min(limit, self.max_size)
        for size in (request.o_t.size, request.t_o.size):
            # At least a sequence count and a reply header; the second word tells the size supported.
            if not MIN_CONNECTION_SIZE <= size <= limit:
                return _failure(service, (_CM.INVALID_CONNECTION_SIZE, limit), request)
        if any(connection.triad == request.triad for connection in self._by_id.values()):
            return _failure(service, (_CM.CONNECTION_IN_USE,), request)
        if len(self._by_id) >= self.max_connections:
            return _failure(service, (_CM.OUT_OF_CONNECTIONS,), request)
        o_t_id = next(self._ids)
        self._by_id[o_t_id] = Connection(
            o_t_id, request.t_o_connection_id, request.triad, session, request.o_t.size, request.t_o.size
        )
        serial, vendor, originator = request.triad
        reply = ForwardOpenReply(
            o_t_id, request.t_o_connection_id, serial, vendor, originator, request.o_t_rpi, request.t_o_rpi
        )
        return reply_to(service, _Status.SUCCESS, (), reply.encode())

    def forward_close(self, request: ForwardClose) -> MessageRouterResponse:
        for o_t_id, connection in self._by_id.items():
            if connection.triad == request.triad:
                del self._by_id[o_t_id]
                reply = ForwardCloseReply(*request.triad)
                return reply_to(Service.FORWARD_CLOSE, _Status.SUCCESS, (), reply.encode())
        return _failure(Service.FORWARD_CLOSE, (_CM.CONNECTION_NOT_FOUND,), request)

    def drop_session(self, session: int) -> None:
        """A session's connections end with it."""
        for o_t_id in [i for i, c in self._by_id.items() if c.session == session]:
            del self._by_id[o_t_id]


# ------------------------------------------------------------------------------------ attributes


def string_attribute(text: str) -> bytes:
    """A CIP STRING: UINT length, then the characters."""
    raw = text.encode("latin-1")
    return _U16.pack(len(raw)) + raw


_Getter = Callable[[], bytes]


class AttributeObject:
    """An object of fixed instance attributes: Get_Attributes_All (those listed in ``all_order``),
    Get_Attribute_Single, Get_Attribute_List, and Set_Attribute_Single/List of the settable ones."""

    def __init__(
        self,
        attributes: dict[tuple[int, int], _Getter],
        all_order: dict[int, tuple[int, ...]],
        setters: dict[tuple[int, int], Callable[[bytes], None]] | None = None,
    ) -> None:
        self.attributes = attributes
        self.all_order = all_order
        self.setters = setters or {}
        self.instances = frozenset(instance for instance, _ in attributes)

    def handle(self, request: MessageRouterRequest) -> MessageRouterResponse:
        service, path = request.service, request.path
        instance = path.instance_id
        if instance not in self.instances:
            return reply_to(service, _Status.PATH_DESTINATION_UNKNOWN)
        attribute = path.attribute_id
        if service == Service.GET_ATTRIBUTES_ALL and attribute is None and instance in self.all_order:
            # Data after the path (pycomm3 appends its route there) is ignored, as a controller does.
            data = b"".join(self.attributes[instance, a]() for a in self.all_order[instance])
            return reply_to(service, _Status.SUCCESS, (), data)
        if service == Service.GET_ATTRIBUTE_SINGLE and attribute is not None:
            getter = self.attributes.get((instance, attribute))
            if getter is None:
                return reply_to(service, _Status.ATTRIBUTE_NOT_SUPPORTED)
            return reply_to(service, _Status.SUCCESS, (), getter())
        if service == Service.SET_ATTRIBUTE_SINGLE and attribute is not None:
            return reply_to(service, self._set(instance, attribute, request.data))
        if service in (Service.GET_ATTRIBUTE_LIST, Service.SET_ATTRIBUTE_LIST) and attribute is None:
            return self._list(service, instance, request.data)
        return reply_to(service, _Status.SERVICE_NOT_SUPPORTED)

    def _set(self, instance: int, attribute: int, data: bytes) -> int:
        setter = self.setters.get((instance, attribute))
        if setter is None:
            known = (instance, attribute) in self.attributes
            return _Status.ATTRIBUTE_NOT_SETTABLE if known else _Status.ATTRIBUTE_NOT_SUPPORTED
        size = len(self.attributes[instance, attribute]())  # the settable attributes have fixed sizes
        if len(data) != size:
            return _Status.NOT_ENOUGH_DATA if len(data) < size else _Status.TOO_MUCH_DATA
        try:
            setter(data)
        except ValueError:
            return _Status.INVALID_ATTRIBUTE_VALUE
        return _Status.SUCCESS

    def _list(self, service: int, instance: int, data: bytes) -> MessageRouterResponse:
        """Count, then per attribute its id (and for a set, its value); the reply gives id, status and
        (for a get that worked) the value. A failed attribute makes the whole reply 0x0A."""
        if len(data) < 2:
            return reply_to(service, _Status.NOT_ENOUGH_DATA)
        (count,) = _U16.unpack_from(data)
        offset, out, failed = 2, [_U16.pack(count)], False
        for _ in range(count):
            if offset + 2 > len(data):
                return reply_to(service, _Status.NOT_ENOUGH_DATA)
            (attribute,) = _U16.unpack_from(data, offset)
            offset += 2
            value, status = b"", _Status.SUCCESS.value
            if service == Service.GET_ATTRIBUTE_LIST:
                getter = self.attributes.get((instance, attribute))
                if getter is None:
                    status = _Status.ATTRIBUTE_NOT_SUPPORTED
                else:
                    value = getter()
            else:
                # Set values have the size of their attribute; one the object does not have ends the list.
                size = (
                    len(self.attributes[instance, attribute]())
                    if (instance, attribute) in self.attributes
                    else 0
                )
                if not size or offset + size > len(data):
                    return reply_to(
                        service, _Status.NOT_ENOUGH_DATA if size else _Status.ATTRIBUTE_LIST_ERROR
                    )
                status = self._set(instance, attribute, data[offset : offset + size])
                offset += size
            failed |= status != _Status.SUCCESS
            out.append(_U16.pack(attribute) + _U16.pack(status) + value)
        general = _Status.ATTRIBUTE_LIST_ERROR if failed else _Status.SUCCESS
        return reply_to(service, general, (), b"".join(out))


class WallClock:
    """Wall Clock Time (0x8B) instance 1: attribute 6 (and 11) the UTC time in microseconds, settable
    as an offset to the host's clock; attribute 10 the DST flag."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._offset_us = 0
        self.dst = 0

    def now_us(self) -> int:
        return int(self._clock() * 1_000_000) + self._offset_us

    def set_us(self, data: bytes) -> None:
        (value,) = _U64.unpack(data)
        self._offset_us = value - int(self._clock() * 1_000_000)

    def set_dst(self, data: bytes) -> None:
        if data[0] > 1:
            raise ValueError("DST is 0 or 1")
        self.dst = data[0]

    def object(self) -> AttributeObject:
        now = lambda: _U64.pack(self.now_us())  # noqa: E731 - two attributes read the same clock
        return AttributeObject(
            {(1, 6): now, (1, 10): lambda: bytes((self.dst,)), (1, 11): now},
            {},
            {(1, 6): self.set_us, (1, 10): self.set_dst, (1, 11): self.set_us},
        )


def tcp_ip_object(host_address: int, host_name: str) -> AttributeObject:
    """TCP/IP Interface (0xF5) instance 1, read-only here: status, capability, configuration control,
    physical link, interface configuration and host name (a Set is answered 0x0E, not settable)."""
    config = struct.pack("<5I", host_address, 0xFF00_0000, 0, 0, 0) + string_attribute("")
    return AttributeObject(
        {
            (1, 1): lambda: _U32.pack(1),  # a valid configuration
            (1, 2): lambda: _U32.pack(0x14),  # settable configuration, DHCP capable
            (1, 3): lambda: _U32.pack(0),  # static configuration
            (1, 4): lambda: bytes((2, 0, 0x20, 0xF6, 0x24, 0x01)),  # the Ethernet Link object, instance 1
            (1, 5): lambda: config,
            (1, 6): lambda: string_attribute(host_name),
        },
        {1: (1, 2, 3, 4, 5, 6)},
    )


__all__ = [
    "MAX_LARGE_CONNECTION_SIZE",
    "UNCONNECTED_ROOM",
    "AttributeObject",
    "Connection",
    "ConnectionManager",
    "Identity",
    "WallClock",
    "string_attribute",
    "tcp_ip_object",
]
