"""A flood past a syslog sink's queue loses no refusal and no write: ``ztgate gateway`` (a real process)
with a sink queue of 1 record and 100 KiB (``queue_limit``, ``hold_mib``) serves pipelined Modbus reads,
writes and refused writes from 8 sessions while its rsyslog collector is down. Past the queue's limit
the reads (each session's aggregate of an interval) are dropped and counted; every other record waits
for the spool instead. When the collector starts, every refusal, write and session event arrives exactly
once, in the order of the audit file."""

from __future__ import annotations

import asyncio
import json
import struct
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from gateway.tls import client_context
from tests.e2e.harness import Pki, policy_text
from tests.processes import GatewayProcess
from tests.siem.rsyslog import RULES, Rsyslog
from tests.siem.test_outage import (
    ASSET,
    CHUNK,
    LOAD_TIMEOUT_S,
    Device,
    file_records,
    spool_is_empty,
    wait_until,
)

SESSIONS = 8
REQUESTS_PER_SESSION = 1000
# One record: the sessions' read aggregates of an interval come in one batch, so all but the first of
# them find the queue full; the writes and refusals come faster than the writer spools them.
SINK_QUEUE_LIMIT = 1


def frame(n: int) -> bytes:
    """Request n of a session: a read of one holding register, an allowed write (address 0-9), a read, a
    refused write (address 10-59; the policy allows 0-9), in turn; tid n."""
    kind = n % 4
    if kind == 1:
        pdu = struct.pack(">BHH", 6, n % 10, n & 0xFFFF)
    elif kind == 3:
        pdu = struct.pack(">BHH", 6, 10 + n % 50, n & 0xFFFF)
    else:
        pdu = struct.pack(">BHH", 3, n % 100, 1)
    return struct.pack(">HHHB", n, 0, len(pdu) + 1, 1) + pdu


async def session_load(pki: Pki, port: int, count: int) -> Counter[int]:
    """One mTLS session sending ``count`` requests pipelined; the replies' function codes, counted."""
    files = pki.clients["alice"]
    context = client_context(files.cert, files.key, pki.ca)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="plc-1")

    async def send() -> None:
        for start in range(0, count, CHUNK):
            writer.write(b"".join(frame(n) for n in range(start, min(start + CHUNK, count))))
            await writer.drain()

    sender = asyncio.create_task(send())
    functions: Counter[int] = Counter()
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
            functions[buffer[offset + 7]] += 1
            replies += 1
            offset = end
        buffer = buffer[offset:]
    await sender
    writer.close()
    return functions


def audit_lines(collector_port: int) -> list[str]:
    return [
        "aggregate_reads_s = 1",  # reads aggregated (the records a sink drops first), writes one by one
        "queue_limit = 1000000",
        "[[audit.sinks]]",
        'type = "file"',
        'path = "audit.jsonl"',
        "queue_limit = 1000000",
        "[[audit.sinks]]",
        'name = "siem"',
        'type = "syslog"',
        'transport = "tcp"',
        'format = "ztgate"',  # the flat record: compared with the file's below
        f'address = "127.0.0.1:{collector_port}"',
        'spool_dir = "spool"',
        f"queue_limit = {SINK_QUEUE_LIMIT}",
        "hold_mib = 0.1",  # about 170 of these records: the audit writer waits for the spool often
    ]


def sink_status(gateway: GatewayProcess) -> dict[str, Any]:
    url = f"http://127.0.0.1:{gateway.admin_port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:  # 503 while not ready: the body is the same
        body = exc.read()
    found: dict[str, Any] = next(s for s in json.loads(body)["audit"]["sinks"] if s["name"] == "siem")
    return found


def starts(collector: Rsyslog) -> list[int]:
    """Where the gateway_start records are among the messages the collector received."""
    found = (orjson.loads(message["msg"]).get("event") for message in collector.messages())
    return [index for index, event in enumerate(found) if event == "gateway_start"]


def is_read(record: dict[str, Any]) -> bool:
    return record.get("aggregated") is True


