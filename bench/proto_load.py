"""Load from real protocol clients for the EtherNet/IP and OPC UA rows: ``python -m bench.proto_load``.

Each worker is a process of its own (forked, so the client library is imported once) with one client
and one request in flight: pycomm3's blocking ``LogixDriver`` (:mod:`bench.enip_client`) or an asyncua
``Client`` (:mod:`bench.opcua_client`). Every worker connects first; only when all of them are ready
does the clock start, the same for all: a warm-up, the measured window, and the requests still in
flight when the window closes. A request counts in the window when its reply arrives inside it, its
latency is from sending to the checked reply, and *every* reply, warm-up and drain included, is
checked (an error status or a wrong value counts).

The parent reads the CPU time of the processes named with ``--pid NAME=PID`` (the gateway, the agent,
the server) and of the workers from ``/proc/PID/stat`` at the two edges of the window, so CPU per
request is the window's CPU over the window's requests, as :mod:`bench.modbus_load` does for the Modbus rows.

It prints one JSON line; exit status 0 when every reply was good, 1 otherwise, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from bench.procs import cpu_times, host_cpu_jiffies, io_syscalls

__all__ = ["Go", "Recorder", "WorkerSpec", "main", "run_workers", "wait_for_go"]

READY_TIMEOUT_S = 60.0  # pycomm3's default start-up uploads the tag list; asyncua opens a session


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker of a run is given: the server's address and the workload's parameters."""

    protocol: str  # "enip" | "opcua"
    host: str
    port: int
    items: tuple[str, ...]  # tags (EtherNet/IP) or node ids (OPC UA) read in one request
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Go:
    """The shared clock of a run (time.monotonic(), CLOCK_MONOTONIC: the same in every process)."""

    start: float
    window_start: float
    window_end: float


@dataclass
class Recorder:
    """One worker's counts: requests per phase, latencies of the window's requests, and problems."""

    go: Go
    latencies_us: list[float] = field(default_factory=list)
    phases: Counter[str] = field(default_factory=Counter)
    problems: Counter[str] = field(default_factory=Counter)

    def record(self, sent: float, answered: float, problem: str | None) -> bool:
        """Count one request; returns False once the window has closed (the worker stops then), or
        after an exception from the client library (its connection is gone: a worker that went on
        would count a failure per microsecond). Only good replies count as requests, with latency."""
        if problem is not None:
            self.problems[problem] += 1
            return not problem.startswith("exception:") and answered < self.go.window_end
        if answered < self.go.window_start:
            self.phases["warmup"] += 1
        elif answered < self.go.window_end:
            self.phases["window"] += 1
            self.latencies_us.append((answered - sent) * 1e6)
        else:
            self.phases["after"] += 1
            return False
        return True

    def result(self) -> dict[str, Any]:
        return {
            "latencies_us": self.latencies_us,
            "phases": dict(self.phases),
            "problems": dict(self.problems),
        }


def wait_for_go(conn: Connection, setup_s: float) -> Go:
    """Tell the parent this worker is connected, then wait for the shared clock and its start."""
    conn.send(("ready", round(setup_s, 3)))
    message = conn.recv()
    if message[0] != "go":
        raise SystemExit(0)  # the run was called off
    go = Go(*message[1])
    pause = go.start - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    return go


def run_sync(conn: Connection, setup_s: float, request: Callable[[], str | None]) -> dict[str, Any]:
    """A blocking client's loop: ``request()`` does one round trip and returns None or a problem."""
    recorder = Recorder(wait_for_go(conn, setup_s))
    now = time.monotonic
    while True:
        sent = now()
        try:
            problem = request()
        except Exception as exc:  # a client library's exception is an error of that request
            problem = f"exception:{type(exc).__name__}: {str(exc)[:120]}"
        if not recorder.record(sent, now(), problem):
            return recorder.result()


async def run_async(
    conn: Connection, setup_s: float, request: Callable[[], Awaitable[str | None]]
) -> dict[str, Any]:
    """The same for an asyncio client (the wait for the start blocks the loop: nothing else runs)."""
    recorder = Recorder(wait_for_go(conn, setup_s))
    now = time.monotonic
    while True:
        sent = now()
        try:
            problem = await request()
        except Exception as exc:
            problem = f"exception:{type(exc).__name__}: {str(exc)[:120]}"
        if not recorder.record(sent, now(), problem):
            return recorder.result()


def _worker_main(conn: Connection, spec: WorkerSpec, index: int) -> None:
    try:
        if spec.protocol == "enip":
            from bench.enip_client import enip_worker

            result = enip_worker(conn, spec, index)
        elif spec.protocol == "opcua":
            from bench.opcua_client import opcua_worker

            result = opcua_worker(conn, spec, index)
        else:
            raise ValueError(f"unknown protocol {spec.protocol!r}")
        conn.send(("result", result))
    except SystemExit:
        pass
    except BaseException as exc:
        try:
            conn.send(("error", f"worker {index}: {type(exc).__name__}: {exc}"))
        except OSError:
            pass
    finally:
        conn.close()


def _preload(protocol: str) -> None:
    """Import the client library before forking, so every worker starts at once."""
    if protocol == "enip":
        import bench.enip_client
    else:
        import bench.opcua_client  # noqa: F401


