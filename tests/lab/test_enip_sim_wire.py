"""``ztgate sim enip`` byte by byte: requests built with our CIP codec, statuses asserted exactly as a
Logix controller answers them (1756-PM020) and as the CIP and EtherNet/IP specifications define them,
caps on clients, sessions, connections and message size, and the room a connection's size leaves."""

from __future__ import annotations

import asyncio
import itertools
import struct
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest

from gateway.lab.sim.enip import EnipSim
from gateway.lab.sim.enip_server import Caps
from protocols.enip import (
    EncapsulationConnection,
    EncapsulationMessage,
    EPath,
    ForwardClose,
    ForwardOpen,
    IdentityItem,
    LogicalSegment,
    LogicalType,
    MessageRouterRequest,
    MessageRouterResponse,
    PortSegment,
    ReadModifyWrite,
    ReadTag,
    ServiceItem,
    SymbolicSegment,
    UnconnectedSend,
    WriteTag,
    connected_message,
    join_requests,
    parse_cpf,
    parse_forward_open_reply,
    parse_response,
    parse_send_data,
    send_rr_data,
    send_unit_data,
    split_multiple_service_reply,
    unconnected_message,
)
from protocols.enip.services import join_messages
from protocols.enip.spec import ClassCode, DataType, EncapsulationCommand, Service

Cmd = EncapsulationCommand
_serials = itertools.count(1)


def symbol(*parts: str | int) -> EPath:
    """``symbol("Recipe", 3)`` -> the path of Recipe[3]; strings are names, ints array indices."""
    return EPath(
        tuple(
            SymbolicSegment(p) if isinstance(p, str) else LogicalSegment(LogicalType.MEMBER_ID, p)
            for p in parts
        )
    )


def logical(class_id: int, instance: int | None = None, attribute: int | None = None) -> EPath:
    segments = [LogicalSegment(LogicalType.CLASS_ID, class_id)]
    if instance is not None:
        segments.append(LogicalSegment(LogicalType.INSTANCE_ID, instance))
    if attribute is not None:
        segments.append(LogicalSegment(LogicalType.ATTRIBUTE_ID, attribute))
    return EPath(tuple(segments))


def read(path: EPath, count: int = 1) -> bytes:
    return MessageRouterRequest(Service.READ_TAG, path, ReadTag(count).encode()).encode()


def write(path: EPath, data_type: int, fmt: str, values: Sequence[float]) -> bytes:
    data = struct.pack(f"<{len(values)}{fmt}", *values)
    return MessageRouterRequest(
        Service.WRITE_TAG, path, WriteTag(data_type, len(values), data).encode()
    ).encode()


MESSAGE_ROUTER_PATH = EPath((PortSegment(1, b"\x00"), *logical(ClassCode.MESSAGE_ROUTER, 1).segments))


def forward_open(
    size: int = 4000, *, large: bool = True, path: EPath = MESSAGE_ROUTER_PATH, **fields: int
) -> bytes:
    parameters = (0x4200 << 16 | size) if large else (0x4200 | size)
    request = ForwardOpen(
        large,
        0x0A,
        0x05,
        0,
        fields.get("t_o_id", 0x1234_0000 + next(_serials)),
        fields.get("serial", next(_serials)),
        0x1337,
        fields.get("originator", 42),
        3,
        2_000_000,
        parameters,
        2_000_000,
        parameters,
        fields.get("transport", 0xA3),
        path,
    )
    service = Service.LARGE_FORWARD_OPEN if large else Service.FORWARD_OPEN
    return MessageRouterRequest(service, logical(ClassCode.CONNECTION_MANAGER, 1), request.encode()).encode()


@dataclass
class Connected:
    o_t_id: int
    t_o_id: int
    serial: int


