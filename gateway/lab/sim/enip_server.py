"""The EtherNet/IP encapsulation side of the soft PLC: one ``asyncio.Protocol`` per TCP connection on
the codec's sans-IO ``EncapsulationConnection``, sessions, and the two ways a CIP request arrives.

Commands: NOP (no reply), ListIdentity, ListServices, ListInterfaces, RegisterSession, UnRegisterSession
(no reply; the connection closes, as a controller closes it), SendRRData (unconnected: one message
router request in a CPF unconnected data item) and SendUnitData (class 3 connected: the connection id of
a Forward Open and a sequence count, echoed in the reply). A repeated sequence count is answered with
the previous reply and not carried out again, as class 3 duplicate detection requires.

Faults on purpose (``EnipServer.fault``, for tests of what a gateway does when its device misbehaves;
the protocol itself is never mocked): the replies to SendRRData and SendUnitData requests, once a fault is
set, are garbled (a CPF whose item count is 0), cut short (a message router reply of one byte), never sent,
or replaced by closing the connection. Registering a session and everything else answer as usual.

Bounded: TCP clients, sessions (RegisterSession answered 0x0002 insufficient memory past the cap),
connections (Forward Open answered 0x01/0x0113), the encapsulation message size (the codec's cap: an
oversized header is answered 0x0065 and the connection closed), and the bytes buffered towards a client
that does not read (reading pauses until it catches up).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import cast

from gateway.lab.sim.enip_objects import UNCONNECTED_ROOM
from gateway.lab.sim.enip_router import Context, MessageRouter
from protocols.enip import (
    CipLimits,
    CipProtocolError,
    ConnectedDataItem,
    EncapsulationCommand,
    EncapsulationConnection,
    EncapsulationMessage,
    EncapsulationStatus,
    UnconnectedDataItem,
    check_empty_request,
    connected_message,
    list_identity_data,
    list_interfaces_data,
    list_services_data,
    parse_register_session,
    parse_send_data,
    register_session_data,
    send_rr_data,
    send_unit_data,
    unconnected_message,
)

log = logging.getLogger(__name__)

_Command = EncapsulationCommand
_Status = EncapsulationStatus
_MAX_SEQUENCE = 0xFFFF


@dataclass(frozen=True, slots=True)
class Caps:
    max_clients: int = 32  # TCP connections
    max_sessions: int = 32
    max_connections: int = 32  # class 3 connections, across sessions
    max_connection_size: int | None = None  # bytes a Forward Open may ask for; None: what Logix takes


DEFAULT_CAPS = Caps()


class Fault(StrEnum):
    """What the simulator does with a reply to SendRRData or SendUnitData instead of sending it."""

    GARBLED = "garbled"  # the CPF cannot be read: an item count of 0
    SHORT = "short"  # the message router reply is cut to its first byte
    SILENT = "silent"  # no reply at all
    CLOSE = "close"  # the TCP connection is closed instead


class EnipServer:
    """The listener and what its connections share: the message router (objects, tags, connections and
    the log of requests) and the session table."""

    def __init__(self, router: MessageRouter, *, caps: Caps, limits: CipLimits) -> None:
        self.router = router
        self.caps = caps
        self.limits = limits
        self.sessions: dict[int, _EnipProtocol] = {}
        self.clients: set[_EnipProtocol] = set()
        self.commands: dict[int, int] = {}  # encapsulation commands received, by command code
        self.fault: Fault | None = None
        self._handles = itertools.count(0x5E55_0001)
        self._server: asyncio.AbstractServer | None = None
        self.host = ""
        self.port = 0
        self._address = 0

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _EnipProtocol(self), host, port)
        sockets = self._server.sockets
        # A name such as "localhost" may bind several sockets: report the first one's real address.
        self.host, self.port = sockets[0].getsockname()[:2]
        with contextlib.suppress(ValueError):
            address = ipaddress.ip_address(self.host)
            self._address = int(address) if address.version == 4 else 0

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for client in list(self.clients):
            client.close()
        await self._server.wait_closed()
        self._server = None

    def new_session(self, client: _EnipProtocol) -> int | None:
        if len(self.sessions) >= self.caps.max_sessions:
            return None
        handle = next(self._handles)
        self.sessions[handle] = client
        return handle

    def end_session(self, handle: int) -> None:
        if self.sessions.pop(handle, None) is not None:
            self.router.connections.drop_session(handle)

    def identity_data(self) -> bytes:
        return list_identity_data(self.router.identity.item(self.port, self._address))


class _EnipProtocol(asyncio.Protocol):
    """One TCP connection: frames with the codec, answers each message in order."""

    def __init__(self, server: EnipServer) -> None:
        self.server = server
        self.codec = EncapsulationConnection(limits=server.limits)
        self.transport: asyncio.Transport | None = None
        self.session = 0
        self._handlers: dict[int, Callable[[EncapsulationMessage], None]] = {
            _Command.NOP: lambda message: None,
            _Command.LIST_IDENTITY: self._list(self.server.identity_data),
            _Command.LIST_SERVICES: self._list(list_services_data),
            _Command.LIST_INTERFACES: self._list(list_interfaces_data),
            _Command.REGISTER_SESSION: self._register_session,
            _Command.UNREGISTER_SESSION: self._unregister_session,
            _Command.SEND_RR_DATA: self._send_rr_data,
            _Command.SEND_UNIT_DATA: self._send_unit_data,
        }

    # ---------------------------------------------------------------------------------- transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # create_server makes stream transports
        if len(self.server.clients) >= self.server.caps.max_clients:
            log.warning("TCP client refused: %d clients already", len(self.server.clients))
            self.transport.abort()
            return
        self.server.clients.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.clients.discard(self)
        if self.session:
            self.server.end_session(self.session)
            self.session = 0

    def pause_writing(self) -> None:
        # A client that does not read its replies gets no more requests read.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.codec.receive_data(data)
        while self.transport is not None and not self.transport.is_closing():
            try:
                message = self.codec.next_message()
            except CipProtocolError as error:
                self._protocol_error(error)
                continue
            if message is None:
                return
            self.server.commands[message.command] = self.server.commands.get(message.command, 0) + 1
            self._handlers[message.command](message)

    def _protocol_error(self, error: CipProtocolError) -> None:
        log.info("EtherNet/IP protocol error: %s", error)
        if error.encapsulation_status is not None and error.command is not None:
            reply = EncapsulationMessage(
                error.command, error.session_handle, error.encapsulation_status, error.sender_context
            )
            self._send(reply)
        if error.close:
            self.close()

    def _send(self, message: EncapsulationMessage) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(message.encode())

    def _answer(self, request: EncapsulationMessage, reply: EncapsulationMessage) -> None:
        """Send the reply to a SendRRData or SendUnitData request, or the fault set in its place."""
        fault = self.server.fault
        if fault is None:
            self._send(reply)
        elif fault is Fault.GARBLED:
            self._send(replace(reply, data=reply.data[:6] + b"\x00\x00"))
        elif fault is Fault.SHORT:
            send = parse_send_data(reply)
            *address, data = send.items
            assert isinstance(data, UnconnectedDataItem | ConnectedDataItem)
            cut = replace(send, items=(*address, replace(data, message=data.message[:1])))
            self._send(replace(reply, data=cut.encode()))
        elif fault is Fault.CLOSE:
            self.close()

    def _refuse(self, message: EncapsulationMessage, status: int) -> None:
        self._send(message.reply(b"", status=status))

    # ---------------------------------------------------------------------------------- commands

    def _list(self, build: Callable[[], bytes]) -> Callable[[EncapsulationMessage], None]:
        def answer(message: EncapsulationMessage) -> None:
            try:
                check_empty_request(message)
            except CipProtocolError as error:
                self._refuse(message, error.encapsulation_status or _Status.INCORRECT_DATA)
                return
            self._send(message.reply(build()))

        return answer

    def _register_session(self, message: EncapsulationMessage) -> None:
        try:
            parse_register_session(message)
        except CipProtocolError as error:
            self._refuse(message, error.encapsulation_status or _Status.INCORRECT_DATA)
            return
        if self.session:
            # One session per TCP connection. The handle in the request is ignored, as controllers do:
            # pylogix sends its previous session's handle when it registers again.
            self._refuse(message, _Status.INVALID_COMMAND)
            return
        handle = self.server.new_session(self)
        if handle is None:
            log.warning("RegisterSession refused: %d sessions already", len(self.server.sessions))
            self._send(message.reply(register_session_data(), status=_Status.INSUFFICIENT_MEMORY))
            return
        self.session = handle
        self._send(message.reply(register_session_data(), session_handle=handle))

    def _unregister_session(self, message: EncapsulationMessage) -> None:
        if self.session and message.session_handle == self.session:
            self.server.end_session(self.session)
            self.session = 0
            self.close()

    def _checked(self, message: EncapsulationMessage) -> bool:
        if not self.session or message.session_handle != self.session:
            self._refuse(message, _Status.INVALID_SESSION_HANDLE)
            return False
        return True

    def _send_rr_data(self, message: EncapsulationMessage) -> None:
        if not self._checked(message):
            return
        try:
            send = parse_send_data(message, limits=self.server.limits)
            request = unconnected_message(message, send)
        except CipProtocolError as error:
            self._refuse(message, error.encapsulation_status or _Status.INCORRECT_DATA)
            return
        context = Context(self.session, connected=False, room=UNCONNECTED_ROOM)
        reply = self.server.router.handle(request, context)
        self._answer(message, message.reply(send_rr_data(reply.encode())))

    def _send_unit_data(self, message: EncapsulationMessage) -> None:
        if not self._checked(message):
            return
        try:
            send = parse_send_data(message, limits=self.server.limits)
            connection_id, sequence, request = connected_message(message, send)
        except CipProtocolError as error:
            self._refuse(message, error.encapsulation_status or _Status.INCORRECT_DATA)
            return
        connection = self.server.router.connections.get(connection_id)
        if connection is None or connection.session != self.session:
            # A controller drops data for a connection it does not have; the client times out.
            log.info("SendUnitData for unknown connection 0x%08X dropped", connection_id)
            return
        if sequence == connection.last_sequence:
            reply = connection.last_reply
        else:
            context = Context(self.session, connected=True, room=connection.room)
            reply = self.server.router.handle(request, context).encode()
            connection.last_sequence, connection.last_reply = sequence & _MAX_SEQUENCE, reply
        # SendUnitData has no reply of its own: the answer travels on the T->O connection.
        self._answer(message, message.reply(send_unit_data(connection.t_o_id, sequence, reply)))


__all__ = ["DEFAULT_CAPS", "Caps", "EnipServer", "Fault"]
