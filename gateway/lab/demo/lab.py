"""The demo lab: a center in a work folder, simulated PLCs (Modbus TCP, EtherNet/IP and OPC UA), a gateway
and one agent per person, all on loopback in one process.

The center is made with ``center init``; the example policy is pushed to it; the gateway, alice (an
operator), eve (a vendor) and bob (an approver) enroll with one-time tokens, and the gateway takes its
policy from the center as a signed bundle. Only mallory, the intruder, has a certificate from another CA.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shlex
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from gateway import pki
from gateway.agent import Agent
from gateway.audit import AuditLog
from gateway.center.client import CenterClient
from gateway.center.config import load_center_config
from gateway.center.service import Center
from gateway.center.setup import init_center
from gateway.config import AgentConfig, AgentListener, CenterSettings, TlsFiles
from gateway.credentials import Credentials
from gateway.enroll import enroll
from gateway.lab.sim.enip import EnipSim
from gateway.lab.sim.modbus import ModbusSim
from gateway.lab.sim.opcua import NAMESPACE_URI, OpcUaSim
from gateway.server import Gateway

TRUST_DOMAIN = "plant1.example"
OPERATOR = f"spiffe://{TRUST_DOMAIN}/user/alice"
VENDOR = f"spiffe://{TRUST_DOMAIN}/vendor/acme/eve"
INTRUDER = f"spiffe://{TRUST_DOMAIN}/user/mallory"
APPROVER = f"spiffe://{TRUST_DOMAIN}/user/bob"
GATEWAY = f"spiffe://{TRUST_DOMAIN}/gateway/demo/gw-1"
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
    "center": 18600,
    ("operator", MODBUS_ASSET): 1502,
    ("vendor", MODBUS_ASSET): 2502,
    ("operator", ENIP_ASSET): 44818,
    ("vendor", ENIP_ASSET): 44819,
    ("operator", OPCUA_ASSET): 4840,
    ("vendor", OPCUA_ASSET): 4841,
}
ASSETS = ((MODBUS_ASSET, "modbus"), (ENIP_ASSET, "enip"), (OPCUA_ASSET, "opcua"))


# Held from the first port probe until every listener is bound: two demos started together (the tests run
# them side by side) would otherwise both find a preferred port free and one of them fail to bind it.
PORTS_LOCK = Path(tempfile.gettempdir()) / "ztgate-demo-ports.lock"
PORTS_LOCK_WAIT_S = 60.0  # a demo starts in seconds; past this the lock's holder is stuck, not starting
PORTS_LOCK_POLL_S = 0.05


@contextlib.asynccontextmanager
async def _ports_held() -> AsyncIterator[None]:
    fd = os.open(PORTS_LOCK, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        deadline_s = time.monotonic() + PORTS_LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline_s:
                    stuck = f"{PORTS_LOCK}: held by a demo that does not finish starting; going on"
                    print(stuck, file=sys.stderr)
                    break
                await asyncio.sleep(PORTS_LOCK_POLL_S)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


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
on_stale = "static"   # keeps the last verified policy when the center is away too long (the others close)

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

# What the vendor may ask for as a just-in-time grant (ztgate access request; docs/access.md).
[vendor_access]
subjects = ["group:vendor-acme"]
assets = ["{MODBUS_ASSET}"]
max_window_s = 14400
approvers = 1
modbus = [
  {{ preset = "read-only", address = "0-99" }},
  {{ fc = [6, 16], address = "{SETPOINT}-{SETPOINT + 9}", value = "0-1500" }},
]

# Promises the site wrote down: every revision (ztgate policy check, center policy push) must keep them.
[[tests]]
name = "no vendor may ever write coils 0-99 on {MODBUS_ASSET}"
subject = "{VENDOR}"
asset = "{MODBUS_ASSET}"
request = {{ fc = 15, address = 0, count = 100, value = [1] }}
expect = "deny"

[[tests]]
name = "operators can always read {MODBUS_ASSET}"
subject = "{OPERATOR}"
asset = "{MODBUS_ASSET}"
request = {{ fc = 3, address = 0, count = 10 }}
expect = "allow"
rule = "operators-read"

[[tests]]
name = "nobody resets {ENIP_ASSET}"
subject = "{OPERATOR}"
asset = "{ENIP_ASSET}"
request = {{ service = "reset", class = "0x01", instance = 1 }}
expect = "deny"
rule = "nobody-resets"

[[tests]]
name = "operators can always read the tank level on {OPCUA_ASSET}"
subject = "{OPERATOR}"
asset = "{OPCUA_ASSET}"
request = {{ service = "Read", node = "nsu={NAMESPACE_URI};s={TANK}.Level" }}
expect = "allow"
rule = "operators-read"

[[tests]]
name = "the vendor cannot write the setpoint on {OPCUA_ASSET}"
subject = "{VENDOR}"
asset = "{OPCUA_ASSET}"
request = {{ service = "Write", node = "nsu={NAMESPACE_URI};s={TANK}.Setpoint", ua_value = ["1200"] }}
expect = "deny"
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
    center: Center
    admin: Credentials
    modbus_plc: ModbusSim
    enip_plc: EnipSim
    opcua_plc: OpcUaSim
    gateway: Gateway
    files: dict[str, TlsFiles]  # operator, vendor (enrolled), intruder (another CA)
    enrolled: list[str] = field(default_factory=list)  # what enrollment printed, for the walkthrough
    agents: list[Agent] = field(default_factory=list)
    ports: dict[tuple[str, str], int] = field(default_factory=dict)  # (who, asset) -> local port

    @property
    def ca(self) -> Path:
        return self.admin.tls.ca

    async def stop_center(self) -> None:
        await self.center.stop()

    async def start_center(self) -> None:
        """The center again, from its folder (same port, store and keys)."""
        self.center = Center(self.center.config)
        await self.center.start()

    async def push(self, policy: str, comment: str) -> int:
        async with CenterClient.for_credentials(self.admin) as client:
            answer = await client.call("POST", "/v1/policy", {"policy": policy, "comment": comment})
        return int(answer["revision"])

    async def stop(self) -> None:
        for agent in self.agents:
            await agent.stop()
        await self.gateway.stop()
        await self.center.stop()
        await self.opcua_plc.stop()
        await self.enip_plc.stop()
        await self.modbus_plc.stop()


def _intruder(work: Path) -> TlsFiles:
    """Mallory: a certificate from a CA the gateway does not trust."""
    pki.init_ca(work / "other-ca", TRUST_DOMAIN)
    files = pki.issue(work / "other-ca", INTRUDER)
    return TlsFiles(files.cert, files.key, work / "other-ca" / "ca.pem")


def _clear(work: Path) -> None:
    if work.exists():
        shutil.rmtree(work)


async def _start_center(work: Path) -> tuple[Center, Credentials]:
    await asyncio.to_thread(_clear, work)
    port = _free(PREFERRED_PORTS["center"])
    config, admin = await init_center(work / "center", TRUST_DOMAIN, listen=f"127.0.0.1:{port}")
    # Heartbeats every second, so that the demo's staleness moves visibly.
    text = config.source.read_text().replace('keys = "keys"\n', 'keys = "keys"\nheartbeat_s = 1\n')
    config.source.write_text(text)
    center = Center(load_center_config(config.source))
    await center.start()
    return center, admin


async def _enroll(
    admin: Credentials, url: str, role: str, identity: str, folder: Path
) -> tuple[Credentials, str]:
    async with CenterClient.for_credentials(admin) as client:
        token = await client.call("POST", "/v1/tokens", {"role": role, "id": identity, "ttl_s": 600})
    credentials = await enroll(url, token["token"], token["fingerprint"], folder)
    line = (
        f"token create --role {role} --id {identity}  ->  ztgate enroll --token {token['token'][:12]}... "
        f"--fingerprint {token['fingerprint'][:19]}... --dir {folder.parent.name}/{folder.name}"
    )
    return credentials, line


async def start_lab(work: Path, *, max_staleness_s: float = 86400.0) -> DemoLab:
    async with _ports_held():
        return await _start_lab(work, max_staleness_s)


async def _start_lab(work: Path, max_staleness_s: float) -> DemoLab:
    center, admin = await _start_center(work)
    url = center.config.url
    modbus_plc = ModbusSim("127.0.0.1", _free(PREFERRED_PORTS["modbus-plc"]), units=(1,))
    await modbus_plc.start()
    enip_plc = EnipSim("127.0.0.1", _free(PREFERRED_PORTS["enip-plc"]))
    await enip_plc.start()
    opcua_plc = OpcUaSim("127.0.0.1", _free(PREFERRED_PORTS["opcua-plc"]))
    await opcua_plc.start()
    policy = work / "policy.toml"
    now = datetime.now().astimezone()
    policy.write_text(policy_text(modbus_plc.port, enip_plc.port, opcua_plc.port, now, _local_tz()))
    async with CenterClient.for_credentials(admin) as client:
        await client.call("POST", "/v1/policy", {"policy": policy.read_text(), "comment": "the demo policy"})
    gateway_credentials, gw_line = await _enroll(admin, url, "gateway", GATEWAY, work / "gw-1")
    operator, op_line = await _enroll(admin, url, "user", OPERATOR, work / "alice")
    vendor, ven_line = await _enroll(admin, url, "vendor", VENDOR, work / "eve")
    _, bob_line = await _enroll(admin, url, "approver", APPROVER, work / "bob")
    audit = AuditLog(
        gateway="demo-gw", file=work / "audit.jsonl", aggregate_reads_s=0.0, flush_interval_s=0.02
    )
    settings = CenterSettings(gateway_credentials.directory, max_staleness_s=max_staleness_s)
    gateway = Gateway(
        name="demo-gw",
        tls=settings.tls,
        center=settings,
        listen=("127.0.0.1", _free(PREFERRED_PORTS["gateway"])),
        admin_listen=("127.0.0.1", _free(PREFERRED_PORTS["admin"])),
        audit=audit,
    )
    await gateway.start()
    files = {
        "operator": operator.tls,
        "vendor": vendor.tls,
        "intruder": await asyncio.to_thread(_intruder, work),
    }
    lab = DemoLab(
        work,
        center,
        admin,
        modbus_plc,
        enip_plc,
        opcua_plc,
        gateway,
        files,
        [gw_line, op_line, ven_line, bob_line],
    )
    for who in ("operator", "vendor"):
        listeners = tuple(
            AgentListener(
                ("127.0.0.1", _free(PREFERRED_PORTS[(who, asset)])),
                asset,
                ("127.0.0.1", gateway.port),
                protocol,
                GATEWAY,
            )
            for asset, protocol in ASSETS
        )
        agent = Agent(
            AgentConfig(
                source=work / f"agent-{who}.toml",
                tls=files[who],
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
    revision = lab.gateway.policy.revision
    print(
        f"""
ztgate demo lab is running (work folder: {work}; policy revision {revision}, from the center)

  center                   {lab.center.config.url}   (folder {work}/center; admin credentials in admin/)
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
  export ZTGATE_CREDENTIALS={work}/center/admin
  {z} center policy log                                          # the center's revisions
  {z} center policy push {work}/policy.toml --comment "my change"   # edit it first: every gateway follows
  curl -s {admin}/readyz                                       # the center link, staleness, certificate
  curl -s {admin}/sessions
  tail -f {work}/audit.jsonl

Ctrl-C stops everything.""",
        flush=True,
    )
