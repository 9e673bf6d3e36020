"""Repeated Reads decoded once (RepeatCache): a hit must give exactly what a full decode gives, with the
new Timestamp and RequestHandle, and the cache stays bounded; nodeid_end against asyncua's encoder."""

from __future__ import annotations

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


def test_a_hit_equals_a_full_decode_with_the_new_handle_and_timestamp() -> None:
    cache = RepeatCache()
    first = read_body(1, T0, NODES)
    service, request, repeat = decode_request_through(first, cache)
    assert service.name == "Read" and cache.hits == 0
    assert repeat is not None and repeat.operations == tuple(READ.operations(request))
    repeat.memo = "the gateway's decisions"

    later = T0 + timedelta(seconds=3, microseconds=250)
    second = read_body(2, later, NODES)
    service, request, again_repeat = decode_request_through(second, cache)
    assert cache.hits == 1 and again_repeat is repeat and repeat.memo == "the gateway's decisions"
    _service, full = decode_request(second)
    assert request == full
    assert request.RequestHeader.RequestHandle == 2
    assert request.RequestHeader.Timestamp == full.RequestHeader.Timestamp
    assert repeat.operations == tuple(READ.operations(full))
    # Each hit has its own header: asyncua rewrites the header of what it sends in place.
    _s, again, _o = decode_request_through(read_body(3, later, NODES), cache)
    assert again.RequestHeader is not request.RequestHeader and again.RequestHeader.RequestHandle == 3


def test_anything_else_that_differs_is_a_miss() -> None:
    cache = RepeatCache()
    decode_request_through(read_body(1, T0, NODES), cache)
    other_nodes = read_body(2, T0, NODES[:3])
    other_token = read_body(3, T0, NODES, token=ua.NodeId(7, 0))
    for body in (other_nodes, other_token):
        _service, request, repeat = decode_request_through(body, cache)
        assert request == decode_request(body)[1]
        assert repeat is not None and repeat.memo is None
        assert len(repeat.operations) == len(request.Parameters.NodesToRead)
    assert cache.hits == 0


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
        _service, _request, repeat = decode_request_through(big, cache)
        assert repeat is None  # decoded in full each time; the session lists them itself
    write = ua.WriteRequest()
    write.Parameters.NodesToWrite = [ua.WriteValue(NodeId=NODES[0])]
    for _ in range(2):
        assert decode_request_through(struct_to_binary(write), cache)[2] is None
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
