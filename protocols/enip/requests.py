"""The request view a policy decides on, and the way back.

:func:`flatten` unwraps Unconnected Send and Multiple Service Packet (recursively, within caps on depth
and on the number of services) into one flat :class:`CipRequest` per embedded message router request.
The gateway decides each on its own, then:

- :func:`rebuild` makes the request to forward: the same wrappers around only the requests it lets
  through (``None`` when it lets none through);
- :func:`join_replies` merges the device's reply to that rebuilt request with the gateway's own replies
  (refusals, and the error replies of embedded requests that did not parse) into the reply the client
  expects, every embedded reply back at its original place.

Both take the same ``local_replies`` list, parallel to what :func:`flatten` returned: ``None`` where the
request goes to the device, the reply to give where it does not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from protocols.enip.epath import LogicalSegment, LogicalType, PortSegment
from protocols.enip.errors import CipProtocolError, cip_error
from protocols.enip.logix import (
    WRITING_SERVICES,
    AttributeList,
    Opaque,
    Payload,
    ReadModifyWrite,
    ReadTag,
    Value,
    WriteTag,
)
from protocols.enip.logix import parse_payload as parse_logix_payload
from protocols.enip.message_router import (
    MessageRouterRequest,
    MessageRouterResponse,
    parse_request,
    parse_response,
    reply_to,
    response_fits,
)
from protocols.enip.services import (
    ForwardClose,
    ForwardOpen,
    UnconnectedSend,
    join_requests,
    join_responses,
    parse_forward_close,
    parse_forward_open,
    parse_unconnected_send,
    split_multiple_service_packet,
    split_multiple_service_reply,
)
from protocols.enip.spec import (
    DEFAULT_LIMITS,
    FIRST_CLASS_SPECIFIC_SERVICE,
    REPLY_FLAG,
    CipLimits,
    ClassCode,
    GeneralStatus,
    Service,
    service_name,
)

_Status = GeneralStatus
RequestPayload = Payload | ForwardOpen | ForwardClose


@dataclass(frozen=True, slots=True)
class CipRequest:
    """One message router request as the policy sees it, after unwrapping.

    ``class_id`` is 0x6B (Symbol) for a tag addressed by name; ``tag`` is then its text
    (``Program:Main.Recipe[3].Temp``, in the client's case: Logix tag names ignore case) and ``tag_index``
    the array index the path ends on. A tag addressed by symbol instance has ``class_id`` 0x6B, an
    ``instance_id`` and no ``tag``. ``values`` are the written values of atomic types; ``opaque_values`` is
    set when the request writes data the codec cannot read as numbers (structures, strings, attribute
    values, Read-Modify-Write masks). ``route`` gathers the Unconnected Send route(s) the request travels;
    ``depth`` counts the wrappers around it and ``position`` is its index in each (the embedded request of
    an Unconnected Send is index 0).

    ``writes`` marks the services that write a value (Write Tag, Write Tag Fragmented, Read-Modify-Write,
    Set_Attribute_*); the other services that change a device (Reset, Start, Stop, the File object's, a
    Forward Open) are told apart by ``name``.

    ``error`` is set for an embedded request of a Multiple Service Packet that does not parse: it is never
    forwarded, and its reply carries ``error.general_status``.
    """

    service: int
    name: str | None = None
    class_id: int | None = None
    instance_id: int | None = None
    attribute_id: int | None = None
    attribute_ids: tuple[int, ...] = ()
    tag: str | None = None
    tag_index: tuple[int, ...] = ()
    element_count: int | None = None
    element_offset: int | None = None
    byte_offset: int | None = None
    data_type: int | None = None
    structure_handle: int | None = None
    values: tuple[Value, ...] = ()
    opaque_values: bool = False
    writes: bool = False
    route: tuple[PortSegment, ...] = ()
    depth: int = 0
    position: tuple[int, ...] = ()
    request: MessageRouterRequest | None = None
    payload: RequestPayload | None = None
    error: CipProtocolError | None = field(default=None, compare=False)

    @property
    def member_ids(self) -> tuple[int, ...]:
        if self.request is None or self.tag is not None:
            return ()
        return tuple(
            s.value
            for s in self.request.path.segments
            if isinstance(s, LogicalSegment) and s.logical_type == LogicalType.MEMBER_ID
        )


def refusal(
    request: CipRequest,
    general_status: int = GeneralStatus.PRIVILEGE_VIOLATION,
    extended_status: tuple[int, ...] = (),
) -> MessageRouterResponse:
    """The reply the gateway gives in the device's place (privilege violation unless told otherwise)."""
    return reply_to(request.service, general_status, extended_status)


def reply_for_error(error: CipProtocolError, service: int) -> MessageRouterResponse:
    """The reply to a request that raised ``error``: to the service the error names (an embedded
    request's, a wrapper's) or else to ``service``, the request the client sent."""
    status = _Status.INVALID_PARAMETER_VALUE if error.general_status is None else error.general_status
    return reply_to(service if error.service is None else error.service, status, error.extended_status)


def error_reply(request: CipRequest) -> MessageRouterResponse | None:
    """The reply an embedded request that did not parse gets (``None`` for a parsed request)."""
    if request.error is None:
        return None
    return reply_for_error(request.error, request.service)


# ---------------------------------------------------------------------------------------------- tree


@dataclass(slots=True)
class _Leaf:
    index: int


@dataclass(slots=True)
class _Multiple:
    request: MessageRouterRequest
    children: list[_Node]


@dataclass(slots=True)
class _Routed:
    request: MessageRouterRequest
    send: UnconnectedSend
    child: _Node


_Node = _Leaf | _Multiple | _Routed


class _CapExceededError(CipProtocolError):
    """A cap on the whole message: not an error of one embedded request."""


_CONNECTION_MANAGER_PAYLOADS: dict[int, Callable[[bytes, CipLimits], RequestPayload]] = {
    Service.FORWARD_OPEN: lambda data, limits: parse_forward_open(data, large=False, limits=limits),
    Service.LARGE_FORWARD_OPEN: lambda data, limits: parse_forward_open(data, large=True, limits=limits),
    Service.FORWARD_CLOSE: lambda data, limits: parse_forward_close(data, limits=limits),
}


def _is_wrapper(request: MessageRouterRequest, class_id: int, service: int) -> bool:
    if request.service != service or request.path.symbolic or request.path.class_id != class_id:
        return False
    segments = request.path.segments
    # Only the object's one instance, so that no other reading of the path can hide a wrapper.
    if len(segments) != 2 or request.path.instance_id != 1:
        raise cip_error(
            _Status.PATH_DESTINATION_UNKNOWN,
            f"service 0x{service:02X} addressed to {request.path}",
            service=request.service,
        )
    return True


class _Builder:
    def __init__(self, limits: CipLimits) -> None:
        self.limits = limits
        self.leaves: list[CipRequest] = []

    def node(
        self,
        request: MessageRouterRequest,
        depth: int,
        route: tuple[PortSegment, ...],
        position: tuple[int, ...],
    ) -> _Node:
        if _is_wrapper(request, ClassCode.CONNECTION_MANAGER, Service.UNCONNECTED_SEND):
            self._check_depth(request, depth)
            send = parse_unconnected_send(request.data, limits=self.limits)
            child = self.node(send.request, depth + 1, route + send.route.route, (*position, 0))
            return _Routed(request, send, child)
        if _is_wrapper(request, ClassCode.MESSAGE_ROUTER, Service.MULTIPLE_SERVICE_PACKET):
            self._check_depth(request, depth)
            parts = split_multiple_service_packet(request.data, limits=self.limits)
            children = [
                self._embedded(part, depth + 1, route, (*position, i)) for i, part in enumerate(parts)
            ]
            return _Multiple(request, children)
        return self._leaf(_describe(request, self.limits, route, depth, position))

    def _embedded(
        self, raw: bytes, depth: int, route: tuple[PortSegment, ...], position: tuple[int, ...]
    ) -> _Node:
        """An embedded request of a Multiple Service Packet: one that does not parse becomes a leaf with
        an error, so that its siblings still run."""
        try:
            return self.node(parse_request(raw, limits=self.limits), depth, route, position)
        except _CapExceededError:
            raise
        except CipProtocolError as error:
            service = raw[0] & 0x7F
            return self._leaf(CipRequest(service, route=route, depth=depth, position=position, error=error))

    def _leaf(self, request: CipRequest) -> _Leaf:
        if len(self.leaves) == self.limits.max_services:
            raise _CapExceededError(
                f"more than {self.limits.max_services} requests in one message",
                general_status=_Status.RESOURCE_UNAVAILABLE,
                service=Service.MULTIPLE_SERVICE_PACKET,
            )
        self.leaves.append(request)
        return _Leaf(len(self.leaves) - 1)

    def _check_depth(self, request: MessageRouterRequest, depth: int) -> None:
        if depth >= self.limits.max_depth:
            raise cip_error(
                _Status.RESOURCE_UNAVAILABLE,
                f"wrappers nested deeper than {self.limits.max_depth}",
                service=request.service,
            )


def _describe(
    request: MessageRouterRequest,
    limits: CipLimits,
    route: tuple[PortSegment, ...],
    depth: int,
    position: tuple[int, ...],
) -> CipRequest:
    path = request.path
    class_id = ClassCode.SYMBOL.value if path.symbolic else path.class_id
    service = request.service
    payload: RequestPayload
    if class_id == ClassCode.CONNECTION_MANAGER and service in _CONNECTION_MANAGER_PAYLOADS:
        payload = _CONNECTION_MANAGER_PAYLOADS[service](request.data, limits)
    else:
        payload = parse_logix_payload(class_id, service, request.data)
    writes = (class_id, service) in WRITING_SERVICES or (
        service < FIRST_CLASS_SPECIFIC_SERVICE and (None, service) in WRITING_SERVICES
    )
    fields: dict[str, object] = {}
    if isinstance(payload, ReadTag):
        fields = {"element_count": payload.element_count, "byte_offset": payload.byte_offset}
    elif isinstance(payload, WriteTag):
        fields = {
            "element_count": payload.element_count,
            "byte_offset": payload.byte_offset,
            "element_offset": payload.element_offset,
            "data_type": payload.data_type,
            "structure_handle": payload.structure_handle,
            "values": payload.values or (),
            "opaque_values": payload.values is None,
        }
    elif isinstance(payload, ReadModifyWrite):
        fields = {"element_count": 1, "opaque_values": True}
    elif isinstance(payload, AttributeList):
        fields = {"attribute_ids": payload.attribute_ids}
    elif writes:
        fields = {"opaque_values": True}
    if not isinstance(payload, Opaque):
        # What is forwarded is the canonical encoding of what was decided, never the client's bytes.
        canonical = payload.encode()
        if canonical != request.data:
            request = replace(request, data=canonical)
    return CipRequest(
        service,
        name=service_name(class_id, service),
        class_id=class_id,
        instance_id=path.instance_id,
        attribute_id=path.attribute_id,
        tag=path.tag,
        tag_index=path.tag_index,
        writes=writes,
        route=route,
        depth=depth,
        position=position,
        request=request,
        payload=payload,
        **fields,  # type: ignore[arg-type]
    )


def _limits(limits: CipLimits, max_depth: int | None, max_services: int | None) -> CipLimits:
    if max_depth is None and max_services is None:
        return limits
    return replace(
        limits,
        max_depth=limits.max_depth if max_depth is None else max_depth,
        max_services=limits.max_services if max_services is None else max_services,
    )


_LocalReplies = Sequence[MessageRouterResponse | None]


class Unwrapped:
    """A client's message router request unwrapped once: its tree of wrappers, the flat requests a policy
    decides on (``leaves``), and the way back from there. A session keeps one per distinct request it
    sees (see :class:`RepeatCache`), so that a polling client's repeated request is not decoded again."""

    __slots__ = ("_all_parsed", "_forward_all", "leaves", "limits", "request", "tree")

    def __init__(self, request: MessageRouterRequest, limits: CipLimits = DEFAULT_LIMITS) -> None:
        builder = _Builder(limits)
        self.request = request
        self.tree = builder.node(request, 0, (), ())
        self.leaves = builder.leaves
        self.limits = limits
        self._all_parsed = all(leaf.error is None for leaf in self.leaves)
        self._forward_all: bytes | None = None

    def _plan(self, local_replies: _LocalReplies) -> _Plan:
        if len(local_replies) != len(self.leaves):
            raise ValueError(f"{len(local_replies)} local replies for {len(self.leaves)} requests")
        local = [reply or error_reply(leaf) for reply, leaf in zip(local_replies, self.leaves, strict=True)]
        return _Plan(self, local)

    def forward_all(self) -> bytes | None:
        """The encoded request to forward when every leaf goes to the device (``None`` when a leaf did
        not parse and so never goes): what :meth:`rebuild` encodes then, built once."""
        if self._forward_all is None:
            if not self._all_parsed:
                return None
            rebuilt = self.rebuild([None] * len(self.leaves))
            assert rebuilt is not None  # every leaf is forwarded
            self._forward_all = rebuilt.encode()
        return self._forward_all

    def rebuild(self, local_replies: _LocalReplies) -> MessageRouterRequest | None:
        """The request with only the embedded requests whose local reply is ``None`` (and that parsed)."""
        plan = self._plan(local_replies)

        def build(node: _Node) -> MessageRouterRequest | None:
            if isinstance(node, _Leaf):
                return plan.leaves[node.index].request if plan.local[node.index] is None else None
            if isinstance(node, _Routed):
                child = build(node.child)
                if child is None:
                    return None
                send = UnconnectedSend(
                    child, node.send.route, node.send.priority_time_tick, node.send.timeout_ticks
                )
                return MessageRouterRequest(node.request.service, node.request.path, send.encode())
            kept = [built for built in map(build, node.children) if built is not None]
            if not kept:
                return None
            return MessageRouterRequest(node.request.service, node.request.path, join_requests(kept))

        return build(self.tree)

    def join(
        self, local_replies: _LocalReplies, upstream: MessageRouterResponse | None
    ) -> MessageRouterResponse:
        """The reply to the client: see :func:`join_replies`. When the device's reply already is that
        reply, byte for byte, it is returned itself (the caller may then relay the device's bytes)."""
        if (
            upstream is not None
            and self._all_parsed
            and not any(local_replies)
            and self._as_is(self.tree, upstream)
        ):
            return upstream
        return self.join_in_full(local_replies, upstream)

    def join_in_full(
        self, local_replies: _LocalReplies, upstream: MessageRouterResponse | None
    ) -> MessageRouterResponse:
        """:meth:`join` without its shortcut: every reply taken apart and put together again."""
        plan = self._plan(local_replies)

        def join(node: _Node, reply: MessageRouterResponse | None) -> MessageRouterResponse:
            if isinstance(node, _Leaf):
                local = plan.local[node.index]
                if local is not None:
                    return local
                if reply is None:
                    raise ValueError("a forwarded request has no device reply")
                return reply
            if isinstance(node, _Routed):
                return join(node.child, reply)
            forwarded = [child for child in node.children if plan.forwarded(child)]
            device: dict[int, MessageRouterResponse] = {}
            if forwarded:
                if reply is None:
                    raise ValueError("forwarded requests have no device reply")
                if reply.service != node.request.service | REPLY_FLAG:
                    return reply
                device = _device_replies(plan, node, forwarded, reply)
            replies = [join(child, device.get(id(child))) for child in node.children]
            whole = reply if reply is not None and plan.forwarded(node, every=True) else None
            return _multiple_reply(node, replies, whole)

        return join(self.tree, upstream)

    def _as_is(self, node: _Node, reply: MessageRouterResponse) -> bool:
        """The general join of ``reply`` to ``node``, every leaf parsed and forwarded, gives ``reply``
        back with the same bytes. A leaf's reply is the device's own. A Multiple Service Packet's is the
        device's when its service is not the packet's; else it is re-joined from its parts, which encode
        back to the same bytes when the packet was not refused as a whole and each part is a well-formed
        reply (``_split`` holds them contiguous and in order)."""
        if isinstance(node, _Leaf):
            return True
        if isinstance(node, _Routed):
            return self._as_is(node.child, reply)
        if reply.service != node.request.service | REPLY_FLAG:
            return True
        if not reply.data and reply.general_status not in (_Status.SUCCESS, _Status.EMBEDDED_SERVICE_ERROR):
            return False  # refused as a whole: each request gets a reply of its own
        try:
            parts = split_multiple_service_reply(reply.data, limits=self.limits)
        except CipProtocolError:
            return False  # the general join says how it fails
        if len(parts) != len(node.children):
            return False
        for child, part in zip(node.children, parts, strict=True):
            if isinstance(child, _Leaf):
                if not response_fits(part):
                    return False
                continue
            try:
                if not self._as_is(child, parse_response(part)):
                    return False
            except CipProtocolError:
                return False
        return True


# A session's repeat cache (beside the class, not in its body: a compiled class body cannot name its own
# constants in a signature).
REPEATS_MAX_ENTRIES: Final = 32
# A polled Multiple Service Packet of a few dozen tags; a larger request is decoded each time.
REPEATS_MAX_BODY_BYTES: Final = 2048


class RepeatCache:
    """The requests a session has unwrapped, by their bytes. A polling client sends the same message
    router request over and over: what changes between two polls (the encapsulation's sender context,
    the connected sequence count) lies outside these bytes, so the request is decoded once. Only bytes
    equal to a kept request's find it; any other request goes the general way (``parse_request``, then
    :class:`Unwrapped`), and is kept in turn when small enough. Bounded: the oldest entry goes first."""

    __slots__ = ("_entries", "max_body_bytes", "max_entries")

    def __init__(
        self, max_entries: int = REPEATS_MAX_ENTRIES, max_body_bytes: int = REPEATS_MAX_BODY_BYTES
    ) -> None:
        self._entries: dict[bytes, Unwrapped] = {}
        self.max_entries = max_entries
        self.max_body_bytes = max_body_bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, body: bytes) -> Unwrapped | None:
        return self._entries.get(body)

    def takes(self, body: bytes) -> bool:
        """Whether :meth:`keep` keeps a request of these bytes (small enough, and a cache at all)."""
        return len(body) <= self.max_body_bytes and self.max_entries > 0

    def keep(self, body: bytes, unwrapped: Unwrapped) -> None:
        if not self.takes(body):
            return
        entries = self._entries
        if body not in entries and len(entries) >= self.max_entries:
            del entries[next(iter(entries))]
        entries[bytes(body)] = unwrapped

    def clear(self) -> None:
        self._entries.clear()


