"""The shortcuts of a polled request, each against the general path it stands in for: the repeat cache
(a request's bytes decoded once), the device's reply relayed as it came when the join proves it is the
client's reply, and the SendRRData / SendUnitData item lists read and framed in one go."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.enip import (
    CipProtocolError,
    EncapsulationConnection,
    EncapsulationMessage,
    MessageRouterRequest,
    MessageRouterResponse,
    RepeatCache,
    Unwrapped,
    connected_body,
    connected_message,
    frame_send_rr_data,
    frame_send_unit_data,
    parse_request,
    parse_response,
    parse_send_data,
    refusal,
    reply_to,
    send_rr_data,
    send_unit_data,
    unconnected_body,
    unconnected_message,
)
from protocols.enip.message_router import response_fits
from tests.protocols.enip.cip_samples import (
    captured_frames,
    device,
    message_of,
    multiple,
    nested_requests,
    read_tag,
    unconnected_send,
    write_tag,
)
from tests.protocols.enip.test_cip_fuzz import damaged

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CAPTURED = [(direction, frame) for _, direction, frame in captured_frames()]
CAPTURED_REPLIES = [
    message_of(frame)
    for direction, frame in CAPTURED
    if direction == "reply" and struct.unpack_from("<H", frame)[0] in (0x6F, 0x70) and len(frame) > 40
]
POLLED = [
    read_tag("Setpoint"),
    multiple(*(read_tag(f"Recipe[{i}]") for i in range(5))),
    unconnected_send(multiple(read_tag("Setpoint"), write_tag("Recipe[1]", 0xC3, "h", 7))),
    write_tag("Setpoint", 0xC4, "i", 1200),
]


def _decoded(body: bytes) -> tuple[str, object]:
    """What the general path makes of ``body``: the leaves and the request to forward, or the error."""
    try:
        unwrapped = Unwrapped(parse_request(body))
    except CipProtocolError as error:
        return "error", (error.general_status, error.service, error.extended_status)
    leaves = [(leaf, None if leaf.error is None else leaf.error.general_status) for leaf in unwrapped.leaves]
    return "request", (leaves, unwrapped.forward_all())


# ------------------------------------------------------------------------------------- the repeat cache


@pytest.mark.parametrize("request_", POLLED, ids=("read", "packet", "routed", "write"))
def test_a_changed_byte_misses_the_cache_and_decodes_as_a_twin_does(request_: MessageRouterRequest) -> None:
    body = request_.encode()
    cache = RepeatCache()
    cache.keep(body, Unwrapped(parse_request(body)))
    for position in range(len(body)):
        for change in (0x01, 0x80, 0xFF):
            changed = bytearray(body)
            changed[position] ^= change
            assert cache.get(bytes(changed)) is None, (position, change)
    # The kept entry answers the same bytes, arriving as another object, as a twin decoding them afresh.
    kept = cache.get(bytes(bytearray(body)))
    assert kept is not None
    assert _decoded(body) == ("request", ([(leaf, None) for leaf in kept.leaves], kept.forward_all()))


@SETTINGS
@given(nested_requests(), st.data())
def test_a_cached_request_serves_each_repeat_as_a_fresh_decode_does(
    request: MessageRouterRequest, data: st.DataObject
) -> None:
    try:
        kept = Unwrapped(request)
    except CipProtocolError:
        return
    for _ in range(3):  # repeats with other decisions and other device replies each time
        twin = Unwrapped(request)
        local = [data.draw(st.sampled_from((None, refusal(leaf)))) for leaf in kept.leaves]
        assert kept.leaves == twin.leaves
        assert kept.forward_all() == twin.forward_all()
        forwarded = kept.rebuild(local)
        assert forwarded == twin.rebuild(local)
        reply = None if forwarded is None else device(forwarded)
        assert kept.join(local, reply) == twin.join_in_full(local, reply)


def test_the_cache_is_bounded() -> None:
    cache = RepeatCache(max_entries=2, max_body_bytes=64)
    bodies = [read_tag(f"Tag{i}").encode() for i in range(3)]
    for body in bodies:
        cache.keep(body, Unwrapped(parse_request(body)))
    assert len(cache) == 2 and cache.get(bodies[0]) is None  # the oldest went
    assert cache.get(bodies[1]) is not None and cache.get(bodies[2]) is not None
    large = read_tag("T" * 70).encode()
    cache.keep(large, Unwrapped(parse_request(large)))
    assert cache.get(large) is None  # decoded each time rather than held


# -------------------------------------------------------------------------- the device's reply as it is


def _replies(request: MessageRouterRequest) -> st.SearchStrategy[MessageRouterResponse]:
    """The stand-in device's reply, a refusal of the whole, or junk that parses as a reply."""
    whole = st.builds(reply_to, st.just(request.service), st.sampled_from((0x01, 0x08, 0x1E)))
    junk = st.binary(max_size=60).map(lambda raw: b"\x8a\x00" + raw)
    return st.one_of(st.just(device(request)), whole, junk.flatmap(_parsed))


