"""What the gateway answers itself (issues 11 and 16): an unknown unit id, the order of pipelined
answers, a fair share of the device's queue when one identity floods it, and no burst of busy answers
to a client pipelining past its share. Real pymodbus clients and the lab's soft PLC; the order and
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
    # as fast as they can keep it overflowing while alice polls. The queue timeout is generous, so any
    # failure of alice's comes from the queue's sharing, not from this machine's speed.
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
        # Start once the flood has overflowed the queue at least once.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            if outcomes["bob"].get(0x0A):
                break
            assert loop.time() < deadline, "the flood never filled the queue"
            await asyncio.sleep(0.005)
        for _ in range(40):
            result = await poller.read_input_registers(7, count=1, device_id=1)
            count("alice", result)
            assert result.isError() or result.registers == [1]
        done.set()

    await asyncio.wait_for(asyncio.gather(poll(), *(flood(c) for c in flooders)), 60)
    assert outcomes["alice"] == {"ok": 40}
    assert outcomes["bob"].get(0x0A, 0) > 0 and outcomes["bob"].get("ok", 0) > 0
    refused = lab.audit_events(event="decision", identity="spiffe://plant1.example/user/bob", code=0x0A)
    assert refused and all(e["outcome"].startswith("upstream queue full: ") for e in refused)


async def test_a_client_pipelining_past_its_share_gets_no_burst_of_busy_answers(lab: Lab) -> None:
    # Every reply 50 ms late, one request at a time at the device, a queue of 4: of 40 reads sent in one
    # write, one goes out, four wait and the sixth is answered 0x0A. The session then reads no more until
    # one of its requests is answered, so no second 0x0A comes before the first reply (the code before
    # read on and answered all 35 past the share at once).
    fault = Fault("late", replies=None, delay_s=0.05)
    await _sim_lab(lab, "queue_limit = 4\nqueue_timeout_s = 10\nresponse_timeout_s = 10", fault)
    reader, writer = await lab.raw_connection("alice")
    count = 40
    writer.write(b"".join(struct.pack(">HHHBBHH", tid, 0, 6, 1, 4, 7, 1) for tid in range(1, count + 1)))
    answers = []
    for _ in range(count):
        header = await asyncio.wait_for(reader.readexactly(7), 10)
        tid, _, length, _ = struct.unpack(">HHHB", header)
        answers.append((tid, await reader.readexactly(length - 1)))
    busy = [pdu == bytes((0x84, 0x0A)) for _, pdu in answers]
    assert busy.index(False) == 1  # one busy answer, then the first reply
    ok = [pdu for _, pdu in answers if pdu[0] == 4]
    assert len(ok) + sum(busy) == count and all(pdu == bytes((4, 2, 0, 1)) for pdu in ok)
    assert sorted(tid for tid, _ in answers) == list(range(1, count + 1))
    refused = lab.audit_events(event="decision", code=0x0A)
    assert refused and all(e["outcome"].startswith("upstream queue full: ") for e in refused)
