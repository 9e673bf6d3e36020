"""EtherNet/IP through the gateway to cpppo's simulator, an independently written server: pycomm3 and
pylogix clients, a device that dies and comes back, and a client sending garbage."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from pycomm3 import LogixDriver
from pycomm3.cip.data_types import Array, DataTypes
from pylogix import PLC  # type: ignore[import-untyped]

from tests.e2e.harness import Lab, enip_policy_text, in_thread
from tests.peers.cpppo_server import TAGS, CpppoProcess

RULES = """
[[rules]]
id = "operators"
subjects = ["group:operators"]
assets = ["plc-2"]
enip = [
  { preset = "read-only" },
  { service = "write_tag", tag = ["SCADA[0..49]", "Count"], value = "-1000..1000" },
]
"""


@pytest.fixture(autouse=True)
def quiet_clients(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="pycomm3")


def _atomic(name: str, type_name: str, dimensions: int = 0) -> dict[str, Any]:
    """A tag definition as pycomm3's tag upload would have made it: cpppo has no tag list to upload."""
    type_class = DataTypes.get(type_name)
    if dimensions:
        type_class = Array(length_=dimensions, element_type_=type_class)
    return {
        "tag_name": name, "dim": 1 if dimensions else 0, "dimensions": [dimensions, 0, 0], "alias": False,
        "instance_id": 0, "external_access": "Read/Write", "data_type": type_name,
        "data_type_name": type_name, "tag_type": "atomic", "type_class": type_class,
    }  # fmt: skip


def logix(port: int) -> LogixDriver:
    driver = LogixDriver(f"127.0.0.1:{port}", init_tags=False, init_program_tags=False)
    driver._tags = {
        "SCADA": _atomic("SCADA", "INT", 100),
        "Temp": _atomic("Temp", "REAL"),
        "Count": _atomic("Count", "DINT"),
    }
    return driver


async def _lab(lab: Lab, cpppo: CpppoProcess) -> int:
    # pycomm3 reads the controller name (class 0x64) in one reply of ~1,500 bytes from cpppo: more than a
    # 500-byte connection carries, so the gateway's own connection is a Large Forward Open, as pycomm3's.
    extra = "large_forward_open = true\nconnection_size = 4000"
    await lab.start_gateway(enip_policy_text(cpppo.port, RULES, asset_extra=extra))
    return await lab.start_agent("alice", "plc-2", "enip")


async def test_pycomm3_through_the_gateway_to_cpppo(lab: Lab, cpppo: CpppoProcess) -> None:
    port = await _lab(lab, cpppo)

    def run() -> dict[str, Any]:
        with logix(port) as driver:
            out: dict[str, Any] = {}
            out["write"] = [t.error for t in driver.write(("SCADA[5]", 42), ("Count", -7))]
            out["single"] = driver.write("SCADA[6]", 43).error
            out["read"] = [(t.tag, t.value) for t in driver.read("SCADA[5]", "SCADA[6]", "Count")]
            out["array"] = driver.read("SCADA[4]{4}").value
            out["refused"] = driver.write("SCADA[60]", 1).error
            out["bounds"] = driver.write("Count", 5000).error
            return out

    out = await in_thread(run)
    assert out["write"] == [None, None] and out["single"] is None
    assert out["read"] == [("SCADA[5]", 42), ("SCADA[6]", 43), ("Count", -7)]
    assert out["array"] == [0, 42, 43, 0]
    assert "Permission denied" in str(out["refused"]) and "Permission denied" in str(out["bounds"])


async def test_pylogix_through_the_gateway_to_cpppo(lab: Lab, cpppo: CpppoProcess) -> None:
    port = await _lab(lab, cpppo)

    def run() -> tuple[Any, ...]:
        with PLC("127.0.0.1", port=port) as comm:
            write = comm.Write("SCADA[10]", 11).Status
            array = comm.Read("SCADA[9]", 3).Value
            temp = comm.Read("Temp").Status
            refused = comm.Write("Temp", 1.5).Status
            return write, array, temp, refused

    write, array, temp, refused = await in_thread(run)
    assert write == "Success" and array == [0, 11, 0] and temp == "Success"
    assert refused != "Success"


