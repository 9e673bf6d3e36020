"""The bench's Modbus load generator: ``python -m bench.modbus_load --port P -c 8 -d 4``.

It opens C connections (plain TCP, or mutual TLS with SNI, as a client of the stunnel and ztgate paths)
and keeps D requests in flight on each: every reply sends the next request, and the replies of one read
send their successors in one write. It checks every reply against the request it answers: the
transaction id must be one in flight on that connection, and the rest of the reply (protocol id, length,
unit, function code, byte count and the values :mod:`bench.modbus_server` holds) must equal the reply
worked out before the run from the server's data model, in one comparison of bytes. A reply that differs
is explained with the codec's :func:`~protocols.modbus.check_response`: an exception code, or the first
field that is wrong.

A run has three phases on one clock: a warm-up, the measured window, and a drain in which the requests
still in flight are answered and checked but not counted. A request counts in the phase its reply
arrives in; its latency runs from the write that sent it to the read that brought its reply. At the
window's edges the generator reads its own CPU time, the machine's busy time (``/proc/stat``) and that of
every ``--pid`` (one process, all threads) and ``--pid-tree`` (a process and its descendants), so the
CPU per request of a proxy covers the window only.

It prints one JSON report (``--compact``: on one line). Exit status: 0 when every reply was right; 1 when
the run finished but some replies were wrong or missing (the report says which); 2 when it could not run
(no connection, TLS refused, no reply at all, bad arguments).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import gc
import json
import os
import random
import resource
import ssl
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from bench.modbus_server import coil_value, loop_factory, register_value
from bench.procs import (
    context_switches,
    cpu_times,
    host_cpu_jiffies,
    io_syscalls,
    tree_context_switches,
    tree_cpu_times,
)
from protocols.modbus import (
    ModbusProtocolError,
    Request,
    check_response,
    encode_adu,
    encode_request_pdu,
    parse_request,
)
from protocols.modbus.pdu import pack_bits
from protocols.modbus.spec import EXCEPTION_FLAG, MBAP_HEADER_BYTES, MBAP_LENGTH_MAX, MBAP_LENGTH_MIN

__all__ = ["RequestKind", "Setup", "SetupError", "main", "parse_mix", "request_kinds", "run"]

FUNCTION_CODES = (1, 2, 3, 4, 5, 6, 15, 16)
REAP_PERIOD_S = 0.1
_MBAP_REST = MBAP_HEADER_BYTES - 1  # the header bytes before the unit id
_TID = [tid.to_bytes(2, "big") for tid in range(0x10000)]


class SetupError(RuntimeError):
    """The run could not start or saw no reply at all (exit status 2)."""


# ------------------------------------------------------------------- what to send, what to expect


@dataclass(frozen=True)
class RequestKind:
    """One request of a workload, built once: its bytes and the reply the server must give."""

    name: str
    request: Request  # the codec's view, to explain a wrong reply
    request_tail: bytes  # the request ADU after its transaction id
    reply_tail: bytes  # the expected reply ADU after its transaction id


def _read(fc: int, unit: int, address: int, count: int) -> Request:
    return Request(0, unit, fc, b"", read_address=address, read_count=count)


def _write(values: Callable[[int], int], single: bool) -> Callable[[int, int, int, int], Request]:
    """Writes store what the server already holds, so reads stay checkable under a read/write mix."""

    def build(fc: int, unit: int, address: int, count: int) -> Request:
        count = 1 if single else count
        held = tuple(values(a) for a in range(address, address + count))
        return Request(0, unit, fc, b"", write_address=address, write_count=count, values=held)

    return build


def _bits(request: Request) -> bytes:
    first = request.read_address
    packed = pack_bits([coil_value(a) for a in range(first, first + request.read_count)])
    return bytes((request.function_code, len(packed))) + packed


def _registers(request: Request) -> bytes:
    first, count = request.read_address, request.read_count
    data = struct.pack(f">{count}H", *map(register_value, range(first, first + count)))
    return bytes((request.function_code, len(data))) + data


_REQUESTS: dict[int, Callable[[int, int, int, int], Request]] = {
    1: _read,
    2: _read,
    3: _read,
    4: _read,
    5: _write(coil_value, single=True),
    6: _write(register_value, single=True),
    15: _write(coil_value, single=False),
    16: _write(register_value, single=False),
}
_REPLIES: dict[int, Callable[[Request], bytes]] = {
    1: _bits,
    2: _bits,
    3: _registers,
    4: _registers,
    5: lambda request: request.pdu,
    6: lambda request: request.pdu,
    15: lambda request: request.pdu[:5],
    16: lambda request: request.pdu[:5],
}


def request_kind(fc: int, address: int, count: int, unit: int = 1) -> RequestKind:
    if fc not in _REQUESTS:
        raise ValueError(
            f"function code {fc}: the load generator sends {', '.join(map(str, FUNCTION_CODES))}"
        )
    pdu = encode_request_pdu(_REQUESTS[fc](fc, unit, address, count))
    try:
        request = parse_request(0, unit, pdu)  # the codec's own check of what is about to be sent
    except ModbusProtocolError as exc:
        raise ValueError(f"FC {fc} at {address}, count {count}: {exc}") from None
    what = f"read {count}" if fc <= 4 else f"write {request.write_count}"
    return RequestKind(
        name=f"FC {fc} {what} @{address}",
        request=request,
        request_tail=encode_adu(0, unit, pdu)[2:],
        reply_tail=encode_adu(0, unit, _REPLIES[fc](request))[2:],
    )


def parse_mix(spec: str) -> list[tuple[int, int]]:
    """``"3"`` or ``"3:8,4:1,6:1"``: (function code, weight) pairs."""
    out = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        fc, _, weight = part.partition(":")
        out.append((int(fc), int(weight or 1)))
    if not out or any(w < 0 for _, w in out) or not sum(w for _, w in out):
        raise ValueError(f"mix {spec!r}: give FC[:WEIGHT],... with some positive weight")
    return out


def request_kinds(mix: str, address: int, count: int, unit: int = 1) -> list[RequestKind]:
    """Every kind of request a workload sends, once each."""
    return [request_kind(fc, address, count, unit) for fc, _ in parse_mix(mix)]


def _sequence(mix: str, kinds: list[RequestKind], seed: int) -> list[RequestKind]:
    """The order requests are sent in, cycled: every kind as often as its weight, shuffled with a fixed
    seed so that every run (and every path) sends the same sequence."""
    sequence = [kind for kind, (_, weight) in zip(kinds, parse_mix(mix), strict=True) for _ in range(weight)]
    random.Random(seed).shuffle(sequence)
    return sequence


# ------------------------------------------------------------------------------------- the run


class Phase:
    """What one phase of the run saw: good replies with their latencies, and everything else."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.latencies_ns: list[int] = []
        self.errors: Counter[str] = Counter()
        self.mismatches: Counter[str] = Counter()
        self.exceptions: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def wrong_reply(self, kind: RequestKind, tail: bytes) -> None:
        """Name what is wrong with a reply that is not the expected one."""
        pdu = tail[_MBAP_REST - 1 :]
        if tail[_MBAP_REST - 2] != kind.request.unit_id:
            self.mismatch("unit", f"{kind.name}: unit {tail[_MBAP_REST - 2]}")
            return
        try:
            code = check_response(kind.request, pdu)
        except ModbusProtocolError as exc:
            fc = kind.request.function_code
            field = "function_code" if pdu[0] not in (fc, fc | EXCEPTION_FLAG) else "length"
            self.mismatch(field, f"{kind.name}: {exc}")
            return
        if code:
            self.exceptions[f"0x{code:02X}"] += 1
        else:
            self.mismatch("values", f"{kind.name}: {pdu.hex()} instead of {kind.reply_tail[5:].hex()}")

    def unknown_transaction(self, tid: int) -> None:
        self.mismatch("transaction_id", f"reply with transaction id {tid}, which is not in flight")

    def mismatch(self, field: str, example: str) -> None:
        self.mismatches[field] += 1
        self.examples.setdefault(field, example)

    def summary(self) -> dict[str, Any]:
        return {
            "requests": len(self.latencies_ns),
            "errors": sum(self.errors.values()),
            "mismatches": sum(self.mismatches.values()),
            "exception_responses": sum(self.exceptions.values()),
        }


