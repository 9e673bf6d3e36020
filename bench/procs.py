"""Child processes of a benchmark run: start each in its own process group, find the ports it listens
on, read its CPU time and memory from /proc, and stop every one of them, whatever happens.

Everything here is Linux-only (/proc) and loopback-only.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

__all__ = [
    "Proc",
    "ProcessError",
    "Supervisor",
    "cpu_times",
    "established_to",
    "free_port",
    "host_cpu_jiffies",
    "io_syscalls",
    "listening_ports",
    "port_from_log",
    "raise_fd_limit",
    "rss_bytes",
    "run_dir",
    "tree_cpu_times",
    "wait_listening",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")
_TCP_LISTEN = "0A"
_TCP_ESTABLISHED = "01"


class ProcessError(RuntimeError):
    """A child process failed to start or died; the message carries the end of its log."""


class Proc:
    """One child process, leader of its own process group, with stdout and stderr in a log file."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if not self.alive():
            raise ProcessError(
                f"{self.name} (pid {self.pid}) exited with status {self.popen.returncode}; "
                f"end of {self.log_path}:\n{self.log_tail()}"
            )

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM to the whole process group, then SIGKILL if it is still there after ``timeout_s``."""
        if self.popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.popen.wait(timeout_s)
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def _signal_group(self, signum: int) -> None:
        # Only while the leader is not yet reaped: until then the group id is certainly still ours.
        if self.popen.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signum)


class Supervisor:
    """Starts child processes and guarantees they are stopped (newest first) when the block ends,
    on success, failure, Ctrl-C or SIGTERM."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._procs: list[Proc] = []
        self._old_sigterm: signal._HANDLER = None

    def __enter__(self) -> Supervisor:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._old_sigterm = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
        return self

    def __exit__(self, *_: object) -> None:
        # A second Ctrl-C or SIGTERM while the children are being stopped must not cut that short.
        old_sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            self.stop_all()
        finally:
            signal.signal(signal.SIGINT, old_sigint)
            signal.signal(signal.SIGTERM, self._old_sigterm)

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        pipes: bool = False,
    ) -> Proc:
        """Start ``argv``; its output goes to ``<log_dir>/<name>.log``, or with ``pipes`` its stdin and
        stdout are pipes to this process and only stderr goes to the log."""
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else log,
                stderr=log if pipes else subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,  # own process group: stopped as a group, no terminal SIGINT
            )
        proc = Proc(name, popen, log_path)
        self._procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self._procs:
            self._procs.remove(proc)

    def stop_all(self) -> None:
        while self._procs:
            proc = self._procs.pop()
            with contextlib.suppress(Exception):
                proc.stop()


def _sigterm_to_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# ------------------------------------------------------------------------------------------- ports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for programs that cannot bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return inodes
    for name in names:
        try:
            link = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    return inodes


