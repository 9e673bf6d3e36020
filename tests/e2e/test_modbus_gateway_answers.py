"""What the gateway answers itself (issues 11 and 16): an unknown unit id, the order of pipelined
answers, a fair share of the device's queue when one identity floods it, and back-pressure, not busy
answers, for a client pipelining past its share. Real pymodbus clients and the lab's soft PLC; the order and
burst tests use a client of their own that sees the order of answers, since pymodbus matches answers by
transaction id."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest

from gateway.lab.sim.faults import Fault
from gateway.lab.sim.modbus import ModbusSim
from tests.e2e.harness import Lab, policy_text
from tests.e2e.test_opcua_sessions import wait_until

RULES = """
[[rules]]
id = "operators"
subjects = ["group:operators"]
assets = ["plc-1"]
modbus = [{ fc = [3, 4], address = "0-999" }]
"""


async def _sim_lab(lab: Lab, asset_extra: str = "", fault: Fault | None = None) -> ModbusSim:
    sim = ModbusSim(static=True, fault=fault)
    await sim.start()
    lab.device = sim  # type: ignore[assignment]  # stopped with the lab
    await lab.start_gateway(policy_text(sim.port, RULES, asset_extra=asset_extra))
    return sim


@pytest.mark.parametrize(("asset_extra", "code"), [("", 0x0A), ("deny = { unit = 0x0B }", 0x0B)])
async def test_an_unknown_unit_id_is_answered_gateway_path_unavailable(
    lab: Lab, asset_extra: str, code: int
) -> None:
    await _sim_lab(lab, asset_extra)
    client = await lab.client("alice")
    result = await client.read_input_registers(7, count=1, device_id=9)
    assert result.isError() and result.exception_code == code
    event = await lab.wait_for_event(event="decision", unit=9)
    assert event["code"] == code and event["reason"].startswith("unit 9 is not configured")
    # A unit the asset has, but outside the caller's rule, is still an address refusal.
    assert (await client.read_input_registers(1000, count=1, device_id=1)).exception_code == 0x02


async def test_preserve_order_answers_pipelined_requests_in_the_order_they_came(lab: Lab) -> None:
    # Every reply waits 50 ms at the device, so the refusals are ready long before the reads.
    fault = Fault("late", replies=None, delay_s=0.05)
    await _sim_lab(lab, "preserve_order = true", fault)
    reader, writer = await lab.raw_connection("alice")
    frames, expected = [], []
    for tid in range(1, 13):
        if tid % 3 == 0:  # a write the policy refuses: exception 0x01
            frames.append(struct.pack(">HHHBBHH", tid, 0, 6, 1, 6, 40, tid))
            expected.append((tid, bytes((0x86, 0x01))))
        else:  # IR 7 holds the unit id
            frames.append(struct.pack(">HHHBBHH", tid, 0, 6, 1, 4, 7, 1))
            expected.append((tid, bytes((4, 2, 0, 1))))
    writer.write(b"".join(frames))
    got = []
    for _ in expected:
        header = await asyncio.wait_for(reader.readexactly(7), 5)
        tid, _, length, _ = struct.unpack(">HHHB", header)
        got.append((tid, await reader.readexactly(length - 1)))
    assert got == expected


async def test_a_flooding_identity_fills_only_its_share_of_the_queue(lab: Lab) -> None:
    # A slow device (every reply 5 ms late, one at a time) and a small queue: bob's 12 clients reading
    # as fast as they can keep it full, and more of his requests held past his share, while alice polls.
    # The queue timeout is generous, so any failure of alice's comes from the queue's sharing, not from
    # this machine's speed.
    fault = Fault("late", replies=None, delay_s=0.005)
    await _sim_lab(lab, "queue_limit = 4\nqueue_timeout_s = 10\nresponse_timeout_s = 10", fault)
    flooders = [await lab.client("bob", timeout_s=15) for _ in range(12)]
    poller = await lab.client("alice", timeout_s=15)
    done = asyncio.Event()
    outcomes: dict[str, dict[Any, int]] = {"alice": {}, "bob": {}}

    def count(who: str, result: Any) -> None:
        key = result.exception_code if result.isError() else "ok"
        outcomes[who][key] = outcomes[who].get(key, 0) + 1

    async def flood(client: Any) -> None:
        for _ in range(2000):  # bounded even if the poller were stuck
            if done.is_set():
                return
            count("bob", await client.read_input_registers(7, count=1, device_id=1))

    async def poll() -> None:
        # Start once bob's sessions are held past his share: 12 reads at once, for 1 in flight and 4
        # places in the queue.
        assert lab.gateway is not None
        sessions = lab.gateway.runtime.sessions
        await wait_until(lambda: any("queue share" in s.describe()["paused"] for s in sessions), 10)
        for _ in range(40):
            result = await poller.read_input_registers(7, count=1, device_id=1)
            count("alice", result)
            assert result.isError() or result.registers == [1]
        done.set()

    await asyncio.wait_for(asyncio.gather(poll(), *(flood(c) for c in flooders)), 60)
    assert outcomes["alice"] == {"ok": 40}
    # Past his share bob is slowed, not refused: every one of his reads is answered by the device.
    assert list(outcomes["bob"]) == ["ok"] and outcomes["bob"]["ok"] >= 12
    assert lab.audit_events(event="decision", code=0x0A) == []


async def test_a_client_pipelining_past_its_share_is_slowed_not_refused(lab: Lab) -> None:
    # Every reply 50 ms late, one request at a time at the device, a queue of 4: of 40 reads sent in one
    # write, one goes out, four wait and the sixth is held. The session reads nothing more until the
    # queue takes it in (its status says so meanwhile), and every read is answered by the device, in
    # order (the code before answered 0x0A past the share).
    fault = Fault("late", replies=None, delay_s=0.05)
    await _sim_lab(lab, "queue_limit = 4\nqueue_timeout_s = 10\nresponse_timeout_s = 10", fault)
    reader, writer = await lab.raw_connection("alice")
    count = 40
    writer.write(b"".join(struct.pack(">HHHBBHH", tid, 0, 6, 1, 4, 7, 1) for tid in range(1, count + 1)))
    assert lab.gateway is not None
    sessions = lab.gateway.runtime.sessions
    await wait_until(lambda: any("queue share" in s.describe()["paused"] for s in sessions), 10)
    answers = []
    for _ in range(count):
        header = await asyncio.wait_for(reader.readexactly(7), 10)
        tid, _, length, _ = struct.unpack(">HHHB", header)
        answers.append((tid, await reader.readexactly(length - 1)))
    assert answers == [(tid, bytes((4, 2, 0, 1))) for tid in range(1, count + 1)]
    assert lab.audit_events(event="decision", code=0x0A) == []
    (session,) = sessions
    assert session.describe()["paused"] == [] and session.describe()["in_flight"] == 0