class LoadConnection(asyncio.Protocol):
    """One connection: sends the workload's sequence, pipelined, and checks every reply."""

    def __init__(self, run: Run, index: int) -> None:
        self.run = run
        self.pending: dict[int, tuple[int, RequestKind]] = {}
        self.rest = b""
        # Connections count transaction ids from different starting points: a reply delivered on the
        # wrong connection then names an id that is not in flight there.
        self.tid = (index * 0x2000) & 0xFFFF
        self.position = index
        self.transport: asyncio.Transport | None = None
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.open = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if not self.run.closing:
            phase = self.run.phase
            phase.errors["connection_lost"] += 1
            if self.pending:
                phase.errors["in_flight_when_lost"] += len(self.pending)
            self.pending.clear()
            self.run.connection_lost()

    # send and data_received run once per batch of replies, and everything they use in their loops is a
    # local name: against the same code reading globals and attributes, about 13% less CPU per request.
    def send(self, n: int) -> None:
        if not self.open or n <= 0:
            return
        sequence, pending, tids = self.run.sequence, self.pending, _TID
        kinds, tid, position = len(sequence), self.tid, self.position
        parts: list[bytes] = []
        now = time.monotonic_ns()
        for _ in range(n):
            tid = (tid + 1) & 0xFFFF
            while tid in pending:
                tid = (tid + 1) & 0xFFFF
            kind = sequence[position % kinds]
            position += 1
            pending[tid] = (now, kind)
            parts.append(tids[tid])
            parts.append(kind.request_tail)
        self.tid, self.position = tid, position
        assert self.transport is not None
        self.transport.write(b"".join(parts))

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if self.rest:
            data = self.rest + data
        run, pending = self.run, self.pending
        phase = run.phase
        good = phase.latencies_ns
        header, before_unit, shortest, longest = (
            MBAP_HEADER_BYTES,
            _MBAP_REST,
            MBAP_LENGTH_MIN,
            MBAP_LENGTH_MAX,
        )
        size, pos, answered = len(data), 0, 0
        while size - pos >= header:
            length = (data[pos + 4] << 8) | data[pos + 5]
            if data[pos + 2] or data[pos + 3] or length < shortest or length > longest:
                phase.mismatch("framing", f"MBAP header {data[pos : pos + 7].hex()}: stream out of step")
                assert self.transport is not None
                self.transport.close()  # no way to find the next reply
                return
            end = pos + before_unit + length
            if end > size:
                break
            tid = (data[pos] << 8) | data[pos + 1]
            entry = pending.pop(tid, None)
            if entry is None:
                phase.unknown_transaction(tid)
            else:
                answered += 1
                if data[pos + 2 : end] == entry[1].reply_tail:
                    good.append(now - entry[0])
                else:
                    phase.wrong_reply(entry[1], data[pos + 2 : end])
            pos = end
        self.rest = data[pos:] if pos < size else b""
        if answered:
            if run.sending:
                self.send(answered)
            elif not pending:
                run.check_drained()