def _tcp_rows() -> Iterator[tuple[int, int, str, str]]:
    """(local port, remote port, state, inode) of every TCP socket of this network namespace."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as file:
                next(file)
                for line in file:
                    fields = line.split()
                    local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                    yield int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), state, inode
        except OSError:
            continue


def listening_ports(pid: int) -> set[int]:
    """TCP ports the process listens on."""
    inodes = _socket_inodes(pid)
    return {local for local, _, state, inode in _tcp_rows() if state == _TCP_LISTEN and inode in inodes}


def established_to(pid: int, remote_port: int) -> int:
    """How many established TCP connections the process has to ``remote_port``."""
    inodes = _socket_inodes(pid)
    return sum(
        1
        for _, remote, state, inode in _tcp_rows()
        if state == _TCP_ESTABLISHED and remote == remote_port and inode in inodes
    )


def wait_listening(
    proc: Proc, *, count: int = 1, port: int | None = None, timeout_s: float = 15.0
) -> set[int]:
    """Wait until ``proc`` listens on ``port`` (or on at least ``count`` ports); returns its ports."""
    deadline = time.monotonic() + timeout_s
    while True:
        proc.check_alive()
        ports = listening_ports(proc.pid)
        if (port in ports) if port is not None else len(ports) >= count:
            return ports
        if time.monotonic() > deadline:
            want = f"port {port}" if port is not None else f"{count} port(s)"
            raise ProcessError(
                f"{proc.name} (pid {proc.pid}) does not listen on {want} after {timeout_s:g} s "
                f"(listening: {sorted(ports)}); end of {proc.log_path}:\n{proc.log_tail()}"
            )
        time.sleep(0.05)


# ------------------------------------------------------------------------------------- resources


def run_dir(parent: Path, name: str) -> Path:
    """A new directory for one run's logs and lab files: ``parent/name``, or ``name-2``, ``name-3``...
    when that exists. Names carry the second a run started, and two runs started in the same second (the
    test suite's workers do) would otherwise read each other's logs for their ports."""
    parent.mkdir(parents=True, exist_ok=True)
    suffix = ""
    for attempt in range(2, 1000):
        try:
            (parent / f"{name}{suffix}").mkdir()
        except FileExistsError:
            suffix = f"-{attempt}"
            continue
        return parent / f"{name}{suffix}"
    raise FileExistsError(f"{parent / name}: 1,000 runs in the same second?")


def port_from_log(proc: Proc, pattern: str, timeout_s: float = 30.0) -> int:
    """The port a process says it listens on (checked against /proc)."""
    deadline = time.monotonic() + timeout_s
    while True:
        ports = wait_listening(proc, timeout_s=max(0.1, deadline - time.monotonic()))
        found = re.findall(pattern, proc.log_tail(20))  # the last: a log file may be appended to
        if found and int(found[-1]) in ports:
            return int(found[-1])
        if time.monotonic() > deadline:
            raise ProcessError(f"{proc.name}: cannot tell its port among {sorted(ports)}:\n{proc.log_tail()}")
        time.sleep(0.05)


def rss_bytes(pid: int) -> int:
    """Resident set size of the process, from /proc/PID/status (VmRSS)."""
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ProcessError(f"no VmRSS for pid {pid}")


def cpu_times(pid: int) -> tuple[float, float] | None:
    """(user, system) CPU seconds of the process (all its threads), from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            raw = file.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def _descendants(pid: int) -> list[int]:
    """Every live descendant of the process (children of all its threads, their children, ...)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            threads = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in threads:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as file:
                    children = [int(child) for child in file.read().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def tree_cpu_times(pid: int) -> tuple[float, float, int] | None:
    """(user, system) CPU seconds of the process and its live descendants, and how many processes that
    is; for relays that fork a process per connection. None when the process itself is gone."""
    own = cpu_times(pid)
    if own is None:
        return None
    user, system, count = own[0], own[1], 1
    for child in _descendants(pid):
        times = cpu_times(child)
        if times is not None:
            user, system, count = user + times[0], system + times[1], count + 1
    return user, system, count


def host_cpu_jiffies() -> tuple[int, int]:
    """(busy, total) clock ticks of the whole machine since boot, from /proc/stat (idle and iowait are
    not busy)."""
    with open("/proc/stat") as file:
        fields = [int(x) for x in file.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def io_syscalls(pid: int) -> tuple[int, int] | None:
    """(read, write) system calls of the whole process so far, from /proc/PID/io (``syscr``/``syscw``).
    These count read/readv/write/writev and the like, not send/recv/sendmsg/recvmsg."""
    try:
        with open(f"/proc/{pid}/io") as file:
            fields = dict(line.split(":", 1) for line in file if ":" in line)
        return int(fields["syscr"]), int(fields["syscw"])
    except (OSError, KeyError, ValueError):
        return None


def context_switches(pid: int) -> tuple[int, int] | None:
    """(voluntary, involuntary) context switches of the process so far, all its threads
    (/proc/PID/task/*/status): how often it went to sleep waiting for something (roughly its wake-ups),
    and how often the scheduler took the CPU from it while it had work."""
    voluntary = involuntary = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as file:
                for line in file:
                    if line.startswith("voluntary_ctxt_switches:"):
                        voluntary += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        involuntary += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return voluntary, involuntary


def tree_context_switches(pid: int) -> tuple[int, int] | None:
    """:func:`context_switches` of the process and its live descendants (the threads of a relay that
    runs one per connection are counted only while they live: sample while its connections are open)."""
    own = context_switches(pid)
    if own is None:
        return None
    voluntary, involuntary = own
    for child in _descendants(pid):
        switches = context_switches(child)
        if switches is not None:
            voluntary, involuntary = voluntary + switches[0], involuntary + switches[1]
    return voluntary, involuntary


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``wanted`` (capped by the hard limit); children
    inherit it. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft
