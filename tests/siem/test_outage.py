"""A collector outage loses nothing: ``ztgate gateway`` (a real process) serves 100,000 Modbus reads and
writes from pipelining mTLS clients while its rsyslog collector is down, then the collector starts and
every decision arrives exactly once, in the order the gateway recorded it per session; the same with the
gateway stopped and started again in between, replaying its spool."""

from __future__ import annotations

import asyncio
import struct
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from gateway.tls import client_context
from tests.e2e.harness import Pki, policy_text
from tests.processes import REPO_ROOT, GatewayProcess
from tests.siem.rsyslog import RULES, Rsyslog

SESSIONS = 4
REQUESTS_PER_SESSION = 25_000  # 100,000 decisions in all, half reads and half writes
CHUNK = 500  # requests per client write
LOAD_TIMEOUT_S = 120.0

# One upstream connection answering in order, and room for every session's pipeline.
ASSET = "max_connections = 1\nmax_in_flight = 64\nqueue_limit = 1000"


class Device:
    """The bench's Modbus server (bench/modbus_server.py): it answers a pipelined batch in one write, so
    the device never limits a load of 100,000 requests (pymodbus's server drops part of a first burst)."""

    def __init__(self) -> None:
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> int:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.modbus_server", "--port", "0", cwd=REPO_ROOT,
            stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self.process.stderr is not None
        async with asyncio.timeout(20):
            line = await self.process.stderr.readline()
        return int(line.rsplit(b":", 1)[1])

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            async with asyncio.timeout(10):
                await self.process.wait()


def frame(n: int) -> bytes:
    """Request n of a session: even n a read of one holding register, odd n a write; tid n."""
    pdu = struct.pack(">BHH", 6, n % 10, n & 0xFFFF) if n % 2 else struct.pack(">BHH", 3, n % 100, 1)
    return struct.pack(">HHHB", n, 0, len(pdu) + 1, 1) + pdu


async def session_load(pki: Pki, port: int, first: int, count: int) -> Counter[tuple[int, int]]:
    """One mTLS session sending requests first..first+count-1 pipelined, and reading every reply."""
    files = pki.clients["alice"]
    context = client_context(files.cert, files.key, pki.ca)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="plc-1")

    async def send() -> None:
        for start in range(first, first + count, CHUNK):
            writer.write(b"".join(frame(n) for n in range(start, min(start + CHUNK, first + count))))
            await writer.drain()

    sender = asyncio.create_task(send())
    exceptions: Counter[tuple[int, int]] = Counter()
    buffer, replies = b"", 0
    while replies < count:
        data = await reader.read(65536)
        assert data, f"the gateway closed the session after {replies} replies"
        buffer += data
        offset = 0
        while len(buffer) - offset >= 9:
            end = offset + 6 + struct.unpack_from(">H", buffer, offset + 4)[0]
            if end > len(buffer):
                break
            if buffer[offset + 7] >= 0x80:
                exceptions[buffer[offset + 7], buffer[offset + 8]] += 1
            replies += 1
            offset = end
        buffer = buffer[offset:]
    await sender
    writer.close()
    return exceptions  # (function | 0x80, exception code): count


async def load(pki: Pki, gateway: GatewayProcess, first: int, count: int) -> None:
    started = time.monotonic()
    async with asyncio.timeout(LOAD_TIMEOUT_S):
        runs = [session_load(pki, gateway.port, first, count) for _ in range(SESSIONS)]
        found = await asyncio.gather(*runs)
    print(f"{SESSIONS * count} requests in {time.monotonic() - started:.1f} s")  # shown with -s
    if any(found):
        failed = [e for e in file_records(gateway) if e.get("event") == "decision" and e["outcome"] != "ok"]
        raise AssertionError(f"exceptions {found}; the gateway's records: {failed[:8]}\n{gateway.log_text()}")


