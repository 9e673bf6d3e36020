"""The message router of the EtherNet/IP soft PLC: dispatches requests by class, unwraps Multiple
Service Packets (0x0A on 0x02) and Unconnected Sends (0x52 on 0x06, to the backplane slot 0 or to no
route), answers Reset on Identity without acting on it, keeps every reply within the room its transport
gives it, and logs every request it answers.

Requests are parsed with the codec in ``protocols.enip``; the Symbol object's services are in
``enip_logix``, the other objects in ``enip_objects``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from gateway.lab.sim.enip_logix import WRITE_SERVICES, tag_service
from gateway.lab.sim.enip_objects import (
    AttributeObject,
    ConnectionManager,
    Identity,
    WallClock,
    string_attribute,
    tcp_ip_object,
)
from gateway.lab.sim.enip_tags import TagError, TagTable
from protocols.enip import (
    CipLimits,
    CipProtocolError,
    EPath,
    MessageRouterRequest,
    MessageRouterResponse,
    PortSegment,
    join_responses,
    parse_forward_close,
    parse_forward_open,
    parse_request,
    parse_unconnected_send,
    reply_for_error,
    reply_to,
    service_name,
    split_multiple_service_packet,
)
from protocols.enip.spec import ClassCode, ConnectionManagerStatus, GeneralStatus, Service

_Status = GeneralStatus
_CM = ConnectionManagerStatus
_U16_ONE = b"\x01\x00"

BACKPLANE_SLOT_0 = PortSegment(1, b"\x00")  # where the controller sits: the route "1/0"
MAX_WRAPPERS = 2  # Unconnected Send around a Multiple Service Packet, as the codec's default depth
_ERROR_REPLY_BYTES = 6  # a reply header with one extended status word


@dataclass(frozen=True, slots=True)
class Received:
    """One request the simulator answered, in the order the answers were made (an embedded request
    before the Multiple Service Packet or Unconnected Send around it). ``within`` lists the wrappers
    around it, outermost first. ``tag`` is the tag and element addressed, by name even when the request
    used a symbol instance. ``ignored_bytes`` counts service data past the fields the service defines."""

    session: int
    connected: bool
    service: int
    name: str | None
    class_id: int | None
    instance_id: int | None
    attribute_id: int | None
    tag: str | None
    data: bytes
    general_status: int
    extended_status: tuple[int, ...] = ()
    within: tuple[int, ...] = ()
    ignored_bytes: int = 0

    @property
    def writes(self) -> bool:
        return self.class_id == ClassCode.SYMBOL and self.service in WRITE_SERVICES


@dataclass(frozen=True, slots=True)
class Context:
    session: int
    connected: bool
    room: int  # bytes the reply may take in all
    within: tuple[int, ...] = ()


_PROGRAM_PREFIX = "program:"


def parse_tag_request(raw: bytes, limits: CipLimits) -> MessageRouterRequest:
    """A message router request, in any of the shapes the codec takes, including a program's symbol
    table by ``Program:Name, class 0x6B, instance N`` (how pycomm3 and pylogix list program tags)."""
    return parse_request(raw, limits=limits)


def _is_tag_request(path: EPath) -> bool:
    return path.symbolic or path.class_id == ClassCode.SYMBOL


def _within(reply: MessageRouterResponse, room: int) -> MessageRouterResponse:
    """Only reads know how to send part of their data; any other reply too long is refused whole."""
    if len(reply.encode()) <= room:
        return reply
    return reply_to(reply.request_service, _Status.REPLY_DATA_TOO_LARGE)


class MessageRouter:
    """Dispatches message router requests by class, unwraps Multiple Service Packets and Unconnected
    Sends, keeps every reply within the room the transport gives it, and logs every request answered."""

    def __init__(
        self,
        tags: TagTable,
        identity: Identity,
        connections: ConnectionManager,
        *,
        host_address: int = 0x7F00_0001,
        host_name: str = "ztgate-sim",
        limits: CipLimits,
        max_log: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tags = tags
        self.identity = identity
        self.connections = connections
        self.limits = limits
        self.received: deque[Received] = deque(maxlen=max_log)
        self.resets = 0  # Reset requests on Identity, counted apart: the log keeps only the latest
        identity_attributes = identity.attributes()
        self.wall_clock = WallClock(clock)
        self._objects: dict[int, AttributeObject] = {
            ClassCode.IDENTITY: AttributeObject(
                {(1, a): (lambda v=value: v) for a, value in identity_attributes.items()}
                | {(0, 1): lambda: _U16_ONE, (0, 2): lambda: _U16_ONE},
                {1: tuple(identity_attributes)},
            ),
            ClassCode.PROGRAM_NAME: AttributeObject(
                {(1, 1): lambda: string_attribute(identity.controller_name)}, {1: (1,)}
            ),
            ClassCode.WALL_CLOCK_TIME: self.wall_clock.object(),
            ClassCode.TCP_IP_INTERFACE: tcp_ip_object(host_address, host_name),
        }

    def handle(self, raw: bytes, context: Context) -> MessageRouterResponse:
        """The reply to one request as bytes arrived; a request that does not parse gets its status."""
        try:
            request = parse_tag_request(raw, self.limits)
        except CipProtocolError as error:
            service = raw[0] & 0x7F if raw else 0
            reply = _within(reply_for_error(error, service), context.room)
            self._log(context, service, None, raw[2:], reply)
            return reply
        return self.dispatch(request, context)

    def dispatch(self, request: MessageRouterRequest, context: Context) -> MessageRouterResponse:
        path, service = request.path, request.service
        ignored = 0
        if _is_tag_request(path):
            answer = tag_service(self.tags, request, context.room)
            reply, ignored = answer.reply, answer.ignored_bytes
        elif path.class_id == ClassCode.MESSAGE_ROUTER:
            if service == Service.MULTIPLE_SERVICE_PACKET:
                reply = self._multiple(request, context)
            else:
                reply = reply_to(service, _Status.SERVICE_NOT_SUPPORTED)
        elif path.class_id == ClassCode.CONNECTION_MANAGER:
            reply = self._connection_manager(request, context)
        elif path.class_id == ClassCode.IDENTITY and service == Service.RESET:
            reply = self._reset(request)
        elif path.class_id == ClassCode.TEMPLATE:
            # No structures, so no templates: every instance is missing.
            known = service in (Service.GET_ATTRIBUTE_LIST, Service.READ_TEMPLATE)
            reply = reply_to(
                service, _Status.PATH_DESTINATION_UNKNOWN if known else _Status.SERVICE_NOT_SUPPORTED
            )
        elif path.class_id in self._objects:
            reply = self._objects[path.class_id].handle(request)
        else:
            reply = reply_to(service, _Status.PATH_DESTINATION_UNKNOWN)
        reply = _within(reply, context.room)
        self._log(context, service, request, request.data, reply, ignored)
        return reply

    def _multiple(self, request: MessageRouterRequest, context: Context) -> MessageRouterResponse:
        service = request.service
        if request.path.instance_id != 1 or len(request.path.segments) != 2:
            return reply_to(service, _Status.PATH_DESTINATION_UNKNOWN)
        if len(context.within) >= MAX_WRAPPERS:
            return reply_to(service, _Status.RESOURCE_UNAVAILABLE)
        try:
            parts = split_multiple_service_packet(request.data, limits=self.limits)
        except CipProtocolError as error:
            return reply_for_error(error, service)
        count = len(parts)
        # Every embedded request gets a reply: refuse the packet before running any of it when even
        # the shortest replies could not all fit, so that no write runs without its answer.
        used = 4 + 2 + 2 * count
        if used + _ERROR_REPLY_BYTES * count > context.room:
            return reply_to(service, _Status.REPLY_DATA_TOO_LARGE)
        replies = []
        for position, part in enumerate(parts):
            room = context.room - used - _ERROR_REPLY_BYTES * (count - position - 1)
            inner = replace(context, room=room, within=(*context.within, service))
            reply = self.handle(part, inner)
            used += len(reply.encode())
            replies.append(reply)
        failed = any(not reply.ok for reply in replies)
        status = _Status.EMBEDDED_SERVICE_ERROR if failed else _Status.SUCCESS
        return reply_to(service, status, (), join_responses(replies))

    def _connection_manager(self, request: MessageRouterRequest, context: Context) -> MessageRouterResponse:
        service = request.service
        if request.path.instance_id != 1 or len(request.path.segments) != 2:
            return reply_to(service, _Status.PATH_DESTINATION_UNKNOWN)
        try:
            if service in (Service.FORWARD_OPEN, Service.LARGE_FORWARD_OPEN):
                large = service == Service.LARGE_FORWARD_OPEN
                if large and not self.connections.large_forward_open:
                    return reply_to(service, _Status.SERVICE_NOT_SUPPORTED)
                request_data = parse_forward_open(request.data, large=large, limits=self.limits)
                return self.connections.forward_open(request_data, context.session)
            if service == Service.FORWARD_CLOSE:
                return self.connections.forward_close(parse_forward_close(request.data, limits=self.limits))
            if service == Service.UNCONNECTED_SEND:
                return self._unconnected_send(request, context)
        except CipProtocolError as error:
            return reply_for_error(error, service)
        return reply_to(service, _Status.SERVICE_NOT_SUPPORTED)

    def _unconnected_send(self, request: MessageRouterRequest, context: Context) -> MessageRouterResponse:
        service = request.service
        if len(context.within) >= MAX_WRAPPERS:
            return reply_to(service, _Status.RESOURCE_UNAVAILABLE)
        send = parse_unconnected_send(request.data, limits=self.limits)
        route = send.route.route
        for hop, port in enumerate(route):
            if hop == 0 and port == BACKPLANE_SLOT_0:
                continue
            # This controller is the end of every route: a hop past it (or to another slot) fails there,
            # and the reply tells how many words of the route were left.
            extended = _CM.INVALID_PORT if port.port != BACKPLANE_SLOT_0.port else _CM.INVALID_LINK_ADDRESS
            remaining = len(EPath(route[hop:]).encode()) // 2
            return reply_to(service, _Status.CONNECTION_FAILURE, (extended,), bytes((remaining,)))
        # The reply is the embedded request's own, as if it had come without the wrapper.
        inner = replace(context, within=(*context.within, service))
        return self.dispatch(send.request, inner)

    def _reset(self, request: MessageRouterRequest) -> MessageRouterResponse:
        """Reset on Identity is answered (and logged, so a test can show whether one arrived); the
        simulator never restarts. The type byte is optional; pycomm3 may append bytes after it."""
        self.resets += 1
        if request.path.instance_id != 1:
            return reply_to(request.service, _Status.PATH_DESTINATION_UNKNOWN)
        if request.data and request.data[0] > 1:
            return reply_to(request.service, _Status.INVALID_PARAMETER)
        return reply_to(request.service, _Status.SUCCESS)

    def _tag_text(self, service: int, path: EPath) -> str | None:
        if service == Service.GET_INSTANCE_ATTRIBUTE_LIST:
            return None  # a listing names a scope, not a tag
        try:
            return self.tags.resolve(path).text
        except TagError:
            return path.tag

    def _log(
        self,
        context: Context,
        service: int,
        request: MessageRouterRequest | None,
        data: bytes,
        reply: MessageRouterResponse,
        ignored: int = 0,
    ) -> None:
        class_id = instance_id = attribute_id = None
        tag: str | None = None
        if request is not None:
            path = request.path
            if _is_tag_request(path):
                class_id, tag = ClassCode.SYMBOL.value, self._tag_text(service, path)
                instance_id = path.instance_id  # set when the tag is addressed by symbol instance
            else:
                class_id, instance_id, attribute_id = path.class_id, path.instance_id, path.attribute_id
        self.received.append(
            Received(
                context.session,
                context.connected,
                service,
                service_name(class_id, service),
                class_id,
                instance_id,
                attribute_id,
                tag,
                bytes(data),
                reply.general_status,
                tuple(int(word) for word in reply.extended_status),
                context.within,
                ignored,
            )
        )


__all__ = ["MAX_WRAPPERS", "Context", "MessageRouter", "Received", "parse_tag_request"]
