"""What the Modbus codec refuses, and with which exception code or close action."""

from __future__ import annotations

import pytest

from protocols.modbus import ModbusProtocolError, check_response, parse_request

GATEWAY_TARGET_FAILED = 0x0B


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
