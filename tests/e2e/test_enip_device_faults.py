"""When the EtherNet/IP device misbehaves: pycomm3 through agent -> gateway -> ``ztgate sim enip`` with a
fault set in the simulator (a garbled or cut-short reply, no reply, the connection closed). Each row of
the "when the device misbehaves" table in docs/enip.md: what the client sees, what is audited, and that
the next request after the device recovers is served again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import pytest
from pycomm3 import LogixDriver

from gateway.lab.sim.enip import EnipSim
from gateway.lab.sim.enip_server import Fault
from tests.e2e.harness import ALICE, Lab, enip_policy_text

T = TypeVar("T")

RULES = """
[[rules]]
id = "operators-read"
subjects = ["group:operators"]
assets = ["plc-2"]
enip = [{ preset = "read-only" }]
"""


@pytest.fixture(autouse=True)
def quiet_clients(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="pycomm3")


@pytest.fixture
async def plc() -> AsyncIterator[EnipSim]:
    async with EnipSim(static=True) as running:
        yield running


async def in_thread(function: Callable[[], T]) -> T:
    async with asyncio.timeout(60):
        return await asyncio.to_thread(function)


@pytest.mark.parametrize(
    ("fault", "status_text", "status", "outcome"),
    [
        (Fault.GARBLED, "Invalid reply received", 0x22, "malformed reply: "),
        (Fault.SHORT, "Invalid reply received", 0x22, "malformed reply: "),
        (Fault.SILENT, "Connection failure", 0x01, "device did not answer in time"),
        (Fault.CLOSE, "Connection failure", 0x01, "upstream connection closed"),
    ],
    ids=lambda value: str(value) if isinstance(value, Fault) else None,
)
async def test_a_misbehaving_device_gives_the_client_a_cip_status_and_the_audit_the_cause(
    lab: Lab, plc: EnipSim, fault: Fault, status_text: str, status: int, outcome: str
) -> None:
    # A short response timeout keeps the silent device's case quick; the others do not wait for it.
    extra = "response_timeout_s = 0.5"
    await lab.start_gateway(enip_policy_text(plc.port, RULES, asset_extra=extra))
    port = await lab.start_agent("alice", "plc-2", "enip")
    driver = LogixDriver(f"127.0.0.1:{port}")
    await in_thread(driver.open)
    try:
        assert (await in_thread(lambda: driver.read("Setpoint"))).value == 1000
        plc.server.fault = fault
        failed = await in_thread(lambda: driver.read("Setpoint"))
        assert failed.value is None and status_text in str(failed.error)
        plc.server.fault = None
        for _ in range(200):  # the gateway reopens its link (bounded backoff); the client stays connected
            again = await in_thread(lambda: driver.read("Setpoint"))
            if again.error is None:
                break
            await asyncio.sleep(0.05)
        assert again.value == 1000
    finally:
        await in_thread(driver.close)
    decisions = lab.audit_events(event="decision", identity=ALICE, service="read_tag", tag="Setpoint")
    failures = [e for e in decisions if e.get("code")]
    assert len(failures) == 1 and failures[0]["code"] == status
    assert failures[0]["outcome"].startswith(outcome), failures[0]["outcome"]
    if status == 0x22:
        assert lab.audit_events(event="upstream", state="malformed_reply")
