"""The container lab, checked without a container engine (containers/check.py): its configs load with
ztgate's loaders, compose.yaml keeps the PLC in a closed network, and with --run the lab's configs work
as processes on loopback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_container_lab_runs_as_processes() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "containers" / "check.py"), "--run"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
