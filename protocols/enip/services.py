"""The services that carry or set up other messages: Unconnected Send, Forward Open, Large Forward Open and
Forward Close on the Connection Manager (Vol 1 §3-5.5), and the Multiple Service Packet on the Message
Router (Vol 1 Appendix A-4.10).

Each parses its service data strictly (exact lengths, reserved bytes zero, offsets in order and
contiguous), so that what the gateway decides on is the only way the bytes can be read, and encodes back
to the same bytes.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from protocols.enip.epath import EPath, check_connection_path, check_route_path, parse_epath
from protocols.enip.errors import cip_error
from protocols.enip.message_router import MessageRouterRequest, MessageRouterResponse, parse_request
from protocols.enip.spec import DEFAULT_LIMITS, CipLimits, GeneralStatus, Service

_Status = GeneralStatus
_U16 = struct.Struct("<H")
_UNCONNECTED_SEND = struct.Struct("<BBH")
_FORWARD_OPEN = struct.Struct("<BBIIHHIB3sIHIHBB")
_LARGE_FORWARD_OPEN = struct.Struct("<BBIIHHIB3sIIIIBB")
_FORWARD_OPEN_REPLY = struct.Struct("<IIHHIIIBB")
_FORWARD_OPEN_FAILURE = struct.Struct("<HHIBB")
_FORWARD_CLOSE = struct.Struct("<BBHHIBB")
_FORWARD_CLOSE_REPLY = struct.Struct("<HHIBB")
_TRIAD = struct.Struct("<HHI")
# Where the connection triad starts in each Connection Manager request (after the tick, the timeout and,
# for Forward Open, the two connection ids).
_TRIAD_OFFSETS = {Service.FORWARD_OPEN: 10, Service.LARGE_FORWARD_OPEN: 10, Service.FORWARD_CLOSE: 2}


def _exact_length(data: bytes, length: int, what: str, service: int) -> None:
    if len(data) < length:
        raise cip_error(
            _Status.NOT_ENOUGH_DATA, f"{what}: {len(data)} bytes, expected {length}", service=service
        )
    if len(data) > length:
        raise cip_error(
            _Status.TOO_MUCH_DATA, f"{what}: {len(data)} bytes, expected {length}", service=service
        )


def _path(data: bytes, offset: int, words: int, what: str, service: int, limits: CipLimits) -> EPath:
    _exact_length(data, offset + 2 * words, what, service)
    return parse_epath(data[offset:], limits=limits)


# ---------------------------------------------------------------------------------- Unconnected Send


@dataclass(frozen=True, slots=True)
class UnconnectedSend:
    """A request for a device along ``route`` (port segments); the reply is the embedded request's own."""

    request: MessageRouterRequest
    route: EPath
    priority_time_tick: int = 0x0A
    timeout_ticks: int = 0x05

    def encode(self) -> bytes:
        message = self.request.encode()
        route = self.route.encode()
        pad = b"\x00" if len(message) & 1 else b""
        head = _UNCONNECTED_SEND.pack(self.priority_time_tick, self.timeout_ticks, len(message))
        return head + message + pad + bytes((len(route) // 2, 0)) + route


def parse_unconnected_send(data: bytes, *, limits: CipLimits = DEFAULT_LIMITS) -> UnconnectedSend:
    """Priority/time tick, timeout ticks, message size, message, pad to even, route size (words),
    reserved, route path."""
    service = Service.UNCONNECTED_SEND
    if len(data) < _UNCONNECTED_SEND.size:
        raise cip_error(_Status.NOT_ENOUGH_DATA, "Unconnected Send shorter than its header", service=service)
    tick, timeout, size = _UNCONNECTED_SEND.unpack_from(data)
    start = _UNCONNECTED_SEND.size
    end = start + size + (size & 1)
    if end + 2 > len(data):
        raise cip_error(
            _Status.NOT_ENOUGH_DATA, "Unconnected Send message runs past the data", service=service
        )
    if size & 1 and data[end - 1]:
        raise cip_error(
            _Status.INVALID_PARAMETER_VALUE, "Unconnected Send pad byte not zero", service=service
        )
    words, reserved = data[end], data[end + 1]
    if reserved:
        raise cip_error(
            _Status.INVALID_PARAMETER_VALUE, "Unconnected Send reserved byte not zero", service=service
        )
    route = _path(data, end + 2, words, "Unconnected Send route", service, limits)
    check_route_path(route)
    request = parse_request(data[start : start + size], limits=limits)
    return UnconnectedSend(request, route, tick, timeout)


# --------------------------------------------------------------------------- Multiple Service Packet


def _split(data: bytes, *, limits: CipLimits, reply: bool) -> tuple[bytes, ...]:
    """Count (UINT), offsets from the start of the count (UINT each), then the messages back to back."""
    status = _Status.INVALID_REPLY_RECEIVED if reply else _Status.NOT_ENOUGH_DATA
    service = Service.MULTIPLE_SERVICE_PACKET
    if len(data) < 2:
        raise cip_error(status, "Multiple Service Packet without a count", service=service)
    (count,) = _U16.unpack_from(data)
    if count == 0:
        raise cip_error(status, "Multiple Service Packet of no services", service=service)
    if count > limits.max_services:
        raise cip_error(
            _Status.INVALID_REPLY_RECEIVED if reply else _Status.RESOURCE_UNAVAILABLE,
            f"{count} services in a Multiple Service Packet exceed the cap of {limits.max_services}",
            service=service,
        )
    table_end = 2 + 2 * count
    if table_end > len(data):
        raise cip_error(status, "Multiple Service Packet offsets run past the data", service=service)
    offsets = [*struct.unpack_from(f"<{count}H", data, 2), len(data)]
    if offsets[0] != table_end:
        raise cip_error(
            _Status.INVALID_REPLY_RECEIVED if reply else _Status.INVALID_PARAMETER_VALUE,
            f"first offset {offsets[0]} is not the end of the offset table ({table_end})",
            service=service,
        )
    parts = []
    for start, end in itertools.pairwise(offsets):
        # Each message at least a service and a size byte; offsets in order, so no two messages overlap.
        if end - start < 2:
            raise cip_error(
                _Status.INVALID_REPLY_RECEIVED if reply else _Status.INVALID_PARAMETER_VALUE,
                f"embedded message at offset {start} is {end - start} bytes",
                service=service,
            )
        parts.append(data[start:end])
    return tuple(parts)


def split_multiple_service_packet(data: bytes, *, limits: CipLimits = DEFAULT_LIMITS) -> tuple[bytes, ...]:
    """The embedded requests of a Multiple Service Packet, as bytes (each parsed on its own)."""
    return _split(data, limits=limits, reply=False)


def split_multiple_service_reply(data: bytes, *, limits: CipLimits = DEFAULT_LIMITS) -> tuple[bytes, ...]:
    return _split(data, limits=limits, reply=True)


def join_messages(messages: Sequence[bytes]) -> bytes:
    """Count, offsets and messages: the data of a Multiple Service Packet request or reply."""
    offset = 2 + 2 * len(messages)
    offsets = []
    for message in messages:
        offsets.append(offset)
        offset += len(message)
    return struct.pack(f"<H{len(messages)}H", len(messages), *offsets) + b"".join(messages)


def join_requests(requests: Sequence[MessageRouterRequest]) -> bytes:
    return join_messages([request.encode() for request in requests])


def join_responses(responses: Sequence[MessageRouterResponse]) -> bytes:
    return join_messages([response.encode() for response in responses])


# ------------------------------------------------------------------------ Forward Open / Forward Close


@dataclass(frozen=True, slots=True)
class ConnectionParameters:
    """A network connection parameters word (16 bits; 32 bits in a Large Forward Open)."""

    size: int
    variable: bool  # bit 9 (25): variable-size connection
    priority: int  # bits 10-11 (26-27): 0 low, 1 high, 2 scheduled, 3 urgent
    connection_type: int  # bits 13-14 (29-30): 0 null, 1 multicast, 2 point to point
    redundant_owner: bool  # bit 15 (31)

    @classmethod
    def decode(cls, word: int, *, large: bool) -> ConnectionParameters:
        flags = word >> 16 if large else word & 0xFE00
        size = word & 0xFFFF if large else word & 0x01FF
        return cls(size, bool(flags & 0x0200), flags >> 10 & 3, flags >> 13 & 3, bool(flags & 0x8000))


@dataclass(frozen=True, slots=True)
class ForwardOpen:
    """Forward Open (0x54) and Large Forward Open (0x5B) requests: every field, raw parameter words kept."""

    large: bool
    priority_time_tick: int
    timeout_ticks: int
    o_t_connection_id: int
    t_o_connection_id: int
    connection_serial: int
    originator_vendor_id: int
    originator_serial: int
    timeout_multiplier: int
    o_t_rpi: int
    o_t_parameters: int
    t_o_rpi: int
    t_o_parameters: int
    transport_class_trigger: int
    connection_path: EPath

    @property
    def service(self) -> int:
        return Service.LARGE_FORWARD_OPEN if self.large else Service.FORWARD_OPEN

    @property
    def triad(self) -> tuple[int, int, int]:
        """What identifies the connection to the target: serial, vendor, originator serial."""
        return self.connection_serial, self.originator_vendor_id, self.originator_serial

    @property
    def o_t(self) -> ConnectionParameters:
        return ConnectionParameters.decode(self.o_t_parameters, large=self.large)

    @property
    def t_o(self) -> ConnectionParameters:
        return ConnectionParameters.decode(self.t_o_parameters, large=self.large)

    @property
    def transport_class(self) -> int:
        return self.transport_class_trigger & 0x0F

    def encode(self) -> bytes:
        path = self.connection_path.encode()
        layout = _LARGE_FORWARD_OPEN if self.large else _FORWARD_OPEN
        return (
            layout.pack(
                self.priority_time_tick,
                self.timeout_ticks,
                self.o_t_connection_id,
                self.t_o_connection_id,
                self.connection_serial,
                self.originator_vendor_id,
                self.originator_serial,
                self.timeout_multiplier,
                bytes(3),
                self.o_t_rpi,
                self.o_t_parameters,
                self.t_o_rpi,
                self.t_o_parameters,
                self.transport_class_trigger,
                len(path) // 2,
            )
            + path
        )


def parse_forward_open(data: bytes, *, large: bool, limits: CipLimits = DEFAULT_LIMITS) -> ForwardOpen:
    service = Service.LARGE_FORWARD_OPEN if large else Service.FORWARD_OPEN
    layout = _LARGE_FORWARD_OPEN if large else _FORWARD_OPEN
    if len(data) < layout.size:
        raise cip_error(_Status.NOT_ENOUGH_DATA, "Forward Open shorter than its fields", service=service)
    fields = layout.unpack_from(data)
    (tick, timeout, o_t_id, t_o_id, serial, vendor, originator, multiplier, reserved,
     o_t_rpi, o_t_parameters, t_o_rpi, t_o_parameters, transport, words) = fields  # fmt: skip
    if any(reserved):
        raise cip_error(
            _Status.INVALID_PARAMETER_VALUE, "Forward Open reserved bytes not zero", service=service
        )
    path = _path(data, layout.size, words, "Forward Open connection path", service, limits)
    check_connection_path(path)
    return ForwardOpen(
        large, tick, timeout, o_t_id, t_o_id, serial, vendor, originator, multiplier,
        o_t_rpi, o_t_parameters, t_o_rpi, t_o_parameters, transport, path,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ForwardOpenReply:
    """A successful (Large) Forward Open reply: the ids the target chose and the actual packet intervals."""

    o_t_connection_id: int
    t_o_connection_id: int
    connection_serial: int
    originator_vendor_id: int
    originator_serial: int
    o_t_api: int
    t_o_api: int
    application_reply: bytes = b""

    def encode(self) -> bytes:
        return (
            _FORWARD_OPEN_REPLY.pack(
                self.o_t_connection_id,
                self.t_o_connection_id,
                self.connection_serial,
                self.originator_vendor_id,
                self.originator_serial,
                self.o_t_api,
                self.t_o_api,
                len(self.application_reply) // 2,
                0,
            )
            + self.application_reply
        )


def parse_forward_open_reply(data: bytes) -> ForwardOpenReply:
    if len(data) < _FORWARD_OPEN_REPLY.size:
        raise cip_error(_Status.INVALID_REPLY_RECEIVED, "Forward Open reply too short")
    fields = _FORWARD_OPEN_REPLY.unpack_from(data)
    o_t_id, t_o_id, serial, vendor, originator, o_t_api, t_o_api, words, _ = fields
    if len(data) != _FORWARD_OPEN_REPLY.size + 2 * words:
        raise cip_error(_Status.INVALID_REPLY_RECEIVED, "Forward Open reply length does not match")
    application = data[_FORWARD_OPEN_REPLY.size :]
    return ForwardOpenReply(o_t_id, t_o_id, serial, vendor, originator, o_t_api, t_o_api, application)


@dataclass(frozen=True, slots=True)
class ForwardOpenFailure:
    """The data of an unsuccessful Forward Open or Forward Close reply."""

    connection_serial: int
    originator_vendor_id: int
    originator_serial: int
    remaining_path_size: int = 0

    def encode(self) -> bytes:
        return _FORWARD_OPEN_FAILURE.pack(
            self.connection_serial,
            self.originator_vendor_id,
            self.originator_serial,
            self.remaining_path_size,
            0,
        )


def failure_for(service: int, data: bytes) -> bytes:
    """The data of the failure reply to a Forward Open or Forward Close that did not parse: the triad
    it carries, as a target echoes it (Vol 1 §3-5.5.1.1), or nothing when the request is too short."""
    offset = _TRIAD_OFFSETS[service]
    if len(data) < offset + _TRIAD.size:
        return b""
    return ForwardOpenFailure(*_TRIAD.unpack_from(data, offset)).encode()


@dataclass(frozen=True, slots=True)
class ForwardClose:
    priority_time_tick: int
    timeout_ticks: int
    connection_serial: int
    originator_vendor_id: int
    originator_serial: int
    connection_path: EPath

    @property
    def triad(self) -> tuple[int, int, int]:
        return self.connection_serial, self.originator_vendor_id, self.originator_serial

    def encode(self) -> bytes:
        path = self.connection_path.encode()
        head = _FORWARD_CLOSE.pack(
            self.priority_time_tick,
            self.timeout_ticks,
            self.connection_serial,
            self.originator_vendor_id,
            self.originator_serial,
            len(path) // 2,
            0,
        )
        return head + path


def parse_forward_close(data: bytes, *, limits: CipLimits = DEFAULT_LIMITS) -> ForwardClose:
    service = Service.FORWARD_CLOSE
    if len(data) < _FORWARD_CLOSE.size:
        raise cip_error(_Status.NOT_ENOUGH_DATA, "Forward Close shorter than its fields", service=service)
    tick, timeout, serial, vendor, originator, words, reserved = _FORWARD_CLOSE.unpack_from(data)
    if reserved:
        raise cip_error(
            _Status.INVALID_PARAMETER_VALUE, "Forward Close reserved byte not zero", service=service
        )
    path = _path(data, _FORWARD_CLOSE.size, words, "Forward Close connection path", service, limits)
    check_connection_path(path)
    return ForwardClose(tick, timeout, serial, vendor, originator, path)


@dataclass(frozen=True, slots=True)
class ForwardCloseReply:
    connection_serial: int
    originator_vendor_id: int
    originator_serial: int
    application_reply: bytes = b""

    def encode(self) -> bytes:
        head = _FORWARD_CLOSE_REPLY.pack(
            self.connection_serial,
            self.originator_vendor_id,
            self.originator_serial,
            len(self.application_reply) // 2,
            0,
        )
        return head + self.application_reply


def parse_forward_close_reply(data: bytes) -> ForwardCloseReply:
    if len(data) < _FORWARD_CLOSE_REPLY.size:
        raise cip_error(_Status.INVALID_REPLY_RECEIVED, "Forward Close reply too short")
    serial, vendor, originator, words, _ = _FORWARD_CLOSE_REPLY.unpack_from(data)
    if len(data) != _FORWARD_CLOSE_REPLY.size + 2 * words:
        raise cip_error(_Status.INVALID_REPLY_RECEIVED, "Forward Close reply length does not match")
    return ForwardCloseReply(serial, vendor, originator, data[_FORWARD_CLOSE_REPLY.size :])


__all__ = [
    "ConnectionParameters",
    "ForwardClose",
    "ForwardCloseReply",
    "ForwardOpen",
    "ForwardOpenFailure",
    "ForwardOpenReply",
    "UnconnectedSend",
    "failure_for",
    "join_messages",
    "join_requests",
    "join_responses",
    "parse_forward_close",
    "parse_forward_close_reply",
    "parse_forward_open",
    "parse_forward_open_reply",
    "parse_unconnected_send",
    "split_multiple_service_packet",
    "split_multiple_service_reply",
]
