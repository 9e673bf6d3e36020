"""A lock cuts an agent's live sessions in all three protocols while independent clients poll through
it (pymodbus, pycomm3, asyncua -> agent -> gateway -> simulators), and another agent's clients polling
the same assets go on without one failed request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Awaitable

import pytest
from asyncua import Client, ua
from pycomm3 import LogixDriver
from pymodbus.client import AsyncModbusTcpClient

from gateway.agent import Agent
from gateway.config import AgentConfig, AgentListener
from gateway.credentials import Credentials
from gateway.lab.sim.enip import EnipSim
from gateway.lab.sim.opcua import OpcUaSim
from gateway.server import Gateway
from tests.center.harness import TD, Site, eventually

GATEWAY_ID = f"spiffe://{TD}/gateway/site1/gw-1"
HMI_3 = f"spiffe://{TD}/agent/site1/hmi-3"
HMI_4 = f"spiffe://{TD}/agent/site1/hmi-4"
PLANT = "urn:ztgate:sim:plant"
POLL_TIMEOUT_S = 3.0


def _policy(modbus_port: int, enip_port: int, opcua_port: int) -> str:
    return f"""
trust_domain = "{TD}"

[assets.plc-1]
protocol = "modbus"
upstream = "127.0.0.1:{modbus_port}"
unit_ids = [1]

[assets.plc-2]
protocol = "enip"
upstream = "127.0.0.1:{enip_port}"
route = "1/0"
identity = {{ device_type = 0x0E, product_code = 55, revision = "20.11", product_name = "Line 1 PLC" }}

[assets.opc-1]
protocol = "opcua"
upstream = "opc.tcp://127.0.0.1:{opcua_port}/"

[groups]
hmis = ["spiffe://{TD}/agent/*"]

[[rules]]
id = "hmis-read"
subjects = ["group:hmis"]
assets = ["plc-1"]
modbus = [{{ fc = [3], address = "0-99" }}]

[[rules]]
id = "hmis-read-enip"
subjects = ["group:hmis"]
assets = ["plc-2"]
enip = [{{ preset = "read-only" }}]

[[rules]]
id = "hmis-read-opcua"
subjects = ["group:hmis"]
assets = ["opc-1"]
opcua = [{{ preset = "read-only" }}]
"""


class Poller:
    """One client polling until told to stop or until a request fails (a cut session ends it)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ok = 0
        self.failed = 0
        self.error = ""
        self.stop = threading.Event()

    def record(self, ok: bool, error: str = "") -> bool:
        """Count one request; whether to go on."""
        if ok:
            self.ok += 1
        else:
            self.failed += 1
            self.error = error
        return ok and not self.stop.is_set()


async def _poll_modbus(poller: Poller, port: int) -> None:
    client = AsyncModbusTcpClient(
        "127.0.0.1", port=port, timeout=POLL_TIMEOUT_S, retries=0, reconnect_delay=0
    )
    try:
        await client.connect()
        while True:
            try:
                ok = not (await client.read_holding_registers(1, count=1, device_id=1)).isError()
                error = ""
            except Exception as exc:
                ok, error = False, repr(exc)
            if not poller.record(ok, error):
                return
            await asyncio.sleep(0.05)
    finally:
        client.close()


def _poll_enip(poller: Poller, port: int) -> None:
    try:
        with LogixDriver(f"127.0.0.1:{port}") as driver:
            while poller.record(driver.read("Setpoint").error is None):
                poller.stop.wait(0.05)
    except Exception as exc:  # pycomm3 raises on a closed connection
        poller.record(False, repr(exc))


async def _poll_opcua(poller: Poller, port: int) -> None:
    try:
        async with Client(f"opc.tcp://127.0.0.1:{port}/", timeout=POLL_TIMEOUT_S) as client:
            ns = await client.get_namespace_index(PLANT)
            node = client.get_node(ua.NodeId("Plant.Line1.Tank1.Level", ns))
            while True:
                try:
                    await node.read_value()
                    ok, error = True, ""
                except Exception as exc:
                    ok, error = False, repr(exc)
                if not poller.record(ok, error):
                    return
                await asyncio.sleep(0.05)
    except Exception as exc:  # the channel went away under asyncua
        poller.record(False, repr(exc))


