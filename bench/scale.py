"""Scale figures: memory per idle overlay session, decision cost against rule count, 32 clients sharing
one upstream connection, and the time to load and compile a 10,000-rule policy."""

from __future__ import annotations

import json
import selectors
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.lab import ASSET, Pool, policy_text
from bench.loadgen import OWN_GENERATOR, REPO, Workload, proc_cpu, run_load
from bench.paths import PathContext, start_ztgate
from bench.policy_cost import decision_cost, load_time
from bench.procs import Proc, ProcessError, established_to, rss_bytes

__all__ = ["ScaleSettings", "run_scale"]

Log = Callable[[str], None]


class ScaleSettings:
    def __init__(self, *, quick: bool, warmup_s: float, duration_s: float) -> None:
        self.quick = quick
        self.session_counts = [200, 1000] if quick else [1000, 10_000]
        self.warm_sessions = 20
        self.rule_counts = [10, 1000, 10_000]
        self.decision_iterations = 50_000 if quick else 100_000
        self.decision_rounds = 3 if quick else 21
        self.load_rounds = 1 if quick else 5
        self.share_warmup_s = warmup_s
        self.share_duration_s = duration_s
        self.share_in_flight = [1, 8]


def _rss_settled(pid: int, settle_s: float = 1.0) -> int:
    """RSS after the process had a moment to settle (audit flushes, freed buffers)."""
    time.sleep(settle_s)
    readings = []
    for _ in range(3):
        readings.append(rss_bytes(pid))
        time.sleep(0.2)
    return readings[-1]


def _read_json_line(proc: Proc, timeout_s: float) -> dict[str, Any]:
    assert proc.popen.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.popen.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            raise ProcessError(f"{proc.name}: no answer within {timeout_s:g} s:\n{proc.log_tail()}")
    line = proc.popen.stdout.readline()
    if not line:
        raise ProcessError(f"{proc.name} ended early:\n{proc.log_tail()}")
    result: dict[str, Any] = json.loads(line)
    return result


def idle_sessions(ctx: PathContext, settings: ScaleSettings, log: Log) -> dict[str, Any]:
    """Open N idle mTLS sessions from a separate client process; the gateway's RSS growth per session."""
    # One client identity opens every session here, far beyond the default per-identity cap.
    gateway = start_ztgate(ctx, name="ztgate-idle", gateway_extra="max_sessions_per_identity = 0\n")
    assert gateway.proc is not None
    lab = ctx.lab
    client = ctx.sup.spawn(
        "idle-client",
        [
            *(sys.executable, "-m", "bench.idle_client", "--port", str(gateway.port), "--ca", str(lab.ca)),
            *("--cert", str(lab.client_cert), "--key", str(lab.client_key), "--sni", ASSET),
            *("--max-sessions", str(max(settings.session_counts) + settings.warm_sessions)),
        ],
        cwd=REPO,
        pipes=True,
    )
    assert client.popen.stdin is not None
    pid = gateway.proc.pid

    def grow(total: int) -> dict[str, Any]:
        assert client.popen.stdin is not None
        client.popen.stdin.write(f"{total}\n".encode())
        client.popen.stdin.flush()
        return _read_json_line(client, timeout_s=120 + total / 50)

    try:
        warm = grow(settings.warm_sessions)  # first sessions pay one-off costs (imports, caches)
        baseline = _rss_settled(pid)
        rows = []
        for count in settings.session_counts:
            opened = grow(settings.warm_sessions + count)
            rss = _rss_settled(pid)
            per_session = (rss - baseline) / count
            rows.append(
                {
                    "sessions": count,
                    "rss_before_mib": round(baseline / 2**20, 1),
                    "rss_after_mib": round(rss / 2**20, 1),
                    "kib_per_session": round(per_session / 1024, 1),
                    "open": opened["open"] - settings.warm_sessions,
                    "failed": opened["failed"],
                    "bad_replies": opened["bad_replies"],
                    "open_seconds": opened["seconds"],
                }
            )
            log(
                f"  {count:>6,} idle sessions: RSS {baseline / 2**20:.1f} -> {rss / 2**20:.1f} MiB = "
                f"{per_session / 1024:.1f} KiB/session (opened in {opened['seconds']} s, "
                f"failed {opened['failed']}, bad replies {opened['bad_replies']})"
            )
        assert client.popen.stdin is not None
        client.popen.stdin.write(b"close\n")
        client.popen.stdin.flush()
        client.popen.wait(30)
        after_close = _rss_settled(pid, 2.0)
        log(f"  all sessions closed: RSS {after_close / 2**20:.1f} MiB")
    finally:
        ctx.sup.stop(client)
        ctx.sup.stop(gateway.proc)
    return {
        "warm_sessions": settings.warm_sessions,
        "warm_failed": warm["failed"],
        "rows": rows,
        "rss_after_close_mib": round(after_close / 2**20, 1),
        "policy_rules": ctx.rules,
    }


