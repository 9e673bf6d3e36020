"""Names and limits from the Modbus Application Protocol Specification V1.1b3 and the Modbus
Messaging on TCP/IP Implementation Guide V1.0b. Every number the codec checks against lives here."""

from __future__ import annotations

from enum import IntEnum
from typing import Final


class FunctionCode(IntEnum):
    READ_COILS = 0x01
    READ_DISCRETE_INPUTS = 0x02
    READ_HOLDING_REGISTERS = 0x03
    READ_INPUT_REGISTERS = 0x04
    WRITE_SINGLE_COIL = 0x05
    WRITE_SINGLE_REGISTER = 0x06
    READ_EXCEPTION_STATUS = 0x07
    DIAGNOSTICS = 0x08
    GET_COMM_EVENT_COUNTER = 0x0B
    GET_COMM_EVENT_LOG = 0x0C
    WRITE_MULTIPLE_COILS = 0x0F
    WRITE_MULTIPLE_REGISTERS = 0x10
    REPORT_SERVER_ID = 0x11
    READ_FILE_RECORD = 0x14
    WRITE_FILE_RECORD = 0x15
    MASK_WRITE_REGISTER = 0x16
    READ_WRITE_MULTIPLE_REGISTERS = 0x17
    READ_FIFO_QUEUE = 0x18
    ENCAPSULATED_INTERFACE_TRANSPORT = 0x2B


class ExceptionCode(IntEnum):
    ILLEGAL_FUNCTION = 0x01
    ILLEGAL_DATA_ADDRESS = 0x02
    ILLEGAL_DATA_VALUE = 0x03
    SERVER_DEVICE_FAILURE = 0x04
    ACKNOWLEDGE = 0x05
    SERVER_DEVICE_BUSY = 0x06
    MEMORY_PARITY_ERROR = 0x08
    GATEWAY_PATH_UNAVAILABLE = 0x0A
    GATEWAY_TARGET_DEVICE_FAILED_TO_RESPOND = 0x0B


class DiagnosticSubFunction(IntEnum):
    """FC 8 sub-function codes (spec §6.8.1)."""

    RETURN_QUERY_DATA = 0x00
    RESTART_COMMUNICATIONS_OPTION = 0x01
    RETURN_DIAGNOSTIC_REGISTER = 0x02
    CHANGE_ASCII_INPUT_DELIMITER = 0x03
    FORCE_LISTEN_ONLY_MODE = 0x04
    CLEAR_COUNTERS_AND_DIAGNOSTIC_REGISTER = 0x0A
    RETURN_BUS_MESSAGE_COUNT = 0x0B
    RETURN_BUS_COMMUNICATION_ERROR_COUNT = 0x0C
    RETURN_BUS_EXCEPTION_ERROR_COUNT = 0x0D
    RETURN_SERVER_MESSAGE_COUNT = 0x0E
    RETURN_SERVER_NO_RESPONSE_COUNT = 0x0F
    RETURN_SERVER_NAK_COUNT = 0x10
    RETURN_SERVER_BUSY_COUNT = 0x11
    RETURN_BUS_CHARACTER_OVERRUN_COUNT = 0x12
    CLEAR_OVERRUN_COUNTER_AND_FLAG = 0x14


class MeiType(IntEnum):
    """FC 43 MEI types (spec §6.19-6.21)."""

    CANOPEN_GENERAL_REFERENCE = 0x0D
    READ_DEVICE_IDENTIFICATION = 0x0E


_FUNCTION_NAMES = {code.value: code.name for code in FunctionCode}
_EXCEPTION_NAMES = {code.value: code.name for code in ExceptionCode}


def function_name(function_code: int) -> str:
    """``READ_HOLDING_REGISTERS`` for 3; the hex value for codes the specification does not name."""
    return _FUNCTION_NAMES.get(function_code) or f"0x{function_code:02X}"


def exception_name(code: int) -> str:
    """``ILLEGAL_FUNCTION`` for 1; the hex value for codes the specification does not name."""
    return _EXCEPTION_NAMES.get(code) or f"0x{code:02X}"


EXCEPTION_FLAG: Final = 0x80

# MBAP (implementation guide §3.1.3): the length field counts the unit id and the PDU.
MBAP_HEADER_BYTES: Final = 7
MBAP_LENGTH_MIN: Final = 2
MBAP_LENGTH_MAX: Final = 254
PROTOCOL_ID_MODBUS: Final = 0
ADU_MAX_BYTES: Final = MBAP_HEADER_BYTES - 1 + MBAP_LENGTH_MAX  # 260
PDU_MAX_BYTES: Final = 253

ADDRESS_SPACE: Final = 0x10000  # a span [address, address + quantity) must stay inside it

# Quantity limits (spec §6.1-6.17).
MAX_READ_BITS: Final = 2000  # FC 1, 2
MAX_READ_REGISTERS: Final = 125  # FC 3, 4, and the read part of FC 23
MAX_WRITE_BITS: Final = 1968  # FC 15
MAX_WRITE_REGISTERS: Final = 123  # FC 16
MAX_READ_WRITE_WRITE_REGISTERS: Final = 121  # write part of FC 23
MAX_FIFO_COUNT: Final = 31  # FC 24

COIL_ON: Final = 0xFF00
COIL_OFF: Final = 0x0000
RESTART_CLEAR_LOG: Final = 0xFF00  # FC 8/01 data: 0x0000 keep the event log, 0xFF00 clear it
DIAGNOSTIC_SUB_FUNCTIONS = frozenset(s.value for s in DiagnosticSubFunction)  # the assigned ones
# FC 8 sub-functions whose response is "Echo Request Data" (spec §6.8.1; 04 gets no response at all).
DIAGNOSTIC_ECHO_SUB_FUNCTIONS = frozenset((0x00, 0x01, 0x03, 0x0A, 0x14))

# File records (spec §6.14-6.15).
FILE_REFERENCE_TYPE: Final = 6
FILE_MAX_RECORD_NUMBER: Final = 0x270F
FILE_READ_BYTE_COUNT_MIN: Final = 0x07
FILE_READ_BYTE_COUNT_MAX: Final = 0xF5
FILE_WRITE_DATA_LENGTH_MIN: Final = 0x09
FILE_WRITE_DATA_LENGTH_MAX: Final = 0xFB
FILE_SUB_REQUEST_BYTES: Final = 7

# Read Device Identification (spec §6.21).
READ_DEVICE_ID_CODES = (1, 2, 3, 4)  # basic, regular, extended, one specific object

# Presets for policy rules (PROTOCOL-NOTES: what industrial DPI firewalls offer).
PRESET_READ_ONLY = (1, 2, 3, 4, 7, 11, 12, 17, 20, 24)
PRESET_READ_WRITE = (*PRESET_READ_ONLY, 5, 6, 15, 16, 21, 22, 23)
PRESET_PROGRAMMING = (40, 42, 90, 125, 126)

WRITE_FUNCTION_CODES = frozenset((5, 6, 15, 16, 21, 22, 23))
# Reads of data (coils, discrete inputs, holding and input registers) and nothing else.
READ_FUNCTION_CODES = frozenset((1, 2, 3, 4))
