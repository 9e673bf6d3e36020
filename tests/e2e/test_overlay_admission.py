"""Admission to the overlay before authentication: per-source limits, the cap on pending handshakes and
who is dropped at it, the timeout that shrinks under pressure, and refusals audited as counts."""

from __future__ import annotations

import asyncio
import math
import ssl
from collections.abc import Callable

import orjson
import pytest

from gateway.admission import HandshakeLimits
from gateway.overlay import OverlayListener
from tests.e2e.harness import Lab, policy_text
from tests.e2e.test_overlay import RULES
from tests.overlay.flood import STALLED_HELLO


async def _until(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, f"not within {timeout_s} s: {what}"
        await asyncio.sleep(0.01)


async def _start(lab: Lab, limits: HandshakeLimits, **kwargs: int) -> OverlayListener:
    port = await lab.start_device()
    gateway = await lab.start_gateway(policy_text(port, RULES), handshake_limits=limits, **kwargs)
    assert gateway.listener is not None
    return gateway.listener


def _reset_reader() -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_eof()
    return reader


class Idle:
    """Connections that send nothing (or a stalled ClientHello record), from chosen source addresses."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter | None]] = []

    async def open(self, source: str, count: int = 1, first: bytes = b"") -> None:
        for _ in range(count):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port, local_addr=(source, 0))
            except ConnectionResetError:  # refused before the client's side saw it connected
                self.streams.append((_reset_reader(), None))
                continue
            if first:
                writer.write(first)
            self.streams.append((reader, writer))

    @staticmethod
    async def closed_by_gateway(reader: asyncio.StreamReader, timeout_s: float = 5.0) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                return await reader.read(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True

    def close(self) -> None:
        for _, writer in self.streams:
            if writer is not None:
                writer.close()


async def _read_ok(lab: Lab) -> None:
    client = await lab.client("alice")
    assert not (await client.read_holding_registers(0, count=1, device_id=1)).isError()


async def test_a_source_may_hold_only_its_share_of_pending_handshakes(lab: Lab) -> None:
    listener = await _start(lab, HandshakeLimits(max_pending_per_source=4, handshake_timeout_s=60))
    idle = Idle(lab.gateway.port if lab.gateway else 0)
    await idle.open("127.0.0.2", 4)
    await _until(lambda: listener.pending == 4, "four pending")
    await idle.open("127.0.0.2")  # the fifth from that source
    assert await idle.closed_by_gateway(idle.streams[-1][0])
    await idle.open("127.0.0.3", 2)  # another source still has its share
    await _until(lambda: listener.pending == 6, "six pending")
    await _read_ok(lab)
    await lab.wait_for_event(event="session_refused", category="source_limit", source="127.0.0.2")
    idle.close()


async def test_a_source_opening_connections_too_fast_is_refused(lab: Lab) -> None:
    await _start(lab, HandshakeLimits(source_rate_per_s=0.01, source_burst=3))
    assert lab.gateway is not None
    idle = Idle(lab.gateway.port)
    await idle.open("127.0.0.4", 4)
    assert await idle.closed_by_gateway(idle.streams[3][0]), "the fourth exceeds the burst"
    for reader, _ in idle.streams[:3]:  # the burst's three were let in, to wait for a ClientHello
        assert not reader.at_eof()
    idle.close()
    event = await lab.wait_for_event(event="session_refused", category="rate")
    assert event["source"] == "127.0.0.4" and event["reason"] == "too many new connections from this source"
    await _read_ok(lab)  # another source is not slowed down


async def test_at_the_cap_the_oldest_idle_connection_makes_room(lab: Lab) -> None:
    limits = HandshakeLimits(max_pending_handshakes=8, max_pending_per_source=8, handshake_timeout_s=60)
    listener = await _start(lab, limits)
    assert lab.gateway is not None
    idle = Idle(lab.gateway.port)
    await idle.open("127.0.0.2", 4)
    await idle.open("127.0.0.3", 4, first=STALLED_HELLO)  # these are past their first byte: TLS is running
    await _until(lambda: listener.pending == 8, "eight pending")
    await _read_ok(lab)  # a valid client takes the oldest idle connection's place
    assert await idle.closed_by_gateway(idle.streams[0][0])
    for reader, _ in idle.streams[4:]:  # connections that sent their first byte were not the ones dropped
        assert not reader.at_eof()
    event = await lab.wait_for_event(event="session_refused", category="capacity")
    assert event["reason"] == "dropped before a ClientHello: pending handshakes at the cap"
    idle.close()


async def test_the_handshake_timeout_shrinks_as_pending_handshakes_near_the_cap(lab: Lab) -> None:
    limits = HandshakeLimits(
        max_pending_handshakes=20,
        max_pending_per_source=20,
        handshake_timeout_s=60,
        handshake_timeout_min_s=0.2,
        timeout_scale_from=0.5,
    )
    listener = await _start(lab, limits)
    assert lab.gateway is not None
    assert listener.timeout_s() == 60
    idle = Idle(lab.gateway.port)
    await idle.open("127.0.0.2", 5)
    await idle.open("127.0.0.3", 5, first=STALLED_HELLO)
    await _until(lambda: listener.pending == 10, "ten pending")
    assert listener.timeout_s() == 60  # half the cap: not under pressure yet
    assert limits.timeout_s(15) == pytest.approx(30.1) and limits.timeout_s(20) == 0.2
    assert limits.timeout_s(19) == pytest.approx(6.18)

    async def keep_at_the_cap() -> None:  # an attacker topping up whatever the gateway drops
        while True:
            if listener.pending < limits.max_pending_handshakes:
                await idle.open("127.0.0.4")
            else:
                await asyncio.sleep(0.005)

    attacker = asyncio.ensure_future(keep_at_the_cap())
    try:  # the ten first connections wait at most 0.2 s (plus a sweep), not 60 s
        closed = await asyncio.gather(*(idle.closed_by_gateway(r, timeout_s=5) for r, _ in idle.streams[:10]))
    finally:
        attacker.cancel()
    assert all(closed)
    await lab.wait_for_event(event="session_refused", category="timeout")
    await _read_ok(lab)
    idle.close()


async def test_established_sessions_are_never_displaced(lab: Lab) -> None:
    limits = HandshakeLimits(max_pending_handshakes=4, max_pending_per_source=4, handshake_timeout_s=60)
    listener = await _start(lab, limits, max_sessions=3)
    assert lab.gateway is not None
    first = await lab.client("alice")
    second = await lab.client("alice")
    idle = Idle(lab.gateway.port)
    await idle.open("127.0.0.2", 4)
    await idle.open("127.0.0.3", 4)  # over the pending cap: idle ones displace idle ones, nothing else
    await _until(lambda: listener.pending == 4, "the cap")
    third = await lab.client("alice")  # takes an idle connection's place, and the last session
    with pytest.raises((ConnectionError, ssl.SSLError)):  # past the session limit: refused, displacing nobody
        await lab.raw_connection("alice")
    await lab.wait_for_event(
        event="session_refused", category="capacity", reason="gateway at its session limit"
    )
    for client in (first, second, third):
        assert not (await client.read_holding_registers(0, count=1, device_id=1)).isError()
    assert len(lab.gateway.runtime.sessions) == 3
    idle.close()


async def test_refusals_are_audited_as_exact_counts_per_source_and_interval(lab: Lab) -> None:
    interval_s = 0.2
    limits = HandshakeLimits(
        max_pending_per_source=1, handshake_timeout_s=60, refusal_audit_interval_s=interval_s
    )
    listener = await _start(lab, limits)
    assert lab.gateway is not None
    idle = Idle(lab.gateway.port)
    await idle.open("127.0.0.5")
    await idle.open("127.0.0.6")
    await _until(lambda: listener.pending == 2, "one pending per source")
    loop = asyncio.get_running_loop()
    started = loop.time()
    refused = {"127.0.0.5": 300, "127.0.0.6": 40}
    for source, count in refused.items():
        extra = Idle(lab.gateway.port)
        await extra.open(source, count)
        assert all(await asyncio.gather(*(extra.closed_by_gateway(r) for r, _ in extra.streams)))
        extra.close()
    elapsed_s = loop.time() - started
    idle.close()
    await lab.gateway.stop()  # writes the last interval's counts
    lab.gateway = None
    written = [orjson.loads(line) for line in lab.audit_path.read_bytes().splitlines()]
    for source, count in refused.items():
        events = [
            e
            for e in written
            if e["event"] == "session_refused"
            and e.get("source") == source
            and e["category"] == "source_limit"
        ]
        full = [e for e in events if not e.get("aggregated")]
        aggregated = [e for e in events if e.get("aggregated")]
        assert len(full) == 1 and full[0]["peer"].startswith(source + ":")
        assert len(full) + sum(e["count"] for e in aggregated) == count  # exact
        assert len(aggregated) <= math.ceil(elapsed_s / interval_s) + 1  # one line per interval at most
        assert all(e["interval_s"] == interval_s and e["reason"] for e in aggregated)