def shared_upstream(ctx: PathContext, settings: ScaleSettings, log: Log) -> list[dict[str, Any]]:
    """32 clients x 1 in flight through one upstream connection with max_in_flight 1 and 8."""
    workload = Workload("share", "FC 3 read of 10, 32 connections x 1 in flight", 32, 1, "3")
    rows = []
    for in_flight in settings.share_in_flight:
        pool = Pool(max_connections=1, max_in_flight=in_flight, queue_limit=64)
        gateway = start_ztgate(ctx, name=f"ztgate-share-{in_flight}", pool=pool)
        assert gateway.proc is not None
        try:
            report = run_load(
                OWN_GENERATOR,
                gateway.port,
                workload,
                warmup_s=settings.share_warmup_s,
                duration_s=settings.share_duration_s,
                tls_args=gateway.tls_args,
                watch_tree=[gateway.proc.pid],
            )
            upstream = established_to(gateway.proc.pid, ctx.server_port)
        finally:
            ctx.sup.stop(gateway.proc)
        warm, after = report.get("warmup", {}), report.get("after_window", {})
        row = {
            "max_in_flight": in_flight,
            "clients": workload.connections,
            "upstream_connections": upstream,
            "req_per_s": report.get("req_per_s"),
            "p50_us": report.get("latency_us", {}).get("p50"),
            "p99_us": report.get("latency_us", {}).get("p99"),
            "proxy_cpu_us_per_req": proc_cpu(report, "tree", gateway.proc.pid),
            "errors": int(report.get("errors", 0)) + int(warm.get("errors", 0)) + int(after.get("errors", 0)),
            "mismatches": int(report.get("mismatches", 0))
            + int(warm.get("mismatches", 0))
            + int(after.get("mismatches", 0)),
            "exception_responses": int(report.get("exception_responses", 0))
            + int(warm.get("exception_responses", 0))
            + int(after.get("exception_responses", 0)),
            "error_detail": report.get("error_detail", {}),
        }
        rows.append(row)
        log(
            f"  32 clients, 1 upstream connection, max_in_flight {in_flight}: {row['req_per_s']:,.0f} req/s, "
            f"p50 {row['p50_us']} µs, p99 {row['p99_us']} µs, upstream connections {upstream}, "
            f"errors {row['errors'] + row['mismatches'] + row['exception_responses']}"
        )
    return rows


def policy_figures(work: Path, server_port: int, settings: ScaleSettings, log: Log) -> dict[str, Any]:
    rows = decision_cost(
        settings.rule_counts, iterations=settings.decision_iterations, rounds=settings.decision_rounds
    )
    for row in rows:
        cells = ", ".join(
            f"{name.split(' (')[0]}: {v['ns_median']:.0f} ns" for name, v in row["requests"].items()
        )
        log(f"  decision cost, {row['rules']:>6,} rules: {cells}")
    loads = []
    for n_rules in (1000, 10_000):
        path = work / f"policy-{n_rules}.toml"
        path.write_text(policy_text(n_rules, server_port, Pool(1, 1)))
        result = load_time(path, rounds=settings.load_rounds)
        loads.append(result)
        log(
            f"  load + compile {n_rules:>6,} rules: {result['total_s'] * 1000:.0f} ms "
            f"(load {result['load_s'] * 1000:.0f} ms, first view {result['first_view_s'] * 1000:.1f} ms; "
            f"range {result['total_min_s'] * 1000:.0f}-{result['total_max_s'] * 1000:.0f} ms)"
        )
    return {"decision": rows, "load": loads}


def run_scale(ctx: PathContext, settings: ScaleSettings, log: Log = print) -> dict[str, Any]:
    result: dict[str, Any] = {}
    log("scale: decision cost against rule count, policy load time")
    result["policy"] = policy_figures(ctx.work, ctx.server_port, settings, log)
    log("scale: 32 clients sharing one upstream connection")
    result["shared_upstream"] = shared_upstream(ctx, settings, log)
    log(f"scale: memory per idle overlay session ({', '.join(f'{n:,}' for n in settings.session_counts)})")
    result["idle_sessions"] = idle_sessions(ctx, settings, log)
    return result
