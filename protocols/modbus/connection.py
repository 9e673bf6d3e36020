"""Sans-IO Modbus TCP connections: MBAP framing with strict checks, in the style of h11, and the one
MBAP encoder.

Feed received bytes with ``receive_data``; pull events with ``next_request`` / ``next_response``
until they return ``None`` (need more data). A framing error raises :class:`ModbusProtocolError`
with ``close=True``: the stream cannot be trusted any further. A well-framed request whose PDU is
wrong raises it with the exception code to answer; that frame is consumed and the next call goes on
with the following one. Every frame the gateway sends, to a device or to a client, is built by
:func:`encode_adu`.
"""

from __future__ import annotations

import struct

from protocols.modbus import spec
from protocols.modbus.pdu import (
    REQUEST_PARSERS,
    ModbusProtocolError,
    Request,
    parse_opaque,
    parse_read,
    parse_request,
)

# Implementation guide §3.1.3: transaction id, protocol id, length (unit id + PDU), unit id; big-endian.
_HEADER = spec.MBAP_HEADER_BYTES
_PARSERS_GET = REQUEST_PARSERS.get

Frame = tuple[int, int, bytes]  # transaction id, unit id, PDU


class MbapFramer:
    """Splits a byte stream into MBAP frames (transaction id, unit id, PDU).

    :meth:`next_pdu` is the per-request form: the PDU, with its header's transaction id and unit id
    left in :attr:`transaction_id` and :attr:`unit_id` rather than packed with it into a tuple (the
    gateway frames every request and every reply: two objects less each)."""

    __slots__ = ("_buffer", "_offset", "frame_start", "transaction_id", "unit_id")

    def __init__(self) -> None:
        self._buffer = b""
        self._offset = 0
        self.transaction_id = 0  # of the frame the last next_pdu / next_frame_end returned
        self.unit_id = 0
        self.frame_start = 0  # where that frame starts in :attr:`buffer`

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer) - self._offset

    @property
    def buffer(self) -> bytes:
        """The bytes the offsets of :meth:`next_frame_end` and :attr:`frame_start` point into; the same
        object from one :meth:`receive_data` to the next."""
        return self._buffer

    def receive_data(self, data: bytes) -> None:
        if self._offset < len(self._buffer):
            self._buffer = self._buffer[self._offset :] + data
        else:
            self._buffer = data
        self._offset = 0

    def next_pdu(self) -> bytes | None:
        """The next frame's PDU (its header in :attr:`transaction_id` and :attr:`unit_id`), or None
        while the frame is incomplete."""
        end = self.next_frame_end()
        if end < 0:
            return None
        return self._buffer[self.frame_start + _HEADER : end]

    def next_frame_end(self) -> int:
        """Where the next whole frame ends in :attr:`buffer` (it starts at :attr:`frame_start`, its
        header in :attr:`transaction_id` and :attr:`unit_id`), or -1 while it is incomplete. The frame
        is checked and consumed as by :meth:`next_pdu`, without copying it out: a caller that forwards
        the frame as it came takes its bytes from the buffer."""
        buffer, offset = self._buffer, self._offset
        if len(buffer) - offset < _HEADER:
            return -1
        # The header read byte by byte: compiled, each is an index, and no tuple as struct's unpack makes.
        protocol_id = buffer[offset + 2] << 8 | buffer[offset + 3]
        if protocol_id != spec.PROTOCOL_ID_MODBUS:
            raise ModbusProtocolError(f"MBAP protocol id {protocol_id}, expected 0")
        length = buffer[offset + 4] << 8 | buffer[offset + 5]
        if not spec.MBAP_LENGTH_MIN <= length <= spec.MBAP_LENGTH_MAX:
            raise ModbusProtocolError(
                f"MBAP length {length} outside {spec.MBAP_LENGTH_MIN}..{spec.MBAP_LENGTH_MAX}"
            )
        end = offset + _HEADER - 1 + length
        if end > len(buffer):
            return -1
        self._offset = end
        self.frame_start = offset
        self.transaction_id = buffer[offset] << 8 | buffer[offset + 1]
        self.unit_id = buffer[offset + 6]
        return end

    def next_frame(self) -> Frame | None:
        pdu = self.next_pdu()
        if pdu is None:
            return None
        return self.transaction_id, self.unit_id, pdu


class ServerConnection(MbapFramer):
    """The side that receives requests and sends responses (the gateway towards its clients)."""

    __slots__ = ()

    def next_request(self) -> Request | None:
        pdu = self.next_pdu()
        if pdu is None:
            return None
        fc = pdu[0]
        if 1 <= fc <= 4:  # the reads: called directly, not through the table
            return parse_read(self.transaction_id, self.unit_id, pdu)
        if fc & spec.EXCEPTION_FLAG:
            # Refused there, with the right message.
            return parse_request(self.transaction_id, self.unit_id, pdu)
        return _PARSERS_GET(fc, parse_opaque)(self.transaction_id, self.unit_id, pdu)


class ClientConnection(MbapFramer):
    """The side that sends requests and receives responses (the gateway towards a device).

    Responses are returned as frames; the caller matches the transaction id to its request and
    checks the PDU with :func:`protocols.modbus.responses.check_response`.
    """

    __slots__ = ()

    def next_response(self) -> Frame | None:
        return self.next_frame()


# The header and the PDU packed together, one struct per PDU length: a frame costs one pack and no
# concatenation. It runs twice per forwarded request (to the device, back to the client).
_ADU_PACKS = tuple(struct.Struct(f">HHHB{size}s").pack for size in range(spec.PDU_MAX_BYTES + 1))
_PROTOCOL_ID_MODBUS = spec.PROTOCOL_ID_MODBUS


def encode_adu(transaction_id: int, unit_id: int, pdu: bytes) -> bytes:
    """A whole MBAP frame: the header and ``pdu``, which is 1..253 bytes as every PDU the framer lets
    through (a longer one raises ``IndexError``: it cannot be framed)."""
    size = len(pdu)
    return _ADU_PACKS[size](transaction_id, _PROTOCOL_ID_MODBUS, size + 1, unit_id, pdu)


def encode_exception(transaction_id: int, unit_id: int, function_code: int, exception_code: int) -> bytes:
    """A whole exception frame: function code | 0x80 and the exception code (spec §7)."""
    pdu = bytes(((function_code & 0x7F) | spec.EXCEPTION_FLAG, exception_code))
    return encode_adu(transaction_id, unit_id, pdu)


__all__ = ["ClientConnection", "Frame", "MbapFramer", "ServerConnection", "encode_adu", "encode_exception"]
