"""``ztgate sim enip`` under malformed input: every request gets a reply within the room its transport
gives it and nothing escapes the router; frames fed a byte at a time; one client sending garbage does
not disturb another."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.lab.sim.enip import EnipSim
from gateway.lab.sim.enip_router import Context
from protocols.enip import (
    EncapsulationMessage,
    EPath,
    LogicalSegment,
    LogicalType,
    MessageRouterRequest,
    ReadTag,
    SymbolicSegment,
    send_rr_data,
)
from protocols.enip.spec import EncapsulationCommand, Service
from tests.lab.test_enip_sim_wire import Wire, read, symbol


def _logical(*pairs: tuple[LogicalType, int]) -> EPath:
    return EPath(tuple(LogicalSegment(kind, value) for kind, value in pairs))


CLASS, INSTANCE, ATTRIBUTE, MEMBER = (
    LogicalType.CLASS_ID,
    LogicalType.INSTANCE_ID,
    LogicalType.ATTRIBUTE_ID,
    LogicalType.MEMBER_ID,
)
PATHS = [
    EPath((SymbolicSegment("Recipe"),)),
    EPath((SymbolicSegment("Recipe"), LogicalSegment(MEMBER, 9))),
    EPath((SymbolicSegment("Zone_Temps"), LogicalSegment(MEMBER, 1), LogicalSegment(MEMBER, 2))),
    EPath((SymbolicSegment("Pump_Run"),)),
    EPath((SymbolicSegment("Batch_ID"),)),
    EPath((SymbolicSegment("Program:Main"), SymbolicSegment("Step"))),
    EPath((SymbolicSegment("Program:Main"), *_logical((CLASS, 0x6B), (INSTANCE, 0)).segments)),
    _logical((CLASS, 0x6B), (INSTANCE, 0)),
    _logical((CLASS, 0x6B), (INSTANCE, 0x010F)),
    _logical((CLASS, 0x01), (INSTANCE, 1)),
    _logical((CLASS, 0x02), (INSTANCE, 1)),
    _logical((CLASS, 0x06), (INSTANCE, 1)),
    _logical((CLASS, 0x6C), (INSTANCE, 0x0100)),
    _logical((CLASS, 0x8B), (INSTANCE, 1)),
    _logical((CLASS, 0xF5), (INSTANCE, 1), (ATTRIBUTE, 6)),
]
SERVICES = [0x01, 0x03, 0x04, 0x05, 0x0A, 0x0E, 0x10, 0x4C, 0x4D, 0x4E, 0x52, 0x53, 0x54, 0x55, 0x5B]
ROOMS = [4, 6, 10, 40, 98, 504, 3998]


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=64))
    byte = st.one_of(st.sampled_from([0x00, 0x01, 0x02, 0x04, 0xC1, 0xC4, 0xCA, 0xFF]), st.integers(0, 255))
    data = bytes(draw(st.lists(byte, max_size=40)))
    return MessageRouterRequest(draw(st.sampled_from(SERVICES)), draw(st.sampled_from(PATHS)), data).encode()


# One simulator for every example: what earlier examples wrote only makes the later ones more varied.
SIM = EnipSim(static=True)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=requests(), room=st.sampled_from(ROOMS), connected=st.booleans())
def test_every_request_gets_a_reply_within_its_room(raw: bytes, room: int, connected: bool) -> None:
    sim = SIM
    reply = sim.router.handle(raw, Context(1, connected, room))
    assert len(reply.encode()) <= room
    assert reply.service & 0x80
    assert len(sim.received) >= 1 and sim.received[-1].general_status == reply.general_status


async def test_frames_fed_a_byte_at_a_time() -> None:
    async with EnipSim(static=True) as sim:
        client = await Wire.open(sim.port)
        try:
            register = EncapsulationMessage(
                EncapsulationCommand.REGISTER_SESSION, 0, 0, b"_wire___", 0, b"\x01\x00\x00\x00"
            )
            for byte in register.encode():
                client.writer.write(bytes((byte,)))
                await client.writer.drain()
            client.session = (await client.receive()).session_handle
            request = EncapsulationMessage(
                EncapsulationCommand.SEND_RR_DATA,
                client.session,
                0,
                b"_wire___",
                0,
                send_rr_data(read(symbol("Mode"))),
            )
            for byte in request.encode():
                client.writer.write(bytes((byte,)))
                await client.writer.drain()
            reply = await client.receive()
            assert reply.status == 0 and reply.data.endswith(b"\xcc\x00\x00\x00\xc2\x00\x02")
        finally:
            await client.close()


async def test_a_client_sending_garbage_does_not_disturb_another() -> None:
    async with EnipSim(static=True) as sim:
        good, bad = await Wire.open(sim.port), await Wire.open(sim.port)
        try:
            await good.register()
            await bad.register()
            connection = await good.connect()
            # Garbage inside well-framed messages is answered; a header beyond the cap closes that client.
            for junk in (b"\x00" * 30, bytes(range(40)), b"\xff" * 16):
                await bad.send(EncapsulationCommand.SEND_RR_DATA, junk)
                assert (await bad.receive()).status == 0x03
                request = (
                    MessageRouterRequest(Service.READ_TAG, EPath(()), ReadTag(1).encode()).encode() + junk
                )
                assert not (await bad.rr(request)).ok
                assert (await good.unit(connection, read(symbol("Counter")))).ok
            bad.writer.write(
                struct.pack("<HHII8sI", 0x6F, 0xFFFF, bad.session, 0, bytes(8), 0) + b"\xee" * 100
            )
            assert (await bad.receive()).status == 0x65
            assert await bad.closed()
            for _ in range(3):
                reply = await good.unit(connection, read(symbol("Setpoint")))
                assert reply.data == b"\xc4\x00" + struct.pack("<i", 1000)
            assert len(sim.server.sessions) == 1
        finally:
            await good.close()
            await bad.close()
