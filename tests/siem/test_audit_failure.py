"""When the audit trail cannot be written, through real client sessions: ``on_failure = "closed"``
refuses every request but allowed reads in Modbus terms and ``/readyz`` says why; ``"open"`` lets traffic
go on and counts the losses; a full spool under each policy has its documented outcome, with the drops
counted by kind and no refusal lost while a read could go instead.

The failing disk is /dev/full (every write fails with ENOSPC, even for root): the audit file is a
symbolic link the test points at /dev/full and back, which the file sink follows at its next batch."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from pymodbus.pdu import ExceptionResponse

from gateway.audit_guard import AUDIT_UNAVAILABLE
from gateway.sinks.file import FileSink
from gateway.sinks.syslog import SyslogSettings, SyslogSink
from tests.e2e.harness import Lab, policy_text
from tests.siem.rsyslog import RULES, Rsyslog, until


async def readyz(lab: Lab) -> tuple[int, dict[str, Any]]:
    assert lab.gateway is not None and lab.gateway.admin_port
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{lab.gateway.admin_port}/readyz") as response,
    ):
        return response.status, await response.json()


def point(link: Path, target: Path | str) -> None:
    temporary = link.with_suffix(".new")
    temporary.unlink(missing_ok=True)
    os.symlink(target, temporary)
    os.replace(temporary, link)


async def start(lab: Lab, tmp_path: Path, on_failure: str) -> tuple[FileSink, Path]:
    link = tmp_path / "failing.jsonl"
    point(link, tmp_path / "disk.jsonl")
    sink = FileSink("failing", link, flush_interval_s=0.01)
    device = await lab.start_device()
    await lab.start_gateway(policy_text(device, RULES), audit_sinks=[sink], audit_on_failure=on_failure)
    return sink, link


async def test_closed_refuses_writes_and_lets_reads_through_while_the_audit_disk_is_full(
    lab: Lab, tmp_path: Path
) -> None:
    sink, link = await start(lab, tmp_path, "closed")
    client = await lab.client("alice")
    assert not (await client.write_register(1, 11, device_id=1)).isError()
    status, body = await readyz(lab)
    assert status == 200 and body["audit"]["ready"]

    point(link, "/dev/full")
    assert not (await client.write_register(2, 12, device_id=1)).isError()  # its record is what fails
    await until(lambda: sink.failing)
    status, body = await readyz(lab)
    while status == 200:  # the guard notices within its interval
        await asyncio.sleep(0.02)
        status, body = await readyz(lab)
    assert status == 503 and not body["ready"] and not body["audit"]["ready"]
    failing = next(s for s in body["audit"]["sinks"] if s["name"] == "failing")
    assert failing["state"] == "failing" and failing["dropped"]["decision"] >= 1

    await until(lambda: lab.gateway is not None and lab.gateway.policy.reads_only != {})
    refused = await client.write_register(3, 13, device_id=1)
    assert isinstance(refused, ExceptionResponse) and refused.exception_code == 1
    read = await client.read_holding_registers(1, count=2, device_id=1)
    assert not read.isError() and read.registers == [11, 12]  # reads go on, and the write before went through
    refusals = lab.audit_events(decision="deny")
    assert [(e["reason"], e["write"]) for e in refusals] == [(AUDIT_UNAVAILABLE, [3, 3])]

    point(link, tmp_path / "disk.jsonl")  # room again: the next record (any) gets through
    await until(lambda: not sink.failing)
    await until(lambda: lab.gateway is not None and lab.gateway.policy.reads_only == {})
    assert not (await client.write_register(4, 14, device_id=1)).isError()
    status, body = await readyz(lab)
    assert status == 200 and body["audit"]["ready"]
    assert lab.gateway is not None
    assert lab.gateway.audit.dropped_by_kind()["decision"] >= 1
    lab.gateway.audit.flush()
    on_disk = [orjson.loads(line) for line in (tmp_path / "disk.jsonl").read_bytes().splitlines()]
    assert any(e.get("event") == "audit_dropped" and e["reason"] == "write_error" for e in on_disk)


async def test_open_goes_on_and_counts_what_it_loses(lab: Lab, tmp_path: Path) -> None:
    sink, link = await start(lab, tmp_path, "open")
    client = await lab.client("alice")
    point(link, "/dev/full")
    assert not (await client.write_register(1, 21, device_id=1)).isError()
    await until(lambda: sink.failing)
    for address in range(2, 6):
        assert not (await client.write_register(address, 20 + address, device_id=1)).isError()
    assert lab.gateway is not None and lab.gateway.policy.reads_only == {}
    status, body = await readyz(lab)
    assert status == 503 and not body["audit"]["ready"]  # traffic goes on, but readiness tells
    lab.gateway.audit.flush()
    assert sink.dropped["decision"] >= 5


def syslog_sink(port: int, tmp_path: Path, spool_kib: int, on_full: str) -> SyslogSink:
    settings = SyslogSettings(
        transport="tcp",
        address=("127.0.0.1", port),
        hostname="gw-test",
        spool_dir=tmp_path / "spool",
        spool_mib=spool_kib / 1024,
        on_spool_full=on_full,
    )
    return SyslogSink("siem", settings, flush_interval_s=0.01, format="ztgate")


async def reads_and_refusals(lab: Lab, rounds: int) -> None:
    """Each round: an allowed read (aggregated per interval) and a refused write, then a new interval."""
    client = await lab.client("alice")
    for n in range(rounds):
        aggregates = len(lab.audit_events(aggregated=True))
        assert not (await client.read_holding_registers(n % 90, count=1, device_id=1)).isError()
        assert (await client.write_register(50, n, device_id=1)).isError()  # no rule writes address 50
        # This round's read aggregate written before the next read: one per round on a loaded machine
        # too, where a slow writer cycle would otherwise fold several rounds' reads into one record and
        # leave the spool short of full.
        await until(lambda: len(lab.audit_events(aggregated=True)) > aggregates)  # noqa: B023
    client.close()


async def test_a_full_spool_drops_the_oldest_reads_and_keeps_every_refusal(lab: Lab, tmp_path: Path) -> None:
    collector = Rsyslog(tmp_path / "rsyslog", "tcp")
    port = collector.start()
    collector.stop()
    try:
        # On disk a refusal takes about 590 bytes, a read aggregate 555, a drop report 190, the session and
        # start events about 1,500 in all. 60 rounds are about 68 KiB, so reads must go; the refusals, the
        # events and at most one report per dropped read (each reports at least one) take under 48 KiB,
        # so the newest reads that fit in the last 4 KiB, at least seven, must stay.
        sink = syslog_sink(port, tmp_path, 52, "drop_oldest_reads")
        device = await lab.start_device()
        await lab.start_gateway(policy_text(device, RULES), audit_sinks=[sink], aggregate_reads_s=0.02)
        await reads_and_refusals(lab, 60)
        await lab.wait_for_event(event="session_end")  # the last record, after the last read aggregate
        assert lab.gateway is not None
        dropped = -1
        while dropped != sink.dropped["read"]:  # until a report of drops drops nothing more (<= 60 rounds)
            dropped = sink.dropped["read"]
            lab.gateway.audit.flush()
        dropped_by_kind, lost = sink.losses()
        assert dropped_by_kind["read"] > 0 and lost["evicted"] == dropped_by_kind["read"]
        assert dropped_by_kind["refusal"] == dropped_by_kind["decision"] == 0
        assert sink.healthy and not lab.gateway.audit.blocks_new_sessions
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{lab.gateway.admin_port}/metrics") as response,
        ):
            metrics = await response.text()
        assert f'ztgate_audit_dropped_by_kind_total{{kind="read"}} {float(sink.dropped["read"])}' in metrics
        assert 'ztgate_audit_dropped_by_kind_total{kind="refusal"} 0.0' in metrics

        collector.start()
        await until(lambda: sink.spool is not None and sink.spool.pending_records == 0, 30)
        expected = [e for e in lab.audit_events() if e.get("decision") == "deny"]
        assert len(expected) == 60
        # Everything the sink sent.
        received = [orjson.loads(m["msg"]) for m in collector.wait_for(sink.sent)]
        assert [e for e in received if e.get("decision") == "deny"] == expected  # every refusal, in order
        reads = [e for e in received if e.get("aggregated")]
        aggregates = [e for e in lab.audit_events() if e.get("aggregated")]
        # The oldest reads went, exactly as many as the sink counted; the newest are there, in order.
        assert 0 < len(reads) < len(aggregates) and reads == aggregates[len(aggregates) - len(reads) :]
        assert sink.dropped["read"] == len(aggregates) - len(reads)
        reports = [e for e in received if e.get("event") == "audit_dropped"]
        assert reports and {e["reason"] for e in reports} == {"evicted"}
        assert sum(e["count"] for e in reports) == sink.dropped["read"]  # every drop reported in-band
    finally:
        collector.stop()


async def test_a_full_spool_under_block_new_sessions_fails_closed(lab: Lab, tmp_path: Path) -> None:
    collector = Rsyslog(tmp_path / "rsyslog", "tcp")
    port = collector.start()
    collector.stop()
    try:
        sink = syslog_sink(port, tmp_path, 8, "block_new_sessions")
        device = await lab.start_device()
        await lab.start_gateway(policy_text(device, RULES), audit_sinks=[sink], aggregate_reads_s=0.02)
        client = await lab.client("alice")
        for n in range(40):  # refusals until the spool is full
            assert (await client.write_register(50, n, device_id=1)).isError()
            if sink.blocks_new_sessions:
                break
        await until(lambda: sink.blocks_new_sessions)
        assert lab.gateway is not None
        await until(lambda: lab.gateway is not None and lab.gateway.policy.reads_only != {})
        # Fail closed for new work: a write on the open session is refused, a new session is not opened.
        refused = await client.write_register(1, 1, device_id=1)
        assert isinstance(refused, ExceptionResponse) and refused.exception_code == 1
        assert not (await client.read_holding_registers(0, count=1, device_id=1)).isError()
        reader, _writer = await lab.raw_connection("alice")
        assert await reader.read() == b""  # closed before a single byte
        assert any(e.get("reason") == "audit spool full (block_new_sessions)" for e in lab.audit_events())
        lab.gateway.audit.flush()
        # While the spool is full the sink's own threads go on counting (each report of drops is refused
        # too): both counters from one instant.
        dropped, lost = sink.losses()
        assert dropped["refusal"] >= 1 and lost["spool_full"] == sum(dropped.values())
        status, body = await readyz(lab)
        siem = next(s for s in body["audit"]["sinks"] if s["name"] == "siem")
        assert status == 503 and siem["state"] == "spool_full" and body["audit"]["blocks_new_sessions"]

        collector.start()  # the spool drains, and new work is taken again
        await until(lambda: not sink.blocks_new_sessions, 30)
        await until(lambda: lab.gateway is not None and lab.gateway.policy.reads_only == {})
        assert not (await (await lab.client("alice")).write_register(1, 2, device_id=1)).isError()
    finally:
        collector.stop()