@dataclass(frozen=True)
class Setup:
    host: str
    port: int
    connections: int
    depth: int
    mix: str
    address: int = 40
    count: int = 10
    unit: int = 1
    warmup_s: float = 2.0
    duration_s: float = 10.0
    drain_s: float = 1.0
    request_timeout_s: float = 5.0
    connect_timeout_s: float = 5.0
    tls: ssl.SSLContext | None = None
    sni: str | None = None
    watch: tuple[tuple[str, int], ...] = ()  # ("pid" | "tree", pid)
    seed: int = 1


class Run:
    """The connections of one run, the phase replies count in, and whether to send more."""

    def __init__(self, setup: Setup, sequence: list[RequestKind]) -> None:
        self.setup = setup
        self.sequence = sequence
        self.connections: list[LoadConnection] = []
        self.phases = {name: Phase(name) for name in ("warmup", "window", "after_window")}
        self.phase = self.phases["warmup"]
        self.sending = True
        self.closing = False
        self.all_lost = asyncio.Event()
        self.drained = asyncio.Event()  # sending has stopped and every request was answered

    def connection_lost(self) -> None:
        if not any(c.open for c in self.connections):
            self.all_lost.set()
        self.check_drained()

    def check_drained(self) -> None:
        if not self.sending and not any(c.pending and c.open for c in self.connections):
            self.drained.set()

    async def hold(self, seconds: float, until: asyncio.Event | None = None) -> None:
        """Let the load run for ``seconds``, or until ``until`` is set (default: every connection is gone)."""
        try:
            await asyncio.wait_for((until or self.all_lost).wait(), seconds)
        except TimeoutError:
            pass

    def reap(self) -> None:
        """Requests unanswered for longer than the request timeout count as errors and are replaced."""
        if self.closing:
            return
        deadline = time.monotonic_ns() - int(self.setup.request_timeout_s * 1e9)
        for conn in self.connections:
            expired = [tid for tid, (sent, _) in conn.pending.items() if sent < deadline]
            for tid in expired:
                del conn.pending[tid]
            if expired:
                self.phase.errors["timeout"] += len(expired)
                if self.sending:
                    conn.send(len(expired))
        asyncio.get_running_loop().call_later(REAP_PERIOD_S, self.reap)