def _parsed(raw: bytes) -> st.SearchStrategy[MessageRouterResponse]:
    try:
        return st.just(parse_response(raw))
    except CipProtocolError:
        return st.just(reply_to(0x0A, 0x08))


def _outcome(join: object, *args: object) -> tuple[str, object]:
    try:
        reply = join(*args)  # type: ignore[operator]
    except (CipProtocolError, ValueError) as error:
        return "raises", type(error).__name__
    return "reply", reply.encode()


@SETTINGS
@given(nested_requests(), st.data())
def test_the_device_reply_is_relayed_as_it_is_only_when_the_full_join_gives_its_bytes(
    request: MessageRouterRequest, data: st.DataObject
) -> None:
    try:
        unwrapped = Unwrapped(request)
    except CipProtocolError:
        return
    local = [None] * len(unwrapped.leaves)
    forwarded = unwrapped.rebuild(local)
    if forwarded is None:
        return  # nothing parsed within the caps: nothing goes to the device
    upstream = data.draw(_replies(forwarded))
    shortcut = _outcome(unwrapped.join, local, upstream)
    assert shortcut == _outcome(unwrapped.join_in_full, local, upstream)
    if shortcut[0] == "reply" and unwrapped.join(local, upstream) is upstream:
        assert shortcut == ("reply", upstream.encode())


def test_a_captured_packet_reply_is_relayed_as_it_is() -> None:
    client = parse_request(message_of(CAPTURED[14][1]))
    upstream = parse_response(message_of(CAPTURED[15][1]))
    assert Unwrapped(client).join([None] * 3, upstream) is upstream


# ------------------------------------------------------------------------------ item lists in one go


@SETTINGS
@given(st.binary(max_size=40), st.integers(0, 0xFFFF_FFFF), st.binary(min_size=8, max_size=8), st.data())
def test_frames_in_one_pack_are_the_general_encoding(
    message: bytes, handle: int, context: bytes, data: st.DataObject
) -> None:
    connection_id = data.draw(st.integers(0, 0xFFFF_FFFF))
    sequence = data.draw(st.integers(0, 0xFFFF))
    rr = EncapsulationMessage(0x6F, handle, 0, context, 0, send_rr_data(message)).encode()
    unit = EncapsulationMessage(0x70, handle, 0, context, 0, send_unit_data(connection_id, sequence, message))
    assert frame_send_rr_data(handle, context, message) == rr
    assert frame_send_unit_data(handle, context, connection_id, sequence, message) == unit.encode()


def test_frames_past_the_cap_are_refused_as_by_encode() -> None:
    with pytest.raises(ValueError):
        frame_send_rr_data(1, bytes(8), bytes(65_500))
    with pytest.raises(ValueError):
        frame_send_unit_data(1, bytes(8), 2, 3, bytes(65_500))
    with pytest.raises(ValueError):
        frame_send_rr_data(1, bytes(7), b"")


def _general(message: EncapsulationMessage) -> object:
    """The message router bytes the general parse finds in a SendRRData / SendUnitData, or its error."""
    try:
        send = parse_send_data(message)
        if message.command == 0x6F:
            return unconnected_message(message, send)
        return connected_message(message, send)
    except CipProtocolError as error:
        return error.encapsulation_status


def _messages(frame: bytes) -> list[EncapsulationMessage]:
    connection = EncapsulationConnection()
    connection.receive_data(frame)
    out = []
    while True:
        try:
            message = connection.next_message()
        except CipProtocolError as error:
            if error.close:  # the stream cannot be framed any further
                return out
            continue
        if message is None:
            return out
        out.append(message)


def _check_one_go(frame: bytes) -> int:
    """Every SendRRData / SendUnitData in ``frame``: what the one-unpack readers give, the general parse
    gives too. Returns how many they read."""
    read = 0
    for message in _messages(frame):
        if message.command == 0x6F:
            body = unconnected_body(message.data)
            if body is not None:
                assert _general(message) == body
                read += 1
        elif message.command == 0x70:
            connected = connected_body(message.data)
            if connected is not None:
                assert _general(message) == connected
                read += 1
    return read


def test_captured_item_lists_read_in_one_go() -> None:
    # Every captured exchange (pycomm3, pylogix, cpppo) that carries items lays them out the common way.
    data_frames = [
        frame
        for _, frame in CAPTURED
        if struct.unpack_from("<H", frame)[0] in (0x6F, 0x70)
        and not isinstance(_general(_messages(frame)[0]), int)
    ]
    assert len(data_frames) > 20
    assert sum(_check_one_go(frame) for frame in data_frames) == len(data_frames)


