"""Where the gateway's time goes under load: ``py-spy record --native`` attached to the running gateway
while a workload runs (a run of its own, never a measured one: sampling slows the process down).

The split between user space and the kernel comes from /proc (``proxy_user_us_per_req`` and
``proxy_sys_us_per_req`` of the measured runs), not from py-spy: py-spy over-samples threads that sit in
a system call (on this machine it put ~50% of the gateway's busy samples in ``write()`` while /proc
counted ~20% of its CPU time in the kernel). So the samples whose innermost frame is a system call are
set aside, and the rest split the *user-space* time: per category, per leaf function ("self") and per
Python function anywhere on the stack ("inclusive"). Threads blocked in epoll or on a lock are idle
and left out altogether.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.loadgen import OWN_GENERATOR, Workload, run_load
from bench.paths import RunningPath

__all__ = ["find_py_spy", "profile_gateway", "summarize"]

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<where>[^()]*?)(?::(?P<line>\d+))?\)$")


def find_py_spy() -> str | None:
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


def _parse(frame: str) -> tuple[str, str]:
    """(function, file or library) of one py-spy frame, line numbers dropped."""
    match = _FRAME.match(frame)
    if not match:
        return frame, ""
    return match["func"], match["where"]


def _is_python(where: str) -> bool:
    return where.endswith(".py") or where.startswith("<frozen")


_WAITS = frozenset(("Condition.wait", "Event.wait", "Thread.join", "sleep", "select", "Queue.get"))


_CODECS = {
    "modbus": "Python: Modbus codec (protocols/)",
    "enip": "Python: CIP codec (protocols/enip/)",
    "opcua": "Python: OPC UA codec (protocols/opcua/)",
}


def _is_libc(where: str) -> bool:
    return where.startswith(("libc.so", "libc-", "libpthread")) or where == "[vdso]"


def _is_idle(frames: list[tuple[str, str]]) -> bool:
    """A thread blocked in the kernel waiting (epoll, a futex under Event.wait, ...), not using CPU.
    py-spy's own idle filter does not apply to native stacks, so the summary drops these itself."""
    func, where = frames[-1]
    if func.startswith("epoll"):
        return True
    if not _is_libc(where):
        return False
    # An idle executor thread waits in a C queue's get() (a futex): only its Python frame is named.
    return any(f in _WAITS for f, _ in frames) or any(
        f == "_worker" and w.endswith("concurrent/futures/thread.py") for f, w in frames
    )


def _category(frames: list[tuple[str, str]]) -> str:
    func, where = frames[-1]
    names = {f for f, _ in frames}
    if "AuditLog._run" in names:
        return "audit writer thread"
    if "Thread._bootstrap" in names:
        return "other threads"
    if _is_libc(where):
        if func.startswith(("write", "writev", "send")):
            return "kernel: socket writes (write/send syscalls)"
        if func.startswith(("read", "recv")):
            return "kernel: socket reads (read/recv syscalls)"
        if func.startswith(("epoll_ctl", "close", "futex", "syscall", "accept", "getsockopt", "setsockopt")):
            return "kernel: other system calls"
        if func == "getpid":  # CPython's asyncio.get_running_loop() checks the pid: a system call each time
            return "kernel: other system calls"
    if any(w.startswith(("libssl", "libcrypto", "_ssl")) for _, w in frames):
        return "TLS (OpenSSL, _ssl)"
    if any(f.startswith("gc_collect") for f, _ in frames):
        return "garbage collector"
    # Otherwise the innermost Python frame decides whose work it is, C helpers (malloc, dict and bytes
    # operations, reference counting) included.
    for _, w in reversed(frames):
        if _is_python(w):
            if w.startswith("protocols/"):
                return _CODECS.get(w.split("/")[1], "Python: codec (protocols/)")
            if w.startswith("policies/"):
                return "Python: policy decision (policies/)"
            if w in ("gateway/audit.py",):
                return "Python: audit (gateway/audit.py)"
            if w in ("gateway/metrics.py",):
                return "Python: metrics (gateway/metrics.py)"
            if w.startswith("gateway/"):
                return "Python: session engine + upstream pool (gateway/)"
            if w == "ssl.py":
                return "TLS (OpenSSL, _ssl)"
            if "asyncio" in w or "runners" in w:
                return "event loop (uvloop, C) + interpreter"
            return f"Python: other ({w})"
    if where.endswith((".c", ".h", ".pyx")) or "loop" in where or "uvloop" in where:
        return "event loop (uvloop, C) + interpreter"
    return "interpreter / other native"


