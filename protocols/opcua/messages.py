"""Service message bodies (Part 6, 5.2.9 and 6.7.2.5): decode a request by its type id, encode a
response, build a ServiceFault, and re-label a response body without decoding it.

A MSG body is the NodeId of the message's DefaultBinary encoding followed by the structure; the request
classes come from the service table, the decoding from asyncua (through :mod:`protocols.opcua.binary`).
The response side has a cheap path: a response the gateway does not change is relayed as the bytes the
device sent, with only the RequestHandle rewritten to the client's. The handle sits at a fixed place:
after the type id, the ResponseHeader starts with Timestamp (8 bytes) and then RequestHandle (UInt32)
(Part 4, 7.33).
"""

from __future__ import annotations

import struct
from typing import Any, Final, NamedTuple

from asyncua import ua
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.ua_binary import nodeid_from_binary, struct_to_binary

from protocols.opcua.binary import StrictBuffer, decode
from protocols.opcua.channel import utc_datetime
from protocols.opcua.operations import Operation
from protocols.opcua.services import SERVICES_BY_TYPE_ID, Service
from protocols.opcua.spec import OpcUaProtocolError, Status

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_NS_U32 = struct.Struct("<HI")
_TIMESTAMP_BYTES: Final = 8
SERVICE_FAULT_TYPE_ID: Final = ObjectIds.ServiceFault_Encoding_DefaultBinary


# The services a MSG may carry: OpenSecureChannel and CloseSecureChannel travel as OPN and CLO.
_IN_MESSAGES: Final = {type_id: s for type_id, s in SERVICES_BY_TYPE_ID.items() if s.in_secure_message}


class RequestDecodeError(OpcUaProtocolError):
    """A well-framed MSG whose body is no request this endpoint serves: answered with a ServiceFault.

    ``request_handle`` is the client's handle when the RequestHeader could still be read (else 0), so the
    fault reaches the request that caused it.
    """

    def __init__(self, status: int, reason: str, *, request_handle: int, type_id: int | None) -> None:
        super().__init__(status, reason, close=False)
        self.request_handle = request_handle
        self.type_id = type_id


def type_id_span(body: bytes) -> tuple[int | None, int]:
    """The numeric ns-0 type id at the start of ``body`` (``None`` for any other NodeId) and its length.

    The three numeric encodings are read by hand: this runs for every relayed response.
    """
    if len(body) >= 2 and body[0] == 0x00:  # TwoByte: id < 256 in ns 0
        return body[1], 2
    if len(body) >= 4 and body[0] == 0x01:  # FourByte: ns < 256, id < 65536
        return (_U16.unpack_from(body, 2)[0] if body[1] == 0 else None), 4
    if len(body) >= 7 and body[0] == 0x02:  # Numeric: ns and id of any size
        namespace, identifier = _NS_U32.unpack_from(body, 1)
        return (identifier if namespace == 0 else None), 7
    buffer = StrictBuffer(body)
    try:
        nodeid_from_binary(buffer)
    except Exception as exc:  # asyncua raises whatever its decoders hit on bad bytes
        raise OpcUaProtocolError(Status.BAD_DECODING_ERROR, f"type id: {exc!r}", close=False) from None
    return None, len(body) - len(buffer)


def _request_handle(body: bytes, offset: int) -> int:
    """Best effort: the RequestHandle of a request whose body failed to decode (0 if it is not there).

    RequestHeader: AuthenticationToken (a NodeId), Timestamp (8 bytes), RequestHandle (UInt32)."""
    buffer = StrictBuffer(body, offset)
    try:
        nodeid_from_binary(buffer)
        position = len(body) - len(buffer) + _TIMESTAMP_BYTES
        handle: int = _U32.unpack_from(body, position)[0]
    except Exception:  # no readable header: the fault goes out with handle 0
        return 0
    return handle


_NODEID_FIXED: Final = {0: 2, 1: 4, 2: 7, 4: 19}  # TwoByte, FourByte, Numeric, Guid: whole size
_NODEID_LENGTH_PREFIXED: Final = frozenset((3, 5))  # String, ByteString: 3 bytes, then Int32 length


def nodeid_end(body: bytes, offset: int) -> int:
    """Where the NodeId (not Expanded) at ``offset`` ends; ValueError when it cannot be read."""
    encoding = body[offset]
    fixed = _NODEID_FIXED.get(encoding)
    if fixed is not None:
        end = offset + fixed
    elif encoding in _NODEID_LENGTH_PREFIXED:
        length = _I32.unpack_from(body, offset + 3)[0]
        end = offset + 7 + max(length, 0)
    else:
        raise ValueError(f"node id encoding 0x{encoding:02X}")
    if end > len(body):
        raise ValueError("node id runs past the message")
    return end


