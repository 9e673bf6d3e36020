"""EtherNet/IP towards the device: the gateway's own encapsulation sessions and CIP connections.

Each link registers an encapsulation session of its own, then opens one class-3 CIP connection of its
own (Forward Open on the asset's route to the Message Router). Requests a client sent connected travel on
that connection under the link's sequence counts; requests it sent unconnected go out unconnected
(SendRRData) under the link's sender contexts, as do all requests to a device that refused the Forward
Open.
Replies are matched by sequence count or sender context alone. The pool machinery (queue, bounds,
timeouts, reconnection, batching) is :mod:`gateway.upstream`'s; closing a link says goodbye with
Forward Close and UnRegisterSession, best effort.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
from time import monotonic
from typing import Any, ClassVar, Protocol, cast

from gateway.runtime import Runtime
from gateway.upstream import Client, Failure, Link, Pending, UpstreamPool
from policies import Asset
from protocols.enip import (
    CipProtocolError,
    EncapsulationConnection,
    EncapsulationMessage,
    EPath,
    LogicalSegment,
    LogicalType,
    MessageRouterRequest,
    MessageRouterResponse,
    connected_body,
    connected_message,
    frame_send_rr_data,
    frame_send_unit_data,
    parse_register_session,
    parse_send_data,
    register_session_data,
    send_rr_data,
    unconnected_body,
    unconnected_message,
)
from protocols.enip.message_router import parse_response
from protocols.enip.services import ForwardClose, ForwardOpen, parse_forward_open_reply
from protocols.enip.spec import (
    ClassCode,
    ConnectionManagerStatus,
    EncapsulationCommand,
    GeneralStatus,
    Service,
)

log = logging.getLogger("ztgate.enip.upstream")

_Command = EncapsulationCommand
_CONTEXT = struct.Struct("<Q")
_NO_CONTEXT = bytes(8)  # connected requests are matched by sequence count
FIRST_CONTEXT = 0x10000  # sender contexts count from here: sequence counts (< 0x10000) never collide
ORIGINATOR_VENDOR_ID = 0xFFFE  # "unassigned" in the CIP vendor list: the gateway is no product of one
RPI_US = 2_000_000  # class 3 explicit connections are driven by requests; the RPI only sizes the timeout
TRANSPORT_CLASS_3_SERVER = 0xA3  # direction server, application trigger, class 3
POINT_TO_POINT_LOW = (2 << 13) | (0 << 10)  # connection type point to point, priority low
VARIABLE_SIZE = 1 << 9
MIN_CONNECTION_SIZE = 64  # the least policies/assets.py accepts: a smaller offer is not worth a connection
MESSAGE_ROUTER_PATH = (
    LogicalSegment(LogicalType.CLASS_ID, ClassCode.MESSAGE_ROUTER),
    LogicalSegment(LogicalType.INSTANCE_ID, 1),
)
CONNECTION_MANAGER_PATH = EPath(
    (
        LogicalSegment(LogicalType.CLASS_ID, ClassCode.CONNECTION_MANAGER),
        LogicalSegment(LogicalType.INSTANCE_ID, 1),
    )
)


class EnipClient(Client, Protocol):
    """What the pool calls on the session that submitted a request (``gateway/enip/session.py``): the
    upstream side knows sessions only by this protocol, so it never imports them."""

    def deliver(self, pending: EnipPending, response: MessageRouterResponse, body: bytes, now: float) -> bool:
        """Answer the client with the device's ``response`` (``body``: its bytes as they came); true when
        the session has replies to flush at the end of the batch."""
        ...

    def fail(self, pending: EnipPending, failure: Failure, reason: str, now: float) -> bool:
        """Answer the client with the protocol's error for ``failure``; true as for :meth:`deliver`."""
        ...


class EnipPending(Pending):
    """A client's message router request (already cut down to what the policy allows) and what its
    session needs to answer it."""

    __slots__ = ("connected", "message", "reply")

    def __init__(
        self, session: EnipClient, message: bytes, connected: bool, reply: Any, started: float
    ) -> None:
        Pending.__init__(self, session, started)
        self.message = message  # the encoded message router request to forward
        self.connected = connected  # the client sent it connected: it travels on our connection too
        self.reply = reply  # the session's own record for the answer


def _size_offered(response: MessageRouterResponse) -> int | None:
    """The connection size a target offers when it refuses ours: 0x01 with 0x0109 and the size it
    supports as the second word (as libplctag reads it), else None."""
    extended = response.extended_status
    refused = response.general_status == GeneralStatus.CONNECTION_FAILURE and len(extended) >= 2
    if refused and extended[0] == ConnectionManagerStatus.INVALID_CONNECTION_SIZE:
        return extended[1]
    return None


