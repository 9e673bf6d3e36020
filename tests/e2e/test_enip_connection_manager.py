"""The client's Forward Open at the gateway, byte by byte, through a real mutual-TLS session to a gateway
in front of ``ztgate sim enip``: what a target answers when it cannot grant a connection, and when the
request does not parse. The frames are built with our own codec, since no client library sends broken
ones; pycomm3's fallback on the same refusals is in test_enip.py and test_enip_cpppo.py."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pycomm3 import LogixDriver

from gateway.lab.sim.enip import EnipSim
from gateway.lab.sim.enip_server import Caps
from protocols.enip import (
    EncapsulationConnection,
    EncapsulationMessage,
    EPath,
    LogicalSegment,
    LogicalType,
    MessageRouterRequest,
    MessageRouterResponse,
    parse_send_data,
    register_session_data,
    send_rr_data,
    unconnected_message,
)
from protocols.enip.message_router import parse_response
from protocols.enip.services import ForwardOpen
from protocols.enip.spec import EncapsulationCommand, Service
from tests.e2e.harness import Lab, enip_policy_text

RULES = """
[[rules]]
id = "operators-read"
subjects = ["group:operators"]
assets = ["plc-2"]
enip = [{ preset = "read-only" }]
"""

CONNECTION_MANAGER = EPath(
    (LogicalSegment(LogicalType.CLASS_ID, 0x06), LogicalSegment(LogicalType.INSTANCE_ID, 1))
)
MESSAGE_ROUTER = EPath(
    (LogicalSegment(LogicalType.CLASS_ID, 0x02), LogicalSegment(LogicalType.INSTANCE_ID, 1))
)
TRIAD = (0x1234, 0x0001, 0xCAFE0001)


def forward_open(size: int, *, large: bool, serial: int = TRIAD[0]) -> ForwardOpen:
    flags = 0x4200  # point to point, variable size, low priority
    parameters = (flags << 16 | size) if large else (flags | size)
    return ForwardOpen(
        large, 0x0A, 0x0E, 0, 0x00AB_0001, serial, TRIAD[1], TRIAD[2], 1, 2_000_000, parameters,
        2_000_000, parameters, 0xA3, MESSAGE_ROUTER,
    )  # fmt: skip


class RawClient:
    """An EtherNet/IP session over the overlay that sends whatever message router request it is given."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.codec = EncapsulationConnection()
        self.handle = 0

    async def _next(self) -> EncapsulationMessage:
        async with asyncio.timeout(5):
            while (message := self.codec.next_message()) is None:
                data = await self.reader.read(65536)
                assert data, "the gateway closed the connection"
                self.codec.receive_data(data)
        return message

    async def register(self) -> None:
        self.writer.write(
            EncapsulationMessage(EncapsulationCommand.REGISTER_SESSION, data=register_session_data()).encode()
        )
        self.handle = (await self._next()).session_handle

    async def request(self, service: int, data: bytes) -> MessageRouterResponse:
        body = MessageRouterRequest(service, CONNECTION_MANAGER, data).encode()
        message = EncapsulationMessage(
            EncapsulationCommand.SEND_RR_DATA, self.handle, data=send_rr_data(body)
        )
        self.writer.write(message.encode())
        reply = await self._next()
        return parse_response(unconnected_message(reply, parse_send_data(reply)))


@pytest.fixture
async def client(lab: Lab) -> AsyncIterator[RawClient]:
    async with EnipSim(static=True) as plc:
        await lab.start_gateway(enip_policy_text(plc.port, RULES, asset_extra="connection_size = 500"))
        raw = RawClient(*await lab.raw_connection("alice", "plc-2"))
        await raw.register()
        yield raw


def failure_triad(reply: MessageRouterResponse) -> tuple[int, int, int]:
    serial, vendor, originator, _remaining, _reserved = struct.unpack("<HHIBB", reply.data)
    return serial, vendor, originator