@dataclass(frozen=True)
class Snapshot:
    at_s: float
    own_cpu_s: float
    host: tuple[int, int]
    watched: dict[str, tuple[float, int] | None]  # CPU seconds and process count per --pid / --pid-tree
    own_io: tuple[int, int] | None  # this generator's read and write system calls so far
    own_switches: tuple[int, int]  # and its (voluntary, involuntary) context switches
    own_user_s: float  # of own_cpu_s, the part in user space
    # (voluntary, involuntary) context switches per --pid / --pid-tree, taken in the window: a relay's
    # threads per connection are gone by the time the run ends
    watched_switches: dict[str, tuple[int, int] | None]

    @classmethod
    def take(cls, watch: tuple[tuple[str, int], ...]) -> Snapshot:
        watched: dict[str, tuple[float, int] | None] = {}
        switches: dict[str, tuple[int, int] | None] = {}
        for kind, pid in watch:
            if kind == "tree":
                tree = tree_cpu_times(pid)
                watched[f"tree:{pid}"] = None if tree is None else (tree[0] + tree[1], tree[2])
                switches[f"tree:{pid}"] = tree_context_switches(pid)
            else:
                times = cpu_times(pid)
                watched[f"pid:{pid}"] = None if times is None else (times[0] + times[1], 1)
                switches[f"pid:{pid}"] = context_switches(pid)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        own_io = io_syscalls(os.getpid())
        return cls(
            time.monotonic(),
            usage.ru_utime + usage.ru_stime,
            host_cpu_jiffies(),
            watched,
            own_io,
            (usage.ru_nvcsw, usage.ru_nivcsw),
            usage.ru_utime,
            switches,
        )


# ------------------------------------------------------------------------------------- the report


def _percentile_us(ordered: list[int], q: float) -> float | None:
    """Nearest rank: the smallest latency that at least a share ``q`` of the requests did not exceed."""
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * q // 1))
    return round(ordered[int(rank) - 1] / 1000, 1)


def _per_request(
    before: tuple[int, int] | None, after: tuple[int, int] | None, i: int, requests: int
) -> float | None:
    if before is None or after is None or not requests:
        return None
    return round((after[i] - before[i]) / requests, 3)


