"""The OPC UA session engine: one per overlay connection to an OPC UA asset.

The gateway terminates the client's secure channel (SecurityPolicy None: the overlay is the security) and
answers the Session and Discovery services itself: CreateSession and ActivateSession with a session and
token of its own (the identity is the overlay certificate's), GetEndpoints and FindServers with its own
endpoint (the device stays cloaked), RegisterNodes without aliases. Every other request is decided — the
service first, then each operation on its own — and what is allowed goes to the device on the gateway's
own session for this client. A request the policy leaves untouched travels as the client's bytes and its
response comes back as the device's bytes; otherwise the request is cut down to the allowed operations
and the results are spliced back with BadUserAccessDenied where operations were refused. Browse results
lose the references to nodes the identity may not browse, and UserAccessLevel / UserExecutable say what
the policy allows rather than what the gateway's own session may do.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from dataclasses import dataclass
from functools import partial
from time import monotonic
from typing import Any, ClassVar, Final

from asyncua import ua
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError

from gateway.opcua.tracking import SUBSCRIPTION_SERVICES, TRACKED_RESPONSES, SessionTracking
from gateway.opcua.upstream import DeviceSession, OpcUaPool, UpstreamUnavailableError, connect_failure
from gateway.runtime import Runtime
from gateway.session import Session, SessionInfo
from policies import Decision, SubjectView, browse_path_of
from protocols.opcua.binary import decode
from protocols.opcua.connection import ConnectionState, OpcUaServerConnection
from protocols.opcua.events import CloseChannel, Hello, OpenChannel, RejectedRequest, ServiceRequest
from protocols.opcua.messages import SERVICE_FAULT_TYPE_ID, Repeat, type_id_span
from protocols.opcua.operations import Operation, Reduction, reduce_request, splice_response
from protocols.opcua.spec import OpcUaProtocolError, Status

log = logging.getLogger("ztgate.opcua")

BAD_SERVER_NOT_CONNECTED: Final = StatusCodes.BadServerNotConnected
BAD_SESSION_ID_INVALID: Final = StatusCodes.BadSessionIdInvalid
BAD_SESSION_NOT_ACTIVATED: Final = StatusCodes.BadSessionNotActivated
BAD_IDENTITY_TOKEN_REJECTED: Final = StatusCodes.BadIdentityTokenRejected
BAD_TIMEOUT: Final = StatusCodes.BadTimeout
BAD_TOO_MANY_SESSIONS: Final = StatusCodes.BadTooManySessions
BAD_INTERNAL_ERROR: Final = StatusCodes.BadInternalError
MAX_IN_FLIGHT = 32  # requests of one client on their way to the device (Publish requests wait long)
IN_FLIGHT_LIMIT: Final = "in-flight limit"  # the reason the session stops reading, while it does
MAX_PUBLISH_WAIT_S = 120.0
ATTRIBUTE_USER_ACCESS_LEVEL = 18
ATTRIBUTE_USER_EXECUTABLE = 22
# UserAccessLevel bits (Part 3, 8.57) and the operation on the Value attribute each one stands for.
_ACCESS_BITS = (("Read", 0x01), ("Write", 0x02), ("HistoryRead", 0x04))
# Services the gateway answers itself (the Session and Discovery sets, RegisterNodes without aliases).
_LOCAL = frozenset(
    (
        "CreateSession",
        "ActivateSession",
        "CloseSession",
        "GetEndpoints",
        "FindServers",
        "FindServersOnNetwork",
        "RegisterNodes",
        "UnregisterNodes",
        "Cancel",
    )
)
_AGGREGATED = frozenset(("Read", "Browse", "BrowseNext", "TranslateBrowsePathsToNodeIds", "HistoryRead"))


@dataclass(frozen=True, slots=True)
class _Decided:
    """A request's operations with their decisions, and what follows from them for forwarding and
    accounting. Kept on a repeated request's cache entry while ``view`` and ``namespaces`` are the
    ones in force (and the view decides the service the same at any time)."""

    view: SubjectView
    namespaces: tuple[str, ...]
    operations: list[Operation]
    decisions: list[Decision]
    all_allowed: bool
    relay: bool  # all allowed, nothing in the response for the gateway: the bytes go as they are
    by_rule: tuple[tuple[str | None, int], ...] | None  # allowed reads per rule, when all are plain allows


def _status(code: int) -> ua.StatusCode:
    return ua.StatusCode(ua.UInt32(code))


def _opaque_node_id(size_bytes: int) -> ua.NodeId:
    """A session id or authentication token nobody can guess (Part 4, 5.6.2: opaque, random)."""
    return ua.NodeId(ua.ByteString(os.urandom(size_bytes)), ua.Int16(1), ua.NodeIdType.ByteString)


def local_node_id(node: ua.NodeId, namespaces: tuple[str, ...]) -> ua.NodeId | None:
    """A reference target (asyncua decodes an ExpandedNodeId without URI or server as a plain NodeId) as
    a NodeId of the device's; None for a node on another server or in a namespace the device does not
    list (no rule can allow those)."""
    if not isinstance(node, ua.ExpandedNodeId):
        return node
    if node.ServerIndex:
        return None
    if not node.NamespaceUri:
        return ua.NodeId(node.Identifier, node.NamespaceIndex, node.NodeIdType)
    if node.NamespaceUri not in namespaces:
        return None
    return ua.NodeId(node.Identifier, ua.Int16(namespaces.index(node.NamespaceUri)), node.NodeIdType)


def audit_text(text: str) -> str:
    """``text`` as UTF-8 the audit can write: asyncua decodes a String's invalid UTF-8 bytes to lone
    surrogates (surrogateescape), which no JSON encoder accepts; they are written as ``\\udcXX``."""
    return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")


def node_text(node: ua.NodeId | None) -> str | None:
    return None if node is None else audit_text(node.to_string())


class OpcUaSession(Session):
    protocol_name: ClassVar[str] = "opcua"

    def __init__(self, runtime: Runtime, info: SessionInfo, view: SubjectView) -> None:
        super().__init__(runtime, info, view)
        self._codec = OpcUaServerConnection(random.randrange(1, 1 << 31))
        self._device: DeviceSession | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._session_id: ua.NodeId | None = None
        self._token: ua.NodeId | None = None
        # The last token object found equal to _token: a repeated request brings the same object each
        # time (its cache entry's), and asyncua compares NodeIds in Python.
        self._token_seen: ua.NodeId | None = None
        self._activated = False
        self._endpoint_url = ""
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self._tracking = SessionTracking()
        self._read_fields: dict[tuple[str, str, str | None, str], dict[str, Any]] = {}
        # Kept: asyncio.get_running_loop() is a getpid() system call per call in CPython 3.11.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resuming = False
        # The last repeated request of this client (its cache entry): the one data_received looks for
        # first. Only a hint of what comes next; every request is decided in _service.
        self._express: Repeat | None = None
        self._bind_view()

    def _bind_view(self) -> None:
        pool = self.runtime.upstreams.pool_for(self.view.asset)
        assert isinstance(pool, OpcUaPool)
        self._pool = pool
        self._histogram = self.runtime.metrics.histogram("opcua", self.view.asset.name)

    def _view_changed(self) -> None:
        self._bind_view()
        self._read_fields.clear()  # keyed by policy revision: the old revision's are done with

    def _release(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._device is not None:
            self._pool.sessions -= 1
            asyncio.get_running_loop().create_task(self._device.close())
            self._device = None

    def busy(self) -> bool:
        return self._in_flight > 0

    # ---------------------------------------------------------------------------- the channel

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.closing:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        codec = self._codec
        now = self.runtime.clock()  # one reading for what this read brought
        express = self._express
        if express is not None and not self.closing:
            # A client polling one Read sends it again, alone in a read: the codec takes it as that
            # without its general chunk machinery; the decision is made as for any request.
            event = codec.take_repeat(data, now, express)
            if event is not None:
                self._service(event, now)
                self._limit_in_flight()
                return
        codec.receive_data(data)
        self._process(now)

    def _process(self, now: float) -> None:
        """Every event in what the codec holds, until it needs more bytes or the session pauses."""
        codec = self._codec
        while not self.closing:
            try:
                event = codec.next_event(now)
            except OpcUaProtocolError as error:
                self._protocol_error(error.reason)
                if error.close:
                    self._write(codec.send_error(error.status, error.reason))
                    self.close(f"protocol error: {error.reason}")
                    return
                continue
            if event is None:
                return
            if type(event) is ServiceRequest:
                self._service(event, now)
            elif isinstance(event, Hello):
                self._endpoint_url = event.endpoint_url
                self._write(event.reply)
            elif isinstance(event, OpenChannel):
                self._write(event.reply)
            elif isinstance(event, RejectedRequest):
                self._write(event.reply)
                self._protocol_error(event.reason)
            else:
                assert isinstance(event, CloseChannel)
                self.close("client closed the secure channel")
                return
            if self._limit_in_flight():
                return

    def _limit_in_flight(self) -> bool:
        """Stop reading from the client while MAX_IN_FLIGHT of its requests are on their way (True)."""
        if self._in_flight < MAX_IN_FLIGHT:
            return False
        self.pause_requests(IN_FLIGHT_LIMIT)
        return True

    def _room_in_flight(self) -> None:
        """An answer made room under the in-flight limit: read on, after what the codec still holds (the
        rest of the read that reached the limit: the transport does not deliver it again)."""
        if IN_FLIGHT_LIMIT in self._paused_by and self._in_flight < MAX_IN_FLIGHT and not self._resuming:
            self._resuming = True
            loop = self._loop or asyncio.get_running_loop()
            loop.call_soon(self._resume_after_in_flight)

    def _resume_after_in_flight(self) -> None:
        self._resuming = False
        if self.closing or IN_FLIGHT_LIMIT not in self._paused_by:
            return
        self._process(self.runtime.clock())  # stops again at the limit, still paused
        if self._in_flight < MAX_IN_FLIGHT:
            self.resume_requests(IN_FLIGHT_LIMIT)

    def _answerable(self) -> bool:
        # A device's answer may arrive after the client's channel ended (CloseSecureChannel, or an
        # Error for a later malformed message): nobody is left to answer, and the codec refuses to try.
        return self._codec.state is ConnectionState.OPEN

    def _fault(self, event: ServiceRequest, status: int) -> None:
        if self._answerable():
            self._write(self._codec.send_service_fault(event.request_id, event.request_handle, status))

    def _respond(self, event: ServiceRequest, response: Any) -> None:
        if not self._answerable():
            return
        try:
            self._write(
                self._codec.send_response(event.request_id, response, request_handle=event.request_handle)
            )
        except OpcUaProtocolError as error:  # a response asyncua cannot encode: the client still hears back
            self._fault(event, error.status)

    # ------------------------------------------------------------------------------- services

    def _service(self, event: ServiceRequest, now: float) -> None:
        self.requests += 1
        name = event.service.name
        if name in _LOCAL:
            getattr(self, f"_local_{name}", self._local_unsupported)(event)
            return
        if not self._activated:
            self._fault(event, BAD_SESSION_NOT_ACTIVATED)
            return
        token = event.request.RequestHeader.AuthenticationToken
        if token is not self._token_seen:
            if token != self._token:
                self._fault(event, BAD_SESSION_ID_INVALID)
                return
            self._token_seen = token
        repeat = event.repeat
        if repeat is not None:
            self._express = repeat
        device = self._device  # self._namespaces() in line: this runs for every request
        namespaces = device.namespaces if device is not None and device.namespaces else self._pool.namespaces
        if repeat is not None:
            decided = repeat.memo
            if decided is not None and decided.view is self.view and decided.namespaces is namespaces:
                # Kept only under a view that decides this service the same at any time (see below):
                # the service was allowed then, and is now.
                self._forward_operations(event, decided)
                return
        decision = self.view.decide_opcua_service(name, now)
        if not decision.allowed:
            self._refuse_service(event, decision)
            return
        codec = event.service.operations
        if codec is None:
            self._spawn(event, self._forward_whole(event, decision))
            return
        listed = list(repeat.operations) if repeat is not None else codec.operations(event.request)
        operations = self._tracking.resolve(name, event.request, listed)
        if self.view.needs_browse_paths(name):
            self._spawn(event, self._decide_on_paths(event, operations, now))
            return
        decisions = [self.view.decide_opcua(op, namespaces, now) for op in operations]
        decided = self._decided(name, namespaces, operations, decisions)
        if repeat is not None and self.view.opcua_timeless(name):
            # The same bytes decide the same under this view and namespace array: kept for the next.
            repeat.memo = decided
        self._forward_operations(event, decided)

    def _decided(
        self,
        service: str,
        namespaces: tuple[str, ...],
        operations: list[Operation],
        decisions: list[Decision],
    ) -> _Decided:
        all_allowed = all(decision.allowed for decision in decisions)
        relay = (
            all_allowed and service not in TRACKED_RESPONSES and not self._needs_rewrite(service, operations)
        )
        by_rule: dict[str | None, int] | None = None
        if all_allowed and service in _AGGREGATED and all(d.verdict == "allow" for d in decisions):
            by_rule = {}
            for decision in decisions:
                by_rule[decision.rule_id] = by_rule.get(decision.rule_id, 0) + 1
        return _Decided(
            self.view,
            namespaces,
            operations,
            decisions,
            all_allowed,
            relay,
            None if by_rule is None else tuple(by_rule.items()),
        )

    def _refuse_service(self, event: ServiceRequest, decision: Decision) -> None:
        self.denied += 1
        self._count(event.name, "deny")
        self._audit_operation(event, None, decision, "refused", None)
        if decision.action == "close":
            self.close(f"refused by rule {decision.rule_id}")
        elif decision.action == "exception":
            self._fault(event, decision.exception_code)

    async def _decide_on_paths(self, event: ServiceRequest, operations: list[Operation], now: float) -> None:
        """Decide operations where an entry names browse paths: each node's path comes from the device
        (cached by the pool), so these decisions wait for it."""
        namespaces = self._namespaces()
        decisions = []
        for op in operations:
            path = None
            if op.node_id is not None:
                names = await self._pool.browse_path(op.node_id)
                path = None if names is None else browse_path_of(names, namespaces)
            decisions.append(self.view.decide_opcua(op, namespaces, now, path))
        self._forward_operations(event, self._decided(event.name, namespaces, operations, decisions))

    def _namespaces(self) -> tuple[str, ...]:
        if self._device is not None and self._device.namespaces:
            return self._device.namespaces
        return self._pool.namespaces

    def _spawn(self, event: ServiceRequest, coroutine: Any) -> None:
        self._in_flight += 1
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        task = loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._done(event, done))

    def _done(self, event: ServiceRequest, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_flight -= 1
        if not task.cancelled() and (error := task.exception()) is not None:
            # A bug of ours must not leave the client waiting, nor let anything through: Bad, logged.
            log.error("%s: %s request failed in the gateway", self.id, event.name, exc_info=error)
            self._fault(event, BAD_INTERNAL_ERROR)
        self._room_in_flight()

    def _timeout_s(self, event: ServiceRequest) -> float:
        if event.name in ("Publish", "Republish"):
            hint = event.header.TimeoutHint / 1000 if event.header.TimeoutHint else MAX_PUBLISH_WAIT_S
            return min(max(hint, self.view.asset.response_timeout_s), MAX_PUBLISH_WAIT_S)
        return self.view.asset.response_timeout_s

    # ------------------------------------------------------------------------------ the device

    async def _device_session(self) -> DeviceSession:
        device = self._device
        if device is not None and device.alive:
            return device
        if device is not None:  # lost: forget it; the next request opens a new one
            self._device = None
            self._pool.sessions -= 1
            self._tracking = SessionTracking()  # the device's subscriptions went with its session
            asyncio.get_running_loop().create_task(device.close())
            self._audit_upstream("disconnected", "device session lost")
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(self._open_device())
        await asyncio.wait({self._connecting}, timeout=self.view.asset.connect_timeout_s)
        if self._device is None or not self._device.alive:
            raise UpstreamUnavailableError("no session on the device")
        return self._device

    async def _open_device(self) -> None:
        if self._pool.sessions >= self._pool.max_sessions:
            self._audit_upstream("connect_failed", f"max_sessions ({self._pool.max_sessions}) reached")
            return
        device = DeviceSession(self.view.asset)
        try:
            await device.open()
        except Exception as exc:  # whatever asyncua raises on the way: the device is not there
            self._pool.connect_failures += 1
            await device.close()
            self._audit_upstream("connect_failed", connect_failure(self.view.asset, exc))
            return
        if self.closing:
            await device.close()
            return
        self._device = device
        self._pool.sessions += 1

    async def _exchange(self, event: ServiceRequest, request: Any | None) -> bytes | None:
        """Send ``request`` (an object to encode) or, when None, the client's own bytes; the device's
        response body, or None after answering the client with a Bad status."""
        try:
            device = await self._device_session()
            timeout_s = self._timeout_s(event)
            if request is None:
                return await device.send_raw(event.body, timeout_s)
            return await device.send(request, timeout_s)
        except (UpstreamUnavailableError, ConnectionError, OSError, UaError) as error:
            self._device_failed(event, error)
        return None

    def _device_failed(self, event: ServiceRequest, error: BaseException) -> None:
        """Answer a request the device did not: BadTimeout (``error`` a TimeoutError, or the cancelled
        future of a request whose time ran out), else BadServerNotConnected."""
        if isinstance(error, TimeoutError | asyncio.CancelledError):
            self._pool.timeouts += 1
            self._fault(event, BAD_TIMEOUT)
        else:
            self._fault(event, BAD_SERVER_NOT_CONNECTED)

    def _decoded(self, event: ServiceRequest, body: bytes) -> Any | None:
        """The device's response as an object; None after relaying its ServiceFault or answering a
        response that does not decode with BadUnknownResponse."""
        type_id, _ = type_id_span(body)
        if type_id == SERVICE_FAULT_TYPE_ID:
            self._relay(event, body)
            return None
        try:
            response, _left = decode(event.service.response_type, body)
        except Exception:  # asyncua raises whatever its decoders hit on bytes it cannot read
            self._protocol_error_upstream(event)
            return None
        return response

    def _protocol_error_upstream(self, event: ServiceRequest) -> None:
        self.runtime.metrics.count_protocol_error("opcua", "upstream")
        self._fault(event, Status.BAD_UNKNOWN_RESPONSE)

    def _relay(self, event: ServiceRequest, body: bytes) -> None:
        if not self._answerable():
            return
        try:
            self._write(
                self._codec.relay_response(
                    event.request_id, body, event.request_handle, service=event.service
                )
            )
        except OpcUaProtocolError as error:
            self.runtime.metrics.count_protocol_error("opcua", "upstream")
            self._fault(event, error.status)

    async def _forward_whole(self, event: ServiceRequest, decision: Decision) -> None:
        started = monotonic()
        name = event.name
        if name not in SUBSCRIPTION_SERVICES:  # nothing of the gateway's own inside: the bytes go as they are
            body = await self._exchange(event, None)
            if body is not None:
                self._relay(event, body)
            self._account(event, decision, "ok" if body is not None else "device unavailable", started)
            return
        self._tracking.request_to_device(name, event.request)
        body = await self._exchange(event, event.request)
        response = None if body is None else self._decoded(event, body)
        if response is not None:
            self._tracking.response_to_client(name, event.request, response)
            self._respond(event, response)
        self._account(event, decision, "ok" if body is not None else "device unavailable", started)

    def _forward_operations(self, event: ServiceRequest, decided: _Decided) -> None:
        """Refused operations audited and never sent; the rest sent on. When all are allowed and
        nothing in the response is the gateway's business, the client's own bytes go and the device's
        come back (straight from the device's data_received while its session is up: the common polling
        Read); otherwise the request is cut down to the allowed operations and the results spliced
        back."""
        name = event.service.name
        if not decided.all_allowed:
            for op, decision in zip(decided.operations, decided.decisions, strict=True):
                if not decision.allowed:
                    self.denied += 1
                    self._count(name, decision.verdict)
                    self._audit_operation(event, op, decision, "refused", None)
        if decided.relay:  # never a service whose request carries subscription ids: those are tracked
            device = self._device
            if device is None or not self._relay_now(event, device, decided):
                self._spawn(event, self._relay_unchanged(event, decided))  # (re)connects first
            return
        self._tracking.request_to_device(name, event.request)
        codec = event.service.operations
        assert codec is not None
        allowed = [decision.allowed for decision in decided.decisions]
        reduction = reduce_request(codec, event.request, allowed)
        if reduction.request is None:  # nothing allowed: the device hears nothing of it
            self._respond(event, splice_response(reduction, None))
            return
        self._spawn(event, self._forward_reduced(event, decided, reduction))

    def _relay_now(self, event: ServiceRequest, device: DeviceSession, decided: _Decided) -> bool:
        """Relay on the device session as it is; False when it is gone (nothing sent, nothing counted)."""
        started = monotonic()
        reply = partial(self._relayed, event, decided, started)
        self._in_flight += 1
        token_span = event.repeat.token_span if event.repeat is not None else None
        # The asset's response timeout: what _timeout_s gives every service with operations to relay.
        timeout_s = self.view.asset.response_timeout_s
        try:
            device.relay_raw(event.body, timeout_s, reply, self._late_reply, token_span)
        except UpstreamUnavailableError:
            self._in_flight -= 1
            return False
        except (ConnectionError, OSError, UaError) as error:
            self._relayed(event, decided, started, None, error)
        return True

    def _relayed(
        self,
        event: ServiceRequest,
        decided: _Decided,
        started: float,
        body: bytes | None,
        error: BaseException | None,
    ) -> None:
        self._in_flight -= 1
        try:
            if body is None:
                self._device_failed(event, error or ConnectionError("no response"))
            else:
                self._relay(event, body)
            self._account_allowed(event, decided, body is not None, started)
        except Exception:  # a bug of ours must not leave the client waiting: Bad, logged (as _done)
            log.exception("%s: %s request failed in the gateway", self.id, event.name)
            self._fault(event, BAD_INTERNAL_ERROR)
        self._room_in_flight()

    def _late_reply(self) -> None:
        self._pool.late_replies += 1

    async def _relay_unchanged(self, event: ServiceRequest, decided: _Decided) -> None:
        started = monotonic()
        body = await self._exchange(event, None)
        if body is not None:
            self._relay(event, body)
        self._account_allowed(event, decided, body is not None, started)

    async def _forward_reduced(self, event: ServiceRequest, decided: _Decided, reduction: Reduction) -> None:
        started = monotonic()
        name = event.name
        operations = decided.operations
        rewrite = self._needs_rewrite(name, operations)
        body = await self._exchange(event, reduction.request)
        response = None if body is None else self._decoded(event, body)
        if response is not None:
            try:
                response = splice_response(reduction, response)
            except OpcUaProtocolError as error:
                self.runtime.metrics.count_protocol_error("opcua", "upstream")
                self._fault(event, error.status)
                response = None
        if response is not None:
            self._tracking.response_to_client(name, event.request, response)
            if rewrite:
                self._rewrite(name, operations, response)
            self._respond(event, response)
        self._account_allowed(event, decided, body is not None, started)

    def _account_allowed(
        self, event: ServiceRequest, decided: _Decided, answered: bool, started: float
    ) -> None:
        """Latency once per request; the allowed operations counted, and audited (allowed reads
        aggregated per rule, everything else one record per operation)."""
        latency_s = monotonic() - started
        self._histogram.observe(latency_s)
        name = event.name
        aggregate = answered and name in _AGGREGATED and self.runtime.audit.aggregates_reads
        by_rule = decided.by_rule
        if by_rule is None or not aggregate:
            outcome = "ok" if answered else "device unavailable"
            counted: dict[str | None, int] = {}
            for op, decision in zip(decided.operations, decided.decisions, strict=True):
                if not decision.allowed:
                    continue
                if aggregate and decision.verdict == "allow":
                    counted[decision.rule_id] = counted.get(decision.rule_id, 0) + 1
                else:
                    self._count(name, decision.verdict)
                    self._audit_operation(event, op, decision, outcome, latency_s)
            by_rule = tuple(counted.items())
        for rule_id, count in by_rule:
            self.counts[name] = self.counts.get(name, 0) + count
            self._aggregate(name, rule_id, latency_s, count)

    # ------------------------------------------------------------------ what the client is told

    def _needs_rewrite(self, service: str, operations: list[Operation]) -> bool:
        if service in ("Browse", "BrowseNext"):
            return True
        return service == "Read" and any(
            op.attribute_id in (ATTRIBUTE_USER_ACCESS_LEVEL, ATTRIBUTE_USER_EXECUTABLE) for op in operations
        )

    def _rewrite(self, service: str, operations: list[Operation], response: Any) -> None:
        now = self.runtime.clock()
        namespaces = self._namespaces()
        if service in ("Browse", "BrowseNext"):
            results = response.Results if service == "Browse" else response.Parameters.Results
            for result in results or ():
                # A reference to a node the identity may not browse is no business of the client's.
                result.References = [
                    reference
                    for reference in result.References or ()
                    if self.view.decide_opcua(
                        Operation("Browse", 0, None, local_node_id(reference.NodeId, namespaces)),
                        namespaces,
                        now,
                    ).allowed
                ]
            return
        for op, result in zip(operations, response.Results or (), strict=False):
            value = getattr(getattr(result, "Value", None), "Value", None)
            if op.attribute_id == ATTRIBUTE_USER_ACCESS_LEVEL and isinstance(value, int):
                # A bit stays when some such operation may be allowed (a Write is decided on its value).
                for probed, bit in _ACCESS_BITS:
                    probe = Operation(probed, 0, None, op.node_id, AttributeIds.Value)
                    if value & bit and not self.view.opcua_may(probe, namespaces, now):
                        value &= ~bit
                result.Value.Value = value
            elif op.attribute_id == ATTRIBUTE_USER_EXECUTABLE and value is True:
                call = Operation("Call", 0, None, None, method_id=op.node_id)
                if not self.view.opcua_may(call, namespaces, now):
                    result.Value.Value = False

    # ------------------------------------------------------------------------- local services

    def _local_unsupported(self, event: ServiceRequest) -> None:
        self._fault(event, Status.BAD_SERVICE_UNSUPPORTED)

    def _local_Cancel(self, event: ServiceRequest) -> None:  # noqa: N802 - Part 4's service names
        self._respond(event, ua.CancelResponse(Parameters=ua.CancelResult(CancelCount=0)))

    def _endpoint(self) -> ua.EndpointDescription:
        """The gateway's own endpoint: what the overlay offers, never the device's."""
        url = self._endpoint_url or f"opc.tcp://{self.info.asset}/"
        application = ua.ApplicationDescription(
            ApplicationUri=f"urn:ztgate:gateway:{self.runtime.name}",
            ProductUri="urn:ztgate",
            ApplicationName=ua.LocalizedText(f"ztgate {self.info.asset}"),
            ApplicationType=ua.ApplicationType.Server,
            DiscoveryUrls=[url],
        )
        token = ua.UserTokenPolicy(PolicyId="anonymous", TokenType=ua.UserTokenType.Anonymous)
        return ua.EndpointDescription(
            EndpointUrl=url,
            Server=application,
            SecurityMode=ua.MessageSecurityMode.None_,
            SecurityPolicyUri="http://opcfoundation.org/UA/SecurityPolicy#None",
            UserIdentityTokens=[token],
            TransportProfileUri="http://opcfoundation.org/UA-Profile/Transport/uatcp-uasc-uabinary",
            SecurityLevel=0,
        )

    def _local_GetEndpoints(self, event: ServiceRequest) -> None:  # noqa: N802
        self._respond(event, ua.GetEndpointsResponse(Endpoints=[self._endpoint()]))

    def _local_FindServers(self, event: ServiceRequest) -> None:  # noqa: N802
        self._respond(event, ua.FindServersResponse(Servers=[self._endpoint().Server]))

    def _local_CreateSession(self, event: ServiceRequest) -> None:  # noqa: N802
        if self._session_id is not None:  # one session per secure channel: the identity is the channel's
            self._fault(event, BAD_TOO_MANY_SESSIONS)
            return
        self._session_id = _opaque_node_id(16)
        self._token, self._token_seen = _opaque_node_id(32), None
        requested = event.request.Parameters.RequestedSessionTimeout or 60_000
        result = ua.CreateSessionResult(
            SessionId=self._session_id,
            AuthenticationToken=self._token,
            RevisedSessionTimeout=min(max(requested, 10_000), 3_600_000),
            ServerNonce=os.urandom(32),
            ServerEndpoints=[self._endpoint()],
            MaxRequestMessageSize=self._codec.max_message_size,
        )
        self._respond(event, ua.CreateSessionResponse(Parameters=result))

    def _local_ActivateSession(self, event: ServiceRequest) -> None:  # noqa: N802
        if self._token is None or event.header.AuthenticationToken != self._token:
            self._fault(event, BAD_SESSION_ID_INVALID)
            return
        token = event.request.Parameters.UserIdentityToken
        if token is not None and not isinstance(token, ua.AnonymousIdentityToken | ua.ExtensionObject):
            # Who the user is, the overlay certificate says; a second identity would only confuse.
            self._fault(event, BAD_IDENTITY_TOKEN_REJECTED)
            return
        self._spawn(event, self._activate(event))

    async def _activate(self, event: ServiceRequest) -> None:
        try:
            await self._device_session()
        except UpstreamUnavailableError:
            pass  # the session exists here all the same: requests get Bad until the device is back
        self._activated = True
        result = ua.ActivateSessionResult(ServerNonce=os.urandom(32))
        self._respond(event, ua.ActivateSessionResponse(Parameters=result))

    def _local_CloseSession(self, event: ServiceRequest) -> None:  # noqa: N802
        self._activated = False
        self._token = self._token_seen = None
        self._session_id = None
        self._respond(event, ua.CloseSessionResponse())

    def _local_RegisterNodes(self, event: ServiceRequest) -> None:  # noqa: N802
        # No aliases: a registered node is itself, so every later use is decided on the real id.
        nodes = list(event.request.Parameters.NodesToRegister or ())
        self._respond(
            event, ua.RegisterNodesResponse(Parameters=ua.RegisterNodesResult(RegisteredNodeIds=nodes))
        )

    def _local_UnregisterNodes(self, event: ServiceRequest) -> None:  # noqa: N802
        self._respond(event, ua.UnregisterNodesResponse())

    # ------------------------------------------------------------------------------------ audit

    def _base(self, kind: str) -> dict[str, Any]:
        return {
            "event": kind,
            "session": self.id,
            "identity": self.info.identity,
            "asset": self.info.asset,
            "protocol": "opcua",
            "policy_revision": self.view.policy_revision,
        }

    def _protocol_error(self, reason: str) -> None:
        self.runtime.metrics.count_protocol_error("opcua", "client")
        event = self._base("protocol_error")
        event.update(side="client", reason=reason)
        self.runtime.audit.emit(event)

    def _audit_upstream(self, state: str, reason: str | None) -> None:
        event = self._base("upstream")
        event.update(state=state, reason=reason)
        self.runtime.audit.emit(event)

    def _account(self, event: ServiceRequest, decision: Decision, outcome: str, started: float) -> None:
        """A request decided as a whole: a service without operations."""
        latency_s = monotonic() - started
        self._histogram.observe(latency_s)
        self._count(event.name, decision.verdict)
        self._audit_operation(event, None, decision, outcome, latency_s)

    def _aggregate(self, service: str, rule_id: str | None, latency_s: float, count: int) -> None:
        key = (self.id, service, rule_id, self.view.policy_revision)
        fields = self._read_fields.get(key)
        if fields is None:  # one dict per (service, rule, revision): the audit log copies, never mutates
            fields = self._base("decision")
            fields.update(service=service, decision="allow", rule=rule_id)
            self._read_fields[key] = fields
        self.runtime.audit.aggregate_read(key, fields, None, latency_s, count)

    def _audit_operation(
        self,
        event: ServiceRequest,
        op: Operation | None,
        decision: Decision,
        outcome: str,
        latency_s: float | None,
    ) -> None:
        record = self._base("decision")
        record["service"] = event.name
        if op is not None:
            record["index"] = op.index
            if op.node_id is not None:
                record["node"] = node_text(op.node_id)
            if op.attribute_id is not None:
                record["attribute"] = op.attribute_id
            if op.method_id is not None:
                record["method"] = node_text(op.method_id)
            if op.value is not None:
                value = op.value.Value
                record["values"] = audit_text(str(value.Value)[:200]) if value is not None else None
        record["decision"] = decision.verdict
        record["rule"] = decision.rule_id
        if decision.verdict != "allow":
            record["reason"] = decision.reason
            record["status"] = decision.exception_code
        if decision.monitor_rule_id is not None:
            record["monitor_rule"] = decision.monitor_rule_id
        record["outcome"] = outcome
        if latency_s is not None:
            record["latency_us"] = int(latency_s * 1e6)
        self.runtime.audit.emit(record)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["in_flight"] = self._in_flight
        info["device_session"] = self._device is not None and self._device.alive
        return info
