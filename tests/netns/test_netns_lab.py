"""The plant as network namespaces (tests/netns/lab.sh): IT, HMI, GW and PLC. The PLC is reachable only
from the gateway's namespace; a scan from IT finds it cloaked, and the gateway's overlay port tells a
client without a certificate nothing; the HMI reads the PLC through its agent and the gateway.

Needs root (namespaces, veth pairs, nftables), iproute2, nftables and nmap: ``./run test`` as root
installs them. Every namespace is deleted whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.harness import GATEWAY, HMI, Pki, policy_text
from tests.processes import REPO_ROOT, GatewayProcess, SimProcess

LAB_SCRIPT = Path(__file__).with_name("lab.sh")
GATEWAY_ON_IT, GATEWAY_ON_HMI, PLC = "10.77.1.1", "10.77.2.1", "10.77.3.2"
RULES = f"""
[[rules]]
id = "hmi-reads"
subjects = ["{HMI}"]
assets = ["plc-1"]
modbus = [{{ fc = [3], address = "0-99" }}]
"""


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root (./run test runs as root on CI)"
    for tool in ("ip", "nft", "nmap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (./run test installs iproute2, nftables and nmap)"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")


@dataclass(frozen=True)
class Namespaces:
    prefix: str

    def exec(self, name: str) -> list[str]:
        return ["ip", "netns", "exec", f"{self.prefix}-{name}"]


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    prefix = f"zt{os.getpid() % 10000:04d}"  # veth names are at most 15 characters
    lab = Namespaces(prefix)
    try:
        subprocess.run([str(LAB_SCRIPT), "up", prefix], check=True, capture_output=True, timeout=30)
        yield lab
    finally:
        subprocess.run([str(LAB_SCRIPT), "down", prefix], check=False, capture_output=True, timeout=30)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    assert prefix not in listed, "a namespace of the lab was left behind"


@pytest.fixture
async def plant(namespaces: Namespaces, pki: Pki, tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    """The Modbus simulator in PLC, the gateway in GW (its overlay on every GW address), an agent in HMI."""
    sim = SimProcess("modbus", listen=f"{PLC}:502", prefix=namespaces.exec("plc"))
    policy = policy_text(502, RULES).replace("127.0.0.1:502", f"{PLC}:502")
    gateway = GatewayProcess(pki, tmp_path, policy, listen="0.0.0.0:8443", prefix=namespaces.exec("gw"))
    agent_config = tmp_path / "agent.toml"
    hmi = pki.clients["hmi"]
    agent_config.write_text(
        f'[agent]\ngateway = "{GATEWAY_ON_HMI}:8443"\ngateway_id = "{GATEWAY}"\n'
        f'[tls]\ncert = "{hmi.cert}"\nkey = "{hmi.key}"\nca = "{pki.ca}"\n'
        '[[listeners]]\nlisten = "127.0.0.1:1502"\nasset = "plc-1"\nprotocol = "modbus"\n'
    )
    agent: asyncio.subprocess.Process | None = None
    try:
        await sim.start()
        await gateway.start()
        agent = await asyncio.create_subprocess_exec(
            *namespaces.exec("hmi"), sys.executable, "-m", "gateway", "agent", "--config", str(agent_config),
            cwd=REPO_ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        yield gateway
    finally:
        if agent is not None and agent.returncode is None:
            agent.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await agent.wait()
            if agent.returncode is None:
                agent.kill()
                await agent.wait()
        await gateway.stop()
        await sim.stop()


async def _run(*command: str, timeout_s: float = 60.0) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *command, cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        async with asyncio.timeout(timeout_s):
            out, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode or 0, out.decode(errors="replace")


def _ports(xml: str) -> dict[int, ET.Element]:
    return {int(port.get("portid", "0")): port for port in ET.fromstring(xml).iter("port")}


async def test_the_plc_is_cloaked_and_the_hmi_gets_through(
    namespaces: Namespaces, plant: GatewayProcess
) -> None:
    # The HMI, in its own namespace, reads the PLC through its agent and the gateway.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        status, out = await _run(
            *namespaces.exec("hmi"), sys.executable, "-m", "gateway", "client", "modbus", "--port", "1502",
            "read", "holding", "0", "--count", "2",
        )  # fmt: skip
        if status == 0:
            break
        assert loop.time() < deadline, out + plant.log_text()[-3000:]  # the agent may still be starting
        await asyncio.sleep(0.2)
    assert "exception" not in out.lower(), out

    # From IT: every PLC port is filtered (no route through the gateway's namespace), none open.
    scan = ["nmap", "-n", "-Pn", "-sT", "-T5", "--max-retries", "0", "--max-rtt-timeout", "50ms", "-oX", "-"]
    status, xml = await _run(*namespaces.exec("it"), *scan, "-p", "1-1024,2222,4840,8443,44818", PLC)
    assert status == 0, xml
    plc_ports = _ports(xml)
    assert not [p for p, port in plc_ports.items() if port.find("state").get("state") == "open"]  # type: ignore[union-attr]

    # The same scan from the gateway's namespace finds the PLC: the scan can see an open port.
    status, xml = await _run(*namespaces.exec("gw"), *scan, "-p", "502", PLC)
    assert _ports(xml)[502].find("state").get("state") == "open", xml  # type: ignore[union-attr]

    # The gateway itself, from IT: only the overlay port answers, and service detection gets no banner:
    # without a client certificate the TLS handshake ends before a single application byte.
    status, xml = await _run(
        *namespaces.exec("it"), *scan, "-sV", "-p", "22,80,443,502,8443,9100,44818", GATEWAY_ON_IT
    )
    assert status == 0, xml
    ports = _ports(xml)
    open_ports = {p for p, port in ports.items() if port.find("state").get("state") == "open"}  # type: ignore[union-attr]
    assert open_ports == {8443}, xml
    service = ports[8443].find("service")
    assert service is None or not any(service.get(key) for key in ("product", "version", "extrainfo")), xml
    assert "modbus" not in ET.tostring(ports[8443], encoding="unicode").lower()
