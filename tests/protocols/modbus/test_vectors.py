"""Byte vectors from the Modbus specifications, request and response, for every function code the codec
parses.

Sources: "MODBUS Application Protocol Specification V1.1b3" (cited as §6.x, the worked example of each
function code) and "MODBUS Messaging on TCP/IP Implementation Guide V1.0b" (§3.1.3, the MBAP header).
Where the spec gives no bytes (FC 17's response is device specific, the guide describes the MBAP
fields without a hex example, the FC 8 sub-function table gives data fields only) the vector is derived
from the spec's field layout and marked "derived". Where the spec's own example is inconsistent
(FC 43/14 object lengths and counts) the vector is corrected, marked, and the literal bytes are tested
separately.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from protocols.modbus import (
    ClientConnection,
    ModbusProtocolError,
    ServerConnection,
    check_response,
    encode_adu,
    encode_exception,
    encode_request_pdu,
    parse_request,
)
from tests.protocols.modbus.modbus_samples import Fields, fields_of

GATEWAY_TARGET_FAILED = 0x0B
ALL_CODES = (0x01, 0x02, 0x03, 0x04)
SERIAL_CODES = (0x01, 0x04)  # "01 or 04" for the serial-line diagnostics without data
FILE_CODES = (0x01, 0x02, 0x03, 0x04, 0x08)


@dataclass(frozen=True)
class Vector:
    source: str
    request: str
    fields: Fields
    response: str
    exceptions: tuple[int, ...] = ALL_CODES  # the "Error" row of the function code's table
    canonical: str = ""  # the PDU the codec forwards, when it is not the request itself

    def request_pdu(self) -> bytes:
        return bytes.fromhex(self.request)

    def forwarded_pdu(self) -> bytes:
        return bytes.fromhex(self.canonical or self.request)

    def response_pdu(self) -> bytes:
        return bytes.fromhex(self.response)


def text(value: str) -> str:
    return value.encode("ascii").hex()


COMPANY = "Company identification"  # 0x16 = 22 bytes, as the spec says
PRODUCT = "Product code XX"  # the spec gives length 0x0D for these 15 characters: corrected to 0x0F
PRODUCT_LONG = "Product code " + "X" * 15  # the spec's 0x1C = 28 bytes (it prints 16 X, one too many)
REVISION = "V2.11"

VECTORS: dict[str, Vector] = {
    "fc01 read coils": Vector(
        "§6.1: read discrete outputs 20-38",
        "01 0013 0013",
        Fields(1, read_address=0x13, read_count=0x13),
        "01 03 CD 6B 05",
    ),
    "fc02 read discrete inputs": Vector(
        "§6.2: read discrete inputs 197-218",
        "02 00C4 0016",
        Fields(2, read_address=0xC4, read_count=0x16),
        "02 03 AC DB 35",
    ),
    "fc03 read holding registers": Vector(
        "§6.3: read registers 108-110",
        "03 006B 0003",
        Fields(3, read_address=0x6B, read_count=3),
        "03 06 022B 0000 0064",
    ),
    "fc04 read input registers": Vector(
        "§6.4: read input register 9",
        "04 0008 0001",
        Fields(4, read_address=8, read_count=1),
        "04 02 000A",
    ),
    "fc05 write single coil": Vector(
        "§6.5: write coil 173 ON",
        "05 00AC FF00",
        Fields(5, write_address=0xAC, write_count=1, values=(1,)),
        "05 00AC FF00",
    ),
    "fc05 write single coil off": Vector(
        "§6.5 layout (derived): 0x0000 requests OFF",
        "05 00AC 0000",
        Fields(5, write_address=0xAC, write_count=1, values=(0,)),
        "05 00AC 0000",
    ),
    "fc06 write single register": Vector(
        "§6.6: write register 2 to 00 03",
        "06 0001 0003",
        Fields(6, write_address=1, write_count=1, values=(3,)),
        "06 0001 0003",
    ),
    "fc07 read exception status": Vector("§6.7", "07", Fields(7), "07 6D", exceptions=SERIAL_CODES),
    "fc08 return query data": Vector(
        "§6.8.2: Return Query Data, data A5 37",
        "08 0000 A537",
        Fields(8, sub_function=0),
        "08 0000 A537",
        exceptions=(0x01, 0x03, 0x04),
    ),
    "fc11 get comm event counter": Vector("§6.9", "0B", Fields(11), "0B FFFF 0108", exceptions=SERIAL_CODES),
    "fc12 get comm event log": Vector(
        "§6.10", "0C", Fields(12), "0C 08 0000 0108 0121 20 00", exceptions=SERIAL_CODES
    ),
    "fc15 write multiple coils": Vector(
        "§6.11: write 10 coils starting at coil 20",
        "0F 0013 000A 02 CD01",
        # CD = 1100 1101: coils 20..27 from the least significant bit; 01: coils 28, 29.
        Fields(15, write_address=0x13, write_count=10, values=(1, 0, 1, 1, 0, 0, 1, 1, 1, 0)),
        "0F 0013 000A",
    ),
    "fc16 write multiple registers": Vector(
        "§6.12: write two registers starting at 2 to 00 0A and 01 02",
        "10 0001 0002 04 000A 0102",
        Fields(16, write_address=1, write_count=2, values=(0x000A, 0x0102)),
        "10 0001 0002",
    ),
    "fc17 report server id": Vector(
        "§6.13 layout (derived; the spec's response is device specific): server id 0x01, run indicator ON",
        "11",
        Fields(17),
        "11 02 01 FF",
        exceptions=SERIAL_CODES,
    ),
    "fc20 read file record": Vector(
        "§6.14: two registers of file 4 from record 1, two of file 3 from record 9",
        "14 0E 06 0004 0001 0002 06 0003 0009 0002",
        Fields(20, file_records=((4, 1, 2), (3, 9, 2))),
        "14 0C 05 06 0DFE 0020 05 06 33CD 0040",
        exceptions=FILE_CODES,
    ),
    "fc21 write file record": Vector(
        "§6.15: three registers into file 4 from record 7",
        "15 0D 06 0004 0007 0003 06AF 04BE 100D",
        Fields(21, values=(0x06AF, 0x04BE, 0x100D), file_records=((4, 7, 3),)),
        "15 0D 06 0004 0007 0003 06AF 04BE 100D",
        exceptions=FILE_CODES,
    ),
    "fc22 mask write register": Vector(
        "§6.16: register 5, AND 00F2, OR 0025",
        "16 0004 00F2 0025",
        # The register ends between OR & ~AND = 0x0005 (current bits under the mask all 0) and
        # 0x0005 | 0x00F2 = 0x00F7 (all 1), whatever it held before.
        Fields(22, write_address=4, write_count=1, values=(0x0005, 0x00F7)),
        # The codec forwards the canonical masks (OR bit 0x20 sits under the AND mask and has no
        # effect), so the device it talks to echoes those.
        "16 0004 00F2 0005",
        canonical="16 0004 00F2 0005",
    ),
    "fc23 read/write multiple registers": Vector(
        "§6.17: read six registers from 4, write three from 15",
        "17 0003 0006 000E 0003 06 00FF 00FF 00FF",
        Fields(
            23,
            read_address=3,
            read_count=6,
            write_address=0x0E,
            write_count=3,
            values=(0xFF, 0xFF, 0xFF),
        ),
        "17 0C 00FE 0ACD 0001 0003 000D 00FF",
    ),
    "fc24 read fifo queue": Vector(
        "§6.18: FIFO pointer 1246",
        "18 04DE",
        Fields(24, read_address=0x04DE, read_count=1),
        "18 0006 0002 01B8 1284",
    ),
    "fc43/14 read device identification": Vector(
        "§6.21: basic device identification in one response (object 1 length corrected to 0x0F)",
        "2B 0E 01 00",
        Fields(43, sub_function=0x0E),
        f"2B 0E 01 01 00 00 0300 16 {text(COMPANY)} 01 0F {text(PRODUCT)} 02 05 {text(REVISION)}",
    ),
    "fc43/14 first of two transactions": Vector(
        "§6.21: first transaction (object count corrected from 03 to the 2 objects listed)",
        "2B 0E 01 00",
        Fields(43, sub_function=0x0E),
        f"2B 0E 01 01 FF 02 02 00 16 {text(COMPANY)} 01 1C {text(PRODUCT_LONG)}",
    ),
    "fc43/14 second of two transactions": Vector(
        "§6.21: second transaction from object 2 (object count corrected from 03 to 1)",
        "2B 0E 01 02",
        Fields(43, sub_function=0x0E),
        f"2B 0E 01 01 00 00 01 02 05 {text(REVISION)}",
    ),
    "fc43/14 individual access": Vector(
        "§6.21 layout (derived): read device id code 04, object 0x03 VendorUrl",
        "2B 0E 04 03",
        Fields(43, sub_function=0x0E),
        f"2B 0E 04 81 00 00 01 03 0B {text('example.com')}",
    ),
}

# FC 8 sub-functions, §6.8.1: request data field and a response (echo, or a counter: value derived).
DIAGNOSTIC_VECTORS: dict[str, tuple[str, str]] = {
    "01 restart communications, keep log": ("08 0001 0000", "08 0001 0000"),
    "01 restart communications, clear log": ("08 0001 FF00", "08 0001 FF00"),
    "02 return diagnostic register": ("08 0002 0000", "08 0002 0123"),
    "03 change ASCII input delimiter to CR": ("08 0003 0D00", "08 0003 0D00"),
    "0A clear counters and diagnostic register": ("08 000A 0000", "08 000A 0000"),
    "0B return bus message count": ("08 000B 0000", "08 000B 0121"),
    "0C return bus communication error count": ("08 000C 0000", "08 000C 0002"),
    "0D return bus exception error count": ("08 000D 0000", "08 000D 0003"),
    "0E return server message count": ("08 000E 0000", "08 000E 0108"),
    "0F return server no response count": ("08 000F 0000", "08 000F 0000"),
    "10 return server NAK count": ("08 0010 0000", "08 0010 0000"),
    "11 return server busy count": ("08 0011 0000", "08 0011 0001"),
    "12 return bus character overrun count": ("08 0012 0000", "08 0012 0000"),
    "14 clear overrun counter and flag": ("08 0014 0000", "08 0014 0000"),
}


def pdu_of(hex_text: str) -> bytes:
    return bytes.fromhex(hex_text)


@pytest.mark.parametrize("name", VECTORS)
def test_spec_request_parses_to_its_fields(name: str) -> None:
    vector = VECTORS[name]
    request = parse_request(0x1234, 0x11, vector.request_pdu())
    assert fields_of(request) == vector.fields
    assert (request.transaction_id, request.unit_id) == (0x1234, 0x11)
    assert request.pdu == vector.forwarded_pdu()
    assert encode_request_pdu(request) == request.pdu


@pytest.mark.parametrize("name", VECTORS)
def test_spec_response_answers_its_request(name: str) -> None:
    vector = VECTORS[name]
    request = parse_request(1, 1, vector.request_pdu())
    assert check_response(request, vector.response_pdu()) == 0


@pytest.mark.parametrize("name", VECTORS)
def test_exception_responses_give_their_exception_code(name: str) -> None:
    vector = VECTORS[name]
    request = parse_request(1, 1, vector.request_pdu())
    for code in vector.exceptions:
        assert check_response(request, bytes((request.function_code | 0x80, code))) == code
    # An exception response for another function code does not answer this request.
    other = 0x80 | (request.function_code % 0x7F + 1)
    with pytest.raises(ModbusProtocolError) as caught:
        check_response(request, bytes((other, 0x02)))
    assert caught.value.exception_code == GATEWAY_TARGET_FAILED


def test_exception_example_of_section_7() -> None:
    # §7: read output 1185 (04A1), the server answers 81 02 (illegal data address).
    request = parse_request(1, 1, pdu_of("01 04A1 0001"))
    assert fields_of(request) == Fields(1, read_address=0x04A1, read_count=1)
    assert check_response(request, pdu_of("81 02")) == 0x02


@pytest.mark.parametrize("name", DIAGNOSTIC_VECTORS)
def test_diagnostic_sub_functions(name: str) -> None:
    request_hex, response_hex = DIAGNOSTIC_VECTORS[name]
    request = parse_request(1, 1, pdu_of(request_hex))
    assert fields_of(request) == Fields(8, sub_function=int(name[:2], 16))
    assert encode_request_pdu(request) == request.pdu == pdu_of(request_hex)
    assert check_response(request, pdu_of(response_hex)) == 0


def test_force_listen_only_mode_parses_and_names_its_sub_function() -> None:
    # §6.8.1 sub-function 04: data 00 00, no response is returned. The policy must see sub-function 4.
    request = parse_request(1, 1, pdu_of("08 0004 0000"))
    assert fields_of(request) == Fields(8, sub_function=4)
    assert encode_request_pdu(request) == request.pdu


@pytest.mark.parametrize("sub", [0x05, 0x09, 0x13, 0x15, 0xFFFF])
def test_reserved_diagnostic_sub_functions_stay_opaque(sub: int) -> None:
    # Annex A: 8/19 and 8/21-65535 are reserved. Kept whole so a rule can name (or the policy deny) them.
    pdu = bytes((8,)) + sub.to_bytes(2, "big") + b"\x12\x34\x56"
    request = parse_request(1, 1, pdu)
    assert fields_of(request) == Fields(8, sub_function=sub)
    assert encode_request_pdu(request) == request.pdu == pdu
    assert check_response(request, pdu[:3] + b"\x00") == 0
    with pytest.raises(ModbusProtocolError):
        check_response(request, b"\x08\x00\x00")  # does not echo the sub-function


def test_mask_write_bounds_hold_the_spec_example_and_every_current_value() -> None:
    # §6.16: current 0x12 with AND F2, OR 25 gives 0x17.
    request = parse_request(1, 1, pdu_of("16 0004 00F2 0025"))
    lowest, highest = request.values
    assert lowest <= 0x17 <= highest and (0x17 & ~highest) == 0 and (lowest & ~0x17) == 0
    for current in range(0x10000):
        result = (current & 0x00F2) | (0x0025 & ~0x00F2 & 0xFFFF)
        # bitwise between the bounds: every bit of lowest is set, no bit outside highest is
        assert result & lowest == lowest and result | highest == highest
    # The forwarded masks act exactly as the client's: the same algorithm gives the same result.
    _, and_mask, or_mask = (int.from_bytes(request.pdu[i : i + 2], "big") for i in (1, 3, 5))
    assert all(
        (c & and_mask) | (or_mask & ~and_mask & 0xFFFF) == (c & 0x00F2) | (0x0025 & ~0x00F2 & 0xFFFF)
        for c in range(0x10000)
    )


def test_mask_write_response_must_echo_what_was_forwarded() -> None:
    # The device receives the canonical masks (16 0004 00F2 0005); an echo of the client's original OR
    # mask 0025 does not answer what was sent and is refused like any other wrong echo.
    request = parse_request(1, 1, pdu_of("16 0004 00F2 0025"))
    with pytest.raises(ModbusProtocolError) as caught:
        check_response(request, pdu_of("16 0004 00F2 0025"))
    assert caught.value.exception_code == GATEWAY_TARGET_FAILED


def test_write_multiple_coils_padding_bits_are_cleared_in_the_forwarded_pdu() -> None:
    # §6.11: "Unused bits in the last data byte should be zero-filled". 0xFD sets bits for coils 30..35,
    # which the request does not write: they are dropped, not forwarded.
    request = parse_request(1, 1, pdu_of("0F 0013 000A 02 CDFD"))
    assert request.values == (1, 0, 1, 1, 0, 0, 1, 1, 1, 0)
    assert request.pdu == pdu_of("0F 0013 000A 02 CD01")
    assert encode_request_pdu(request) == request.pdu
    assert check_response(request, pdu_of("0F 0013 000A")) == 0


def test_device_identification_literal_spec_examples_are_refused() -> None:
    # The spec's own bytes do not add up; a device answering like this is sending a malformed reply.
    request = parse_request(1, 1, pdu_of("2B 0E 01 00"))
    length_0d = f"2B 0E 01 01 00 00 03 00 16 {text(COMPANY)} 01 0D {text(PRODUCT)} 02 05 {text(REVISION)}"
    three_listed_two = f"2B 0E 01 01 FF 02 03 00 16 {text(COMPANY)} 01 1C {text(PRODUCT_LONG)}"
    for literal in (length_0d, three_listed_two):
        with pytest.raises(ModbusProtocolError) as caught:
            check_response(request, pdu_of(literal))
        assert caught.value.exception_code == GATEWAY_TARGET_FAILED


def test_canopen_general_reference_is_kept_opaque() -> None:
    # §6.20 / Annex B: MEI type 13's content is specified by CiA, not here (derived bytes).
    pdu = pdu_of("2B 0D 00 01 02 03")
    request = parse_request(1, 1, pdu)
    assert fields_of(request) == Fields(43, sub_function=0x0D)
    assert encode_request_pdu(request) == request.pdu == pdu
    assert check_response(request, pdu_of("2B 0D 09 08")) == 0
    with pytest.raises(ModbusProtocolError):
        check_response(request, pdu_of("2B 0E 09 08"))  # wrong MEI type


@pytest.mark.parametrize("fc", [0x00, 0x09, 0x0A, 0x28, 0x29, 0x2A, 0x41, 0x5A, 0x64, 0x7D, 0x7E, 0x7F])
def test_other_function_codes_are_opaque_requests(fc: int) -> None:
    # §5 / Annex A: reserved (9, 10, 41, 42, 90 UMAS, 125, 126, 127), user-defined (65-72, 100-110) and
    # FC 0 ("not valid") are not refused by the codec: the policy denies them unless a rule names them.
    pdu = bytes((fc, 0x00, 0x02, 0xAB))
    request = parse_request(3, 4, pdu)
    assert fields_of(request) == Fields(fc)
    assert encode_request_pdu(request) == request.pdu == pdu
    assert not request.is_write
    assert check_response(request, bytes((fc, 0x01))) == 0
    assert check_response(request, bytes((fc | 0x80, 0x01))) == 0x01
    with pytest.raises(ModbusProtocolError):
        check_response(request, bytes(((fc + 1) & 0x7F, 0x01)))


def test_write_classification_of_the_spec_vectors() -> None:
    writes = {name for name, vector in VECTORS.items() if parse_request(1, 1, vector.request_pdu()).is_write}
    assert writes == {
        "fc05 write single coil",
        "fc05 write single coil off",
        "fc06 write single register",
        "fc15 write multiple coils",
        "fc16 write multiple registers",
        "fc21 write file record",
        "fc22 mask write register",
        "fc23 read/write multiple registers",
    }


# ----------------------------------------------------------------------------------------------- MBAP
# Implementation guide §3.1.3: transaction id (2 bytes), protocol id (2, 0 = MODBUS), length (2, the
# bytes that follow: unit id + PDU), unit id (1; 0xFF when the server is addressed by its IP address).
# The guide describes the fields without a hex example; these frames wrap the §6.3 example (derived).

MBAP_REQUEST = pdu_of("1234 0000 0006 FF 03 006B 0003")
MBAP_RESPONSE = pdu_of("1234 0000 0009 FF 03 06 022B 0000 0064")
MBAP_EXCEPTION = pdu_of("1234 0000 0003 FF 83 02")


def test_mbap_request_frame_fields() -> None:
    server = ServerConnection()
    server.receive_data(MBAP_REQUEST)
    request = server.next_request()
    assert request is not None
    assert (request.transaction_id, request.unit_id) == (0x1234, 0xFF)
    assert fields_of(request) == VECTORS["fc03 read holding registers"].fields
    assert server.next_request() is None
    assert server.buffered_bytes == 0
    # The gateway re-originates the same bytes on its own transaction id.
    assert encode_adu(0x1234, 0xFF, request.pdu) == MBAP_REQUEST
    assert encode_adu(0xBEEF, 7, request.pdu) == pdu_of("BEEF 0000 0006 07 03 006B 0003")


def test_mbap_response_frame_fields() -> None:
    client = ClientConnection()
    client.receive_data(MBAP_RESPONSE + MBAP_EXCEPTION)
    assert client.next_response() == (0x1234, 0xFF, pdu_of("03 06 022B 0000 0064"))
    assert client.next_response() == (0x1234, 0xFF, pdu_of("83 02"))
    assert client.next_response() is None


def test_mbap_encoders() -> None:
    pdu = pdu_of("03 06 022B 0000 0064")
    assert encode_adu(0x1234, 0xFF, pdu) == MBAP_RESPONSE
    assert encode_exception(0x1234, 0xFF, 0x03, 0x02) == MBAP_EXCEPTION
    # The function code of a refused request may already carry the exception flag (a reserved code).
    assert encode_exception(1, 2, 0x83, 0x01) == pdu_of("0001 0000 0003 02 83 01")


def test_largest_adu_is_260_bytes() -> None:
    # §4.1 of the protocol spec: TCP MODBUS ADU = 253 bytes + MBAP (7 bytes) = 260 bytes. A write file
    # record with request data length 0xFB (one sub-request of 122 registers) fills it (derived).
    body = pdu_of("06 0001 0000 007A") + bytes(range(244))
    pdu = bytes((0x15, 0xFB)) + body
    frame = encode_adu(9, 1, pdu)
    assert len(pdu) == 253 and len(frame) == 260 and frame[4:6] == pdu_of("00FE")
    server = ServerConnection()
    server.receive_data(frame)
    request = server.next_request()
    assert request is not None and request.file_records == ((1, 0, 122),)
    assert encode_request_pdu(request) == pdu
