"""Constants of the OPC UA binary mapping (OPC 10000-6, "Part 6": UA Connection Protocol and UA Secure
Conversation) and the one exception the codec raises.

Status codes are asyncua's (``asyncua.ua.status_codes.StatusCodes``); the few this package names are bound
here so the rest of it reads like the specification.
"""

from __future__ import annotations

import struct
from typing import Final

from asyncua.ua.status_codes import StatusCodes, code_to_name_doc

from protocols.errors import ProtocolError

# Part 6, 7.1.2.2: every message starts with MessageType (3 ASCII bytes), IsFinal (1 byte), MessageSize.
MESSAGE_HEADER: Final = struct.Struct("<3scI")
MESSAGE_HEADER_BYTES: Final = MESSAGE_HEADER.size  # 8
# Part 6, 6.7.2.2: secure conversation messages add the SecureChannelId.
SECURE_HEADER: Final = struct.Struct("<3scII")
SECURE_HEADER_BYTES: Final = SECURE_HEADER.size  # 12
# MSG and CLO: the symmetric security header (TokenId) and the sequence header (SequenceNumber, RequestId).
SYMMETRIC_CHUNK_HEADER: Final = struct.Struct("<3scIIIII")
SYMMETRIC_CHUNK_HEADER_BYTES: Final = SYMMETRIC_CHUNK_HEADER.size  # 24
SEQUENCE_HEADER: Final = struct.Struct("<II")

HEL: Final = b"HEL"
ACK: Final = b"ACK"
ERR: Final = b"ERR"
RHE: Final = b"RHE"  # ReverseHello: only a server sends it, so from a client it is refused
OPN: Final = b"OPN"
MSG: Final = b"MSG"
CLO: Final = b"CLO"
SECURE_MESSAGE_TYPES: Final = frozenset((OPN, MSG, CLO))
KNOWN_MESSAGE_TYPES: Final = frozenset((HEL, ACK, ERR, RHE, OPN, MSG, CLO))

FINAL: Final = b"F"
INTERMEDIATE: Final = b"C"
ABORT: Final = b"A"

PROTOCOL_VERSION: Final = 0
# Part 6, 7.1.2.3: both buffer sizes in a Hello "shall be at least 8192 bytes" (1024 only with ECC
# policies, which a SecurityPolicy None endpoint never negotiates).
MIN_BUFFER_SIZE: Final = 8192
# Part 6, 7.1.2.3: "The EndpointUrl ... shall be less than 4096 bytes".
MAX_ENDPOINT_URL_BYTES: Final = 4096
# The largest Hello there can be: header, five UInt32, the URL's length prefix and the URL. Until the
# Hello has arrived nothing bigger is buffered.
MAX_HELLO_BYTES: Final = MESSAGE_HEADER_BYTES + 5 * 4 + 4 + MAX_ENDPOINT_URL_BYTES
# Part 6, 6.7.3: "This string shall not be more than 4096 bytes" (the Reason of an Error message).
MAX_REASON_BYTES: Final = 4096
# Part 6, 6.7.2.4: sequence numbers "shall not wrap around until it is greater than 4 294 966 271
# (UInt32.MaxValue - 1 024). The first number after the wrap around shall be less than 1 024."
SEQUENCE_WRAP_ABOVE: Final = 0xFFFFFFFF - 1024
SEQUENCE_AFTER_WRAP_BELOW: Final = 1024

SECURITY_POLICY_NONE: Final = "http://opcfoundation.org/UA/SecurityPolicy#None"

# Part 3, 5.9 AttributeIds used by the operation helpers.
ATTRIBUTE_VALUE: Final = 13


class Status:
    """The status codes this package answers with (values from asyncua's generated table)."""

    GOOD: Final = StatusCodes.Good
    BAD_TCP_MESSAGE_TYPE_INVALID: Final = StatusCodes.BadTcpMessageTypeInvalid
    BAD_TCP_MESSAGE_TOO_LARGE: Final = StatusCodes.BadTcpMessageTooLarge
    BAD_TCP_NOT_ENOUGH_RESOURCES: Final = StatusCodes.BadTcpNotEnoughResources
    BAD_TCP_SECURE_CHANNEL_UNKNOWN: Final = StatusCodes.BadTcpSecureChannelUnknown
    BAD_TCP_ENDPOINT_URL_INVALID: Final = StatusCodes.BadTcpEndpointUrlInvalid
    BAD_CONNECTION_REJECTED: Final = StatusCodes.BadConnectionRejected
    BAD_SECURE_CHANNEL_ID_INVALID: Final = StatusCodes.BadSecureChannelIdInvalid
    BAD_SECURE_CHANNEL_TOKEN_UNKNOWN: Final = StatusCodes.BadSecureChannelTokenUnknown
    BAD_SECURE_CHANNEL_CLOSED: Final = StatusCodes.BadSecureChannelClosed
    BAD_SEQUENCE_NUMBER_INVALID: Final = StatusCodes.BadSequenceNumberInvalid
    BAD_SECURITY_POLICY_REJECTED: Final = StatusCodes.BadSecurityPolicyRejected
    BAD_SECURITY_MODE_REJECTED: Final = StatusCodes.BadSecurityModeRejected
    BAD_REQUEST_TYPE_INVALID: Final = StatusCodes.BadRequestTypeInvalid
    BAD_REQUEST_TOO_LARGE: Final = StatusCodes.BadRequestTooLarge
    BAD_RESPONSE_TOO_LARGE: Final = StatusCodes.BadResponseTooLarge
    BAD_DECODING_ERROR: Final = StatusCodes.BadDecodingError
    BAD_ENCODING_ERROR: Final = StatusCodes.BadEncodingError
    BAD_SERVICE_UNSUPPORTED: Final = StatusCodes.BadServiceUnsupported
    BAD_USER_ACCESS_DENIED: Final = StatusCodes.BadUserAccessDenied
    BAD_UNKNOWN_RESPONSE: Final = StatusCodes.BadUnknownResponse
    BAD_TIMEOUT: Final = StatusCodes.BadTimeout


def status_name(code: int) -> str:
    """``BadDecodingError`` for 0x80070000; the hex value for codes asyncua does not know."""
    known = code_to_name_doc.get(code)
    return str(known[0]) if known else f"0x{code:08X}"


class OpcUaProtocolError(ProtocolError):
    """The peer broke OPC UA's binary protocol, or a message cannot be answered as it stands.

    ``status`` is the OPC UA StatusCode to report: in an Error (ERR) message before closing when ``close``
    is true (the default: framing or the secure channel can no longer be trusted), or in a ServiceFault for
    the one request concerned when ``close`` is false.
    """

    def __init__(self, status: int, reason: str, *, close: bool = True) -> None:
        super().__init__(f"{status_name(status)}: {reason}", close=close)
        self.status = status
        self.reason = reason


__all__ = [
    "ABORT",
    "ACK",
    "ATTRIBUTE_VALUE",
    "CLO",
    "ERR",
    "FINAL",
    "HEL",
    "INTERMEDIATE",
    "MSG",
    "OPN",
    "OpcUaProtocolError",
    "Status",
    "status_name",
]