def audit_lines(collector_port: int, spool_mib: float = 256) -> list[str]:
    return [
        "aggregate_reads_s = 0",  # one record per read: every decision is counted below
        "queue_limit = 1000000",
        "[[audit.sinks]]",
        'type = "file"',
        'path = "audit.jsonl"',
        "[[audit.sinks]]",
        'name = "siem"',
        'type = "syslog"',
        'transport = "tcp"',
        'format = "ztgate"',  # the flat record: compared with the file's below
        f'address = "127.0.0.1:{collector_port}"',
        'spool_dir = "spool"',
        f"spool_mib = {spool_mib}",
        "queue_limit = 1000000",
    ]


def by_session(events: list[dict[str, Any]]) -> dict[str, list[int]]:
    """The transaction ids of each session's decisions, in the order given."""
    found: dict[str, list[int]] = defaultdict(list)
    for event in events:
        if event.get("event") == "decision":
            found[event["session"]].append(event["tid"])
    return found


async def wait_until(condition: Callable[[], bool], timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def file_records(gateway: GatewayProcess) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in gateway.audit_path.read_bytes().splitlines()]


def spool_is_empty(gateway: GatewayProcess) -> bool:
    cursor = gateway.dir / "spool" / "cursor"
    segments = sorted((gateway.dir / "spool").glob("*.seg"))
    if not cursor.exists() or len(segments) != 1:
        return False
    seq, offset = struct.unpack_from(">QQ", cursor.read_bytes())  # then its checksum
    return segments[0].name == f"{seq:016d}.seg" and segments[0].stat().st_size == offset


async def run_outage(pki: Pki, tmp_path: Path, *, restart: bool) -> None:
    collector = Rsyslog(tmp_path / "rsyslog", "tcp")
    collector_port = collector.start()
    collector.stop()  # down from the start: the gateway spools everything
    sim = Device()
    device = await sim.start()
    (tmp_path / "gw").mkdir()
    gateway = GatewayProcess(
        pki, tmp_path / "gw", policy_text(device, RULES, asset_extra=ASSET), audit=audit_lines(collector_port)
    )
    try:
        await gateway.start()
        if restart:
            await load(pki, gateway, 0, REQUESTS_PER_SESSION // 2)
            assert await gateway.stop() == 0
            await gateway.start()
            half = REQUESTS_PER_SESSION // 2
            await load(pki, gateway, half, REQUESTS_PER_SESSION - half)
        else:
            await load(pki, gateway, 0, REQUESTS_PER_SESSION)
        assert await gateway.stop() == 0  # the file is complete once the gateway has stopped
        expected = file_records(gateway)
        await gateway.start()  # ... and the spool goes on with what it holds
        collector.start()
        await wait_until(lambda: spool_is_empty(gateway), 60)
        # Sent is not yet written: rsyslog's queue drops what it holds at shutdown.
        await wait_until(lambda: collector.count() >= len(expected), 60)
        assert await gateway.stop() == 0
        collector.stop()
    finally:
        await gateway.stop()
        await sim.stop()
        collector.stop()
    decisions = by_session(expected)
    assert sum(len(tids) for tids in decisions.values()) == SESSIONS * REQUESTS_PER_SESSION
    assert len(decisions) == SESSIONS * (2 if restart else 1)
    for tids in decisions.values():  # one upstream connection: each session's decisions in request order
        assert tids == sorted(tids)
    received = [orjson.loads(message["msg"]) for message in collector.messages()]
    # Everything the first runs recorded arrived, each once, and then what the last start added.
    assert received[: len(expected)] == expected
    assert by_session(received) == decisions
    assert not any(event.get("event") == "audit_dropped" for event in received)


async def test_a_collector_outage_loses_no_decision(pki: Pki, tmp_path: Path) -> None:
    await run_outage(pki, tmp_path, restart=False)


async def test_a_collector_outage_across_a_gateway_restart(pki: Pki, tmp_path: Path) -> None:
    await run_outage(pki, tmp_path, restart=True)