class Wire:
    """A hand-driven EtherNet/IP client on the codec."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.codec = EncapsulationConnection()
        self.session = 0
        self.sequence = 0

    @classmethod
    async def open(cls, port: int) -> Wire:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()

    async def send(self, command: int, data: bytes = b"", session: int | None = None) -> None:
        handle = self.session if session is None else session
        self.writer.write(EncapsulationMessage(command, handle, 0, b"_wire___", 0, data).encode())
        await self.writer.drain()

    async def receive(self) -> EncapsulationMessage:
        async with asyncio.timeout(5):
            while (message := self.codec.next_message()) is None:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("closed by the simulator")
                self.codec.receive_data(data)
        return message

    async def closed(self) -> bool:
        async with asyncio.timeout(5):
            return await self.reader.read(65536) == b""

    async def call(self, command: int, data: bytes = b"", session: int | None = None) -> EncapsulationMessage:
        await self.send(command, data, session)
        reply = await self.receive()
        assert reply.command == command and reply.sender_context == b"_wire___"
        return reply

    async def register(self) -> EncapsulationMessage:
        reply = await self.call(Cmd.REGISTER_SESSION, b"\x01\x00\x00\x00")
        self.session = reply.session_handle
        return reply

    async def rr(self, request: bytes) -> MessageRouterResponse:
        reply = await self.call(Cmd.SEND_RR_DATA, send_rr_data(request))
        assert reply.status == 0
        return parse_response(unconnected_message(reply, parse_send_data(reply)))

    async def connect(self, size: int = 4000, *, large: bool = True) -> Connected:
        reply = await self.rr(forward_open(size, large=large))
        assert reply.ok, reply
        opened = parse_forward_open_reply(reply.data)
        return Connected(opened.o_t_connection_id, opened.t_o_connection_id, opened.connection_serial)

    async def unit(
        self, connection: Connected, request: bytes, sequence: int | None = None
    ) -> MessageRouterResponse:
        if sequence is None:
            self.sequence += 1
            sequence = self.sequence
        reply = await self.call(Cmd.SEND_UNIT_DATA, send_unit_data(connection.o_t_id, sequence, request))
        connection_id, echoed, message = connected_message(reply, parse_send_data(reply))
        assert (connection_id, echoed) == (connection.t_o_id, sequence)
        return parse_response(message)


@pytest.fixture
async def sim() -> AsyncIterator[EnipSim]:
    async with EnipSim(static=True) as running:
        yield running


@pytest.fixture
async def wire(sim: EnipSim) -> AsyncIterator[Wire]:
    client = await Wire.open(sim.port)
    await client.register()
    yield client
    await client.close()


def packet(requests: list[bytes]) -> bytes:
    """A Multiple Service Packet of requests given as bytes (malformed ones included)."""
    path = logical(ClassCode.MESSAGE_ROUTER, 1)
    return MessageRouterRequest(Service.MULTIPLE_SERVICE_PACKET, path, join_messages(requests)).encode()


def status(reply: MessageRouterResponse) -> tuple[int, tuple[int, ...]]:
    return reply.general_status, reply.extended_status


# ------------------------------------------------------------------------------------- encapsulation


async def test_list_commands_and_nop(sim: EnipSim) -> None:
    client = await Wire.open(sim.port)
    try:
        # NOP gets no reply: the next reply is ListIdentity's.
        await client.send(Cmd.NOP, b"ignored")
        identity = await client.call(Cmd.LIST_IDENTITY)
        (item,) = parse_cpf(identity.data)
        assert isinstance(item, IdentityItem)
        assert (item.vendor_id, item.device_type, item.product_code) == (1, 0x0E, 55)
        assert (item.revision_major, item.revision_minor, item.serial_number) == (20, 11, 0x5A7E0001)
        assert (item.product_name, item.sin_port, item.sin_addr) == (
            "1756-L71/B ztgate sim",
            sim.port,
            0x7F000001,
        )
        (service,) = parse_cpf((await client.call(Cmd.LIST_SERVICES)).data)
        assert isinstance(service, ServiceItem) and service.name == "Communications"
        assert service.capability_flags & 0x20  # CIP over TCP
        assert parse_cpf((await client.call(Cmd.LIST_INTERFACES)).data) == ()
        assert (await client.call(Cmd.LIST_SERVICES, b"junk")).status == 0x65
    finally:
        await client.close()


async def test_sessions(sim: EnipSim) -> None:
    client = await Wire.open(sim.port)
    # Before RegisterSession, and with a wrong handle after it: invalid session handle.
    assert (await client.call(Cmd.SEND_RR_DATA, send_rr_data(read(symbol("Counter"))))).status == 0x64
    registered = await client.register()
    assert (
        registered.status == 0 and registered.session_handle != 0 and registered.data == b"\x01\x00\x00\x00"
    )
    wrong = await client.call(Cmd.SEND_RR_DATA, send_rr_data(read(symbol("Counter"))), session=1)
    assert wrong.status == 0x64
    assert (await client.call(Cmd.REGISTER_SESSION, b"\x01\x00\x00\x00")).status == 0x01  # one per TCP
    assert (await client.call(Cmd.REGISTER_SESSION, b"\x02\x00\x00\x00", session=0)).status == 0x69
    # An unknown command is answered and the connection carries on; a nonzero options field is dropped.
    await client.send(0x0077)  # our codec refuses to read a reply to it: read the header by hand
    async with asyncio.timeout(5):
        header = await client.reader.readexactly(24)
    assert struct.unpack_from("<HHII", header) == (0x0077, 0, client.session, 0x01)
    client.writer.write(EncapsulationMessage(Cmd.LIST_SERVICES, options=1).encode())
    assert (await client.call(Cmd.LIST_INTERFACES)).status == 0
    # UnRegisterSession has no reply: the controller closes the connection.
    await client.send(Cmd.UNREGISTER_SESSION)
    assert await client.closed()
    await client.close()
    assert not sim.server.sessions


async def test_caps_on_clients_sessions_and_message_size() -> None:
    async with EnipSim(static=True, caps=Caps(max_clients=3, max_sessions=2, max_connections=1)) as sim:
        first, second, third = [await Wire.open(sim.port) for _ in range(3)]
        assert (await first.register()).status == 0
        assert (await second.register()).status == 0
        refused = await third.register()
        assert (refused.status, refused.session_handle) == (0x02, 0)  # insufficient memory
        fourth = await Wire.open(sim.port)
        assert await fourth.closed()  # past the cap on TCP clients
        await first.connect()
        assert status(await second.rr(forward_open())) == (0x01, (0x0113,))  # out of connections
        # A session's connections end with it, and its place is free again.
        await first.send(Cmd.UNREGISTER_SESSION)
        assert await first.closed()
        assert (await third.register()).status == 0
        await third.connect()
        # A header announcing more than the cap (8192 bytes) loses the framing: answered 0x65, closed.
        second.writer.write(
            struct.pack("<HHII8sI", Cmd.SEND_RR_DATA, 9000, second.session, 0, b"_wire___", 0)
        )
        assert (await second.receive()).status == 0x65
        assert await second.closed()
        for client in (first, second, third, fourth):
            await client.close()


# ----------------------------------------------------------------------------- Connection Manager


async def test_forward_open_refusals(wire: Wire) -> None:
    async def refusal(request: bytes) -> tuple[int, tuple[int, ...]]:
        return status(await wire.rr(request))

    assert await refusal(forward_open(4003)) == (0x01, (0x0109, 4002))  # size, and the size supported
    assert await refusal(forward_open(4, large=False)) == (0x01, (0x0109, 511))
    assert await refusal(forward_open(transport=0x81)) == (0x01, (0x0103,))  # class 1 (I/O)
    bad_port = EPath((PortSegment(2, b"\x00"), *MESSAGE_ROUTER_PATH.segments[1:]))
    assert await refusal(forward_open(path=bad_port)) == (0x01, (0x0311,))
    bad_slot = EPath((PortSegment(1, b"\x03"), *MESSAGE_ROUTER_PATH.segments[1:]))
    assert await refusal(forward_open(path=bad_slot)) == (0x01, (0x0312,))
    assert await refusal(forward_open(path=logical(ClassCode.IDENTITY, 1))) == (0x01, (0x0315,))
    opened = await wire.rr(forward_open(serial=77, originator=9))
    assert opened.ok
    assert await refusal(forward_open(serial=77, originator=9)) == (0x01, (0x0100,))  # same triad
    close = ForwardClose(0x0A, 0x05, 78, 0x1337, 9, MESSAGE_ROUTER_PATH).encode()
    request = MessageRouterRequest(Service.FORWARD_CLOSE, logical(ClassCode.CONNECTION_MANAGER, 1), close)
    assert await refusal(request.encode()) == (0x01, (0x0107,))  # no such connection


async def test_connected_messages_echo_sequence_counts_and_do_not_repeat_a_write(
    sim: EnipSim, wire: Wire
) -> None:
    connection = await wire.connect()
    setpoint = symbol("Setpoint")
    assert (await wire.unit(connection, write(setpoint, DataType.DINT, "i", [1111]), sequence=7)).ok
    # The same sequence count again: the previous reply, and the write is not carried out again.
    assert (await wire.unit(connection, write(setpoint, DataType.DINT, "i", [2222]), sequence=7)).ok
    assert sim.tag("Setpoint") == 1111
    assert len(sim.writes("Setpoint")) == 1
    reply = await wire.unit(connection, read(setpoint), sequence=8)
    assert reply.data == b"\xc4\x00" + struct.pack("<i", 1111)
    # Data for a connection that does not exist is dropped without a reply, as a controller drops it.
    await wire.send(Cmd.SEND_UNIT_DATA, send_unit_data(0xDEAD, 1, read(setpoint)))
    assert (await wire.call(Cmd.LIST_SERVICES)).status == 0
    # After Forward Close the connection is gone too.
    close = ForwardClose(0x0A, 0x05, connection.serial, 0x1337, 42, MESSAGE_ROUTER_PATH).encode()
    closed = await wire.rr(
        MessageRouterRequest(Service.FORWARD_CLOSE, logical(ClassCode.CONNECTION_MANAGER, 1), close).encode()
    )
    assert closed.ok and closed.data[:2] == struct.pack("<H", connection.serial)
    await wire.send(Cmd.SEND_UNIT_DATA, send_unit_data(connection.o_t_id, 9, read(setpoint)))
    assert (await wire.call(Cmd.LIST_SERVICES)).status == 0


async def test_replies_stay_within_the_connection_size(sim: EnipSim, wire: Wire) -> None:
    connection = await wire.connect(100, large=False)  # 98 bytes of reply after the sequence count
    trend = symbol("Trend")
    partial = await wire.unit(connection, read(trend, 200))
    assert partial.general_status == 0x06 and len(partial.data) == 2 + 92  # type, then 23 whole REALs
    data = partial.data[2:]
    while len(data) < 800:
        request = ReadTag(200, len(data)).encode()
        reply = await wire.unit(
            connection, MessageRouterRequest(Service.READ_TAG_FRAGMENTED, trend, request).encode()
        )
        assert reply.general_status in (0, 0x06) and reply.data[:2] == b"\xca\x00"
        data += reply.data[2:]
    assert reply.general_status == 0
    assert list(struct.unpack("<200f", data)) == sim.tag("Trend")
    # What cannot be sent in part is refused whole: the TCP/IP object's attributes take 56 bytes.
    small = await wire.connect(40, large=False)
    everything = MessageRouterRequest(Service.GET_ATTRIBUTES_ALL, logical(ClassCode.TCP_IP_INTERFACE, 1))
    assert (await wire.unit(small, everything.encode())).general_status == 0x11
    assert (await wire.unit(connection, everything.encode())).ok
    # A Multiple Service Packet whose replies could not all fit even as errors is refused before it runs.
    many = [write(symbol("Recipe", i), DataType.DINT, "i", [i]) for i in range(5)]
    refused = await wire.unit(small, packet(many))
    assert refused.general_status == 0x11 and sim.writes() == []
    # The embedded replies fill the connection in order: what comes first is answered whole, a read that
    # no longer fits answers with the elements that do and 0x06, as a read alone would.
    reads = await wire.unit(connection, packet([read(symbol("Counter")), read(trend, 200)]))
    assert reads.general_status == 0x1E and len(reads.encode()) <= 98
    counter, part = [parse_response(p) for p in split_multiple_service_reply(reads.data)]
    assert counter.ok and part.general_status == 0x06 and len(part.data) == 2 + 18 * 4


async def test_unconnected_send_routes(wire: Wire) -> None:
    embedded = MessageRouterRequest(Service.READ_TAG, symbol("Setpoint"), ReadTag(1).encode())

    def unconnected_send(route: tuple[PortSegment, ...]) -> bytes:
        send = UnconnectedSend(embedded, EPath(route)).encode()
        return MessageRouterRequest(
            Service.UNCONNECTED_SEND, logical(ClassCode.CONNECTION_MANAGER, 1), send
        ).encode()

    for route in ((), (PortSegment(1, b"\x00"),)):
        reply = await wire.rr(unconnected_send(route))
        assert reply.service == Service.READ_TAG | 0x80 and reply.data == b"\xc4\x00" + struct.pack(
            "<i", 1000
        )
    assert status(await wire.rr(unconnected_send((PortSegment(1, b"\x02"),)))) == (0x01, (0x0312,))
    assert status(await wire.rr(unconnected_send((PortSegment(3, b"\x00"),)))) == (0x01, (0x0311,))
    too_far = (PortSegment(1, b"\x00"), PortSegment(2, b"10.0.0.9"))
    routed_on = await wire.rr(unconnected_send(too_far))  # the controller is the end of every route
    assert status(routed_on) == (0x01, (0x0311,)) and routed_on.data == b"\x05"  # 5 words left


# --------------------------------------------------------------------------------- Logix statuses


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        pytest.param(read(symbol("Nope")), (0x04, ()), id="unknown tag"),
        pytest.param(
            read(EPath((*logical(0x6B, 0xFFF0).segments,))), (0x05, ()), id="unknown symbol instance"
        ),
        pytest.param(read(symbol("Recipe", 10)), (0x05, ()), id="index outside the array"),
        pytest.param(read(symbol("Recipe", 1, 2)), (0x04, ()), id="too many indices"),
        pytest.param(read(symbol("Setpoint", 0)), (0x04, ()), id="index on a scalar"),
        pytest.param(read(symbol("Setpoint", "Member")), (0x04, ()), id="member of an atomic tag"),
        pytest.param(read(symbol("Program:Nope", "Step")), (0x04, ()), id="unknown program"),
        pytest.param(read(symbol("Recipe", 5), 6), (0xFF, (0x2105,)), id="count past the end"),
        pytest.param(read(symbol("Recipe"), 0), (0x03, ()), id="no elements"),
        pytest.param(
            MessageRouterRequest(Service.READ_TAG, symbol("Recipe"), b"\x01").encode(),
            (0x13, ()),
            id="short read",
        ),
        pytest.param(
            write(symbol("Setpoint"), DataType.REAL, "f", [1.5]), (0xFF, (0x2107,)), id="type mismatch"
        ),
        pytest.param(
            write(symbol("Recipe", 8), DataType.DINT, "i", [1, 2, 3]), (0xFF, (0x2105,)), id="write past"
        ),
        pytest.param(
            MessageRouterRequest(
                Service.WRITE_TAG, symbol("Recipe"), struct.pack("<HHi", DataType.DINT, 2, 5)
            ).encode(),
            (0x13, ()),
            id="write short of its count",
        ),
        pytest.param(
            MessageRouterRequest(
                Service.READ_TAG_FRAGMENTED, symbol("Recipe"), ReadTag(10, 40).encode()
            ).encode(),
            (0xFF, (0x2104,)),
            id="fragment offset past the end",
        ),
        pytest.param(
            MessageRouterRequest(
                Service.WRITE_TAG_FRAGMENTED,
                symbol("Recipe"),
                WriteTag(DataType.DINT, 2, bytes(12), byte_offset=0).encode(),
            ).encode(),
            (0xFF, (0x2105,)),
            id="fragment past its count",
        ),
        pytest.param(
            MessageRouterRequest(
                Service.READ_MODIFY_WRITE_TAG,
                symbol("Line1_Speed"),
                ReadModifyWrite(4, 1, 0xFFFFFFFF).encode(),
            ).encode(),
            (0x03, ()),
            id="masks larger than the tag",
        ),
        pytest.param(
            MessageRouterRequest(
                Service.READ_MODIFY_WRITE_TAG, symbol("Counter"), b"\x03\x00" + bytes(6)
            ).encode(),
            (0x03, ()),
            id="mask size Logix does not take",
        ),
        pytest.param(
            MessageRouterRequest(0x4F, symbol("Counter")).encode(), (0x08, ()), id="tag service unknown"
        ),
        pytest.param(
            MessageRouterRequest(Service.GET_ATTRIBUTE_SINGLE, logical(0x99, 1, 1)).encode(),
            (0x05, ()),
            id="unknown class",
        ),
        pytest.param(
            MessageRouterRequest(Service.GET_ATTRIBUTE_SINGLE, logical(ClassCode.IDENTITY, 2, 1)).encode(),
            (0x05, ()),
            id="unknown instance",
        ),
        pytest.param(
            MessageRouterRequest(Service.GET_ATTRIBUTE_SINGLE, logical(ClassCode.IDENTITY, 1, 99)).encode(),
            (0x14, ()),
            id="unknown attribute",
        ),
        pytest.param(
            MessageRouterRequest(
                Service.SET_ATTRIBUTE_SINGLE, logical(ClassCode.IDENTITY, 1, 7), b"\x01A"
            ).encode(),
            (0x0E, ()),
            id="attribute not settable",
        ),
        pytest.param(
            MessageRouterRequest(Service.STOP, logical(ClassCode.IDENTITY, 1)).encode(), (0x08, ()), id="stop"
        ),
        pytest.param(
            MessageRouterRequest(
                Service.GET_ATTRIBUTE_LIST, logical(ClassCode.TEMPLATE, 0x100), b"\x01\x00\x01\x00"
            ).encode(),
            (0x05, ()),
            id="no structure templates",
        ),
        pytest.param(b"\x4c\x09\x91\x02", (0x26, ()), id="path size past the data"),
    ],
)
async def test_logix_statuses(
    wire: Wire, request_bytes: bytes, expected: tuple[int, tuple[int, ...]]
) -> None:
    connection = await wire.connect()
    assert status(await wire.unit(connection, request_bytes)) == expected
    assert status(await wire.rr(request_bytes)) == expected


async def test_multiple_service_packet_answers_each_service(sim: EnipSim, wire: Wire) -> None:
    connection = await wire.connect()
    requests = [
        read(symbol("Setpoint")),
        write(symbol("Recipe", 0), DataType.DINT, "i", [-1]),
        read(symbol("Nope")),
        write(symbol("Setpoint"), DataType.INT, "h", [5]),
        MessageRouterRequest(Service.GET_ATTRIBUTE_SINGLE, logical(ClassCode.IDENTITY, 1, 1)).encode(),
        b"\x4c\x09",  # a path size past the data: its own error, the others still run
    ]
    reply = await wire.unit(connection, packet(requests))
    assert reply.general_status == 0x1E
    replies = [parse_response(part) for part in split_multiple_service_reply(reply.data)]
    assert [(r.service, r.general_status, r.extended_status) for r in replies] == [
        (0xCC, 0, ()),
        (0xCD, 0, ()),
        (0xCC, 0x04, ()),
        (0xCD, 0xFF, (0x2107,)),
        (0x8E, 0, ()),
        (0xCC, 0x26, ()),
    ]
    assert replies[0].data == b"\xc4\x00" + struct.pack("<i", 1000) and replies[4].data == b"\x01\x00"
    assert sim.tag("Recipe[0]") == -1 and sim.tag("Setpoint") == 1000
    logged = [(r.name, r.tag, r.general_status) for r in sim.received[-7:]]
    assert logged[-1] == ("multiple_service_packet", None, 0x1E)
    assert ("write_tag", "Setpoint", 0xFF) in logged


async def test_read_modify_write_and_extra_bytes(sim: EnipSim, wire: Wire) -> None:
    connection = await wire.connect()
    sim.set_tag("Alarms", 0b1010)
    rmw = ReadModifyWrite(4, 0b0001, ~0b1000 & 0xFFFFFFFF).encode()
    assert (await wire.unit(connection, MessageRouterRequest(0x4E, symbol("Alarms"), rmw).encode())).ok
    assert sim.tag("Alarms") == 0b0011
    # Bytes after the fields a tag service defines are ignored, as a controller ignores them.
    padded = write(symbol("Setpoint"), DataType.DINT, "i", [777]) + b"\x01\x00junk"
    assert (await wire.unit(connection, padded)).ok and sim.tag("Setpoint") == 777
    assert sim.writes("setpoint")[-1].ignored_bytes == 6
    # A BOOL keeps one bit, whatever nonzero byte carried it.
    assert (await wire.unit(connection, write(symbol("Pump_Run"), DataType.BOOL, "B", [0xFF]))).ok
    assert (await wire.unit(connection, read(symbol("Pump_Run")))).data == b"\xc1\x00\x01"


async def test_tag_list_pages_and_program_scope(sim: EnipSim, wire: Wire) -> None:
    connection = await wire.connect(120, large=False)
    attributes = b"\x03\x00\x01\x00\x02\x00\x08\x00"  # name, type, dimensions (what pylogix asks)

    async def listing(prefix: tuple[SymbolicSegment, ...]) -> dict[str, tuple[int, int, tuple[int, ...]]]:
        found: dict[str, tuple[int, int, tuple[int, ...]]] = {}
        start, pages = 0, 0
        while True:
            path = EPath((*prefix, *logical(ClassCode.SYMBOL, start).segments))
            request = MessageRouterRequest(Service.GET_INSTANCE_ATTRIBUTE_LIST, path, attributes)
            reply = await wire.unit(connection, request.encode())
            assert reply.general_status in (0, 0x06)
            data, offset, pages = reply.data, 0, pages + 1
            while offset < len(data):
                instance, length = struct.unpack_from("<IH", data, offset)
                name = data[offset + 6 : offset + 6 + length].decode()
                kind, *dims = struct.unpack_from("<H3I", data, offset + 6 + length)
                found[name] = (instance, kind, tuple(dims))
                offset += 6 + length + 14
            if reply.general_status == 0:
                assert pages > 1  # 98 bytes of reply: the list takes several
                return found
            start = instance + 1

    controller = await listing(())
    assert controller["Recipe"][1:] == (0x20C4, (10, 0, 0))
    assert controller["Zone_Temps"][1:] == (0x40CA, (2, 3, 0))
    assert controller["Setpoint"][1:] == (0xC4, (0, 0, 0))
    assert controller["Program:Main"][1] == 0x1068 and controller["Task:MainTask"][1] == 0x1070
    assert len(controller) == 25 + 2
    program = await listing((SymbolicSegment("Program:Main"),))
    assert set(program) == {"Routine:MainRoutine", "Step", "Fill_Count", "Enable"}
    # A program's tag by its symbol instance, in that program's scope.
    step = EPath((SymbolicSegment("Program:Main"), *logical(ClassCode.SYMBOL, program["Step"][0]).segments))
    assert (await wire.unit(connection, read(step))).data == b"\xc4\x00" + struct.pack("<i", 10)
    assert sim.received[-1].tag == "Program:Main.Step"
    unknown = MessageRouterRequest(
        Service.GET_INSTANCE_ATTRIBUTE_LIST, logical(ClassCode.SYMBOL, 0), b"\x01\x00\x09\x00"
    )
    assert (await wire.unit(connection, unknown.encode())).general_status == 0x14


async def test_wall_clock_and_reset(sim: EnipSim, wire: Wire) -> None:
    clock = logical(ClassCode.WALL_CLOCK_TIME, 1)
    target = 1_900_000_000_000_000
    set_time = MessageRouterRequest(Service.SET_ATTRIBUTE_LIST, clock, struct.pack("<HHQ", 1, 6, target))
    assert (await wire.rr(set_time.encode())).ok
    get_time = MessageRouterRequest(Service.GET_ATTRIBUTE_LIST, clock, struct.pack("<HHH", 2, 6, 99))
    reply = await wire.rr(get_time.encode())
    assert reply.general_status == 0x0A  # attribute 99 failed; 6 did not
    count, attribute, attribute_status, now = struct.unpack_from("<HHHQ", reply.data)
    assert (count, attribute, attribute_status) == (2, 6, 0) and target <= now < target + 60_000_000
    assert reply.data[14:] == struct.pack("<HH", 99, 0x14)
    reset = MessageRouterRequest(Service.RESET, logical(ClassCode.IDENTITY, 1), b"\x00")
    assert (await wire.rr(reset.encode())).ok
    assert status(await wire.rr(MessageRouterRequest(5, logical(1, 1), b"\x07").encode())) == (0x20, ())
    assert sim.resets == 2


async def test_requests_and_replies_as_the_codec_reads_them(wire: Wire) -> None:
    """The simulator's replies parse with the codec the gateway uses on the device side."""
    connection = await wire.connect()
    requests = [
        MessageRouterRequest(Service.READ_TAG, symbol(name), ReadTag(1).encode()) for name in ("Mode", "Flow")
    ]
    whole = MessageRouterRequest(
        Service.MULTIPLE_SERVICE_PACKET, logical(ClassCode.MESSAGE_ROUTER, 1), join_requests(requests)
    )
    reply = await wire.unit(connection, whole.encode())
    parts = [parse_response(part) for part in split_multiple_service_reply(reply.data)]
    assert [p.data for p in parts] == [b"\xc2\x00\x02", b"\xca\x00" + struct.pack("<f", 48.0)]
