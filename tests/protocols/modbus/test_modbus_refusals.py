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
