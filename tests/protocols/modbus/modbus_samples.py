"""Shared material for the Modbus codec tests.

An independent reading of the Modbus Application Protocol Specification V1.1b3 (§6 field layouts):
request PDUs built from their fields, well-formed responses to a parsed request, and hypothesis
strategies for both. The builders never call the codec, so comparing what they build with what the
codec parses compares two readings of the spec rather than the codec with itself.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from hypothesis import strategies as st

from protocols.modbus import ModbusProtocolError, Request, ServerConnection, encode_request_pdu, parse_request

ADDRESS_SPACE = 0x10000
PDU_MAX = 253
# Spec §5.1: the public function codes the codec parses; every other code is an opaque request.
PUBLIC_FUNCTION_CODES = frozenset((1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 15, 16, 17, 20, 21, 22, 23, 24, 43))
# Spec §6.8.1: assigned FC 8 sub-functions other than 0x00 Return Query Data, and their data fields.
DIAGNOSTIC_SUB_FUNCTIONS = (0x01, 0x02, 0x03, 0x04, *range(0x0A, 0x13), 0x14)
# Sub-functions whose normal response is "Echo Request Data" (the others return a counter; 04 returns
# nothing at all).
DIAGNOSTIC_ECHOES = frozenset((0x01, 0x03, 0x0A, 0x14))
READ_DEVICE_ID = 0x0E

# Spec §6: (read, write) quantity limits per function code; codes without a span have none.
QUANTITY_LIMITS = {
    1: (2000, 0),
    2: (2000, 0),
    3: (125, 0),
    4: (125, 0),
    5: (0, 1),
    6: (0, 1),
    15: (0, 1968),
    16: (0, 123),
    22: (0, 1),
    23: (125, 121),
    24: (1, 0),
}

FileRecords = tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class Fields:
    """What a parsed request says, comparable with ``==``."""

    function_code: int
    sub_function: int = -1
    read_address: int = -1
    read_count: int = 0
    write_address: int = -1
    write_count: int = 0
    values: tuple[int, ...] = ()
    file_records: FileRecords = ()


@dataclass(frozen=True)
class Sample:
    """A valid request PDU and the fields the codec must find in it."""

    pdu: bytes
    fields: Fields


def fields_of(request: Request) -> Fields:
    return Fields(
        function_code=request.function_code,
        sub_function=request.sub_function,
        read_address=request.read_address,
        read_count=request.read_count,
        write_address=request.write_address,
        write_count=request.write_count,
        values=tuple(request.values),
        file_records=tuple(request.file_records),
    )


def mbap(transaction_id: int, unit_id: int, pdu: bytes, *, protocol_id: int = 0, length: int = -1) -> bytes:
    """An MBAP header (implementation guide §3.1.3) in front of ``pdu``; ``length`` overrides the field."""
    field = len(pdu) + 1 if length < 0 else length
    return struct.pack(">HHHB", transaction_id, protocol_id, field, unit_id) + pdu


def pack_coils(bits: Iterable[int]) -> bytes:
    """Spec §6.11: the first coil in the least significant bit of the first byte, unused bits zero."""
    out = bytearray()
    for index, bit in enumerate(bits):
        if index % 8 == 0:
            out.append(0)
        out[-1] |= (bit & 1) << (index % 8)
    return bytes(out)


def registers(values: Iterable[int]) -> bytes:
    return b"".join(value.to_bytes(2, "big") for value in values)


def check_request_invariants(request: Request) -> None:
    """What holds for every request the codec lets out, whatever bytes it came from."""
    assert isinstance(request, Request)
    pdu = request.pdu
    assert isinstance(pdu, bytes)
    assert 1 <= len(pdu) <= PDU_MAX
    assert request.function_code == pdu[0] < 0x80
    assert 0 <= request.transaction_id <= 0xFFFF
    assert 0 <= request.unit_id <= 0xFF
    for address, count in (
        (request.read_address, request.read_count),
        (request.write_address, request.write_count),
    ):
        if address == -1:
            assert count == 0
        else:
            assert 0 <= address <= 0xFFFF
            assert count >= 1
            assert address + count <= ADDRESS_SPACE
    fc = request.function_code
    read_limit, write_limit = QUANTITY_LIMITS.get(fc, (0, 0))
    assert request.read_count <= read_limit
    assert request.write_count <= write_limit
    assert all(0 <= value <= 0xFFFF for value in request.values)
    if fc in (5, 15):
        assert all(value in (0, 1) for value in request.values)
    for file_number, record_number, record_length in request.file_records:
        assert 1 <= file_number <= 0xFFFF
        assert 0 <= record_number <= 0x270F
        assert record_length >= 1 and record_number + record_length <= 10000
    # Forwarding request.pdu is the same as re-encoding the fields ...
    assert encode_request_pdu(request) == pdu
    assert encode_request_pdu(from_fields(request)) == pdu
    # ... and parsing what would be forwarded gives back the same request.
    again = parse_request(request.transaction_id, request.unit_id, pdu)
    assert again.pdu == pdu
    assert fields_of(again) == fields_of(request)


# Where the bytes of a PDU stop being fields of the request: FC 8 data after the sub-function, FC 43
# content after the MEI type, and all of an opaque code. The encoders carry those bytes.
CARRIED_FROM = {8: 3, 43: 2}


def from_fields(request: Request) -> Request:
    """The same request with its PDU reduced to the bytes that are no field of it (placeholders where the
    fields were): what an encoder writes from this, it wrote from the fields."""
    fc = request.function_code
    if fc not in PUBLIC_FUNCTION_CODES:
        return request
    pdu = bytes((fc,))
    if fc in CARRIED_FROM:
        start = CARRIED_FROM[fc]
        pdu += b"\xff" * (start - 1) + request.pdu[start:]
    return Request(
        request.transaction_id,
        request.unit_id,
        fc,
        pdu,
        request.sub_function,
        request.read_address,
        request.read_count,
        request.write_address,
        request.write_count,
        request.values,
        request.file_records,
    )


def check_error_invariants(error: ModbusProtocolError) -> None:
    """A refusal either closes the connection or names the exception to answer, never both."""
    if error.close:
        assert error.exception_code is None
    else:
        assert error.exception_code in (0x01, 0x02, 0x03)


def drain_requests(
    feed: Iterable[bytes], on_error: Callable[[ModbusProtocolError], None] | None = None
) -> list[Request | ModbusProtocolError]:
    """Feed chunks to a ServerConnection, pulling requests after each; stop at a close=True error.

    Checks the codec's one rule on the way: ``next_request`` returns a Request or None, or raises
    ModbusProtocolError; any other exception escapes and fails the test.
    """
    connection = ServerConnection()
    outcomes: list[Request | ModbusProtocolError] = []
    for chunk in feed:
        connection.receive_data(chunk)
        while True:
            try:
                request = connection.next_request()
            except ModbusProtocolError as error:
                check_error_invariants(error)
                if on_error is not None:
                    on_error(error)
                outcomes.append(error)
                if error.close:
                    return outcomes
                continue
            if request is None:
                break
            check_request_invariants(request)
            outcomes.append(request)
    return outcomes


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` cut at the given offsets (any order, duplicates and out-of-range offsets ignored)."""
    points = sorted({cut for cut in cuts if 0 < cut < len(data)})
    edges = [0, *points, len(data)]
    return [data[start:end] for start, end in itertools.pairwise(edges)]


