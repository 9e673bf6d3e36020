"""Builders, hypothesis strategies and invariants shared by the CIP codec tests."""

from __future__ import annotations

import struct
from collections.abc import Iterator

from hypothesis import strategies as st

from protocols.enip import (
    CipProtocolError,
    CipRequest,
    ConnectedAddressItem,
    ConnectedDataItem,
    DataSegment,
    ElectronicKeySegment,
    EncapsulationConnection,
    EncapsulationMessage,
    EPath,
    ForwardClose,
    ForwardOpen,
    LogicalSegment,
    LogicalType,
    MessageRouterRequest,
    MessageRouterResponse,
    NetworkSegment,
    NullAddressItem,
    PortSegment,
    Segment,
    SockaddrItem,
    SymbolicSegment,
    UnconnectedDataItem,
    UnconnectedSend,
    connected_message,
    flatten,
    join_requests,
    parse_request,
    parse_send_data,
    reply_to,
    unconnected_message,
)
from tests.protocols.enip.cip_captures import CAPTURES

# ------------------------------------------------------------------------------------------- builders

MESSAGE_ROUTER = EPath((LogicalSegment(LogicalType.CLASS_ID, 2), LogicalSegment(LogicalType.INSTANCE_ID, 1)))
CONNECTION_MANAGER = EPath(
    (LogicalSegment(LogicalType.CLASS_ID, 6), LogicalSegment(LogicalType.INSTANCE_ID, 1))
)
BACKPLANE_SLOT_0 = EPath((PortSegment(1, b"\x00"),))


def tag_path(text: str) -> EPath:
    """``A.B[1,2].C`` as symbolic segments and member ids (test helper; no validation)."""
    segments: list[Segment] = []
    for part in text.split("."):
        name, _, index = part.partition("[")
        segments.append(SymbolicSegment(name))
        if index:
            segments += [LogicalSegment(LogicalType.MEMBER_ID, int(i)) for i in index.rstrip("]").split(",")]
    return EPath(tuple(segments))


def object_path(class_id: int, instance: int | None = None, attribute: int | None = None) -> EPath:
    segments: list[Segment] = [LogicalSegment(LogicalType.CLASS_ID, class_id)]
    if instance is not None:
        segments.append(LogicalSegment(LogicalType.INSTANCE_ID, instance))
    if attribute is not None:
        segments.append(LogicalSegment(LogicalType.ATTRIBUTE_ID, attribute))
    return EPath(tuple(segments))


def read_tag(tag: str, count: int = 1) -> MessageRouterRequest:
    return MessageRouterRequest(0x4C, tag_path(tag), struct.pack("<H", count))


def write_tag(tag: str, data_type: int, fmt: str, *values: float) -> MessageRouterRequest:
    data = struct.pack(f"<HH{len(values)}{fmt}", data_type, len(values), *values)
    return MessageRouterRequest(0x4D, tag_path(tag), data)


def multiple(*requests: MessageRouterRequest) -> MessageRouterRequest:
    return MessageRouterRequest(0x0A, MESSAGE_ROUTER, join_requests(requests))


def unconnected_send(request: MessageRouterRequest, route: EPath = BACKPLANE_SLOT_0) -> MessageRouterRequest:
    return MessageRouterRequest(0x52, CONNECTION_MANAGER, UnconnectedSend(request, route).encode())


def frame(command: int, data: bytes = b"", session: int = 0x11223344, context: bytes = b"ctx45678") -> bytes:
    return EncapsulationMessage(command, session, 0, context, 0, data).encode()


# ------------------------------------------------------------------------------------------- captures


def captured_frames(*scenarios: str) -> Iterator[tuple[str, str, bytes]]:
    """(scenario, direction, frame) of the committed captures, in order."""
    for name, frames in CAPTURES.items():
        if scenarios and name not in scenarios:
            continue
        for direction, hex_frame in frames:
            yield name, direction, bytes.fromhex(hex_frame)


def message_of(frame_bytes: bytes) -> bytes:
    """The message router request or reply inside a captured SendRRData / SendUnitData frame."""
    connection = EncapsulationConnection()
    connection.receive_data(frame_bytes)
    message = connection.next_message()
    assert message is not None
    send = parse_send_data(message)
    if message.command == 0x6F:
        return unconnected_message(message, send)
    return connected_message(message, send)[2]


