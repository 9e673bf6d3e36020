"""A client pipelining past its identity's share of an asset (issue 16, point 2), EtherNet/IP and OPC UA:
slowed by back-pressure (its session stops reading), never refused, while another identity is served.
The Modbus cases of that are in test_modbus_gateway_answers.py; here, for Modbus, what becomes of a held
session's requests when it ends (never sent), the held requests on the metrics, and queue timeouts
audited as aggregates. Real peers: cpppo's client (which pipelines) and pylogix against cpppo's server;
asyncua's client and server; a raw mutual-TLS stream against the lab's soft PLC behind a fault front
that keeps what reached the device."""

from __future__ import annotations

import asyncio
import logging
import re
import struct
from typing import Any

import aiohttp
import pytest
from asyncua import Client
from cpppo.server.enip import client as cpppo_client  # type: ignore[import-untyped]
from pylogix import PLC  # type: ignore[import-untyped]

from gateway.lab.sim.faults import Fault
from gateway.lab.sim.modbus import ModbusSim
from gateway.lab.sim.opcua import OpcUaSim
from gateway.runtime import SessionLimits
from gateway.session import Session
from gateway.upstream import Failure
from tests.e2e.harness import Lab, enip_policy_text, in_thread, opcua_policy_text, policy_text
from tests.e2e.test_opcua import PLANT, tank
from tests.e2e.test_opcua import RULES as OPCUA_RULES
from tests.e2e.test_opcua_sessions import wait_until
from tests.peers.cpppo_server import CpppoProcess

ENIP_RULES = """
[[rules]]
id = "operators"
subjects = ["group:operators"]
assets = ["plc-2"]
enip = [{ preset = "read-only" }]
"""
MODBUS_RULES = """
[[rules]]
id = "operators"
subjects = ["group:operators"]
assets = ["plc-1"]
modbus = [{ fc = [3, 4], address = "0-999" }]
"""
PIPELINED = 3000  # bob's reads: bounded, and far more than he may have waiting at the gateway
DEPTH = 32  # in flight at once on his one connection


@pytest.fixture(autouse=True)
def quiet_clients(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="cpppo")


def pauses(lab: Lab, identity: str, why: str) -> int:
    """How many times the sessions of ``identity`` have stopped reading their client for ``why``."""
    assert lab.gateway is not None
    return sum(
        session.pauses.get(why, 0)
        for session in lab.gateway.runtime.sessions
        if isinstance(session, Session) and session.info.identity.endswith(identity)
    )


def paused_by(lab: Lab, identity: str, why: str) -> bool:
    """Whether a session of ``identity`` has stopped reading its client for ``why`` (its status)."""
    assert lab.gateway is not None
    return any(
        session.info.identity.endswith(identity) and why in session.describe()["paused"]
        for session in lab.gateway.runtime.sessions
        if isinstance(session, Session)
    )


async def _slow_modbus(lab: Lab, asset_extra: str, delay_s: float) -> ModbusSim:
    """The lab's soft PLC, every reply ``delay_s`` late, behind a front that keeps what reached it."""
    sim = ModbusSim(static=True, fault=Fault("late", replies=None, delay_s=delay_s))
    await sim.start()
    lab.device = sim  # type: ignore[assignment]  # stopped with the lab
    # Overload outcomes aggregated as the gateway's defaults do (the lab writes them one line each).
    limits = SessionLimits(refusal_audit_interval_s=1.0)
    await lab.start_gateway(policy_text(sim.port, MODBUS_RULES, asset_extra=asset_extra), limits=limits)
    return sim


def _reads(count: int) -> bytes:
    """``count`` Modbus reads (FC 4, one register at 7) under transaction ids 1..count, in one write."""
    return b"".join(struct.pack(">HHHBBHH", tid, 0, 6, 1, 4, 7, 1) for tid in range(1, count + 1))


