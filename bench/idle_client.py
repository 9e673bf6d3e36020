"""Holds many idle mutual-TLS overlay sessions open to a gateway, from a process of its own, so the
gateway's memory per idle session can be read from /proc without the client's memory in it.

    python -m bench.idle_client --port P --ca ca.pem --cert c.pem --key c.key --sni plc-1

Each session comes from its own loopback address (127.2.0.1, 127.2.0.2, ...), as each HMI host's agent
would: the overlay's per-source limits on pending handshakes and connection rate (``[overlay]``) would
refuse thousands of handshakes from one address, which is what they are for.

Reads target totals from stdin, one per line ("1000", then "10000"): opens sessions until that many are
open, each doing one verified FC 3 read (so every session is fully set up, codec and all), then prints
one JSON line ``{"open": N, "failed": F, "bad_replies": B, "seconds": S}``. "close" or end of input closes
everything and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import struct
import sys
import time
from typing import cast

from bench.procs import raise_fd_limit

READ_ADDRESS = 40
READ_COUNT = 10
UNIT = 1


def _request(tid: int) -> bytes:
    return struct.pack(">HHHBBHH", tid, 0, 6, UNIT, 3, READ_ADDRESS, READ_COUNT)


def _expected(tid: int) -> bytes:
    values = struct.pack(f">{READ_COUNT}H", *((READ_ADDRESS + i) & 0xFFFF for i in range(READ_COUNT)))
    return struct.pack(">HHHBBB", tid, 0, 3 + len(values), UNIT, 3, len(values)) + values


def _source(n: int) -> str:
    """The n-th session's own loopback address: 127.2.0.1 upwards, 250 per /24."""
    return f"127.{2 + n // 62_500}.{(n // 250) % 250}.{n % 250 + 1}"


class IdleSession(asyncio.Protocol):
    def __init__(self, tid: int) -> None:
        self.tid = tid
        self.buffer = b""
        self.answered: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.transport.write(_request(self.tid))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        expected = _expected(self.tid)
        if len(self.buffer) >= len(expected) and not self.answered.done():
            self.answered.set_result(self.buffer[: len(expected)] == expected)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answered.done():
            self.answered.set_result(False)


class Holder:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.ca)
        self.context.load_cert_chain(args.cert, args.key)
        self.sessions: list[IdleSession] = []
        self.failed = 0
        self.bad = 0

    async def open_one(self, tid: int, n: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, session = await asyncio.wait_for(
                loop.create_connection(
                    lambda: IdleSession(tid),
                    "127.0.0.1",
                    self.args.port,
                    ssl=self.context,
                    server_hostname=self.args.sni,
                    local_addr=(_source(n), 0),
                ),
                self.args.timeout,
            )
            ok = await asyncio.wait_for(session.answered, self.args.timeout)
        except (OSError, TimeoutError, ssl.SSLError):
            self.failed += 1
            return
        if not ok:
            self.bad += 1
        self.sessions.append(session)

    async def grow_to(self, total: int) -> dict[str, float]:
        started = time.monotonic()
        limit = asyncio.Semaphore(self.args.concurrency)

        async def bounded(n: int) -> None:
            async with limit:
                await self.open_one(n % 0xFFFF + 1, n)

        wanted = total - len(self.sessions)
        base = len(self.sessions) + self.failed
        await asyncio.gather(*(bounded(base + i) for i in range(max(0, wanted))))
        return {
            "open": len([s for s in self.sessions if s.transport and not s.transport.is_closing()]),
            "failed": self.failed,
            "bad_replies": self.bad,
            "seconds": round(time.monotonic() - started, 2),
        }

    def close(self) -> None:
        for session in self.sessions:
            if session.transport is not None:
                session.transport.close()


async def main_async(args: argparse.Namespace) -> int:
    holder = Holder(args)
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if not line or line == "close":
                break
            print(json.dumps(await holder.grow_to(int(line))), flush=True)
    finally:
        holder.close()
        await asyncio.sleep(0.2)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.idle_client", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--sni", default="plc-1")
    parser.add_argument("--concurrency", type=int, default=64, help="handshakes in progress at once")
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--max-sessions", type=int, default=20_000, help="to size the fd limit")
    args = parser.parse_args(argv)
    raise_fd_limit(args.max_sessions + 256)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
