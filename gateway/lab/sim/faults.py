"""Device faults on purpose: a front in front of a soft PLC that passes requests through unchanged and
spoils chosen replies the way misbehaving devices do.

It knows only MBAP framing (a 7-byte header whose length field says how much follows) and nothing of
the function codes: the device behind it (pymodbus's server in :mod:`gateway.lab.sim.modbus`) answers,
and the front only changes when and how that answer arrives:

``wrong-tid``  the reply carries the next transaction id, not the request's (a device out of step)
``late``       the reply leaves ``delay_s`` after the device gave it (after a client's timeout)
``short``      only the first half of the reply's bytes are sent; the rest never comes
``trickle``    the reply is sent one byte every ``byte_interval_s`` (5 ms by default)

Replies are numbered from 0 in the order the device gives them, over all connections; a fault applies to
``replies`` of them from number ``after`` (``replies = None``: all from there on). Replies leave each
connection in order, one after the other, as from a device that answers one request at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass

FAULT_KINDS = ("wrong-tid", "late", "short", "trickle")
_MBAP = struct.Struct(">HHH")  # transaction id, protocol id, length (unit id + PDU)
_HEADER_BYTES = 6  # up to and including the length field


@dataclass(frozen=True)
class Fault:
    kind: str
    after: int = 0  # replies given normally before the first spoiled one
    replies: int | None = 1  # how many are spoiled; None: every one from ``after`` on
    delay_s: float = 0.8  # late
    byte_interval_s: float = 0.005  # trickle

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault {self.kind!r}: expected one of {', '.join(FAULT_KINDS)}")
        if self.after < 0 or (self.replies is not None and self.replies < 1):
            raise ValueError("after must be 0 or more and replies 1 or more (or None)")
        if not (self.delay_s > 0 and self.byte_interval_s > 0):
            raise ValueError("delay_s and byte_interval_s must be positive")

    def applies(self, number: int) -> bool:
        return number >= self.after and (self.replies is None or number < self.after + self.replies)


class FaultFront:
    """Listens on ``host:port`` (0: the kernel picks), opens one connection to the device per client
    connection. ``requests`` holds every request frame passed through, for tests to see what reached the
    device; ``connections`` counts the client connections, ``replies`` the device's replies, ``spoiled``
    those the fault changed."""

    def __init__(self, fault: Fault, device: tuple[str, int], host: str = "127.0.0.1", port: int = 0) -> None:
        self.fault = fault
        self.device = device
        self.host = host
        self.port = port
        self.requests: list[bytes] = []
        self.connections = 0
        self.replies = 0
        self.spoiled = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.host, self.port = self._server.sockets[0].getsockname()[:2]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        device_w: asyncio.StreamWriter | None = None
        try:
            device_r, device_w = await asyncio.open_connection(*self.device)
            async with asyncio.TaskGroup() as group:
                group.create_task(self._requests(client_r, device_w))
                group.create_task(self._replies(device_r, client_w))
        except* (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            client_w.close()
            if device_w is not None:
                device_w.close()

    async def _requests(self, client: asyncio.StreamReader, device: asyncio.StreamWriter) -> None:
        while True:
            frame = await _read_frame(client)
            self.requests.append(frame)
            device.write(frame)
            await device.drain()
        # Not reached: a closed client ends the read with IncompleteReadError.

    async def _replies(self, device: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        fault = self.fault
        while True:
            frame = await _read_frame(device)
            number = self.replies
            self.replies += 1
            if not fault.applies(number):
                client.write(frame)
                await client.drain()
                continue
            self.spoiled += 1
            if fault.kind == "wrong-tid":
                (tid,) = struct.unpack_from(">H", frame)
                client.write(struct.pack(">H", (tid + 1) & 0xFFFF) + frame[2:])
            elif fault.kind == "late":
                await asyncio.sleep(fault.delay_s)
                client.write(frame)
            elif fault.kind == "short":
                client.write(frame[: len(frame) // 2])
            else:  # trickle
                for index in range(len(frame)):
                    client.write(frame[index : index + 1])
                    await client.drain()
                    await asyncio.sleep(fault.byte_interval_s)
            await client.drain()


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(_HEADER_BYTES)
    _, _, length = _MBAP.unpack(header)
    return header + await reader.readexactly(length)