class EnipLink(Link[EnipPending]):
    """One TCP connection to the device with its encapsulation session and CIP connection."""

    def __init__(self, pool: UpstreamPool) -> None:
        super().__init__(pool)
        self._codec = EncapsulationConnection()
        self.session_handle = 0
        self._waiting: asyncio.Future[EncapsulationMessage] | None = None
        self._next_context = FIRST_CONTEXT
        self._sequence = random.randrange(0x10000)
        self.o_t_connection_id: int | None = None  # the device's id for what we send: None = unconnected
        self.connection_size: int | None = None  # bytes the device granted the connection
        self.t_o_connection_id = random.randrange(1, 1 << 32)
        self._serial = random.randrange(1 << 16)
        self._originator_serial = random.randrange(1 << 32)

    # ---------------------------------------------------------------------------- handshake

    async def _exchange(self, message: EncapsulationMessage) -> EncapsulationMessage:
        assert self.transport is not None
        self._waiting = asyncio.get_running_loop().create_future()
        self.transport.write(message.encode())
        try:
            return await self._waiting
        finally:
            self._waiting = None

    async def handshake(self) -> None:
        reply = await self._exchange(
            EncapsulationMessage(_Command.REGISTER_SESSION, data=register_session_data())
        )
        if reply.status or not reply.session_handle:
            raise ConnectionError(f"RegisterSession refused with encapsulation status 0x{reply.status:X}")
        parse_register_session(reply)
        self.session_handle = reply.session_handle
        await self._open_connection()

    def _forward_open(self, size: int) -> ForwardOpen:
        asset = self.pool.asset
        large = asset.large_forward_open
        flags = POINT_TO_POINT_LOW | VARIABLE_SIZE
        parameters = (flags << 16 | size) if large else (flags | size)
        path = EPath((*asset.route, *MESSAGE_ROUTER_PATH))
        return ForwardOpen(
            large, 0x0A, 0x0E, 0, self.t_o_connection_id, self._serial, ORIGINATOR_VENDOR_ID,
            self._originator_serial, 1, RPI_US, parameters, RPI_US, parameters,
            TRANSPORT_CLASS_3_SERVER, path,
        )  # fmt: skip

    async def _request_connection(self, size: int) -> MessageRouterResponse:
        forward_open = self._forward_open(size)
        request = MessageRouterRequest(forward_open.service, CONNECTION_MANAGER_PATH, forward_open.encode())
        reply = await self._exchange(
            EncapsulationMessage(
                _Command.SEND_RR_DATA, self.session_handle, data=send_rr_data(request.encode())
            )
        )
        return parse_response(unconnected_message(reply, parse_send_data(reply)))

    async def _open_connection(self) -> None:
        size = self.pool.asset.connection_size
        try:
            response = await self._request_connection(size)
            smaller = _size_offered(response)
            if smaller is not None and MIN_CONNECTION_SIZE <= smaller < size:
                # The device carries less than the asset says: take what it offers, as clients do, and
                # grant clients no more than that.
                log.info("%s: device grants %d connection bytes, not %d", self.pool.asset.name, smaller, size)
                size = smaller
                response = await self._request_connection(size)
            if not response.ok:
                raise CipProtocolError(f"general status 0x{response.general_status:02X}")
            opened = parse_forward_open_reply(response.data)
        except CipProtocolError as error:
            # Explicit messages mean the same connected or not: carry on unconnected.
            log.info(
                "%s: Forward Open refused (%s); using unconnected messaging", self.pool.asset.name, error
            )
            return
        self.o_t_connection_id = opened.o_t_connection_id
        # The target may choose the T->O id itself; its replies come under the id its reply names.
        self.t_o_connection_id = opened.t_o_connection_id
        self.connection_size = size

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_exception(ConnectionError(f"device closed the connection: {exc}"))
        super().connection_lost(exc)

    def close_gracefully(self) -> None:
        """Forward Close and UnRegisterSession, then close: what a polite client does (best effort)."""
        if self.transport is None or self.closed:
            return
        if self.o_t_connection_id is not None:
            close = ForwardClose(
                0x0A, 0x0E, self._serial, ORIGINATOR_VENDOR_ID, self._originator_serial,
                EPath((*self.pool.asset.route, *MESSAGE_ROUTER_PATH)),
            )  # fmt: skip
            request = MessageRouterRequest(Service.FORWARD_CLOSE, CONNECTION_MANAGER_PATH, close.encode())
            self.transport.write(
                EncapsulationMessage(
                    _Command.SEND_RR_DATA, self.session_handle, data=send_rr_data(request.encode())
                ).encode()
            )
        self.transport.write(EncapsulationMessage(_Command.UNREGISTER_SESSION, self.session_handle).encode())
        self.transport.close()

    # ------------------------------------------------------------------------------ sending

    def send(self, pending: EnipPending, now: float) -> None:
        # Messages keep the kind the client chose: an Unconnected Send, say, means nothing on a connection.
        if pending.connected and self.o_t_connection_id is not None:
            sequence = self._sequence = (self._sequence + 1) & 0xFFFF
            data = frame_send_unit_data(
                self.session_handle, _NO_CONTEXT, self.o_t_connection_id, sequence, pending.message
            )
            self.track(pending, sequence, data, now)
            return
        context = self._next_context
        self._next_context = context + 1 if context < 0xFFFF_FFFF_FFFF else FIRST_CONTEXT
        data = frame_send_rr_data(self.session_handle, _CONTEXT.pack(context), pending.message)
        self.track(pending, context, data, now)

    # ---------------------------------------------------------------------------- receiving

    def data_received(self, data: bytes) -> None:
        codec = self._codec
        codec.receive_data(data)
        now = monotonic()
        while True:
            if self.ready:
                # A reply on our connection (the polled Read Tag's) read without a message object;
                # anything else, or any other layout, the general way below.
                connected = codec.next_connected(self.session_handle)
                if connected is not None:
                    _, connection_id, key, body = connected
                    self._connected_reply(connection_id, key, body, now)
                    if self.transport is None or self.transport.is_closing():
                        return
                    continue
            try:
                message = codec.next_message()
            except CipProtocolError as error:
                self._out_of_step(f"malformed encapsulation: {error}")
                return
            if message is None:
                break
            if not self.ready:
                # The handshake's replies: nothing else was sent yet.
                if self._waiting is not None and not self._waiting.done():
                    self._waiting.set_result(message)
                continue
            self._reply(message, now)
            if self.transport is None or self.transport.is_closing():
                return  # out of step: what follows on this link is not read
        self.batch_done()

    def _out_of_step(self, reason: str) -> None:
        """A reply that cannot be read, or cannot be matched to a request: the device did answer, badly.
        Each request in flight on this link gets 0x22 (invalid reply received) now, rather than a
        timeout, and the link, whose byte stream can no longer be trusted, is closed and reopened.
        Nothing is sent again (a write may have run)."""
        pool = self.pool
        pool.upstream_fault(reason)
        now = monotonic()
        for key in list(self.in_flight):
            pending = self.answered(key)
            if pending is not None and pending.session.fail(pending, Failure.MALFORMED_REPLY, reason, now):
                pool.touched.append(pending.session)
        self.abort(reason)
        self.ready = False  # no queued request is moved onto it while it closes
        self.batch_done()

    def _reply(self, message: EncapsulationMessage, now: float) -> None:
        pool = self.pool
        if message.command == _Command.NOP:
            return  # either side may send a NOP; it needs no answer (Vol 2 §2-4.1)
        if message.command not in (_Command.SEND_RR_DATA, _Command.SEND_UNIT_DATA):
            self._out_of_step(f"unexpected encapsulation command 0x{message.command:04X}")
            return
        if message.status:
            # The device refuses our session (e.g. it restarted and forgot it): nothing on this link can
            # be trusted to arrive any more.
            pool.upstream_fault(f"encapsulation status 0x{message.status:X}")
            self.abort(f"device answered with encapsulation status 0x{message.status:X}")
            return
        connected: tuple[int, int, bytes] | None = None
        try:
            if message.command == _Command.SEND_UNIT_DATA:
                connected = connected_body(message.data)
                if connected is None:
                    connected = connected_message(message, parse_send_data(message))
            else:
                key = _CONTEXT.unpack(message.sender_context)[0]
                unconnected = unconnected_body(message.data)
                if unconnected is None:
                    unconnected = unconnected_message(message, parse_send_data(message))
                body = unconnected
        except CipProtocolError as error:
            self._out_of_step(f"malformed reply: {error}")
            return
        if connected is not None:
            self._connected_reply(*connected, now)
            return
        self._matched(key, body, now)

    def _connected_reply(self, connection_id: int, key: int, body: bytes, now: float) -> None:
        """A reply on a connection (``key``: its sequence count)."""
        # Targets answer under the T->O id; some (cpppo) under the O->T id we send to. Either names this
        # link's one connection.
        if connection_id not in (self.t_o_connection_id, self.o_t_connection_id):
            self.pool.late_replies += 1
            return
        self._matched(key, body, now)

    def _matched(self, key: int, body: bytes, now: float) -> None:
        """The reply ``body`` under ``key``, to the request in flight under it (if any)."""
        pool = self.pool
        pending = self.answered(key)
        if pending is None:
            return
        # The session that submitted an EnipPending is an EnipClient (compiled code lets no subclass
        # narrow an attribute's type, so it is said here).
        session = cast(EnipClient, pending.session)
        try:
            response = parse_response(body)
        except CipProtocolError as error:
            pool.upstream_fault(f"malformed reply: {error}")
            if session.fail(pending, Failure.MALFORMED_REPLY, f"malformed reply: {error}", now):
                pool.touched.append(session)
            return
        if session.deliver(pending, response, body, now):
            pool.touched.append(session)


class EnipUpstreamPool(UpstreamPool):
    protocol_name: ClassVar[str] = "enip"
    link_class: ClassVar[type[Link[Any]]] = EnipLink

    def __init__(self, asset: Asset, runtime: Runtime) -> None:
        super().__init__(asset, runtime)
        # A link is a TCP connection with its encapsulation session, and carries one CIP connection.
        self.max_connections = asset.max_sessions

    @property
    def connection_size(self) -> int:
        """The largest connection a client may be granted: what every connected link carries (the
        asset's ``connection_size``, or less where the device granted less)."""
        sizes = [link.connection_size for link in self.connections if isinstance(link, EnipLink)]
        return min((size for size in sizes if size is not None), default=self.asset.connection_size)
