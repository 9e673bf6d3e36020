"""Names, numbers and limits from the CIP Networks Library (Vol 1: CIP, Appendix C for EPATH; Vol 2:
EtherNet/IP encapsulation) and Rockwell's Logix 5000 Controllers Data Access manual (1756-PM020).

Every number the codec checks against lives here. The numbers agree with pycomm3's ``cip`` tables (a test
holds them equal); they are typed here rather than imported so that mypy sees every member and importing
the codec does not import pycomm3's socket-bound drivers along with its tables.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final


class EncapsulationCommand(IntEnum):
    """Vol 2 §2-3.2. LIST_TARGETS is a legacy command and is refused like an unknown one."""

    NOP = 0x0000
    LIST_SERVICES = 0x0004
    LIST_IDENTITY = 0x0063
    LIST_INTERFACES = 0x0064
    REGISTER_SESSION = 0x0065
    UNREGISTER_SESSION = 0x0066
    SEND_RR_DATA = 0x006F
    SEND_UNIT_DATA = 0x0070


class EncapsulationStatus(IntEnum):
    """Vol 2 §2-3.3: the status field of an encapsulation reply."""

    SUCCESS = 0x0000
    INVALID_COMMAND = 0x0001
    INSUFFICIENT_MEMORY = 0x0002
    INCORRECT_DATA = 0x0003
    INVALID_SESSION_HANDLE = 0x0064
    INVALID_LENGTH = 0x0065
    UNSUPPORTED_PROTOCOL_VERSION = 0x0069


class CpfItemType(IntEnum):
    """Vol 2 §2-6: Common Packet Format item type ids."""

    NULL_ADDRESS = 0x0000
    LIST_IDENTITY = 0x000C
    CONNECTED_ADDRESS = 0x00A1
    CONNECTED_DATA = 0x00B1
    UNCONNECTED_DATA = 0x00B2
    LIST_SERVICES = 0x0100
    SOCKADDR_O_T = 0x8000
    SOCKADDR_T_O = 0x8001
    SEQUENCED_ADDRESS = 0x8002


class ClassCode(IntEnum):
    IDENTITY = 0x01
    MESSAGE_ROUTER = 0x02
    DEVICENET = 0x03
    ASSEMBLY = 0x04
    CONNECTION = 0x05
    CONNECTION_MANAGER = 0x06
    REGISTER = 0x07
    PARAMETER = 0x0F
    FILE = 0x37
    TIME_SYNC = 0x43
    PROGRAM_NAME = 0x64  # Rockwell: the controller's name (pycomm3's get_plc_name)
    PCCC = 0x67
    SYMBOL = 0x6B  # Logix tags
    TEMPLATE = 0x6C  # Logix structure definitions
    WALL_CLOCK_TIME = 0x8B  # Rockwell: the controller's clock (pylogix GetPLCTime)
    PORT = 0xF4
    TCP_IP_INTERFACE = 0xF5
    ETHERNET_LINK = 0xF6


class Service:
    """Service codes. Not an enum: from 0x4B up, one code names different services on different classes
    (0x4E is Forward Close on the Connection Manager and Read-Modify-Write on a tag), and an IntEnum would
    silently make the second name an alias of the first. Name a request with :func:`service_name`."""

    # Common services (Vol 1 Appendix A), the same on every class.
    GET_ATTRIBUTES_ALL: Final = 0x01
    SET_ATTRIBUTES_ALL: Final = 0x02
    GET_ATTRIBUTE_LIST: Final = 0x03
    SET_ATTRIBUTE_LIST: Final = 0x04
    RESET: Final = 0x05
    START: Final = 0x06
    STOP: Final = 0x07
    CREATE: Final = 0x08
    DELETE: Final = 0x09
    MULTIPLE_SERVICE_PACKET: Final = 0x0A
    APPLY_ATTRIBUTES: Final = 0x0D
    GET_ATTRIBUTE_SINGLE: Final = 0x0E
    SET_ATTRIBUTE_SINGLE: Final = 0x10
    FIND_NEXT_OBJECT_INSTANCE: Final = 0x11
    RESTORE: Final = 0x15
    SAVE: Final = 0x16
    NOP: Final = 0x17
    GET_MEMBER: Final = 0x18
    SET_MEMBER: Final = 0x19
    INSERT_MEMBER: Final = 0x1A
    REMOVE_MEMBER: Final = 0x1B
    GROUP_SYNC: Final = 0x1C
    # Connection Manager (class 0x06, Vol 1 §3-5.5).
    FORWARD_CLOSE: Final = 0x4E
    UNCONNECTED_SEND: Final = 0x52
    FORWARD_OPEN: Final = 0x54
    GET_CONNECTION_DATA: Final = 0x56
    SEARCH_CONNECTION_DATA: Final = 0x57
    GET_CONNECTION_OWNER: Final = 0x5A
    LARGE_FORWARD_OPEN: Final = 0x5B
    # Logix tag services (Symbol class 0x6B or a symbolic path, 1756-PM020 chapter 1).
    READ_TAG: Final = 0x4C
    WRITE_TAG: Final = 0x4D
    READ_MODIFY_WRITE_TAG: Final = 0x4E
    READ_TAG_FRAGMENTED: Final = 0x52
    WRITE_TAG_FRAGMENTED: Final = 0x53
    GET_INSTANCE_ATTRIBUTE_LIST: Final = 0x55
    # Logix Template class 0x6C.
    READ_TEMPLATE: Final = 0x4C
    # PCCC class 0x67.
    EXECUTE_PCCC: Final = 0x4B


REPLY_FLAG: Final = 0x80  # a reply's service code is the request's with bit 7 set
FIRST_CLASS_SPECIFIC_SERVICE: Final = 0x4B  # Vol 1 Appendix A: 0x4B..0x63 depend on the class

COMMON_SERVICE_NAMES: Final[dict[int, str]] = {
    0x01: "get_attributes_all",
    0x02: "set_attributes_all",
    0x03: "get_attribute_list",
    0x04: "set_attribute_list",
    0x05: "reset",
    0x06: "start",
    0x07: "stop",
    0x08: "create",
    0x09: "delete",
    0x0A: "multiple_service_packet",
    0x0D: "apply_attributes",
    0x0E: "get_attribute_single",
    0x10: "set_attribute_single",
    0x11: "find_next_object_instance",
    0x15: "restore",
    0x16: "save",
    0x17: "nop",
    0x18: "get_member",
    0x19: "set_member",
    0x1A: "insert_member",
    0x1B: "remove_member",
    0x1C: "group_sync",
}

# Object-specific services by (class, service): the only way to name a code >= 0x4B.
CLASS_SERVICE_NAMES: Final[dict[tuple[int, int], str]] = {
    (ClassCode.CONNECTION_MANAGER, 0x4E): "forward_close",
    (ClassCode.CONNECTION_MANAGER, 0x52): "unconnected_send",
    (ClassCode.CONNECTION_MANAGER, 0x54): "forward_open",
    (ClassCode.CONNECTION_MANAGER, 0x56): "get_connection_data",
    (ClassCode.CONNECTION_MANAGER, 0x57): "search_connection_data",
    (ClassCode.CONNECTION_MANAGER, 0x5A): "get_connection_owner",
    (ClassCode.CONNECTION_MANAGER, 0x5B): "large_forward_open",
    (ClassCode.SYMBOL, 0x4C): "read_tag",
    (ClassCode.SYMBOL, 0x4D): "write_tag",
    (ClassCode.SYMBOL, 0x4E): "read_modify_write",
    (ClassCode.SYMBOL, 0x52): "read_tag_fragmented",
    (ClassCode.SYMBOL, 0x53): "write_tag_fragmented",
    (ClassCode.SYMBOL, 0x55): "get_instance_attribute_list",
    (ClassCode.TEMPLATE, 0x4C): "read_template",
    (ClassCode.FILE, 0x4B): "initiate_upload",
    (ClassCode.FILE, 0x4C): "initiate_download",
    (ClassCode.FILE, 0x4D): "initiate_partial_read",
    (ClassCode.FILE, 0x4E): "initiate_partial_write",
    (ClassCode.FILE, 0x4F): "upload_transfer",
    (ClassCode.FILE, 0x50): "download_transfer",
    (ClassCode.FILE, 0x51): "clear_file",
    (ClassCode.PCCC, 0x4B): "execute_pccc",
}


def service_name(class_id: int | None, service: int) -> str | None:
    """The name of ``service`` on ``class_id``: common codes name the same service on every class, the
    class-specific range only together with a known class. ``None`` when the pair has no known name."""
    if service < FIRST_CLASS_SPECIFIC_SERVICE:
        return COMMON_SERVICE_NAMES.get(service)
    if class_id is None:
        return None
    return CLASS_SERVICE_NAMES.get((class_id, service))


class GeneralStatus(IntEnum):
    """Vol 1 Appendix B-1: the general status of a message router reply."""

    SUCCESS = 0x00
    CONNECTION_FAILURE = 0x01
    RESOURCE_UNAVAILABLE = 0x02
    INVALID_PARAMETER_VALUE = 0x03
    PATH_SEGMENT_ERROR = 0x04
    PATH_DESTINATION_UNKNOWN = 0x05
    PARTIAL_TRANSFER = 0x06
    CONNECTION_LOST = 0x07
    SERVICE_NOT_SUPPORTED = 0x08
    INVALID_ATTRIBUTE_VALUE = 0x09
    ATTRIBUTE_LIST_ERROR = 0x0A
    ALREADY_IN_REQUESTED_MODE = 0x0B
    OBJECT_STATE_CONFLICT = 0x0C
    OBJECT_ALREADY_EXISTS = 0x0D
    ATTRIBUTE_NOT_SETTABLE = 0x0E
    PRIVILEGE_VIOLATION = 0x0F
    DEVICE_STATE_CONFLICT = 0x10
    REPLY_DATA_TOO_LARGE = 0x11
    FRAGMENTATION_OF_A_PRIMITIVE_VALUE = 0x12
    NOT_ENOUGH_DATA = 0x13
    ATTRIBUTE_NOT_SUPPORTED = 0x14
    TOO_MUCH_DATA = 0x15
    OBJECT_DOES_NOT_EXIST = 0x16
    SERVICE_FRAGMENTATION_SEQUENCE_NOT_IN_PROGRESS = 0x17
    NO_STORED_ATTRIBUTE_DATA = 0x18
    STORE_OPERATION_FAILURE = 0x19
    ROUTING_FAILURE_REQUEST_TOO_LARGE = 0x1A
    ROUTING_FAILURE_RESPONSE_TOO_LARGE = 0x1B
    MISSING_ATTRIBUTE_LIST_ENTRY_DATA = 0x1C
    INVALID_ATTRIBUTE_VALUE_LIST = 0x1D
    EMBEDDED_SERVICE_ERROR = 0x1E
    VENDOR_SPECIFIC_ERROR = 0x1F
    INVALID_PARAMETER = 0x20
    WRITE_ONCE_VALUE_OR_MEDIUM_ALREADY_WRITTEN = 0x21
    INVALID_REPLY_RECEIVED = 0x22
    BUFFER_OVERFLOW = 0x23
    MESSAGE_FORMAT_ERROR = 0x24
    KEY_FAILURE_IN_PATH = 0x25
    PATH_SIZE_INVALID = 0x26
    UNEXPECTED_ATTRIBUTE_IN_LIST = 0x27
    INVALID_MEMBER_ID = 0x28
    MEMBER_NOT_SETTABLE = 0x29


_GENERAL_STATUS_NAMES = {status.value: status.name for status in GeneralStatus}


def general_status_name(status: int) -> str:
    """``PRIVILEGE_VIOLATION`` for 0x0F; the hex value for codes Vol 1 does not name."""
    return _GENERAL_STATUS_NAMES.get(status) or f"0x{status:02X}"


class ConnectionManagerStatus(IntEnum):
    """Vol 1 §3-5.6: extended status words that go with general status 0x01 (connection failure)."""

    CONNECTION_IN_USE = 0x0100
    TRANSPORT_CLASS_NOT_SUPPORTED = 0x0103
    OWNERSHIP_CONFLICT = 0x0106
    CONNECTION_NOT_FOUND = 0x0107
    INVALID_NETWORK_CONNECTION_PARAMETER = 0x0108
    INVALID_CONNECTION_SIZE = 0x0109
    RPI_NOT_SUPPORTED = 0x0111
    OUT_OF_CONNECTIONS = 0x0113
    CONNECTION_TIMED_OUT = 0x0203
    UNCONNECTED_REQUEST_TIMED_OUT = 0x0204
    UNCONNECTED_SEND_PARAMETER_ERROR = 0x0205
    MESSAGE_TOO_LARGE = 0x0206
    INVALID_PORT = 0x0311
    INVALID_LINK_ADDRESS = 0x0312
    INVALID_SEGMENT_IN_CONNECTION_PATH = 0x0315


class DataType(IntEnum):
    """Vol 1 Appendix C-6 elementary data type codes, as Logix puts them in tag services' type field."""

    BOOL = 0xC1
    SINT = 0xC2
    INT = 0xC3
    DINT = 0xC4
    LINT = 0xC5
    USINT = 0xC6
    UINT = 0xC7
    UDINT = 0xC8
    ULINT = 0xC9
    REAL = 0xCA
    LREAL = 0xCB
    STIME = 0xCC
    DATE = 0xCD
    TIME_OF_DAY = 0xCE
    DATE_AND_TIME = 0xCF
    STRING = 0xD0
    BYTE = 0xD1
    WORD = 0xD2
    DWORD = 0xD3
    LWORD = 0xD4
    STRING2 = 0xD5
    FTIME = 0xD6
    LTIME = 0xD7
    ITIME = 0xD8
    STRINGN = 0xD9
    SHORT_STRING = 0xDA
    TIME = 0xDB
    EPATH = 0xDC
    ENGUNIT = 0xDD
    STRINGI = 0xDE


