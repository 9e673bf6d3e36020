"""Repeated Reads decoded once (RepeatCache): a hit gives the first request's object, equal to a full decode
but for the header's Timestamp and RequestHandle, and the new handle; the cache stays bounded; nodeid_end
against asyncua's encoder."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from asyncua import ua
from asyncua.ua.ua_binary import nodeid_to_binary, struct_to_binary

from protocols.opcua.messages import (
    RepeatCache,
    RequestDecodeError,
    decode_request,
    decode_request_through,
    nodeid_end,
)
from protocols.opcua.operations import READ


def read_body(handle: int, when: datetime, nodes: list[ua.NodeId], token: ua.NodeId | None = None) -> bytes:
    request = ua.ReadRequest()
    request.RequestHeader.RequestHandle = handle
    request.RequestHeader.Timestamp = when
    request.RequestHeader.AuthenticationToken = token or ua.NodeId(b"\x01" * 32, 0, ua.NodeIdType.ByteString)
    value = ua.AttributeIds.Value
    request.Parameters.NodesToRead = [ua.ReadValueId(NodeId=n, AttributeId=value) for n in nodes]
    return struct_to_binary(request)


NODES = [ua.NodeId(f"Line1.Tank{i}", 2) for i in range(4)]
T0 = datetime(2026, 11, 26, 7, 0, tzinfo=UTC)


def test_a_hit_is_the_first_request_shared_with_the_new_handle() -> None:
    cache = RepeatCache()
    first = read_body(1, T0, NODES)
    decoded = decode_request_through(first, cache)
    assert decoded.service.name == "Read" and decoded.request_handle == 1 and cache.hits == 0
    repeat = decoded.repeat
    assert repeat is not None and repeat.operations == tuple(READ.operations(decoded.request))

    later = T0 + timedelta(seconds=3, microseconds=250)
    second = read_body(2, later, NODES)
    again = decode_request_through(second, cache)
    assert cache.hits == 1 and again.repeat is repeat
    assert again.request is decoded.request and again.request_handle == 2
    # Everything but the header's Timestamp and RequestHandle is what a full decode of the repeat gives.
    _service, full = decode_request(second)
    assert again.request.Parameters == full.Parameters
    assert (
        dataclasses.replace(again.request.RequestHeader, Timestamp=later, RequestHandle=2)
        == full.RequestHeader
    )
    assert repeat.operations == tuple(READ.operations(full))
    assert decode_request_through(read_body(3, later, NODES), cache).request_handle == 3


def test_anything_else_that_differs_is_a_miss() -> None:
    cache = RepeatCache()
    first_repeat = decode_request_through(read_body(1, T0, NODES), cache).repeat
    other_nodes = read_body(2, T0, NODES[:3])
    other_token = read_body(3, T0, NODES, token=ua.NodeId(7, 0))
    for body in (other_nodes, other_token):
        _service, request, _handle, repeat = decode_request_through(body, cache)
        assert request == decode_request(body)[1]
        assert repeat is not None and repeat is not first_repeat
        assert len(repeat.operations) == len(request.Parameters.NodesToRead)
    assert cache.hits == 0


def test_find_takes_a_repeat_without_parsing_only_where_its_entry_was_cut() -> None:
    cache = RepeatCache()
    first = read_body(1, T0, NODES)
    assert cache.find(first) is None  # nothing cached yet
    decoded = decode_request_through(first, cache)
    assert cache.find(read_body(9, T0 + timedelta(seconds=1), NODES)) == (decoded.repeat, 9)
    assert cache.hits == 1
    assert cache.find(read_body(2, T0, NODES[:3])) is None
    # A body whose type id or token differs in length moves the cut: find() looks where the last entry
    # cached was cut, and takes no entry cut elsewhere even when the key matches. Here a body made of
    # the first one with its 12 header bytes moved in front of the rest of its token.
    short_token = read_body(1, T0, NODES, token=ua.NodeId(7, 0))
    decode_request_through(short_token, cache)
    cut = 4 + 2  # type id, TwoByte token: where the Timestamp of the short-token body starts
    long_cut = 4 + len(nodeid_to_binary(ua.NodeId(b"\x01" * 32, 0, ua.NodeIdType.ByteString)))
    shifted = first[:cut] + first[long_cut : long_cut + 12] + first[cut:long_cut] + first[long_cut + 12 :]
    assert shifted[:cut] + shifted[cut + 12 :] == first[:long_cut] + first[long_cut + 12 :]  # same key
    assert cache.find(shifted) is None
    assert cache.hits == 1
    assert cache.find(read_body(3, T0, NODES, token=ua.NodeId(7, 0))) is not None  # its own layout hits


def test_the_cache_is_bounded_and_skips_large_and_other_requests() -> None:
    cache = RepeatCache()
    for i in range(RepeatCache.MAX_ENTRIES + 10):
        decode_request_through(read_body(i, T0, [ua.NodeId(i, 2)]), cache)
    assert len(cache._entries) == RepeatCache.MAX_ENTRIES
    # The oldest went first: node 0 misses, the newest hits.
    decode_request_through(read_body(1, T0, [ua.NodeId(0, 2)]), cache)
    assert cache.hits == 0
    decode_request_through(read_body(1, T0, [ua.NodeId(RepeatCache.MAX_ENTRIES + 9, 2)]), cache)
    assert cache.hits == 1

    big = read_body(1, T0, [ua.NodeId(f"n{i:04d}" * 8, 2) for i in range(80)])
    assert len(big) > RepeatCache.MAX_BODY_BYTES
    for _ in range(2):
        assert (
            decode_request_through(big, cache).repeat is None
        )  # decoded in full each time; the session lists them itself
    write = ua.WriteRequest()
    write.Parameters.NodesToWrite = [ua.WriteValue(NodeId=NODES[0])]
    for _ in range(2):
        assert decode_request_through(struct_to_binary(write), cache).repeat is None
    assert cache.hits == 1


def test_a_truncated_repeat_is_still_a_decoding_error() -> None:
    cache = RepeatCache()
    body = read_body(1, T0, NODES)
    decode_request_through(body, cache)
    with pytest.raises(RequestDecodeError) as caught:
        decode_request_through(body[:-3], cache)
    assert caught.value.status == ua.StatusCodes.BadDecodingError


@pytest.mark.parametrize(
    "node",
    [
        ua.NodeId(5, 0),  # TwoByte
        ua.NodeId(300, 1),  # FourByte
        ua.NodeId(70_000, 3),  # Numeric
        ua.NodeId("Tank", 2),  # String
        ua.NodeId(b"\x00" * 16, 1, ua.NodeIdType.ByteString),
        ua.NodeId(ua.Guid("72962b91-fa75-4ae6-8d28-b404dc7daf63"), 4),
    ],
)
def test_nodeid_end_agrees_with_asyncua(node: ua.NodeId) -> None:
    encoded = nodeid_to_binary(node)
    assert nodeid_end(b"xy" + encoded + b"tail", 2) == 2 + len(encoded)
    if len(encoded) > 2:
        with pytest.raises(ValueError):
            nodeid_end(encoded[:-1], 0)


def test_nodeid_end_of_a_null_string_and_unknown_encodings() -> None:
    assert nodeid_end(b"\x03\x02\x00\xff\xff\xff\xff", 0) == 7  # String id, length -1: null
    with pytest.raises(ValueError):
        nodeid_end(b"\x07\x00\x00", 0)
