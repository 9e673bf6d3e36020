"""``python -m bench opcua-memory``: issue 16's OPC UA memory attack at full size, and the gateway's RSS.

The attack of issue 16, point 7, as the red team ran it: ``--channels`` (20) authenticated opc.tcp
channels (mutual TLS 1.3 as the bench identity, SNI = the asset, a real Hello and OpenSecureChannel),
each sending ``--chunks`` (255) intermediate MSG chunks of 64 KiB (the gateway's receive buffer) and
never the final one: 16 MiB per channel, 320 MiB in all. Before the reassembly budget it took the
gateway from 154 to 471 MiB.

Real processes on loopback: ztgate's OPC UA simulator (``gateway sim opcua --static``), a gateway
(uvloop, audit to a file, admin on) with the deployed defaults for the reassembly budget and timeout
unless ``--budget-mib`` / ``--timeout-s`` say otherwise, and an agent through which a real asyncua client
(another session of the same identity) reads a value back to back for the whole run. The gateway's RSS
(``/proc/PID/status`` VmRSS) is sampled every 10 ms: before the attack (channels open, nothing sent),
its peak, and after every channel has ended and ``--settle-s`` more seconds have passed; VmHWM (the
kernel's own high-water mark) and the gateway's ``ztgate_reassembly_peak_bytes`` say the same from two
other sides. How each channel ended (the status of the gateway's Error message) and what the reader got
are printed and written to ``bench/results/raw/opcua-memory-<time>.json``; docs/performance.md keeps
the figures by hand. Bounded: every wait has a deadline (``--timeout-s`` plus a margin).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import struct
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Client, ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import struct_from_binary

from bench.lab import OPCUA_ASSET, Lab, make_lab, opcua_policy_text, write_agent_config, write_gateway_config
from bench.loadgen import REPO
from bench.paths import start_gateway_process
from bench.procs import Supervisor
from bench.proto_rows import _port_from_log, start_simulator
from gateway.reassembly import DEFAULT_REASSEMBLY_BUDGET_MIB, MIB
from gateway.tls import client_context
from protocols.opcua.chunks import Chunk, parse_open_chunk
from tests.protocols.opcua.opcua_canned_server import hello, open_request, opn, symmetric

CHUNK_BYTES = 64 * 1024  # the gateway's receive buffer (protocols/opcua/connection.py DEFAULT_BUFFER_SIZE)
SYMMETRIC_HEADER_BYTES = 24
ATTACK_REQUEST_ID = 7
RSS_SAMPLE_S = 0.01
DEFAULT_REASSEMBLY_TIMEOUT_S = 30.0  # the gateway's default ([gateway] reassembly_timeout_s)
STATUS_NAMES = {
    ua.StatusCodes.BadTcpNotEnoughResources: "BadTcpNotEnoughResources",
    ua.StatusCodes.BadTimeout: "BadTimeout",
}
PLANT = "urn:ztgate:sim:plant"


def _proc_status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def _mib(kib: int | float) -> float:
    return round(kib / 1024, 1)


class Channel:
    """An opc.tcp channel over the overlay that opens properly, then sends chunks it never finishes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.channel_id = self.token_id = 0
        self.sequence = 1

    async def message(self) -> tuple[bytes, bytes]:
        header = await self.reader.readexactly(8)
        size = struct.unpack_from("<I", header, 4)[0]
        return header[:4], header + await self.reader.readexactly(size - 8)

    async def open(self) -> None:
        self.writer.write(hello(receive=CHUNK_BYTES, send=CHUNK_BYTES))
        kind, _ = await self.message()
        if kind != b"ACKF":
            raise RuntimeError(f"Hello answered with {kind!r}")
        self.writer.write(opn(open_request(), sequence=self.sequence))
        kind, data = await self.message()
        if kind != b"OPNF":
            raise RuntimeError(f"OpenSecureChannel answered with {kind!r}")
        opened = parse_open_chunk(Chunk(b"OPN", b"F", data))
        response = struct_from_binary(ua.OpenSecureChannelResponse, Buffer(opened.body))
        self.channel_id = opened.channel_id
        self.token_id = response.Parameters.SecurityToken.TokenId

    async def flood(self, chunks: int) -> int:
        """Send ``chunks`` intermediate chunks; how many went out before the gateway closed."""
        body = b"\x00" * (CHUNK_BYTES - SYMMETRIC_HEADER_BYTES)
        for sent in range(chunks):
            self.sequence += 1
            chunk = symmetric(
                body,
                chunk_type=b"C",
                channel_id=self.channel_id,
                token_id=self.token_id,
                sequence=self.sequence,
                request_id=ATTACK_REQUEST_ID,
            )
            if self.writer.is_closing() or self.reader.at_eof():
                return sent  # the gateway ended the channel
            try:
                self.writer.write(chunk)
                await self.writer.drain()
            except (ConnectionError, OSError):
                return sent
        return chunks

    async def ended_with(self) -> str:
        """The status of the Error message that ended the channel, by name."""
        try:
            kind, data = await self.message()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            # Closed with our chunks unread in its socket, the gateway's kernel resets the connection,
            # which may take its Error message with it.
            return "reset"
        if kind != b"ERRF":
            return f"unexpected {kind!r}"
        status = struct.unpack_from("<I", data, 8)[0]
        return STATUS_NAMES.get(status, f"0x{status:08X}")


