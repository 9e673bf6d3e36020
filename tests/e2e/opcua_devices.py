"""The OPC UA devices of the e2e tests, two independently written servers behind one face:

- ``asyncua``: ``ztgate sim opcua --static`` (gateway/lab/sim/opcua.py), in the test's process;
- ``node-opcua``: tests/peers/node-opcua/device.js, node-opcua from npm, in a process of its own, with the
  same namespace, node ids, values at start and methods.

Either restarts on the port it first got (``restart``), as a device power-cycled in the field; node-opcua's
process is killed for it. Without node or the npm packages the node-opcua tests skip with the reason,
except under ``./run test`` (``ZTGATE_REQUIRE_NODE_OPCUA=1``, ``./run`` installs both), where that is an
error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest

from gateway.lab.sim.opcua import OpcUaSim

PEER_DIR = Path(__file__).resolve().parents[1] / "peers" / "node-opcua"
REQUIRE_ENV = "ZTGATE_REQUIRE_NODE_OPCUA"
KINDS = ("asyncua", "node-opcua")
START_TIMEOUT_S = 60.0  # node-opcua makes its certificate on a first start


class Device(Protocol):
    port: int

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def restart(self, without: Sequence[str] = ()) -> None:
        """Stop, and start again on the same port; ``without`` names variables the new one lacks."""

    async def set_value(self, name: str, value: Any) -> None: ...

    async def sessions(self) -> int:
        """Sessions the device holds now (the gateway's control session among them)."""

    async def subscriptions(self) -> int: ...


def free_port() -> int:
    """A loopback port nothing listens on now, for a device that must come back on the same port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def require_node_opcua() -> None:
    """Skip (fail under ./run test) when node or the npm packages are not installed."""
    missing = None
    if shutil.which("node") is None:
        missing = "node is not installed"
    elif not (PEER_DIR / "node_modules" / "node-opcua").is_dir():
        missing = f"npm packages not installed in {PEER_DIR} (npm ci there)"
    if missing is None:
        return
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"node-opcua is required here ({REQUIRE_ENV} is set): {missing}")
    pytest.skip(f"no node-opcua device: {missing} (./run test installs it)")


class AsyncuaDevice:
    def __init__(self) -> None:
        self.sim = OpcUaSim(port=free_port(), static=True)
        self.port = self.sim.port

    async def start(self) -> None:
        await self.sim.start()

    async def stop(self) -> None:
        await self.sim.stop()

    async def restart(self, without: Sequence[str] = ()) -> None:
        await self.sim.stop()
        self.sim = OpcUaSim(port=self.port, static=True)
        await self.sim.start()
        server = self.sim._running()
        for name in without:
            await server.delete_nodes([server.get_node(self.sim.node_ids[name])])

    async def set_value(self, name: str, value: Any) -> None:
        await self.sim.set_value(name, value)

    async def sessions(self) -> int:
        return len(self.sim._running().iserver._external_sessions)

    async def subscriptions(self) -> int:
        return len(self.sim._running().iserver.subscription_service.subscriptions)


class NodeOpcUaDevice:
    """``secure``: Basic256Sha256 SignAndEncrypt only, and a client certificate trusted only after
    :meth:`trust`."""

    def __init__(self, pki: Path, *, secure: bool = False) -> None:
        self.pki = pki
        self.port = free_port()
        self.secure = secure
        self._process: asyncio.subprocess.Process | None = None

    async def start(self, without: Sequence[str] = ()) -> None:
        arguments = ["--port", str(self.port), "--pki", str(self.pki), "--lifetime-s", "600"]
        if self.secure:
            arguments.append("--secure")
        for name in without:
            arguments += ["--without", name]
        self.pki.mkdir(parents=True, exist_ok=True)
        log = self.pki / "device.log"  # node-opcua's own messages, for a failure's explanation
        with log.open("ab") as log_file:
            process = await asyncio.create_subprocess_exec(
                "node",
                str(PEER_DIR / "device.js"),
                *arguments,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                cwd=PEER_DIR,
            )
        self._process = process
        assert process.stdout is not None
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                line = await process.stdout.readline()
        except TimeoutError:
            line = b""
        if line.strip() != f"ready {self.port}".encode():
            await self.stop()
            error = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"node-opcua device did not start on port {self.port}: {line!r}\n{error}")

    async def stop(self) -> None:
        """Kill the process (a device that dies, not one that says goodbye)."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()

    async def restart(self, without: Sequence[str] = ()) -> None:
        await self.stop()
        await self.start(without)

    async def _command(self, line: str) -> str:
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        process.stdin.write(f"{line}\n".encode())
        await process.stdin.drain()
        async with asyncio.timeout(10):
            answer = (await process.stdout.readline()).decode().strip()
        if answer.startswith("error"):
            raise RuntimeError(f"node-opcua device: {line}: {answer}")
        return answer

    async def set_value(self, name: str, value: Any) -> None:
        text = str(value).lower() if isinstance(value, bool) else str(value)
        await self._command(f"set {name} {text}")

    async def sessions(self) -> int:
        return int(await self._command("sessions"))

    async def subscriptions(self) -> int:
        return int(await self._command("subscriptions"))

    async def trust(self, certificate: Path) -> None:
        """Put a client's certificate (DER) into the device's trust list, as its operator would."""
        await self._command(f"trust {certificate}")


@contextlib.asynccontextmanager
async def running_device(kind: str, pki: Path) -> AsyncIterator[Device]:
    device: Device
    if kind == "node-opcua":
        require_node_opcua()
        device = NodeOpcUaDevice(pki)
    else:
        device = AsyncuaDevice()
    await device.start()
    try:
        yield device
    finally:
        await device.stop()
