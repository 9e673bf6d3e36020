"""The bench's own Modbus load generator and fast server (bench/modbus_load.py, bench/modbus_server.py):
a short run of the two programs against each other, every function code they know included; the
server's answers to requests it refuses; and the generator catching a server that answers wrongly (a
tiny faulty server written here: a fault to catch, not a protocol peer). Through the gateway with
mutual TLS they run in tests/bench/test_bench_smoke.py."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from bench import modbus_load
from bench.loadgen import REPO
from bench.modbus_server import FastServer, Tables
from protocols.modbus import MbapFramer, encode_adu, encode_exception


def test_a_short_run_against_the_server_checks_every_reply() -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.modbus_server", "--port", "0"],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", server.stderr.readline())
        assert match, "the server names its port"
        argv = [sys.executable, "-m", "bench.modbus_load", "--port", match.group(1), "-c", "2", "-d", "4"]
        argv += ["--mix", "3:4,4,1,2,5,6,15,16", "--warmup", "0.1", "--duration", "0.5", "--compact"]
        argv += ["--pid", str(server.pid)]
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=30, check=False)
    finally:
        server.terminate()
        server.wait(10)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["requests"] > 0 and report["req_per_s"] > 0
    assert report["errors"] == report["mismatches"] == report["exception_responses"] == 0, report
    assert report["warmup"]["requests"] > 0 and report["after_window"]["unanswered_at_close"] == 0
    assert len(report["workload"]["kinds"]) == 8  # every function code it sends, each checked
    assert 0 < report["latency_us"]["p50"] <= report["latency_us"]["p99"] <= report["latency_us"]["max"]
    assert report["processes"][f"pid:{server.pid}"]["cpu_us_per_request"] > 0  # read from /proc
    # Its own system calls and context switches, and the server's switches, over the window (from /proc and
    # getrusage): every reply was read and every request written, so neither count is zero.
    assert report["loadgen_reads_per_request"] > 0 and report["loadgen_writes_per_request"] > 0
    assert 0 < report["loadgen_user_us_per_request"] <= report["loadgen_cpu_us_per_request"]
    for switches in (
        report["loadgen_switches_per_request"],
        report["processes"][f"pid:{server.pid}"]["switches_per_request"],
    ):
        assert len(switches) == 2 and min(switches) >= 0, switches


async def _exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(300), 5)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("pdu", "reply_pdu"),
    [
        (bytes.fromhex("03 0028 0000"), bytes.fromhex("83 03")),  # quantity 0: illegal data value
        (bytes.fromhex("03 0028 007e"), bytes.fromhex("83 03")),  # 126 registers: more than one read may
        (bytes.fromhex("08 0000 1234"), bytes.fromhex("88 01")),  # diagnostics: not served here
        (bytes.fromhex("41"), bytes.fromhex("c1 01")),  # a function code no one defined
        (bytes.fromhex("03 fff8 000a"), bytes.fromhex("83 02")),  # past the end of the address space
    ],
)
async def test_the_server_refuses_with_the_codecs_exception_code(pdu: bytes, reply_pdu: bytes) -> None:
    server = FastServer()
    port = await server.start("127.0.0.1", 0)
    try:
        assert await _exchange(port, encode_adu(7, 1, pdu)) == encode_adu(7, 1, reply_pdu)
        # A stream it cannot frame (protocol id 1) is closed, as a device does: no reply, end of stream.
        assert await _exchange(port, bytes.fromhex("0007 0001 0006 01 03 0028 000a")) == b""
    finally:
        await server.stop()


class FaultyProtocol(asyncio.Protocol):
    """Answers every request as bench.modbus_server would, then spoils the reply one way."""

    def __init__(self, fault: str) -> None:
        self.fault = fault
        self.tables = Tables()
        self.framer = MbapFramer()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.framer.receive_data(data)
        while (frame := self.framer.next_frame()) is not None:
            tid, unit, pdu = frame
            tail = self.tables.answer(encode_adu(0, unit, pdu)[2:])
            if self.fault == "transaction_id":
                reply = (tid ^ 0x8000).to_bytes(2, "big") + tail
            elif self.fault == "framing":
                reply = tid.to_bytes(2, "big") + b"\x00\x01" + tail[2:]  # protocol id 1
            elif self.fault == "values":
                reply = tid.to_bytes(2, "big") + tail[:-1] + bytes((tail[-1] ^ 1,))
            else:
                reply = encode_exception(tid, unit, pdu[0], 0x04)
            self.transport.write(reply)


@contextmanager
def faulty_server(fault: str) -> Iterator[int]:
    """A faulty server on its own thread and event loop (the generator runs its own loop here)."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    ports: list[int] = []

    async def listen() -> asyncio.Server:
        server = await loop.create_server(lambda: FaultyProtocol(fault), "127.0.0.1", 0)
        ports.append(server.sockets[0].getsockname()[1])
        started.set()
        return server

    server = loop.run_until_complete(listen())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        assert started.wait(5)
        yield ports[0]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()