def summarize(raw: str, top: int = 15) -> dict[str, Any]:
    """Shares of the user-space samples in py-spy's raw output (see the module docstring)."""
    total = 0
    idle = 0
    in_syscalls = 0
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_parse(f) for f in stack.split(";")]
        if _is_idle(frames):
            idle += count
            continue
        category = _category(frames)
        if category.startswith("kernel"):
            in_syscalls += count
            continue
        total += count
        func, where = frames[-1]
        leaf[f"{func} ({where})"] += count
        for name in {f"{f} ({w})" for f, w in frames if _is_python(w) and not w.startswith("<frozen")}:
            inclusive[name] += count
        categories[category] += count

    def shares(counter: Counter[str], n: int) -> list[dict[str, Any]]:
        return [{"name": k, "pct": round(100.0 * v / max(total, 1), 1)} for k, v in counter.most_common(n)]

    return {
        "samples": total,
        "idle_samples_dropped": idle,
        "syscall_samples_set_aside": in_syscalls,
        "categories": shares(categories, 30),
        "self": shares(leaf, top),
        "inclusive": [
            row
            for row in shares(inclusive, top + 12)
            if not row["name"].startswith(("run (", "main (", "<module> (", "Runner.run", "_run_code"))
        ][:top],
    }


def profile_gateway(
    py_spy: str,
    gateway: RunningPath,
    workload: Workload,
    out_dir: Path,
    *,
    duration_s: float,
    rate: int = 250,
) -> dict[str, Any]:
    """Record ``duration_s`` of the gateway under ``workload``; returns the summary (and the load's
    figures while profiled, which are slower than unprofiled ones)."""
    assert gateway.proc is not None
    warmup_s = 2.0
    result: dict[str, Any] = {}

    def load() -> None:
        result["load"] = run_load(
            OWN_GENERATOR,
            gateway.port,
            workload,
            warmup_s=warmup_s,
            duration_s=duration_s + 2.0,
            tls_args=gateway.tls_args,
            watch_tree=[gateway.proc.pid] if gateway.proc else [],
        )

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    time.sleep(warmup_s + 0.5)
    raw_path = out_dir / f"profile-ztgate-{workload.name}.txt"
    argv = [py_spy, "record", "--pid", str(gateway.proc.pid), "--duration", str(int(duration_s))]
    argv += ["--rate", str(rate), "--format", "raw", "--output", str(raw_path), "--native"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60, check=False)
    if done.returncode != 0 or not raw_path.exists():
        # Native unwinding is not available everywhere; Python frames alone still say a lot.
        argv.remove("--native")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60, check=False)
    thread.join(duration_s + 60)
    if done.returncode != 0 or not raw_path.exists():
        return {"error": f"py-spy failed: {done.stderr.strip()[-400:]}"}
    summary = summarize(raw_path.read_text())
    summary["native"] = "--native" in argv
    summary["rate_hz"] = rate
    summary["duration_s"] = duration_s
    summary["raw_file"] = str(raw_path)
    load_report = result.get("load")
    if load_report:
        summary["load_while_profiled"] = {
            "req_per_s": load_report.get("req_per_s"),
            "p50_us": load_report.get("latency_us", {}).get("p50"),
            "errors": load_report.get("errors"),
        }
    return summary