# ------------------------------------------------------------------------------------------ invariants


def decide_all(data: bytes) -> list[CipRequest]:
    """Frame bytes -> every request inside, through the whole client-side pipeline. The only exception
    it may let out is :class:`CipProtocolError`."""
    connection = EncapsulationConnection()
    connection.receive_data(data)
    out: list[CipRequest] = []
    while True:
        try:
            message = connection.next_message()
        except CipProtocolError as error:
            if error.close:
                return out
            continue
        if message is None:
            return out
        if message.command not in (0x6F, 0x70):
            continue
        try:
            send = parse_send_data(message)
            raw = (
                unconnected_message(message, send)
                if message.command == 0x6F
                else connected_message(message, send)[2]
            )
            request = parse_request(raw)
            leaves = flatten(request)
        except CipProtocolError as error:
            check_error(error)
            continue
        for leaf in leaves:
            check_leaf(leaf)
        out += leaves


def check_error(error: CipProtocolError) -> None:
    """An error says how to answer: close, an encapsulation status, a general status, or discard."""
    assert isinstance(error, CipProtocolError)
    if error.general_status is not None:
        assert 0 < error.general_status <= 0xFF
        assert error.service is None or 0 <= error.service < 0x80


def check_leaf(leaf: CipRequest) -> None:
    """What comes out holds up on its own: it re-encodes to what it was parsed from."""
    if leaf.error is not None:
        check_error(leaf.error)
        assert leaf.request is None
        return
    assert leaf.request is not None
    assert parse_request(leaf.request.encode()) == leaf.request
    assert leaf.service == leaf.request.service < 0x80
    if leaf.tag is not None:
        assert leaf.class_id == 0x6B
    if leaf.values:
        assert not leaf.opaque_values and leaf.writes


def device(request: MessageRouterRequest) -> MessageRouterResponse:
    """A stand-in device: answers every request with a reply whose data names the request."""
    if request.service == 0x0A and request.path == MESSAGE_ROUTER:
        from protocols.enip import join_responses, split_multiple_service_packet

        parts = split_multiple_service_packet(request.data)
        return reply_to(0x0A, 0, (), join_responses([device(parse_request(part)) for part in parts]))
    if request.service == 0x52 and request.path == CONNECTION_MANAGER:
        from protocols.enip import parse_unconnected_send

        return device(parse_unconnected_send(request.data).request)
    return reply_to(request.service, 0, (), b"R" + request.encode())


# ------------------------------------------------------------------------------------------ strategies

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
SYMBOL_CHARACTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_:"
symbol_names = st.text(SYMBOL_CHARACTERS, min_size=1, max_size=12)


@st.composite
def logical_segments(draw: st.DrawFn, kinds: tuple[LogicalType, ...] = tuple(LogicalType)) -> LogicalSegment:
    kind = draw(st.sampled_from(kinds))
    sizes = (1, 2) if kind in (LogicalType.CLASS_ID, LogicalType.ATTRIBUTE_ID) else (1, 2, 4)
    size = draw(st.sampled_from(sizes))
    return LogicalSegment(kind, draw(st.integers(0, (1 << (8 * size)) - 1)), size)


@st.composite
def port_segments(draw: st.DrawFn) -> PortSegment:
    port = draw(st.one_of(st.integers(1, 14), st.integers(15, 0xFFFF)))
    link = draw(st.one_of(st.binary(min_size=1, max_size=1), st.binary(min_size=2, max_size=20)))
    return PortSegment(port, link)


segments: st.SearchStrategy[Segment] = st.one_of(
    logical_segments(),
    port_segments(),
    symbol_names.map(SymbolicSegment),
    st.builds(ElectronicKeySegment, u16, u16, u16, st.integers(0, 0x7F), u8, st.booleans()),
    st.builds(NetworkSegment, st.sampled_from((0x41, 0x42, 0x43)), st.binary(min_size=1, max_size=1)),
    st.builds(
        NetworkSegment,
        st.sampled_from((0x50, 0x51, 0x5F)),
        st.binary(max_size=8).map(lambda b: b + b"\0" * (len(b) & 1)),
    ),
    st.binary(max_size=8).map(lambda b: DataSegment(b + b"\0" * (len(b) & 1))),
)
paths = st.lists(segments, max_size=8).map(lambda s: EPath(tuple(s)))


