"""``python -m bench fairness``: one identity flooding an asset, another polling it (issue 16, point 2).

Real processes on loopback: the bench's Modbus server (``bench.modbus_server``) and a gateway
(``ztgate gateway``, uvloop, audit to a file with reads aggregated) whose asset has the default upstream
pool (one connection, one request in flight, ``queue_limit`` 64, ``queue_timeout_s`` 0.4 s). This
process is the poller: a pymodbus client over mutual TLS as ``user/poller``, reading 10 holding
registers back to back. It takes ``--samples`` reads with the asset idle, then as many again while the
flooder (``bench.modbus_load`` as ``user/flooder``: ``--connections`` x ``--depth`` reads in flight,
far more than the queue holds) runs at full speed. Printed and written to
``bench/results/raw/fairness-<time>.json``: the poller's p50 and p99 in both phases, its failures, and
what the flooder got (answers, and any exception codes), and the gateway's CPU in each phase (the share
of one core it used). docs/performance.md keeps the figures by hand.

``--ref REF`` makes it an A/B: the same measurement with the gateway as it was at git ``REF`` (exported,
built as the working tree is) and with the working tree's, alternately, ``--rounds`` times each, each
with a device and a gateway of its own.

On a plant the attacker's load generator runs on another machine; on a small bench machine it competes
with the gateway for its cores. ``--idle-priority`` runs it under ``chrt --idle 0`` (SCHED_IDLE): it
gets only the CPU the gateway, the device and the poller leave, so what remains of the poller's wait is
the gateway's and the device's own. The device keeps its normal priority: it serves the poller in both
phases. The flood is not made lighter: it still keeps ``--connections`` x ``--depth`` reads in flight,
and the gateway still gets them as fast as it takes them.
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

from bench.loadgen import REPO, start_server
from bench.paths import ref_tree
from bench.procs import Supervisor, cpu_times, listening_ports, wait_listening

TD = "bench.example"
POLLER = f"spiffe://{TD}/user/poller"
FLOODER = f"spiffe://{TD}/user/flooder"


def _policy(device_port: int) -> str:
    return f"""trust_domain = "{TD}"

[assets.plc-1]
protocol = "modbus"
upstream = "127.0.0.1:{device_port}"
unit_ids = [1]

[[rules]]
id = "readers"
subjects = ["{POLLER}", "{FLOODER}"]
assets = ["plc-1"]
modbus = [{{ fc = [3], address = "0-999" }}]
"""


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(share * len(ordered) + 0.5) - 1))
    return ordered[index]


IDLE_PRIORITY = ("chrt", "--idle", "0")  # SCHED_IDLE: only the CPU nothing else wants


def _cpu_s(pid: int) -> float:
    times = cpu_times(pid)
    return sum(times) if times is not None else float("nan")


async def _poll(client: Any, samples: int, gateway_pid: int) -> tuple[list[float], int, float]:
    """``samples`` reads: their latencies, the failures, and the gateway's CPU meanwhile as a share of
    one core."""
    latencies: list[float] = []
    failures = 0
    cpu_before, wall_before = _cpu_s(gateway_pid), time.perf_counter()
    for _ in range(samples):
        started = time.perf_counter()
        try:
            result = await client.read_holding_registers(0, count=10, device_id=1)
            failed = result.isError()
        except Exception:  # a timeout or a lost connection is a failure to count
            failed = True
        latencies.append(time.perf_counter() - started)
        failures += failed
    cpu_share = (_cpu_s(gateway_pid) - cpu_before) / (time.perf_counter() - wall_before)
    return latencies, failures, cpu_share


def _summary(latencies: list[float], failures: int, cpu_share: float) -> dict[str, Any]:
    return {
        "samples": len(latencies),
        "failures": failures,
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 3),
        "max_ms": round(max(latencies) * 1000, 3),
        "gateway_cpu_share": round(cpu_share, 3),
    }


async def _measure(work: Path, args: argparse.Namespace, supervisor: Supervisor, src: Path) -> dict[str, Any]:
    from pymodbus.client import AsyncModbusTlsClient

    from gateway import pki
    from gateway.tls import client_context

    ca_dir = work / "ca"
    ca = pki.init_ca(ca_dir, TD)
    gateway_files = pki.issue(
        ca_dir, f"spiffe://{TD}/gateway/bench/gw-1", out_dir=work, name="gw", dns_names=["plc-1"]
    )
    poller = pki.issue(ca_dir, POLLER, out_dir=work, name="poller")
    flooder = pki.issue(ca_dir, FLOODER, out_dir=work, name="flooder")
    _, device_port = start_server(supervisor)
    (work / "policy.toml").write_text(_policy(device_port))
    config = work / "gateway.toml"
    config.write_text(
        f'[gateway]\nname = "gw-1"\nlisten = "127.0.0.1:0"\npolicy = "{work / "policy.toml"}"\n'
        f'[tls]\ncert = "{gateway_files.cert}"\nkey = "{gateway_files.key}"\nca = "{ca.cert}"\n'
        f'[admin]\nlisten = ""\n[audit]\nfile = "{work / "audit.jsonl"}"\naggregate_reads_s = 1.0\n'
    )
    gateway_argv = [sys.executable, "-m", "gateway", "gateway", "--config", str(config)]
    gateway = supervisor.spawn("gateway", gateway_argv, cwd=src)  # python -m imports from its cwd
    wait_listening(gateway)
    (gw_port,) = listening_ports(gateway.pid)

    context = client_context(poller.cert, poller.key, ca.cert, server_name="plc-1")
    client = AsyncModbusTlsClient("127.0.0.1", port=gw_port, sslctx=context, timeout=5, retries=0)
    if not await client.connect():
        raise RuntimeError(f"cannot connect to the gateway on port {gw_port}")
    await _poll(client, 200, gateway.pid)  # warm-up
    idle = await _poll(client, args.samples, gateway.pid)

    flood_argv = [
        *(IDLE_PRIORITY if args.idle_priority else ()),
        sys.executable, "-m", "bench.modbus_load", "--port", str(gw_port), "--tls",
        "--cafile", str(ca.cert), "--cert", str(flooder.cert), "--key", str(flooder.key), "--sni", "plc-1",
        "-c", str(args.connections), "-d", str(args.depth), "--fc", "3", "--address", "40",
        "--warmup", "1", "--duration", str(args.flood_s), "--compact",
    ]  # fmt: skip
    flood = supervisor.spawn("flooder", flood_argv, cwd=REPO, pipes=True)
    await asyncio.sleep(1.0)  # the flooder's warm-up: its connections are up and the queue full
    polled = time.perf_counter()
    loaded = await _poll(client, args.samples, gateway.pid)
    if not flood.alive():
        raise RuntimeError(
            f"the flood ended before the poll ({time.perf_counter() - polled:.1f} s, exit status"
            f" {flood.popen.returncode}): raise --flood-s; the flooder's log:\n{flood.log_tail()}"
        )
    assert flood.popen.stdout is not None
    stdout = await asyncio.to_thread(flood.popen.stdout.read)  # its report, when its window ends
    client.close()
    try:
        report = json.loads(stdout.decode().strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError) as exc:
        raise RuntimeError(f"the flooder gave no report: {flood.log_tail()}") from exc
    flood_summary = {
        "connections": args.connections,
        "depth": args.depth,
        "answered": report["requests"],
        "req_per_s": report["req_per_s"],
        "exception_codes": report["exception_codes"],
        "errors": report["errors"],
    }
    return {
        "idle": _summary(*idle),
        "flood": _summary(*loaded),
        "flooder": flood_summary,
        "idle_priority": args.idle_priority,
        "latencies_idle_s": idle[0],
        "latencies_flood_s": loaded[0],
    }


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench fairness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2000, help="poller reads per phase (default 2000)")
    parser.add_argument("--connections", type=int, default=8, help="flooder connections (default 8)")
    parser.add_argument("--depth", type=int, default=32, help="flooder reads in flight per connection")
    parser.add_argument(
        "--flood-s", type=float, default=30.0, help="the flood's measured window, longer than the poll"
    )
    parser.add_argument(
        "--idle-priority",
        action="store_true",
        help="run the flooder under chrt --idle 0: only the CPU the gateway, device and poller leave",
    )
    parser.add_argument("--ref", help="also measure the gateway as it was at this git ref: an A/B")
    parser.add_argument("--rounds", type=int, default=1, help="with --ref: measurements of each, alternately")
    args = parser.parse_args(argv)
    started = datetime.now(UTC)
    variants: list[tuple[str, Path]] = [("working tree", REPO)]
    if args.ref:
        sha, export = ref_tree(args.ref)
        variants = [(f"{args.ref} ({sha[:8]})", export), *variants] * args.rounds
    runs = []
    for name, src in variants:
        with tempfile.TemporaryDirectory(prefix="ztgate-bench-fairness-") as tmp:
            work = Path(tmp)
            with Supervisor(work / "logs") as supervisor:
                found = asyncio.run(_measure(work, args, supervisor, src))
        idle, flood = found["idle"], found["flood"]
        ratio = round(flood["p99_ms"] / idle["p99_ms"], 2)
        runs.append({"gateway": name, "p99_ratio": ratio, **found})
        print(
            f"{name}: poller idle: p50 {idle['p50_ms']} ms, p99 {idle['p99_ms']} ms,"
            f" {idle['failures']} failures;"
            f" under flood: p50 {flood['p50_ms']} ms, p99 {flood['p99_ms']} ms, {flood['failures']} failures"
            f" (p99 {ratio}x idle); gateway CPU idle {idle['gateway_cpu_share']}, under flood"
            f" {flood['gateway_cpu_share']} of a core; flooder {found['flooder']}"
            f"{' (flooder under chrt --idle 0)' if args.idle_priority else ''}",
            flush=True,
        )
    out = REPO / "bench" / "results" / "raw" / f"fairness-{started:%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"started": started.isoformat(), "argv": argv, "runs": runs}, indent=1))
    print(out)
    return 0
