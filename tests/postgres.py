"""A throw-away PostgreSQL cluster for the tests, from Debian's ``postgresql`` package.

``initdb`` and ``pg_ctl`` run in a temporary folder on a free loopback port, as the ``postgres`` user
when the tests run as root (PostgreSQL refuses to run as root), as the current user otherwise. The
cluster lives for the test session (one per pytest-xdist worker that needs it); each test gets a
database of its own. Without the package the tests that need it skip with the reason, except under
``./run test`` (``ZTGATE_REQUIRE_POSTGRES=1``), where a missing PostgreSQL is an error: CI must not go
green without them.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REQUIRE_ENV = "ZTGATE_REQUIRE_POSTGRES"
BIND_ATTEMPTS = 3
SETTINGS = "-c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"


@dataclass(frozen=True)
class Cluster:
    host: str
    port: int
    user: str
    bin_dir: Path

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def sql(self, statement: str) -> None:
        """Run one statement with psql (from synchronous fixtures, outside any event loop)."""
        subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.url("postgres"),
                "-c",
                statement,
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"PostgreSQL is required here ({REQUIRE_ENV} is set): {reason}")
    pytest.skip(f"no PostgreSQL for the store tests: {reason} (./run test installs Debian's postgresql)")


@contextlib.contextmanager
def cluster() -> Iterator[Cluster]:
    bin_dir = _bin_dir()
    if bin_dir is None:
        _unavailable("initdb not found under /usr/lib/postgresql")
        raise AssertionError("unreachable")
    as_root = os.geteuid() == 0
    if as_root:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no postgres user")
            raise AssertionError("unreachable") from None
    base = Path(tempfile.mkdtemp(prefix="ztgate-pg-"))
    base.chmod(0o755)
    data, sockets, log = base / "data", base / "run", base / "server.log"
    sockets.mkdir()
    if as_root:
        for path in (base, sockets):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    runner = ["runuser", "-u", "postgres", "--"] if as_root else []

    def run(*args: str) -> None:
        result = subprocess.run([*runner, *args], capture_output=True, text=True, check=False, timeout=120)
        if result.returncode != 0:
            detail = (result.stdout + result.stderr).strip()
            if log.exists():
                detail += "\n" + log.read_text(errors="replace")
            raise RuntimeError(f"{' '.join(args[:2])} failed:\n{detail}")

    try:
        run(
            str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "ztgate", "--no-sync", "-E", "UTF8"
        )
        # The port is free when probed but may be taken before the postmaster binds it (the suite's
        # workers and other processes bind ports too): a bind failure tries another port.
        for attempt in range(1, BIND_ATTEMPTS + 1):
            port = _free_port()
            options = f"-p {port} -k {sockets} {SETTINGS}"
            try:
                run(
                    str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60",
                    "start",
                )  # fmt: skip
                break
            except RuntimeError as exc:
                if attempt == BIND_ATTEMPTS or "Address already in use" not in str(exc):
                    raise
        try:
            yield Cluster("127.0.0.1", port, "ztgate", bin_dir)
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)