def _report(run: Run, before: Snapshot, after: Snapshot, unanswered: int) -> dict[str, Any]:
    setup, window = run.setup, run.phases["window"]
    window_s = max(after.at_s - before.at_s, 1e-9)
    requests = len(window.latencies_ns)
    ordered = sorted(window.latencies_ns)
    busy = after.host[0] - before.host[0]
    total = after.host[1] - before.host[1]
    own_s = after.own_cpu_s - before.own_cpu_s
    processes: dict[str, Any] = {}
    for key, start in before.watched.items():
        end = after.watched.get(key)
        if start is None or end is None:
            processes[key] = {"error": "process not found"}
            continue
        used = end[0] - start[0]
        own_s += used
        a, b = before.watched_switches.get(key), after.watched_switches.get(key)
        processes[key] = {
            "switches_per_request": None
            if a is None or b is None or not requests
            else [round((b[0] - a[0]) / requests, 3), round((b[1] - a[1]) / requests, 3)],
            "cpu_seconds": round(used, 3),
            "cpu_us_per_request": round(used * 1e6 / requests, 2) if requests else None,
            "cpu_util_pct": round(100 * used / window_s, 1),
            "processes": end[1],
        }
    per_us = (lambda s: round(s * 1e6 / requests, 2)) if requests else (lambda s: None)
    kinds = {kind.name: kind for kind in run.sequence}
    report: dict[str, Any] = {
        "tool": "bench.modbus_load",
        "target": f"{setup.host}:{setup.port}",
        "tls": setup.tls is not None,
        "loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        "connections": setup.connections,
        "depth": setup.depth,
        "workload": {"mix": setup.mix, "kinds": list(kinds)},
        "warmup_s": setup.warmup_s,
        "window_s": round(window_s, 3),
        "requests": requests,
        "req_per_s": round(requests / window_s, 1),
        "latency_us": {
            "p50": _percentile_us(ordered, 0.50),
            "p90": _percentile_us(ordered, 0.90),
            "p99": _percentile_us(ordered, 0.99),
            "max": round(ordered[-1] / 1000, 1) if ordered else None,
            "min": round(ordered[0] / 1000, 1) if ordered else None,
            "mean": round(sum(ordered) / len(ordered) / 1000, 1) if ordered else None,
        },
        "errors": sum(window.errors.values()),
        "error_detail": dict(window.errors),
        "exception_responses": sum(window.exceptions.values()),
        "exception_codes": dict(window.exceptions),
        "mismatches": sum(window.mismatches.values()),
        "mismatch_detail": dict(window.mismatches),
        "warmup": run.phases["warmup"].summary(),
        "after_window": {**run.phases["after_window"].summary(), "unanswered_at_close": unanswered},
        "mismatch_examples": {k: v for p in run.phases.values() for k, v in p.examples.items()},
        "loadgen_cpu_us_per_request": per_us(after.own_cpu_s - before.own_cpu_s),
        # How many replies a read brings the generator (and how many requests a write sends): the
        # batching a path hands its clients, which sets what they spend per request.
        "loadgen_reads_per_request": _per_request(before.own_io, after.own_io, 0, requests),
        "loadgen_writes_per_request": _per_request(before.own_io, after.own_io, 1, requests),
        "loadgen_user_us_per_request": per_us(after.own_user_s - before.own_user_s),
        "loadgen_switches_per_request": [
            round((b - a) / requests, 3) for a, b in zip(before.own_switches, after.own_switches, strict=True)
        ]
        if requests
        else None,
        "host_cpu_busy_pct": round(100 * busy / total, 1) if total else None,
        "processes": processes,
    }
    if total:
        # CPU the machine spent on anything but this generator and the watched processes.
        busy_cores = busy / total * (os.cpu_count() or 1)
        report["unaccounted_cpu_cores"] = round(busy_cores - own_s / window_s, 2)
    return report


# ----------------------------------------------------------------------------------- the program


