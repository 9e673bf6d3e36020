"""The bench's fast Modbus TCP server: the far end of every Modbus path, ``python -m bench.modbus_server``.

    python -m bench.modbus_server --port 0        # prints "listening on 127.0.0.1:PORT" on stderr

It must never be what limits a run, so it does as little per request as a correct server can:

- every complete request of one read is answered, in order, in one write: a client (or a gateway's
  upstream pool) that pipelines gets its whole batch back in one system call;
- a read's reply is computed once and kept, keyed by the request's bytes after the transaction id,
  until a write changes what the tables hold; a repeated read then costs one dictionary look-up;
- everything else goes through the project's codec (:mod:`protocols.modbus`): a request this server
  answers is one the codec accepts, and a request it refuses gets the codec's exception code.

The tables are deterministic, so a client can check every value it reads without asking first
(:func:`register_value`, :func:`coil_value`): holding and input register *i* hold ``i & 0xFFFF``, coil and
discrete input *i* are on when *i* is odd. Writes (FC 5, 6, 15, 16) store what they write; the bench's
workloads write the values already held, so reads stay checkable under a read/write mix.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import struct
import sys
from collections.abc import Callable
from typing import cast

from protocols.modbus import ModbusProtocolError, Request, encode_adu, encode_exception, parse_request
from protocols.modbus.pdu import pack_bits
from protocols.modbus.spec import (
    ADDRESS_SPACE,
    MBAP_HEADER_BYTES,
    MBAP_LENGTH_MAX,
    MBAP_LENGTH_MIN,
    ExceptionCode,
)

__all__ = ["FastServer", "Tables", "coil_value", "loop_factory", "main", "register_value", "serve"]

MAX_CACHED_REPLIES = 4096  # distinct read requests kept; the bench's workloads use a handful
_MBAP_REST = MBAP_HEADER_BYTES - 1  # transaction id, protocol id, length: the bytes before the unit id


def register_value(address: int) -> int:
    """What holding and input register ``address`` hold until written."""
    return address & 0xFFFF


def coil_value(address: int) -> int:
    """What coil and discrete input ``address`` hold until written: on when the address is odd."""
    return address & 1


class Tables:
    """The four Modbus tables over the whole address space, and the replies to reads of them."""

    def __init__(self) -> None:
        registers = struct.pack(f">{ADDRESS_SPACE}H", *map(register_value, range(ADDRESS_SPACE)))
        self.holding_registers = bytearray(registers)
        self.input_registers = bytearray(registers)
        self.coils = bytearray(map(coil_value, range(ADDRESS_SPACE)))
        self.discrete_inputs = bytearray(self.coils)
        # The request after its transaction id -> the reply after its transaction id (reads only).
        self.replies: dict[bytes, bytes] = {}
        self.requests = 0
        self.exceptions = 0
        self._answer: dict[int, Callable[[Request], bytes]] = {
            1: self._read_bits(self.coils),
            2: self._read_bits(self.discrete_inputs),
            3: self._read_registers(self.holding_registers),
            4: self._read_registers(self.input_registers),
            5: self._write_single_coil,
            6: self._write_single_register,
            15: self._write_multiple_coils,
            16: self._write_multiple_registers,
        }

    def answer(self, tail: bytes) -> bytes:
        """The reply (after its transaction id) to a request given after its transaction id."""
        unit = tail[_MBAP_REST - 2]
        try:
            request = parse_request(0, unit, tail[_MBAP_REST - 1 :])
        except ModbusProtocolError as exc:
            self.exceptions += 1
            code = exc.exception_code or ExceptionCode.ILLEGAL_DATA_VALUE
            return encode_exception(0, unit, exc.function_code or tail[_MBAP_REST - 1], code)[2:]
        handler = self._answer.get(request.function_code)
        if handler is None:
            self.exceptions += 1
            return encode_exception(0, unit, request.function_code, ExceptionCode.ILLEGAL_FUNCTION)[2:]
        reply = encode_adu(0, unit, handler(request))[2:]
        if request.function_code <= 4:
            if len(self.replies) >= MAX_CACHED_REPLIES:
                self.replies.clear()
            self.replies[tail] = reply
        return reply

    @staticmethod
    def _read_bits(table: bytearray) -> Callable[[Request], bytes]:
        def read(request: Request) -> bytes:
            start = request.read_address
            packed = pack_bits(list(table[start : start + request.read_count]))
            return bytes((request.function_code, len(packed))) + packed

        return read

    @staticmethod
    def _read_registers(table: bytearray) -> Callable[[Request], bytes]:
        def read(request: Request) -> bytes:
            start = 2 * request.read_address
            data = table[start : start + 2 * request.read_count]
            return bytes((request.function_code, len(data))) + data

        return read

    def _store(self, table: bytearray, offset: int, data: bytes) -> None:
        """Write ``data`` into a table; a write that changes what a read would see forgets the replies."""
        if table[offset : offset + len(data)] != data:
            table[offset : offset + len(data)] = data
            self.replies.clear()

    def _write_single_coil(self, request: Request) -> bytes:
        self._store(self.coils, request.write_address, bytes(request.values))
        return request.received_pdu

    def _write_single_register(self, request: Request) -> bytes:
        self._store(self.holding_registers, 2 * request.write_address, request.pdu[3:5])
        return request.received_pdu

    def _write_multiple_coils(self, request: Request) -> bytes:
        self._store(self.coils, request.write_address, bytes(request.values))
        return request.pdu[:5]

    def _write_multiple_registers(self, request: Request) -> bytes:
        self._store(self.holding_registers, 2 * request.write_address, request.pdu[6:])
        return request.pdu[:5]


class ServerProtocol(asyncio.Protocol):
    """One client connection: frames the byte stream and answers each batch of requests in one write."""

    def __init__(self, tables: Tables, connections: set[asyncio.Transport]) -> None:
        self.tables = tables
        self.connections = connections
        self.rest = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.connections.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.connections.discard(self.transport)

    # A client that keeps sending but stops reading is not read from until it reads again.
    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.rest:
            data = self.rest + data
        size, pos, out = len(data), 0, []
        replies, answer = self.tables.replies, self.tables.answer
        while size - pos >= MBAP_HEADER_BYTES:
            length = (data[pos + 4] << 8) | data[pos + 5]
            if data[pos + 2] or data[pos + 3] or not MBAP_LENGTH_MIN <= length <= MBAP_LENGTH_MAX:
                # A wrong protocol id or length leaves no way to find the next frame: close, as a device does.
                assert self.transport is not None
                self.transport.close()
                self.rest = b""
                return
            end = pos + _MBAP_REST + length
            if end > size:
                break
            tail = data[pos + 2 : end]
            out.append(data[pos : pos + 2])
            out.append(replies.get(tail) or answer(tail))
            pos = end
        self.rest = data[pos:]
        if out:
            self.tables.requests += len(out) >> 1
            assert self.transport is not None
            self.transport.write(b"".join(out))


class FastServer:
    """The listening socket, the tables it serves and the open connections (closed with it)."""

    def __init__(self) -> None:
        self.tables = Tables()
        self.connections: set[asyncio.Transport] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host``:``port`` (0: a port the kernel picks); returns the port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ServerProtocol(self.tables, self.connections), host, port, backlog=1024
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for transport in list(self.connections):
                transport.close()
            await self._server.wait_closed()


async def serve(host: str, port: int) -> Tables:
    """Serve until SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    server = FastServer()
    bound = await server.start(host, port)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    # The tables are long-lived and free of cycles: keep the collector from walking them under load.
    gc.collect()
    gc.freeze()
    print(f"bench.modbus_server: listening on {host}:{bound}", file=sys.stderr, flush=True)
    await stop.wait()
    await server.stop()
    return server.tables


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop named on the command line: "uvloop" (the default, when installed) or "asyncio"."""
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if name == "uvloop":
            raise SystemExit("uvloop is not installed; use --loop asyncio") from None
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.modbus_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a port the kernel picks (default)")
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
        try:
            tables = runner.run(serve(args.host, args.port))
        except OSError as exc:
            print(f"bench.modbus_server: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 2
    print(
        f"bench.modbus_server: stopped after {tables.requests} requests ({tables.exceptions} refused)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
