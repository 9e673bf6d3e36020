"""Real OPC UA clients (asyncua 2.1 and python-opcua 0.98) against our sans-IO connection, through the
canned test server: full handshakes, reads, chunked requests and responses, channel renewal, limits."""

from __future__ import annotations

import asyncio
import struct
import time

import opcua
import pytest
from asyncua import Client, ua

from protocols.opcua import (
    CloseChannel,
    Hello,
    OpenChannel,
    RejectedRequest,
    ServiceRequest,
    TransportLimits,
)
from tests.protocols.opcua.opcua_canned_server import (
    BIG_NODE,
    SESSION_TOKEN,
    VALUE_NODES,
    CannedServer,
    canned_server,
)


def chunk_sizes(data: bytes) -> list[tuple[bytes, int]]:
    """(IsFinal, size) of every chunk in ``data``."""
    found, offset = [], 0
    while offset < len(data):
        size = struct.unpack_from("<I", data, offset + 4)[0]
        found.append((data[offset + 3 : offset + 4], size))
        offset += size
    return found


async def wait_closed(server: CannedServer) -> None:
    async with asyncio.timeout(5):
        await server.log.closed.wait()


async def test_asyncua_client_handshake_read_and_close() -> None:
    async with canned_server() as server:
        client = Client(server.url, timeout=5)
        await client.connect()
        try:
            values = await client.read_values([client.get_node(node) for node in VALUE_NODES])
            assert values == [100.5 + i for i in range(10)]
        finally:
            await client.disconnect()
        await wait_closed(server)
        log = server.log
    assert log.errors == []
    hello, opened = log.events[0], log.events[1]
    assert isinstance(hello, Hello) and hello.endpoint_url == server.url
    # asyncua asks for 2**31-1 byte buffers and no message limits: the Acknowledge carries ours.
    assert hello.client_limits == TransportLimits(2**31 - 1, 2**31 - 1, 0, 0)
    assert hello.acknowledged == TransportLimits(65536, 65536, 16 * 1024 * 1024, 256)
    assert isinstance(opened, OpenChannel) and not opened.renew
    assert opened.channel_id == 0x5A5A0001 and opened.token_id == 1
    assert opened.requested_lifetime_ms == 3_600_000 == opened.revised_lifetime_ms
    requests = [event for event in log.events if isinstance(event, ServiceRequest)]
    assert [event.name for event in requests][:3] == ["CreateSession", "ActivateSession", "Read"]
    assert requests[-1].name == "CloseSession"
    read = requests[2]
    assert [item.NodeId for item in read.request.Parameters.NodesToRead] == VALUE_NODES
    assert read.header.AuthenticationToken == SESSION_TOKEN
    assert read.request_handle == read.header.RequestHandle > requests[1].request_handle
    assert read.header.TimeoutHint > 0
    assert isinstance(log.events[-1], CloseChannel)


def python_opcua_session(url: str) -> tuple[float, int, list[float]]:
    client = opcua.Client(url, timeout=5)
    client.connect()
    try:
        first = client.get_node(opcua.ua.NodeId(1, 2)).get_value()
        big = client.get_node(opcua.ua.NodeId("big", 2)).get_value()
        many = [client.get_node(opcua.ua.NodeId(i, 2)).get_value() for i in range(1, 11)]
    finally:
        client.disconnect()
    return first, len(big), many


async def test_python_opcua_client_handshake_read_and_close() -> None:
    async with canned_server() as server:
        first, big, many = await asyncio.to_thread(python_opcua_session, server.url)
        await wait_closed(server)
        log = server.log
    assert (first, big, many) == (100.5, 100_000, [100.5 + i for i in range(10)])
    assert log.errors == []
    hello = log.events[0]
    assert isinstance(hello, Hello)
    assert hello.client_limits == TransportLimits(2**31 - 1, 2**31 - 1, 0, 0)
    assert log.services()[:2] == ["CreateSession", "ActivateSession"]
    assert log.services().count("Read") == 12
    assert isinstance(log.events[-1], CloseChannel)
    # The 100,000-character string went out as two chunks within the client's 65,536-byte buffer.
    big_reply = max(log.sent, key=len)
    assert [kind for kind, _size in chunk_sizes(big_reply)] == [b"C", b"F"]
    assert all(size <= 65536 for _kind, size in chunk_sizes(big_reply))


@pytest.mark.parametrize("buffer_size", [8192, 10_000])
async def test_small_buffers_split_responses_and_reassemble_requests(buffer_size: int) -> None:
    many = [ua.NodeId(i, 2) for i in range(1, 11)] * 200  # a 2,000-node Read: about 20 KB of request
    async with canned_server(receive_buffer_size=buffer_size, send_buffer_size=buffer_size) as server:
        client = Client(server.url, timeout=5)
        await client.connect()
        try:
            big = await client.get_node(BIG_NODE).read_value()
            values = await client.read_values([client.get_node(node) for node in many])
        finally:
            await client.disconnect()
        log = server.log
    assert big == "x" * 100_000
    assert values == [100.5 + i for i in range(10)] * 200
    assert log.errors == []
    hello = log.events[0]
    assert isinstance(hello, Hello)
    assert hello.acknowledged.receive_buffer_size == hello.acknowledged.send_buffer_size == buffer_size
    big_reply = max(log.sent, key=len)
    chunks = chunk_sizes(big_reply)
    assert len(chunks) >= 100_000 // buffer_size
    assert all(size <= buffer_size for _kind, size in chunks)
    assert [kind for kind, _size in chunks] == [b"C"] * (len(chunks) - 1) + [b"F"]
    # The client split the 2,000-node request; the connection reassembled one ServiceRequest.
    reads = [event for event in log.events if isinstance(event, ServiceRequest) and event.name == "Read"]
    assert len(reads[-1].request.Parameters.NodesToRead) == 2000


