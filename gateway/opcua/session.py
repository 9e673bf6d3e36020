"""The OPC UA session engine: one per overlay connection to an OPC UA asset.

The gateway terminates the client's secure channel (SecurityPolicy None: the overlay is the security) and
answers the Session and Discovery services itself: CreateSession and ActivateSession with a session and
token of its own (the identity is the overlay certificate's), GetEndpoints and FindServers with its own
endpoint (the device stays cloaked), RegisterNodes without aliases. Every other request is decided — the
service first, then each operation on its own — and what is allowed goes to the device on the gateway's
own session for this client (:mod:`gateway.opcua.forwarding`). A request the policy leaves untouched
travels as the client's bytes and its response comes back as the device's bytes; otherwise the request is
cut down to the allowed operations and the results are spliced back with BadUserAccessDenied where
operations were refused. Browse results lose the references to nodes the identity may not browse, and
UserAccessLevel / UserExecutable say what the policy allows rather than what the gateway's own session
may do (:mod:`gateway.opcua.decisions`, which also keeps the decisions of a repeated request).

This module is the client's side: the channel, the services the gateway answers itself, the decisions
and their audit.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable
from time import monotonic
from typing import Any, ClassVar, Final

from asyncua import ua
from asyncua.ua.status_codes import StatusCodes

from gateway.opcua.decisions import AGGREGATED, Decided, DecisionMemo, decided_operations, decided_whole
from gateway.opcua.forwarding import Forwarding
from gateway.opcua.upstream import OpcUaPool, UpstreamUnavailableError
from gateway.runtime import Runtime
from gateway.session import Session, SessionInfo
from policies import Decision, SubjectView, browse_path_of
from policies.decision import ACTION_FORWARD, VERDICT_ALLOW, VERDICT_DENY
from protocols.opcua.connection import ConnectionState, OpcUaServerConnection
from protocols.opcua.events import CloseChannel, Hello, OpenChannel, RejectedRequest, ServiceRequest
from protocols.opcua.messages import Repeat
from protocols.opcua.operations import Operation
from protocols.opcua.spec import OpcUaProtocolError, Status, status_name

BAD_SESSION_ID_INVALID: Final = StatusCodes.BadSessionIdInvalid
BAD_SESSION_NOT_ACTIVATED: Final = StatusCodes.BadSessionNotActivated
BAD_IDENTITY_TOKEN_REJECTED: Final = StatusCodes.BadIdentityTokenRejected
BAD_TOO_MANY_SESSIONS: Final = StatusCodes.BadTooManySessions
BAD_SERVER_NOT_CONNECTED: Final = StatusCodes.BadServerNotConnected
# Requests outside the client's session, refused (and audited) before any rule is asked.
_NOT_ACTIVATED: Final = Decision(
    VERDICT_DENY, None, BAD_SESSION_NOT_ACTIVATED, "exception", "no activated session on this channel"
)
_OTHER_SESSION: Final = Decision(
    VERDICT_DENY,
    None,
    BAD_SESSION_ID_INVALID,
    "exception",
    "authentication token of no session on this channel",
)
MAX_SESSION_TIMEOUT_MS: Final = 3_600_000  # the bounds of CreateSession's RevisedSessionTimeout
MIN_SESSION_TIMEOUT_MS: Final = 10_000
MAX_IN_FLIGHT = 32  # requests of one client on their way to the device (Publish requests wait long)
IN_FLIGHT_LIMIT: Final = "in-flight limit"  # the reason the session stops reading, while it does


def _opaque_node_id(size_bytes: int) -> ua.NodeId:
    """A session id or authentication token nobody can guess (Part 4, 5.6.2: opaque, random)."""
    return ua.NodeId(ua.ByteString(os.urandom(size_bytes)), ua.Int16(1), ua.NodeIdType.ByteString)


def audit_text(text: str) -> str:
    """``text`` as UTF-8 the audit can write: asyncua decodes a String's invalid UTF-8 bytes to lone
    surrogates (surrogateescape), which no JSON encoder accepts; they are written as ``\\udcXX``."""
    return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")


def node_text(node: ua.NodeId | None) -> str | None:
    return None if node is None else audit_text(node.to_string())


def operation_fields(service: str, op: Operation) -> dict[str, Any]:
    """The audit fields that say what one operation of an OPC UA request touches."""
    fields: dict[str, Any] = {"service": service, "index": op.index}
    if op.node_id is not None:
        fields["node"] = node_text(op.node_id)
    if op.attribute_id is not None:
        fields["attribute"] = op.attribute_id
    if op.method_id is not None:
        fields["method"] = node_text(op.method_id)
    if op.value is not None:
        value = op.value.Value
        fields["values"] = audit_text(str(value.Value)[:200]) if value is not None else None
    return fields


class OpcUaSession(Session):
    protocol_name: ClassVar[str] = "opcua"
    code_hex_digits: ClassVar[int] = 8
    kind_fields: ClassVar[tuple[str, ...]] = ("service",)
    # The longest session timeout CreateSession grants: a client silent for longer has no OPC UA
    # session left to use (Part 4, 5.6.2), so its connection ends even when client_idle_timeout_s is 0.
    default_idle_timeout_s: ClassVar[float] = MAX_SESSION_TIMEOUT_MS / 1000

    def __init__(self, runtime: Runtime, info: SessionInfo, view: SubjectView) -> None:
        super().__init__(runtime, info, view)
        self._codec = OpcUaServerConnection(random.randrange(1, 1 << 31))
        self._session_id: ua.NodeId | None = None
        self._token: ua.NodeId | None = None
        # The last token object found equal to _token: a repeated request brings the same object each
        # time (its cache entry's), and asyncua compares NodeIds in Python.
        self._token_seen: ua.NodeId | None = None
        self._activated = False
        self._endpoint_url = ""
        self._read_fields: dict[tuple[str, str, str | None, str], dict[str, Any]] = {}
        self._resuming = False
        # The last repeated request of this client (its cache entry): the one data_received looks for
        # first. Only a hint of what comes next; every request is decided in _service.
        self._express: Repeat | None = None
        self._memo = DecisionMemo()
        # Bytes of a partial message charged to the gateway's reassembly budget, and the timer that
        # ends a partial message which does not complete in time.
        self._reassembly_held = 0
        self._reassembly_timer: asyncio.TimerHandle | None = None
        self._forwarding = Forwarding(self, self._asset_pool())
        self._histogram = self.runtime.metrics.histogram("opcua", self.view.asset.name)

    def _asset_pool(self) -> OpcUaPool:
        pool = self.runtime.upstreams.pool_for(self.view.asset)
        assert isinstance(pool, OpcUaPool)
        return pool

    def _view_changed(self) -> None:
        self._forwarding.pool = self._asset_pool()
        self._histogram = self.runtime.metrics.histogram("opcua", self.view.asset.name)
        self._read_fields.clear()  # keyed by policy revision: the old revision's are done with
        self._memo.clear()  # decided under the old view

    def _release(self) -> None:
        self._forwarding.release()
        self._reassembly_held = self.runtime.reassembly.charge(self._reassembly_held, 0)
        if self._reassembly_timer is not None:
            self._reassembly_timer.cancel()
            self._reassembly_timer = None

    def busy(self) -> bool:
        return self._forwarding.in_flight > 0

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
        """Every event in what the codec holds, until it needs more bytes or the session pauses; what a
        partial message holds afterwards is charged to the gateway's reassembly budget."""
        codec = self._codec
        # What is left of the budget besides what this codec holds already. Nothing else charges the
        # budget until this returns, so the room stays the same for every chunk of this read.
        codec.reassembly_room = self.runtime.reassembly.room(self._reassembly_held)
        try:
            self._events(codec, now)
        finally:
            if codec.partial_bytes != self._reassembly_held:
                self._held_partial()

    def _events(self, codec: OpcUaServerConnection, now: float) -> None:
        while not self.closing and not self.paced:
            try:
                event = codec.next_event(now)
            except OpcUaProtocolError as error:
                if error.close:
                    self._write(codec.send_error(error.status, error.reason))
                    if error.status == Status.BAD_TCP_NOT_ENOUGH_RESOURCES:
                        self.runtime.reassembly.refused += 1
                    self.protocol_error(
                        error.reason, close=f"protocol error: {error.reason}", code=error.status
                    )
                    return
                self.protocol_error(error.reason)
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
                self.protocol_error(event.reason)
            else:
                assert isinstance(event, CloseChannel)
                self.close("client closed the secure channel")
                return
            if self._limit_in_flight():
                return

    def _held_partial(self) -> None:
        """The codec's partial message changed: charge the budget, and time a new partial message."""
        held = self._codec.partial_bytes
        self._reassembly_held = self.runtime.reassembly.charge(self._reassembly_held, held)
        if held and self._reassembly_timer is None and not self.closing:
            timeout_s = self.runtime.limits.reassembly_timeout_s
            self._reassembly_timer = asyncio.get_running_loop().call_later(timeout_s, self._reassembly_due)

    def _reassembly_due(self) -> None:
        """A partial message may have outlived reassembly_timeout_s: end the channel if it did, and the
        client had the chance to send the rest (reading from it was not paused)."""
        self._reassembly_timer = None
        since = self._codec.partial_since
        if self.closing or since is None:
            return
        timeout_s = self.runtime.limits.reassembly_timeout_s
        left_s = since + timeout_s - self.runtime.clock()
        if left_s > 0 or self._paused_by:
            self._reassembly_timer = asyncio.get_running_loop().call_later(
                left_s if left_s > 0 else 1.0, self._reassembly_due
            )
            return
        reason = (
            f"a message of {self._codec.partial_bytes} bytes stayed incomplete for more than "
            f"{timeout_s:g} s (reassembly_timeout_s)"
        )
        self._write(self._codec.send_error(Status.BAD_TIMEOUT, reason))
        self.protocol_error(reason, close=f"protocol error: {reason}", code=Status.BAD_TIMEOUT)

    def _limit_in_flight(self) -> bool:
        """Stop reading from the client while MAX_IN_FLIGHT of its requests are on their way (True)."""
        if self._forwarding.in_flight < MAX_IN_FLIGHT:
            return False
        self.pause_requests(IN_FLIGHT_LIMIT)
        return True

    def _room_in_flight(self) -> None:
        """An answer made room under the in-flight limit: read on, after what the codec still holds (the
        rest of the read that reached the limit: the transport does not deliver it again)."""
        if (
            IN_FLIGHT_LIMIT in self._paused_by
            and self._forwarding.in_flight < MAX_IN_FLIGHT
            and not self._resuming
        ):
            self._resuming = True
            asyncio.get_running_loop().call_soon(self._resume_after_in_flight)

    def _resume_after_in_flight(self) -> None:
        self._resuming = False
        if self.closing or IN_FLIGHT_LIMIT not in self._paused_by:
            return
        self._process(self.runtime.clock())  # stops again at the limit, still paused
        if self._forwarding.in_flight < MAX_IN_FLIGHT:
            self.resume_requests(IN_FLIGHT_LIMIT)

    def _read_buffered(self) -> None:
        self._process(self.runtime.clock())

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

    def _relay(self, event: ServiceRequest, body: bytes) -> None:
        """The device's response body to the client as it is, re-labelled with the client's handle."""
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

    # ------------------------------------------------------------------------------ decisions

    def _service(self, event: ServiceRequest, now: float) -> None:
        self.requests += 1
        name = event.service.name
        local = _LOCAL_SERVICES.get(name)
        if local is not None:
            local(self, event)
            return
        if not self._activated:
            self._refuse_service(event, _NOT_ACTIVATED)
            return
        token = event.request.RequestHeader.AuthenticationToken
        if token is not self._token_seen:
            if token != self._token:
                self._refuse_service(event, _OTHER_SESSION)
                return
            self._token_seen = token
        repeat = event.repeat
        forwarding = self._forwarding
        device = forwarding.device  # forwarding.namespaces() in line: this runs for every request
        namespaces = (
            device.namespaces if device is not None and device.namespaces else forwarding.pool.namespaces
        )
        if repeat is not None:
            self._express = repeat
            decided = self._memo.get(repeat, self.view, namespaces)
            if decided is not None:
                # Kept only under a view that decides this service the same at any time (see below):
                # the service was allowed then, and is now.
                self._forward_operations(event, decided)
                return
        decision = self.view.decide_opcua_service(name, now)
        if not decision.allowed:
            self._refuse_service(event, decision)
            return
        if event.service.operations is None:
            forwarding.forward(event, decided_whole(self.view, name, namespaces, decision))
            return
        if not namespaces:
            # The device has not answered yet: node ids are decided on its namespace array, which comes
            # with its session.
            forwarding.spawn(event, self._decide_once_connected(event, decision, now))
            return
        self._decide_operations(event, namespaces, now)

    def _decide_operations(self, event: ServiceRequest, namespaces: tuple[str, ...], now: float) -> None:
        """Decide each operation of an allowed service, and forward what is allowed."""
        name = event.service.name
        codec = event.service.operations
        assert codec is not None
        repeat = event.repeat
        listed = list(repeat.operations) if repeat is not None else codec.operations(event.request)
        operations = self._forwarding.tracking.resolve(name, event.request, listed)
        if self.view.needs_browse_paths(name):
            self._forwarding.spawn(event, self._decide_on_paths(event, operations, now))
            return
        decisions = [self.view.decide_opcua(op, namespaces, now) for op in operations]
        decided = decided_operations(self.view, name, namespaces, operations, decisions)
        if repeat is not None and self.view.opcua_timeless(name):
            # The same bytes decide the same under this view and namespace array: kept for the next.
            self._memo.keep(repeat, decided)
        self._forward_operations(event, decided)

    async def _decide_once_connected(self, event: ServiceRequest, decision: Decision, now: float) -> None:
        """Decide the operations of an allowed service once the device's session (and namespace array) is
        there; BadServerNotConnected, audited as the device's outcome, when it does not come."""
        started = monotonic()
        try:
            await self._forwarding.device_session()
        except UpstreamUnavailableError:
            self._fault(event, BAD_SERVER_NOT_CONNECTED)
            self._account_unanswered(
                event,
                decided_whole(self.view, event.name, (), decision),
                "device unavailable",
                started,
                BAD_SERVER_NOT_CONNECTED,
            )
            return
        self._decide_operations(event, self._forwarding.namespaces(), now)

    def _refuse_service(self, event: ServiceRequest, decision: Decision) -> None:
        if self.refuse(event.name, {"service": event.name}, decision) == "exception":
            self._fault(event, decision.exception_code)

    async def _decide_on_paths(self, event: ServiceRequest, operations: list[Operation], now: float) -> None:
        """Decide operations where an entry names browse paths: each node's path comes from the device
        (cached by the pool), so these decisions wait for it."""
        namespaces = self._forwarding.namespaces()
        decisions = []
        for op in operations:
            path = None
            if op.node_id is not None:
                names = await self._forwarding.pool.browse_path(op.node_id)
                path = None if names is None else browse_path_of(names, namespaces)
            decisions.append(self.view.decide_opcua(op, namespaces, now, path))
        decided = decided_operations(self.view, event.name, namespaces, operations, decisions)
        self._forward_operations(event, decided)

    def _forward_operations(self, event: ServiceRequest, decided: Decided) -> None:
        """Refused operations audited and never sent; the rest forwarded."""
        name = event.service.name
        if not decided.all_allowed:
            answered = True
            for op, decision in zip(decided.operations, decided.decisions, strict=True):
                if not decision.allowed:
                    answered &= self.refuse(name, operation_fields(name, op), decision) == "exception"
            if not answered:
                return  # drop (or close): no response for the whole request, nothing goes to the device
        self._forwarding.forward(event, decided)

    def _account_forwarded(
        self,
        event: ServiceRequest,
        decided: Decided,
        answered: bool,
        started: float,
        outcome: str = "",
        code: int = BAD_SERVER_NOT_CONNECTED,
    ) -> None:
        """A forwarded request answered (or not) by the device: a service decided as a whole, or its
        allowed operations. ``outcome`` when it is neither "ok" nor "device unavailable"; ``code``: what
        the gateway answered in the device's place."""
        if not answered:
            self._account_unanswered(event, decided, outcome or "device unavailable", started, code)
            return
        outcome = outcome or "ok"
        if decided.whole is not None:
            self._account(event, decided.whole, outcome, started)
        else:
            self._account_allowed(event, decided, answered, started, outcome)

    def _account_unanswered(
        self, event: ServiceRequest, decided: Decided, outcome: str, started: float, code: int
    ) -> None:
        """An allowed request the device did not answer: audited per kind like the gateway's other own
        answers (the first in full, then counted per interval), so a client that goes on polling through
        a device outage writes a line per interval, not per request."""
        latency_s = monotonic() - started
        self._histogram.observe(latency_s)
        revision = self.view.policy_revision
        name = event.name
        if decided.whole is not None:
            self._count(name, decided.whole.verdict)
            self.overloaded({"service": name}, decided.whole, revision, outcome, latency_s, code)
            return
        for op, decision in zip(decided.operations, decided.decisions, strict=True):
            if decision.allowed:
                self._count(name, decision.verdict)
                self.overloaded(operation_fields(name, op), decision, revision, outcome, latency_s, code)

    def _account_allowed(
        self, event: ServiceRequest, decided: Decided, answered: bool, started: float, outcome: str
    ) -> None:
        """Latency once per request; the allowed operations counted, and audited (allowed reads
        aggregated per rule, everything else one record per operation)."""
        latency_s = monotonic() - started
        self._histogram.observe(latency_s)
        name = event.name
        aggregate = answered and name in AGGREGATED and self.runtime.audit.aggregates_reads
        by_rule = decided.by_rule
        if by_rule is None or not aggregate:
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

    # ------------------------------------------------------------------------- local services

    def _unsupported(self, event: ServiceRequest) -> None:
        self._fault(event, Status.BAD_SERVICE_UNSUPPORTED)

    def _cancel(self, event: ServiceRequest) -> None:
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

    def _get_endpoints(self, event: ServiceRequest) -> None:
        self._respond(event, ua.GetEndpointsResponse(Endpoints=[self._endpoint()]))

    def _find_servers(self, event: ServiceRequest) -> None:
        self._respond(event, ua.FindServersResponse(Servers=[self._endpoint().Server]))

    def _create_session(self, event: ServiceRequest) -> None:
        if self._session_id is not None:  # one session per secure channel: the identity is the channel's
            self._fault(event, BAD_TOO_MANY_SESSIONS)
            return
        self._session_id = _opaque_node_id(16)
        self._token, self._token_seen = _opaque_node_id(32), None
        requested = event.request.Parameters.RequestedSessionTimeout or 60_000
        result = ua.CreateSessionResult(
            SessionId=self._session_id,
            AuthenticationToken=self._token,
            RevisedSessionTimeout=min(max(requested, MIN_SESSION_TIMEOUT_MS), MAX_SESSION_TIMEOUT_MS),
            ServerNonce=os.urandom(32),
            ServerEndpoints=[self._endpoint()],
            MaxRequestMessageSize=self._codec.max_message_size,
        )
        self._respond(event, ua.CreateSessionResponse(Parameters=result))

    def _activate_session(self, event: ServiceRequest) -> None:
        if self._token is None or event.header.AuthenticationToken != self._token:
            self._fault(event, BAD_SESSION_ID_INVALID)
            return
        token = event.request.Parameters.UserIdentityToken
        if token is not None and not isinstance(token, ua.AnonymousIdentityToken | ua.ExtensionObject):
            # Who the user is, the overlay certificate says; a second identity would only confuse.
            self._fault(event, BAD_IDENTITY_TOKEN_REJECTED)
            return
        self._forwarding.spawn(event, self._activate(event))

    async def _activate(self, event: ServiceRequest) -> None:
        try:
            await self._forwarding.device_session()
        except UpstreamUnavailableError:
            pass  # the session exists here all the same: requests get Bad until the device is back
        self._activated = True
        result = ua.ActivateSessionResult(ServerNonce=os.urandom(32))
        self._respond(event, ua.ActivateSessionResponse(Parameters=result))

    def _close_session(self, event: ServiceRequest) -> None:
        # The device session goes with the client's: its subscriptions are deleted on the device (the
        # client's DeleteSubscriptions = false keeps them for a TransferSubscriptions that no other
        # gateway session could make), and a next session on this channel starts from nothing.
        self._activated = False
        self._token = self._token_seen = None
        self._session_id = None
        self._express = None
        self._memo.clear()
        self._forwarding.end_device_session()
        self._respond(event, ua.CloseSessionResponse())

    def _register_nodes(self, event: ServiceRequest) -> None:
        # No aliases: a registered node is itself, so every later use is decided on the real id.
        nodes = list(event.request.Parameters.NodesToRegister or ())
        self._respond(
            event, ua.RegisterNodesResponse(Parameters=ua.RegisterNodesResult(RegisteredNodeIds=nodes))
        )

    def _unregister_nodes(self, event: ServiceRequest) -> None:
        self._respond(event, ua.UnregisterNodesResponse())

    # ------------------------------------------------------------------------------------ audit

    def code_name(self, code: int) -> str:
        return status_name(code)

    def _last_words(self, code: int, reason: str) -> bytes | None:
        return self._codec.send_error(code, reason) if self._answerable() else None

    def _audit_upstream(self, state: str, reason: str | None) -> None:
        event = self.record("upstream")
        event.update(state=state, reason=reason)
        self.runtime.audit.emit(event)

    def _account(self, event: ServiceRequest, decision: Decision, outcome: str, started: float) -> None:
        """A request decided as a whole: a service without operations."""
        latency_s = monotonic() - started
        self._histogram.observe(latency_s)
        self._count(event.name, decision.verdict)
        self.runtime.audit.emit(
            self.decision_record(
                {"service": event.name}, decision, self.view.policy_revision, outcome, latency_s
            )
        )

    def _aggregate(self, service: str, rule_id: str | None, latency_s: float, count: int) -> None:
        key = (self.id, service, rule_id, self.view.policy_revision)
        fields = self._read_fields.get(key)
        if fields is None:  # one dict per (service, rule, revision): the audit log copies, never mutates
            allowed = Decision(VERDICT_ALLOW, rule_id, 0, ACTION_FORWARD, "")
            fields = self.decision_record({"service": service}, allowed, self.view.policy_revision, "ok")
            self._read_fields[key] = fields
        self.runtime.audit.aggregate_read(key, fields, None, latency_s, count)

    def _audit_operation(
        self,
        event: ServiceRequest,
        op: Operation,
        decision: Decision,
        outcome: str,
        latency_s: float | None,
    ) -> None:
        target = operation_fields(event.name, op)
        self.runtime.audit.emit(
            self.decision_record(target, decision, self.view.policy_revision, outcome, latency_s)
        )

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["in_flight"] = self._forwarding.in_flight
        device = self._forwarding.device
        info["device_session"] = device is not None and device.alive
        return info


# Services the gateway answers itself (the Session and Discovery sets, RegisterNodes without aliases).
# Outside the class body: a compiled (mypyc) class cannot hold a table of its own methods there.
_LOCAL_SERVICES: Final[dict[str, Callable[[OpcUaSession, ServiceRequest], None]]] = {
    "CreateSession": OpcUaSession._create_session,
    "ActivateSession": OpcUaSession._activate_session,
    "CloseSession": OpcUaSession._close_session,
    "GetEndpoints": OpcUaSession._get_endpoints,
    "FindServers": OpcUaSession._find_servers,
    "FindServersOnNetwork": OpcUaSession._unsupported,
    "RegisterNodes": OpcUaSession._register_nodes,
    "UnregisterNodes": OpcUaSession._unregister_nodes,
    "Cancel": OpcUaSession._cancel,
}
