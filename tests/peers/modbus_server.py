"""A plain pymodbus Modbus TCP server as a real, independently written peer: no ztgate code involved.

    python -m tests.peers.modbus_server --port 0 --unit 1 --unit 17 [--host 127.0.0.1]

Data model, the same for every unit served, addresses 0-9999 (beyond: exception 2):
    holding register i = input register i = (i * 7 + 3) & 0xFFFF
    coil i = discrete input i = (i % 3 == 0)
Holding registers and coils are writable (each unit keeps its own copy); an unknown unit id gets
exception 4, pymodbus's answer without a catch-all device.

Prints exactly one line, ``READY <port>``, on stdout once listening; exits 0 on SIGTERM or SIGINT, 3 if
it cannot listen. ``ServerProcess`` runs it from async tests, keeping the port across restarts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

TABLE_SIZE = 10_000
EXIT_CANNOT_LISTEN = 3
REPO_ROOT = Path(__file__).resolve().parents[2]


def expected_register(address: int) -> int:
    """Initial value of holding and input register ``address``."""
    return (address * 7 + 3) & 0xFFFF


def expected_bit(address: int) -> int:
    """Initial value of coil and discrete input ``address`` (0 or 1)."""
    return int(address % 3 == 0)


# ------------------------------------------------------------------------------------------ server


def build_server(host: str, port: int, units: Sequence[int]) -> Any:
    """A pymodbus ``ModbusTcpServer`` serving the data model above (not yet listening)."""
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    registers = [expected_register(i) for i in range(TABLE_SIZE)]
    bits = [bool(expected_bit(i)) for i in range(TABLE_SIZE)]

    def device(unit: int) -> SimDevice:
        # (coils, discrete inputs, holding, input): separate, bit-addressed tables like a typical PLC.
        return SimDevice(
            unit,
            simdata=(
                [SimData(0, values=list(bits), datatype=DataType.BITS)],
                [SimData(0, values=list(bits), datatype=DataType.BITS)],
                [SimData(0, values=list(registers), datatype=DataType.REGISTERS)],
                [SimData(0, values=list(registers), datatype=DataType.REGISTERS)],
            ),
        )

    # pymodbus binds with SO_REUSEADDR, so a restart on the same port is not blocked by TIME_WAIT.
    return ModbusTcpServer([device(unit) for unit in units], address=(host, port))


def listening_port(server: Any) -> int:
    sockets = getattr(server.transport, "sockets", None)  # asyncio.Server or uvloop's equivalent
    assert sockets, "pymodbus's listener has no socket"
    return int(sockets[0].getsockname()[1])


class InProcessServer:
    """The same server in the caller's event loop: quicker to start than a subprocess, for tests that
    need a device but not a process to kill."""

    def __init__(self, *, units: Sequence[int] = (1,), host: str = "127.0.0.1") -> None:
        self.units = tuple(units)
        self.host = host
        self.port = 0
        self._server: Any = None

    async def start(self) -> None:
        self._server = build_server(self.host, self.port, self.units)
        await self._server.serve_forever(background=True)
        self.port = listening_port(self._server)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None


async def _serve(host: str, port: int, units: Sequence[int]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = build_server(host, port, units)
    try:
        await server.serve_forever(background=True)
    except RuntimeError as exc:
        print(f"modbus_server: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return EXIT_CANNOT_LISTEN
    print(f"READY {listening_port(server)}", flush=True)
    await stop.wait()
    await server.shutdown()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.peers.modbus_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--unit", type=int, action="append", dest="units", help="repeat; default 1")
    args = parser.parse_args(argv)
    return asyncio.run(_serve(args.host, args.port, args.units or [1]))


# ------------------------------------------------------------------------------------------ harness


class ServerProcess:
    """The server above as a subprocess. The first start learns the port (when it was 0); every later
    start binds that same port, so a client or gateway configured with it sees the device come back."""

    START_TIMEOUT_S = 15.0
    STOP_TIMEOUT_S = 5.0
    # A port just released may still be held for a moment (e.g. by a lingering listener); retry briefly.
    BIND_RETRY_S = 5.0

    def __init__(self, *, units: Sequence[int] = (1,), port: int = 0, host: str = "127.0.0.1") -> None:
        self.units = tuple(units)
        self.host = host
        self.port = port
        self._process: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        if self.running:
            raise RuntimeError("the server is already running")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.BIND_RETRY_S
        while True:
            status = await self._spawn()
            if status is None:
                return
            if status != EXIT_CANNOT_LISTEN or self.port == 0 or loop.time() >= deadline:
                raise RuntimeError(f"modbus_server exited with status {status} before it was ready")
            await asyncio.sleep(0.1)

    async def _spawn(self) -> int | None:
        """Start one process; None once it is ready, else its exit status."""
        command = [sys.executable, "-m", "tests.peers.modbus_server", "--host", self.host]
        command += ["--port", str(self.port)]
        for unit in self.units:
            command += ["--unit", str(unit)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        # stderr is inherited: pytest captures it, and a pipe nobody reads could fill up and stall the server.
        process = await asyncio.create_subprocess_exec(
            *command, cwd=REPO_ROOT, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE
        )
        assert process.stdout is not None
        try:
            async with asyncio.timeout(self.START_TIMEOUT_S):
                line = await process.stdout.readline()
            if not line:
                return await process.wait()
            word, _, port_text = line.decode().strip().partition(" ")
            if word != "READY" or not port_text.isdigit():
                raise RuntimeError(f"modbus_server: unexpected first line {line!r}")
        except BaseException as exc:
            # Also on cancellation: never leave a server behind that nobody will stop.
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            if isinstance(exc, TimeoutError):
                raise RuntimeError(f"modbus_server printed nothing within {self.START_TIMEOUT_S} s") from None
            raise
        self.port = int(port_text)
        self._process = process
        return None

    async def stop(self) -> int | None:
        """SIGTERM and wait; returns the exit status (None if it was not running)."""
        return await self._end(signal.SIGTERM)

    async def kill(self) -> None:
        """SIGKILL and wait: the device vanishes without closing its connections cleanly."""
        await self._end(signal.SIGKILL)

    async def restart(self) -> None:
        """Stop (if running) and start again on the same port."""
        if self.running:
            await self.stop()
        await self.start()

    async def _end(self, signum: signal.Signals) -> int | None:
        process = self._process
        if process is None:
            return None
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # it may have exited a moment ago
                process.send_signal(signum)
            try:
                async with asyncio.timeout(self.STOP_TIMEOUT_S):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        self._process = None
        return process.returncode

    async def __aenter__(self) -> Self:
        if not self.running:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def start_modbus_server(*, units: Sequence[int] = (1,), port: int = 0) -> ServerProcess:
    server = ServerProcess(units=units, port=port)
    await server.start()
    return server


if __name__ == "__main__":
    sys.exit(main())