# A Logix structure's type field: bytes A0 02 (a UINT on the wire) followed by the structure handle.
STRUCTURE_TYPE: Final = 0x02A0


@dataclass(frozen=True, slots=True)
class AtomicType:
    """An elementary type whose written values the codec decodes, so a policy can bound them."""

    code: int
    size: int
    unpack: struct.Struct  # little-endian, one element


def _atomic(code: DataType, fmt: str) -> tuple[int, AtomicType]:
    unpack = struct.Struct("<" + fmt)
    return code, AtomicType(code, unpack.size, unpack)


# BYTE/WORD/DWORD/LWORD are bit strings: decoded as unsigned integers. Logix BOOL arrays travel as DWORDs.
ATOMIC_TYPES: Final[dict[int, AtomicType]] = dict(
    (
        _atomic(DataType.BOOL, "B"),
        _atomic(DataType.SINT, "b"),
        _atomic(DataType.INT, "h"),
        _atomic(DataType.DINT, "i"),
        _atomic(DataType.LINT, "q"),
        _atomic(DataType.USINT, "B"),
        _atomic(DataType.UINT, "H"),
        _atomic(DataType.UDINT, "I"),
        _atomic(DataType.ULINT, "Q"),
        _atomic(DataType.REAL, "f"),
        _atomic(DataType.LREAL, "d"),
        _atomic(DataType.BYTE, "B"),
        _atomic(DataType.WORD, "H"),
        _atomic(DataType.DWORD, "I"),
        _atomic(DataType.LWORD, "Q"),
    )
)

