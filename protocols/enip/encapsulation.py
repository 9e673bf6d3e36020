"""EtherNet/IP encapsulation over TCP (Vol 2 chapter 2), sans-IO in the style of h11.

Feed received bytes with ``receive_data`` and pull whole messages with ``next_message`` until it returns
``None`` (need more data). The 24-byte header is command, length, session handle, status, sender context
(8 bytes) and options, little-endian. A length above the cap loses the framing: :class:`CipProtocolError`
with ``close=True``. An unknown command or a nonzero options field is consumed first, so the error can be
answered (or the frame dropped) and the next message read.

The command bodies the gateway handles are parsed and built here too: RegisterSession, SendRRData and
SendUnitData (interface handle, timeout, CPF items), and the ListIdentity / ListServices /
ListInterfaces replies the gateway answers from its configuration.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import Final

from protocols.enip.cpf import (
    ConnectedAddressItem,
    ConnectedDataItem,
    CpfItem,
    IdentityItem,
    NullAddressItem,
    ServiceItem,
    SockaddrItem,
    UnconnectedDataItem,
    encode_cpf,
    parse_cpf,
)
from protocols.enip.errors import CipProtocolError
from protocols.enip.spec import (
    CAPABILITY_CIP_OVER_TCP,
    CIP_INTERFACE_HANDLE,
    DEFAULT_LIMITS,
    ENCAPSULATION_HEADER_BYTES,
    ENCAPSULATION_PROTOCOL_VERSION,
    MAX_ENCAPSULATION_DATA_BYTES,
    SENDER_CONTEXT_BYTES,
    CipLimits,
    CpfItemType,
    EncapsulationCommand,
    EncapsulationStatus,
)

_Status = EncapsulationStatus

HEADER = struct.Struct("<HHII8sI")
_REGISTER_SESSION = struct.Struct("<HH")
_SEND_DATA = struct.Struct("<IH")
# The item lists of nearly every SendRRData and SendUnitData, read and written in one go: interface
# handle, timeout, item count 2, then a null address item and an unconnected data item (its length),
# or a connected address item (its connection id) and a connected data item (its length, sequence count).
_UNCONNECTED_ITEMS = struct.Struct("<IHHHHHH")
_CONNECTED_ITEMS = struct.Struct("<IHHHHIHHH")
_UNCONNECTED_FRAME = struct.Struct(HEADER.format + _UNCONNECTED_ITEMS.format[1:])
_CONNECTED_FRAME = struct.Struct(HEADER.format + _CONNECTED_ITEMS.format[1:])
# Plain ints, not the enums' members: compiled, a member is a look-up and an attribute read per use.
_NULL: Final = int(CpfItemType.NULL_ADDRESS)
_UNCONNECTED: Final = int(CpfItemType.UNCONNECTED_DATA)
_CONNECTED_ADDRESS: Final = int(CpfItemType.CONNECTED_ADDRESS)
_CONNECTED: Final = int(CpfItemType.CONNECTED_DATA)
_SEND_RR_DATA: Final = int(EncapsulationCommand.SEND_RR_DATA)
_SEND_UNIT_DATA: Final = int(EncapsulationCommand.SEND_UNIT_DATA)
_SUCCESS: Final = int(EncapsulationStatus.SUCCESS)
_COMMANDS = frozenset(EncapsulationCommand)
# Commands whose request carries no data at all (Vol 2 §2-4).
_EMPTY_REQUESTS = frozenset(
    (
        EncapsulationCommand.LIST_IDENTITY,
        EncapsulationCommand.LIST_SERVICES,
        EncapsulationCommand.LIST_INTERFACES,
    )
)


_NO_CONTEXT = bytes(SENDER_CONTEXT_BYTES)


# init=False and an __init__ of its own: the one the dataclasses module writes stays interpreted under
# mypyc, and this class is built twice per relayed request (docs/build.md). object.__setattr__ written
# out is how a frozen dataclass sets its fields; compiled, it is a plain store.
@dataclass(frozen=True, slots=True, init=False)
class EncapsulationMessage:
    command: int
    session_handle: int
    status: int
    sender_context: bytes
    options: int
    data: bytes

    def __init__(
        self,
        command: int,
        session_handle: int = 0,
        status: int = _Status.SUCCESS,
        sender_context: bytes = _NO_CONTEXT,
        options: int = 0,
        data: bytes = b"",
    ) -> None:
        object.__setattr__(self, "command", command)
        object.__setattr__(self, "session_handle", session_handle)
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "sender_context", sender_context)
        object.__setattr__(self, "options", options)
        object.__setattr__(self, "data", data)

    @property
    def length(self) -> int:
        return len(self.data)

    def encode(self) -> bytes:
        if len(self.data) > MAX_ENCAPSULATION_DATA_BYTES or len(self.sender_context) != SENDER_CONTEXT_BYTES:
            raise ValueError("encapsulation data above 65511 bytes or a sender context not of 8 bytes")
        header = HEADER.pack(
            self.command, len(self.data), self.session_handle, self.status, self.sender_context, self.options
        )
        return header + self.data

    def reply(
        self,
        data: bytes = b"",
        *,
        status: int = _Status.SUCCESS,
        session_handle: int | None = None,
    ) -> EncapsulationMessage:
        """The reply to this message: same command and sender context, which the client matches on."""
        handle = self.session_handle if session_handle is None else session_handle
        return EncapsulationMessage(self.command, handle, status, self.sender_context, 0, data)


def encapsulation_error(message: EncapsulationMessage, status: int, text: str) -> CipProtocolError:
    """An error to answer with an encapsulation reply carrying ``status``."""
    return CipProtocolError(
        text,
        encapsulation_status=status,
        command=message.command,
        session_handle=message.session_handle,
        sender_context=message.sender_context,
    )


class EncapsulationConnection:
    """Splits a TCP byte stream into encapsulation messages and encodes the ones we send. The same class
    serves both sides: the gateway towards its clients and towards a device."""

    __slots__ = ("_buffer", "_limits", "_offset")

    def __init__(self, *, limits: CipLimits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._buffer = b""
        self._offset = 0

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer) - self._offset

    def receive_data(self, data: bytes) -> None:
        if self._offset < len(self._buffer):
            self._buffer = self._buffer[self._offset :] + data
        else:
            # bytes() of bytes is the same object, but only after a look-up of __bytes__ and a call.
            self._buffer = data if type(data) is bytes else bytes(data)
        self._offset = 0

    def next_message(self) -> EncapsulationMessage | None:
        buffer, offset = self._buffer, self._offset
        if len(buffer) - offset < ENCAPSULATION_HEADER_BYTES:
            return None
        command, length, session, status, context, options = HEADER.unpack_from(buffer, offset)
        if length > self._limits.max_data_bytes:
            raise CipProtocolError(
                f"encapsulation length {length} exceeds the cap of {self._limits.max_data_bytes}",
                close=True,
                encapsulation_status=_Status.INVALID_LENGTH,
                command=command,
                session_handle=session,
                sender_context=context,
            )
        end = offset + ENCAPSULATION_HEADER_BYTES + length
        if end > len(buffer):
            return None
        self._offset = end
        message = EncapsulationMessage(
            command, session, status, context, options, buffer[offset + ENCAPSULATION_HEADER_BYTES : end]
        )
        if options:
            # Vol 2 §2-3.1: a receiver discards an encapsulation message whose options field is not zero.
            raise CipProtocolError(f"options field 0x{options:08X} is not zero: frame discarded")
        if command not in _COMMANDS:
            raise encapsulation_error(message, _Status.INVALID_COMMAND, f"command 0x{command:04X}")
        return message

    def next_connected(self, session_handle: int) -> tuple[bytes, int, int, bytes] | None:
        """The next message when it is a whole SendUnitData under ``session_handle`` with status and
        options 0, laid out as nearly all are (see :func:`connected_body`), read in one unpack without an
        :class:`EncapsulationMessage`: (sender context, connection id, sequence count, message). ``None``,
        with nothing consumed, for anything else: :meth:`next_message` then reads it, and gives the same
        where this gives a message."""
        buffer, offset = self._buffer, self._offset
        if len(buffer) - offset < _CONNECTED_FRAME.size:
            return None
        (
            command, length, session, status, context, options,
            handle, _, count, address, address_length, connection_id, kind, item_length, sequence,
        ) = _CONNECTED_FRAME.unpack_from(buffer, offset)  # fmt: skip
        end = offset + ENCAPSULATION_HEADER_BYTES + length
        if (
            command != _SEND_UNIT_DATA
            or session != session_handle
            or status
            or options
            or length > self._limits.max_data_bytes
            or end > len(buffer)
            or handle != CIP_INTERFACE_HANDLE
            or count != 2
            or address != _CONNECTED_ADDRESS
            or address_length != 4
            or kind != _CONNECTED
            or item_length != length - _CONNECTED_ITEMS.size + 2
        ):
            return None
        self._offset = end
        return context, connection_id, sequence, buffer[offset + _CONNECTED_FRAME.size : end]

    @staticmethod
    def send(message: EncapsulationMessage) -> bytes:
        return message.encode()


# ---------------------------------------------------------------------------------- command bodies


def parse_register_session(message: EncapsulationMessage) -> int:
    """The protocol version of a RegisterSession request or reply (always 1; options 0)."""
    if len(message.data) != _REGISTER_SESSION.size:
        raise encapsulation_error(message, _Status.INVALID_LENGTH, "RegisterSession data is not 4 bytes")
    version, options = _REGISTER_SESSION.unpack(message.data)
    if version != ENCAPSULATION_PROTOCOL_VERSION:
        raise encapsulation_error(
            message, _Status.UNSUPPORTED_PROTOCOL_VERSION, f"protocol version {version}"
        )
    if options:
        raise encapsulation_error(message, _Status.INCORRECT_DATA, f"options flags 0x{options:04X}")
    return int(version)


def register_session_data(version: int = ENCAPSULATION_PROTOCOL_VERSION) -> bytes:
    return _REGISTER_SESSION.pack(version, 0)


def check_empty_request(message: EncapsulationMessage) -> None:
    """ListIdentity, ListServices and ListInterfaces requests carry no data."""
    if message.command in _EMPTY_REQUESTS and message.data:
        raise encapsulation_error(message, _Status.INVALID_LENGTH, "request carries data")


@dataclass(frozen=True, slots=True)
class SendData:
    """The body of SendRRData and SendUnitData: interface handle (0 for CIP), timeout, CPF items."""

    items: tuple[CpfItem, ...]
    timeout: int = 0
    interface_handle: int = CIP_INTERFACE_HANDLE

    def encode(self) -> bytes:
        return _SEND_DATA.pack(self.interface_handle, self.timeout) + encode_cpf(self.items)


def parse_send_data(message: EncapsulationMessage, *, limits: CipLimits = DEFAULT_LIMITS) -> SendData:
    if len(message.data) < _SEND_DATA.size:
        raise encapsulation_error(message, _Status.INCORRECT_DATA, "SendRRData/SendUnitData too short")
    handle, timeout = _SEND_DATA.unpack_from(message.data)
    if handle != CIP_INTERFACE_HANDLE:
        raise encapsulation_error(message, _Status.INCORRECT_DATA, f"interface handle {handle}")
    try:
        items = parse_cpf(message.data[_SEND_DATA.size :], limits=limits)
    except CipProtocolError as error:
        raise encapsulation_error(message, _Status.INCORRECT_DATA, str(error)) from None
    return SendData(items, timeout, handle)


def unconnected_message(message: EncapsulationMessage, send: SendData) -> bytes:
    """The message router request or reply of a SendRRData: a null address item, an unconnected data item,
    and at most the sockaddr items a Forward Open may carry."""
    items = send.items
    if (
        len(items) < 2
        or not isinstance(items[0], NullAddressItem)
        or not isinstance(items[1], UnconnectedDataItem)
        or not all(isinstance(item, SockaddrItem) for item in items[2:])
    ):
        raise encapsulation_error(
            message,
            _Status.INCORRECT_DATA,
            "SendRRData items are not null address, unconnected data",
        )
    return items[1].message


def connected_message(message: EncapsulationMessage, send: SendData) -> tuple[int, int, bytes]:
    """Connection id, sequence count and message router request or reply of a SendUnitData."""
    items = send.items
    if (
        len(items) != 2
        or not isinstance(items[0], ConnectedAddressItem)
        or not isinstance(items[1], ConnectedDataItem)
    ):
        raise encapsulation_error(
            message, _Status.INCORRECT_DATA, "SendUnitData items are not connected address + data"
        )
    return items[0].connection_id, items[1].sequence, items[1].message


def unconnected_body(data: bytes) -> bytes | None:
    """The message router request or reply of SendRRData ``data`` laid out as nearly all are (interface
    handle 0, a null address item, an unconnected data item filling the rest), read in one unpack; ``None``
    for any other layout, which :func:`parse_send_data` and :func:`unconnected_message` then read (or
    refuse). Where this gives bytes, those two give the same."""
    if len(data) < _UNCONNECTED_ITEMS.size:
        return None
    handle, _, count, null, null_length, kind, length = _UNCONNECTED_ITEMS.unpack_from(data)
    if (
        handle != CIP_INTERFACE_HANDLE
        or count != 2
        or null != _NULL
        or null_length
        or kind != _UNCONNECTED
        or length != len(data) - _UNCONNECTED_ITEMS.size
    ):
        return None
    return data[_UNCONNECTED_ITEMS.size :]


def connected_body(data: bytes) -> tuple[int, int, bytes] | None:
    """Connection id, sequence count and message of SendUnitData ``data`` laid out as nearly all are,
    read in one unpack; ``None`` for any other layout (see :func:`unconnected_body`)."""
    if len(data) < _CONNECTED_ITEMS.size:
        return None
    handle, _, count, address, address_length, connection_id, kind, length, sequence = (
        _CONNECTED_ITEMS.unpack_from(data)
    )
    if (
        handle != CIP_INTERFACE_HANDLE
        or count != 2
        or address != _CONNECTED_ADDRESS
        or address_length != 4
        or kind != _CONNECTED
        or length != len(data) - _CONNECTED_ITEMS.size + 2
    ):
        return None
    return connection_id, sequence, data[_CONNECTED_ITEMS.size :]


def frame_send_rr_data(session_handle: int, sender_context: bytes, message: bytes) -> bytes:
    """A whole SendRRData encapsulation message carrying one unconnected ``message``, in one pack: the
    bytes ``EncapsulationMessage(SEND_RR_DATA, session_handle, 0, sender_context, 0,
    send_rr_data(message)).encode()`` gives."""
    length = _UNCONNECTED_ITEMS.size + len(message)
    if length > MAX_ENCAPSULATION_DATA_BYTES or len(sender_context) != SENDER_CONTEXT_BYTES:
        raise ValueError("encapsulation data above 65511 bytes or a sender context not of 8 bytes")
    head = _UNCONNECTED_FRAME.pack(
        _SEND_RR_DATA, length, session_handle, _SUCCESS, sender_context, 0,
        CIP_INTERFACE_HANDLE, 0, 2, _NULL, 0, _UNCONNECTED, len(message),
    )  # fmt: skip
    return head + message


def frame_send_unit_data(
    session_handle: int, sender_context: bytes, connection_id: int, sequence: int, message: bytes
) -> bytes:
    """A whole SendUnitData encapsulation message carrying one connected ``message``, in one pack (see
    :func:`frame_send_rr_data`)."""
    length = _CONNECTED_ITEMS.size + len(message)
    if length > MAX_ENCAPSULATION_DATA_BYTES or len(sender_context) != SENDER_CONTEXT_BYTES:
        raise ValueError("encapsulation data above 65511 bytes or a sender context not of 8 bytes")
    head = _CONNECTED_FRAME.pack(
        _SEND_UNIT_DATA, length, session_handle, _SUCCESS, sender_context, 0,
        CIP_INTERFACE_HANDLE, 0, 2, _CONNECTED_ADDRESS, 4, connection_id, _CONNECTED, len(message) + 2,
        sequence,
    )  # fmt: skip
    return head + message


def send_rr_data(message: bytes, *, timeout: int = 0, sockaddrs: tuple[SockaddrItem, ...] = ()) -> bytes:
    """SendRRData data for one unconnected message router request or reply."""
    return SendData((NullAddressItem(), UnconnectedDataItem(message), *sockaddrs), timeout).encode()


def send_unit_data(connection_id: int, sequence: int, message: bytes) -> bytes:
    """SendUnitData data for one connected (class 3) message router request or reply."""
    return SendData((ConnectedAddressItem(connection_id), ConnectedDataItem(sequence, message))).encode()


def list_identity_data(identity: IdentityItem) -> bytes:
    return encode_cpf((identity,))


def list_services_data(capability_flags: int = CAPABILITY_CIP_OVER_TCP) -> bytes:
    """A ListServices reply offering CIP over TCP only: the gateway carries no UDP I/O."""
    return encode_cpf((ServiceItem(capability_flags),))


def list_interfaces_data() -> bytes:
    return encode_cpf(())


def with_session(message: EncapsulationMessage, session_handle: int) -> EncapsulationMessage:
    """The same message under another session handle (re-origination towards the device)."""
    return replace(message, session_handle=session_handle)


__all__ = [
    "HEADER",
    "EncapsulationConnection",
    "EncapsulationMessage",
    "SendData",
    "check_empty_request",
    "connected_body",
    "connected_message",
    "encapsulation_error",
    "frame_send_rr_data",
    "frame_send_unit_data",
    "list_identity_data",
    "list_interfaces_data",
    "list_services_data",
    "parse_register_session",
    "parse_send_data",
    "register_session_data",
    "send_rr_data",
    "send_unit_data",
    "unconnected_body",
    "unconnected_message",
    "with_session",
]
