"""Fuzzing the OPC UA framing, chunk and service layers with the invariant "an event, need-more-data, or an
OpcUaProtocolError - nothing else", fed in random cuts. Budgets keep the file to a few seconds."""

from __future__ import annotations

from collections.abc import Iterator

from asyncua import ua
from asyncua.ua.ua_binary import struct_to_binary
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from protocols.opcua import (
    CloseChannel,
    Event,
    Hello,
    OpcUaProtocolError,
    OpcUaServerConnection,
    OpenChannel,
    RejectedRequest,
    ServiceRequest,
    decode_request,
    encode_message,
)
from protocols.opcua.chunks import MessageAssembler
from protocols.opcua.messages import RequestDecodeError
from tests.protocols.opcua.opcua_canned_server import VALUE_NODES, read_request
from tests.protocols.opcua.opcua_peer import CHANNEL, NOW, Peer, decode_response

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EVENTS = (Hello, OpenChannel, ServiceRequest, RejectedRequest, CloseChannel)

cuts = st.lists(st.integers(1, 400), max_size=30)


def pieces(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    offset = 0
    for size in sizes:
        if offset >= len(data):
            return
        yield data[offset : offset + size]
        offset += size
    if offset < len(data):
        yield data[offset:]


def run(
    conn: OpcUaServerConnection, data: bytes, sizes: list[int]
) -> tuple[list[Event], OpcUaProtocolError | None]:
    """Feed ``data`` in pieces; every outcome must be an event, None, or OpcUaProtocolError."""
    events: list[Event] = []
    try:
        for piece in pieces(data, sizes):
            conn.receive_data(piece)
            while (event := conn.next_event(NOW)) is not None:
                assert isinstance(event, EVENTS), event
                check_event(conn, event)
                events.append(event)
    except OpcUaProtocolError as error:
        assert error.close, error
        assert isinstance(error.status, int) and error.status & 0x80000000
        return events, error
    return events, None


def check_event(conn: OpcUaServerConnection, event: Event) -> None:
    if isinstance(event, RejectedRequest):
        fault = decode_response(event.reply)
        assert isinstance(fault, ua.ServiceFault)
        assert fault.ResponseHeader.ServiceResult.value == event.status
    elif isinstance(event, ServiceRequest):
        assert isinstance(event.request, event.service.request_type)
        # What the gateway will do with it: re-encode it upstream, and answer it.
        try:
            encode_message(event.request)
        except OpcUaProtocolError as error:
            assert not error.close
        reply = conn.send_response(event.request_id, event.service.response_type(), request_handle=1)
        assert reply[:3] == b"MSG"


def session_stream() -> bytes:
    peer = Peer()
    write = ua.WriteRequest()
    write.Parameters.NodesToWrite = [
        ua.WriteValue(NodeId=VALUE_NODES[0], AttributeId=13, Value=ua.DataValue(ua.Variant(1.5)))
    ]
    call = ua.CallRequest()
    call.Parameters.MethodsToCall = [
        ua.CallMethodRequest(
            ObjectId=VALUE_NODES[1], MethodId=VALUE_NODES[2], InputArguments=[ua.Variant("go")]
        )
    ]
    return (
        peer.handshake_bytes()
        + peer.read_bytes(VALUE_NODES, 2)
        + peer.request_bytes(write, 3)
        + peer.request_bytes(call, 4, chunk_size=60)
        + peer.msg_bytes(b"\x01\x00\x0f\x27garbage", 5)
        + peer.open_bytes(renew=True, request_id=6)
        + peer.close_bytes(7)
    )


SESSION = session_stream()


@FUZZ
@given(data=st.binary(max_size=600), sizes=cuts)
def test_random_bytes(data: bytes, sizes: list[int]) -> None:
    run(OpcUaServerConnection(CHANNEL), data, sizes)


@FUZZ
@given(
    prefix=st.sampled_from([b"", b"HEL", b"HELF", b"MSGF", b"OPNF"]), data=st.binary(max_size=300), sizes=cuts
)
def test_random_bytes_after_a_plausible_start(prefix: bytes, data: bytes, sizes: list[int]) -> None:
    run(OpcUaServerConnection(CHANNEL), prefix + data, sizes)


@FUZZ
@given(
    edits=st.lists(
        st.tuples(
            st.integers(0, len(SESSION) - 1),
            st.integers(0, 255),
            st.sampled_from(["set", "insert", "delete"]),
        ),
        min_size=1,
        max_size=4,
    ),
    sizes=cuts,
)
# Found by hypothesis: a Hello whose MaxMessageSize is 1 leaves no room for the ServiceFault of a later
# refused request, which goes out as BadResponseTooLarge; the event must say so too.
@example(edits=[(20, 1, "set")], sizes=[])
def test_damaged_sessions(edits: list[tuple[int, int, str]], sizes: list[int]) -> None:
    data = bytearray(SESSION)
    for wanted, value, kind in edits:
        position = min(wanted, len(data) - 1)
        if kind == "set":
            data[position] = value
        elif kind == "insert":
            data.insert(position, value)
        else:
            del data[position]
    run(OpcUaServerConnection(CHANNEL), bytes(data), sizes)


@FUZZ
@given(cut_at=st.integers(0, len(SESSION)), sizes=cuts)
def test_a_whole_session_in_any_cuts(cut_at: int, sizes: list[int]) -> None:
    events, error = run(OpcUaServerConnection(CHANNEL), SESSION, sizes)
    assert error is None
    assert [type(event).__name__ for event in events] == [
        "Hello",
        "OpenChannel",
        "ServiceRequest",
        "ServiceRequest",
        "ServiceRequest",
        "RejectedRequest",
        "OpenChannel",
        "CloseChannel",
    ]
    # Truncated anywhere: everything before the cut, then need-more-data, never an error.
    truncated, error = run(OpcUaServerConnection(CHANNEL), SESSION[:cut_at], sizes)
    assert error is None
    assert [type(event) for event in truncated] == [type(event) for event in events[: len(truncated)]]


chunk_spec = st.tuples(
    st.sampled_from([b"C", b"F", b"A", b"X"]),
    st.sampled_from([2, 2, 2, 3]),  # request id
    st.integers(0, 120),  # body length
    st.sampled_from(["ok", "ok", "ok", "ok", "token", "sequence", "channel"]),
)


@FUZZ
@given(chunks=st.lists(chunk_spec, max_size=12), sizes=cuts)
def test_chunk_sequences(chunks: list[tuple[bytes, int, int, str]], sizes: list[int]) -> None:
    conn = OpcUaServerConnection(CHANNEL, receive_buffer_size=8192, max_message_size=300, max_chunk_count=4)
    peer = Peer(conn=conn)
    data = peer.handshake_bytes()
    body = struct_to_binary(read_request(VALUE_NODES[:2]))
    for chunk_type, request_id, length, damage in chunks:
        sequence = peer.next_sequence() + (5 if damage == "sequence" else 0)
        data += peer.msg_bytes(
            (body * 3)[:length],
            request_id,
            chunk_type=chunk_type,
            token_id=9 if damage == "token" else None,
            channel_id=CHANNEL + 1 if damage == "channel" else CHANNEL,
            sequence=sequence,
        )
    run(conn, data, sizes)


@FUZZ
@given(parts=st.lists(st.tuples(st.sampled_from([b"C", b"F", b"A"]), st.binary(max_size=40)), max_size=10))
def test_assembler_against_a_model(parts: list[tuple[bytes, bytes]]) -> None:
    assembler = MessageAssembler(max_message_size=100, max_chunk_count=3)
    pending: list[bytes] = []
    for chunk_type, body in parts:
        expected_error = chunk_type != b"A" and (
            len(pending) + 1 > 3 or sum(map(len, pending)) + len(body) > 100
        )
        try:
            result = assembler.add(chunk_type, 1, body)
        except OpcUaProtocolError as error:
            assert expected_error and error.status == ua.StatusCodes.BadRequestTooLarge
            return
        assert not expected_error
        if chunk_type == b"A":
            pending = []
            assert result is None
        elif chunk_type == b"C":
            pending.append(body)
            assert result is None
        else:
            assert result == b"".join([*pending, body])
            pending = []


requests = [
    read_request(VALUE_NODES),
    ua.WriteRequest(),
    ua.BrowseRequest(),
    ua.CreateMonitoredItemsRequest(),
    ua.CreateSessionRequest(),
    ua.ActivateSessionRequest(),
]
BODIES = [struct_to_binary(request) for request in requests]


@FUZZ
@given(
    index=st.integers(0, len(BODIES) - 1),
    edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 400),
)
def test_request_decoding(index: int, edits: list[tuple[int, int]], cut: int) -> None:
    body = bytearray(BODIES[index])
    for position, value in edits:
        if body:
            body[position % len(body)] = value
    body = body[: max(cut, 1)] if cut < len(body) else body
    try:
        service, request = decode_request(bytes(body))
    except RequestDecodeError as error:
        assert not error.close
        return
    assert isinstance(request, service.request_type)
    try:
        encode_message(request)
    except OpcUaProtocolError as error:
        assert not error.close
