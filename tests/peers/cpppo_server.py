"""cpppo's EtherNet/IP simulator (an independently written Logix-like server) as a subprocess on a fixed
loopback port, which it keeps across restarts so a gateway pointed at it sees the device come back.

    python -m cpppo.server.enip -a 127.0.0.1:PORT 'SCADA=INT[100]' 'Temp=REAL' ...

PROTOCOL-NOTES: cpppo has no tag-list service (0x55), closes the session (encapsulation status 0x08) on an
unknown tag or service, and needs a connection size of at most 511 for replies over ~500 bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import Sequence

TAGS = ("SCADA=INT[100]", "Temp=REAL", "Count=DINT", "Words=UDINT[10]")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class CpppoProcess:
    START_TIMEOUT_S = 20.0

    def __init__(self, tags: Sequence[str] = TAGS) -> None:
        self.tags = tuple(tags)
        self.port = free_port()  # cpppo cannot report a port it chose: probe one, keep it for restarts
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        quiet = asyncio.subprocess.DEVNULL
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cpppo.server.enip", "-a", f"127.0.0.1:{self.port}", *self.tags,
            stdin=quiet, stdout=quiet, stderr=quiet,
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.START_TIMEOUT_S
        while True:  # readiness: cpppo prints nothing useful, so probe its port (bounded)
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if self._process.returncode is not None or loop.time() > deadline:
                    raise RuntimeError("cpppo did not start") from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return

    async def kill(self) -> None:
        """SIGKILL: the device vanishes without closing its connections."""
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            await self._process.wait()
        self._process = None

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), 5)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        self._process = None