def _snapshot(pids: dict[str, int]) -> dict[str, tuple[float, float, int, int] | None]:
    """(user s, system s, read syscalls, write syscalls) per process, or None if it is gone."""
    out: dict[str, tuple[float, float, int, int] | None] = {}
    for name, pid in pids.items():
        times, io = cpu_times(pid), io_syscalls(pid)
        out[name] = None if times is None else (*times, *(io or (0, 0)))
    return out


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def run_workers(
    spec: WorkerSpec, workers: int, *, warmup_s: float, duration_s: float, watch: dict[str, int]
) -> dict[str, Any]:
    """Run ``workers`` client processes on one shared clock; the report (see the module docstring)."""
    _preload(spec.protocol)
    context = multiprocessing.get_context("fork")
    conns: list[Connection] = []
    procs: list[multiprocessing.process.BaseProcess] = []
    started = time.monotonic()
    try:
        for index in range(workers):
            parent, child = context.Pipe()
            proc = context.Process(target=_worker_main, args=(child, spec, index), daemon=True)
            proc.start()
            child.close()
            conns.append(parent)
            procs.append(proc)
        setup: list[float] = []
        for index, conn in enumerate(conns):
            if not conn.poll(max(0.1, started + READY_TIMEOUT_S - time.monotonic())):
                raise RuntimeError(f"worker {index} not connected within {READY_TIMEOUT_S:g} s")
            kind, payload = conn.recv()
            if kind != "ready":
                raise RuntimeError(str(payload))
            setup.append(float(payload))
        start = time.monotonic() + 0.05
        go = Go(start, start + warmup_s, start + warmup_s + duration_s)
        for conn in conns:
            conn.send(("go", (go.start, go.window_start, go.window_end)))
        pids = {**watch, **{f"worker{i}": p.pid for i, p in enumerate(procs) if p.pid is not None}}
        time.sleep(max(0.0, go.window_start - time.monotonic()))
        before, host_before, t_before = _snapshot(pids), host_cpu_jiffies(), time.monotonic()
        time.sleep(max(0.0, go.window_end - time.monotonic()))
        after, host_after, t_after = _snapshot(pids), host_cpu_jiffies(), time.monotonic()
        results: list[dict[str, Any]] = []
        for index, conn in enumerate(conns):
            if not conn.poll(30.0):
                raise RuntimeError(f"worker {index} did not finish within 30 s of the window's end")
            kind, payload = conn.recv()
            if kind != "result":
                raise RuntimeError(str(payload))
            results.append(payload)
    except EOFError:
        raise RuntimeError("a worker ended without a word (killed?)") from None
    finally:
        for conn in conns:
            try:
                conn.send(("stop", None))
            except OSError:
                pass
        for proc in procs:
            proc.join(5.0)
            if proc.is_alive():
                proc.kill()
                proc.join(5.0)
        for conn in conns:
            conn.close()

    window_s = t_after - t_before
    latencies = sorted(x for r in results for x in r["latencies_us"])
    phases: Counter[str] = Counter()
    problems: Counter[str] = Counter()
    for r in results:
        phases.update(r["phases"])
        problems.update(r["problems"])
    requests = phases["window"]

    def cpu(name: str) -> dict[str, float] | None:
        a, b = before.get(name), after.get(name)
        if a is None or b is None or not requests:
            return None
        user, system = b[0] - a[0], b[1] - a[1]
        return {
            "cpu_us_per_request": round((user + system) * 1e6 / requests, 2),
            "user_us_per_request": round(user * 1e6 / requests, 2),
            "sys_us_per_request": round(system * 1e6 / requests, 2),
            "cpu_util_pct": round((user + system) * 100 / window_s, 1),
            # read/write system calls (read, readv, write, writev; not send/recv) per request
            "reads_per_request": round((b[2] - a[2]) / requests, 2),
            "writes_per_request": round((b[3] - a[3]) / requests, 2),
        }

    workers_cpu = [cpu(f"worker{i}") for i in range(len(procs))]
    loadgen = round(sum(c["cpu_us_per_request"] for c in workers_cpu if c), 2) if all(workers_cpu) else None
    busy = host_after[0] - host_before[0]
    total = host_after[1] - host_before[1]
    errors = sum(n for k, n in problems.items() if not k.startswith("mismatch:"))
    return {
        "protocol": spec.protocol,
        "workers": workers,
        "items": list(spec.items),
        "window_s": round(window_s, 3),
        "requests": requests,
        "req_per_s": round(requests / window_s, 1) if window_s > 0 else None,
        "latency_us": {
            "p50": round(_percentile(latencies, 0.50), 1),
            "p90": round(_percentile(latencies, 0.90), 1),
            "p99": round(_percentile(latencies, 0.99), 1),
            "max": round(latencies[-1], 1) if latencies else 0.0,
        },
        "phases": dict(phases),
        "errors": errors,
        "mismatches": sum(n for k, n in problems.items() if k.startswith("mismatch:")),
        "problems": dict(problems.most_common(10)),
        "processes": {name: cpu(name) for name in watch},
        "loadgen_cpu_us_per_request": loadgen,
        "host_cpu_busy_pct": round(100 * busy / total, 1) if total else None,
        "setup_s": {"max": max(setup, default=0.0), "total_wall": round(time.monotonic() - started, 2)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.proto_load", description=__doc__)
    parser.add_argument("protocol", choices=("enip", "opcua"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--item", action="append", required=True, help="a tag or node id (repeatable)")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--pid", action="append", default=[], help="NAME=PID of a process to watch")
    parser.add_argument("--option", action="append", default=[], help="KEY=VALUE for the client")
    args = parser.parse_args(argv)
    watch = {}
    for item in args.pid:
        name, _, pid = item.partition("=")
        watch[name] = int(pid)
    options = dict(item.partition("=")[::2] for item in args.option)
    spec = WorkerSpec(args.protocol, args.host, args.port, tuple(args.item), options)
    try:
        report = run_workers(spec, args.workers, warmup_s=args.warmup, duration_s=args.duration, watch=watch)
    except RuntimeError as exc:
        print(json.dumps({"failed": str(exc)}), flush=True)
        return 2
    print(json.dumps(report), flush=True)
    return 0 if report["errors"] == 0 and report["mismatches"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
