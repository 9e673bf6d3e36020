"""The EtherNet/IP session engine: one per overlay connection to an EtherNet/IP asset.

The gateway is the client's EtherNet/IP target: it registers the client's encapsulation session under
a handle of its own, answers ListIdentity/ListServices/ListInterfaces from configuration (the device
stays cloaked), and answers the client's Forward Open and Forward Close itself once the asset's pool
holds a connection of the gateway's own. Every message router request is unwrapped (Unconnected Send,
Multiple Service Packet), each embedded request decided on its own, the allowed ones rebuilt inside the
same wrappers and forwarded on the pool, and the device's replies joined with the gateway's refusals
(general status 0x0F) back into the client's order.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic
from typing import Any, ClassVar, Final

from gateway.enip.upstream import EnipPending, EnipUpstreamPool
from gateway.read_aggregates import NO_SPAN, ReadAggregates
from gateway.runtime import Runtime
from gateway.session import Session, SessionInfo
from gateway.upstream import Failure
from policies import Decision, SubjectView
from policies.timewindow import Window
from protocols.enip import (
    CipProtocolError,
    CipRequest,
    EncapsulationConnection,
    EncapsulationMessage,
    IdentityItem,
    MessageRouterRequest,
    MessageRouterResponse,
    RepeatCache,
    Unwrapped,
    connected_body,
    connected_message,
    flatten,
    frame_send_rr_data,
    frame_send_unit_data,
    list_identity_data,
    list_interfaces_data,
    list_services_data,
    parse_register_session,
    parse_send_data,
    refusal,
    register_session_data,
    unconnected_body,
    unconnected_message,
)
from protocols.enip.message_router import parse_request, reply_to
from protocols.enip.requests import error_reply, reply_for_error
from protocols.enip.services import (
    ForwardCloseReply,
    ForwardOpen,
    ForwardOpenFailure,
    ForwardOpenReply,
    failure_for,
    parse_forward_close,
    parse_forward_open,
)
from protocols.enip.spec import (
    ClassCode,
    ConnectionManagerStatus,
    EncapsulationCommand,
    EncapsulationStatus,
    GeneralStatus,
    Service,
    general_status_name,
)

_Command = EncapsulationCommand
_CONNECTION_MANAGER = int(ClassCode.CONNECTION_MANAGER)
_Status = GeneralStatus
_CM = ConnectionManagerStatus
MAX_CLIENT_CONNECTIONS = 8  # class-3 connections one client session may hold at the gateway
MAX_AUDITED_VALUES = 32
# Aggregation records of allowed reads kept per session, for the leaves of repeated requests: a few per
# cached request (RepeatCache keeps 32); past this many they are all dropped and built again.
MAX_READ_RECORDS = 256
READ_SERVICES = frozenset(
    ("read_tag", "read_tag_fragmented", "get_attribute_single", "get_attribute_list", "get_attributes_all")
)
# Connection Manager services the gateway answers itself; inside a wrapper they are not supported.
_LOCAL = {Service.FORWARD_OPEN: "forward_open", Service.LARGE_FORWARD_OPEN: "large_forward_open",
          Service.FORWARD_CLOSE: "forward_close"}  # fmt: skip


# Plain classes, not dataclasses: each request builds one of each, and the __init__ a dataclass gets
# stays interpreted under mypyc (docs/build.md).
class _Answer:
    """How to wrap the reply to one client message: SendRRData (by sender context) or SendUnitData."""

    __slots__ = ("connection_id", "context", "sequence")

    def __init__(self, context: bytes, connection_id: int | None = None, sequence: int = 0) -> None:
        self.context = context
        self.connection_id = connection_id  # the client's T->O id for a connected reply
        self.sequence = sequence


class _Forwarded:
    """What deliver() needs to answer a forwarded request: the client's request and the local replies."""

    __slots__ = ("answer", "decisions", "leaves", "local", "revision", "unwrapped")

    def __init__(
        self,
        answer: _Answer,
        unwrapped: Unwrapped,
        leaves: list[CipRequest],
        local: list[MessageRouterResponse | None],
        decisions: list[Decision | None],
        revision: str,
    ) -> None:
        self.answer = answer
        self.unwrapped = unwrapped
        self.leaves = leaves
        self.local = local
        self.decisions = decisions
        self.revision = revision