# ------------------------------------------------------------------------------------ wire constants

ENCAPSULATION_HEADER_BYTES: Final = 24
MAX_ENCAPSULATION_DATA_BYTES: Final = 65511  # Vol 2 §2-3.1: the whole message fits 65535 bytes
SENDER_CONTEXT_BYTES: Final = 8
ENCAPSULATION_PROTOCOL_VERSION: Final = 1
CIP_INTERFACE_HANDLE: Final = 0  # SendRRData/SendUnitData: the interface handle is 0 for CIP
SOCKADDR_BYTES: Final = 16
LIST_SERVICES_NAME_BYTES: Final = 16
# ListServices capability flags (Vol 2 §2-4.6.3).
CAPABILITY_CIP_OVER_TCP: Final = 0x0020
CAPABILITY_CLASS_0_1_OVER_UDP: Final = 0x0100
MAX_PATH_WORDS: Final = 0xFF  # path sizes are USINT word counts
READ_MODIFY_WRITE_MASK_SIZES: Final = frozenset((1, 2, 4, 8, 12))  # 1756-PM020: the sizes Logix accepts

# ---------------------------------------------------------------------------------- default caps

DEFAULT_MAX_DATA_BYTES: Final = 8192  # encapsulation data; Large Forward Open connections carry ~4000
DEFAULT_MAX_CPF_ITEMS: Final = 8  # SendRRData carries 2, plus at most 2 sockaddr items
DEFAULT_MAX_PATH_SEGMENTS: Final = 32
DEFAULT_MAX_PATH_BYTES: Final = 2 * MAX_PATH_WORDS
DEFAULT_MAX_DEPTH: Final = 2  # wrappers around a request: Unconnected Send -> Multiple Service Packet
DEFAULT_MAX_SERVICES: Final = 200  # per Multiple Service Packet, and leaves per message in all


@dataclass(frozen=True, slots=True)
class CipLimits:
    """Caps the codec enforces; every parser takes them as an argument."""

    max_data_bytes: int = DEFAULT_MAX_DATA_BYTES
    max_cpf_items: int = DEFAULT_MAX_CPF_ITEMS
    max_path_segments: int = DEFAULT_MAX_PATH_SEGMENTS
    max_path_bytes: int = DEFAULT_MAX_PATH_BYTES
    max_depth: int = DEFAULT_MAX_DEPTH
    max_services: int = DEFAULT_MAX_SERVICES


DEFAULT_LIMITS: Final = CipLimits()
