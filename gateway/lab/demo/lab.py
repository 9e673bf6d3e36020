"""The demo lab: a PKI in a work folder, simulated PLCs (Modbus TCP, EtherNet/IP and OPC UA), a gateway
with an example policy and one agent per person, all on loopback in one process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import socket
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from gateway import pki
from gateway.agent import Agent
from gateway.audit import AuditLog
from gateway.config import AgentConfig, AgentListener, TlsFiles
from gateway.lab.sim.enip import EnipSim
from gateway.lab.sim.modbus import ModbusSim
from gateway.lab.sim.opcua import NAMESPACE_URI, OpcUaSim
from gateway.server import Gateway

TRUST_DOMAIN = "plant1.example"
OPERATOR = f"spiffe://{TRUST_DOMAIN}/user/alice"
VENDOR = f"spiffe://{TRUST_DOMAIN}/vendor/acme/eve"
INTRUDER = f"spiffe://{TRUST_DOMAIN}/user/mallory"
MODBUS_ASSET = "plc-1"
ENIP_ASSET = "plc-2"
OPCUA_ASSET = "opc-1"
TANK = "Plant.Line1.Tank1"  # the OPC UA PLC's tank object: string node ids in its plant namespace
SETPOINT = 40  # the Modbus PLC's pressure setpoint: holding register 40 (40041)

# Ports the demo prefers, so the printed commands stay the same from run to run; taken ports are
# replaced by free ones.
PREFERRED_PORTS = {
    "modbus-plc": 15020,
    "enip-plc": 44820,
    "opcua-plc": 48400,
    "gateway": 18443,
    "admin": 19100,
    ("operator", MODBUS_ASSET): 1502,
    ("vendor", MODBUS_ASSET): 2502,
    ("operator", ENIP_ASSET): 44818,
    ("vendor", ENIP_ASSET): 44819,
    ("operator", OPCUA_ASSET): 4840,
    ("vendor", OPCUA_ASSET): 4841,
}
ASSETS = ((MODBUS_ASSET, "modbus"), (ENIP_ASSET, "enip"), (OPCUA_ASSET, "opcua"))


def _free(port: int) -> int:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def working_hours(now: datetime) -> str:
    """A shift window that contains ``now``, so the walkthrough's setpoint writes are in hours."""
    start = (now.hour - 2) % 24
    return f"{start:02d}:00-{(start + 10) % 24:02d}:00"


def policy_text(modbus_port: int, enip_port: int, opcua_port: int, now: datetime, tz: str) -> str:
    shift = f'{{ days = "mon-sun", hours = "{working_hours(now)}", tz = "{tz}" }}'
    return f"""# ztgate demo policy. Reference: docs/policy.md
trust_domain = "{TRUST_DOMAIN}"

[assets.{MODBUS_ASSET}]
protocol = "modbus"
upstream = "127.0.0.1:{modbus_port}"   # the simulated Modbus PLC; only the gateway talks to it
unit_ids = [1]

[assets.{ENIP_ASSET}]
protocol = "enip"
upstream = "127.0.0.1:{enip_port}"     # the simulated Logix controller in slot 0
route = "1/0"
identity = {{ device_type = 0x0E, product_code = 55, revision = "20.11", product_name = "Line 1 PLC" }}

[assets.{OPCUA_ASSET}]
protocol = "opcua"
upstream = "opc.tcp://127.0.0.1:{opcua_port}/"   # the simulated OPC UA PLC (security None on loopback)

[groups]
operators = ["{OPERATOR}"]
vendor-acme = ["spiffe://{TRUST_DOMAIN}/vendor/acme/*"]

[[rules]]
id = "operators-read"
description = "Operators read the process image"
subjects = ["group:operators"]
assets = ["{MODBUS_ASSET}", "{ENIP_ASSET}", "{OPCUA_ASSET}"]
modbus = [{{ fc = [1, 2, 3, 4], address = "0-99" }}]
enip = [{{ preset = "read-only" }}]
opcua = [{{ preset = "read-only" }}]

[[rules]]
id = "operators-setpoint"
description = "Operators adjust the setpoints (Modbus HR 40 = 40041; the Logix tag Setpoint) on shift"
subjects = ["group:operators"]
assets = ["{MODBUS_ASSET}", "{ENIP_ASSET}", "{OPCUA_ASSET}"]
modbus = [{{ fc = 6, address = "{SETPOINT}", value = "0-1500" }}]
enip = [{{ service = "write_tag", tag = "Setpoint", value = "0..1500" }}]
opcua = [
  {{ service = "Write", namespace = "{NAMESPACE_URI}", node = "{TANK}.Setpoint", value = "0..1500" }},
  {{ service = "Call", namespace = "{NAMESPACE_URI}", method = {{ object = "{TANK}",
     method = ["{TANK}.Start", "{TANK}.Stop", "{TANK}.Acknowledge"] }} }},
]
# The demo centres the shift on the time it starts, so the setpoint writes work whenever you try them.
when = {shift}

[[rules]]
id = "vendor-read-only"
description = "The vendor's engineers may look, not touch"
subjects = ["group:vendor-acme"]
assets = ["{MODBUS_ASSET}", "{ENIP_ASSET}", "{OPCUA_ASSET}"]
modbus = [{{ preset = "read-only", address = "0-99" }}]
enip = [{{ preset = "read-only" }}]
opcua = [{{ preset = "read-only", namespace = "{NAMESPACE_URI}", node = ["Plant", "Plant.*"] }}]

[[rules]]
id = "nobody-resets"
description = "No one resets a controller through the gateway"
effect = "deny"
subjects = ["spiffe://{TRUST_DOMAIN}/*"]
assets = ["{ENIP_ASSET}"]
enip = [{{ service = ["reset", "start", "stop"] }}]
"""


