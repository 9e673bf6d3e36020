"""What the Modbus codec refuses, and with which exception code or close action."""

from __future__ import annotations

import struct

import pytest
from _pytest.mark.structures import ParameterSet

from protocols.modbus import (
    ClientConnection,
    ModbusProtocolError,
    ServerConnection,
    check_response,
    encode_exception,
    encode_request_pdu,
    parse_request,
)
from tests.protocols.modbus.modbus_samples import DIAGNOSTIC_SUB_FUNCTIONS

ILLEGAL_FUNCTION = 0x01
ILLEGAL_DATA_ADDRESS = 0x02
ILLEGAL_DATA_VALUE = 0x03
GATEWAY_TARGET_FAILED = 0x0B
READ_FILE = "140E0600040001000206000300090002"  # spec §6.14 example
WRITE_FILE = "150D0600040007000306AF04BE100D"  # spec §6.15 example


def test_an_exception_response_with_exception_code_0_is_malformed() -> None:
    # check_response returns 0 for a normal response, so an exception response carrying code 0 must not
    # slip through as one: no exception code 0 exists (spec §7), the device's reply is malformed.
    request = parse_request(7, 1, bytes.fromhex("0104A10001"))
    with pytest.raises(ModbusProtocolError) as caught:
        check_response(request, bytes((0x81, 0x00)))
    assert caught.value.exception_code == GATEWAY_TARGET_FAILED
    assert caught.value.close is False
    assert check_response(request, bytes((0x81, 0x02))) == 0x02


# A request that breaks both a quantity/byte-count rule and the address space: the spec's state diagrams
# for FC 15 (Figure 21), FC 16 (Figure 22) and FC 23 (Figure 27) check "quantity AND byte count" (0x03)
# before "starting address + quantity" (0x02), as they do for FC 1-4. libmodbus answers in the same order.
CHECK_ORDER = [
    pytest.param("0FFFFF000A01" + "00", 0x03, id="fc15 span past 0xFFFF, byte count 1 for 10 coils"),
    pytest.param("0FFFFF000A02" + "00", 0x03, id="fc15 span past 0xFFFF, data one byte short"),
    pytest.param("10FFFF000203" + "000000", 0x03, id="fc16 span past 0xFFFF, byte count 3 for 2 registers"),
    pytest.param("10FFFF000204" + "000000", 0x03, id="fc16 span past 0xFFFF, data one byte short"),
    pytest.param("17FFFF0002" + "0000007A" + "F4" + "00" * 244, 0x03, id="fc23 read span bad, write qty 122"),
    pytest.param("17FFFF0002" + "00000002" + "05" + "00" * 5, 0x03, id="fc23 read span bad, byte count 5"),
    pytest.param("17FFFF0002" + "00000002" + "04" + "00" * 4, 0x02, id="fc23 read span bad, rest good"),
    pytest.param("1700000002" + "FFFF0002" + "04" + "00" * 4, 0x02, id="fc23 write span bad, rest good"),
]


@pytest.mark.parametrize(("pdu_hex", "code"), CHECK_ORDER)
def test_value_checks_come_before_address_checks(pdu_hex: str, code: int) -> None:
    with pytest.raises(ModbusProtocolError) as caught:
        parse_request(1, 1, bytes.fromhex(pdu_hex))
    assert caught.value.exception_code == code


# ------------------------------------------------------------------------------------------- requests
OK = 0  # accepted: parses, and forwarding it is the same as re-encoding its fields


def read(fc: int, address: int, count: int) -> bytes:
    return struct.pack(">BHH", fc, address, count)