# ------------------------------------------------------------------------------- request strategies

u16 = st.integers(0, 0xFFFF)


@st.composite
def spans(draw: st.DrawFn, limit: int) -> tuple[int, int]:
    count = draw(st.one_of(st.just(limit), st.just(1), st.integers(1, limit)))
    address = draw(
        st.one_of(st.just(ADDRESS_SPACE - count), st.just(0), st.integers(0, ADDRESS_SPACE - count))
    )
    return address, count


@st.composite
def read_requests(draw: st.DrawFn, codes: tuple[int, ...] = (1, 2, 3, 4)) -> Sample:
    fc = draw(st.sampled_from(codes))
    address, count = draw(spans(2000 if fc <= 2 else 125))
    return Sample(struct.pack(">BHH", fc, address, count), Fields(fc, read_address=address, read_count=count))


@st.composite
def write_single_coil(draw: st.DrawFn) -> Sample:
    address, on = draw(u16), draw(st.booleans())
    pdu = struct.pack(">BHH", 5, address, 0xFF00 if on else 0x0000)
    return Sample(pdu, Fields(5, write_address=address, write_count=1, values=(int(on),)))


@st.composite
def write_single_register(draw: st.DrawFn) -> Sample:
    address, value = draw(u16), draw(u16)
    pdu = struct.pack(">BHH", 6, address, value)
    return Sample(pdu, Fields(6, write_address=address, write_count=1, values=(value,)))


