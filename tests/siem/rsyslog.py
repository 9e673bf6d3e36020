"""A real syslog collector for the tests: Debian's rsyslogd, with a configuration written at run time.

One :class:`Rsyslog` listens on one transport: ``tcp`` (imtcp, octet counting is what it takes from
RFC 6587 framing), ``tls`` (imtcp with the gnutls network stream driver, RFC 5425, checking the client's
certificate against the CA when one is given) or ``udp`` (imudp, RFC 5426). It parses each message as
RFC 5424 and writes one JSON object per message (the header fields as rsyslog parsed them, and MSG) to
``out.jsonl``, which :meth:`Rsyslog.messages` reads. TCP first listens on port 0 and reports its port
through imtcp's port file; imudp has no such file, and a collector started again on its port writes
none, so the ports are also found from the socket inodes the process holds (``/proc``). The process runs
under ``timeout`` so it ends by itself even if a test dies before stopping it; :meth:`Rsyslog.stop` ends
it by its pid. ``./run test`` installs rsyslog and rsyslog-gnutls; without them these tests skip with the
reason, except under ``./run test``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

RSYSLOGD = "/usr/sbin/rsyslogd"
GTLS_MODULE = Path("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so")
LIFETIME_S = 600  # the most a collector lives, even if nobody stops it
START_TIMEOUT_S = 20.0


def require_rsyslog(transport: str = "tcp") -> None:
    missing = not os.access(RSYSLOGD, os.X_OK) or (transport == "tls" and not GTLS_MODULE.exists())
    if missing:
        reason = "no rsyslogd (with the gnutls driver) for the syslog tests (./run test installs rsyslog)"
        if os.environ.get("ZTGATE_REQUIRE_POSTGRES"):  # set by ./run test, which installs both
            pytest.fail(reason)
        pytest.skip(reason)


@dataclass(frozen=True)
class CollectorTls:
    ca: Path
    cert: Path
    key: Path
    verify_clients: bool


def _config(directory: Path, transport: str, tls: CollectorTls | None, port: int) -> str:
    out = directory / "out.jsonl"
    lines = [f'global(workDirectory="{directory}" maxMessageSize="64k"']
    if tls is not None:
        lines.append(
            f'       defaultNetstreamDriverCAFile="{tls.ca}" defaultNetstreamDriverCertFile="{tls.cert}"'
            f' defaultNetstreamDriverKeyFile="{tls.key}"'
        )
    lines[-1] += ")"
    # One worker on the main queue: with rsyslog's default of several, batches can reach the file out
    # of the order they arrived in, and the tests check order.
    lines.append('main_queue(queue.workerThreads="1")')
    if transport == "udp":
        lines.append('module(load="imudp")')
        lines.append(f'input(type="imudp" address="127.0.0.1" port="{port}" ruleset="out")')
    else:
        module = 'module(load="imtcp" maxSessions="100"'
        if tls is not None:
            auth = "x509/certvalid" if tls.verify_clients else "anon"
            module += f' streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="{auth}"'
        lines.append(module + ")")
        lines.append(
            f'input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="out"'
            f' listenPortFileName="{directory / "port"}")'
        )
    lines += [
        'template(name="fields" type="list" option.jsonf="on") {',
        '  property(outname="facility" name="syslogfacility" format="jsonf")',
        '  property(outname="severity" name="syslogseverity" format="jsonf")',
        '  property(outname="time" name="timereported" dateFormat="rfc3339" format="jsonf")',
        '  property(outname="hostname" name="hostname" format="jsonf")',
        '  property(outname="app_name" name="app-name" format="jsonf")',
        '  property(outname="procid" name="procid" format="jsonf")',
        '  property(outname="msgid" name="msgid" format="jsonf")',
        '  property(outname="protocol_version" name="protocol-version" format="jsonf")',
        '  property(outname="msg" name="msg" format="jsonf")',
        "}",
        'ruleset(name="out") {',
        f'  action(type="omfile" file="{out}" template="fields" flushOnTXEnd="on" asyncWriting="off")',
        "}",
    ]
    return "\n".join(lines) + "\n"


class Rsyslog:
    """One rsyslogd in ``directory``; start() returns its port. May be stopped and started again on
    the same port (a collector outage)."""

    def __init__(
        self,
        directory: Path,
        transport: str,
        tls: CollectorTls | None = None,
        *,
        lifetime_s: float = LIFETIME_S,
    ) -> None:
        require_rsyslog(transport)
        self.lifetime_s = lifetime_s
        self.dir = directory
        self.transport = transport
        self.tls = tls
        self.port = 0
        self.out = directory / "out.jsonl"
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def start(self) -> int:
        if self.process is not None:
            raise RuntimeError("already running")
        config = self.dir / "rsyslog.conf"
        config.write_text(_config(self.dir, self.transport, self.tls, self.port))
        (self.dir / "port").unlink(missing_ok=True)
        command = [
            "timeout",
            str(round(self.lifetime_s)),
            RSYSLOGD,
            "-n",
            "-f",
            str(config),
            "-i",
            str(self.dir / "pid"),
        ]
        with open(self.dir / "stderr", "ab") as stderr:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            port = self._bound_port()
            if port:
                self.port = port
                return port
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("rsyslogd did not start:\n" + (self.dir / "stderr").read_text())
            time.sleep(0.02)

    def _bound_port(self) -> int:
        if self.transport != "udp" and not self.port:
            try:  # imtcp writes the port it got for port 0 (only then)
                text = (self.dir / "port").read_text().strip()
            except FileNotFoundError:
                return 0
            return int(text) if text.isdigit() else 0
        ports = self._listening_ports()
        if self.port:
            return self.port if self.port in ports else 0
        return ports[0] if ports else 0

    def _daemon_pids(self) -> list[int]:
        """rsyslogd's pid: the child of ``timeout`` (none before it has started or after it ended)."""
        assert self.process is not None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(pid) for pid in children.read_text().split()]
        except OSError:
            return []

    def _listening_ports(self) -> list[int]:
        """The ports rsyslogd listens on: TCP sockets in LISTEN, or UDP."""
        inodes: set[str] = set()
        for pid in self._daemon_pids():
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        target = os.readlink(f"/proc/{pid}/fd/{fd}")
                        if target.startswith("socket:["):
                            inodes.add(target[8:-1])
        table, listening = ("udp", "07") if self.transport == "udp" else ("tcp", "0A")
        ports = []
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes and fields[3] == listening:
                ports.append(int(fields[1].split(":")[1], 16))
        return ports

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        daemons = self._daemon_pids()
        self.process = None
        # SIGTERM to rsyslogd itself, which flushes its output and exits; timeout then exits with it.
        # Signalling only timeout is not enough: if timeout had to be killed, rsyslogd would live on,
        # holding the port and its pidfile, and the next start on this port would fail.
        with contextlib.suppress(ProcessLookupError):
            for pid in daemons:
                os.kill(pid, signal.SIGTERM)
            if not daemons:  # not started yet, or already gone: timeout passes the signal on
                process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            for pid in daemons:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.kill()
            process.wait(10)
        # rsyslogd refuses to start while its pidfile names a live process; a daemon ended before it
        # could remove the file leaves it behind, and its pid may since belong to another process.
        (self.dir / "pid").unlink(missing_ok=True)

    def messages(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        # Complete lines only: rsyslog may be in the middle of writing the last one.
        return [orjson.loads(line) for line in self.out.read_bytes().split(b"\n")[:-1] if line.strip()]

    def count(self) -> int:
        """Messages written so far (lines, without parsing them)."""
        return self.out.read_bytes().count(b"\n") if self.out.exists() else 0

    def wait_for(self, count: int, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """The messages once at least ``count`` have arrived (or what arrived by the deadline)."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.messages()
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.02)


def available() -> bool:
    return shutil.which(RSYSLOGD) is not None


# The policy the SIEM tests' gateways decide by: operators read 0-99 and write 0-9 on plc-1.
RULES = """
[[rules]]
id = "operators-read"
subjects = ["group:operators"]
assets = ["plc-1"]
modbus = [{ fc = [3], address = "0-99" }]

[[rules]]
id = "operators-write"
subjects = ["group:operators"]
assets = ["plc-1"]
modbus = [{ fc = [6], address = "0-9" }]
"""


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
