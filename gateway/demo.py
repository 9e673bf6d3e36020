"""``ztgate demo``: a whole lab on loopback in one process.

It makes a PKI in a work folder, starts a simulated PLC, a gateway with an example policy (an operator
who may read and write one bounded setpoint during working hours; a vendor who may only read) and one
agent per person, prints what runs where and what to try, and runs until Ctrl-C. ``--walkthrough``
drives the lab with a real pymodbus client instead, prints a table of requests and their outcomes, and
stops; it exits non-zero if any outcome differs from what the policy promises.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from gateway import pki
from gateway.agent import Agent
from gateway.audit import AuditLog
from gateway.config import AgentConfig, AgentListener, TlsFiles
from gateway.server import Gateway
from gateway.sim.modbus import ModbusSim

TRUST_DOMAIN = "plant1.example"
OPERATOR = f"spiffe://{TRUST_DOMAIN}/user/alice"
VENDOR = f"spiffe://{TRUST_DOMAIN}/vendor/acme/eve"
INTRUDER = f"spiffe://{TRUST_DOMAIN}/user/mallory"
ASSET = "plc-1"
SETPOINT = 40

# Ports the demo prefers, so the printed commands stay the same from run to run; taken ports are
# replaced by free ones.
PREFERRED_PORTS = {"plc": 15020, "gateway": 18443, "admin": 19100, "operator": 1502, "vendor": 2502}


def _free(port: int) -> int:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def working_hours(now: datetime) -> str:
    """A shift window that contains ``now``, so the walkthrough's setpoint write is in hours."""
    start = (now.hour - 2) % 24
    return f"{start:02d}:00-{(start + 10) % 24:02d}:00"


