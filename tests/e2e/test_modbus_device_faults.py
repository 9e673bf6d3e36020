"""When the device misbehaves (issue 11): a real pymodbus client through the gateway to the lab's soft PLC,
with the lab's fault front (gateway/lab/sim/faults.py) spoiling chosen replies on purpose: a wrong
transaction id, a reply after the client's timeout, a reply cut short, a reply one byte every 5 ms."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from pymodbus.exceptions import ModbusException

from gateway.lab.sim.faults import Fault
from gateway.lab.sim.modbus import ModbusSim
from tests.e2e.harness import Lab, policy_text

RULES = """
[[rules]]
id = "operators"
subjects = ["group:operators"]
assets = ["plc-1"]
modbus = [{ fc = [3, 4], address = "0-999" }, { fc = [6], address = "100-199", value = "0-65535" }]
"""


async def _faulty_lab(lab: Lab, fault: Fault, asset_extra: str) -> ModbusSim:
    sim = ModbusSim(static=True, fault=fault)
    await sim.start()
    lab.device = sim  # type: ignore[assignment]  # stopped with the lab
    await lab.start_gateway(policy_text(sim.port, RULES, asset_extra=asset_extra))
    return sim


def _pool(lab: Lab) -> Any:
    assert lab.gateway is not None
    return lab.gateway.runtime.upstreams.pool_for(lab.gateway.policy.assets["plc-1"])


async def _until(predicate: Any, timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        if predicate():
            return
        assert loop.time() < deadline, f"not reached within {timeout_s} s"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize(("on_desync", "connections"), [("", 2), ('on_desync = "wait"', 1)])
async def test_a_reply_with_the_wrong_transaction_id_is_answered_0x0b_at_once(
    lab: Lab, on_desync: str, connections: int
) -> None:
    # The response timeout is far beyond the client's: only an answer at once reaches the client.
    # on_desync is "reconnect" unless the asset says "wait".
    sim = await _faulty_lab(lab, Fault("wrong-tid"), f"response_timeout_s = 30\n{on_desync}")
    client = await lab.client("alice", timeout_s=2.0)
    result = await client.read_input_registers(7, count=1, device_id=1)
    assert result.isError() and result.exception_code == 0x0B
    event = await lab.wait_for_event(event="decision", fc=4)
    request_tid = int(event["outcome"].rsplit(" ", 1)[1])
    assert (
        event["outcome"] == f"reply with transaction id {(request_tid + 1) & 0xFFFF} to request {request_tid}"
    )
    assert event["code"] == 0x0B
    desync = await lab.wait_for_event(event="upstream", state="desync")
    assert desync["reason"].startswith(event["outcome"])
    # The next request gets the device's own answer (unit 1's IR 7 holds its unit id).
    assert (await client.read_input_registers(7, count=1, device_id=1)).registers == [1]
    assert sim.front is not None and sim.front.connections == connections
    assert _pool(lab).desyncs == 1


async def test_a_write_queued_behind_a_slow_request_is_answered_at_its_deadline_and_never_sent(
    lab: Lab,
) -> None:
    # The device answers the first request 1 s late, after a C client's usual 0.5 s timeout.
    sim = await _faulty_lab(lab, Fault("late", delay_s=1.0), "response_timeout_s = 5\nqueue_timeout_s = 0.4")
    assert sim.front is not None
    slow = await lab.client("alice", timeout_s=0.5)
    writer = await lab.client("bob", timeout_s=3.0)
    slow_read = asyncio.create_task(slow.read_input_registers(7, count=1, device_id=1))
    await _until(lambda: len(sim.front.requests) == 1)  # type: ignore[union-attr]
    result = await writer.write_register(100, 42, device_id=1)
    assert result.isError() and result.exception_code == 0x0B
    with contextlib.suppress(ModbusException):  # the slow client gave up on its own
        assert (await slow_read).isError()
    # The late reply reaches the gateway; whatever the gateway would still send goes after it.
    late = await lab.wait_for_event(event="decision", fc=4)
    assert late["outcome"] == "ok"
    assert (await writer.read_holding_registers(40, count=1, device_id=1)).registers == [1000]
    assert [frame[7] for frame in sim.front.requests] == [4, 3], "the write reached the device"
    assert sim.holding(1, 100) == [0]
    event = await lab.wait_for_event(event="decision", fc=6)
    assert event["outcome"] == (
        "not sent within queue_timeout_s (0.4 s): the device was busy with 1 earlier requests"
    )


async def test_a_reply_cut_short_ends_that_connection_and_the_audit_says_so(lab: Lab) -> None:
    sim = await _faulty_lab(lab, Fault("short"), "response_timeout_s = 0.5")
    client = await lab.client("alice", timeout_s=3.0)
    result = await client.read_input_registers(7, count=3, device_id=1)
    assert result.isError() and result.exception_code == 0x0B
    event = await lab.wait_for_event(event="decision", fc=4)
    assert event["outcome"].startswith("device did not answer in time: 7 bytes of a reply had arrived")
    lost = await lab.wait_for_event(event="upstream", state="disconnected")
    assert "incomplete reply" in lost["reason"]
    # The rest of that reply can never be taken for the next one: the next read is answered right.
    assert (await client.read_input_registers(7, count=1, device_id=1)).registers == [1]
    assert sim.front is not None and sim.front.connections == 2


async def test_a_reply_trickling_in_is_reassembled_or_timed_out_with_its_cause(lab: Lab) -> None:
    # One byte every 5 ms: an 11-byte reply takes 55 ms, a 259-byte one 1.3 s.
    sim = await _faulty_lab(lab, Fault("trickle", replies=None), "response_timeout_s = 0.6")
    client = await lab.client("alice", timeout_s=3.0)
    assert (await client.read_input_registers(7, count=1, device_id=1)).registers == [1]
    result = await client.read_holding_registers(0, count=125, device_id=1)
    assert result.isError() and result.exception_code == 0x0B
    event = await lab.wait_for_event(event="decision", fc=3)
    assert "bytes of a reply had arrived, the last" in event["outcome"]
    assert (await client.read_input_registers(7, count=1, device_id=1)).registers == [1]
    assert sim.front is not None and sim.front.connections == 2
