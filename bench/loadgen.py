"""The Modbus load of the bench: the workloads, the fast server, and one bounded run of a load generator.

The bench's own generator and server are :mod:`bench.modbus_load` and :mod:`bench.modbus_server`. An
independent generator with the same command line and the same JSON report - ``modbus_load.py`` from the
project's reference material, when it is found (:func:`find_independent`) - runs beside it on the direct
and ztgate paths as a cross-check of the figures (:mod:`bench.crosscheck`).

A generator checks every reply (transaction id, unit, function code, length, byte count and the values
the server holds) and reads the CPU time of the processes named with ``--pid``/``--pid-tree`` from /proc
over the measured window only.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import Proc, Supervisor, wait_listening

__all__ = [
    "OWN_GENERATOR",
    "REPO",
    "WORKLOADS",
    "Generator",
    "LoadError",
    "Workload",
    "find_independent",
    "proc_cpu",
    "run_load",
    "start_server",
]

REPO = Path(__file__).resolve().parent.parent
ENV_VAR = "ZTGATE_MODBUS_LOAD"


@dataclass(frozen=True)
class Workload:
    name: str
    label: str
    connections: int
    depth: int
    mix: str  # the generator's --mix, e.g. "3" or "3:8,4:1,6:1"
    address: int = 40
    count: int = 10

    def load_args(self) -> list[str]:
        args = ["-c", str(self.connections), "-d", str(self.depth)]
        args += ["--address", str(self.address), "--count", str(self.count)]
        return [*args, "--mix", self.mix] if "," in self.mix else [*args, "--fc", self.mix]


# Addresses 40..49: inside the bench identity's read range (0-999), and address 40 is its bounded write
# (FC 6, value 0-1500); the generator writes the value the server already holds (40), so reads stay
# verifiable under the mix.
WORKLOADS: dict[str, Workload] = {
    "1x1": Workload("1x1", "FC 3 read of 10, 1 connection x 1 in flight", 1, 1, "3"),
    "8x4": Workload("8x4", "FC 3 read of 10, 8 connections x 4 in flight", 8, 4, "3"),
    "mix": Workload(
        "mix", "80% FC 3 / 10% FC 4 reads of 10, 10% FC 6 bounded write; 8 x 4", 8, 4, "3:8,4:1,6:1"
    ),
}


class LoadError(RuntimeError):
    """The load generator could not run (setup failure: no connection, TLS failure, no replies)."""


@dataclass(frozen=True)
class Generator:
    """A load generator: the command that starts it, before its options."""

    name: str
    argv: tuple[str, ...]


OWN_GENERATOR = Generator("bench.modbus_load", (sys.executable, "-m", "bench.modbus_load"))
# The independent generator's default place: the reference material beside a checkout of the repository.
INDEPENDENT_DEFAULT = REPO.parent / "shared" / "bench" / "modbus_load.py"


def find_independent(explicit: str | None = None) -> tuple[Generator | None, str]:
    """The independent generator for the cross-check - ``--modbus-load``, else $ZTGATE_MODBUS_LOAD, else
    ../shared/bench/modbus_load.py beside the repository - or None; and one line saying which, or why
    there is none."""
    named = explicit or os.environ.get(ENV_VAR)
    candidate = Path(named) if named else INDEPENDENT_DEFAULT
    if candidate.is_file():
        path = candidate.resolve()
        return Generator("modbus_load.py", (sys.executable, str(path), "load")), f"the independent {path}"
    where = f"{candidate} (given)" if named else f"{candidate} (give --modbus-load PATH or set {ENV_VAR})"
    return None, f"no independent load generator at {where}"


def start_server(sup: Supervisor) -> tuple[Proc, int]:
    """The bench's fast Modbus server on a kernel-chosen loopback port."""
    proc = sup.spawn(
        "modbus-server",
        [sys.executable, "-m", "bench.modbus_server", "--host", "127.0.0.1", "--port", "0"],
        cwd=REPO,
    )
    ports = wait_listening(proc)
    # The log line names the port too; /proc is the source of truth.
    match = re.search(r"listening on 127\.0\.0\.1:(\d+)", proc.log_tail())
    port = int(match.group(1)) if match and int(match.group(1)) in ports else min(ports)
    return proc, port


def run_load(
    generator: Generator,
    port: int,
    workload: Workload,
    *,
    warmup_s: float,
    duration_s: float,
    tls_args: list[str] | None = None,
    watch_tree: list[int] | None = None,
    watch_pid: list[int] | None = None,
    extra: list[str] | None = None,
) -> dict[str, Any]:
    """One bounded run of a load generator; returns its JSON report (errors included: exit 1)."""
    argv = [*generator.argv, "--host", "127.0.0.1", "--port", str(port)]
    argv += workload.load_args()
    argv += ["--warmup", str(warmup_s), "--duration", str(duration_s), "--compact"]
    argv += ["--max-time", str(warmup_s + duration_s + 20)]
    argv += tls_args or []
    for pid in watch_tree or []:
        argv += ["--pid-tree", str(pid)]
    for pid in watch_pid or []:
        argv += ["--pid", str(pid)]
    argv += extra or []
    started = time.monotonic()
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=warmup_s + duration_s + 40, check=False, cwd=REPO
        )
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"{generator.name} did not finish in {exc.timeout:g} s") from None
    if done.returncode not in (0, 1) or not done.stdout.strip():
        raise LoadError(f"{generator.name} exited with {done.returncode}: {done.stderr.strip()[-800:]}")
    try:
        report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError) as exc:
        raise LoadError(f"{generator.name} printed no JSON report ({exc}): {done.stdout[-300:]!r}") from None
    report["wall_s"] = round(time.monotonic() - started, 2)
    return report


def proc_cpu(report: dict[str, Any], kind: str, pid: int) -> float | None:
    """CPU µs per request of a watched process (``kind`` "tree" or "pid") from a load report."""
    entry = report.get("processes", {}).get(f"{kind}:{pid}")
    if not entry or "cpu_us_per_request" not in entry:
        return None
    value = entry["cpu_us_per_request"]
    return float(value) if value is not None else None
