"""A client pipelining past its identity's share of an asset (issue 16, point 2), EtherNet/IP and OPC UA:
slowed by back-pressure (its session stops reading), never refused, while another identity is served.
The Modbus cases are in test_modbus_gateway_answers.py. Real peers: cpppo's client (which pipelines)
and pylogix against cpppo's server; asyncua's client and server."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from asyncua import Client
from cpppo.server.enip import client as cpppo_client  # type: ignore[import-untyped]
from pylogix import PLC  # type: ignore[import-untyped]

from gateway.lab.sim.opcua import OpcUaSim
from gateway.session import Session
from tests.e2e.harness import Lab, enip_policy_text, in_thread, opcua_policy_text
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
PIPELINED = 3000  # bob's reads: bounded, and far more than he may have waiting at the gateway
DEPTH = 32  # in flight at once on his one connection


@pytest.fixture(autouse=True)
def quiet_clients(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="cpppo")


def paused_by(lab: Lab, identity: str, why: str) -> bool:
    """Whether a session of ``identity`` has stopped reading its client for ``why`` (its status)."""
    assert lab.gateway is not None
    return any(
        session.info.identity.endswith(identity) and why in session.describe()["paused"]
        for session in lab.gateway.runtime.sessions
        if isinstance(session, Session)
    )


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
    async with OpcUaSim(static=True) as plc:
        await lab.start_gateway(opcua_policy_text(plc.port, OPCUA_RULES))
        bob_port = await lab.start_agent("bob", "opc-1", "opcua")
        alice_port = await lab.start_agent("alice", "opc-1", "opcua")
        async with (
            Client(f"opc.tcp://127.0.0.1:{bob_port}/", timeout=60) as bob,
            Client(f"opc.tcp://127.0.0.1:{alice_port}/", timeout=10) as alice,
        ):
            ns = await bob.get_namespace_index(PLANT)
            level = bob.get_node(tank(ns, "Level"))
            flood = asyncio.gather(*(level.read_data_value() for _ in range(400)))
            await wait_until(lambda: paused_by(lab, "/bob", "in-flight limit"), 30)
            polled = [await alice.get_node(tank(ns, "Level")).read_value() for _ in range(20)]
            values = await flood
        expected = plc.value("Level")
    # Slowed, not refused: every Read answered by the device (a bad status would have raised).
    assert polled == [expected] * 20
    assert [v.Value.Value for v in values] == [expected] * 400
    assert [e for e in lab.audit_events(event="decision") if e.get("code")] == []
