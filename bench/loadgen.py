"""The load generator and the fast Modbus server: ``shared/bench/modbus_load.py``, used as it is, by path.

``modbus_load.py load`` verifies every reply (transaction id, unit, function code, length and, with
``--verify full``, the values its own ``serve`` holds) and reads the CPU time of the processes named
with ``--pid``/``--pid-tree`` from /proc over the measured window only.
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
    "REPO",
    "WORKLOADS",
    "LoadError",
    "Workload",
    "find_modbus_load",
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
    mix: str  # modbus_load --mix, e.g. "3" or "3:8,4:1,6:1"
    address: int = 40
    count: int = 10

    def load_args(self) -> list[str]:
        args = ["-c", str(self.connections), "-d", str(self.depth)]
        args += ["--address", str(self.address), "--count", str(self.count)]
        return [*args, "--mix", self.mix] if "," in self.mix else [*args, "--fc", self.mix]


# Addresses 40..49: inside the bench identity's read range (0-999), and address 40 is its bounded write
# (FC 6, value 0-1500); modbus_load writes the value the server already holds (40), so reads stay
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


def find_modbus_load(explicit: str | None = None) -> Path:
    """``--modbus-load``, else $ZTGATE_MODBUS_LOAD, else ../shared/bench/modbus_load.py beside the repo."""
    candidates = [explicit, os.environ.get(ENV_VAR), str(REPO.parent / "shared" / "bench" / "modbus_load.py")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    raise FileNotFoundError(
        "modbus_load.py not found: expected ../shared/bench/modbus_load.py beside the repository "
        f"(or give --modbus-load PATH or set {ENV_VAR})"
    )


def start_server(sup: Supervisor, modbus_load: Path) -> tuple[Proc, int]:
    """The fast Modbus server on a kernel-chosen loopback port."""
    proc = sup.spawn(
        "modbus-server", [sys.executable, str(modbus_load), "serve", "--host", "127.0.0.1", "--port", "0"]
    )
    ports = wait_listening(proc)
    # The log line names the port too; /proc is the source of truth.
    match = re.search(r"listening on 127\.0\.0\.1:(\d+)", proc.log_tail())
    port = int(match.group(1)) if match and int(match.group(1)) in ports else min(ports)
    return proc, port


def run_load(
    modbus_load: Path,
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
    """One bounded run of ``modbus_load.py load``; returns its JSON report (errors included: exit 1)."""
    argv = [sys.executable, str(modbus_load), "load", "--host", "127.0.0.1", "--port", str(port)]
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
            argv, capture_output=True, text=True, timeout=warmup_s + duration_s + 40, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"modbus_load.py did not finish in {exc.timeout:g} s") from None
    if done.returncode not in (0, 1) or not done.stdout.strip():
        raise LoadError(f"modbus_load.py exited with {done.returncode}: {done.stderr.strip()[-800:]}")
    try:
        report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError) as exc:
        raise LoadError(f"modbus_load.py printed no JSON report ({exc}): {done.stdout[-300:]!r}") from None
    report["wall_s"] = round(time.monotonic() - started, 2)
    return report


def proc_cpu(report: dict[str, Any], kind: str, pid: int) -> float | None:
    """CPU µs per request of a watched process (``kind`` "tree" or "pid") from a load report."""
    entry = report.get("processes", {}).get(f"{kind}:{pid}")
    if not entry or "cpu_us_per_request" not in entry:
        return None
    value = entry["cpu_us_per_request"]
    return float(value) if value is not None else None
