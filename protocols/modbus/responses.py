"""Modbus responses from a device: each one checked against the request it answers.

A response is forwarded to the client only when it answers exactly that request (function code, byte
counts against the requested quantity, echoes); anything else is refused with exception 0x0B, so a
confused or hostile device cannot make the gateway hand a client data for another request.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

from protocols.modbus import spec
from protocols.modbus.pdu import ModbusProtocolError, Request
from protocols.modbus.spec import ExceptionCode

GATEWAY_TARGET_DEVICE_FAILED_TO_RESPOND = ExceptionCode.GATEWAY_TARGET_DEVICE_FAILED_TO_RESPOND.value

_ResponseCheck = Callable[[Request, bytes], None]


def _bad(request: Request, message: str) -> ModbusProtocolError:
    return ModbusProtocolError(
        f"FC {request.function_code} response: {message}",
        exception_code=GATEWAY_TARGET_DEVICE_FAILED_TO_RESPOND,
        transaction_id=request.transaction_id,
        unit_id=request.unit_id,
        function_code=request.function_code,
    )


def _check_read_bits(request: Request, pdu: bytes) -> None:
    expected = (request.read_count + 7) >> 3
    if len(pdu) != 2 + expected or pdu[1] != expected:
        raise _bad(request, f"{len(pdu)} bytes with byte count {pdu[1:2].hex()}, expected {expected}")


def _check_read_registers(request: Request, pdu: bytes) -> None:
    expected = 2 * request.read_count
    if len(pdu) != 2 + expected or pdu[1] != expected:
        raise _bad(request, f"{len(pdu)} bytes with byte count {pdu[1:2].hex()}, expected {expected}")


def _check_echo(request: Request, pdu: bytes) -> None:
    if pdu != request.pdu:
        raise _bad(request, "does not echo the request")


def _check_write_multiple(request: Request, pdu: bytes) -> None:
    if pdu != request.pdu[:5]:
        raise _bad(request, "does not echo address and quantity")


def _check_exception_status(request: Request, pdu: bytes) -> None:
    if len(pdu) != 2:
        raise _bad(request, f"{len(pdu)} bytes, expected 2")


def _check_diagnostics(request: Request, pdu: bytes) -> None:
    if len(pdu) < 3 or pdu[1:3] != request.pdu[1:3]:
        raise _bad(request, "does not echo the sub-function")
    if request.sub_function in spec.DIAGNOSTIC_ECHO_SUB_FUNCTIONS and pdu != request.pdu:
        raise _bad(request, f"sub-function {request.sub_function} does not echo the request data")
    if request.sub_function in spec.DIAGNOSTIC_SUB_FUNCTIONS and request.sub_function and len(pdu) != 5:
        raise _bad(request, f"{len(pdu)} bytes, expected 5")


def _check_comm_event_counter(request: Request, pdu: bytes) -> None:
    if len(pdu) != 5:
        raise _bad(request, f"{len(pdu)} bytes, expected 5")


def _check_byte_counted(minimum: int) -> _ResponseCheck:
    def check(request: Request, pdu: bytes) -> None:
        if len(pdu) < 2 or pdu[1] != len(pdu) - 2 or pdu[1] < minimum:
            raise _bad(request, "byte count does not match the length")

    return check


def _check_read_file_record(request: Request, pdu: bytes) -> None:
    if len(pdu) < 2 or pdu[1] != len(pdu) - 2:
        raise _bad(request, "byte count does not match the length")
    offset = 2
    for _, _, record_length in request.file_records:
        if offset + 2 > len(pdu) or pdu[offset] != 1 + 2 * record_length:
            raise _bad(request, "sub-response length does not match its request")
        if pdu[offset + 1] != spec.FILE_REFERENCE_TYPE:
            raise _bad(request, "sub-response reference type is not 6")
        offset += 1 + pdu[offset]
    if offset != len(pdu):
        raise _bad(request, "trailing bytes after the last sub-response")


def _check_read_write_multiple(request: Request, pdu: bytes) -> None:
    _check_read_registers(request, pdu)


def _check_read_fifo_queue(request: Request, pdu: bytes) -> None:
    if len(pdu) < 5:
        raise _bad(request, "shorter than 5 bytes")
    byte_count, fifo_count = struct.unpack_from(">HH", pdu, 1)
    if fifo_count > spec.MAX_FIFO_COUNT or byte_count != 2 + 2 * fifo_count or len(pdu) != 3 + byte_count:
        raise _bad(request, f"byte count {byte_count} and FIFO count {fifo_count} do not fit")


def _check_encapsulated_interface_transport(request: Request, pdu: bytes) -> None:
    if len(pdu) < 2 or pdu[1] != request.sub_function:
        raise _bad(request, "MEI type does not match the request")
    if request.sub_function != spec.MeiType.READ_DEVICE_IDENTIFICATION:
        return
    if len(pdu) < 7 or pdu[2] != request.pdu[2]:
        raise _bad(request, "read device id code does not match the request")
    offset, objects = 7, pdu[6]
    for _ in range(objects):
        if offset + 2 > len(pdu):
            raise _bad(request, "object list truncated")
        offset += 2 + pdu[offset + 1]
    if offset != len(pdu):
        raise _bad(request, "object list length does not match the PDU")


_RESPONSE_CHECKS: dict[int, _ResponseCheck] = {
    1: _check_read_bits,
    2: _check_read_bits,
    3: _check_read_registers,
    4: _check_read_registers,
    5: _check_echo,
    6: _check_echo,
    7: _check_exception_status,
    8: _check_diagnostics,
    11: _check_comm_event_counter,
    12: _check_byte_counted(6),
    15: _check_write_multiple,
    16: _check_write_multiple,
    17: _check_byte_counted(1),
    20: _check_read_file_record,
    21: _check_echo,
    22: _check_echo,
    23: _check_read_write_multiple,
    24: _check_read_fifo_queue,
    43: _check_encapsulated_interface_transport,
}


def check_response(request: Request, pdu: bytes) -> int:
    """Check a device's response PDU against the request it answers.

    Returns 0 for a normal response or the (non-zero) exception code of an exception response; raises
    :class:`ModbusProtocolError` (carrying exception 0x0B for the client) when the response is
    malformed or does not answer this request. Responses to opaque function codes are checked only
    for their function code.
    """
    fc = request.function_code
    if not pdu:
        raise _bad(request, "empty PDU")
    if pdu[0] == fc | spec.EXCEPTION_FLAG:
        if len(pdu) != 2:
            raise _bad(request, f"exception response of {len(pdu)} bytes")
        if not pdu[1]:
            # 0 is no exception code, and returning it would pass the reply off as a normal one.
            raise _bad(request, "exception response with exception code 0")
        return pdu[1]
    if pdu[0] != fc:
        raise _bad(request, f"answers function code {pdu[0]}")
    check = _RESPONSE_CHECKS.get(fc)
    if check is not None:
        check(request, pdu)
    return 0


_MBAP_HEADER: Final = spec.MBAP_HEADER_BYTES


def is_read_reply(request: Request, frame: bytes, start: int, end: int) -> bool:
    """Whether the MBAP frame ``frame[start:end]`` carries a normal reply to ``request`` that is a
    read of bits or registers (FC 1-4) with exactly the byte count its quantity asks for: one that
    :func:`check_response` passes and whose PDU needs no rewriting. Looked at in place, without
    copying the PDU out; anything else (an exception reply, another function code, a wrong length)
    answers False and goes through :func:`check_response`."""
    fc = request.function_code
    if fc > 4 or fc < 1 or frame[start + _MBAP_HEADER] != fc:
        return False
    count = request.read_count
    expected = (count + 7) >> 3 if fc <= 2 else 2 * count
    return end - start == _MBAP_HEADER + 2 + expected and frame[start + _MBAP_HEADER + 1] == expected


__all__ = ["check_response", "is_read_reply"]
