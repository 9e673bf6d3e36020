"""Replies built from the device's own bytes: a normal reply to a read (FC 1-4) leaves the gateway as the
device sent it, with the client's transaction id and unit written over its header, and the replies
one client gets in one batch of the device's bytes leave as one piece. Everything else in the same
batch (an exception reply, a reply of the wrong length, a reply under a transaction id the gateway
never used) takes the general path. Two raw mutual-TLS clients pipeline through the gateway to a
scripted device (raw bytes, no ztgate code) that answers all their requests in one write; every
expected reply is built here with struct, as the general path (``encode_adu`` of the checked PDU)
writes it."""

from __future__ import annotations

import asyncio
import struct

from tests.e2e.harness import Lab, policy_text

RULES = """
[[rules]]
id = "operators"
subjects = ["group:operators"]
assets = ["plc-1"]
modbus = [{ fc = [1, 2, 3, 4], address = "0-999" }]
"""
# Client unit 1 is the device's unit 17, so the unit is rewritten as well as the transaction id.
ASSET = 'max_in_flight = 16\nresponse_timeout_s = 0.5\nunit_map = { "1" = 17 }'

EXCEPTION_AT = 13  # the device answers a read at this address with exception 0x02
SHORT_AT = 21  # ... with one register fewer than asked for (0x0B to the client)
# ... under a transaction id the gateway never used: with other requests in flight it is dropped and
# counted, and its request answered 0x0B at its deadline
STRAY_AT = 33


def _read_pdu(fc: int, address: int, count: int) -> bytes:
    """The device's normal reply PDU: register i holds i, bit i is on when i is odd."""
    if fc in (1, 2):
        bits = bytearray((count + 7) >> 3)
        for i in range(count):
            if (address + i) & 1:
                bits[i >> 3] |= 1 << (i & 7)
        return bytes((fc, len(bits))) + bytes(bits)
    return bytes((fc, 2 * count)) + struct.pack(f">{count}H", *range(address, address + count))


def _device_pdu(fc: int, address: int, count: int) -> bytes:
    if address == EXCEPTION_AT:
        return bytes((fc | 0x80, 0x02))
    if address == SHORT_AT:
        return _read_pdu(fc, address, count)[:-2]
    return _read_pdu(fc, address, count)


def _frame(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


class BatchingDevice:
    """Answers nothing until ``expected`` requests have come, then all of them in one write, in the
    order they came."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.requests: list[bytes] = []
        self.units: set[int] = set()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while len(self.requests) < self.expected:
                header = await reader.readexactly(7)
                (length,) = struct.unpack(">H", header[4:6])
                self.requests.append(header + await reader.readexactly(length - 1))
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        replies = []
        for frame in self.requests:
            tid, unit, fc = struct.unpack(">H", frame[:2])[0], frame[6], frame[7]
            self.units.add(unit)
            address, count = struct.unpack(">HH", frame[8:12])
            if address == STRAY_AT:
                tid ^= 0x8000  # the gateway's ids in flight are consecutive: never one of them
            replies.append(_frame(tid, unit, _device_pdu(fc, address, count)))
        writer.write(b"".join(replies))
        await writer.drain()
        await reader.read()  # until the gateway goes


async def _replies(reader: asyncio.StreamReader, count: int) -> list[tuple[int, bytes]]:
    out = []
    for _ in range(count):
        header = await asyncio.wait_for(reader.readexactly(7), 5)
        tid, _, length, _ = struct.unpack(">HHHB", header)
        out.append((tid, header + await reader.readexactly(length - 1)))
    return out


async def test_replies_relabelled_in_place_are_the_general_paths_bytes_and_odd_ones_take_it(
    lab: Lab,
) -> None:
    # (client, tid, fc, address, count); each client's four requests leave in one write.
    requests = {
        "alice": [(0x0101, 3, 7, 2), (0x0102, 4, 8, 3), (0x0103, 3, EXCEPTION_AT, 1), (0x0104, 1, 9, 11)],
        "bob": [(0x0201, 2, 10, 5), (0x0202, 3, STRAY_AT, 1), (0x0203, 3, SHORT_AT, 2), (0x0204, 3, 11, 125)],
    }
    device = BatchingDevice(expected=8)
    await device.start()
    lab.device = device  # type: ignore[assignment]  # stopped with the lab
    await lab.start_gateway(policy_text(device.port, RULES, asset_extra=ASSET))
    streams = {who: await lab.raw_connection(who) for who in requests}
    for who, (_, writer) in streams.items():
        writer.write(b"".join(struct.pack(">HHHBBHH", t, 0, 6, 1, fc, a, n) for t, fc, a, n in requests[who]))
    got = {who: await _replies(reader, 4) for who, (reader, _) in streams.items()}

    def normal(tid: int, fc: int, address: int, count: int) -> tuple[int, bytes]:
        return tid, _frame(tid, 1, _read_pdu(fc, address, count))

    assert got["alice"] == [
        normal(0x0101, 3, 7, 2),
        normal(0x0102, 4, 8, 3),
        (0x0103, _frame(0x0103, 1, bytes((0x83, 0x02)))),  # the device's exception, as it sent it
        normal(0x0104, 1, 9, 11),
    ]
    assert got["bob"] == [
        normal(0x0201, 2, 10, 5),
        (0x0203, _frame(0x0203, 1, bytes((0x83, 0x0B)))),  # a short reply never reaches the client
        normal(0x0204, 3, 11, 125),
        (0x0202, _frame(0x0202, 1, bytes((0x83, 0x0B)))),  # its own reply never came: the deadline's
    ]
    assert device.units == {17}
    assert lab.gateway is not None
    pool = lab.gateway.runtime.upstreams.pool_for(lab.gateway.policy.assets["plc-1"])
    assert pool.late_replies == 1 and pool.desyncs == 0  # the stray reply, dropped
    exception = await lab.wait_for_event(event="decision", tid=0x0103)
    assert exception["outcome"] == "device exception 2"
    short = await lab.wait_for_event(event="decision", tid=0x0203)
    assert short["outcome"] == "malformed reply: FC 3 response: 4 bytes with byte count 04, expected 4"
    assert short["code"] == 0x0B
    stray = await lab.wait_for_event(event="decision", tid=0x0202)
    assert stray["outcome"] == "device did not answer in time"
