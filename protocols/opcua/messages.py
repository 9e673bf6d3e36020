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
from typing import Any, Final

from asyncua import ua
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.ua_binary import nodeid_from_binary, struct_to_binary

from protocols.opcua.binary import StrictBuffer, decode
from protocols.opcua.channel import utc_datetime
from protocols.opcua.services import SERVICES_BY_TYPE_ID, Service
from protocols.opcua.spec import OpcUaProtocolError, Status

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_NS_U32 = struct.Struct("<HI")
_TIMESTAMP_BYTES: Final = 8
SERVICE_FAULT_TYPE_ID: Final = ObjectIds.ServiceFault_Encoding_DefaultBinary


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


def decode_request(body: bytes) -> tuple[Service, Any]:
    """The service and asyncua request object in a MSG body.

    Raises :class:`RequestDecodeError`: BadServiceUnsupported for a type id that is no service request
    this endpoint takes inside a MSG, BadDecodingError for a body that does not decode or has bytes left.
    """
    try:
        type_id, length = type_id_span(body)
    except OpcUaProtocolError as error:
        raise RequestDecodeError(error.status, error.reason, request_handle=0, type_id=None) from None
    service = SERVICES_BY_TYPE_ID.get(type_id) if type_id is not None else None
    if service is None or not service.in_secure_message:
        raise RequestDecodeError(
            Status.BAD_SERVICE_UNSUPPORTED,
            f"no service takes type id {type_id if type_id is not None else 'outside ns 0'}",
            request_handle=_request_handle(body, length),
            type_id=type_id,
        )
    try:
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
    return service, request


def encode_message(message: Any) -> bytes:
    """asyncua's encoding of a response (or request) object, type id first."""
    try:
        return struct_to_binary(message)
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
    _type_id, length = type_id_span(body)
    offset = length + _TIMESTAMP_BYTES
    if len(body) < offset + 4:
        raise OpcUaProtocolError(
            Status.BAD_UNKNOWN_RESPONSE,
            f"a response body of {len(body)} bytes has no ResponseHeader",
            close=False,
        )
    return offset


def patch_request_handle(body: bytes, request_handle: int) -> bytes:
    """``body`` with its ResponseHeader's RequestHandle replaced, nothing decoded."""
    offset = request_handle_offset(body)
    return body[:offset] + _U32.pack(request_handle) + body[offset + 4 :]


def check_response_type(body: bytes, service: Service) -> None:
    """A relayed body must be the service's response or a ServiceFault (close=False otherwise)."""
    type_id, _length = type_id_span(body)
    if type_id not in (service.response_type_id, SERVICE_FAULT_TYPE_ID):
        raise OpcUaProtocolError(
            Status.BAD_UNKNOWN_RESPONSE,
            f"a {service.name} request was answered with type id {type_id}",
            close=False,
        )


__all__ = [
    "SERVICE_FAULT_TYPE_ID",
    "RequestDecodeError",
    "check_response_type",
    "decode_request",
    "encode_message",
    "patch_request_handle",
    "request_handle_offset",
    "service_fault",
    "type_id_span",
]
