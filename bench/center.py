"""``python -m bench center``: how long a policy push takes to reach two gateways (issue 13).

Real processes on loopback: a center (``ztgate center serve``, SQLite store), a simulated Modbus PLC
(``ztgate sim modbus --static``) and two gateways (``ztgate gateway`` with a ``[center]``), both
enrolled with tokens. This process holds one mutual-TLS Modbus session to each gateway (pymodbus,
an enrolled user's certificate).

Push *i* (revision *i* + 1) allows FC 3 on holding register *i* only, where the revision before
allowed only register *i* - 1. The time measured for a push runs from ``policy push`` returning (the
API answered 201: the revision is committed) to the moment **both** gateways have answered a read of
register *i* with data, i.e. decide by the new revision; each gateway is polled with back-to-back
reads on its session from that moment on. p50, p99 and the maximum over the pushes are printed and
written to ``bench/results/raw/center-<time>.json``; docs/performance.md keeps the figures by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.loadgen import REPO
from bench.procs import Supervisor, free_port, listening_ports, wait_listening

TD = "bench.example"
USER = f"spiffe://{TD}/user/operator"


def _policy(device_port: int, register: int) -> str:
    return f"""trust_domain = "{TD}"

[assets.plc-1]
protocol = "modbus"
upstream = "127.0.0.1:{device_port}"
unit_ids = [1]

[[rules]]
id = "register-{register}"
subjects = ["{USER}"]
assets = ["plc-1"]
modbus = [{{ fc = [3], address = "{register}" }}]
"""


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(share * len(ordered) + 0.5) - 1))
    return ordered[index]


async def _until_allowed(client: Any, register: int) -> float:
    while True:
        result = await client.read_holding_registers(register, count=1, device_id=1)
        if not result.isError():
            return time.perf_counter()


async def _measure(work: Path, pushes: int, supervisor: Supervisor) -> dict[str, Any]:
    from pymodbus.client import AsyncModbusTlsClient

    from gateway.center.client import CenterClient
    from gateway.center.setup import init_center
    from gateway.enroll import enroll
    from gateway.tls import client_context

    python = [sys.executable, "-m", "gateway"]
    port = free_port()
    config, admin = await init_center(work / "center", TD, listen=f"127.0.0.1:{port}")
    center = supervisor.spawn("center", [*python, "center", "serve", "--config", str(config.source)])
    wait_listening(center, port=port)
    device = supervisor.spawn("plc", [*python, "sim", "modbus", "--listen", "127.0.0.1:0", "--static"])
    (device_port,) = wait_listening(device)
    url = f"https://127.0.0.1:{port}"

    async with CenterClient.for_credentials(admin) as api:
        await api.call("POST", "/v1/policy", {"policy": _policy(device_port, 0)})

        async def enrolled(role: str, identity: str, name: str) -> Path:
            token = await api.call("POST", "/v1/tokens", {"role": role, "id": identity, "ttl_s": 600})
            return (await enroll(url, token["token"], token["fingerprint"], work / name)).directory

        user = await enrolled("user", USER, "operator")
        clients = []
        for index in (1, 2):
            folder = await enrolled("gateway", f"spiffe://{TD}/gateway/bench/gw-{index}", f"gw-{index}")
            gw_config = work / f"gw-{index}.toml"
            gw_config.write_text(
                f'[gateway]\nname = "gw-{index}"\nlisten = "127.0.0.1:0"\n[admin]\nlisten = ""\n'
                f'[audit]\nfile = "gw-{index}-audit.jsonl"\n[center]\ndir = "{folder}"\n'
            )
            gateway = supervisor.spawn(f"gw-{index}", [*python, "gateway", "--config", str(gw_config)])
            wait_listening(gateway)
            (gw_port,) = listening_ports(gateway.pid)
            context = client_context(
                user / "cert.pem", user / "key.pem", user / "ca.pem", server_name="plc-1"
            )
            client = AsyncModbusTlsClient("127.0.0.1", port=gw_port, sslctx=context, timeout=5, retries=0)
            if not await client.connect():
                raise RuntimeError(f"cannot connect to gw-{index} on port {gw_port}")
            clients.append(client)
        for client in clients:  # both decide by revision 1 before the first measured push
            await _until_allowed(client, 0)

        samples: list[float] = []
        per_gateway: list[list[float]] = [[], []]
        for register in range(1, pushes + 1):
            await api.call("POST", "/v1/policy", {"policy": _policy(device_port, register)})
            pushed = time.perf_counter()
            reached = await asyncio.gather(*(_until_allowed(c, register) for c in clients))
            for index, moment in enumerate(reached):
                per_gateway[index].append(moment - pushed)
            samples.append(max(reached) - pushed)
            await asyncio.sleep(0.02)
        for client in clients:
            client.close()
    return {"samples_s": samples, "per_gateway_s": per_gateway}


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench center", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pushes", type=int, default=100, help="measured pushes (default 100)")
    args = parser.parse_args(argv)
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="ztgate-bench-center-") as tmp:
        work = Path(tmp)
        with Supervisor(work / "logs") as supervisor:
            found = asyncio.run(_measure(work, args.pushes, supervisor))
    samples = found["samples_s"]
    summary = {
        "pushes": len(samples),
        "p50_ms": round(statistics.median(samples) * 1000, 1),
        "p99_ms": round(_percentile(samples, 0.99) * 1000, 1),
        "max_ms": round(max(samples) * 1000, 1),
        "mean_ms": round(statistics.fmean(samples) * 1000, 1),
        "per_gateway_p50_ms": [round(statistics.median(g) * 1000, 1) for g in found["per_gateway_s"]],
    }
    out = REPO / "bench" / "results" / "raw" / f"center-{started:%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"started": started.isoformat(), **summary, **found}, indent=1))
    print(
        f"policy push -> both gateways deciding by it, {summary['pushes']} pushes: "
        f"p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms, max {summary['max_ms']} ms, "
        f"mean {summary['mean_ms']} ms (per gateway p50 {summary['per_gateway_p50_ms']} ms); {out}"
    )
    return 0