async def _agent(site: Site, credentials: Credentials, gateway: Gateway) -> Agent:
    listeners = tuple(
        AgentListener(("127.0.0.1", 0), asset, ("127.0.0.1", gateway.port), protocol, GATEWAY_ID)
        for asset, protocol in (("plc-1", "modbus"), ("plc-2", "enip"), ("opc-1", "opcua"))
    )
    agent = Agent(
        AgentConfig(
            source=site.root / "agent.toml", tls=credentials.tls, listeners=listeners, connect_timeout_s=5.0
        )
    )
    await agent.start()

    async def stop() -> None:
        await agent.stop()

    site.closers.insert(0, stop)
    return agent


@contextlib.asynccontextmanager
async def _polling(agent: Agent, name: str) -> AsyncIterator[list[Poller]]:
    ports = [bound[1][1] for bound in agent.bound]
    pollers = [Poller(f"{name} modbus"), Poller(f"{name} enip"), Poller(f"{name} opcua")]
    runs: list[Awaitable[None]] = [
        _poll_modbus(pollers[0], ports[0]),
        asyncio.to_thread(_poll_enip, pollers[1], ports[1]),
        _poll_opcua(pollers[2], ports[2]),
    ]
    tasks = [asyncio.ensure_future(run) for run in runs]
    try:
        yield pollers
    finally:
        for poller in pollers:
            poller.stop.set()
        async with asyncio.timeout(30):
            await asyncio.gather(*tasks, return_exceptions=True)


async def test_an_agent_lock_cuts_its_three_protocols_and_spares_the_other_agent(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="pycomm3")
    caplog.set_level(logging.CRITICAL, logger="asyncua")
    await site.init()
    await site.start_center()
    device = await site.device()
    async with EnipSim(static=True) as enip, OpcUaSim(static=True) as opcua:
        await site.push(_policy(device.port, enip.port, opcua.port))
        gateway = await site.start_gateway(await site.enroll("gateway", GATEWAY_ID, "gw-1"), "gw-1")
        locked = await _agent(site, await site.enroll("agent", HMI_3, "hmi-3"), gateway)
        spared = await _agent(site, await site.enroll("agent", HMI_4, "hmi-4"), gateway)
        async with _polling(locked, "hmi-3") as cut, _polling(spared, "hmi-4") as going_on:
            everyone = [*cut, *going_on]
            try:
                await eventually(lambda: all(p.ok >= 3 for p in everyone), timeout_s=30, what="every client")
            except AssertionError as exc:
                raise AssertionError([(p.name, p.ok, p.failed, p.error) for p in everyone]) from exc
            lock = await site.client().call(
                "POST", "/v1/locks", {"target": f"agent={HMI_3}", "reason": "stolen laptop"}
            )
            cuts = await eventually(
                lambda: (
                    len(site.events(gateway, event="session_cut")) >= 3
                    and site.events(gateway, event="session_cut")
                ),
                what="three sessions cut",
            )
            assert {(e["protocol"], e["identity"], e["lock"], e["reason"]) for e in cuts} == {
                (protocol, HMI_3, lock["id"], "stolen laptop") for protocol in ("modbus", "enip", "opcua")
            }
            await eventually(
                lambda: all(p.failed for p in cut), timeout_s=15, what="each hmi-3 client cut off"
            )
            before = [p.ok for p in going_on]
            await eventually(
                lambda: all(p.ok >= n + 10 for p, n in zip(going_on, before, strict=True)),
                timeout_s=30,
                what="hmi-4 polling on",
            )
        assert [(p.name, p.failed, p.error) for p in going_on] == [(p.name, 0, "") for p in going_on]
        assert {s.info.identity for s in gateway.runtime.sessions} <= {HMI_4}