def flatten(
    request: MessageRouterRequest,
    *,
    max_depth: int | None = None,
    max_services: int | None = None,
    limits: CipLimits = DEFAULT_LIMITS,
) -> list[CipRequest]:
    """Every request inside ``request``, in order. Raises :class:`CipProtocolError` (with the general
    status to answer ``request`` with) when a wrapper is malformed or a cap is exceeded."""
    return Unwrapped(request, _limits(limits, max_depth, max_services)).leaves


# --------------------------------------------------------------------------------------- the way back


class _Plan:
    """A request's tree with the caller's local replies: which leaves go to the device."""

    __slots__ = ("leaves", "limits", "local", "tree")

    def __init__(self, unwrapped: Unwrapped, local: list[MessageRouterResponse | None]) -> None:
        self.tree = unwrapped.tree
        self.leaves = unwrapped.leaves
        self.limits = unwrapped.limits
        self.local = local

    def forwarded(self, node: _Node, *, every: bool = False) -> bool:
        """Some (or ``every``) leaf under ``node`` goes to the device."""
        if isinstance(node, _Leaf):
            return self.local[node.index] is None
        if isinstance(node, _Routed):
            return self.forwarded(node.child, every=every)
        if every:
            return all(self.forwarded(child, every=True) for child in node.children)
        return any(self.forwarded(child) for child in node.children)

    def service(self, node: _Node) -> int:
        return self.leaves[node.index].service if isinstance(node, _Leaf) else node.request.service