@st.composite
def no_data_requests(draw: st.DrawFn, codes: tuple[int, ...] = (7, 11, 12, 17)) -> Sample:
    fc = draw(st.sampled_from(codes))
    return Sample(bytes((fc,)), Fields(fc))


@st.composite
def diagnostics(draw: st.DrawFn) -> Sample:
    kind = draw(st.sampled_from(("query", "assigned", "reserved")))
    if kind == "query":  # 00 Return Query Data: any data, echoed
        data = draw(st.binary(max_size=PDU_MAX - 3))
        return Sample(b"\x08\x00\x00" + data, Fields(8, sub_function=0))
    if kind == "assigned":
        sub = draw(st.sampled_from(DIAGNOSTIC_SUB_FUNCTIONS))
        if sub == 0x01:  # restart: 00 00 keeps the event log, FF 00 clears it
            value = draw(st.sampled_from((0x0000, 0xFF00)))
        elif sub == 0x03:  # change ASCII delimiter: CHAR 00
            value = draw(st.integers(0, 0xFF)) << 8
        else:
            value = 0x0000
        return Sample(struct.pack(">BHH", 8, sub, value), Fields(8, sub_function=sub))
    sub = draw(u16.filter(lambda s: s != 0 and s not in DIAGNOSTIC_SUB_FUNCTIONS))
    data = draw(st.binary(max_size=PDU_MAX - 3))
    return Sample(struct.pack(">BH", 8, sub) + data, Fields(8, sub_function=sub))


