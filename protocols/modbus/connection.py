"""Sans-IO Modbus TCP connections: MBAP framing with strict checks, in the style of h11.

Feed received bytes with ``receive_data``; pull events with ``next_request`` / ``next_response``
until they return ``None`` (need more data). A framing error raises :class:`ModbusProtocolError`
with ``close=True``: the stream cannot be trusted any further. A well-framed request whose PDU is
wrong raises it with the exception code to answer; that frame is consumed and the next call goes on
with the following one.
"""

from __future__ import annotations

from protocols.modbus import spec
from protocols.modbus.pdu import (
    MBAP_HEADER,
    REQUEST_PARSERS,
    ModbusProtocolError,
    Request,
    parse_opaque,
    parse_request,
)

_MBAP_UNPACK = MBAP_HEADER.unpack_from
_MBAP_PACK = MBAP_HEADER.pack
_HEADER = spec.MBAP_HEADER_BYTES
_PARSERS_GET = REQUEST_PARSERS.get

Frame = tuple[int, int, bytes]  # transaction id, unit id, PDU


class MbapFramer:
    """Splits a byte stream into MBAP frames (transaction id, unit id, PDU)."""

    __slots__ = ("_buffer", "_offset")

    def __init__(self) -> None:
        self._buffer = b""
        self._offset = 0

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer) - self._offset

    def receive_data(self, data: bytes) -> None:
        if self._offset < len(self._buffer):
            self._buffer = self._buffer[self._offset :] + data
        else:
            self._buffer = data
        self._offset = 0

    def next_frame(self) -> Frame | None:
        buffer, offset = self._buffer, self._offset
        if len(buffer) - offset < _HEADER:
            return None
        transaction_id, protocol_id, length, unit_id = _MBAP_UNPACK(buffer, offset)
        if protocol_id != spec.PROTOCOL_ID_MODBUS:
            raise ModbusProtocolError(f"MBAP protocol id {protocol_id}, expected 0")
        if not spec.MBAP_LENGTH_MIN <= length <= spec.MBAP_LENGTH_MAX:
            raise ModbusProtocolError(
                f"MBAP length {length} outside {spec.MBAP_LENGTH_MIN}..{spec.MBAP_LENGTH_MAX}"
            )
        end = offset + _HEADER - 1 + length
        if end > len(buffer):
            return None
        self._offset = end
        return transaction_id, unit_id, buffer[offset + _HEADER : end]


class ServerConnection(MbapFramer):
    """The side that receives requests and sends responses (the gateway towards its clients)."""

    __slots__ = ()

    def next_request(self) -> Request | None:
        frame = self.next_frame()
        if frame is None:
            return None
        transaction_id, unit_id, pdu = frame
        if pdu[0] & spec.EXCEPTION_FLAG:
            return parse_request(transaction_id, unit_id, pdu)  # refused there, with the right message
        return _PARSERS_GET(pdu[0], parse_opaque)(transaction_id, unit_id, pdu)


class ClientConnection(MbapFramer):
    """The side that sends requests and receives responses (the gateway towards a device).

    Responses are returned as frames; the caller matches the transaction id to its request and
    checks the PDU with :func:`protocols.modbus.pdu.check_response`.
    """

    __slots__ = ()

    @staticmethod
    def send_request(request: Request, transaction_id: int, unit_id: int) -> bytes:
        pdu = request.pdu
        return _MBAP_PACK(transaction_id, 0, len(pdu) + 1, unit_id) + pdu

    def next_response(self) -> Frame | None:
        return self.next_frame()


def encode_response(transaction_id: int, unit_id: int, pdu: bytes) -> bytes:
    return _MBAP_PACK(transaction_id, 0, len(pdu) + 1, unit_id) + pdu


__all__ = ["ClientConnection", "Frame", "MbapFramer", "ServerConnection", "encode_response"]
