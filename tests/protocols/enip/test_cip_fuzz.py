"""Fuzzing the CIP codec with the invariant "a request, need-more-data, or CipProtocolError - nothing else".

Inputs: arbitrary bytes; captured frames of pycomm3 and pylogix; generated trees of Multiple Service
Packets and Unconnected Sends around tag and object requests; all with structure-aware damage (header
length, command and options, CPF counts and item lengths, path sizes, packet counts and offsets, Unconnected
Send sizes, single bytes and bits). Everything that comes out must hold up on its own (``check_leaf``), and
feeding the same bytes in any cuts must give the same result. Budgets keep the file at a few seconds.
"""

from __future__ import annotations

import itertools
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.enip import (
    CipProtocolError,
    EncapsulationConnection,
    EncapsulationMessage,
    MessageRouterRequest,
    flatten,
    join_replies,
    parse_request,
    parse_response,
    rebuild,
    refusal,
    send_rr_data,
    send_unit_data,
)
from tests.protocols.enip.cip_samples import captured_frames, check_error, decide_all, frame, nested_requests

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CAPTURED_REQUESTS = [data for _, direction, data in captured_frames() if direction == "request"]
CAPTURED_REPLIES = [data for _, direction, data in captured_frames() if direction == "reply"]
interesting_u16 = st.one_of(
    st.sampled_from((0, 1, 2, 3, 4, 5, 6, 8, 0x7F, 0x80, 0xFF, 0x100, 0x1FF, 0x2000, 0x7FFF, 0xFFFF)),
    st.integers(0, 0xFFFF),
)
interesting_u8 = st.one_of(
    st.sampled_from(
        (0x00, 0x01, 0x02, 0x0A, 0x0E, 0x20, 0x24, 0x28, 0x30, 0x4C, 0x4D, 0x52, 0x80, 0x91, 0xFF)
    ),
    st.integers(0, 0xFF),
)


@st.composite
def damaged(draw: st.DrawFn, data: bytes) -> bytes:
    """One to four edits, biased towards the fields that frame things."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not out:
            break
        op = draw(
            st.sampled_from(("flip", "byte", "u16", "insert", "delete", "truncate", "length", "options"))
        )
        position = draw(st.integers(0, len(out) - 1))
        if op == "flip":
            out[position] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            out[position] = draw(interesting_u8)
        elif op == "u16" and position + 2 <= len(out):
            out[position : position + 2] = struct.pack("<H", draw(interesting_u16))
        elif op == "insert":
            out[position:position] = draw(st.binary(min_size=1, max_size=6))
        elif op == "delete":
            del out[position : position + draw(st.integers(1, 6))]
        elif op == "truncate":
            del out[position:]
        elif op == "length" and len(out) >= 4:
            # Keep the encapsulation length in step with an edit, or break it on purpose.
            fix = draw(st.booleans())
            length = len(out) - 24 if fix else draw(interesting_u16)
            out[2:4] = struct.pack("<H", max(0, length) & 0xFFFF)
        elif op == "options" and len(out) >= 24:
            out[20:24] = struct.pack("<I", draw(st.sampled_from((0, 1, 0x80000000))))
    return bytes(out)


def in_cuts(data: bytes, cuts: list[int]) -> list[object]:
    """What a connection yields for ``data`` fed in ``cuts``: messages and error kinds, in order."""
    connection = EncapsulationConnection()
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    out: list[object] = []
    for start, end in itertools.pairwise(bounds):
        connection.receive_data(data[start:end])
        while True:
            try:
                message = connection.next_message()
            except CipProtocolError as error:
                check_error(error)
                out.append(("error", error.encapsulation_status, error.close))
                if error.close:
                    return out
                continue
            if message is None:
                break
            out.append(message)
    return out


# ---------------------------------------------------------------------------------------- the invariant


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    decide_all(data)
    decide_all(frame(0x6F, data))
    decide_all(frame(0x70, data))


@FUZZ
@given(st.binary(max_size=120))
def test_arbitrary_message_router_data(data: bytes) -> None:
    decide_all(frame(0x6F, send_rr_data(data)))
    decide_all(frame(0x70, send_unit_data(1, 1, data)))
    try:
        parse_response(data)
    except CipProtocolError as error:
        assert error.general_status == 0x22


@FUZZ
@given(st.sampled_from(CAPTURED_REQUESTS).flatmap(damaged))
def test_damaged_captured_requests(data: bytes) -> None:
    decide_all(data)


@FUZZ
@given(
    st.lists(st.sampled_from(CAPTURED_REQUESTS), min_size=1, max_size=4).flatmap(
        lambda f: damaged(b"".join(f))
    )
)
def test_damaged_captured_streams(data: bytes) -> None:
    decide_all(data)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nested_requests(), st.booleans(), st.data())
def test_damaged_nested_packets_and_routes(
    request: MessageRouterRequest, connected: bool, data: st.DataObject
) -> None:
    body = send_unit_data(7, 1, request.encode()) if connected else send_rr_data(request.encode())
    whole = frame(0x70 if connected else 0x6F, body)
    try:
        expected = flatten(request)
    except CipProtocolError:
        expected = None
    if expected is not None:
        assert decide_all(whole) == expected
    decide_all(data.draw(damaged(whole)))


@FUZZ
@given(
    st.sampled_from(CAPTURED_REQUESTS + CAPTURED_REPLIES).flatmap(damaged),
    st.lists(st.integers(0, 400), max_size=12),
)
def test_any_cuts_give_the_same_result(data: bytes, cuts: list[int]) -> None:
    assert in_cuts(data, cuts) == in_cuts(data, [])


# ------------------------------------------------------------------------------ replies from a device


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nested_requests(), st.binary(max_size=80), st.data())
def test_arbitrary_device_replies_join_or_refuse(
    request: MessageRouterRequest, junk: bytes, data: st.DataObject
) -> None:
    try:
        leaves = flatten(request)
    except CipProtocolError:
        return
    local = [data.draw(st.sampled_from((None, refusal(leaf)))) for leaf in leaves]
    if rebuild(request, local) is None:
        return
    try:
        upstream = parse_response(junk)
    except CipProtocolError:
        return
    try:
        reply = join_replies(request, local, upstream)
    except CipProtocolError as error:
        assert error.general_status == 0x22
        return
    assert parse_response(reply.encode()) == reply


# ------------------------------------------------------------------------------------------ round trips


@settings(max_examples=100, deadline=None)
@given(nested_requests())
def test_generated_requests_round_trip_through_every_layer(request: MessageRouterRequest) -> None:
    encoded = request.encode()
    assert parse_request(encoded) == request
    try:
        leaves = flatten(request, max_depth=16)
    except CipProtocolError as error:
        check_error(error)
        return
    assert rebuild(request, [None] * len(leaves), max_depth=16) == request
    for leaf in leaves:
        assert leaf.request is not None and parse_request(leaf.request.encode()) == leaf.request


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from((0x0000, 0x0004, 0x0063, 0x0064, 0x0065, 0x0066, 0x006F, 0x0070)),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.binary(min_size=8, max_size=8),
    st.binary(max_size=64),
)
def test_encapsulation_messages_round_trip(
    command: int, session: int, status: int, context: bytes, data: bytes
) -> None:
    message = EncapsulationMessage(command, session, status, context, 0, data)
    connection = EncapsulationConnection()
    connection.receive_data(message.encode() * 2)
    assert connection.next_message() == message
    assert connection.next_message() == message
    assert connection.next_message() is None
