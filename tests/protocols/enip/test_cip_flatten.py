"""The request view and the way back: flatten unwraps Unconnected Send and Multiple Service Packet within
caps; rebuild forwards only what is allowed; join_replies puts the device's replies and the gateway's
refusals back at the client's positions."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.enip import (
    CipLimits,
    CipProtocolError,
    EPath,
    MessageRouterRequest,
    MessageRouterResponse,
    PortSegment,
    flatten,
    join_replies,
    join_responses,
    parse_request,
    parse_response,
    rebuild,
    refusal,
    reply_to,
    split_multiple_service_packet,
    split_multiple_service_reply,
)
from tests.protocols.enip.cip_captures import CAPTURES
from tests.protocols.enip.cip_samples import (
    CONNECTION_MANAGER,
    MESSAGE_ROUTER,
    device,
    message_of,
    multiple,
    nested_requests,
    object_path,
    read_tag,
    tag_path,
    unconnected_send,
    write_tag,
)

DENY = 0x0F


def test_a_plain_request_is_one_leaf() -> None:
    (leaf,) = flatten(write_tag("Program:Main.Recipe[3].Temp", 0xCA, "f", 71.5))
    assert (leaf.name, leaf.class_id, leaf.tag, leaf.tag_index, leaf.element_count) == (
        "write_tag",
        0x6B,
        "Program:Main.Recipe[3].Temp",
        (),
        1,
    )
    assert (leaf.data_type, leaf.values, leaf.writes, leaf.opaque_values) == (0xCA, (71.5,), True, False)
    assert (leaf.depth, leaf.position, leaf.route, leaf.error) == (0, (), (), None)


def test_a_tag_by_symbol_instance_has_no_tag_text() -> None:
    request = MessageRouterRequest(0x4C, object_path(0x6B, 0xE01A), b"\x01\x00")
    (leaf,) = flatten(request)
    assert (leaf.name, leaf.class_id, leaf.instance_id, leaf.tag) == ("read_tag", 0x6B, 0xE01A, None)


def test_object_requests_name_class_instance_attribute() -> None:
    (leaf,) = flatten(MessageRouterRequest(0x10, object_path(0xF5, 1, 5), b"\x01\x02\x03\x04"))
    assert (leaf.name, leaf.class_id, leaf.instance_id, leaf.attribute_id) == (
        "set_attribute_single",
        0xF5,
        1,
        5,
    )
    assert leaf.writes and leaf.opaque_values and leaf.values == ()
    (reset,) = flatten(MessageRouterRequest(0x05, object_path(1, 1)))
    assert (reset.name, reset.writes, reset.attribute_id) == ("reset", False, None)
    (download,) = flatten(MessageRouterRequest(0x4C, object_path(0x37, 1), b"\x00"))
    assert download.name == "initiate_download" and download.tag is None


def test_unconnected_send_around_a_multiple_service_packet() -> None:
    inner = multiple(read_tag("A"), write_tag("B", 0xC3, "h", 7), read_tag("C[2]", 4))
    route = EPath((PortSegment(1, b"\x00"), PortSegment(2, b"10.0.0.9")))
    leaves = flatten(unconnected_send(inner, route))
    assert [(leaf.name, leaf.tag, leaf.depth, leaf.position) for leaf in leaves] == [
        ("read_tag", "A", 2, (0, 0)),
        ("write_tag", "B", 2, (0, 1)),
        ("read_tag", "C[2]", 2, (0, 2)),
    ]
    assert all(leaf.route == route.route for leaf in leaves)
    assert leaves[1].values == (7,) and leaves[2].element_count == 4


def test_caps_on_depth() -> None:
    two_deep = unconnected_send(multiple(read_tag("A")))
    assert len(flatten(two_deep)) == 1
    with pytest.raises(CipProtocolError) as caught:
        flatten(two_deep, max_depth=1)
    # The packet is what goes too deep: the client gets a packet reply (the routed request's own).
    assert (caught.value.general_status, caught.value.service) == (0x02, 0x0A)
    with pytest.raises(CipProtocolError) as caught:
        flatten(two_deep, max_depth=0)
    assert (caught.value.general_status, caught.value.service) == (0x02, 0x52)
    # Past the cap inside a packet: that embedded request is refused, its siblings still run.
    leaves = flatten(multiple(read_tag("A"), multiple(read_tag("B"))), max_depth=1)
    assert leaves[0].error is None and leaves[1].error is not None
    assert leaves[1].error.general_status == 0x02 and leaves[1].service == 0x0A


def test_caps_on_services() -> None:
    packet = multiple(*[read_tag("A")] * 5)
    assert len(flatten(packet, max_services=5)) == 5
    with pytest.raises(CipProtocolError) as caught:
        flatten(packet, max_services=4)
    assert caught.value.general_status == 0x02
    # The cap counts requests in all nested packets together.
    nested = multiple(multiple(read_tag("A"), read_tag("B")), multiple(read_tag("C"), read_tag("D")))
    with pytest.raises(CipProtocolError):
        flatten(nested, max_services=3, max_depth=2)
    assert len(flatten(nested, max_services=4, max_depth=2)) == 4


def test_a_malformed_embedded_request_is_refused_on_its_own() -> None:
    good = read_tag("Temp").encode()
    bad_path = bytes.fromhex("4c02e0000100")  # a reserved segment type
    short_write = write_tag("X", 0xC4, "i", 1).encode()[:-1]  # DINT write one byte short
    data = (
        struct.pack("<4H", 3, 8, 8 + len(good), 8 + len(good) + len(bad_path)) + good + bad_path + short_write
    )
    leaves = flatten(MessageRouterRequest(0x0A, MESSAGE_ROUTER, data))
    assert [leaf.error is None for leaf in leaves] == [True, False, False]
    assert [leaf.error.general_status for leaf in leaves[1:] if leaf.error] == [0x04, 0x13]
    assert [leaf.service for leaf in leaves] == [0x4C, 0x4C, 0x4D]
    # Whatever the caller says, they never reach the device; their reply is their error.
    forwarded = rebuild(MessageRouterRequest(0x0A, MESSAGE_ROUTER, data), [None, None, None])
    assert forwarded == multiple(read_tag("Temp"))
    reply = join_replies(MessageRouterRequest(0x0A, MESSAGE_ROUTER, data), [None] * 3, device(forwarded))
    parts = [parse_response(p) for p in split_multiple_service_reply(reply.data)]
    assert [(p.service, p.general_status) for p in parts] == [(0xCC, 0), (0xCC, 0x04), (0xCD, 0x13)]
    assert reply.general_status == 0x1E


def test_a_malformed_single_request_raises() -> None:
    with pytest.raises(CipProtocolError) as caught:
        flatten(MessageRouterRequest(0x4D, tag_path("X"), b"\xc4\x00\x01\x00\x01"))
    assert (caught.value.general_status, caught.value.service) == (0x13, 0x4D)
    with pytest.raises(CipProtocolError) as caught:
        flatten(unconnected_send(MessageRouterRequest(0x4C, tag_path("X"), b"")))
    assert (caught.value.general_status, caught.value.service) == (0x13, 0x4C)


@pytest.mark.parametrize(
    "request_",
    [
        MessageRouterRequest(0x0A, object_path(2, 2), struct.pack("<HH", 1, 4) + read_tag("A").encode()),
        MessageRouterRequest(0x0A, object_path(2), struct.pack("<HH", 1, 4) + read_tag("A").encode()),
        MessageRouterRequest(0x0A, object_path(2, 1, 1), struct.pack("<HH", 1, 4) + read_tag("A").encode()),
        MessageRouterRequest(0x52, object_path(6, 2), b"\x0a\x05"),
        MessageRouterRequest(0x52, object_path(6), b"\x0a\x05"),
    ],
)
def test_wrappers_only_on_their_one_instance(request_: MessageRouterRequest) -> None:
    # Anything else could be read as a wrapper by the device while the gateway reads a plain request.
    with pytest.raises(CipProtocolError) as caught:
        flatten(request_)
    assert caught.value.general_status == 0x05


def test_the_same_codes_on_other_classes_are_plain_requests() -> None:
    (leaf,) = flatten(MessageRouterRequest(0x52, tag_path("Log"), struct.pack("<HI", 10, 0)))
    assert (leaf.name, leaf.depth) == ("read_tag_fragmented", 0)
    (other,) = flatten(MessageRouterRequest(0x0A, object_path(1, 1), b"\x01\x00\x04\x00\x01\x02"))
    assert (other.name, other.class_id) == ("multiple_service_packet", 1)  # not unwrapped: 0x0A on Identity


# ----------------------------------------------------------------------------------- the way back


def test_one_denied_write_among_allowed_reads() -> None:
    client = multiple(read_tag("A"), write_tag("B", 0xC4, "i", 99), read_tag("C"))
    leaves = flatten(client)
    local = [None if leaf.name == "read_tag" else refusal(leaf) for leaf in leaves]
    forwarded = rebuild(client, local)
    assert forwarded == multiple(read_tag("A"), read_tag("C"))  # the write never goes
    reply = join_replies(client, local, device(forwarded))
    parts = [parse_response(part) for part in split_multiple_service_reply(reply.data)]
    assert [(p.service, p.general_status) for p in parts] == [(0xCC, 0), (0xCD, DENY), (0xCC, 0)]
    assert parts[0].data == b"R" + read_tag("A").encode() and parts[2].data == b"R" + read_tag("C").encode()
    assert (reply.service, reply.general_status) == (0x8A, 0x1E)


def test_everything_denied_forwards_nothing() -> None:
    client = unconnected_send(multiple(write_tag("A", 0xC3, "h", 1), write_tag("B", 0xC3, "h", 2)))
    local = [refusal(leaf) for leaf in flatten(client)]
    assert rebuild(client, local) is None
    reply = join_replies(client, local, None)
    assert (reply.service, reply.general_status) == (0x8A, 0x1E)
    assert [parse_response(p).general_status for p in split_multiple_service_reply(reply.data)] == [
        DENY,
        DENY,
    ]
    single = write_tag("A", 0xC3, "h", 1)
    (leaf,) = flatten(unconnected_send(single))
    assert join_replies(unconnected_send(single), [refusal(leaf)], None) == reply_to(0x4D, DENY)


def test_partial_refusal_inside_an_unconnected_send() -> None:
    client = unconnected_send(multiple(read_tag("A"), write_tag("B", 0xC3, "h", 5)))
    leaves = flatten(client)
    local = [None, refusal(leaves[1], 0x0F, (0x2100,))]
    forwarded = rebuild(client, local)
    assert forwarded == unconnected_send(multiple(read_tag("A")))
    reply = join_replies(client, local, device(forwarded))
    parts = [parse_response(p) for p in split_multiple_service_reply(reply.data)]
    assert parts[1] == MessageRouterResponse(0xCD, DENY, (0x2100,))


def test_a_packet_the_device_refuses_as_a_whole() -> None:
    client = multiple(read_tag("A"), write_tag("B", 0xC3, "h", 5), read_tag("C"))
    local = [None, refusal(flatten(client)[1]), None]
    reply = join_replies(client, local, reply_to(0x0A, 0x08))
    parts = [parse_response(p) for p in split_multiple_service_reply(reply.data)]
    assert [(p.service, p.general_status) for p in parts] == [(0xCC, 0x08), (0xCD, DENY), (0xCC, 0x08)]


def test_a_routing_failure_stands_for_the_whole_unconnected_send() -> None:
    client = unconnected_send(multiple(read_tag("A"), write_tag("B", 0xC3, "h", 5)))
    local = [None, refusal(flatten(client)[1])]
    failure = reply_to(0x52, 0x01, (0x0204,), b"\x00")  # unconnected request timed out
    assert join_replies(client, local, failure) == failure


def test_a_device_reply_that_does_not_fit_is_refused() -> None:
    client = multiple(read_tag("A"), read_tag("B"), read_tag("C"))
    local = [None, refusal(flatten(client)[1]), None]
    wrong = reply_to(0x0A, 0, (), join_responses([reply_to(0x4C, 0)]))  # one reply for two requests
    with pytest.raises(CipProtocolError) as caught:
        join_replies(client, local, wrong)
    assert caught.value.general_status == 0x22
    with pytest.raises(CipProtocolError):
        join_replies(client, local, reply_to(0x0A, 0, (), b"\x02\x00\x06\x00"))
    with pytest.raises(ValueError):
        join_replies(client, local[:2], wrong)
    with pytest.raises(ValueError):
        join_replies(client, local, None)


def test_everything_allowed_gives_the_device_reply_unchanged() -> None:
    # pycomm3's three-tag read and cpppo's reply, from the captures.
    client = parse_request(message_of(bytes.fromhex(CAPTURES["pycomm3_logix"][14][1])))
    upstream = parse_response(message_of(bytes.fromhex(CAPTURES["pycomm3_logix"][15][1])))
    local = [None] * 3
    assert rebuild(client, local) == client
    assert join_replies(client, local, upstream) == upstream
    assert join_replies(client, local, upstream).encode() == upstream.encode()


@settings(max_examples=100, deadline=None)
@given(nested_requests(), st.data())
def test_every_reply_lands_where_its_request_was(client: MessageRouterRequest, data: st.DataObject) -> None:
    leaves = flatten(client, max_depth=8)
    allowed = data.draw(st.lists(st.booleans(), min_size=len(leaves), max_size=len(leaves)))
    local = [
        None if ok else refusal(leaf, DENY, (i,))
        for i, (leaf, ok) in enumerate(zip(leaves, allowed, strict=True))
    ]
    forwarded = rebuild(client, local, limits=_deep())
    if forwarded is None:
        assert not any(allowed)
        reply = join_replies(client, local, None, limits=_deep())
    else:
        assert [leaf.request for leaf in flatten(forwarded, max_depth=8)] == [
            leaf.request for leaf, ok in zip(leaves, allowed, strict=True) if ok
        ]
        reply = join_replies(client, local, device(forwarded), limits=_deep())
    got = _replies_by_position(client, reply)
    for i, (leaf, ok) in enumerate(zip(leaves, allowed, strict=True)):
        expected = device(leaf.request) if ok else reply_to(leaf.service, DENY, (i,))  # type: ignore[arg-type]
        assert got[leaf.position] == expected


def _deep() -> CipLimits:
    return CipLimits(max_depth=8)


def _replies_by_position(
    request: MessageRouterRequest, reply: MessageRouterResponse, position: tuple[int, ...] = ()
) -> dict[tuple[int, ...], MessageRouterResponse]:
    """Walk the client's request and its reply side by side."""
    if request.service == 0x0A and request.path == MESSAGE_ROUTER:
        assert reply.service == 0x8A
        parts = split_multiple_service_packet(request.data)
        replies = split_multiple_service_reply(reply.data)
        assert len(parts) == len(replies)
        out: dict[tuple[int, ...], MessageRouterResponse] = {}
        for i, (part, answer) in enumerate(zip(parts, replies, strict=True)):
            out.update(_replies_by_position(parse_request(part), parse_response(answer), (*position, i)))
        return out
    if request.service == 0x52 and request.path == CONNECTION_MANAGER:
        from protocols.enip import parse_unconnected_send

        return _replies_by_position(parse_unconnected_send(request.data).request, reply, (*position, 0))
    return {position: reply}


def test_reply_for_an_error_answers_the_request_at_fault() -> None:
    from protocols.enip import reply_for_error

    with pytest.raises(CipProtocolError) as caught:
        flatten(unconnected_send(MessageRouterRequest(0x4D, tag_path("X"), b"\xc4\x00\x01\x00")))
    assert reply_for_error(caught.value, 0x52) == reply_to(0x4D, 0x13)
    with pytest.raises(CipProtocolError) as caught:
        parse_request(b"")
    assert reply_for_error(caught.value, 0x4C) == reply_to(0x4C, 0x13)