def _local_tz() -> str:
    key = os.environ.get("TZ")
    if key and "/" in key:
        return key
    with contextlib.suppress(OSError):
        link = os.readlink("/etc/localtime")
        if "zoneinfo/" in link:
            return link.split("zoneinfo/", 1)[1]
    return "UTC"


@dataclass
class DemoLab:
    work: Path
    modbus_plc: ModbusSim
    enip_plc: EnipSim
    opcua_plc: OpcUaSim
    gateway: Gateway
    files: dict[str, pki.IssuedFiles]
    agents: list[Agent] = field(default_factory=list)
    ports: dict[tuple[str, str], int] = field(default_factory=dict)  # (who, asset) -> local port

    async def stop(self) -> None:
        for agent in self.agents:
            await agent.stop()
        await self.gateway.stop()
        await self.opcua_plc.stop()
        await self.enip_plc.stop()
        await self.modbus_plc.stop()


def make_pki(work: Path) -> dict[str, pki.IssuedFiles]:
    """A fresh work folder with the lab's CA and certificates."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ca = work / "pki"
    pki.init_ca(ca, TRUST_DOMAIN)
    files = {
        "gateway": pki.issue(ca, f"spiffe://{TRUST_DOMAIN}/gateway/demo/gw-1", dns_names=["localhost"]),
        "operator": pki.issue(ca, OPERATOR),
        "vendor": pki.issue(ca, VENDOR),
    }
    # An intruder with a certificate from a CA the gateway does not trust.
    pki.init_ca(work / "other-ca", TRUST_DOMAIN)
    files["intruder"] = pki.issue(work / "other-ca", INTRUDER)
    return files


async def start_lab(work: Path) -> DemoLab:
    files = await asyncio.to_thread(make_pki, work)
    ca = work / "pki" / "ca.pem"
    modbus_plc = ModbusSim("127.0.0.1", _free(PREFERRED_PORTS["modbus-plc"]), units=(1,))
    await modbus_plc.start()
    enip_plc = EnipSim("127.0.0.1", _free(PREFERRED_PORTS["enip-plc"]))
    await enip_plc.start()
    opcua_plc = OpcUaSim("127.0.0.1", _free(PREFERRED_PORTS["opcua-plc"]))
    await opcua_plc.start()
    policy = work / "policy.toml"
    now = datetime.now().astimezone()
    policy.write_text(policy_text(modbus_plc.port, enip_plc.port, opcua_plc.port, now, _local_tz()))
    audit = AuditLog(
        gateway="demo-gw", file=work / "audit.jsonl", aggregate_reads_s=0.0, flush_interval_s=0.02
    )
    gateway = Gateway(
        name="demo-gw",
        policy=policy,
        tls=TlsFiles(files["gateway"].cert, files["gateway"].key, ca),
        listen=("127.0.0.1", _free(PREFERRED_PORTS["gateway"])),
        admin_listen=("127.0.0.1", _free(PREFERRED_PORTS["admin"])),
        audit=audit,
    )
    await gateway.start()
    lab = DemoLab(work, modbus_plc, enip_plc, opcua_plc, gateway, files)
    for who in ("operator", "vendor"):
        listeners = tuple(
            AgentListener(
                ("127.0.0.1", _free(PREFERRED_PORTS[(who, asset)])),
                asset,
                ("127.0.0.1", gateway.port),
                protocol,
            )
            for asset, protocol in ASSETS
        )
        agent = Agent(
            AgentConfig(
                source=work / f"agent-{who}.toml",
                tls=TlsFiles(files[who].cert, files[who].key, ca),
                listeners=listeners,
                connect_timeout_s=5.0,
            )
        )
        await agent.start()
        lab.agents.append(agent)
        for listener, (_, port) in agent.bound:
            lab.ports[(who, listener.asset)] = port
    return lab


def _ztgate() -> str:
    """How the person running the demo calls ztgate (the venv's script may not be on PATH)."""
    argv0 = sys.argv[0]
    if os.path.basename(argv0) == "ztgate" and shutil.which("ztgate") != os.path.abspath(argv0):
        return shlex.quote(os.path.relpath(argv0))
    return "ztgate"


def print_banner(lab: DemoLab) -> None:
    z = _ztgate()
    work = os.path.relpath(lab.work)
    ops_modbus, ven_modbus = lab.ports[("operator", MODBUS_ASSET)], lab.ports[("vendor", MODBUS_ASSET)]
    ops_enip, ven_enip = lab.ports[("operator", ENIP_ASSET)], lab.ports[("vendor", ENIP_ASSET)]
    ops_ua, ven_ua = lab.ports[("operator", OPCUA_ASSET)], lab.ports[("vendor", OPCUA_ASSET)]
    node = f"ns={lab.opcua_plc.namespace_index};s={TANK}"
    admin = f"http://127.0.0.1:{lab.gateway.admin_port}"
    print(
        f"""
ztgate demo lab is running (work folder: {work}, policy revision {lab.gateway.policy.revision})

  Modbus PLC        {MODBUS_ASSET}   127.0.0.1:{lab.modbus_plc.port}   (setpoint: holding register {SETPOINT})
  EtherNet/IP PLC   {ENIP_ASSET}   127.0.0.1:{lab.enip_plc.port}   (Logix: Setpoint, Recipe, Tank1_Level...)
  OPC UA PLC        {OPCUA_ASSET}   127.0.0.1:{lab.opcua_plc.port}   ({node}.Level, .Setpoint, .Start()...)
  gateway                  127.0.0.1:{lab.gateway.port}   (mutual TLS; metrics {admin}/metrics)
  alice's agent (operator)   Modbus :{ops_modbus}   EtherNet/IP :{ops_enip}   OPC UA :{ops_ua}   (127.0.0.1)
  eve's agent (vendor acme)  Modbus :{ven_modbus}   EtherNet/IP :{ven_enip}   OPC UA :{ven_ua}   (127.0.0.1)
  audit trail                  {work}/audit.jsonl

Try (any Modbus, Logix or OPC UA tool works against the agents' ports):
  {z} client modbus --port {ops_modbus} read holding 0 --count 10       # alice reads
  {z} client modbus --port {ops_modbus} write holding {SETPOINT} 2000         # refused: exception 0x03
  {z} client modbus --port {ven_modbus} write holding {SETPOINT} 1200         # eve: exception 0x01
  {z} client enip --port {ops_enip} read Recipe --count 10              # alice reads a Logix array
  {z} client enip --port {ops_enip} write Setpoint 1200                 # allowed: 0..1500, on shift
  {z} client enip --port {ven_enip} write Setpoint 1200                 # eve: privilege violation 0x0F
  uaread -u opc.tcp://127.0.0.1:{ops_ua} -n "{node}.Level"               # asyncua's tools, from the venv
  uawrite -u opc.tcp://127.0.0.1:{ops_ua} -n "{node}.Setpoint" -t double 2000   # BadUserAccessDenied
  uacall -u opc.tcp://127.0.0.1:{ven_ua} -n "{node}" -m "{node}.Stop"      # eve may not call methods
  {z} policy explain {work}/policy.toml --subject {VENDOR} \\
        --asset {MODBUS_ASSET} --fc 6 --address {SETPOINT} --value 1200
  curl -s {admin}/sessions
  tail -f {work}/audit.jsonl

Ctrl-C stops everything.""",
        flush=True,
    )