_ReadRecord = tuple[tuple[Any, ...], dict[str, Any]]  # an allowed read's aggregation key and record
# Decisions kept per session for repeated requests: a few per cached request (RepeatCache keeps 32);
# past this many they are all dropped and made again.
MAX_DECIDED = 64


class _Decided:
    """Every leaf of a cached request allowed, under a view whose time windows have not changed since:
    what a repeat of the same bytes is forwarded with, without deciding each leaf again."""

    __slots__ = ("decisions", "local", "message", "view")

    def __init__(
        self, view: SubjectView, decisions: list[Decision | None], local: list[MessageRouterResponse | None],
        message: bytes,
    ) -> None:  # fmt: skip
        self.view = view
        self.decisions = decisions
        self.local = local  # all None: nothing answered by the gateway (read, never changed)
        self.message = message


@dataclass(slots=True)
class _ClientConnection:
    t_o_connection_id: int
    triad: tuple[int, int, int]


def leaf_fields(leaf: CipRequest) -> dict[str, Any]:
    """The audit fields that say what an EtherNet/IP request touches."""
    fields: dict[str, Any] = {"service": leaf.name or f"0x{leaf.service:02X}", "service_code": leaf.service}
    if leaf.tag is not None:
        fields["tag"] = leaf.tag
    else:
        for key, value in (
            ("class", leaf.class_id),
            ("instance", leaf.instance_id),
            ("attribute", leaf.attribute_id),
        ):
            if value is not None:
                fields[key] = value
    if leaf.element_count is not None:
        fields["elements"] = leaf.element_count
    if leaf.values:
        fields["values"] = list(leaf.values[:MAX_AUDITED_VALUES])
        if len(leaf.values) > MAX_AUDITED_VALUES:
            fields["values_count"] = len(leaf.values)
    elif leaf.opaque_values:
        fields["values"] = "opaque"
    if leaf.route:
        fields["route"] = "/".join(str(hop) for hop in leaf.route)
    return fields


def _connection_request_error(
    request: MessageRouterRequest, error: CipProtocolError
) -> MessageRouterResponse:
    """The reply a target gives a Forward Open or Forward Close that does not parse: the length errors
    (0x13, 0x15) and bad parameters as they are, a connection path that cannot be read as 0x01 with
    0x0315 (invalid segment in the connection path), each with the triad when the request carries it."""
    status = error.general_status or _Status.INVALID_PARAMETER_VALUE
    extended = error.extended_status
    if status == _Status.PATH_SEGMENT_ERROR:
        status, extended = _Status.CONNECTION_FAILURE, (_CM.INVALID_SEGMENT_IN_CONNECTION_PATH,)
    return reply_to(request.service, status, extended, failure_for(request.service, request.data))