async def test_a_flood_past_the_sink_queue_drops_only_reads(pki: Pki, tmp_path: Path) -> None:
    collector = Rsyslog(tmp_path / "rsyslog", "tcp")
    collector_port = collector.start()
    collector.stop()  # down for the flood: the sink spools
    sim = Device()
    device = await sim.start()
    (tmp_path / "gw").mkdir()
    gateway = GatewayProcess(
        pki, tmp_path / "gw", policy_text(device, RULES, asset_extra=ASSET), audit=audit_lines(collector_port)
    )
    try:
        await gateway.start()
        started = time.monotonic()
        async with asyncio.timeout(LOAD_TIMEOUT_S):
            runs = [session_load(pki, gateway.port, REQUESTS_PER_SESSION) for _ in range(SESSIONS)]
            functions = sum(await asyncio.gather(*runs), Counter[int]())
        print(f"{SESSIONS * REQUESTS_PER_SESSION} requests in {time.monotonic() - started:.1f} s")
        # Reads and allowed writes answered, refused writes answered with an exception.
        assert functions == {3: SESSIONS * REQUESTS_PER_SESSION // 2, 6: SESSIONS * REQUESTS_PER_SESSION // 4,
                             0x86: SESSIONS * REQUESTS_PER_SESSION // 4}  # fmt: skip
        # The flood went past the queue: the audit writer waited for the spool, and reads were dropped.
        await wait_until(lambda: sink_status(gateway)["held"] > 0, 30)
        await wait_until(lambda: sink_status(gateway)["dropped"]["read"] > 0, 30)
        status = sink_status(gateway)
        assert status["state"] == "ok" and status["ready"]  # waiting for the spool is not failing
        assert set(status["lost"]) == {"queue_full"}
        assert (
            status["dropped"]["refusal"] == status["dropped"]["decision"] == status["dropped"]["event"] == 0
        )
        assert await gateway.stop() == 0
        expected = file_records(gateway)
        await gateway.start()  # replays the spool
        collector.start()
        await wait_until(lambda: spool_is_empty(gateway), 60)
        # In order on one connection: once the second start's record is in, all before it are.
        await wait_until(lambda: len(starts(collector)) == 2, 60)
        assert await gateway.stop() == 0
        collector.stop()
    finally:
        await gateway.stop()
        await sim.stop()
        collector.stop()
    assert not any(r.get("event") == "audit_dropped" for r in expected)  # the file sink lost nothing
    decisions: Counter[str] = Counter()
    for r in expected:
        if r.get("event") == "decision":
            decisions[r["decision"]] += r["count"] if is_read(r) else 1
    assert decisions == {
        "allow": SESSIONS * REQUESTS_PER_SESSION * 3 // 4,
        "deny": SESSIONS * REQUESTS_PER_SESSION // 4,
    }
    # What the first run recorded, up to the second start's record, in the audit file and at the
    # collector alike: the second run may connect upstream before its gateway_start record (both the
    # file and the sink then have that record before it).
    recorded = file_records(gateway)
    first_run = recorded[: [i for i, r in enumerate(recorded) if r.get("event") == "gateway_start"][1]]
    assert first_run[: len(expected)] == expected
    received = [orjson.loads(message["msg"]) for message in collector.messages()]
    received = received[: starts(collector)[1]]
    kept = [r for r in first_run if not is_read(r)]
    reports = [r for r in received if r.get("event") == "audit_dropped"]
    records = [r for r in received if r.get("event") != "audit_dropped"]
    # Every refusal, write and session event exactly once, in the file's order; of the reads some.
    assert [r for r in records if not is_read(r)] == kept
    # Of the reads some, each at most once, in the file's order; the rest dropped, reported in-band by
    # reason and count: together with those received, all.
    position = {(r["session"], r["time"]): index for index, r in enumerate(expected) if is_read(r)}
    received_reads = [position[r["session"], r["time"]] for r in records if is_read(r)]
    assert received_reads == sorted(set(received_reads))
    assert {r["reason"] for r in reports} == {"queue_full"}
    assert sum(r["count"] for r in reports) == len(position) - len(received_reads) > 0