class Repeat:
    """One request in a :class:`RepeatCache`: the decoded request it was first seen as and its operations.
    Shared by every request that repeats it: nobody mutates ``request`` or ``operations``. The layer
    above may key what it derived from them by the entry (the gateway: its decisions)."""

    __slots__ = ("key", "operations", "request", "service", "token_span")

    def __init__(
        self,
        key: bytes,
        service: Service,
        request: Any,
        operations: tuple[Operation, ...],
        token_span: tuple[int, int],
    ) -> None:
        self.key = key  # the body without the RequestHeader's Timestamp and RequestHandle
        self.service = service
        self.request = request
        self.operations = operations
        # Where the RequestHeader's AuthenticationToken starts and ends in the body (the same in every
        # repeat: the bytes before the Timestamp are part of the key).
        self.token_span = token_span


class RepeatCache:
    """Requests whose bytes repeat, decoded once: an HMI polls the same nodes over and over, and between
    two of its Reads only the RequestHeader's Timestamp and RequestHandle change.

    Keyed by the body without those 12 bytes; a hit costs reading the RequestHandle, and no decoding
    and no new objects (asyncua's generic decoder is the largest cost on the gateway's path otherwise).
    Entries are shared by every request that hits them, so only services whose request objects nobody
    changes after decoding are cached, and only small ones; the oldest entry goes when the cache is full.
    """

    SERVICES: Final = frozenset(("Read",))
    MAX_ENTRIES: Final = 256
    MAX_BODY_BYTES: Final = 4096

    def __init__(self) -> None:
        self._entries: dict[bytes, Repeat] = {}
        self.hits = 0
        # Where the RequestHeader's Timestamp starts in the last body cached: in one session every Read
        # has the same type id and token in front of it, so find() looks there without parsing.
        self._timestamp_at = 0

    def put(self, repeat: Repeat) -> Repeat:
        entries = self._entries
        if len(entries) >= self.MAX_ENTRIES:
            del entries[next(iter(entries))]
        entries[repeat.key] = repeat
        self._timestamp_at = repeat.token_span[1]
        return repeat

    def find(self, body: bytes) -> tuple[Repeat, int] | None:
        """The entry ``body`` repeats and its RequestHandle, without reading its type id or token: None
        when it is no repeat of the last cached body's layout (then :meth:`decode` decides).

        The key is cut where the last cached body had its Timestamp. A hit is only taken from an entry
        cut at that same place: equal keys cut at one place mean equal bytes in front of it (the type id
        and the token, encoding and length included) and behind the 12 header bytes, so the body is
        what a full parse would have found in the cache. An entry cut elsewhere could match a body whose
        bytes shifted around the cut: that is left to decode()."""
        timestamp_at = self._timestamp_at
        if not timestamp_at or len(body) > self.MAX_BODY_BYTES:
            return None
        handle_end = timestamp_at + _TIMESTAMP_BYTES + 4
        found = self._entries.get(body[:timestamp_at] + body[handle_end:])
        if found is None or found.token_span[1] != timestamp_at:
            return None
        self.hits += 1
        handle: int = _U32.unpack_from(body, handle_end - 4)[0]
        return found, handle

    def decode(self, service: Service, body: bytes, token_at: int) -> tuple[Any, Repeat | None, int]:
        """``decode(service.request_type, body)`` through the cache: the request (on a hit, the entry's
        shared object), its entry (None for a body too large to cache) and its RequestHandle.
        ``token_at`` is where the RequestHeader (its AuthenticationToken) starts. Raises what the
        decoders raise."""
        if len(body) > self.MAX_BODY_BYTES:
            request, left = decode(service.request_type, body)
            if left:
                raise ValueError(f"{left} bytes after the request")
            return request, None, request.RequestHeader.RequestHandle
        token_end = nodeid_end(body, token_at)
        timestamp_at, handle_end = token_end, token_end + _TIMESTAMP_BYTES + 4
        key = body[:timestamp_at] + body[handle_end:]
        found = self._entries.get(key)
        if found is not None:
            self.hits += 1
            handle: int = _U32.unpack_from(body, handle_end - 4)[0]
            return found.request, found, handle
        request, left = decode(service.request_type, body)
        if left:
            raise ValueError(f"{left} bytes after the request")
        codec = service.operations
        operations = tuple(codec.operations(request)) if codec is not None else ()
        repeat = self.put(Repeat(key, service, request, operations, (token_at, token_end)))
        return request, repeat, request.RequestHeader.RequestHandle


class DecodedRequest(NamedTuple):
    """A MSG body decoded: its service, the asyncua request object, the client's RequestHandle, and the
    request's cache entry when it has one.

    A repeated request's object is its cache entry's, shared by every repeat and changed by nobody:
    everything in it is what this body says except the RequestHeader's Timestamp and RequestHandle,
    which are the first one's. The handle is ``request_handle``; the Timestamp only says when the client
    sent it, which the gateway never forwards as an object.
    """

    service: Service
    request: Any
    request_handle: int
    repeat: Repeat | None


def decode_request(body: bytes) -> tuple[Service, Any]:
    """The service and asyncua request object in a MSG body.

    Raises :class:`RequestDecodeError`: BadServiceUnsupported for a type id that is no service request
    this endpoint takes inside a MSG, BadDecodingError for a body that does not decode or has bytes left.
    """
    decoded = decode_request_through(body, None)
    return decoded.service, decoded.request