async def run(setup: Setup) -> dict[str, Any]:
    """One whole run; its report. Raises :class:`SetupError` when there is nothing to report."""
    loop = asyncio.get_running_loop()
    kinds = request_kinds(setup.mix, setup.address, setup.count, setup.unit)
    load = Run(setup, _sequence(setup.mix, kinds, setup.seed))

    async def connect(index: int) -> None:
        conn = LoadConnection(load, index)
        load.connections.append(conn)
        tls: dict[str, Any] = {}
        if setup.tls is not None:
            tls = {"ssl": setup.tls, "server_hostname": setup.sni or setup.host}
        await asyncio.wait_for(
            loop.create_connection(lambda: conn, setup.host, setup.port, **tls), setup.connect_timeout_s
        )

    outcomes = await asyncio.gather(*(connect(i) for i in range(setup.connections)), return_exceptions=True)
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    if failed:
        load.closing = True
        for conn in load.connections:
            if conn.transport is not None:
                conn.transport.close()
        why = (
            "timed out" if isinstance(failed[0], TimeoutError) else f"{type(failed[0]).__name__}: {failed[0]}"
        )
        target = f"{setup.host}:{setup.port}"
        raise SetupError(f"cannot connect to {target} ({len(failed)} of {setup.connections} failed): {why}")
    # Nothing the generator keeps forms a cycle: a collection pass mid-run would only add jitter.
    gc.collect()
    gc.disable()
    try:
        loop.call_later(REAP_PERIOD_S, load.reap)
        if not setup.warmup_s:  # no warm-up: the window opens with the first request
            before = Snapshot.take(setup.watch)
            load.phase = load.phases["window"]
        for conn in load.connections:
            conn.send(setup.depth)
        if setup.warmup_s:
            await load.hold(setup.warmup_s)
            before = Snapshot.take(setup.watch)
            load.phase = load.phases["window"]
        await load.hold(setup.duration_s)
        after = Snapshot.take(setup.watch)
        load.phase, load.sending = load.phases["after_window"], False
        load.check_drained()
        await load.hold(setup.drain_s, load.drained)
        unanswered = sum(len(c.pending) for c in load.connections if c.open)
        load.closing = True
        for conn in load.connections:
            if conn.transport is not None:
                conn.transport.close()
        await asyncio.sleep(0)  # let the transports close before the loop ends
    finally:
        gc.enable()
    if not any(p.latencies_ns or p.mismatches or p.exceptions for p in load.phases.values()):
        errors = Counter[str]()
        for phase in load.phases.values():
            errors.update(phase.errors)
        raise SetupError(f"no reply at all from {setup.host}:{setup.port} (errors: {dict(errors)})")
    return _report(load, before, after, unanswered)


def _tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.tls:
        return None
    context = ssl.create_default_context(cafile=args.cafile)
    if args.cert:
        context.load_cert_chain(args.cert, args.key)
    return context


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.modbus_load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("-c", "--connections", type=int, default=1)
    parser.add_argument("-d", "--depth", type=int, default=1, help="requests in flight per connection")
    workload = parser.add_mutually_exclusive_group()
    workload.add_argument("--fc", type=int, choices=FUNCTION_CODES, help="one function code (default 3)")
    workload.add_argument("--mix", help="weighted function codes, e.g. 3:8,4:1,6:1")
    parser.add_argument("--address", type=int, default=40)
    parser.add_argument("--count", type=int, default=10, help="registers or coils per request")
    parser.add_argument("--unit", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before the window")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of the measured window")
    parser.add_argument("--drain", type=float, default=1.0, help="seconds to wait for replies at the end")
    parser.add_argument("--request-timeout", type=float, default=5.0, help="seconds before a request is lost")
    parser.add_argument("--connect-timeout", type=float, default=5.0)
    parser.add_argument("--max-time", type=float, default=0.0, help="hard limit on the whole run (seconds)")
    parser.add_argument("--pid", type=int, action="append", default=[], help="report this process's CPU")
    parser.add_argument("--pid-tree", type=int, action="append", default=[], help="... with its descendants")
    parser.add_argument("--tls", action="store_true", help="connect with TLS")
    parser.add_argument("--cafile", help="CA certificates to verify the server with")
    parser.add_argument("--cert", help="client certificate (PEM), for mutual TLS")
    parser.add_argument("--key", help="the client certificate's key")
    parser.add_argument("--sni", help="server name to send and verify (default: --host)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the mix's order")
    parser.add_argument("--compact", action="store_true", help="the report on one line")
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    args = parser.parse_args(argv)
    if args.connections < 1 or args.depth < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("--connections and --depth must be >= 1, --duration > 0, --warmup >= 0")
    if (args.cert or args.key or args.cafile or args.sni) and not args.tls:
        parser.error("--cafile, --cert, --key and --sni need --tls")
    args.mix = args.mix or str(args.fc or 3)
    try:
        request_kinds(args.mix, args.address, args.count, args.unit)
    except ValueError as exc:
        parser.error(str(exc))
    return args


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_HEAP_BLOCKS_BELOW_BYTES = 1 << 20
_HEAP_TRIM_ABOVE_BYTES = 4 << 20


