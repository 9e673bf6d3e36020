"""``python -m bench locks``: how long a lock takes to cut every matching live session (issue 14).

Real processes on loopback: a center (``ztgate center serve``, SQLite), three simulated PLCs
(``ztgate sim modbus|enip|opcua --static``), two gateways (``ztgate gateway`` with a ``[center]``)
and four agents (``ztgate agent``), two per gateway: ``agent/vendor/gw-N`` (what the lock targets,
``prefix=spiffe://TD/agent/vendor/*``) and ``agent/plant/gw-N`` (spared). Behind every agent this
process keeps 25 sessions polling: 10 pymodbus, 8 asyncua and 7 pycomm3 clients, 100 sessions in all,
50 of them matching.

One run: ``POST /v1/locks`` returns; the time measured runs from that moment to the ``time`` of the
last of the 50 ``session_cut`` records in the two gateways' audit files (the moment each gateway
closed the session). The lock is then removed, the vendor clients reconnect and poll again, and the
next run starts. p50 and p99 over the runs are printed and written to
``bench/results/raw/locks-<time>.json``, with the spared clients' requests and failures, which must be
0. docs/performance.md keeps the figures by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.center import _percentile
from bench.loadgen import REPO
from bench.procs import Supervisor, free_port, wait_listening

TD = "bench.example"
PREFIX = f"spiffe://{TD}/agent/vendor/*"
PLANT_NS = "urn:ztgate:sim:plant"
PER_AGENT = {"modbus": 10, "opcua": 8, "enip": 7}
ASSETS = {"modbus": "plc-1", "enip": "plc-2", "opcua": "opc-1"}
POLL_S = 0.05


def _policy(ports: dict[str, int]) -> str:
    return f"""trust_domain = "{TD}"

[assets.plc-1]
protocol = "modbus"
upstream = "127.0.0.1:{ports["modbus"]}"
unit_ids = [1]

[assets.plc-2]
protocol = "enip"
upstream = "127.0.0.1:{ports["enip"]}"
route = "1/0"
identity = {{ device_type = 0x0E, product_code = 55, revision = "20.11", product_name = "Line 1 PLC" }}

[assets.opc-1]
protocol = "opcua"
upstream = "opc.tcp://127.0.0.1:{ports["opcua"]}/"

