"""A center for tests: made with ``center init`` in a temporary folder, run as its own process (so a
test can kill it), with enrolled gateways and agents around it, all on loopback."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from pymodbus.client import AsyncModbusTlsClient

from gateway.audit import AuditLog
from gateway.center.client import CenterClient
from gateway.center.setup import init_center
from gateway.config import CenterSettings
from gateway.credentials import Credentials
from gateway.enroll import enroll
from gateway.server import Gateway
from gateway.tls import client_context
from tests.peers.modbus_server import REPO_ROOT, InProcessServer

TD = "plant1.example"
ALICE = f"spiffe://{TD}/user/alice"


def free_port() -> int:
    """A port free now, for a center that must come back on the same one after a restart."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def modbus_policy(assets: dict[str, tuple[int, str]], rules: str) -> str:
    """A policy with Modbus assets (name -> (device port, on_stale)) and the given rules."""
    text = f'trust_domain = "{TD}"\n'
    for name, (port, on_stale) in assets.items():
        text += (
            f'\n[assets.{name}]\nprotocol = "modbus"\nupstream = "127.0.0.1:{port}"\nunit_ids = [1]\n'
            f'on_stale = "{on_stale}"\n'
        )
    return text + f'\n[groups]\noperators = ["{ALICE}", "spiffe://{TD}/agent/*"]\n' + rules


def read_rule(assets: list[str], address: str = "0-99", rule_id: str = "read") -> str:
    names = ", ".join(f'"{a}"' for a in assets)
    return (
        f'\n[[rules]]\nid = "{rule_id}"\nsubjects = ["group:operators"]\nassets = [{names}]\n'
        f'modbus = [{{ fc = [3], address = "{address}" }}]\n'
    )


class CenterProcess:
    """``ztgate center serve`` in a child process; ``kill`` is SIGKILL, like a crash."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0

    async def start(self, timeout_s: float = 20.0) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "center",
            "serve",
            "--config",
            str(self.config),
            "--log-level",
            "warning",
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout_s)
        found = re.search(rb"listening on port (\d+)", line)
        if found is None:
            raise AssertionError(f"the center did not start: {line!r}")
        self.port = int(found[1])

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                await self.kill()


class Site:
    """A center folder, its admin, and whatever the test enrolls and starts; closed by the fixture."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "center"
        self.port = free_port()
        self.admin: Credentials | None = None
        self.centers: list[CenterProcess] = []
        self.gateways: list[Gateway] = []
        self.audit_files: dict[int, Path] = {}
        self.closers: list[Callable[[], Awaitable[None]]] = []
        self.alice: Credentials | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def init(
        self, *, store: str = "sqlite:center.db", lifetimes: dict[str, float] | None = None
    ) -> None:
        """``center init``, then a heartbeat every 0.2 s and the given certificate lifetimes (s)."""
        config, self.admin = await init_center(self.dir, TD, listen=f"127.0.0.1:{self.port}", store=store)
        text = config.source.read_text().replace('keys = "keys"\n', 'keys = "keys"\nheartbeat_s = 0.2\n')
        for kind, seconds in (lifetimes or {}).items():
            text = re.sub(rf"(?m)^{kind}_s = .*$", f"{kind}_s = {seconds}", text)
        config.source.write_text(text)

    async def start_center(self, config: Path | None = None) -> CenterProcess:
        center = CenterProcess(config or self.dir / "center.toml")
        await center.start()
        self.centers.append(center)
        return center

    def client(self) -> CenterClient:
        assert self.admin is not None
        client = CenterClient.for_credentials(self.admin)
        self.closers.append(client.close)
        return client

    async def device(self) -> InProcessServer:
        """A pymodbus server, unit 1."""
        device = InProcessServer(units=(1,))
        await device.start()
        self.closers.append(device.stop)
        return device

    async def modbus_client(self, gateway: Gateway, asset: str) -> AsyncModbusTlsClient:
        """A pymodbus client with alice's certificate (enrolled with the center) straight to ``gateway``."""
        if self.alice is None:
            self.alice = await self.enroll("user", ALICE, "alice")
        tls = self.alice.tls
        client = AsyncModbusTlsClient(
            "127.0.0.1",
            port=gateway.port,
            sslctx=client_context(tls.cert, tls.key, tls.ca, server_name=asset),
            timeout=3,
            retries=0,
            reconnect_delay=0,
        )

        async def close() -> None:
            client.close()

        self.closers.append(close)
        assert await client.connect()
        return client

    async def push(self, policy: str, comment: str = "") -> int:
        answer = await self.client().call("POST", "/v1/policy", {"policy": policy, "comment": comment})
        return int(answer["revision"])

    async def token(self, role: str, identity: str, ttl_s: float = 600) -> dict[str, Any]:
        return await self.client().call("POST", "/v1/tokens", {"role": role, "id": identity, "ttl_s": ttl_s})

    async def enroll(self, role: str, identity: str, name: str) -> Credentials:
        token = await self.token(role, identity)
        return await enroll(self.url, token["token"], token["fingerprint"], self.root / name)

    async def audit(self, event: str | None = None) -> list[dict[str, Any]]:
        events = (await self.client().call("GET", "/v1/audit"))["events"]
        return [e for e in events if event is None or e["event"] == event]

    async def start_gateway(
        self, credentials: Credentials, name: str = "gw", *, max_staleness_s: float = 60.0, renew: bool = True
    ) -> Gateway:
        path = self.root / f"{name}-audit.jsonl"
        audit = AuditLog(gateway=name, file=path, stdout=False, flush_interval_s=0.01, aggregate_reads_s=0)
        settings = CenterSettings(
            credentials.directory, max_staleness_s=max_staleness_s, startup_timeout_s=15.0, renew=renew
        )
        gateway = Gateway(name=name, tls=settings.tls, center=settings, audit=audit)
        self.audit_files[id(gateway)] = path
        await gateway.start()
        self.gateways.append(gateway)
        return gateway

    def events(self, gateway: Gateway, **match: Any) -> list[dict[str, Any]]:
        """The gateway's audit events so far, those with the given field values."""
        gateway.audit.flush()
        path = self.audit_files[id(gateway)]
        if not path.exists():
            return []
        events = [orjson.loads(line) for line in path.read_bytes().splitlines() if line]
        return [e for e in events if all(e.get(k) == v for k, v in match.items())]

    async def close(self) -> None:
        # The center processes go whatever else fails on the way: none may outlive the test.
        try:
            for closer in self.closers:
                await closer()
            for gateway in self.gateways:
                await gateway.stop()
        finally:
            for center in self.centers:
                await center.stop()


async def admin_get(gateway: Gateway, path: str) -> tuple[int, bytes]:
    """GET on the gateway's admin port: (status, body)."""
    url = f"http://127.0.0.1:{gateway.admin_port}{path}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.read()


async def eventually(check: Any, timeout_s: float = 10.0, what: str = "condition") -> Any:
    """Wait until ``check()`` (sync or async) returns something truthy; return it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        found = check()
        if asyncio.iscoroutine(found):
            found = await found
        if found:
            return found
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.02)