class EnipSession(Session):
    protocol_name: ClassVar[str] = "enip"
    kind_fields: ClassVar[tuple[str, ...]] = ("service", "service_code")

    def __init__(self, runtime: Runtime, info: SessionInfo, view: SubjectView) -> None:
        super().__init__(runtime, info, view)
        self._codec = EncapsulationConnection()
        self._handle = 0
        self._connections: dict[int, _ClientConnection] = {}
        self._repeats = RepeatCache()
        self._read_records: dict[int, tuple[CipRequest, Decision, str, tuple[Any, ...], dict[str, Any]]] = {}
        self._decided: dict[Unwrapped, _Decided] = {}
        self._windows: list[Window] = []
        # The span of instants over which no window of the view opens or closes: the decisions in
        # _decided were made inside it, and the view decides the same anywhere inside it.
        self._steady_from = 0.0
        self._steady_until = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._bind_view()

    def _bind_view(self) -> None:
        pool = self.runtime.upstreams.pool_for(self.view.asset)
        assert isinstance(pool, EnipUpstreamPool)
        self._pool = pool
        self._histogram = self.runtime.metrics.histogram("enip", self.view.asset.name)
        audit = self.runtime.audit
        self._aggregates = audit.aggregates_reads
        self._reads: ReadAggregates = audit.reads
        # A view decides a request the same at any two instants between which none of its rules' time
        # windows opens or closes (and at any time when it has none): the decisions of a repeated
        # request are kept for that long, under this view only (a new view decides afresh).
        self._windows = [rule.window for rule in self.view.rules if rule.window is not None]
        self._steady_from = -math.inf
        self._steady_until = -math.inf if self._windows else math.inf
        self._decided.clear()

    def _steady(self, now: float) -> None:
        """Make ``now`` fall in the kept decisions' span: past its end (or before its start: the clock
        was set back), what was kept is dropped and a new span starts at ``now``."""
        if self._steady_from <= now < self._steady_until:
            return
        self._decided.clear()
        self._steady_from = now
        self._steady_until = min(window.steady_until(now) for window in self._windows)

    def _view_changed(self) -> None:
        self._bind_view()

    def code_name(self, code: int) -> str:
        return general_status_name(code)

    def _release(self) -> None:
        for task in self._tasks:
            task.cancel()

    def _withdraw(self) -> None:
        self._pool.withdraw(self)

    # ---------------------------------------------------------------------- encapsulation

    def data_received(self, data: bytes) -> None:
        self._codec.receive_data(data)
        self._read_buffered()

    def _read_buffered(self) -> None:
        codec = self._codec
        # held: a request waits past its identity's share of the asset's queue (gateway/upstream.py).
        while not self.closing and not self.paced and not self.held:
            if self._handle:
                # A connected request (the polled Read Tag) read without a message object; anything
                # else, or any other layout, the general way below.
                connected = codec.next_connected(self._handle)
                if connected is not None:
                    context, connection_id, sequence, body = connected
                    try:
                        self._connected(context, connection_id, sequence, body)
                    except CipProtocolError as error:
                        if self._malformed(error):
                            return
                    continue
            try:
                message = codec.next_message()
            except CipProtocolError as error:
                if self._malformed(error):
                    return
                continue
            if message is None:
                break
            handler = _HANDLERS.get(message.command)
            if handler is None:
                self._reply(message.reply(status=EncapsulationStatus.INVALID_COMMAND))
                continue
            try:
                handler(self, message)
            except CipProtocolError as error:
                if self._malformed(error):
                    return
        self.flush()

    def _malformed(self, error: CipProtocolError) -> bool:
        """Answer a malformed message (or end the session); True when the session is over."""
        if error.close:
            self.protocol_error(str(error), close=f"malformed encapsulation: {error}")
            return True
        self.protocol_error(str(error))
        if error.encapsulation_status is not None and error.command is not None:
            self._reply(
                EncapsulationMessage(
                    error.command, error.session_handle, error.encapsulation_status, error.sender_context
                )
            )
        return False

    def _reply(self, message: EncapsulationMessage) -> None:
        self._out.append(message.encode())

    def _registered(self, message: EncapsulationMessage) -> bool:
        if self._handle and message.session_handle == self._handle:
            return True
        self._reply(message.reply(status=EncapsulationStatus.INVALID_SESSION_HANDLE))
        return False

    def _register_session(self, message: EncapsulationMessage) -> None:
        if self._handle:  # one encapsulation session per TCP connection (Vol 2 §2-4.4)
            self._reply(message.reply(status=EncapsulationStatus.INVALID_COMMAND))
            return
        parse_register_session(message)
        self._handle = random.randrange(1, 1 << 32)
        self._reply(message.reply(register_session_data(), session_handle=self._handle))

    def _unregister_session(self, message: EncapsulationMessage) -> None:
        if message.session_handle == self._handle and self.transport is not None:
            self.flush()
            self.closing = True
            self.close_reason = "client unregistered its session"
            self.transport.close()

    def _list_identity(self, message: EncapsulationMessage) -> None:
        self._reply(message.reply(list_identity_data(self._identity())))

    def _list_services(self, message: EncapsulationMessage) -> None:
        self._reply(message.reply(list_services_data()))

    def _list_interfaces(self, message: EncapsulationMessage) -> None:
        self._reply(message.reply(list_interfaces_data()))

    def _nop(self, message: EncapsulationMessage) -> None:
        pass  # NOP gets no reply (Vol 2 §2-4.1)

    def _identity(self) -> IdentityItem:
        """What the gateway says the device is: configuration, never the device's own answer."""
        identity = self.view.asset.identity
        return IdentityItem(
            vendor_id=identity.vendor_id,
            device_type=identity.device_type,
            product_code=identity.product_code,
            revision_major=identity.revision_major,
            revision_minor=identity.revision_minor,
            status=0,
            serial_number=identity.serial,
            product_name=identity.product_name,
        )

    def _send_rr_data(self, message: EncapsulationMessage) -> None:
        if not self._registered(message):
            return
        body = unconnected_body(message.data)
        if body is None:
            body = unconnected_message(message, parse_send_data(message))
        self._request(body, _Answer(message.sender_context))

    def _send_unit_data(self, message: EncapsulationMessage) -> None:
        if not self._registered(message):
            return
        connected = connected_body(message.data)
        if connected is None:
            connected = connected_message(message, parse_send_data(message))
        connection_id, sequence, body = connected
        self._connected(message.sender_context, connection_id, sequence, body)

    def _connected(self, context: bytes, connection_id: int, sequence: int, body: bytes) -> None:
        """A registered client's connected request ``body`` on ``connection_id``."""
        connection = self._connections.get(connection_id)
        if connection is None:
            # Data on a connection that does not exist is dropped, as a target does (Vol 2 §2-6); the
            # metrics did not count it before either, so the record goes straight to the audit.
            record = self.record("protocol_error")
            record.update(
                side="client", reason=f"connected data for unknown connection 0x{connection_id:08X}"
            )
            self.runtime.audit.emit(record)
            return
        self._request(body, _Answer(context, connection.t_o_connection_id, sequence))

    def _answer(self, answer: _Answer, response: MessageRouterResponse, body: bytes | None = None) -> None:
        """Answer with ``response`` (whose encoding ``body`` is, when the caller has it)."""
        if body is None:
            body = response.encode()
        connection_id = answer.connection_id
        if connection_id is None:
            self._out.append(frame_send_rr_data(self._handle, answer.context, body))
        else:
            self._out.append(
                frame_send_unit_data(self._handle, answer.context, connection_id, answer.sequence, body)
            )

    # ---------------------------------------------------------------------- message router

    def _unwrap(self, body: bytes, answer: _Answer) -> Unwrapped | None:
        """The client's request, from the repeat cache when its bytes were seen before; ``None`` when it
        was answered already (malformed, or a Connection Manager request the gateway answers itself)."""
        unwrapped = self._repeats.get(body)
        if unwrapped is not None:
            return unwrapped
        try:
            request = parse_request(body)
        except CipProtocolError as error:
            self._answer(answer, reply_for_error(error, body[0] & 0x7F if body else 0))
            self.protocol_error(str(error))
            return None
        if request.service in _LOCAL and request.path.class_id == ClassCode.CONNECTION_MANAGER:
            self._connection_manager(request, answer)
            return None
        try:
            unwrapped = Unwrapped(request)
        except CipProtocolError as error:
            self._answer(answer, reply_for_error(error, request.service))
            self.protocol_error(str(error))
            return None
        self._repeats.keep(body, unwrapped)
        return unwrapped

    def _request(self, body: bytes, answer: _Answer) -> None:
        started = monotonic()
        unwrapped = self._unwrap(body, answer)
        if unwrapped is None:
            return
        leaves = unwrapped.leaves
        revision = self.view.policy_revision
        now = self.runtime.clock()
        self._steady(now)
        kept = self._decided.get(unwrapped)
        if kept is not None and kept.view is self.view:
            # Decided under this very view, in this span of no window change: allowed then, now.
            self.requests += len(leaves)
            self._in_flight += 1
            record = _Forwarded(answer, unwrapped, leaves, kept.local, kept.decisions, revision)
            connected = answer.connection_id is not None
            self._pool.submit(EnipPending(self, kept.message, connected, record, started))
            return
        decide = self.view.decide_enip
        local: list[MessageRouterResponse | None] = []
        decisions: list[Decision | None] = []
        drop = False
        refused = False
        self.requests += len(leaves)
        for leaf in leaves:
            if leaf.error is not None:
                local.append(error_reply(leaf))
                decisions.append(None)
                refused = True
                self.protocol_error(f"embedded request: {leaf.error}")
                continue
            if leaf.class_id == _CONNECTION_MANAGER and leaf.service in _LOCAL:
                local.append(refusal(leaf, _Status.SERVICE_NOT_SUPPORTED))
                decisions.append(None)
                refused = True
                continue
            decision = decide(leaf, now)
            decisions.append(decision)
            if decision.allowed:
                local.append(None)
                continue
            refused = True
            action = self.refuse(leaf.name or leaf.service, leaf_fields(leaf), decision)
            drop |= action != "exception"
            local.append(refusal(leaf, decision.exception_code))
        if drop:
            # A refusal the client must not hear about (drop; close after what is already answered):
            # no reply for the whole message.
            return
        message = None if refused else unwrapped.forward_all()
        if message is None:
            upstream = unwrapped.rebuild(local)
            if upstream is None:
                self._answer(answer, unwrapped.join(local, None))
                return
            message = upstream.encode()
        elif self._repeats.takes(body):
            decided = self._decided
            if len(decided) >= MAX_DECIDED:
                decided.clear()
            decided[unwrapped] = _Decided(self.view, decisions, local, message)
        self._in_flight += 1
        record = _Forwarded(answer, unwrapped, leaves, local, decisions, revision)
        self._pool.submit(EnipPending(self, message, answer.connection_id is not None, record, started))

    def deliver(self, pending: EnipPending, response: MessageRouterResponse, body: bytes, now: float) -> bool:
        """The device answered the forwarded part of a request with ``response`` (``body`` its bytes).
        True when this session has to flush."""
        first = not self._out
        self._in_flight -= 1
        record: _Forwarded = pending.reply
        try:
            final = record.unwrapped.join(record.local, response)
        except CipProtocolError as error:
            final = reply_to(
                record.unwrapped.request.service, error.general_status or _Status.INVALID_REPLY_RECEIVED
            )
            self._pool.upstream_fault(f"reply does not fit the request: {error}")
        # The device's own bytes when the join proved them the client's reply as they are.
        self._answer(record.answer, final, body if final is response else None)
        outcome = "ok" if response.ok else f"device status 0x{response.general_status:02X}"
        self._finish(pending, record, outcome, now, 0)
        return first and not self.closing

    def fail(self, pending: EnipPending, failure: Failure, reason: str, now: float) -> bool:
        """The device cannot answer: each forwarded request gets 0x01 (connection failure), 0x02
        (resource unavailable) when the gateway could not take it, 0x22 (invalid reply received) when
        the device's reply was malformed."""
        first = not self._out
        self._in_flight -= 1
        record: _Forwarded = pending.reply
        if failure.overload:
            status = _Status.RESOURCE_UNAVAILABLE
        elif failure is Failure.MALFORMED_REPLY:
            status = _Status.INVALID_REPLY_RECEIVED
        else:
            status = _Status.CONNECTION_FAILURE
        local = [
            reply if reply is not None else reply_to(leaf.service, status)
            for leaf, reply in zip(record.leaves, record.local, strict=True)
        ]
        self._answer(record.answer, record.unwrapped.join(local, None))
        if failure.aggregated:  # answered here, not by the device: a flood of them is aggregated
            self._overloaded(pending, record, reason, now, status, failure.value)
        else:
            self._finish(pending, record, reason, now, status)
        return first and not self.closing

    def _overloaded(
        self, pending: EnipPending, record: _Forwarded, reason: str, now: float, status: int, kind: str
    ) -> None:
        latency_s = now - pending.started
        self._histogram.observe(latency_s)
        for leaf, reply, decision in zip(record.leaves, record.local, record.decisions, strict=True):
            if reply is None and decision is not None:
                self._count(leaf.name or leaf.service, decision.verdict)
                self.overloaded(leaf_fields(leaf), decision, record.revision, reason, latency_s, status, kind)

    def _finish(
        self, pending: EnipPending, record: _Forwarded, outcome: str, now: float, status: int
    ) -> None:
        latency_s = now - pending.started
        self._histogram.observe(latency_s)
        aggregate = not status and outcome == "ok" and self._aggregates
        leaves, local, decisions = record.leaves, record.local, record.decisions
        # By index, not zip(): compiled, zip(strict=True) is a generic call and a tuple per leaf.
        for i in range(len(leaves)):
            leaf, decision = leaves[i], decisions[i]
            if local[i] is not None or decision is None:
                continue  # refused or malformed: counted and audited when decided
            self._count(leaf.name or leaf.service, decision.verdict)
            if aggregate and decision.verdict == "allow" and leaf.name in READ_SERVICES:
                key, fields = self._read_record(leaf, decision, record.revision)
                self._reads.add(key, fields, 0, NO_SPAN, latency_s)
                continue
            self._audit(leaf, decision, record.revision, outcome, latency_s, status)

    def _read_record(self, leaf: CipRequest, decision: Decision, revision: str) -> _ReadRecord:
        """The aggregation key and record of an allowed read. A repeated request brings the same leaf
        (from the repeat cache), decided the same way: its record is built once, not per read."""
        kept = self._read_records.get(id(leaf))
        # The entry holds the leaf, so no other object can take its id while it is kept.
        if kept is not None and kept[0] is leaf and kept[1] is decision and kept[2] == revision:
            return kept[3], kept[4]
        target = leaf_fields(leaf)
        target.pop("values", None)
        fields = self.decision_record(target, decision, revision, "ok")
        key = (self.id, leaf.name, leaf.tag, leaf.class_id, leaf.instance_id, decision.rule_id, revision)
        if len(self._read_records) >= MAX_READ_RECORDS:
            self._read_records.clear()
        self._read_records[id(leaf)] = (leaf, decision, revision, key, fields)
        return key, fields

    # -------------------------------------------------------------- Connection Manager (local)

    def _connection_manager(self, request: MessageRouterRequest, answer: _Answer) -> None:
        self.requests += 1
        try:
            leaf = flatten(request)[0]
        except CipProtocolError as error:
            self._answer(answer, _connection_request_error(request, error))
            self.protocol_error(str(error))
            return
        decision = self.view.decide_enip(leaf, self.runtime.clock())
        if not decision.allowed:
            if self.refuse(leaf.name or leaf.service, leaf_fields(leaf), decision) == "exception":
                self._answer(answer, refusal(leaf, decision.exception_code))
            return
        self._count(leaf.name or leaf.service, decision.verdict)
        if request.service == Service.FORWARD_CLOSE:
            self._forward_close(request, answer, leaf, decision)
            return
        task = asyncio.get_running_loop().create_task(self._forward_open(request, answer, leaf, decision))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _cannot_grant(self, forward_open: ForwardOpen) -> tuple[tuple[int, ...], str] | None:
        """Why the gateway cannot grant a client's Forward Open, as a target says it (Vol 1 §3-5.6):
        extended status words and the reason audited; None when it can."""
        if forward_open.transport_class != 3:
            # Only explicit messaging is relayed: no I/O connections.
            reason = f"transport class {forward_open.transport_class}, only class 3 is relayed"
            return (_CM.TRANSPORT_CLASS_NOT_SUPPORTED,), reason
        carried = self._pool.connection_size
        requested = max(forward_open.o_t.size, forward_open.t_o.size)
        if requested > carried:
            # Every message on the client's connection travels on the gateway's own connection to the
            # device, so it may be no larger. The second word is the size that would be granted: clients
            # fall back to it (libplctag reads it; pycomm3 and pylogix retry with a regular Forward Open).
            reason = f"connection size {requested} bytes above the {carried} the device connection carries"
            return (_CM.INVALID_CONNECTION_SIZE, carried), reason
        if len(self._connections) >= MAX_CLIENT_CONNECTIONS:
            return (_CM.OUT_OF_CONNECTIONS,), f"{MAX_CLIENT_CONNECTIONS} connections already open"
        return None

    async def _forward_open(
        self, request: MessageRouterRequest, answer: _Answer, leaf: CipRequest, decision: Decision
    ) -> None:
        forward_open = parse_forward_open(request.data, large=request.service == Service.LARGE_FORWARD_OPEN)
        failure = ForwardOpenFailure(*forward_open.triad).encode()
        # Answer only once the gateway holds a connection of its own to the device.
        try:
            await asyncio.wait_for(self._pool.link_ready.wait(), self.view.asset.connect_timeout_s)
        except TimeoutError:
            self._answer(
                answer,
                reply_to(
                    request.service, _Status.CONNECTION_FAILURE, (_CM.UNCONNECTED_REQUEST_TIMED_OUT,), failure
                ),
            )
            self._audit(leaf, decision, self.view.policy_revision, "device unreachable", None, 1)
            self.flush()
            return
        # Decided once the device connection is up: the size it carries is known only then.
        refused = self._cannot_grant(forward_open)
        if refused is not None:
            extended, reason = refused
            self._answer(answer, reply_to(request.service, _Status.CONNECTION_FAILURE, extended, failure))
            self._audit(
                leaf, decision, self.view.policy_revision, f"refused by the gateway: {reason}", None, 1
            )
            self.flush()
            return
        o_t_connection_id = random.randrange(1, 1 << 32)
        while o_t_connection_id in self._connections:
            o_t_connection_id = random.randrange(1, 1 << 32)
        self._connections[o_t_connection_id] = _ClientConnection(
            forward_open.t_o_connection_id, forward_open.triad
        )
        reply = ForwardOpenReply(
            o_t_connection_id,
            forward_open.t_o_connection_id,
            *forward_open.triad,
            forward_open.o_t_rpi,
            forward_open.t_o_rpi,
        )
        self._answer(answer, reply_to(request.service, _Status.SUCCESS, (), reply.encode()))
        self._audit(leaf, decision, self.view.policy_revision, "ok", None, 0)
        self.flush()

    def _forward_close(
        self, request: MessageRouterRequest, answer: _Answer, leaf: CipRequest, decision: Decision
    ) -> None:
        forward_close = parse_forward_close(request.data)
        for connection_id, connection in list(self._connections.items()):
            if connection.triad == forward_close.triad:
                del self._connections[connection_id]
                reply = ForwardCloseReply(*forward_close.triad).encode()
                self._answer(answer, reply_to(request.service, _Status.SUCCESS, (), reply))
                self._audit(leaf, decision, self.view.policy_revision, "ok", None, 0)
                return
        failure = ForwardOpenFailure(*forward_close.triad).encode()
        self._answer(
            answer,
            reply_to(request.service, _Status.CONNECTION_FAILURE, (_CM.CONNECTION_NOT_FOUND,), failure),
        )

    # --------------------------------------------------------------------------------- audit

    def _audit(
        self,
        leaf: CipRequest,
        decision: Decision,
        revision: str,
        outcome: str,
        latency_s: float | None,
        status: int,
    ) -> None:
        """One decision record of a request the gateway forwarded or answered for the device; ``status``
        is the general status of the gateway's own answer when the device could not give one."""
        self.runtime.audit.emit(
            self.decision_record(leaf_fields(leaf), decision, revision, outcome, latency_s, status)
        )

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["connections"] = len(self._connections)
        return info


# The encapsulation commands the gateway answers as a target, by command code. Beside the class rather
# than in its body: a table of the class's own functions built while the class is being defined cannot
# be compiled with mypyc (pyproject.toml [tool.ztgate] compiled).
_HANDLERS: Final[dict[int, Callable[[EnipSession, EncapsulationMessage], None]]] = {
    _Command.NOP: EnipSession._nop,
    _Command.LIST_SERVICES: EnipSession._list_services,
    _Command.LIST_IDENTITY: EnipSession._list_identity,
    _Command.LIST_INTERFACES: EnipSession._list_interfaces,
    _Command.REGISTER_SESSION: EnipSession._register_session,
    _Command.UNREGISTER_SESSION: EnipSession._unregister_session,
    _Command.SEND_RR_DATA: EnipSession._send_rr_data,
    _Command.SEND_UNIT_DATA: EnipSession._send_unit_data,
}