async def _read_values(url: str, reading: asyncio.Event, stop: asyncio.Event) -> dict[str, Any]:
    """Another session of the same identity, through the agent: back-to-back Reads until ``stop``;
    ``reading`` is set once the first has been answered."""
    client = Client(url, timeout=10)
    await client.connect()
    latencies: list[float] = []
    failures: list[str] = []
    try:
        node = client.get_node(ua.NodeId("Plant.Line1.Tank1.Level", await client.get_namespace_index(PLANT)))
        while not stop.is_set():
            started = time.perf_counter()
            try:
                value = await node.read_value()
                if value != 50.0:
                    failures.append(f"read {value!r}, not 50.0")
            except Exception as exc:  # a failed Read is what this counts
                failures.append(repr(exc))
            latencies.append(time.perf_counter() - started)
            reading.set()
    finally:
        await client.disconnect()
    ordered = sorted(latencies)
    return {
        "reads": len(latencies),
        "failures": len(failures),
        "first_failures": failures[:5],
        "p50_ms": round(statistics.median(ordered) * 1000, 2) if ordered else None,
        "max_ms": round(ordered[-1] * 1000, 2) if ordered else None,
    }


def _reassembly_peak_bytes(admin_port: int) -> int | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith("ztgate_reassembly_peak_bytes "):
                return int(float(line.split()[1]))
    return None