async def test_device_killed_and_restarted_mid_session(lab: Lab, cpppo: CpppoProcess) -> None:
    port = await _lab(lab, cpppo)
    driver = logix(port)
    await in_thread(driver.open)
    try:
        assert (await in_thread(lambda: driver.read("Count"))).error is None
        await cpppo.kill()
        failed = await in_thread(lambda: driver.read("Count"))
        # CIP general status 0x01 (connection failure), not a hang: pycomm3's text for it.
        assert failed.value is None and "Connection failure" in str(failed.error)
        await cpppo.start()
        for _ in range(200):  # the gateway reconnects with a bounded backoff; the client stays connected
            result = await in_thread(lambda: driver.read("Count"))
            if result.error is None:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("no recovery within 10 s")
        assert result.value == 0
    finally:
        await in_thread(driver.close)
    assert len(lab.audit_events(event="session_start")) == 1
    states = [e["state"] for e in lab.audit_events(event="upstream")]
    assert "disconnected" in states and states[-1] == "connected"


async def test_garbage_closes_that_session_only(lab: Lab, cpppo: CpppoProcess) -> None:
    port = await _lab(lab, cpppo)
    driver = logix(port)  # a session that is already open when the garbage comes, and stays so
    await in_thread(driver.open)
    try:
        assert (await in_thread(lambda: driver.read("Count"))).error is None
        reader, writer = await lab.raw_connection("alice", "plc-2")
        # An encapsulation header announcing 60,000 bytes of data: over the cap, the framing is lost.
        writer.write(bytes.fromhex("6f00 60ea 00000000 00000000 0000000000000000 00000000"))
        assert await asyncio.wait_for(reader.read(), 5) == b""
        event = await lab.wait_for_event(event="protocol_error", protocol="enip")
        assert "exceeds the cap" in event["reason"]
        after = await in_thread(lambda: driver.read("Count"))
        assert after.error is None and after.value == 0
    finally:
        await in_thread(driver.close)

    def run() -> Any:
        with PLC("127.0.0.1", port=port) as comm:
            return comm.Read("Count").Status

    assert await in_thread(run) == "Success"


async def test_pycomm3_defaults_fall_back_to_the_connection_size_the_gateway_carries(lab: Lab) -> None:
    # pycomm3 asks for a 4,000-byte Large Forward Open; the asset's own connection to the device is 500
    # bytes. A device refuses what it cannot carry with 0x01/0x0109 and the size it can:
    # so does the gateway, pycomm3 falls back to a 500-byte Forward Open, and reads 2,400 bytes in
    # fragments. Granting the 4,000 bytes made pycomm3 send one Read Tag that the device answered with
    # a partial transfer (0x06), an error to pycomm3.
    server = CpppoProcess((*TAGS, "Big=DINT[600]"))
    await server.start()
    try:
        await lab.start_gateway(enip_policy_text(server.port, RULES, asset_extra="connection_size = 500"))
        port = await lab.start_agent("alice", "plc-2", "enip")

        def run() -> Any:
            driver = logix(port)
            driver._tags["Big"] = _atomic("Big", "DINT", 600)
            with driver:
                return driver.read("Big{600}"), driver.connection_size

        result, size = await in_thread(run)
    finally:
        await server.stop()
    assert result.error is None and result.value == [0] * 600
    assert size == 500
    large, small = (
        lab.audit_events(event="decision", service=s) for s in ("large_forward_open", "forward_open")
    )
    assert [(e["code"], e["outcome"]) for e in large] == [
        (1, "refused by the gateway: connection size 4000 bytes above the 500 the device connection carries")
    ]
    assert [e["outcome"] for e in small] == ["ok"]