def rebuild(
    request: MessageRouterRequest,
    local_replies: _LocalReplies,
    *,
    max_depth: int | None = None,
    max_services: int | None = None,
    limits: CipLimits = DEFAULT_LIMITS,
) -> MessageRouterRequest | None:
    """``request`` with only the embedded requests whose local reply is ``None`` (and that parsed).
    The caps must be those :func:`flatten` was given, so that both see the same requests."""
    return Unwrapped(request, _limits(limits, max_depth, max_services)).rebuild(local_replies)


def join_replies(
    request: MessageRouterRequest,
    local_replies: _LocalReplies,
    upstream: MessageRouterResponse | None,
    *,
    max_depth: int | None = None,
    max_services: int | None = None,
    limits: CipLimits = DEFAULT_LIMITS,
) -> MessageRouterResponse:
    """The reply to the client's ``request``: the device's reply ``upstream`` to :func:`rebuild`'s request
    (``None`` when nothing was forwarded) merged with the local replies, in the client's order.

    A device reply that does not fit what was forwarded raises :class:`CipProtocolError` with general
    status 0x22 (invalid reply received). A Multiple Service Packet the device refused as a whole gives
    each forwarded request that status; a reply of another service in a wrapper's place (an Unconnected
    Send that could not be routed) stands for the whole wrapper. A packet's general status is the device's
    when everything in it was forwarded, else 0x1E (embedded service error) when any reply failed.
    """
    return Unwrapped(request, _limits(limits, max_depth, max_services)).join(local_replies, upstream)