def policy_text(plc_port: int, now: datetime, tz: str) -> str:
    return f"""# ztgate demo policy. Reference: docs/policy.md
trust_domain = "{TRUST_DOMAIN}"

[assets.{ASSET}]
protocol = "modbus"
upstream = "127.0.0.1:{plc_port}"   # the simulated PLC; only the gateway talks to it
unit_ids = [1]

[groups]
operators = ["{OPERATOR}"]
vendor-acme = ["spiffe://{TRUST_DOMAIN}/vendor/acme/*"]

[[rules]]
id = "operators-read"
description = "Operators read the process image"
subjects = ["group:operators"]
assets = ["{ASSET}"]
modbus = [{{ fc = [1, 2, 3, 4], address = "0-99" }}]

[[rules]]
id = "operators-setpoint"
description = "Operators adjust the pressure setpoint (holding register {40001 + SETPOINT}) on shift"
subjects = ["group:operators"]
assets = ["{ASSET}"]
modbus = [{{ fc = 6, address = "{SETPOINT}", value = "0-1500" }}]
# The demo centres the shift on the time it starts, so the setpoint write works whenever you try it.
when = {{ days = "mon-sun", hours = "{working_hours(now)}", tz = "{tz}" }}

[[rules]]
id = "vendor-read-only"
description = "The vendor's engineers may look, not touch"
subjects = ["group:vendor-acme"]
assets = ["{ASSET}"]
modbus = [{{ preset = "read-only", address = "0-99" }}]
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
    sim: ModbusSim
    gateway: Gateway
    agents: dict[str, tuple[Agent, int]]
    files: dict[str, pki.IssuedFiles]

    async def stop(self) -> None:
        for agent, _ in self.agents.values():
            await agent.stop()
        await self.gateway.stop()
        await self.sim.stop()


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
    ca = work / "pki"
    sim = ModbusSim("127.0.0.1", _free(PREFERRED_PORTS["plc"]), units=(1,))
    await sim.start()
    now = datetime.now().astimezone()
    policy = work / "policy.toml"
    policy.write_text(policy_text(sim.port, now, _local_tz()))
    audit = AuditLog(
        gateway="demo-gw", file=work / "audit.jsonl", aggregate_reads_s=0.0, flush_interval_s=0.02
    )
    gateway = Gateway(
        name="demo-gw",
        policy=policy,
        tls=TlsFiles(files["gateway"].cert, files["gateway"].key, ca / "ca.pem"),
        listen=("127.0.0.1", _free(PREFERRED_PORTS["gateway"])),
        admin_listen=("127.0.0.1", _free(PREFERRED_PORTS["admin"])),
        audit=audit,
    )
    await gateway.start()
    agents: dict[str, tuple[Agent, int]] = {}
    for who in ("operator", "vendor"):
        agent = Agent(
            AgentConfig(
                source=work / f"agent-{who}.toml",
                tls=TlsFiles(files[who].cert, files[who].key, ca / "ca.pem"),
                listeners=(
                    AgentListener(
                        ("127.0.0.1", _free(PREFERRED_PORTS[who])),
                        ASSET,
                        ("127.0.0.1", gateway.port),
                        "modbus",
                    ),
                ),
                connect_timeout_s=5.0,
            )
        )
        await agent.start()
        agents[who] = (agent, agent.bound[0][1][1])
    return DemoLab(work, sim, gateway, agents, files)


def _ztgate() -> str:
    """How the person running the demo calls ztgate (the venv's script may not be on PATH)."""
    argv0 = sys.argv[0]
    if os.path.basename(argv0) == "ztgate" and shutil.which("ztgate") != os.path.abspath(argv0):
        return shlex.quote(os.path.relpath(argv0))
    return "ztgate"


def print_banner(lab: DemoLab) -> None:
    z = _ztgate()
    work = os.path.relpath(lab.work)
    operator_port = lab.agents["operator"][1]
    vendor_port = lab.agents["vendor"][1]
    policy = lab.gateway.policy
    print(
        f"""
ztgate demo lab is running (work folder: {work}, policy revision {policy.revision})

  simulated PLC  {ASSET:<10} 127.0.0.1:{lab.sim.port}   (pressure setpoint in holding register {SETPOINT})
  gateway                   127.0.0.1:{lab.gateway.port}   (mutual TLS; metrics http://127.0.0.1:{lab.gateway.admin_port}/metrics)
  agent for alice (operator)       127.0.0.1:{operator_port} -> {ASSET}
  agent for eve (vendor acme)      127.0.0.1:{vendor_port} -> {ASSET}
  audit trail                      {work}/audit.jsonl

Try (any Modbus tool works against the agents' ports):
  {z} client modbus --port {operator_port} read holding 0 --count 10     # alice reads
  {z} client modbus --port {operator_port} write holding {SETPOINT} 1200       # allowed: 0-1500, on shift
  {z} client modbus --port {operator_port} write holding {SETPOINT} 2000       # refused: exception 0x03
  {z} client modbus --port {vendor_port} write holding {SETPOINT} 1200       # vendor: exception 0x01
  {z} policy explain {work}/policy.toml --subject {VENDOR} \\
        --asset {ASSET} --fc 6 --address {SETPOINT} --value 1200
  curl -s http://127.0.0.1:{lab.gateway.admin_port}/sessions
  tail -f {work}/audit.jsonl

Ctrl-C stops everything.""",
        flush=True,
    )


# ---------------------------------------------------------------------------------- walkthrough


@dataclass(frozen=True)
class Step:
    who: str  # operator | vendor | intruder
    text: str  # what the request does, in words
    call: str  # pymodbus client method
    args: tuple[Any, ...]
    expect: int | str  # 0 = allowed; a Modbus exception code; "refused" = no session


STEPS = (
    Step("operator", "read holding 0-9 (FC 3)", "read_holding_registers", (0, 10), 0),
    Step("operator", "read input 0-4 (FC 4): tank level, temperature...", "read_input_registers", (0, 5), 0),
    Step("operator", f"write setpoint HR {SETPOINT} = 1200 (FC 6)", "write_register", (SETPOINT, 1200), 0),
    Step("operator", f"write setpoint HR {SETPOINT} = 2000 (FC 6)", "write_register", (SETPOINT, 2000), 3),
    Step("operator", f"write HR {SETPOINT + 1} = 5 (FC 6)", "write_register", (SETPOINT + 1, 5), 2),
    Step("operator", "start the pump: coil 0 = 1 (FC 5)", "write_coil", (0, True), 1),
    Step("vendor", f"read setpoint HR {SETPOINT} (FC 3)", "read_holding_registers", (SETPOINT, 1), 0),
    Step("vendor", f"write setpoint HR {SETPOINT} = 1000 (FC 6)", "write_register", (SETPOINT, 1000), 1),
    Step("vendor", "read device identification (FC 43/14)", "read_device_information", (), 1),
    Step("vendor", "clear the diagnostic counters (FC 8/0A)", "diag_clear_counters", (), 1),
    Step(
        "intruder",
        "read holding 0-9 with a certificate from another CA",
        "read_holding_registers",
        (0, 10),
        "refused",
    ),
)


async def _call(client: Any, step: Step) -> tuple[int | str, str]:
    method = getattr(client, step.call)
    if step.call in ("read_holding_registers", "read_input_registers"):
        result = await method(step.args[0], count=step.args[1], device_id=1)
    elif step.args:
        result = await method(*step.args, device_id=1)
    else:
        result = await method(device_id=1)
    if result.isError():
        return int(result.exception_code), f"exception 0x{result.exception_code:02X}"
    registers = getattr(result, "registers", None)
    return 0, f"ok {registers}" if registers else "ok"


def _decided_by(lab: DemoLab, identity: str | None) -> str:
    """What the gateway's audit trail says about the latest decision for ``identity`` (None: the
    latest refused session, whose certificate proved no identity)."""
    lab.gateway.audit.flush()
    last: dict[str, Any] | None = None
    for line in (lab.work / "audit.jsonl").read_bytes().splitlines():
        event = orjson.loads(line)
        kind = event.get("event")
        if (identity is None and kind == "session_refused") or (
            identity is not None and event.get("identity") == identity and kind == "decision"
        ):
            last = event
    if last is None:
        return ""
    if last["event"] == "session_refused":
        return str(last["reason"])
    rule = str(last.get("rule") or "default deny")
    return rule if last.get("decision") == "allow" else f"{rule}: {last.get('reason')}"


async def walkthrough(lab: DemoLab) -> int:
    import logging

    from pymodbus.client import AsyncModbusTcpClient, AsyncModbusTlsClient

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # the table says what happened

    from gateway.tls import client_context

    clients: dict[str, Any] = {}
    for who in ("operator", "vendor"):
        client = AsyncModbusTcpClient("127.0.0.1", port=lab.agents[who][1], timeout=3, retries=0)
        await client.connect()
        clients[who] = client
    intruder = lab.files["intruder"]
    clients["intruder"] = AsyncModbusTlsClient(
        "127.0.0.1",
        port=lab.gateway.port,
        # Mallory trusts the gateway (its CA certificate is no secret) but holds another CA's certificate.
        sslctx=client_context(intruder.cert, intruder.key, lab.work / "pki" / "ca.pem", server_name=ASSET),
        timeout=2,
        retries=0,
        reconnect_delay=0,
    )
    identities = {"operator": OPERATOR, "vendor": VENDOR}
    names = {"operator": "alice (operator)", "vendor": "eve (vendor)", "intruder": "mallory (intruder)"}
    rows: list[tuple[str, str, str, str]] = []
    as_promised: list[bool] = []
    from pymodbus.exceptions import ModbusException

    for step in STEPS:
        client = clients[step.who]
        outcome: int | str
        if step.who == "intruder":
            connected = await client.connect()
            try:
                outcome, text = await _call(client, step) if connected else ("refused", "")
            except ModbusException:
                outcome = "refused"
            text = "session refused (TLS)"
        else:
            outcome, text = await _call(client, step)
        if step.who == "intruder":
            # The gateway audits a failed handshake when its side of it ends, which may be a moment
            # after the client gave up.
            for _ in range(100):
                if lab.gateway.runtime.metrics.refused_sessions:
                    break
                await asyncio.sleep(0.01)
        decided = _decided_by(lab, None if step.who == "intruder" else identities[step.who])
        rows.append((names[step.who], step.text, text, decided))
        as_promised.append(outcome == step.expect)
    for client in clients.values():
        client.close()

    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    header = ("who", "request", "outcome", "decided by (from the audit trail)")
    print()
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row, ok in zip(rows, as_promised, strict=True):
        mark = "" if ok else "   <-- unexpected"
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + mark)
    denied = [
        line for line in (lab.work / "audit.jsonl").read_bytes().splitlines() if b'"decision":"deny"' in line
    ]
    if denied:
        print("\nThe audit record of the refused setpoint write:")
        for line in denied:
            event = orjson.loads(line)
            if event.get("fc") == 6 and event.get("values") == [2000]:
                print(orjson.dumps(event, option=orjson.OPT_INDENT_2).decode())
                break
    failures = as_promised.count(False)
    print(f"\n{len(rows) - failures} of {len(rows)} outcomes as the policy says.")
    print(f"Audit trail: {lab.work}/audit.jsonl")
    return 1 if failures else 0


# ------------------------------------------------------------------------------------------ CLI


async def _main(args: argparse.Namespace) -> int:
    lab = await start_lab(args.dir)
    try:
        if args.walkthrough:
            return await walkthrough(lab)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        print_banner(lab)  # only now: it tells the reader Ctrl-C is safe
        await stop.wait()
        print("\nstopping the lab", flush=True)
        return 0
    finally:
        await lab.stop()


def run(args: argparse.Namespace) -> int:
    import uvloop

    started = time.monotonic()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        status = runner.run(_main(args))
    if args.walkthrough:
        print(f"(walkthrough took {time.monotonic() - started:.1f} s)")
    return status


def configure(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the demo lab on loopback",
        description="Start a demo lab on loopback: PKI, simulated PLC, gateway, agents. Ctrl-C stops it.",
    )
    parser.add_argument("--dir", type=Path, default=Path("ztgate-demo"), help="work folder (recreated)")
    parser.add_argument(
        "--walkthrough",
        action="store_true",
        help="drive the lab with a Modbus client, print the outcomes, stop",
    )
    parser.set_defaults(func=run)