async def test_a_response_beyond_the_clients_max_message_size_is_refused() -> None:
    async with canned_server() as server:
        client = Client(server.url, timeout=5)
        client.max_messagesize = 50_000  # goes into the Hello
        await client.connect()
        try:
            with pytest.raises(ua.UaStatusCodeError) as refused:
                await client.get_node(BIG_NODE).read_value()
            assert refused.value.code == ua.StatusCodes.BadResponseTooLarge
            # The connection carries on.
            assert await client.get_node(VALUE_NODES[3]).read_value() == 103.5
        finally:
            await client.disconnect()
    hello = server.log.events[0]
    assert isinstance(hello, Hello) and hello.client_limits.max_message_size == 50_000
    assert server.log.errors == []


async def test_unsupported_service_gets_a_fault_and_the_session_goes_on() -> None:
    async with canned_server() as server:
        client = Client(server.url, timeout=5)
        await client.connect()
        try:
            with pytest.raises(ua.UaStatusCodeError) as refused:
                await client.get_node(VALUE_NODES[0]).get_children()  # Browse: the canned server has none
            assert refused.value.code == ua.StatusCodes.BadServiceUnsupported
            assert await client.get_node(VALUE_NODES[0]).read_value() == 100.5
        finally:
            await client.disconnect()
    assert "Browse" in server.log.services()
    assert not any(isinstance(event, RejectedRequest) for event in server.log.events)


async def test_asyncua_client_renews_its_channel_and_switches_tokens() -> None:
    lifetimes = {"min_token_lifetime_ms": 600, "max_token_lifetime_ms": 600}
    async with canned_server(**lifetimes) as server:
        client = Client(server.url, timeout=5)
        await client.connect()
        try:
            deadline = time.monotonic() + 5
            while sum(isinstance(e, OpenChannel) and e.renew for e in server.log.events) < 2:
                assert time.monotonic() < deadline, "no renewal within 5 s"
                assert await client.get_node(VALUE_NODES[1]).read_value() == 101.5
                await asyncio.sleep(0.05)
            # Past the first token's lifetime the reads still work: they use the renewed tokens.
            assert await client.get_node(VALUE_NODES[2]).read_value() == 102.5
        finally:
            await client.disconnect()
        log = server.log
    opens = [event for event in log.events if isinstance(event, OpenChannel)]
    assert [event.renew for event in opens[:3]] == [False, True, True]
    assert [event.token_id for event in opens[:3]] == [1, 2, 3]
    assert all(event.revised_lifetime_ms == 600 for event in opens)  # 3,600,000 asked for, 600 granted
    assert log.errors == []


def python_opcua_reads_for(url: str, seconds: float) -> int:
    client = opcua.Client(url, timeout=5)
    client.secure_channel_timeout = 600
    client.connect()
    reads = 0
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            assert client.get_node(opcua.ua.NodeId(2, 2)).get_value() == 101.5
            reads += 1
            time.sleep(0.05)
    finally:
        client.disconnect()
    return reads


async def test_python_opcua_client_renews_its_channel() -> None:
    lifetimes = {"min_token_lifetime_ms": 600, "max_token_lifetime_ms": 600}
    async with canned_server(**lifetimes) as server:
        reads = await asyncio.to_thread(python_opcua_reads_for, server.url, 1.2)
        log = server.log
    assert reads > 5
    assert log.errors == []
    assert [event.renew for event in log.events if isinstance(event, OpenChannel)][:2] == [False, True]


def python_opcua_big_reads(url: str) -> tuple[int, list[float]]:
    client = opcua.Client(url, timeout=5)
    client.connect()
    try:
        big = client.get_node(opcua.ua.NodeId("big", 2)).get_value()
        nodes = [client.get_node(opcua.ua.NodeId(i, 2)) for i in range(1, 11)] * 100
        values = client.get_values(nodes)  # one Read of 1,000 nodes: about 10 KB, two chunks
    finally:
        client.disconnect()
    return len(big), values


async def test_python_opcua_with_small_buffers() -> None:
    async with canned_server(receive_buffer_size=8192, send_buffer_size=8192) as server:
        big, values = await asyncio.to_thread(python_opcua_big_reads, server.url)
        log = server.log
    assert big == 100_000
    assert values == [100.5 + i for i in range(10)] * 100
    assert log.errors == []
    reads = [event for event in log.events if isinstance(event, ServiceRequest) and event.name == "Read"]
    assert len(reads[-1].request.Parameters.NodesToRead) == 1000
    assert all(size <= 8192 for _kind, size in chunk_sizes(max(log.sent, key=len)))