async def _attack(
    lab: Lab, args: argparse.Namespace, gateway_pid: int, overlay: int, admin: int, agent_port: int
) -> dict[str, Any]:
    context = client_context(lab.client_cert, lab.client_key, lab.ca, server_name=OPCUA_ASSET)
    reading, stop_reading = asyncio.Event(), asyncio.Event()
    reader = asyncio.create_task(_read_values(f"opc.tcp://127.0.0.1:{agent_port}/", reading, stop_reading))
    samples: list[tuple[float, int]] = []

    async def sample_rss() -> None:
        while True:
            samples.append((time.monotonic(), _proc_status_kib(gateway_pid, "VmRSS")))
            await asyncio.sleep(RSS_SAMPLE_S)

    channels: list[Channel] = []
    for _ in range(args.channels):
        stream = await asyncio.open_connection("127.0.0.1", overlay, ssl=context, server_hostname=OPCUA_ASSET)
        channel = Channel(*stream)
        await channel.open()
        channels.append(channel)
    await asyncio.wait_for(reading.wait(), 30)  # the reader's session is up and reading
    before_kib = _proc_status_kib(gateway_pid, "VmRSS")
    hwm_before_kib = _proc_status_kib(gateway_pid, "VmHWM")
    sampler = asyncio.create_task(sample_rss())
    started = time.monotonic()
    limit_s = args.timeout_s + 60.0
    async with asyncio.timeout(limit_s):
        endings = [asyncio.create_task(channel.ended_with()) for channel in channels]
        sent = await asyncio.gather(*(channel.flood(args.chunks) for channel in channels))
        sent_s = time.monotonic() - started
        statuses = await asyncio.gather(*endings)
    ended_s = time.monotonic() - started
    for channel in channels:
        channel.writer.close()
    await asyncio.sleep(args.settle_s)
    sampler.cancel()
    after_kib = _proc_status_kib(gateway_pid, "VmRSS")
    stop_reading.set()
    reads = await asyncio.wait_for(reader, 30)
    peak_at_s, peak_kib = max(((at - started, kib) for at, kib in samples), key=lambda s: s[1])
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return {
        "channels": args.channels,
        "chunks_per_channel": args.chunks,
        "chunk_bytes": CHUNK_BYTES,
        "attack_mib": _mib(args.channels * args.chunks * CHUNK_BYTES / 1024),
        "chunks_sent": sum(sent),
        "all_sent_s": round(sent_s, 1),
        "all_ended_s": round(ended_s, 1),
        "channel_endings": counts,
        "rss_before_mib": _mib(before_kib),
        "rss_peak_mib": _mib(peak_kib),
        "rss_peak_at_s": round(peak_at_s, 1),
        "rss_after_mib": _mib(after_kib),
        "vm_hwm_before_mib": _mib(hwm_before_kib),
        "vm_hwm_after_mib": _mib(_proc_status_kib(gateway_pid, "VmHWM")),
        "reassembly_peak_mib": round((_reassembly_peak_bytes(admin) or 0) / MIB, 1),
        "reader": reads,
        "rss_samples": len(samples),
    }


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench opcua-memory", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--channels", type=int, default=20, help="attacking channels (default 20)")
    parser.add_argument(
        "--chunks", type=int, default=255, help="intermediate chunks per channel (default 255)"
    )
    parser.add_argument(
        "--budget-mib",
        type=float,
        default=None,
        help=f"[gateway] reassembly_budget_mib (default: the gateway's, {DEFAULT_REASSEMBLY_BUDGET_MIB:g})",
    )
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=None,
        help=f"[gateway] reassembly_timeout_s (default: the gateway's, {DEFAULT_REASSEMBLY_TIMEOUT_S:g})",
    )
    parser.add_argument("--settle-s", type=float, default=5.0, help="wait after the last channel ended")
    args = parser.parse_args(argv)
    extra = ""
    if args.budget_mib is not None:
        extra += f"reassembly_budget_mib = {args.budget_mib}\n"
    if args.timeout_s is not None:
        extra += f"reassembly_timeout_s = {args.timeout_s}\n"
    else:
        args.timeout_s = DEFAULT_REASSEMBLY_TIMEOUT_S
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="ztgate-bench-opcua-memory-") as tmp:
        work = Path(tmp)
        lab = make_lab(work / "lab")
        with Supervisor(work / "logs") as supervisor:
            _, sim_port = start_simulator(supervisor, "opcua")
            policy = work / "policy.toml"
            policy.write_text(opcua_policy_text(10, sim_port))
            config = write_gateway_config(
                lab, "gw-opcua-memory", policy, audit_file=work / "audit.jsonl", gateway_extra=extra
            )
            gateway, overlay, admin = start_gateway_process(supervisor, "gateway", config)
            agent_config = write_agent_config(lab, "agent", overlay, OPCUA_ASSET, "opcua")
            agent = supervisor.spawn(
                "agent", [sys.executable, "-m", "gateway", "agent", "--config", str(agent_config)], cwd=REPO
            )
            agent_port = _port_from_log(agent, r"127\.0\.0\.1:(\d+) -> ")
            found = asyncio.run(_attack(lab, args, gateway.pid, overlay, admin, agent_port))
    budget_mib = args.budget_mib if args.budget_mib is not None else DEFAULT_REASSEMBLY_BUDGET_MIB
    found = {"started": started.isoformat(), "budget_mib": budget_mib, "timeout_s": args.timeout_s, **found}
    out = REPO / "bench" / "results" / "raw" / f"opcua-memory-{started:%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(found, indent=1))
    print(json.dumps(found))
    print(
        f"gateway RSS {found['rss_before_mib']} MiB before, {found['rss_peak_mib']} MiB peak, "
        f"{found['rss_after_mib']} MiB after (budget {budget_mib:g} MiB, reassembly peak "
        f"{found['reassembly_peak_mib']} MiB); channels: {found['channel_endings']}; reader: "
        f"{found['reader']['reads']} reads, {found['reader']['failures']} failures; {out}"
    )
    return 0