def coils(address: int, count: int, byte_count: int = -1, extra: int = 0) -> bytes:
    size = (count + 7) // 8 if byte_count < 0 else byte_count
    return struct.pack(">BHHB", 15, address, count, size) + bytes(max(0, (count + 7) // 8 + extra))


def regs(address: int, count: int, byte_count: int = -1, extra: int = 0) -> bytes:
    size = 2 * count if byte_count < 0 else byte_count
    return struct.pack(">BHHB", 16, address, count, size) + bytes(max(0, 2 * count + extra))


def read_write(
    read_address: int,
    read_count: int,
    write_address: int,
    write_count: int,
    byte_count: int = -1,
    extra: int = 0,
) -> bytes:
    size = 2 * write_count if byte_count < 0 else byte_count
    head = struct.pack(">BHHHHB", 23, read_address, read_count, write_address, write_count, size)
    return head + bytes(max(0, 2 * write_count + extra))


def sub(file_number: int = 1, record_number: int = 0, length: int = 1, reference: int = 6) -> bytes:
    return struct.pack(">BHHH", reference, file_number, record_number, length)


def read_file(*subs: bytes, byte_count: int = -1) -> bytes:
    body = b"".join(subs)
    return bytes((20, len(body) if byte_count < 0 else byte_count)) + body


def write_file(*subs: tuple[bytes, int], byte_count: int = -1) -> bytes:
    """Sub-requests with that many registers of data each (not necessarily their record length)."""
    body = b"".join(head + bytes(2 * registers) for head, registers in subs)
    return bytes((21, len(body) if byte_count < 0 else byte_count)) + body


def diag(sub_function: int, data: int) -> bytes:
    return struct.pack(">BHH", 8, sub_function, data)


def cases() -> list[ParameterSet]:
    table: list[ParameterSet] = []

    def add(name: str, pdu: bytes, expected: int) -> None:
        table.append(pytest.param(pdu, expected, id=name))

    for fc, limit in ((1, 2000), (2, 2000), (3, 125), (4, 125)):
        add(f"fc{fc} quantity 1", read(fc, 0, 1), OK)
        add(f"fc{fc} quantity {limit}", read(fc, 0, limit), OK)
        add(f"fc{fc} quantity {limit + 1}", read(fc, 0, limit + 1), ILLEGAL_DATA_VALUE)
        add(f"fc{fc} quantity 0", read(fc, 0, 0), ILLEGAL_DATA_VALUE)
        add(f"fc{fc} quantity 0xFFFF", read(fc, 0, 0xFFFF), ILLEGAL_DATA_VALUE)
        add(f"fc{fc} span ends at 0xFFFF", read(fc, 0x10000 - limit, limit), OK)
        add(f"fc{fc} span ends at 0x10000", read(fc, 0x10000 - limit + 1, limit), ILLEGAL_DATA_ADDRESS)
        add(f"fc{fc} address 0xFFFF quantity 1", read(fc, 0xFFFF, 1), OK)
        add(f"fc{fc} address 0xFFFF quantity 2", read(fc, 0xFFFF, 2), ILLEGAL_DATA_ADDRESS)
        add(f"fc{fc} one byte short", read(fc, 0, 1)[:-1], ILLEGAL_DATA_VALUE)
        add(f"fc{fc} one byte long", read(fc, 0, 1) + b"\x00", ILLEGAL_DATA_VALUE)
        add(f"fc{fc} function code only", bytes((fc,)), ILLEGAL_DATA_VALUE)

    for value, expected in ((0x0000, OK), (0xFF00, OK), (0x0001, 3), (0x00FF, 3), (0xFF01, 3), (0xFFFF, 3)):
        add(f"fc5 coil value {value:04X}", struct.pack(">BHH", 5, 0xFFFF, value), expected)
    add("fc5 one byte short", bytes.fromhex("0500ACFF"), ILLEGAL_DATA_VALUE)
    add("fc5 one byte long", bytes.fromhex("0500ACFF0000"), ILLEGAL_DATA_VALUE)
    add("fc6 any address and value", struct.pack(">BHH", 6, 0xFFFF, 0xFFFF), OK)
    add("fc6 one byte short", bytes.fromhex("06000100"), ILLEGAL_DATA_VALUE)
    add("fc6 one byte long", bytes.fromhex("060001000300"), ILLEGAL_DATA_VALUE)

    for fc in (7, 11, 12, 17):
        add(f"fc{fc} no data", bytes((fc,)), OK)
        add(f"fc{fc} with data", bytes((fc, 0)), ILLEGAL_DATA_VALUE)

    add("fc8 no sub-function", b"\x08", ILLEGAL_DATA_VALUE)
    add("fc8 half a sub-function", b"\x08\x00", ILLEGAL_DATA_VALUE)
    add("fc8/00 without data", b"\x08\x00\x00", OK)
    add("fc8/00 odd data", b"\x08\x00\x00\x01", OK)  # "Any": looped back whatever it is
    good: tuple[int, ...]
    bad: tuple[int, ...]
    for sub_function in DIAGNOSTIC_SUB_FUNCTIONS:
        name = f"fc8/{sub_function:02X}"
        if sub_function == 0x01:  # restart: FF 00 clears the log, 00 00 keeps it, nothing else
            good, bad = (0x0000, 0xFF00), (0x0001, 0x00FF, 0xFF01, 0xFFFF)
        elif sub_function == 0x03:  # CHAR 00
            good, bad = (0x0000, 0x0D00, 0xFF00), (0x0001, 0x0D0A, 0x00FF)
        else:  # 00 00
            good, bad = (0x0000,), (0x0001, 0x0100, 0xFF00, 0xFFFF)
        for data in good:
            add(f"{name} data {data:04X}", diag(sub_function, data), OK)
        for data in bad:
            add(f"{name} data {data:04X}", diag(sub_function, data), ILLEGAL_DATA_VALUE)
        add(f"{name} without data", diag(sub_function, 0)[:3], ILLEGAL_DATA_VALUE)
        add(f"{name} one data byte", diag(sub_function, 0)[:4], ILLEGAL_DATA_VALUE)
        add(f"{name} three data bytes", diag(sub_function, 0) + b"\x00", ILLEGAL_DATA_VALUE)

    add("fc15 quantity 1", coils(0, 1), OK)
    add("fc15 quantity 1968", coils(0, 1968), OK)
    add("fc15 quantity 1969", coils(0, 1969), ILLEGAL_DATA_VALUE)
    add("fc15 quantity 0", coils(0, 0, byte_count=0), ILLEGAL_DATA_VALUE)
    add("fc15 span ends at 0xFFFF", coils(0x10000 - 1968, 1968), OK)
    add("fc15 span ends at 0x10000", coils(0x10000 - 1967, 1968), ILLEGAL_DATA_ADDRESS)
    add("fc15 byte count 1 for 10 coils", coils(0, 10, byte_count=1, extra=-1), ILLEGAL_DATA_VALUE)
    add("fc15 byte count 3 for 10 coils", coils(0, 10, byte_count=3, extra=1), ILLEGAL_DATA_VALUE)
    add("fc15 data one byte short", coils(0, 10, extra=-1), ILLEGAL_DATA_VALUE)
    add("fc15 data one byte long", coils(0, 10, extra=1), ILLEGAL_DATA_VALUE)
    add("fc15 no byte count", coils(0, 10)[:5], ILLEGAL_DATA_VALUE)

    add("fc16 quantity 1", regs(0, 1), OK)
    add("fc16 quantity 123", regs(0, 123), OK)
    add("fc16 quantity 124", regs(0, 124), ILLEGAL_DATA_VALUE)
    add("fc16 quantity 0", regs(0, 0), ILLEGAL_DATA_VALUE)
    add("fc16 span ends at 0xFFFF", regs(0x10000 - 123, 123), OK)
    add("fc16 span ends at 0x10000", regs(0x10000 - 122, 123), ILLEGAL_DATA_ADDRESS)
    add("fc16 byte count 3 for 2 registers", regs(0, 2, byte_count=3, extra=-1), ILLEGAL_DATA_VALUE)
    add("fc16 byte count 5 for 2 registers", regs(0, 2, byte_count=5, extra=1), ILLEGAL_DATA_VALUE)
    add("fc16 data one byte short", regs(0, 2, extra=-1), ILLEGAL_DATA_VALUE)
    add("fc16 data one byte long", regs(0, 2, extra=1), ILLEGAL_DATA_VALUE)
    add("fc16 no byte count", regs(0, 2)[:5], ILLEGAL_DATA_VALUE)

    add("fc20 byte count 7: one sub-request", read_file(sub()), OK)
    add("fc20 byte count 6", read_file(sub()[:6]), ILLEGAL_DATA_VALUE)
    add("fc20 byte count 0xF5: 35 sub-requests", read_file(*[sub()] * 35), OK)
    add("fc20 byte count 0xF6", read_file(*[sub()] * 35, b"\x06"), ILLEGAL_DATA_VALUE)
    add("fc20 byte count 0xFC: 36 sub-requests", read_file(*[sub()] * 36), ILLEGAL_DATA_VALUE)
    add("fc20 byte count 8: a sub-request and a byte", read_file(sub(), b"\x06"), ILLEGAL_DATA_VALUE)
    add("fc20 byte count 14 over 7 bytes", read_file(sub(), byte_count=14), ILLEGAL_DATA_VALUE)
    add("fc20 byte count 7 over 14 bytes", read_file(sub(), sub(), byte_count=7), ILLEGAL_DATA_VALUE)
    add("fc20 no byte count", b"\x14", ILLEGAL_DATA_VALUE)
    for reference in (0, 5, 7, 0xFF):
        add(f"fc20 reference type {reference}", read_file(sub(reference=reference)), ILLEGAL_DATA_ADDRESS)
    add("fc20 reference type 5 in 2nd sub-request", read_file(sub(), sub(reference=5)), ILLEGAL_DATA_ADDRESS)
    add("fc20 file number 0", read_file(sub(file_number=0)), ILLEGAL_DATA_ADDRESS)
    add("fc20 file number 0xFFFF", read_file(sub(file_number=0xFFFF)), OK)
    add("fc20 record 0x270F length 1", read_file(sub(record_number=0x270F)), OK)
    add("fc20 record 0x2710", read_file(sub(record_number=0x2710)), ILLEGAL_DATA_ADDRESS)
    add("fc20 record 0x270F length 2", read_file(sub(record_number=0x270F, length=2)), ILLEGAL_DATA_ADDRESS)
    add("fc20 record length 0", read_file(sub(length=0)), ILLEGAL_DATA_ADDRESS)
    # The response (2 + per sub-request 2 + 2 * length bytes) must fit 253 bytes.
    add("fc20 record length 124: response of 252", read_file(sub(length=124)), OK)
    add("fc20 record length 125: response of 254", read_file(sub(length=125)), ILLEGAL_DATA_VALUE)
    add("fc20 two records, response of 252", read_file(sub(length=62), sub(length=61)), OK)
    add("fc20 two records, response of 254", read_file(sub(length=62), sub(length=62)), ILLEGAL_DATA_VALUE)

    add("fc21 data length 9: one register", write_file((sub(), 1)), OK)
    add("fc21 data length 0xFB: 122 registers", write_file((sub(length=122), 122)), OK)
    add("fc21 data length 8", write_file((sub(length=1), 0), byte_count=8) + b"\x00", ILLEGAL_DATA_VALUE)
    add("fc21 data length 7: no data", write_file((sub(), 0)), ILLEGAL_DATA_VALUE)
    add("fc21 data length 0xFC", write_file((sub(length=122), 122)) + b"\x00", ILLEGAL_DATA_VALUE)
    add("fc21 data length over the PDU", write_file((sub(), 1), byte_count=11), ILLEGAL_DATA_VALUE)
    add("fc21 data shorter than record length", write_file((sub(length=2), 1)), ILLEGAL_DATA_VALUE)
    add("fc21 data longer than record length", write_file((sub(length=1), 2)), ILLEGAL_DATA_VALUE)
    for reference in (0, 5, 7):
        add(
            f"fc21 reference type {reference}",
            write_file((sub(reference=reference), 1)),
            ILLEGAL_DATA_ADDRESS,
        )
    add("fc21 file number 0", write_file((sub(file_number=0), 1)), ILLEGAL_DATA_ADDRESS)
    add("fc21 record 0x2710", write_file((sub(record_number=0x2710), 1)), ILLEGAL_DATA_ADDRESS)
    add("fc21 record length 0", write_file((sub(length=0), 0), (sub(), 1)), ILLEGAL_DATA_ADDRESS)

    add("fc22 any masks", bytes.fromhex("16FFFFFFFF0000"), OK)
    add("fc22 one byte short", bytes.fromhex("16000400F200"), ILLEGAL_DATA_VALUE)
    add("fc22 one byte long", bytes.fromhex("16000400F2002500"), ILLEGAL_DATA_VALUE)

    add("fc23 read 125 write 121", read_write(0, 125, 0, 121), OK)
    add("fc23 read 126", read_write(0, 126, 0, 1), ILLEGAL_DATA_VALUE)
    add("fc23 write 122", read_write(0, 1, 0, 122), ILLEGAL_DATA_VALUE)
    add("fc23 read 0", read_write(0, 0, 0, 1), ILLEGAL_DATA_VALUE)
    add("fc23 write 0", read_write(0, 1, 0, 0), ILLEGAL_DATA_VALUE)
    add(
        "fc23 byte count 5 for 3 registers",
        read_write(0, 1, 0, 3, byte_count=5, extra=-1),
        ILLEGAL_DATA_VALUE,
    )
    add("fc23 data one byte short", read_write(0, 1, 0, 3, extra=-1), ILLEGAL_DATA_VALUE)
    add("fc23 data one byte long", read_write(0, 1, 0, 3, extra=1), ILLEGAL_DATA_VALUE)
    add("fc23 no byte count", read_write(0, 1, 0, 1)[:9], ILLEGAL_DATA_VALUE)
    add("fc23 read span ends at 0xFFFF", read_write(0x10000 - 125, 125, 0, 1), OK)
    add("fc23 read span ends at 0x10000", read_write(0x10000 - 124, 125, 0, 1), ILLEGAL_DATA_ADDRESS)
    add("fc23 write span ends at 0xFFFF", read_write(0, 1, 0x10000 - 121, 121), OK)
    add("fc23 write span ends at 0x10000", read_write(0, 1, 0x10000 - 120, 121), ILLEGAL_DATA_ADDRESS)

    add("fc24 pointer 0xFFFF", bytes.fromhex("18FFFF"), OK)
    add("fc24 one byte short", bytes.fromhex("1804"), ILLEGAL_DATA_VALUE)
    add("fc24 one byte long", bytes.fromhex("1804DE00"), ILLEGAL_DATA_VALUE)

    add("fc43 no MEI type", b"\x2b", ILLEGAL_DATA_VALUE)
    for code in (1, 2, 3, 4):
        add(f"fc43/14 read device id code {code}", bytes((0x2B, 0x0E, code, 0xFF)), OK)
    for code in (0, 5, 0x80, 0xFF):
        add(f"fc43/14 read device id code {code}", bytes((0x2B, 0x0E, code, 0)), ILLEGAL_DATA_VALUE)
    add("fc43/14 no object id", bytes.fromhex("2B0E01"), ILLEGAL_DATA_VALUE)
    add("fc43/14 trailing byte", bytes.fromhex("2B0E010000"), ILLEGAL_DATA_VALUE)
    add("fc43/14 MEI type only", bytes.fromhex("2B0E"), ILLEGAL_DATA_VALUE)

    for fc in (0x80, 0x81, 0x83, 0xAB, 0xFF):
        add(f"function code 0x{fc:02X} is an exception code", bytes((fc, 0, 0, 0, 1)), ILLEGAL_FUNCTION)
    return table


@pytest.mark.parametrize(("pdu", "expected"), cases())
def test_request_limits(pdu: bytes, expected: int) -> None:
    if expected == OK:
        request = parse_request(0x0102, 0x03, pdu)
        assert request.pdu == pdu
        assert encode_request_pdu(request) == pdu
        return
    with pytest.raises(ModbusProtocolError) as caught:
        parse_request(0x0102, 0x03, pdu)
    error = caught.value
    assert error.exception_code == expected
    assert error.close is False
    # What the session needs to answer this very request with encode_exception.
    assert (error.transaction_id, error.unit_id, error.function_code) == (0x0102, 0x03, pdu[0] & 0x7F)


def test_refusal_answers_as_an_exception_adu() -> None:
    with pytest.raises(ModbusProtocolError) as caught:
        parse_request(0x0A0B, 0x11, read(3, 0, 126))
    error = caught.value
    assert error.exception_code is not None
    frame = encode_exception(error.transaction_id, error.unit_id, error.function_code, error.exception_code)
    assert frame == bytes.fromhex("0A0B 0000 0003 11 83 03")


# ------------------------------------------------------------------------------------------ responses
# Request (a spec example) and a device reply that does not answer it: the client gets 0x0B (gateway
# target device failed to respond) and the connection goes on (close=False).
BAD_RESPONSES: list[tuple[str, str, str]] = [
    ("fc1 byte count 2 for 19 coils", "0100130013", "0102CD6B"),
    ("fc1 byte count 4 for 19 coils", "0100130013", "0104CD6B0500"),
    ("fc1 truncated", "0100130013", "0103CD6B"),
    ("fc1 trailing byte", "0100130013", "0103CD6B0500"),
    ("fc1 function code only", "0100130013", "01"),
    ("fc1 answered as fc2", "0100130013", "0203CD6B05"),
    ("fc2 answered as fc1", "0200C40016", "0103ACDB35"),
    ("fc3 byte count 4 for 3 registers", "03006B0003", "0304022B0000"),
    ("fc3 odd length", "03006B0003", "0306022B000000"),
    ("fc3 trailing byte", "03006B0003", "0306022B0000006400"),
    ("fc3 answered as fc4", "03006B0003", "0406022B00000064"),
    ("fc4 byte count 0", "0400080001", "0400"),
    ("fc5 echo of another address", "0500ACFF00", "0500ADFF00"),
    ("fc5 echo of another value", "0500ACFF00", "0500AC0000"),
    ("fc5 truncated", "0500ACFF00", "0500ACFF"),
    ("fc5 trailing byte", "0500ACFF00", "0500ACFF0000"),
    ("fc6 echo of another value", "0600010003", "0600010004"),
    ("fc6 answered as fc16", "0600010003", "1000010001"),
    ("fc7 no data", "07", "07"),
    ("fc7 two data bytes", "07", "076D00"),
    ("fc8/00 other data", "080000A537", "080000A536"),
    ("fc8/00 other sub-function", "080000A537", "080001A537"),
    ("fc8/00 truncated", "080000A537", "080000A5"),
    ("fc8/02 truncated", "0800020000", "08000201"),
    ("fc8/02 trailing byte", "0800020000", "080002012345"),
    ("fc8/0B other sub-function", "08000B0000", "08000C0121"),
    ("fc11 truncated", "0B", "0BFFFF01"),
    ("fc11 trailing byte", "0B", "0BFFFF010800"),
    ("fc12 byte count 7 over 8 bytes", "0C", "0C070000010801212000"),
    ("fc12 byte count below 6", "0C", "0C050000010801"),
    ("fc12 byte count 9 over 8 bytes", "0C", "0C090000010801212000"),
    ("fc15 echo of another quantity", "0F0013000A02CD01", "0F0013000B"),
    ("fc15 echo of another address", "0F0013000A02CD01", "0F0014000A"),
    ("fc15 trailing byte", "0F0013000A02CD01", "0F0013000A02"),
    ("fc15 truncated", "0F0013000A02CD01", "0F001300"),
    ("fc16 echo of another quantity", "100001000204000A0102", "1000010001"),
    ("fc16 echo with the data", "100001000204000A0102", "100001000204000A0102"),
    ("fc17 byte count 3 over 2 bytes", "11", "110301FF"),
    ("fc17 byte count 0", "11", "1100"),
    ("fc20 data length 0x0D over 12 bytes", READ_FILE, "140D05060DFE0020050633CD0040"),
    ("fc20 sub-response length 4", READ_FILE, "140C04060DFE0020050633CD0040"),
    ("fc20 sub-response reference type 7", READ_FILE, "140C05070DFE0020050633CD0040"),
    ("fc20 one sub-response missing", READ_FILE, "140605060DFE0020"),
    ("fc20 extra sub-response", READ_FILE, "141205060DFE0020050633CD00400506AAAA0000"),
    ("fc21 echo with other data", WRITE_FILE, "150D06000400070003" + "06AF04BE100E"),
    ("fc21 truncated echo", WRITE_FILE, "150D06000400070003" + "06AF04BE10"),
    ("fc22 echo of another AND mask", "16000400F20005", "16000400F30005"),
    ("fc23 byte count 10 for 6 registers", "1700030006000E00030600FF00FF00FF", "170A00FE0ACD00010003000D"),
    ("fc23 answered as fc3", "1700030006000E00030600FF00FF00FF", "030C00FE0ACD00010003000D00FF"),
    ("fc24 byte count 7", "1804DE", "1800070002" + "01B81284"),
    ("fc24 values truncated", "1804DE", "1800060002" + "01B812"),
    ("fc24 FIFO count 32", "1804DE", "1800420020" + "0000" * 32),
    ("fc43/14 other MEI type", "2B0E0100", "2B0D010100000100024142"),
    ("fc43/14 other read device id code", "2B0E0100", "2B0E020100000100024142"),
    ("fc43/14 object list truncated", "2B0E0100", "2B0E0101000001000341"),
    ("fc43/14 trailing byte", "2B0E0100", "2B0E01010000010002414200"),
    ("fc43/14 header only", "2B0E0100", "2B0E01010000"),
    ("exception response with a trailing byte", "0100130013", "810200"),
    ("exception function code only", "0100130013", "81"),
    ("exception for another function code", "0100130013", "8302"),
    ("empty response", "0100130013", ""),
]


@pytest.mark.parametrize(
    ("request_hex", "response_hex"),
    [pytest.param(request, response, id=name) for name, request, response in BAD_RESPONSES],
)
def test_responses_that_do_not_answer_their_request(request_hex: str, response_hex: str) -> None:
    request = parse_request(0x4321, 0x09, bytes.fromhex(request_hex))
    with pytest.raises(ModbusProtocolError) as caught:
        check_response(request, bytes.fromhex(response_hex))
    error = caught.value
    assert error.exception_code == GATEWAY_TARGET_FAILED
    assert error.close is False
    assert (error.transaction_id, error.unit_id, error.function_code) == (0x4321, 0x09, request.function_code)


# ----------------------------------------------------------------------------------------------- MBAP
Connection = type[ServerConnection] | type[ClientConnection]


def pull(connection: ServerConnection | ClientConnection) -> object:
    if isinstance(connection, ServerConnection):
        return connection.next_request()
    return connection.next_response()


@pytest.mark.parametrize("kind", [ServerConnection, ClientConnection])
@pytest.mark.parametrize(
    "header",
    [
        pytest.param("0001 0001 0006 01", id="protocol id 1"),
        pytest.param("0001 0100 0006 01", id="protocol id 0x0100"),
        pytest.param("0001 FFFF 0006 01", id="protocol id 0xFFFF"),
        pytest.param("0001 0000 0000 01", id="length 0"),
        pytest.param("0001 0000 0001 01", id="length 1: no PDU"),
        pytest.param("0001 0000 00FF 01", id="length 255: PDU of 254"),
        pytest.param("0001 0000 0100 01", id="length 256"),
        pytest.param("0001 0000 FFFF 01", id="length 0xFFFF"),
    ],
)
def test_broken_mbap_headers_close_the_connection(kind: Connection, header: str) -> None:
    connection = kind()
    # The header alone is enough to refuse: the codec does not wait for a body it will never trust.
    connection.receive_data(bytes.fromhex(header))
    with pytest.raises(ModbusProtocolError) as caught:
        pull(connection)
    assert caught.value.close is True
    assert caught.value.exception_code is None


@pytest.mark.parametrize("kind", [ServerConnection, ClientConnection])
def test_mbap_length_2_and_254_are_accepted(kind: Connection) -> None:
    connection = kind()
    shortest = bytes.fromhex("0001 0000 0002 01 07")
    longest = bytes.fromhex("0002 0000 00FE 01 41") + bytes(252)  # an opaque (user-defined) FC 65
    connection.receive_data(shortest + longest)
    first, second = pull(connection), pull(connection)
    assert first is not None and second is not None
    assert pull(connection) is None


def test_incomplete_frame_is_no_error() -> None:
    # Six bytes do not make a header yet; a header announcing more than has arrived waits for the rest.
    connection = ServerConnection()
    for piece in (bytes.fromhex("0001 0000 00"), bytes.fromhex("06 01 03 00"), bytes.fromhex("6B 00")):
        connection.receive_data(piece)
        assert connection.next_request() is None
    connection.receive_data(b"\x03")
    request = connection.next_request()
    assert request is not None and request.read_count == 3


@pytest.mark.parametrize(
    ("request_hex", "response_hex"),
    [
        pytest.param("0800010000", "080001FF00", id="fc8/01 keep-log answered as clear-log"),
        pytest.param("080001FF00", "0800010000", id="fc8/01 clear-log answered as keep-log"),
        pytest.param("0800030D00", "0800030A00", id="fc8/03 another delimiter"),
        pytest.param("08000A0000", "08000A0001", id="fc8/0A data not echoed"),
        pytest.param("0800140000", "0800140100", id="fc8/14 data not echoed"),
    ],
)
def test_diagnostic_echo_sub_functions_must_echo_the_data(request_hex: str, response_hex: str) -> None:
    # Spec §6.8.1: the response to sub-functions 00, 01, 03, 0A and 14 is "Echo Request Data".
    request = parse_request(1, 1, bytes.fromhex(request_hex))
    assert check_response(request, bytes.fromhex(request_hex)) == 0
    with pytest.raises(ModbusProtocolError) as caught:
        check_response(request, bytes.fromhex(response_hex))
    assert caught.value.exception_code == GATEWAY_TARGET_FAILED
