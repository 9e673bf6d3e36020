"""Real processes for tests that must not share an event loop with the gateway: ``ztgate gateway``,
``ztgate agent`` and ``ztgate sim`` started as an operator starts them, from a config file, with their
output kept.

The gateway's stderr (its log) is read continuously into :attr:`GatewayProcess.log`, so a test can
assert that nothing escaped (no traceback) and a full pipe never stalls the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from gateway.config import TlsFiles
from tests.e2e.harness import Pki

REPO_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0

_OVERLAY_LINE = re.compile(rb"overlay on (\S+):(\d+)")
_ADMIN_LINE = re.compile(rb"admin http://[^:]+:(\d+)")
_AGENT_LISTENER_LINE = re.compile(rb"127\.0\.0\.1:(\d+) -> ")
_SIM_LINE = re.compile(rb"listening on (?:opc\.tcp://)?(\S+?):(\d+)")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


async def _stop(process: asyncio.subprocess.Process) -> int:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                return await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    return await process.wait()


class SimProcess:
    """``ztgate sim PROTOCOL --listen 127.0.0.1:0 --static``; :attr:`port` once started. ``prefix`` runs
    it under another command (``ip netns exec NS``)."""

    def __init__(
        self, protocol: str, *args: str, listen: str = "127.0.0.1:0", prefix: Sequence[str] = ()
    ) -> None:
        self.protocol = protocol
        self.args = args
        self.listen = listen
        self.prefix = tuple(prefix)
        self.port = 0
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> int:
        command = [*self.prefix, sys.executable, "-m", "gateway", "sim", self.protocol, "--static"]
        command += ["--listen", self.listen]
        self.process = await asyncio.create_subprocess_exec(
            *command, *self.args, cwd=REPO_ROOT, env=_env(), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                line = await self.process.stdout.readline()
        except BaseException:
            await self.stop()
            raise
        found = _SIM_LINE.search(line)
        if found is None:
            await self.stop()
            raise RuntimeError(f"ztgate sim {self.protocol}: unexpected first line {line!r}")
        self.port = int(found.group(2))
        return self.port

    async def stop(self) -> None:
        if self.process is not None:
            await _stop(self.process)


class _LoggedProcess:
    """A ztgate subprocess whose stderr is kept in :attr:`log` and scanned, line by line, for what its
    start-up announces (:meth:`_scan` sets the ready future)."""

    what = "process"

    def __init__(self) -> None:
        self.log: list[bytes] = []
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def _spawn(self, command: Sequence[str]) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *command, cwd=REPO_ROOT, env=_env(), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        ready = asyncio.get_running_loop().create_future()
        self._reader = asyncio.get_running_loop().create_task(self._read_log(ready))
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                await ready
        except BaseException:
            await self.stop()
            raise RuntimeError(f"the {self.what} did not start:\n" + self.log_text()) from None

    async def _read_log(self, ready: asyncio.Future[None]) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for line in self.process.stderr:
            self.log.append(line)
            self._scan(line, ready)
        if not ready.done():
            ready.set_exception(RuntimeError(f"the {self.what} exited"))

    def _scan(self, line: bytes, ready: asyncio.Future[None]) -> None:
        raise NotImplementedError

    def log_text(self) -> str:
        return b"".join(self.log).decode(errors="replace")

    async def stop(self) -> int | None:
        if self.process is None:
            return None
        status = await _stop(self.process)
        if self._reader is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await self._reader
        return status


class GatewayProcess(_LoggedProcess):
    """``ztgate gateway --config`` with a config written from the arguments; :attr:`port` once started."""

    what = "gateway"

    def __init__(
        self,
        pki: Pki,
        directory: Path,
        policy: str,
        *,
        overlay: Mapping[str, object] | None = None,
        gateway: Mapping[str, object] | None = None,
        extra_args: Sequence[str] = (),
        listen: str = "127.0.0.1:0",
        prefix: Sequence[str] = (),
        tls: TlsFiles | None = None,
        audit: Sequence[str] | None = None,
    ) -> None:
        """``audit``: the lines of the config after ``[audit]`` (default: the file ``audit.jsonl``)."""
        self.dir = directory
        self.policy_path = directory / "policy.toml"
        self.audit_path = directory / "audit.jsonl"
        self.config_path = directory / "gateway.toml"
        self.policy_path.write_text(policy)
        lines = ["[gateway]", 'name = "gw-proc"', f'listen = "{listen}"', 'policy = "policy.toml"']
        lines += [f"{key} = {_toml_value(value)}" for key, value in (gateway or {}).items()]
        tls = tls or TlsFiles(pki.gateway.cert, pki.gateway.key, pki.ca)
        lines += ["", "[tls]", f'cert = "{tls.cert}"', f'key = "{tls.key}"', f'ca = "{tls.ca}"']
        lines += ["", "[admin]", 'listen = "127.0.0.1:0"']
        audit_lines = audit if audit is not None else ['file = "audit.jsonl"', "stdout = false"]
        lines += ["", "[audit]", *audit_lines]
        if overlay:
            lines += ["", "[overlay]", *(f"{key} = {_toml_value(value)}" for key, value in overlay.items())]
        self.config_path.write_text("\n".join(lines) + "\n")
        self.extra_args = extra_args
        self.prefix = tuple(prefix)
        self.port = 0
        self.admin_port = 0
        super().__init__()

    async def start(self) -> int:
        command = [sys.executable, "-m", "gateway", "gateway", "--config", str(self.config_path)]
        await self._spawn([*self.prefix, *command, *self.extra_args])
        return self.port

    def _scan(self, line: bytes, ready: asyncio.Future[None]) -> None:
        if not ready.done() and (found := _OVERLAY_LINE.search(line)):
            self.port = int(found.group(2))
            admin = _ADMIN_LINE.search(line)
            self.admin_port = int(admin.group(1)) if admin else 0
            ready.set_result(None)

    def rss_bytes(self) -> int:
        """The gateway's resident memory now."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")


class AgentProcess(_LoggedProcess):
    """``ztgate agent --config`` with an admin listener on a port the system picks; :attr:`admin_port`
    once started. Its log is kept in :attr:`log`."""

    what = "agent"

    def __init__(
        self, directory: Path, tls: TlsFiles, *, gateway: str = "localhost:1", asset: str = "plc-1"
    ) -> None:
        self.config_path = directory / "agent.toml"
        lines = ["[agent]", f"gateway = {_toml_value(gateway)}", 'admin = "127.0.0.1:0"']
        lines += [
            "",
            "[tls]",
            *(f"{key} = {_toml_value(getattr(tls, key))}" for key in ("cert", "key", "ca")),
        ]
        lines += ["", "[[listeners]]", 'listen = "127.0.0.1:0"', f"asset = {_toml_value(asset)}"]
        self.config_path.write_text("\n".join(lines) + "\n")
        self.admin_port = 0
        self.listen_port = 0
        super().__init__()

    async def start(self) -> int:
        await self._spawn([sys.executable, "-m", "gateway", "agent", "--config", str(self.config_path)])
        return self.admin_port

    def _scan(self, line: bytes, ready: asyncio.Future[None]) -> None:
        if not self.listen_port and (found := _AGENT_LISTENER_LINE.search(line)):
            self.listen_port = int(found.group(1))
        if not ready.done() and (found := _ADMIN_LINE.search(line)):
            self.admin_port = int(found.group(1))
            ready.set_result(None)
