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

``--pin`` goes further and keeps the load generator off the gateway's core altogether: the gateway runs
alone on CPU 0, the device, the flooder and the poller (this process) on CPU 1 (``sched_setaffinity`` on
every thread of each; threads started later inherit it). On a plant the gateway has its cores to itself,
and the device, the attacker's machine and the HMI are machines of their own; two cores cannot give each
its own, so this keeps everything but the gateway on the other core (with ``--idle-priority`` the flood's
generator takes only what the device and the poller leave of it). ``--pin with-poller`` puts the poller
on the gateway's core instead, where it waits for a core while the gateway works for the flood. Other
processes on the machine are not pinned. Without ``--pin`` the scheduler places everything, as before.

``--sched-trace`` records the scheduler (``perf sched record``, all CPUs, CLOCK_MONOTONIC, the clock of
the poller's own timestamps) while the poller reads under flood, and says what its slow reads (over 1 ms)
were made of: how long the gateway, the device and the poller, each runnable, waited for a core during
each one, and the longest the gateway ran at a stretch (an upper bound of its longest event-loop turn:
a turn cannot outlast the stretch it runs in). It needs ``perf`` and the right to trace the scheduler;
perf's own CPU counts against the measurement, so its figures are for the diagnosis, not the table.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import re
import signal
import statistics
import subprocess
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
GATEWAY_CPUS = {0}  # with --pin: the gateway (and with-poller, the poller)
DEVICE_CPUS = {1}  # ... the device, the flooder's load generator (and alone, the poller)
SLOW_S = 0.001  # a poller read slower than this is one the scheduler trace explains


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` onto ``cpus``; threads it starts later inherit their creator's set."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), cpus)


def _tids(pid: int) -> set[int]:
    try:
        return {int(tid) for tid in os.listdir(f"/proc/{pid}/task")}
    except OSError:
        return set()


def _cpu_s(pid: int) -> float:
    times = cpu_times(pid)
    return sum(times) if times is not None else float("nan")


async def _poll(
    client: Any, samples: int, gateway_pid: int, starts: list[float] | None = None
) -> tuple[list[float], int, float]:
    """``samples`` reads: their latencies, the failures, and the gateway's CPU meanwhile as a share of
    one core. ``starts`` gets when each read began (perf_counter: CLOCK_MONOTONIC on Linux)."""
    latencies: list[float] = []
    failures = 0
    cpu_before, wall_before = _cpu_s(gateway_pid), time.perf_counter()
    for _ in range(samples):
        started = time.perf_counter()
        if starts is not None:
            starts.append(started)
        try:
            result = await client.read_holding_registers(0, count=10, device_id=1)
            failed = result.isError()
        except Exception:  # a timeout or a lost connection is a failure to count
            failed = True
        latencies.append(time.perf_counter() - started)
        failures += failed
    cpu_share = (_cpu_s(gateway_pid) - cpu_before) / (time.perf_counter() - wall_before)
    return latencies, failures, cpu_share


# A line of ``perf sched timehist``: a task switched out at TIME, after waiting, runnable, SCH DELAY ms
# for a core and then running RUN ms.
_TIMEHIST = re.compile(r"^\s*(\d+\.\d+)\s+\[\d+\]\s+.*\[(\d+)(?:/\d+)?\]\s+[\d.]+\s+([\d.]+)\s+([\d.]+)\s*$")


def _start_sched_record(path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["perf", "sched", "record", "-k", "CLOCK_MONOTONIC", "-o", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _stop_sched_record(record: subprocess.Popen[bytes]) -> None:
    record.send_signal(signal.SIGINT)
    try:
        record.wait(timeout=60)
    except subprocess.TimeoutExpired:
        record.kill()
        record.wait()


def _overlap(
    spans: list[tuple[float, float]], starts: list[float], lo: float, hi: float
) -> tuple[float, float]:
    """Of ``spans`` (sorted by start), the time inside [lo, hi] and the longest single span there."""
    total = longest = 0.0
    index = max(0, bisect.bisect_left(starts, lo) - 1)
    while index < len(spans) and spans[index][0] < hi:
        start, end = spans[index]
        inside = min(end, hi) - max(start, lo)
        if inside > 0:
            total += inside
            longest = max(longest, inside)
        index += 1
    return total, longest


def _sched_explain(
    data: Path, starts: list[float], latencies: list[float], tasks: dict[str, set[int]]
) -> dict[str, Any]:
    """What the slow reads were made of, from the scheduler trace: per process, the time it waited
    runnable for a core during them, and the longest stretch the gateway ran."""
    text = subprocess.run(
        ["perf", "sched", "timehist", "-i", str(data)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    owner = {tid: name for name, tids in tasks.items() for tid in tids}
    waits: dict[str, list[tuple[float, float]]] = {name: [] for name in tasks}
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in tasks}
    for line in text.splitlines():
        match = _TIMEHIST.match(line)
        name = owner.get(int(match[2])) if match else None
        if match is None or name is None:
            continue
        end, delay_s, run_s = float(match[1]), float(match[3]) / 1000, float(match[4]) / 1000
        runs[name].append((end - run_s, end))
        if delay_s:
            waits[name].append((end - run_s - delay_s, end - run_s))
    reads = [(start, start + latency) for start, latency in zip(starts, latencies, strict=True)]
    slow = [(lo, hi) for lo, hi in reads if hi - lo > SLOW_S]
    out: dict[str, Any] = {
        "slow_reads": len(slow),
        "slow_read_ms_total": round(sum(hi - lo for lo, hi in slow) * 1000, 1),
    }
    for name in tasks:
        waits[name].sort()
        runs[name].sort()
        wait_starts = [span[0] for span in waits[name]]
        run_starts = [span[0] for span in runs[name]]
        waited = [_overlap(waits[name], wait_starts, lo, hi) for lo, hi in slow]
        ran = [_overlap(runs[name], run_starts, lo, hi) for lo, hi in slow]
        all_waits = sorted(end - start for start, end in waits[name])
        all_runs = sorted(end - start for start, end in runs[name])
        out[name] = {
            "switches": len(runs[name]),
            "wait_for_core_p99_ms": round(_percentile(all_waits, 0.99) * 1000, 3) if all_waits else 0.0,
            "wait_for_core_max_ms": round(all_waits[-1] * 1000, 3) if all_waits else 0.0,
            "run_stretch_p99_ms": round(_percentile(all_runs, 0.99) * 1000, 3) if all_runs else 0.0,
            "run_stretch_max_ms": round(all_runs[-1] * 1000, 3) if all_runs else 0.0,
            "in_slow_reads_waited_ms_total": round(sum(total for total, _ in waited) * 1000, 3),
            "slow_reads_it_waited_over_half_a_ms": sum(most > 0.0005 for _, most in waited),
            "in_slow_reads_longest_wait_ms": round(max((most for _, most in waited), default=0.0) * 1000, 3),
            "in_slow_reads_ran_ms_total": round(sum(total for total, _ in ran) * 1000, 3),
            "in_slow_reads_longest_run_ms": round(max((most for _, most in ran), default=0.0) * 1000, 3),
        }
    return out


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
    device, device_port = start_server(supervisor)
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
    if args.pin:
        _pin(gateway.pid, GATEWAY_CPUS)
        _pin(device.pid, DEVICE_CPUS)
        _pin(os.getpid(), GATEWAY_CPUS if args.pin == "with-poller" else DEVICE_CPUS)  # restored by run()

    context = client_context(poller.cert, poller.key, ca.cert, server_name="plc-1")
    client = AsyncModbusTlsClient("127.0.0.1", port=gw_port, sslctx=context, timeout=5, retries=0)
    if not await client.connect():
        raise RuntimeError(f"cannot connect to the gateway on port {gw_port}")
    await _poll(client, 200, gateway.pid)  # warm-up
    idle = await _poll(client, args.samples, gateway.pid)

    flood_argv = [
        *(("taskset", "--cpu-list", ",".join(map(str, sorted(DEVICE_CPUS)))) if args.pin else ()),
        *(IDLE_PRIORITY if args.idle_priority else ()),
        sys.executable, "-m", "bench.modbus_load", "--port", str(gw_port), "--tls",
        "--cafile", str(ca.cert), "--cert", str(flooder.cert), "--key", str(flooder.key), "--sni", "plc-1",
        "-c", str(args.connections), "-d", str(args.depth), "--fc", "3", "--address", "40",
        "--warmup", "1", "--duration", str(args.flood_s), "--compact",
    ]  # fmt: skip
    flood = supervisor.spawn("flooder", flood_argv, cwd=REPO, pipes=True)
    await asyncio.sleep(1.0)  # the flooder's warm-up: its connections are up and the queue full
    polled = time.perf_counter()
    starts: list[float] = []
    record = _start_sched_record(work / "sched.data") if args.sched_trace else None
    try:
        if record is not None:
            await asyncio.sleep(1.0)  # perf is recording
        loaded = await _poll(client, args.samples, gateway.pid, starts)
        tasks = {"gateway": _tids(gateway.pid), "device": _tids(device.pid), "poller": _tids(os.getpid()),
                 "flooder": _tids(flood.pid)}  # fmt: skip
    finally:
        if record is not None:
            _stop_sched_record(record)
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
    explained = None
    if record is not None:
        explained = await asyncio.to_thread(_sched_explain, work / "sched.data", starts, loaded[0], tasks)
    return {
        "idle": _summary(*idle),
        "flood": _summary(*loaded),
        "flooder": flood_summary,
        "idle_priority": args.idle_priority,
        "pinned": args.pin,
        "sched_trace": explained,
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
    parser.add_argument(
        "--pin",
        nargs="?",
        const="alone",
        choices=("alone", "with-poller"),
        help="the gateway alone on CPU 0, the rest on CPU 1 (with-poller: the poller on CPU 0 too)",
    )
    parser.add_argument(
        "--sched-trace",
        action="store_true",
        help="perf sched record under flood: what the poller's reads over 1 ms waited for (a diagnosis)",
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
    all_cpus = os.sched_getaffinity(0)
    for name, src in variants:
        with tempfile.TemporaryDirectory(prefix="ztgate-bench-fairness-") as tmp:
            work = Path(tmp)
            with Supervisor(work / "logs") as supervisor:
                try:
                    found = asyncio.run(_measure(work, args, supervisor, src))
                finally:
                    _pin(os.getpid(), all_cpus)
        idle, flood = found["idle"], found["flood"]
        ratio = round(flood["p99_ms"] / idle["p99_ms"], 2)
        runs.append({"gateway": name, "p99_ratio": ratio, **found})
        print(
            f"{name}: poller idle: p50 {idle['p50_ms']} ms, p99 {idle['p99_ms']} ms,"
            f" {idle['failures']} failures;"
            f" under flood: p50 {flood['p50_ms']} ms, p99 {flood['p99_ms']} ms, {flood['failures']} failures"
            f" (p99 {ratio}x idle); gateway CPU idle {idle['gateway_cpu_share']}, under flood"
            f" {flood['gateway_cpu_share']} of a core; flooder {found['flooder']}"
            f"{' (flooder under chrt --idle 0)' if args.idle_priority else ''}"
            f"{f' (pinned: {args.pin})' if args.pin else ''}",
            flush=True,
        )
        if found["sched_trace"] is not None:
            print(f"  scheduler trace under flood: {json.dumps(found['sched_trace'])}", flush=True)
    out = REPO / "bench" / "results" / "raw" / f"fairness-{started:%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"started": started.isoformat(), "argv": argv, "runs": runs}, indent=1))
    print(out)
    return 0