@st.composite
def tag_paths(draw: st.DrawFn) -> EPath:
    out: list[Segment] = [SymbolicSegment(draw(symbol_names))]
    for _ in range(draw(st.integers(0, 4))):
        out.append(
            draw(
                st.one_of(
                    symbol_names.map(SymbolicSegment),
                    logical_segments((LogicalType.MEMBER_ID,)),
                )
            )
        )
    return EPath(tuple(out))


@st.composite
def object_paths(draw: st.DrawFn) -> EPath:
    out: list[Segment] = [draw(logical_segments((LogicalType.CLASS_ID,)))]
    if draw(st.booleans()):
        out.append(draw(logical_segments((LogicalType.INSTANCE_ID,))))
        if draw(st.booleans()):
            out.append(draw(logical_segments((LogicalType.ATTRIBUTE_ID,))))
    return EPath(tuple(out))


@st.composite
def leaf_requests(draw: st.DrawFn) -> MessageRouterRequest:
    """Requests that are not wrappers: tag services with well-formed data, and common services."""
    kind = draw(st.sampled_from(("read", "write", "fragment", "common")))
    if kind == "read":
        return MessageRouterRequest(0x4C, draw(tag_paths()), struct.pack("<H", draw(u16)))
    if kind == "write":
        count = draw(st.integers(1, 4))
        values = draw(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=count, max_size=count))
        data = struct.pack(f"<HH{count}i", 0xC4, count, *values)
        return MessageRouterRequest(0x4D, draw(tag_paths()), data)
    if kind == "fragment":
        return MessageRouterRequest(0x52, draw(tag_paths()), struct.pack("<HI", draw(u16), draw(u32)))
    path = draw(object_paths())
    service = draw(st.sampled_from((0x01, 0x05, 0x0E, 0x10)))
    if path.class_id in (2, 6) and path.instance_id == 1 and len(path.segments) == 2:
        path = object_path(1, 1)
    # Get_Attributes_All and Get_Attribute_Single take no data: their canonical form has none.
    data = b"" if service in (0x01, 0x0E) else draw(st.binary(max_size=6))
    return MessageRouterRequest(service, path, data)


def nested_requests(max_leaves: int = 6) -> st.SearchStrategy[MessageRouterRequest]:
    """Trees of Multiple Service Packets and Unconnected Sends around leaf requests."""

    def extend(children: st.SearchStrategy[MessageRouterRequest]) -> st.SearchStrategy[MessageRouterRequest]:
        packets = st.lists(children, min_size=1, max_size=4).map(lambda r: multiple(*r))
        routed = st.tuples(children, st.lists(port_segments(), max_size=2)).map(
            lambda pair: unconnected_send(pair[0], EPath(tuple(pair[1])))
        )
        return st.one_of(packets, routed)

    return st.recursive(leaf_requests(), extend, max_leaves=max_leaves)


cpf_items = st.one_of(
    st.just(NullAddressItem()),
    st.builds(ConnectedAddressItem, u32),
    st.builds(UnconnectedDataItem, st.binary(max_size=16)),
    st.builds(ConnectedDataItem, u16, st.binary(max_size=16)),
    st.builds(SockaddrItem, st.sampled_from((0x8000, 0x8001)), st.integers(-(2**15), 2**15 - 1), u16, u32),
)


@st.composite
def forward_opens(draw: st.DrawFn) -> ForwardOpen:
    large = draw(st.booleans())
    parameters = u32 if large else u16
    return ForwardOpen(
        large,
        draw(u8),
        draw(u8),
        draw(u32),
        draw(u32),
        draw(u16),
        draw(u16),
        draw(u32),
        draw(u8),
        draw(u32),
        draw(parameters),
        draw(u32),
        draw(parameters),
        draw(u8),
        EPath((PortSegment(1, b"\x00"), *MESSAGE_ROUTER.segments)),
    )


forward_closes = st.builds(ForwardClose, u8, u8, u16, u16, u32, st.just(MESSAGE_ROUTER))
