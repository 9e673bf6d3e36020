"""Modbus TCP codec (sans-IO): MBAP framing, request parsing and encoding, response checking."""

from protocols.modbus.connection import (
    ClientConnection,
    MbapFramer,
    ServerConnection,
    encode_adu,
    encode_exception,
)
from protocols.modbus.pdu import ModbusProtocolError, Request, encode_request_pdu, parse_request
from protocols.modbus.responses import check_response, is_read_reply
from protocols.modbus.spec import DiagnosticSubFunction, ExceptionCode, FunctionCode

__all__ = [
    "ClientConnection",
    "DiagnosticSubFunction",
    "ExceptionCode",
    "FunctionCode",
    "MbapFramer",
    "ModbusProtocolError",
    "Request",
    "ServerConnection",
    "check_response",
    "encode_adu",
    "encode_exception",
    "encode_request_pdu",
    "is_read_reply",
    "parse_request",
]