@st.composite
def write_multiple_coils(draw: st.DrawFn) -> Sample:
    address, count = draw(spans(1968))
    raw = draw(st.binary(min_size=(count + 7) // 8, max_size=(count + 7) // 8))
    bits = tuple((raw[i // 8] >> (i % 8)) & 1 for i in range(count))
    data = pack_coils(bits)
    pdu = struct.pack(">BHHB", 15, address, count, len(data)) + data
    return Sample(pdu, Fields(15, write_address=address, write_count=count, values=bits))


@st.composite
def write_multiple_registers(draw: st.DrawFn) -> Sample:
    address, count = draw(spans(123))
    values = tuple(draw(st.lists(u16, min_size=count, max_size=count)))
    pdu = struct.pack(">BHHB", 16, address, count, 2 * count) + registers(values)
    return Sample(pdu, Fields(16, write_address=address, write_count=count, values=values))


@st.composite
def read_file_record(draw: st.DrawFn) -> Sample:
    # Byte count 7..245 (1..35 sub-requests); the response (2 + per record 2 + 2 * length) fits 253.
    subs = draw(st.integers(1, 35))
    budget = PDU_MAX - 2
    records: list[tuple[int, int, int]] = []
    for index in range(subs):
        file_number = draw(st.integers(1, 0xFFFF))
        record_number = draw(st.integers(0, 0x270F))
        most = min((budget - 2 - 4 * (subs - index - 1)) // 2, 10000 - record_number)
        record_length = draw(st.integers(1, most))
        budget -= 2 + 2 * record_length
        records.append((file_number, record_number, record_length))
    body = b"".join(struct.pack(">BHHH", 6, *record) for record in records)
    return Sample(bytes((20, len(body))) + body, Fields(20, file_records=tuple(records)))


@st.composite
def write_file_record(draw: st.DrawFn) -> Sample:
    # Request data length 9..251: every sub-request is 7 bytes plus its data.
    budget = PDU_MAX - 2
    records: list[tuple[int, int, int]] = []
    values: list[int] = []
    body = b""
    while budget >= 9 and (not records or draw(st.booleans())):
        file_number = draw(st.integers(1, 0xFFFF))
        record_number = draw(st.integers(0, 0x270F))
        record_length = draw(st.integers(1, min((budget - 7) // 2, 10000 - record_number)))
        data = draw(st.lists(u16, min_size=record_length, max_size=record_length))
        body += struct.pack(">BHHH", 6, file_number, record_number, record_length) + registers(data)
        budget -= 7 + 2 * record_length
        records.append((file_number, record_number, record_length))
        values.extend(data)
    return Sample(
        bytes((21, len(body))) + body, Fields(21, values=tuple(values), file_records=tuple(records))
    )


@st.composite
def mask_write_register(draw: st.DrawFn) -> Sample:
    # Canonical masks: no OR bit under the AND mask (those bits have no effect, spec §6.16).
    address, and_mask = draw(u16), draw(u16)
    or_mask = draw(u16) & ~and_mask & 0xFFFF
    pdu = struct.pack(">BHHH", 22, address, and_mask, or_mask)
    return Sample(pdu, Fields(22, write_address=address, write_count=1, values=(or_mask, or_mask | and_mask)))


@st.composite
def read_write_multiple_registers(draw: st.DrawFn) -> Sample:
    read_address, read_count = draw(spans(125))
    write_address, write_count = draw(spans(121))
    values = tuple(draw(st.lists(u16, min_size=write_count, max_size=write_count)))
    pdu = struct.pack(">BHHHHB", 23, read_address, read_count, write_address, write_count, 2 * write_count)
    fields = Fields(
        23,
        read_address=read_address,
        read_count=read_count,
        write_address=write_address,
        write_count=write_count,
        values=values,
    )
    return Sample(pdu + registers(values), fields)


@st.composite
def read_fifo_queue(draw: st.DrawFn) -> Sample:
    address = draw(u16)
    return Sample(struct.pack(">BH", 24, address), Fields(24, read_address=address, read_count=1))


@st.composite
def encapsulated_interface_transport(draw: st.DrawFn) -> Sample:
    if draw(st.booleans()):
        code, object_id = draw(st.integers(1, 4)), draw(st.integers(0, 0xFF))
        return Sample(bytes((43, READ_DEVICE_ID, code, object_id)), Fields(43, sub_function=READ_DEVICE_ID))
    mei = draw(st.integers(0, 0xFF).filter(lambda m: m != READ_DEVICE_ID))
    data = draw(st.binary(max_size=PDU_MAX - 2))
    return Sample(bytes((43, mei)) + data, Fields(43, sub_function=mei))


@st.composite
def opaque_requests(draw: st.DrawFn) -> Sample:
    fc = draw(st.integers(0, 0x7F).filter(lambda code: code not in PUBLIC_FUNCTION_CODES))
    data = draw(st.binary(max_size=PDU_MAX - 1))
    return Sample(bytes((fc,)) + data, Fields(fc))


valid_requests: st.SearchStrategy[Sample] = st.one_of(
    read_requests(),
    write_single_coil(),
    write_single_register(),
    no_data_requests(),
    diagnostics(),
    write_multiple_coils(),
    write_multiple_registers(),
    read_file_record(),
    write_file_record(),
    mask_write_register(),
    read_write_multiple_registers(),
    read_fifo_queue(),
    encapsulated_interface_transport(),
    opaque_requests(),
)

# Valid requests of one function code each: every public code has its own.
SAMPLES_BY_FUNCTION_CODE: dict[int, st.SearchStrategy[Sample]] = {
    **{fc: read_requests((fc,)) for fc in (1, 2, 3, 4)},
    5: write_single_coil(),
    6: write_single_register(),
    **{fc: no_data_requests((fc,)) for fc in (7, 11, 12, 17)},
    8: diagnostics(),
    15: write_multiple_coils(),
    16: write_multiple_registers(),
    20: read_file_record(),
    21: write_file_record(),
    22: mask_write_register(),
    23: read_write_multiple_registers(),
    24: read_fifo_queue(),
    43: encapsulated_interface_transport(),
}


# ------------------------------------------------------------------------------ response strategies


@st.composite
def valid_responses(draw: st.DrawFn, request: Request) -> bytes:
    """A well-formed normal response to ``request`` (spec §6, response layouts)."""
    fc, pdu = request.function_code, request.pdu
    if fc in (1, 2):
        count = request.read_count
        raw = draw(st.binary(min_size=(count + 7) // 8, max_size=(count + 7) // 8))
        data = pack_coils((raw[i // 8] >> (i % 8)) & 1 for i in range(count))
        return bytes((fc, len(data))) + data
    if fc in (3, 4, 23):
        size = 2 * request.read_count
        return bytes((fc, size)) + draw(st.binary(min_size=size, max_size=size))
    if fc in (5, 6, 21, 22):
        return pdu  # an echo of the request
    if fc == 7:
        return bytes((7,)) + draw(st.binary(min_size=1, max_size=1))
    if fc == 8:
        sub = request.sub_function
        if sub == 0 or sub in DIAGNOSTIC_ECHOES:
            return pdu
        if sub in DIAGNOSTIC_SUB_FUNCTIONS:
            return pdu[:3] + draw(st.binary(min_size=2, max_size=2))
        return pdu[:3] + draw(st.binary(max_size=PDU_MAX - 3))
    if fc == 11:
        return bytes((11,)) + draw(st.binary(min_size=4, max_size=4))
    if fc == 12:
        body = draw(st.binary(min_size=6, max_size=6)) + draw(st.binary(max_size=64))
        return bytes((12, len(body))) + body
    if fc in (15, 16):
        return pdu[:5]  # function code, starting address, quantity
    if fc == 17:
        body = draw(st.binary(min_size=1, max_size=PDU_MAX - 2))
        return bytes((17, len(body))) + body
    if fc == 20:
        body = b""
        for _, _, record_length in request.file_records:
            data = draw(st.binary(min_size=2 * record_length, max_size=2 * record_length))
            body += bytes((1 + len(data), 6)) + data
        return bytes((20, len(body))) + body
    if fc == 24:
        count = draw(st.integers(0, 31))
        values = draw(st.binary(min_size=2 * count, max_size=2 * count))
        return struct.pack(">BHH", 24, 2 + 2 * count, count) + values
    if fc == 43 and request.sub_function == READ_DEVICE_ID:
        objects = draw(st.lists(st.binary(max_size=20), max_size=10))
        more = draw(st.sampled_from((0x00, 0xFF)))
        header = bytes((43, READ_DEVICE_ID, pdu[2], draw(st.sampled_from((1, 2, 3, 0x81, 0x82, 0x83)))))
        body = b"".join(bytes((index, len(value))) + value for index, value in enumerate(objects))
        return header + bytes((more, 0, len(objects))) + body
    if fc == 43:
        return bytes((43, request.sub_function)) + draw(st.binary(max_size=PDU_MAX - 2))
    return bytes((fc,)) + draw(st.binary(max_size=PDU_MAX - 1))


def has_exact_response(request: Request) -> bool:
    """Whether every byte of a normal response is determined by its structure.

    Then any truncation or extension of a well-formed response must be refused. Not so for an
    unassigned FC 8 sub-function, a MEI type other than 14, or an opaque function code.
    """
    fc = request.function_code
    if fc == 8:
        return request.sub_function == 0 or request.sub_function in DIAGNOSTIC_SUB_FUNCTIONS
    if fc == 43:
        return request.sub_function == READ_DEVICE_ID
    return fc in PUBLIC_FUNCTION_CODES


def structural_positions(request: Request, response: bytes) -> list[int]:
    """Offsets in a well-formed normal ``response`` that no other value can take.

    Counts, lengths, echoed bytes, reference types and matched codes: changing any one of them makes the
    response malformed or an answer to some other request.
    """
    fc = request.function_code
    positions = [0] if len(response) != 2 else []  # fc | 0x80 and two bytes would be an exception reply
    if fc in (1, 2, 3, 4, 12, 17, 23):
        positions.append(1)  # byte count
    elif fc in (5, 6, 15, 16, 21, 22) or (
        fc == 8 and (request.sub_function in DIAGNOSTIC_ECHOES or not request.sub_function)
    ):
        positions.extend(range(1, len(response)))  # an echo
    elif fc == 8 and request.sub_function in DIAGNOSTIC_SUB_FUNCTIONS:
        positions.extend((1, 2))  # the echoed sub-function
    elif fc == 20:
        positions.append(1)
        offset = 2
        while offset < len(response):
            positions.extend((offset, offset + 1))  # sub-response length, reference type 6
            offset += 1 + response[offset]
    elif fc == 24:
        positions.extend((1, 2, 3, 4))  # byte count, FIFO count
    elif fc == 43 and request.sub_function == READ_DEVICE_ID:
        positions.extend((1, 2, 6))  # MEI type, read device id code, number of objects
        # Only the last object's length: another object's length may change into a different but
        # well-formed list (00 00 01 01 00 -> 00 01 01 01 00 is two objects either way).
        offset, last = 7, -1
        while offset < len(response):
            last = offset + 1
            offset += 2 + response[offset + 1]
        if last >= 0:
            positions.append(last)
    return positions
