"""Message router requests and replies (Vol 1 §2-4): the CIP message inside an unconnected or connected
data item, inside an Unconnected Send, or inside a Multiple Service Packet.

Request: service (USINT), request path size in words (USINT), padded EPATH, service data.
Reply: reply service (request service | 0x80), reserved 0, general status, additional status size in
words, additional status words, reply data.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from protocols.enip.epath import EPath, check_request_path, parse_epath
from protocols.enip.errors import CipProtocolError, cip_error
from protocols.enip.spec import DEFAULT_LIMITS, REPLY_FLAG, CipLimits, GeneralStatus

_REPLY_HEADER = struct.Struct("<BBBB")
_Status = GeneralStatus
_SUCCESS: Final = int(GeneralStatus.SUCCESS)


@dataclass(frozen=True, slots=True)
class MessageRouterRequest:
    service: int
    path: EPath
    data: bytes = b""

    def encode(self) -> bytes:
        path = self.path.encode()
        return bytes((self.service, len(path) // 2)) + path + self.data


@dataclass(frozen=True, slots=True, init=False)
class MessageRouterResponse:
    """``service`` is the reply service as on the wire: the request's service | 0x80. Its own
    ``__init__``, as :class:`~protocols.enip.encapsulation.EncapsulationMessage` has, for the same reason."""

    service: int
    general_status: int
    extended_status: tuple[int, ...]
    data: bytes

    def __init__(
        self,
        service: int,
        general_status: int = GeneralStatus.SUCCESS,
        extended_status: tuple[int, ...] = (),
        data: bytes = b"",
    ) -> None:
        object.__setattr__(self, "service", service)
        object.__setattr__(self, "general_status", general_status)
        object.__setattr__(self, "extended_status", extended_status)
        object.__setattr__(self, "data", data)

    @property
    def request_service(self) -> int:
        return self.service & ~REPLY_FLAG

    @property
    def ok(self) -> bool:
        return self.general_status == _SUCCESS  # a plain int: compiled, an enum member is a generic compare

    def encode(self) -> bytes:
        header = _REPLY_HEADER.pack(self.service, 0, self.general_status, len(self.extended_status))
        return header + struct.pack(f"<{len(self.extended_status)}H", *self.extended_status) + self.data


def reply_to(
    service: int, general_status: int, extended_status: tuple[int, ...] = (), data: bytes = b""
) -> MessageRouterResponse:
    """A reply to a request for ``service`` (an error reply when ``general_status`` is not 0)."""
    return MessageRouterResponse(service | REPLY_FLAG, general_status, extended_status, data)


def parse_request(data: bytes, *, limits: CipLimits = DEFAULT_LIMITS) -> MessageRouterRequest:
    """Parse one request. A path that does not parse or has no clear target raises
    :class:`CipProtocolError` with a path general status and the request's service."""
    if len(data) < 2:
        service = data[0] & ~REPLY_FLAG if data else None
        raise cip_error(
            _Status.NOT_ENOUGH_DATA, "message router request shorter than 2 bytes", service=service
        )
    service, words = data[0], data[1]
    if service & REPLY_FLAG:
        raise cip_error(_Status.SERVICE_NOT_SUPPORTED, f"request service 0x{service:02X} has the reply bit")
    end = 2 + 2 * words
    if end > len(data):
        raise cip_error(
            _Status.PATH_SIZE_INVALID,
            f"request path of {words} words runs past the data",
            service=service,
        )
    try:
        path = parse_epath(data[2:end], limits=limits)
        check_request_path(path)
    except CipProtocolError as error:
        error.service = service
        raise
    return MessageRouterRequest(service, path, data[end:])


def response_fits(data: bytes) -> bool:
    """``data`` is one reply :func:`parse_response` takes (without building it): the reply bit set, the
    reserved byte zero, the additional status within the data."""
    return (
        len(data) >= _REPLY_HEADER.size
        and data[0] & REPLY_FLAG != 0
        and data[1] == 0
        and _REPLY_HEADER.size + 2 * data[3] <= len(data)
    )


def parse_response(data: bytes) -> MessageRouterResponse:
    """Parse one reply; a reply that breaks the layout raises :class:`CipProtocolError` with general status
    0x22 (invalid reply received), the status a gateway gives its client for a broken device reply."""
    if len(data) < _REPLY_HEADER.size:
        raise cip_error(_Status.INVALID_REPLY_RECEIVED, "message router reply shorter than 4 bytes")
    service, reserved, general_status, words = _REPLY_HEADER.unpack_from(data)
    if not service & REPLY_FLAG:
        raise cip_error(_Status.INVALID_REPLY_RECEIVED, f"reply service 0x{service:02X} lacks the reply bit")
    if reserved:
        raise cip_error(_Status.INVALID_REPLY_RECEIVED, "reserved reply byte is not zero")
    end = _REPLY_HEADER.size + 2 * words
    if end > len(data):
        raise cip_error(_Status.INVALID_REPLY_RECEIVED, "additional status runs past the reply")
    # Nearly every reply carries no additional status: no format string to build for it.
    extended: tuple[int, ...] = struct.unpack_from(f"<{words}H", data, _REPLY_HEADER.size) if words else ()
    return MessageRouterResponse(service, general_status, extended, data[end:])


__all__ = [
    "MessageRouterRequest",
    "MessageRouterResponse",
    "parse_request",
    "parse_response",
    "reply_to",
    "response_fits",
]