def keep_read_buffers_on_the_heap() -> bool:
    """Take uvloop's TLS read buffers from the heap, whatever the server on the other end is.

    uvloop reads TLS with ``SSLObject.read(256 KiB)``: a 256 KiB block, shrunk to the record's size. glibc
    serves a block that large with mmap, shrinks it with mremap and frees it with munmap (three system calls
    per read) until its dynamic mmap threshold has risen past it, which depends on the process's history.
    On the bench's 1x1 the generator made no such call against stunnel and one of each per read against
    ztgate (strace -c over 2 s of each); perf put a third of its kernel time there. A fixed mmap threshold
    above the buffer (and a trim threshold above that, so the heap does not shrink and regrow per read)
    makes the generator's cost per request the same whatever it talks to. True when set (glibc)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(
        mallopt(_M_TRIM_THRESHOLD, _HEAP_TRIM_ABOVE_BYTES)
        and mallopt(_M_MMAP_THRESHOLD, _HEAP_BLOCKS_BELOW_BYTES)
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keep_read_buffers_on_the_heap()
    try:
        tls = _tls_context(args)
    except (OSError, ssl.SSLError) as exc:
        print(f"bench.modbus_load: TLS set-up failed: {exc}", file=sys.stderr)
        return 2
    watch = tuple(("pid", pid) for pid in args.pid) + tuple(("tree", pid) for pid in args.pid_tree)
    setup = Setup(
        host=args.host,
        port=args.port,
        connections=args.connections,
        depth=args.depth,
        mix=args.mix,
        address=args.address,
        count=args.count,
        unit=args.unit,
        warmup_s=args.warmup,
        duration_s=args.duration,
        drain_s=args.drain,
        request_timeout_s=args.request_timeout,
        connect_timeout_s=args.connect_timeout,
        tls=tls,
        sni=args.sni,
        watch=watch,
        seed=args.seed,
    )
    limit_s = (
        args.max_time or setup.warmup_s + setup.duration_s + setup.drain_s + setup.connect_timeout_s + 30
    )
    with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
        try:
            report = runner.run(asyncio.wait_for(run(setup), limit_s))
        except SetupError as exc:
            print(f"bench.modbus_load: {exc}", file=sys.stderr)
            return 2
        except TimeoutError:
            print(f"bench.modbus_load: the run took longer than {limit_s:g} s", file=sys.stderr)
            return 2
    print(json.dumps(report, indent=None if args.compact else 1), flush=True)
    bad = report["errors"] + report["mismatches"] + report["exception_responses"]
    bad += sum(
        sum(report[p][k] for k in ("errors", "mismatches", "exception_responses"))
        for p in ("warmup", "after_window")
    )
    return 1 if bad or report["after_window"]["unanswered_at_close"] else 0


if __name__ == "__main__":
    sys.exit(main())
