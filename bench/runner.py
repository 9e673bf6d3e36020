"""Interleaved repetitions: every repetition runs every workload once on every path, the path order
rotating from one repetition to the next, so drift on a shared machine (other tenants, thermal, page
cache) hits all paths alike and per-repetition ratios between paths stay meaningful.

With a cross-check generator, the direct and ztgate paths are measured with it too, right before or after
(alternating) the bench's own generator on the same path, so the two figures of a pair are minutes apart at
most; those samples are kept apart and do not enter the tables (:mod:`bench.crosscheck`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.loadgen import Generator, LoadError, Workload, proc_cpu, run_load
from bench.paths import RunningPath
from bench.procs import Proc, ProcessError, cpu_times, io_syscalls

__all__ = ["CROSSCHECK_PATHS", "measure", "run_matrix", "sample_line"]

Sample = dict[str, Any]
CROSSCHECK_PATHS = ("direct", "ztgate")


def measure(
    generator: Generator,
    path: RunningPath,
    server: Proc,
    workload: Workload,
    *,
    warmup_s: float,
    duration_s: float,
) -> Sample:
    """One bounded load run on one path; the figures of the measured window, and every error seen."""
    watch_tree = [path.proc.pid] if path.proc is not None else []
    io_before = io_syscalls(path.proc.pid) if path.proc is not None else None
    server_io_before = io_syscalls(server.pid)
    times_before = cpu_times(path.proc.pid) if path.proc is not None else None
    report = run_load(
        generator,
        path.port,
        workload,
        warmup_s=warmup_s,
        duration_s=duration_s,
        tls_args=path.tls_args,
        watch_tree=watch_tree,
        watch_pid=[server.pid],
    )
    io_after = io_syscalls(path.proc.pid) if path.proc is not None else None
    server_io_after = io_syscalls(server.pid)
    times_after = cpu_times(path.proc.pid) if path.proc is not None else None
    latency = report.get("latency_us", {})
    warm = report.get("warmup", {})
    after = report.get("after_window", {})
    # System calls are counted over the whole load run, warm-up and drain included.
    all_requests = (
        int(report.get("requests", 0)) + int(warm.get("requests", 0)) + int(after.get("requests", 0))
    )
    reads_per_req = writes_per_req = None
    if io_before is not None and io_after is not None and all_requests:
        reads_per_req = round((io_after[0] - io_before[0]) / all_requests, 3)
        writes_per_req = round((io_after[1] - io_before[1]) / all_requests, 3)
    server_reads_per_req = None
    if server_io_before is not None and server_io_after is not None and all_requests:
        server_reads_per_req = round((server_io_after[0] - server_io_before[0]) / all_requests, 3)
    # Context switches per request in the window, the proxy's and the server's: voluntary (its wake-ups)
    # and involuntary (preempted while it had work: more processes runnable than cores).
    processes = report.get("processes", {})
    proxy_switches = (
        processes.get(f"tree:{path.proc.pid}", {}).get("switches_per_request")
        if path.proc is not None
        else None
    )
    user_us = sys_us = None
    if times_before is not None and times_after is not None and all_requests:
        user_us = round((times_after[0] - times_before[0]) * 1e6 / all_requests, 2)
        sys_us = round((times_after[1] - times_before[1]) * 1e6 / all_requests, 2)
    proxy_util = None
    if path.proc is not None:
        proxy_util = report.get("processes", {}).get(f"tree:{path.proc.pid}", {}).get("cpu_util_pct")
    errors = int(report.get("errors", 0)) + int(warm.get("errors", 0)) + int(after.get("errors", 0))
    mismatches = (
        int(report.get("mismatches", 0)) + int(warm.get("mismatches", 0)) + int(after.get("mismatches", 0))
    )
    exceptions = (
        int(report.get("exception_responses", 0))
        + int(warm.get("exception_responses", 0))
        + int(after.get("exception_responses", 0))
    )
    return {
        "path": path.name,
        "workload": workload.name,
        "generator": generator.name,
        "req_per_s": report.get("req_per_s"),
        "p50_us": latency.get("p50"),
        "p90_us": latency.get("p90"),
        "p99_us": latency.get("p99"),
        "max_us": latency.get("max"),
        "proxy_cpu_us_per_req": proc_cpu(report, "tree", path.proc.pid) if path.proc is not None else None,
        "proxy_cpu_util_pct": proxy_util,
        # User / kernel split of the proxy's CPU per request, over the whole load run (from /proc/PID/stat).
        "proxy_user_us_per_req": user_us,
        "proxy_sys_us_per_req": sys_us,
        "proxy_reads_per_req": reads_per_req,
        "proxy_writes_per_req": writes_per_req,
        "server_cpu_us_per_req": proc_cpu(report, "pid", server.pid),
        "loadgen_cpu_us_per_req": report.get("loadgen_cpu_us_per_request"),
        # Reads per request at the two ends: the inverse of the batches the path hands them.
        "server_reads_per_req": server_reads_per_req,
        "loadgen_reads_per_req": report.get("loadgen_reads_per_request"),
        "loadgen_writes_per_req": report.get("loadgen_writes_per_request"),
        "proxy_switches_per_req": proxy_switches,
        "server_switches_per_req": processes.get(f"pid:{server.pid}", {}).get("switches_per_request"),
        "loadgen_switches_per_req": report.get("loadgen_switches_per_request"),
        "loadgen_user_us_per_req": report.get("loadgen_user_us_per_request"),
        "requests": report.get("requests"),
        "window_s": report.get("window_s"),
        # Every reply is checked, warm-up and drain included; a refusal (exception reply) is an error
        # here because every request of every workload is allowed.
        "errors": errors,
        "mismatches": mismatches,
        "exception_responses": exceptions,
        "error_detail": {
            **report.get("error_detail", {}),
            **{f"mismatch:{k}": v for k, v in report.get("mismatch_detail", {}).items()},
            **{f"exception:{k}": v for k, v in report.get("exception_codes", {}).items()},
        },
        "host_cpu_busy_pct": report.get("host_cpu_busy_pct"),
        "unaccounted_cpu_cores": report.get("unaccounted_cpu_cores"),
    }


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def sample_line(sample: Sample) -> str:
    if "failed" in sample:
        return f"{sample['path']:<13} FAILED: {sample['failed']}"
    bad = sample["errors"] + sample["mismatches"] + sample["exception_responses"]
    p50, p99 = _fmt(sample["p50_us"], ",.1f"), _fmt(sample["p99_us"], ",.1f")
    cpu = _fmt(sample["proxy_cpu_us_per_req"], ".2f")
    return (
        f"{sample['path']:<13} {_fmt(sample['req_per_s']):>9} req/s  p50 {p50:>7} µs  p99 {p99:>8} µs"
        f"  proxy CPU {cpu:>6} µs/req  {'errors ' + str(bad) if bad else 'ok'}"
    )


def run_matrix(
    generator: Generator,
    paths: Sequence[RunningPath],
    server: Proc,
    workloads: Sequence[Workload],
    *,
    repeat: int,
    warmup_s: float,
    duration_s: float,
    crosscheck: Generator | None = None,
    log: Callable[[str], None] = print,
) -> tuple[list[Sample], list[Sample]]:
    """Every workload on every path, ``repeat`` times; the samples, and those of the cross-check."""
    samples: list[Sample] = []
    checks: list[Sample] = []
    dead: dict[str, str] = {}
    checked = [p.name for p in paths if crosscheck is not None and p.name in CROSSCHECK_PATHS]
    total = repeat * len(workloads) * (len(paths) + len(checked))
    done = 0
    started = time.monotonic()
    for rep in range(repeat):
        shift = rep % len(paths)
        order = [*paths[shift:], *paths[:shift]]
        for workload in workloads:
            log(f"[repetition {rep + 1}/{repeat}] {workload.name}: {workload.label}")
            for path in order:
                runs = [(generator, samples)]
                if crosscheck is not None and path.name in checked:
                    runs.insert(rep % 2, (crosscheck, checks))
                for gen, into in runs:
                    done += 1
                    sample = _sample(gen, path, server, workload, dead, warmup_s, duration_s)
                    sample["rep"] = rep
                    into.append(sample)
                    elapsed = time.monotonic() - started
                    eta = elapsed / done * (total - done)
                    suffix = f" ({gen.name})" if gen is not generator else ""
                    log(f"  {sample_line(sample)}{suffix}   [{done}/{total}, ~{eta:.0f} s left]")
                    time.sleep(0.2)  # let closed connections settle before the next run starts
    return samples, checks


def _sample(
    generator: Generator,
    path: RunningPath,
    server: Proc,
    workload: Workload,
    dead: dict[str, str],
    warmup_s: float,
    duration_s: float,
) -> Sample:
    """One run, or why it failed; a path whose process died is not run again (``dead``)."""
    failed = {"path": path.name, "workload": workload.name, "generator": generator.name}
    if path.name in dead:
        return {**failed, "failed": dead[path.name]}
    try:
        server.check_alive()
        if path.proc is not None:
            path.proc.check_alive()
        return measure(generator, path, server, workload, warmup_s=warmup_s, duration_s=duration_s)
    except (LoadError, ProcessError) as exc:
        reason = str(exc).splitlines()[0]
        if path.proc is not None and not path.proc.alive():
            dead[path.name] = f"process died: {reason}"
        return {**failed, "failed": reason}