def decode_request_through(body: bytes, cache: RepeatCache | None) -> DecodedRequest:
    """:func:`decode_request` through ``cache``: a repeated Read is not decoded again (see
    :class:`RepeatCache` and :class:`DecodedRequest`).

    Raises :class:`RequestDecodeError`: BadServiceUnsupported for a type id that is no service request
    this endpoint takes inside a MSG, BadDecodingError for a body that does not decode or has bytes left.
    """
    try:
        type_id, length = type_id_span(body)
    except OpcUaProtocolError as error:
        raise RequestDecodeError(error.status, error.reason, request_handle=0, type_id=None) from None
    service = _IN_MESSAGES.get(type_id) if type_id is not None else None
    if service is None:
        raise RequestDecodeError(
            Status.BAD_SERVICE_UNSUPPORTED,
            f"no service takes type id {type_id if type_id is not None else 'outside ns 0'}",
            request_handle=_request_handle(body, length),
            type_id=type_id,
        )
    try:
        if cache is not None and service.name in RepeatCache.SERVICES:
            request, repeat, handle = cache.decode(service, body, length)
            return DecodedRequest(service, request, handle, repeat)
        request, left = decode(service.request_type, body)
    except Exception as exc:  # asyncua raises whatever its decoders hit on bad bytes
        raise RequestDecodeError(
            Status.BAD_DECODING_ERROR,
            f"{service.name} request: {exc!r}",
            request_handle=_request_handle(body, length),
            type_id=type_id,
        ) from None
    if left:
        raise RequestDecodeError(
            Status.BAD_DECODING_ERROR,
            f"{service.name} request has {left} bytes after its fields",
            request_handle=request.RequestHeader.RequestHandle,
            type_id=type_id,
        )
    return DecodedRequest(service, request, request.RequestHeader.RequestHandle, None)


def encode_message(message: Any) -> bytes:
    """asyncua's encoding of a response (or request) object, type id first."""
    try:
        # Annotated, not returned bare: the build environment has no asyncua, where this is Any.
        encoded: bytes = struct_to_binary(message)
        return encoded
    except Exception as exc:  # asyncua raises whatever its encoders hit on bad values
        raise OpcUaProtocolError(
            Status.BAD_ENCODING_ERROR, f"{type(message).__name__}: {exc!r}", close=False
        ) from None


def service_fault(request_handle: int, status: int, now: float | None = None) -> ua.ServiceFault:
    """A ServiceFault (Part 4, 7.34) for the request with ``request_handle``."""
    fault = ua.ServiceFault()
    header = fault.ResponseHeader
    header.RequestHandle = request_handle
    header.ServiceResult = ua.StatusCode(ua.UInt32(status))
    if now is not None:
        header.Timestamp = utc_datetime(now)
    return fault


def request_handle_offset(body: bytes) -> int:
    """Where the ResponseHeader's RequestHandle sits in a response body."""
    return _handle_offset(body, type_id_span(body)[1])


def _handle_offset(body: bytes, type_id_bytes: int) -> int:
    offset = type_id_bytes + _TIMESTAMP_BYTES
    if len(body) < offset + 4:
        raise OpcUaProtocolError(
            Status.BAD_UNKNOWN_RESPONSE,
            f"a response body of {len(body)} bytes has no ResponseHeader",
            close=False,
        )
    return offset


def patch_request_handle(body: bytes, request_handle: int, service: Service | None = None) -> bytes:
    """``body`` with its ResponseHeader's RequestHandle replaced, nothing decoded. With ``service`` the
    body must be that service's response or a ServiceFault (see :func:`check_response_type`)."""
    type_id, length = type_id_span(body)
    if service is not None and type_id != service.response_type_id:
        _check_response_type(type_id, service)  # a ServiceFault passes; anything else raises
    offset = length + _TIMESTAMP_BYTES
    if len(body) < offset + 4:
        _handle_offset(body, length)  # raises, with the reason
    return body[:offset] + _U32.pack(request_handle) + body[offset + 4 :]


def check_response_type(body: bytes, service: Service) -> None:
    """A relayed body must be the service's response or a ServiceFault (close=False otherwise)."""
    _check_response_type(type_id_span(body)[0], service)


def _check_response_type(type_id: int | None, service: Service) -> None:
    if type_id not in (service.response_type_id, SERVICE_FAULT_TYPE_ID):
        raise OpcUaProtocolError(
            Status.BAD_UNKNOWN_RESPONSE,
            f"a {service.name} request was answered with type id {type_id}",
            close=False,
        )


__all__ = [
    "SERVICE_FAULT_TYPE_ID",
    "DecodedRequest",
    "Repeat",
    "RepeatCache",
    "RequestDecodeError",
    "check_response_type",
    "decode_request",
    "decode_request_through",
    "encode_message",
    "nodeid_end",
    "patch_request_handle",
    "request_handle_offset",
    "service_fault",
    "type_id_span",
]