[[rules]]
id = "agents-read"
subjects = ["spiffe://{TD}/agent/*"]
assets = ["plc-1", "plc-2", "opc-1"]
modbus = [{{ fc = [3], address = "0-99" }}]
enip = [{{ preset = "read-only" }}]
opcua = [{{ preset = "read-only" }}]
"""


@dataclass
class Client:
    """One polling client: reconnects whenever ``reopen`` is set; counts the requests answered with
    data (``ok``) and every request that was not (``failed``: an error answer, an exception, a
    connection lost or refused)."""

    protocol: str
    port: int
    vendor: bool
    ok: int = 0
    failed: int = 0
    connected: bool = False
    stop: threading.Event = field(default_factory=threading.Event)


async def _modbus(client: Client, reopen: asyncio.Event) -> None:
    from pymodbus.client import AsyncModbusTcpClient

    while not client.stop.is_set():
        session = AsyncModbusTcpClient("127.0.0.1", port=client.port, timeout=3, retries=0, reconnect_delay=0)
        try:
            if await session.connect():
                client.connected = True
                while not client.stop.is_set():
                    if (await session.read_holding_registers(1, count=1, device_id=1)).isError():
                        break
                    client.ok += 1
                    await asyncio.sleep(POLL_S)
        except Exception:  # the connection went: the request in flight failed
            pass
        finally:
            session.close()
        await _after_failure(client, reopen)


async def _opcua(client: Client, reopen: asyncio.Event) -> None:
    from asyncua import Client as UaClient
    from asyncua import ua

    while not client.stop.is_set():
        try:
            async with UaClient(f"opc.tcp://127.0.0.1:{client.port}/", timeout=3) as session:
                ns = await session.get_namespace_index(PLANT_NS)
                node = session.get_node(ua.NodeId("Plant.Line1.Tank1.Level", ns))
                client.connected = True
                while not client.stop.is_set():
                    await node.read_value()
                    client.ok += 1
                    await asyncio.sleep(POLL_S)
        except Exception:
            pass
        await _after_failure(client, reopen)


def _enip_thread(client: Client, reopen: threading.Event) -> None:
    from pycomm3 import LogixDriver

    while not client.stop.is_set():
        try:
            with LogixDriver(f"127.0.0.1:{client.port}", init_program_tags=False) as driver:
                client.connected = True
                while not client.stop.is_set():
                    if driver.read("Setpoint").error is not None:
                        break
                    client.ok += 1
                    client.stop.wait(POLL_S)
        except Exception:  # the connection went: the request in flight failed
            pass
        client.connected = False
        if client.stop.is_set():
            return
        client.failed += 1
        reopen.wait(120)


async def _after_failure(client: Client, reopen: asyncio.Event) -> None:
    client.connected = False
    if client.stop.is_set():
        return
    client.failed += 1
    await reopen.wait()


def _cuts(audit_files: list[Path], lock_id: str) -> list[float]:
    times = []
    for path in audit_files:
        if not path.exists():
            continue
        for line in path.read_bytes().splitlines():
            if b'"session_cut"' in line and lock_id.encode() in line:
                stamp = json.loads(line)["time"]
                times.append(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())
    return times


async def _until(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.05)


async def _measure(work: Path, runs: int, supervisor: Supervisor) -> dict[str, Any]:
    from gateway.center.client import CenterClient
    from gateway.center.setup import init_center
    from gateway.enroll import enroll

    python = [sys.executable, "-m", "gateway"]
    port = free_port()
    config, admin = await init_center(work / "center", TD, listen=f"127.0.0.1:{port}")
    center = supervisor.spawn("center", [*python, "center", "serve", "--config", str(config.source)])
    wait_listening(center, port=port)
    devices = {}
    for protocol in ("modbus", "enip", "opcua"):
        device = supervisor.spawn(protocol, [*python, "sim", protocol, "--listen", "127.0.0.1:0", "--static"])
        (devices[protocol],) = wait_listening(device)
    url = f"https://127.0.0.1:{port}"
    clients: list[Client] = []
    audit_files: list[Path] = []
    async with CenterClient.for_credentials(admin) as api:
        await api.call("POST", "/v1/policy", {"policy": _policy(devices)})

        async def enrolled(role: str, identity: str, name: str) -> Path:
            token = await api.call("POST", "/v1/tokens", {"role": role, "id": identity, "ttl_s": 600})
            return (await enroll(url, token["token"], token["fingerprint"], work / name)).directory

        for index in (1, 2):
            gateway_id = f"spiffe://{TD}/gateway/bench/gw-{index}"
            folder = await enrolled("gateway", gateway_id, f"gw-{index}")
            gw_port = free_port()
            audit_files.append(work / f"gw-{index}-audit.jsonl")
            (work / f"gw-{index}.toml").write_text(
                f'[gateway]\nname = "gw-{index}"\nlisten = "127.0.0.1:{gw_port}"\n[admin]\nlisten = ""\n'
                f'[audit]\nfile = "{audit_files[-1]}"\n[center]\ndir = "{folder}"\n'
            )
            gateway = supervisor.spawn(
                f"gw-{index}", [*python, "gateway", "--config", str(work / f"gw-{index}.toml")]
            )
            wait_listening(gateway, port=gw_port)
            for kind in ("vendor", "plant"):
                name = f"{kind}-gw-{index}"
                agent_dir = await enrolled("agent", f"spiffe://{TD}/agent/{kind}/gw-{index}", name)
                ports = {protocol: free_port() for protocol in ASSETS}
                text = f'[center]\ndir = "{agent_dir}"\nrenew = false\n'
                for protocol, asset in ASSETS.items():
                    text += (
                        f'\n[[listeners]]\nlisten = "127.0.0.1:{ports[protocol]}"\nasset = "{asset}"\n'
                        f'protocol = "{protocol}"\ngateway = "127.0.0.1:{gw_port}"\n'
                        f'gateway_id = "{gateway_id}"\n'
                    )
                (work / f"{name}.toml").write_text(text)
                agent = supervisor.spawn(name, [*python, "agent", "--config", str(work / f"{name}.toml")])
                wait_listening(agent, count=3)
                for protocol, count in PER_AGENT.items():
                    clients += [Client(protocol, ports[protocol], kind == "vendor") for _ in range(count)]

        reopen = asyncio.Event()
        reopen_threads = threading.Event()
        tasks = []
        threads: list[threading.Thread] = []
        for client in clients:
            if client.protocol == "modbus":
                tasks.append(asyncio.ensure_future(_modbus(client, reopen)))
            elif client.protocol == "opcua":
                tasks.append(asyncio.ensure_future(_opcua(client, reopen)))
            else:
                # A thread each (pycomm3 blocks): the default executor has too few workers for them all.
                thread = threading.Thread(target=_enip_thread, args=(client, reopen_threads), daemon=True)
                thread.start()
                threads.append(thread)
        vendors = [c for c in clients if c.vendor]
        spared = [c for c in clients if not c.vendor]
        samples: list[float] = []
        from_sent: list[float] = []
        try:
            await _until(lambda: all(c.connected and c.ok for c in clients), 120, "every client polling")
            for _ in range(runs):
                reopen.clear()
                reopen_threads.clear()
                sent = time.time()
                lock = await api.call("POST", "/v1/locks", {"target": f"prefix={PREFIX}", "reason": "bench"})
                returned = time.time()
                lock_id = str(lock["id"])
                await _until(lambda i=lock_id: len(_cuts(audit_files, i)) >= len(vendors), 30, "every cut")
                last_cut = max(_cuts(audit_files, lock["id"]))
                # The center streams the lock when it commits, before its answer is back here: the last
                # cut may precede `returned` (a negative sample). From `sent` it never can.
                samples.append(last_cut - returned)
                from_sent.append(last_cut - sent)
                await api.call("DELETE", f"/v1/locks/{lock['id']}")
                await _until(lambda: all(not c.connected for c in vendors), 30, "vendor clients noticed")
                await asyncio.sleep(1.0)  # both gateways have the removal: reconnections are let in
                reopen.set()
                reopen_threads.set()
                before = {id(c): c.ok for c in vendors}
                await _until(
                    lambda b=before: all(c.connected and c.ok > b[id(c)] for c in vendors),
                    120,
                    "vendors back",
                )
        finally:
            for client in clients:
                client.stop.set()
            reopen.set()
            reopen_threads.set()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
            for thread in threads:
                await asyncio.to_thread(thread.join, 10)
    return {
        "samples_s": samples,
        "from_sent_s": from_sent,
        "sessions": len(clients),
        "matching": len(vendors),
        "spared_requests": sum(c.ok for c in spared),
        "spared_failures": sum(c.failed for c in spared),
    }


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench locks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="measured locks (default 20)")
    args = parser.parse_args(argv)
    for name in ("pycomm3", "asyncua", "pymodbus"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="ztgate-bench-locks-") as tmp:
        work = Path(tmp)
        with Supervisor(work / "logs") as supervisor:
            found = asyncio.run(_measure(work, args.runs, supervisor))
    samples = found["samples_s"]
    summary = {
        "runs": len(samples),
        "p50_ms": round(statistics.median(samples) * 1000, 1),
        "p99_ms": round(_percentile(samples, 0.99) * 1000, 1),
        "max_ms": round(max(samples) * 1000, 1),
        "from_sent_p50_ms": round(statistics.median(found["from_sent_s"]) * 1000, 1),
        "from_sent_p99_ms": round(_percentile(found["from_sent_s"], 0.99) * 1000, 1),
    }
    out = REPO / "bench" / "results" / "raw" / f"locks-{started:%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"started": started.isoformat(), **summary, **found}, indent=1))
    print(
        f"lock create -> last of {found['matching']} matching sessions (of {found['sessions']}) cut, "
        f"{summary['runs']} runs: p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms, "
        f"max {summary['max_ms']} ms (from the request sent: p50 {summary['from_sent_p50_ms']} ms, "
        f"p99 {summary['from_sent_p99_ms']} ms); spared sessions: {found['spared_requests']} requests, "
        f"{found['spared_failures']} failed; {out}"
    )
    return 0 if found["spared_failures"] == 0 else 1