async def test_modbus_a_held_session_that_ends_sends_nothing_more_to_the_device(lab: Lab) -> None:
    # One request at a time at the device (each answered 1 s late: nothing moves while the metrics are
    # read), a queue of 4: of 40 reads in one write, one goes out, four wait and the sixth is held, and
    # the session stops reading. The metrics show the held request. Then the session ends: its queued
    # and held requests must never reach the device (nobody waits for their replies), and the audit
    # says what became of them.
    sim = await _slow_modbus(lab, "queue_limit = 4\nqueue_timeout_s = 10\nresponse_timeout_s = 10", 1.0)
    assert lab.gateway is not None and sim.front is not None
    _, writer = await lab.raw_connection("alice")
    writer.write(_reads(40))
    sessions = lab.gateway.runtime.sessions
    await wait_until(lambda: any("queue share" in s.describe()["paused"] for s in sessions), 10)
    (session,) = sessions
    pool = lab.gateway.runtime.upstreams.pool_for(session.view.asset)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{lab.gateway.admin_port}/metrics") as response,
    ):
        metrics = await response.text()
    gauge = re.search(r'^ztgate_upstream_held\{asset="plc-1",protocol="modbus"\} (\S+)$', metrics, re.M)
    assert gauge is not None and float(gauge[1]) >= 1 and pool.state().held >= 1
    # What has left the queue so far went to the device; the rest must not, once the session is gone.
    waiting = len(pool.queue) + pool.queue.held
    sent = session.requests - waiting
    session.close("test: the client is gone")
    await wait_until(lambda: not sessions and not pool.state().in_flight and not pool.queue, 10)
    writer.close()
    assert pool.state().held == 0
    assert len(sim.front.requests) == sent
    # Audited: the first in full, the rest counted, exactly.
    records = lab.audit_events(event="decision", outcome=Failure.CLIENT_GONE.value)
    full = [e for e in records if not e.get("aggregated")]
    assert len(full) == 1 and full[0]["decision"] == "allow" and full[0]["code"] == 0x0B
    assert 1 + sum(e["count"] for e in records if e.get("aggregated")) == waiting


async def test_modbus_queue_timeouts_are_audited_as_aggregates(lab: Lab) -> None:
    # Every reply 0.2 s late, one at a time, a queue timeout of 50 ms: most of 20 pipelined reads are
    # answered 0x0B (not sent in time). The first is written in full, with what held it up; the rest
    # are counted, per session and interval, and the counts are exact.
    extra = "queue_limit = 8\nqueue_timeout_s = 0.05\nresponse_timeout_s = 10"
    await _slow_modbus(lab, extra, 0.2)
    reader, writer = await lab.raw_connection("alice")
    count = 20
    writer.write(_reads(count))
    codes = []
    for _ in range(count):
        header = await asyncio.wait_for(reader.readexactly(7), 20)
        _, _, length, _ = struct.unpack(">HHHB", header)
        body = await reader.readexactly(length - 1)
        codes.append(body[1] if body[0] & 0x80 else 0)
    timed_out = codes.count(0x0B)
    assert timed_out >= 8 and set(codes) <= {0, 0x0B}
    writer.close()
    assert lab.gateway is not None
    sessions = lab.gateway.runtime.sessions
    await wait_until(lambda: not sessions, 10)  # its last counts are written before its end
    records = lab.audit_events(event="decision", code=0x0B)
    full = [e for e in records if not e.get("aggregated")]
    assert len(full) == 1 and full[0]["outcome"].startswith(Failure.QUEUE_TIMEOUT.value)
    assert 1 + sum(e["count"] for e in records if e.get("aggregated")) == timed_out