async def test_a_connection_larger_than_the_asset_carries_is_refused_with_the_size_it_can(
    lab: Lab, client: RawClient
) -> None:
    large = await client.request(Service.LARGE_FORWARD_OPEN, forward_open(4000, large=True).encode())
    assert (large.general_status, large.extended_status) == (0x01, (0x0109, 500))
    assert failure_triad(large) == TRIAD
    small = await client.request(Service.FORWARD_OPEN, forward_open(504, large=False).encode())
    assert (small.general_status, small.extended_status) == (0x01, (0x0109, 500))
    # The size it named is granted, in either format.
    fits = await client.request(Service.LARGE_FORWARD_OPEN, forward_open(500, large=True).encode())
    assert fits.general_status == 0 and fits.service == 0x80 | Service.LARGE_FORWARD_OPEN
    outcomes = [e["outcome"] for e in lab.audit_events(event="decision", service="large_forward_open")]
    assert outcomes == [
        "refused by the gateway: connection size 4000 bytes above the 500 the device connection carries",
        "ok",
    ]


@pytest.mark.parametrize(
    ("mangle", "status", "extended", "triad"),
    [
        # The connection path is cut short: the target has not enough data (Vol 1 §3-5.5.2, as OpENer).
        (lambda data: data[:-2], 0x13, (), True),
        # Bytes after the connection path: too much data.
        (lambda data: data + b"\x00\x00", 0x15, (), True),
        # Not even the triad: the reply carries none.
        (lambda data: data[:8], 0x13, (), False),
        # A connection path that cannot be read (a reserved segment type): connection failure 0x0315.
        (lambda data: data[:-4] + b"\xe0\x00\x24\x01", 0x01, (0x0315,), True),
        # Reserved bytes not zero: an invalid parameter value.
        (lambda data: data[:19] + b"\x01" + data[20:], 0x03, (), True),
    ],
    ids=["path-cut-short", "trailing-bytes", "no-triad", "bad-path-segment", "reserved-bytes"],
)
async def test_a_malformed_forward_open_gets_the_status_a_target_gives(
    lab: Lab, client: RawClient, mangle: object, status: int, extended: tuple[int, ...], triad: bool
) -> None:
    assert callable(mangle)
    data = mangle(forward_open(500, large=False).encode())
    reply = await client.request(Service.FORWARD_OPEN, data)
    assert reply.service == 0x80 | Service.FORWARD_OPEN
    assert (reply.general_status, reply.extended_status) == (status, extended)
    assert (failure_triad(reply) == TRIAD) if triad else reply.data == b""
    event = await lab.wait_for_event(event="protocol_error", protocol="enip")
    assert event["side"] == "client" and event["reason"]
    # The session goes on: the well-formed Forward Open after it is granted.
    granted = await client.request(Service.FORWARD_OPEN, forward_open(500, large=False, serial=7).encode())
    assert granted.general_status == 0


async def test_a_device_that_carries_less_sets_the_size_clients_are_granted(lab: Lab) -> None:
    # The asset asks for 511 bytes (the default); this device takes at most 500 and says so (0x0109,
    # 500). The gateway opens its connection at 500, as a client falls back, and grants clients no more.
    async with EnipSim(static=True, caps=Caps(max_connection_size=500)) as plc:
        await lab.start_gateway(enip_policy_text(plc.port, RULES))
        raw = RawClient(*await lab.raw_connection("alice", "plc-2"))
        await raw.register()
        refused = await raw.request(Service.FORWARD_OPEN, forward_open(504, large=False).encode())
        granted = await raw.request(Service.FORWARD_OPEN, forward_open(500, large=False).encode())
        port = await lab.start_agent("alice", "plc-2", "enip")

        def run() -> Any:
            with LogixDriver(f"127.0.0.1:{port}") as driver:
                return driver.read("Recipe{10}").value

        assert await asyncio.wait_for(asyncio.to_thread(run), 60) == [100 * (i + 1) for i in range(10)]
    assert (refused.general_status, refused.extended_status) == (0x01, (0x0109, 500))
    assert granted.general_status == 0
    opens = [r for r in plc.received if r.service == Service.FORWARD_OPEN]
    assert [(r.general_status, r.extended_status) for r in opens] == [(0x01, (0x0109, 500)), (0, ())]
    reads = [r for r in plc.received if r.tag == "Recipe"]
    assert reads and all(r.connected for r in reads)  # on the gateway's connection of 500 bytes
