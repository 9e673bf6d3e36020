"""Modbus request PDUs: parse and length-check every request, and encode one from its fields.

A request PDU is accepted only when it is exactly the canonical encoding of its fields (exact byte
counts, quantities inside the spec's limits, spans inside the address space), or it is replaced by
that encoding where the spec lets a client send bytes that change nothing (FC 15 padding bits, FC 22
OR bits under the AND mask). So ``request.pdu``, which the gateway forwards, is what the encoder of
its function code writes from the fields the policy decided on; the tests hold the two equal for every
function code. Parsers and encoders are tables keyed by function code, one entry each. Function codes
the spec does not define here are kept as opaque requests, so the policy can deny them or a rule can
name them. Responses are checked in :mod:`protocols.modbus.responses`, frames in
:mod:`protocols.modbus.connection`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from protocols.errors import ProtocolError
from protocols.modbus import spec
from protocols.modbus.spec import ExceptionCode

_U16 = struct.Struct(">H")
_FC_U16 = struct.Struct(">BH")
_FC_U16_U16 = struct.Struct(">BHH")
_FC_U16_U16_U8 = struct.Struct(">BHHB")
_FC_U16_U16_U16 = struct.Struct(">BHHH")
_FC_23 = struct.Struct(">BHHHHB")
_FILE_SUB = struct.Struct(">BHHH")

ILLEGAL_FUNCTION = ExceptionCode.ILLEGAL_FUNCTION.value
ILLEGAL_DATA_ADDRESS = ExceptionCode.ILLEGAL_DATA_ADDRESS.value
ILLEGAL_DATA_VALUE = ExceptionCode.ILLEGAL_DATA_VALUE.value


class ModbusProtocolError(ProtocolError):
    """A Modbus peer broke the protocol.

    With ``exception_code`` set, the frame was well delimited and the session answers it with that
    Modbus exception; without it (``close=True``) framing is lost and the connection must be closed.
    """

    def __init__(
        self,
        message: str,
        *,
        exception_code: int | None = None,
        transaction_id: int = 0,
        unit_id: int = 0,
        function_code: int = 0,
    ) -> None:
        super().__init__(message, close=exception_code is None)
        self.exception_code = exception_code
        self.transaction_id = transaction_id
        self.unit_id = unit_id
        self.function_code = function_code


FileRecord = tuple[int, int, int]  # (file number, record number, record length in registers)


class Request:
    """One parsed request. Spans are 0-based wire addresses; ``-1`` marks "no such span".

    ``values`` holds every value the request writes: 0/1 for coils, 16-bit unsigned register values,
    and for a Mask Write Register (FC 22) the lowest and highest value the register can end up with,
    whatever it held before.
    """

    __slots__ = (
        "file_records",
        "function_code",
        "pdu",
        "read_address",
        "read_count",
        "received_pdu",
        "sub_function",
        "transaction_id",
        "unit_id",
        "values",
        "write_address",
        "write_count",
    )

    def __init__(
        self,
        transaction_id: int,
        unit_id: int,
        function_code: int,
        pdu: bytes,
        sub_function: int = -1,
        read_address: int = -1,
        read_count: int = 0,
        write_address: int = -1,
        write_count: int = 0,
        values: tuple[int, ...] = (),
        file_records: tuple[FileRecord, ...] = (),
    ) -> None:
        self.transaction_id = transaction_id
        self.unit_id = unit_id
        self.function_code = function_code
        self.pdu = pdu
        self.sub_function = sub_function
        self.read_address = read_address
        self.read_count = read_count
        self.write_address = write_address
        self.write_count = write_count
        self.values = values
        self.file_records = file_records
        # The PDU as the client sent it. The parser replaces ``pdu`` with the encoder's canonical form
        # when the two differ (FC 15 padding bits, FC 22 OR bits under the AND mask); an echo back to the
        # client must still echo what it sent.
        self.received_pdu = pdu

    @property
    def is_write(self) -> bool:
        return self.write_address >= 0 or bool(self.file_records and self.function_code == 21)

    def __repr__(self) -> str:
        parts = [f"tid={self.transaction_id}", f"unit={self.unit_id}", f"fc={self.function_code}"]
        if self.sub_function >= 0:
            parts.append(f"sub={self.sub_function}")
        if self.read_address >= 0:
            parts.append(f"read={self.read_address}+{self.read_count}")
        if self.write_address >= 0:
            parts.append(f"write={self.write_address}+{self.write_count}")
        if self.file_records:
            parts.append(f"files={self.file_records}")
        if self.values:
            parts.append(f"values={self.values[:8]}{'…' if len(self.values) > 8 else ''}")
        return f"Request({', '.join(parts)})"


def _fail(tid: int, unit: int, fc: int, code: int, message: str) -> ModbusProtocolError:
    return ModbusProtocolError(
        message, exception_code=code, transaction_id=tid, unit_id=unit, function_code=fc
    )


def _check_quantity(tid: int, unit: int, fc: int, count: int, limit: int, what: str) -> None:
    if not 1 <= count <= limit:
        raise _fail(tid, unit, fc, ILLEGAL_DATA_VALUE, f"FC {fc}: {what} quantity {count} outside 1..{limit}")


def _check_address(tid: int, unit: int, fc: int, address: int, count: int) -> None:
    if address + count > spec.ADDRESS_SPACE:
        raise _fail(
            tid, unit, fc, ILLEGAL_DATA_ADDRESS, f"FC {fc}: span {address}+{count} leaves the address space"
        )


def _expect_length(tid: int, unit: int, fc: int, pdu: bytes, length: int) -> None:
    if len(pdu) != length:
        raise _fail(tid, unit, fc, ILLEGAL_DATA_VALUE, f"FC {fc}: PDU is {len(pdu)} bytes, expected {length}")


def unpack_bits(data: bytes, offset: int, count: int) -> tuple[int, ...]:
    return tuple((data[offset + (i >> 3)] >> (i & 7)) & 1 for i in range(count))


def pack_bits(bits: tuple[int, ...] | list[int]) -> bytes:
    out = bytearray((len(bits) + 7) >> 3)
    for i, bit in enumerate(bits):
        if bit:
            out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


# ----------------------------------------------------------------------------------------- requests

_RequestParser = Callable[[int, int, bytes], Request]


def parse_read(tid: int, unit: int, pdu: bytes) -> Request:
    """FC 1-4, the most frequent requests of all: checks inline, the fields read byte by byte (compiled,
    each is an index, and no tuple as struct's unpack makes). The framer calls it directly."""
    fc = pdu[0]
    if len(pdu) != 5:
        _expect_length(tid, unit, fc, pdu, 5)
    address = pdu[1] << 8 | pdu[2]
    count = pdu[3] << 8 | pdu[4]
    limit = spec.MAX_READ_BITS if fc <= 2 else spec.MAX_READ_REGISTERS
    if not 1 <= count <= limit:
        _check_quantity(tid, unit, fc, count, limit, "read")
    if address + count > spec.ADDRESS_SPACE:
        _check_address(tid, unit, fc, address, count)
    return Request(tid, unit, fc, pdu, -1, address, count)


def _parse_write_single_coil(tid: int, unit: int, pdu: bytes) -> Request:
    _expect_length(tid, unit, 5, pdu, 5)
    _, address, value = _FC_U16_U16.unpack(pdu)
    if value not in (spec.COIL_ON, spec.COIL_OFF):
        raise _fail(
            tid, unit, 5, ILLEGAL_DATA_VALUE, f"FC 5: coil value 0x{value:04X} is neither 0xFF00 nor 0"
        )
    return Request(tid, unit, 5, pdu, write_address=address, write_count=1, values=(int(value != 0),))


def _parse_write_single_register(tid: int, unit: int, pdu: bytes) -> Request:
    _expect_length(tid, unit, 6, pdu, 5)
    _, address, value = _FC_U16_U16.unpack(pdu)
    return Request(tid, unit, 6, pdu, write_address=address, write_count=1, values=(value,))


def _parse_no_data(tid: int, unit: int, pdu: bytes) -> Request:
    _expect_length(tid, unit, pdu[0], pdu, 1)
    return Request(tid, unit, pdu[0], pdu)


def _parse_diagnostics(tid: int, unit: int, pdu: bytes) -> Request:
    if len(pdu) < 3:
        raise _fail(tid, unit, 8, ILLEGAL_DATA_VALUE, "FC 8: no sub-function")
    sub = _U16.unpack_from(pdu, 1)[0]
    if sub != spec.DiagnosticSubFunction.RETURN_QUERY_DATA and sub in spec.DIAGNOSTIC_SUB_FUNCTIONS:
        _expect_length(tid, unit, 8, pdu, 5)
        data = _U16.unpack_from(pdu, 3)[0]
        if sub == spec.DiagnosticSubFunction.RESTART_COMMUNICATIONS_OPTION:
            if data not in (0, spec.RESTART_CLEAR_LOG):
                raise _fail(tid, unit, 8, ILLEGAL_DATA_VALUE, f"FC 8/01: data 0x{data:04X} not 0 or 0xFF00")
        elif sub == spec.DiagnosticSubFunction.CHANGE_ASCII_INPUT_DELIMITER:
            if data & 0xFF:
                raise _fail(tid, unit, 8, ILLEGAL_DATA_VALUE, "FC 8/03: low data byte must be 0")
        elif data != 0:
            raise _fail(tid, unit, 8, ILLEGAL_DATA_VALUE, f"FC 8/{sub:02X}: data must be 0x0000")
    # Return Query Data echoes any payload; unassigned sub-functions stay opaque for the policy.
    return Request(tid, unit, 8, pdu, sub_function=sub)


def _parse_write_multiple_coils(tid: int, unit: int, pdu: bytes) -> Request:
    if len(pdu) < 6:
        raise _fail(tid, unit, 15, ILLEGAL_DATA_VALUE, "FC 15: PDU too short")
    _, address, count, byte_count = _FC_U16_U16_U8.unpack_from(pdu)
    # As in every state diagram of the spec: quantity and byte count (0x03) before the address (0x02).
    _check_quantity(tid, unit, 15, count, spec.MAX_WRITE_BITS, "write")
    if byte_count != (count + 7) >> 3:
        raise _fail(tid, unit, 15, ILLEGAL_DATA_VALUE, f"FC 15: byte count {byte_count} for {count} coils")
    _expect_length(tid, unit, 15, pdu, 6 + byte_count)
    _check_address(tid, unit, 15, address, count)
    request = Request(
        tid, unit, 15, pdu, write_address=address, write_count=count, values=unpack_bits(pdu, 6, count)
    )
    if count & 7 and pdu[-1] >> (count & 7):
        # Unused bits of the last byte set: the device gets the encoder's zero-filled form (spec §6.11).
        request.pdu = _encode_write_multiple_coils(request)
    return request


def _parse_write_multiple_registers(tid: int, unit: int, pdu: bytes) -> Request:
    if len(pdu) < 6:
        raise _fail(tid, unit, 16, ILLEGAL_DATA_VALUE, "FC 16: PDU too short")
    _, address, count, byte_count = _FC_U16_U16_U8.unpack_from(pdu)
    _check_quantity(tid, unit, 16, count, spec.MAX_WRITE_REGISTERS, "write")
    if byte_count != 2 * count:
        raise _fail(
            tid, unit, 16, ILLEGAL_DATA_VALUE, f"FC 16: byte count {byte_count} for {count} registers"
        )
    _expect_length(tid, unit, 16, pdu, 6 + byte_count)
    _check_address(tid, unit, 16, address, count)
    values = struct.unpack_from(f">{count}H", pdu, 6)
    return Request(tid, unit, 16, pdu, write_address=address, write_count=count, values=values)


def _parse_file_records(tid: int, unit: int, pdu: bytes) -> Request:
    fc = pdu[0]
    if len(pdu) < 2:
        raise _fail(tid, unit, fc, ILLEGAL_DATA_VALUE, f"FC {fc}: no byte count")
    length = pdu[1]
    low, high = (
        (spec.FILE_READ_BYTE_COUNT_MIN, spec.FILE_READ_BYTE_COUNT_MAX)
        if fc == spec.FunctionCode.READ_FILE_RECORD
        else (spec.FILE_WRITE_DATA_LENGTH_MIN, spec.FILE_WRITE_DATA_LENGTH_MAX)
    )
    if not low <= length <= high:
        raise _fail(tid, unit, fc, ILLEGAL_DATA_VALUE, f"FC {fc}: byte count {length} outside {low}..{high}")
    _expect_length(tid, unit, fc, pdu, 2 + length)
    records: list[FileRecord] = []
    values: list[int] = []
    offset, end = 2, 2 + length
    while offset < end:
        if end - offset < spec.FILE_SUB_REQUEST_BYTES:
            raise _fail(tid, unit, fc, ILLEGAL_DATA_VALUE, f"FC {fc}: truncated sub-request")
        ref_type, file_number, record_number, record_length = _FILE_SUB.unpack_from(pdu, offset)
        offset += spec.FILE_SUB_REQUEST_BYTES
        if ref_type != spec.FILE_REFERENCE_TYPE:
            raise _fail(tid, unit, fc, ILLEGAL_DATA_ADDRESS, f"FC {fc}: reference type {ref_type}, not 6")
        if file_number == 0 or record_number > spec.FILE_MAX_RECORD_NUMBER:
            raise _fail(
                tid, unit, fc, ILLEGAL_DATA_ADDRESS, f"FC {fc}: file {file_number} record {record_number}"
            )
        if record_length == 0 or record_number + record_length > spec.FILE_MAX_RECORD_NUMBER + 1:
            raise _fail(tid, unit, fc, ILLEGAL_DATA_ADDRESS, f"FC {fc}: record length {record_length}")
        if fc == spec.FunctionCode.WRITE_FILE_RECORD:
            data_bytes = 2 * record_length
            if end - offset < data_bytes:
                raise _fail(tid, unit, fc, ILLEGAL_DATA_VALUE, "FC 21: record data shorter than its length")
            values.extend(struct.unpack_from(f">{record_length}H", pdu, offset))
            offset += data_bytes
        records.append((file_number, record_number, record_length))
    # Each sub-response carries 2 header bytes + the data; all of it must fit one response PDU.
    if (
        fc == spec.FunctionCode.READ_FILE_RECORD
        and 2 + sum(2 + 2 * r[2] for r in records) > spec.PDU_MAX_BYTES
    ):
        raise _fail(tid, unit, fc, ILLEGAL_DATA_VALUE, "FC 20: the response would exceed 253 bytes")
    return Request(tid, unit, fc, pdu, values=tuple(values), file_records=tuple(records))


def _parse_mask_write_register(tid: int, unit: int, pdu: bytes) -> Request:
    _expect_length(tid, unit, 22, pdu, 7)
    _, address, and_mask, or_mask = _FC_U16_U16_U16.unpack(pdu)
    # Result = (current AND and_mask) OR (or_mask AND NOT and_mask): the bits kept from the current
    # value are unknown, so the result lies between these two.
    fixed = or_mask & ~and_mask & 0xFFFF
    request = Request(
        tid, unit, 22, pdu, write_address=address, write_count=1, values=(fixed, fixed | and_mask)
    )
    if fixed != or_mask:
        # OR bits under the AND mask have no effect by the spec's formula; the encoder leaves them out, so
        # a device that computes (current AND and_mask) OR or_mask ends up inside the same bounds.
        request.pdu = _encode_mask_write_register(request)
    return request


def _parse_read_write_multiple_registers(tid: int, unit: int, pdu: bytes) -> Request:
    if len(pdu) < 10:
        raise _fail(tid, unit, 23, ILLEGAL_DATA_VALUE, "FC 23: PDU too short")
    _, read_address, read_count, write_address, write_count, byte_count = _FC_23.unpack_from(pdu)
    # Quantities and byte count (0x03) before addresses (0x02): spec Figure 27.
    _check_quantity(tid, unit, 23, read_count, spec.MAX_READ_REGISTERS, "read")
    _check_quantity(tid, unit, 23, write_count, spec.MAX_READ_WRITE_WRITE_REGISTERS, "write")
    if byte_count != 2 * write_count:
        raise _fail(tid, unit, 23, ILLEGAL_DATA_VALUE, f"FC 23: byte count {byte_count} for {write_count}")
    _expect_length(tid, unit, 23, pdu, 10 + byte_count)
    _check_address(tid, unit, 23, read_address, read_count)
    _check_address(tid, unit, 23, write_address, write_count)
    values = struct.unpack_from(f">{write_count}H", pdu, 10)
    return Request(
        tid,
        unit,
        23,
        pdu,
        read_address=read_address,
        read_count=read_count,
        write_address=write_address,
        write_count=write_count,
        values=values,
    )


def _parse_read_fifo_queue(tid: int, unit: int, pdu: bytes) -> Request:
    _expect_length(tid, unit, 24, pdu, 3)
    address = _U16.unpack_from(pdu, 1)[0]
    return Request(tid, unit, 24, pdu, read_address=address, read_count=1)


def _parse_encapsulated_interface_transport(tid: int, unit: int, pdu: bytes) -> Request:
    if len(pdu) < 2:
        raise _fail(tid, unit, 43, ILLEGAL_DATA_VALUE, "FC 43: no MEI type")
    mei_type = pdu[1]
    if mei_type == spec.MeiType.READ_DEVICE_IDENTIFICATION:
        _expect_length(tid, unit, 43, pdu, 4)
        if pdu[2] not in spec.READ_DEVICE_ID_CODES:
            raise _fail(tid, unit, 43, ILLEGAL_DATA_VALUE, f"FC 43/14: read device id code {pdu[2]}")
    # Other MEI types (13: CANopen) stay opaque; the policy names them by sub-function.
    return Request(tid, unit, 43, pdu, sub_function=mei_type)


def parse_opaque(tid: int, unit: int, pdu: bytes) -> Request:
    return Request(tid, unit, pdu[0], pdu)


REQUEST_PARSERS: dict[int, _RequestParser] = {
    1: parse_read,
    2: parse_read,
    3: parse_read,
    4: parse_read,
    5: _parse_write_single_coil,
    6: _parse_write_single_register,
    7: _parse_no_data,
    8: _parse_diagnostics,
    11: _parse_no_data,
    12: _parse_no_data,
    15: _parse_write_multiple_coils,
    16: _parse_write_multiple_registers,
    17: _parse_no_data,
    20: _parse_file_records,
    21: _parse_file_records,
    22: _parse_mask_write_register,
    23: _parse_read_write_multiple_registers,
    24: _parse_read_fifo_queue,
    43: _parse_encapsulated_interface_transport,
}

PARSED_FUNCTION_CODES = frozenset(REQUEST_PARSERS)


def parse_request(transaction_id: int, unit_id: int, pdu: bytes) -> Request:
    """Parse one request PDU (function code + data). Raises :class:`ModbusProtocolError` only."""
    if not pdu:
        raise ModbusProtocolError("empty PDU")  # cannot happen behind the MBAP check; kept for direct use
    fc = pdu[0]
    if fc & spec.EXCEPTION_FLAG:
        raise _fail(transaction_id, unit_id, fc & 0x7F, ILLEGAL_FUNCTION, f"function code {fc} is reserved")
    return REQUEST_PARSERS.get(fc, parse_opaque)(transaction_id, unit_id, pdu)


# ----------------------------------------------------------------------------------------- encoders
# Each writes the PDU from the fields the policy decides on. Where a request carries bytes that are
# no field of it (FC 8 data, FC 43 MEI content), the parser has checked them and they are carried.

_RequestEncoder = Callable[[Request], bytes]


def _encode_read(request: Request) -> bytes:
    return _FC_U16_U16.pack(request.function_code, request.read_address, request.read_count)


def _encode_write_single_coil(request: Request) -> bytes:
    value = spec.COIL_ON if request.values[0] else spec.COIL_OFF
    return _FC_U16_U16.pack(5, request.write_address, value)


def _encode_write_single_register(request: Request) -> bytes:
    return _FC_U16_U16.pack(6, request.write_address, request.values[0])


def _encode_no_data(request: Request) -> bytes:
    return bytes((request.function_code,))


def _encode_diagnostics(request: Request) -> bytes:
    return _FC_U16.pack(8, request.sub_function) + request.pdu[3:]


def _encode_write_multiple_coils(request: Request) -> bytes:
    packed = pack_bits(request.values)
    return _FC_U16_U16_U8.pack(15, request.write_address, request.write_count, len(packed)) + packed


def _encode_write_multiple_registers(request: Request) -> bytes:
    count = request.write_count
    head = _FC_U16_U16_U8.pack(16, request.write_address, count, 2 * count)
    return head + struct.pack(f">{count}H", *request.values)


def _encode_read_file_record(request: Request) -> bytes:
    body = b"".join(_FILE_SUB.pack(spec.FILE_REFERENCE_TYPE, *record) for record in request.file_records)
    return bytes((20, len(body))) + body


def _encode_write_file_record(request: Request) -> bytes:
    parts: list[bytes] = []
    offset = 0
    for file_number, record_number, record_length in request.file_records:
        parts.append(_FILE_SUB.pack(spec.FILE_REFERENCE_TYPE, file_number, record_number, record_length))
        parts.append(struct.pack(f">{record_length}H", *request.values[offset : offset + record_length]))
        offset += record_length
    body = b"".join(parts)
    return bytes((21, len(body))) + body


def _encode_mask_write_register(request: Request) -> bytes:
    # The bounds are the masks: bits set in both are set by the OR mask, bits only in the highest value
    # are kept from the register by the AND mask.
    lowest, highest = request.values
    return _FC_U16_U16_U16.pack(22, request.write_address, highest ^ lowest, lowest)


def _encode_read_write_multiple_registers(request: Request) -> bytes:
    count = request.write_count
    head = _FC_23.pack(23, request.read_address, request.read_count, request.write_address, count, 2 * count)
    return head + struct.pack(f">{count}H", *request.values)


def _encode_read_fifo_queue(request: Request) -> bytes:
    return _FC_U16.pack(24, request.read_address)


def _encode_encapsulated_interface_transport(request: Request) -> bytes:
    return bytes((43, request.sub_function)) + request.pdu[2:]


def encode_opaque(request: Request) -> bytes:
    return request.pdu  # a code without a parser has no fields: the policy decided on the code alone


REQUEST_ENCODERS: dict[int, _RequestEncoder] = {
    1: _encode_read,
    2: _encode_read,
    3: _encode_read,
    4: _encode_read,
    5: _encode_write_single_coil,
    6: _encode_write_single_register,
    7: _encode_no_data,
    8: _encode_diagnostics,
    11: _encode_no_data,
    12: _encode_no_data,
    15: _encode_write_multiple_coils,
    16: _encode_write_multiple_registers,
    17: _encode_no_data,
    20: _encode_read_file_record,
    21: _encode_write_file_record,
    22: _encode_mask_write_register,
    23: _encode_read_write_multiple_registers,
    24: _encode_read_fifo_queue,
    43: _encode_encapsulated_interface_transport,
}


def encode_request_pdu(request: Request) -> bytes:
    """Build a request PDU from its fields: the inverse of :func:`parse_request`."""
    return REQUEST_ENCODERS.get(request.function_code, encode_opaque)(request)
