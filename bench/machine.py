"""What the numbers were measured on: CPU, cores, kernel, Python, and the versions of every program
and library on the paths, plus the state of the ztgate working tree."""

from __future__ import annotations

import os
import platform
import re
import shutil
import ssl
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["describe_machine"]


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout + done.stderr).strip()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _package(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _first(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    return match.group(1) if match else "not installed"


def describe_machine(repo: Path) -> dict[str, Any]:
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    stunnel = shutil.which("stunnel4") or shutil.which("stunnel") or "stunnel4"
    mem_kib = 0
    try:
        with open("/proc/meminfo") as file:
            mem_kib = int(file.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "os": _first(r'PRETTY_NAME="([^"]+)"', Path("/etc/os-release").read_text())
        if Path("/etc/os-release").exists()
        else platform.platform(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "versions": {
            "haproxy": _first(r"HAProxy version (\S+)", _run([haproxy, "-v"])),
            "stunnel": _first(r"stunnel (\S+)", _run([stunnel, "-version"])),
            "uvloop": _package("uvloop"),
            "py-spy": _package("py-spy"),
            "matplotlib": _package("matplotlib"),
            "pycomm3": _package("pycomm3"),
            "asyncua": _package("asyncua"),
        },
        "ztgate_commit": _run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=repo)
        or "unknown",
    }