def _load(port: int, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    argv = ["--port", str(port), "-c", "1", "-d", "2", "--warmup", "0", "--duration", "0.3"]
    argv += ["--request-timeout", "0.1", "--drain", "0.2", "--compact", "--loop", "asyncio"]
    status = modbus_load.main(argv)
    return status, json.loads(capsys.readouterr().out)


def _all_phases(report: dict[str, Any], key: str) -> int:
    """A count over the window and the drain after it (without a warm-up, there is none)."""
    assert report["warmup"] == {"requests": 0, "errors": 0, "mismatches": 0, "exception_responses": 0}
    return int(report[key]) + int(report["after_window"][key])


def test_a_wrong_transaction_id_is_a_mismatch(capsys: pytest.CaptureFixture[str]) -> None:
    with faulty_server("transaction_id") as port:
        status, report = _load(port, capsys)
    assert status == 1
    assert _all_phases(report, "requests") == 0  # no reply counts: none answers a request in flight
    assert _all_phases(report, "mismatches") > 0
    assert "not in flight" in report["mismatch_examples"]["transaction_id"]
    assert set(report["mismatch_examples"]) == {"transaction_id"}
    # The requests the stray replies left unanswered: lost at the timeout, or still open at the end.
    assert _all_phases(report, "errors") + report["after_window"]["unanswered_at_close"] > 0


def test_a_reply_with_a_wrong_value_is_a_mismatch(capsys: pytest.CaptureFixture[str]) -> None:
    with faulty_server("values") as port:
        status, report = _load(port, capsys)
    assert status == 1
    assert _all_phases(report, "requests") == 0 and _all_phases(report, "mismatches") > 0
    assert set(report["mismatch_examples"]) == {"values"}
    assert report["mismatch_examples"]["values"].startswith("FC 3 read 10 @40: ")


def test_an_exception_reply_is_counted_with_its_code(capsys: pytest.CaptureFixture[str]) -> None:
    with faulty_server("exception") as port:
        status, report = _load(port, capsys)
    assert status == 1
    assert _all_phases(report, "requests") == _all_phases(report, "mismatches") == 0
    assert _all_phases(report, "exception_responses") > 0
    assert set(report["exception_codes"]) <= {"0x04"}  # the window's (the drain has only a count)


def test_a_stream_out_of_step_is_a_mismatch_and_closes_the_connection(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with faulty_server("framing") as port:
        status, report = _load(port, capsys)
    assert status == 1
    assert _all_phases(report, "requests") == 0 and _all_phases(report, "mismatches") == 1
    assert set(report["mismatch_examples"]) == {"framing"}
    assert report["error_detail"]["connection_lost"] == 1  # its only connection: the window ends early


def test_no_server_is_a_setup_failure(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as bound:  # bound but not listening: connections to it are refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        assert modbus_load.main(["--port", str(port), "--duration", "0.2", "--loop", "asyncio"]) == 2
    assert "cannot connect to 127.0.0.1" in capsys.readouterr().err


_MAPPINGS_SCRIPT = """
import ctypes, sys
from bench.modbus_load import keep_read_buffers_on_the_heap
if sys.argv[1] == "fixed" and not keep_read_buffers_on_the_heap():
    print("unsupported")
    raise SystemExit
blocks = [bytearray(256 * 1024) for _ in range(8)]  # uvloop's TLS read buffer, eight held at once
addresses = [ctypes.addressof((ctypes.c_char * len(b)).from_buffer(b)) for b in blocks]
with open("/proc/self/maps") as file:
    heap = [line.split()[0].split("-") for line in file if line.rstrip().endswith("[heap]")]
print(sum(any(int(lo, 16) <= a < int(hi, 16) for lo, hi in heap) for a in addresses))
"""


@pytest.mark.parametrize(("mode", "all_on_the_heap"), [("default", False), ("fixed", True)])
def test_a_tls_read_buffer_comes_from_the_heap_once_the_thresholds_are_fixed(
    mode: str, all_on_the_heap: bool
) -> None:
    """With glibc's mmap threshold at its initial 128 KiB a 256 KiB block is a mapping of its own (mmap,
    then munmap when freed: system calls per TLS read); after keep_read_buffers_on_the_heap it comes from
    the heap. Whether glibc has raised the threshold by itself depends on the process's history, so the
    test pins the initial value. One block may still come from the heap by default, from a free chunk
    that the imports left (it depends on the hash seed: seen once in a full run), so it takes eight held
    at once: the heap of a fresh interpreter does not have 2 MiB free in such chunks."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    argv = [sys.executable, "-c", _MAPPINGS_SCRIPT, mode]
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=30, check=True)
    if done.stdout.strip() == "unsupported":
        pytest.skip("not glibc")
    on_the_heap = int(done.stdout)
    assert (on_the_heap == 8) is all_on_the_heap, done.stdout + done.stderr