def _device_replies(
    plan: _Plan, node: _Multiple, forwarded: list[_Node], reply: MessageRouterResponse
) -> dict[int, MessageRouterResponse]:
    if not reply.data and reply.general_status not in (_Status.SUCCESS, _Status.EMBEDDED_SERVICE_ERROR):
        # Refused as a whole: every request that went gets the packet's status.
        return {
            id(child): reply_to(plan.service(child), reply.general_status, reply.extended_status)
            for child in forwarded
        }
    parts = split_multiple_service_reply(reply.data, limits=plan.limits)
    if len(parts) != len(forwarded):
        raise cip_error(
            _Status.INVALID_REPLY_RECEIVED,
            f"{len(parts)} replies for {len(forwarded)} forwarded requests",
            service=node.request.service,
        )
    return {id(child): parse_response(part) for child, part in zip(forwarded, parts, strict=True)}


def _multiple_reply(
    node: _Multiple, replies: list[MessageRouterResponse], device: MessageRouterResponse | None
) -> MessageRouterResponse:
    if device is not None:
        status, extended = device.general_status, device.extended_status
    else:
        failed = any(reply.general_status != _Status.SUCCESS for reply in replies)
        status, extended = (_Status.EMBEDDED_SERVICE_ERROR if failed else _Status.SUCCESS), ()
    return reply_to(node.request.service, status, extended, join_responses(replies))


__all__ = [
    "CipRequest",
    "RepeatCache",
    "Unwrapped",
    "error_reply",
    "flatten",
    "join_replies",
    "rebuild",
    "refusal",
    "reply_for_error",
]