async def test_enip_a_client_pipelining_past_its_share_is_slowed_not_refused(
    lab: Lab, cpppo: CpppoProcess
) -> None:
    # One request at a time at the device and one place in the queue: of bob's 32 reads in flight, one
    # goes out, one waits and the third is held; his session then reads nothing more until the queue
    # takes it in. alice, another identity, reads meanwhile.
    await lab.start_gateway(enip_policy_text(cpppo.port, ENIP_RULES, asset_extra="queue_limit = 1"))
    bob_port = await lab.start_agent("bob", "plc-2", "enip")
    alice_port = await lab.start_agent("alice", "plc-2", "enip")
    stop = False

    def pipeline() -> list[Any]:
        with cpppo_client.connector(host="127.0.0.1", port=bob_port, timeout=30) as conn:
            operations = cpppo_client.parse_operations(["SCADA[0-9]"] * PIPELINED)
            values = []
            for _, _, _, _, status, value in conn.pipeline(operations=operations, depth=DEPTH, timeout=30):
                values.append((status, value))
                if stop and len(values) >= DEPTH:
                    break  # alice is done: the point is made
            return values

    def poll() -> list[Any]:
        with PLC("127.0.0.1", port=alice_port) as comm:
            return [comm.Read("SCADA[0]").Status for _ in range(40)]

    flood = asyncio.ensure_future(in_thread(pipeline, timeout_s=120))
    await wait_until(lambda: paused_by(lab, "/bob", "queue share"), 30)
    polled = await in_thread(poll, timeout_s=120)
    stop = True
    bob = await flood
    assert polled == ["Success"] * 40
    # Slowed, not refused: every read of bob's answered by the device (CIP status 0), values and all.
    assert len(bob) >= DEPTH and all(status == 0 and value == [0] * 10 for status, value in bob)
    assert lab.audit_events(event="decision", code=0x02) == []  # no "resource unavailable"


async def test_opcua_a_client_pipelining_past_its_limit_is_slowed_not_refused(lab: Lab) -> None:
    # OPC UA has no shared queue (every client session has a device session of its own): what a session
    # may have on its way to the device is its in-flight limit, and past it the session stops reading.
    # bob sends 400 Reads at once on one session; alice, another identity, reads meanwhile.
    # Everything (clients, agents, gateway, device) shares this one event loop, and the device works
    # through up to 32 of bob's Reads for every one of alice's: on a loaded machine a Read can take
    # seconds. So the timeouts are generous (the asset's response timeout, 2 s by default, could answer
    # one of bob's Reads BadTimeout): a failure here comes from the back-pressure, not the machine.
    # The pause is seen by its count (Session.pauses): polling the session's status for it timed out
    # once under `-n 2`, when every pause had lasted less than the poll's 20 ms.
    async with OpcUaSim(static=True) as plc:
        await lab.start_gateway(
            opcua_policy_text(plc.port, OPCUA_RULES, asset_extra="response_timeout_s = 60")
        )
        bob_port = await lab.start_agent("bob", "opc-1", "opcua")
        alice_port = await lab.start_agent("alice", "opc-1", "opcua")
        async with (
            Client(f"opc.tcp://127.0.0.1:{bob_port}/", timeout=120) as bob,
            Client(f"opc.tcp://127.0.0.1:{alice_port}/", timeout=60) as alice,
        ):
            ns = await bob.get_namespace_index(PLANT)
            level = bob.get_node(tank(ns, "Level"))
            flood = asyncio.gather(*(level.read_data_value() for _ in range(400)))
            # Counted, not polled: a pause may last less than a poll's interval (seen under -n 2).
            await wait_until(lambda: pauses(lab, "/bob", "in-flight limit") > 0, 60)
            polled = [await alice.get_node(tank(ns, "Level")).read_value() for _ in range(20)]
            values = await asyncio.wait_for(flood, 120)
        expected = plc.value("Level")
    # Slowed, not refused: every Read answered by the device (a bad status would have raised).
    assert polled == [expected] * 20
    assert [v.Value.Value for v in values] == [expected] * 400
    coded = [e for e in lab.audit_events(event="decision") if e.get("code")]
    assert coded == [], coded  # what a future failure was