@SETTINGS
@given(st.sampled_from([frame for _, frame in CAPTURED]).flatmap(damaged))
def test_damaged_item_lists_read_in_one_go_as_in_general(frame: bytes) -> None:
    _check_one_go(frame)


@SETTINGS
@given(st.one_of(st.binary(max_size=24), st.sampled_from(CAPTURED_REPLIES).flatmap(damaged)))
def test_a_reply_fits_exactly_when_it_parses(data: bytes) -> None:
    try:
        parse_response(data)
    except CipProtocolError:
        assert not response_fits(data)
    else:
        assert response_fits(data)


# ---------------------------------------------------------------- SendUnitData without a message object

CONNECTED_FRAMES = [frame for _, frame in CAPTURED if struct.unpack_from("<H", frame)[0] == 0x70]


def _stream_both_ways(stream: bytes, cuts: list[int], handle: int) -> tuple[list[object], int]:
    """``stream`` fed in pieces (cut at ``cuts``) to two connections: one reads with next_connected
    first and next_message when it gives nothing, the other with next_message alone and the general
    parse. Returns what the general reader read, each SendUnitData as the fast reader must give it, and
    how many of them the fast reader read in one go; asserts that both read the same."""
    fast, general = EncapsulationConnection(), EncapsulationConnection()
    fast_out: list[object] = []
    general_out: list[object] = []
    one_go = 0

    def drain(connection: EncapsulationConnection, out: list[object], first: bool) -> bool:
        nonlocal one_go
        while True:
            if first:
                connected = connection.next_connected(handle)
                if connected is not None:
                    out.append(("unit data", *connected))
                    one_go += 1
                    continue
            try:
                message = connection.next_message()
            except CipProtocolError as error:
                out.append(("error", str(error), error.close))
                if error.close:
                    return False
                continue
            if message is None:
                return True
            general = _general(message) if message.command == 0x70 else None
            plain = message.session_handle == handle and not message.status and not message.options
            if message.command == 0x70 and plain and isinstance(general, tuple):
                # What next_connected stands in for: the general parse of the same message.
                out.append(("unit data", message.sender_context, *general))
            else:
                out.append(("message", message.command, message.session_handle, message.status, message.data))

    bounds = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    going = [True, True]
    for start, end in itertools.pairwise(bounds):
        piece = stream[start:end]
        if going[0]:
            fast.receive_data(piece)
            going[0] = drain(fast, fast_out, True)
        if going[1]:
            general.receive_data(piece)
            going[1] = drain(general, general_out, False)
    assert fast_out == general_out
    assert fast.buffered_bytes == general.buffered_bytes
    return general_out, one_go


def test_captured_send_unit_data_reads_without_a_message_as_in_general() -> None:
    # Every captured connected exchange (pycomm3, pylogix, cpppo) that carries items takes the shortcut,
    # whole or cut; the few without any (a SendUnitData with no data) go the general way.
    with_items = 0
    for frame in CONNECTED_FRAMES:
        handle = struct.unpack_from("<I", frame, 4)[0]
        expected = 3 if isinstance(_general(_messages(frame)[0]), tuple) else 0
        with_items += bool(expected)
        _, one_go = _stream_both_ways(frame * 3, [], handle)
        assert one_go == expected
        _, one_go = _stream_both_ways(frame * 3, [1, 30, 31, len(frame) + 5], handle)
        assert one_go == expected
    assert with_items > 10


def test_send_unit_data_of_another_session_or_status_takes_the_general_path() -> None:
    frame = CONNECTED_FRAMES[0]
    handle = struct.unpack_from("<I", frame, 4)[0]
    status = frame[:8] + struct.pack("<I", 1) + frame[12:]
    options = frame[:20] + struct.pack("<I", 1) + frame[24:]
    for stream, who in ((frame, handle ^ 1), (status, handle), (options, handle)):
        out, one_go = _stream_both_ways(stream, [], who)
        assert one_go == 0 and len(out) == 1


@SETTINGS
@given(
    st.lists(
        st.sampled_from(CONNECTED_FRAMES).flatmap(damaged) | st.sampled_from(CONNECTED_FRAMES), max_size=4
    ),
    st.lists(st.integers(0, 1000), max_size=4),
    st.booleans(),
)
def test_damaged_send_unit_data_reads_without_a_message_as_in_general(
    frames: list[bytes], cuts: list[int], own_handle: bool
) -> None:
    stream = b"".join(frames)
    handle = struct.unpack_from("<I", CONNECTED_FRAMES[0], 4)[0] if own_handle else 0x5A5A5A5A
    _stream_both_ways(stream, cuts, handle)
