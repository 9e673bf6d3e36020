"""``ztgate sim enip`` with real, independently written clients over loopback: pycomm3's LogixDriver with
its default start-up (no ``init_tags=False``), pycomm3's CIPDriver generic messages, and pylogix.

The clients are blocking, so each runs in a thread while the simulator serves on the test's loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pytest
from pycomm3 import CIPDriver, LogixDriver, Services
from pycomm3.custom_types import ModuleIdentityObject
from pylogix import PLC  # type: ignore[import-untyped]

from gateway.lab.sim.enip import EnipSim
from protocols.enip.spec import ClassCode, Service

T = TypeVar("T")

CONTROLLER_TAGS = {
    "Tank1_Level": "REAL",
    "Tank1_Temp": "REAL",
    "Tank1_Pressure": "REAL",
    "Flow": "REAL",
    "Pump_Running": "BOOL",
    "Inlet_Open": "BOOL",
    "Drain_Open": "BOOL",
    "Heartbeat": "BOOL",
    "Counter": "DINT",
    "Line1_Speed": "INT",
    "Alarms": "DINT",
    "Status_Word": "UINT",
    "Valve_Pos": "USINT",
    "Pump_Runtime": "UDINT",
    "Energy_Wh": "ULINT",
    "Total_Flow": "LREAL",
    "Trend": "REAL",
    "Pump_Run": "BOOL",
    "Inlet_Cmd": "BOOL",
    "Drain_Cmd": "BOOL",
    "Setpoint": "DINT",
    "Recipe": "DINT",
    "Zone_Temps": "REAL",
    "Batch_ID": "LINT",
    "Mode": "SINT",
}
PROGRAM_TAGS = {"Program:Main.Step": "DINT", "Program:Main.Fill_Count": "DINT", "Program:Main.Enable": "BOOL"}
RECIPE = [100 * (i + 1) for i in range(10)]


@pytest.fixture(autouse=True)
def quiet_clients(caplog: pytest.LogCaptureFixture) -> None:
    # pycomm3 logs refused requests with tracebacks; the tests assert on the results instead.
    caplog.set_level(logging.CRITICAL, logger="pycomm3")


@pytest.fixture
async def sim() -> AsyncIterator[EnipSim]:
    async with EnipSim(static=True) as running:
        yield running


async def in_thread(function: Callable[[], T]) -> T:
    async with asyncio.timeout(30):
        return await asyncio.to_thread(function)


def logix(sim: EnipSim, **options: Any) -> LogixDriver:
    return LogixDriver(f"127.0.0.1:{sim.port}", **options)


# --------------------------------------------------------------------------------------------- pycomm3


async def test_pycomm3_default_startup_lists_identity_and_tags(sim: EnipSim) -> None:
    def run() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        with logix(sim) as plc:
            return dict(plc.info), dict(plc.tags)

    info, tags = await in_thread(run)
    assert info["revision"] == {"major": 20, "minor": 11}
    assert info["vendor"] == "Rockwell Automation/Allen-Bradley"
    assert info["product_type"] == "Programmable Logic Controller"
    assert info["product_name"] == "1756-L71/B ztgate sim"
    assert info["keyswitch"] == "REMOTE RUN"
    assert info["name"] == "ZTGATE_SIM"
    assert info["programs"] == {
        "Main": {"instance_id": info["programs"]["Main"]["instance_id"], "routines": ["MainRoutine"]}
    }
    assert list(info["tasks"]) == ["MainTask"]
    assert {name: tag["data_type"] for name, tag in tags.items()} == CONTROLLER_TAGS | PROGRAM_TAGS
    assert tags["Recipe"]["dimensions"] == [10, 0, 0] and tags["Recipe"]["dim"] == 1
    assert tags["Zone_Temps"]["dimensions"] == [2, 3, 0] and tags["Zone_Temps"]["dim"] == 2
    assert tags["Trend"]["dimensions"] == [200, 0, 0]
    assert all(not tag["alias"] and tag["external_access"] == "Read/Write" for tag in tags.values())
    # The start-up as the simulator saw it: identity unconnected through Unconnected Send to 1/0, a Large
    # Forward Open, the program name and the tag lists (controller, then program Main), connected.
    names = [(r.name, r.within, r.connected) for r in sim.received]
    assert names == [
        ("get_attributes_all", (Service.UNCONNECTED_SEND,), False),
        ("unconnected_send", (), False),
        ("large_forward_open", (), False),
        ("get_attributes_all", (), True),
        ("get_instance_attribute_list", (), True),
        ("get_instance_attribute_list", (), True),
        ("forward_close", (), False),
    ]
    listing = [r for r in sim.received if r.name == "get_instance_attribute_list"]
    # Attributes 1 name, 2 type, 3 address, 5 object address, 6 software control, 8 dimensions, 10 access.
    assert all(r.data == bytes.fromhex("0700 0100 0200 0300 0500 0600 0800 0a00") for r in listing)


async def test_pycomm3_reads_single_tags_arrays_and_program_tags(sim: EnipSim) -> None:
    def run() -> list[Any]:
        with logix(sim) as plc:
            return [
                plc.read("Tank1_Level"),
                plc.read("Recipe{10}"),
                plc.read("Recipe[3]"),
                plc.read("Zone_Temps[1,2]"),
                plc.read("Program:Main.Step"),
                plc.read("Pump_Run"),
                plc.read("Batch_ID"),
                plc.read("Energy_Wh"),
                plc.read("Trend{200}"),
            ]

    level, recipe, element, zone, step, pump, batch, energy, trend = await in_thread(run)
    assert (level.value, level.type, level.error) == (50.0, "REAL", None)
    assert (recipe.value, recipe.type) == (RECIPE, "DINT[10]")
    assert element.value == 400
    assert zone.value == 22.5
    assert (step.value, step.type) == (10, "DINT")
    assert pump.value is True
    assert batch.value == 202600000001
    assert energy.value == 0
    assert trend.value[0] == 50.0 and len(trend.value) == 200


async def test_pycomm3_multi_tag_reads_and_writes_use_multiple_service_packets(sim: EnipSim) -> None:
    def run() -> tuple[list[Any], list[Any], list[Any]]:
        with logix(sim) as plc:
            before = plc.read("Setpoint", "Recipe[2]", "Mode", "Program:Main.Enable", "Zone_Temps[0,1]")
            written = plc.write(
                ("Setpoint", 1250),
                ("Recipe[2]", -5),
                ("Mode", 3),
                ("Program:Main.Enable", False),
                ("Zone_Temps[0,1]", 19.75),
            )
            after = plc.read("Setpoint", "Recipe[2]", "Mode", "Program:Main.Enable", "Zone_Temps[0,1]")
            return before, written, after

    before, written, after = await in_thread(run)
    assert [t.value for t in before] == [1000, 300, 2, True, 20.5]
    assert all(t.error is None for t in written)
    assert [t.value for t in after] == [1250, -5, 3, False, 19.75]
    assert (
        sim.tag("Setpoint") == 1250 and sim.tag("Recipe[2]") == -5 and sim.tag("Program:Main.Enable") is False
    )
    packets = [r for r in sim.received if r.name == "multiple_service_packet"]
    assert len(packets) == 3 and all(r.general_status == 0 for r in packets)
    writes = sim.writes()
    assert [w.tag for w in writes] == [
        "Setpoint",
        "Recipe[2]",
        "Mode",
        "Program:Main.Enable",
        "Zone_Temps[0,1]",
    ]
    assert all(w.within == (Service.MULTIPLE_SERVICE_PACKET,) for w in writes)


async def test_pycomm3_single_write_and_bit_write(sim: EnipSim) -> None:
    """pycomm3 1.2.16 sends a single-tag Write Tag with its sequence count and the whole request again
    after the value, and a Read-Modify-Write with an 8-byte AND mask; the simulator, like a controller,
    carries them out and ignores the extra bytes (and logs how many there were)."""

    def run() -> list[Any]:
        with logix(sim) as plc:
            return [
                plc.write("Setpoint", 1300),
                plc.read("Setpoint"),
                plc.write("Alarms.3", True),
                plc.write("Alarms.0", True),
                plc.write("Alarms.3", False),
                plc.read("Alarms"),
                plc.write("Recipe{10}", list(range(10))),
                plc.read("Recipe{10}"),
            ]

    wrote, read, *bits, alarms, array, recipe = await in_thread(run)
    assert wrote.error is None and read.value == 1300
    assert all(bit.error is None for bit in bits) and alarms.value == 0b1
    assert array.error is None and recipe.value == list(range(10))
    single, *rmw, whole = sim.writes()
    assert (single.name, single.tag, single.ignored_bytes) == ("write_tag", "Setpoint", 2 + 20)
    assert [(w.name, w.tag, w.ignored_bytes) for w in rmw] == [("read_modify_write", "Alarms", 4)] * 3
    # The sequence count, then the request once more: service, path size, path, type, count, values.
    assert whole.ignored_bytes == 2 + (2 + 8 + 4 + 40)


async def test_pycomm3_symbol_instance_addressing_from_revision_21() -> None:
    async with EnipSim(static=True, revision="32.11") as sim:

        def run() -> tuple[Any, ...]:
            with logix(sim) as plc:
                written = plc.write(("Setpoint", 42), ("Recipe[9]", 9))
                return plc.read("Setpoint", "Recipe[9]", "Program:Main.Step"), written

        (setpoint, recipe, step), written = await in_thread(run)
    assert (setpoint.value, recipe.value, step.value) == (42, 9, 10)
    assert all(w.error is None for w in written)
    tag_requests = [r for r in sim.received if r.name in ("read_tag", "write_tag")]
    # Controller tags by class 0x6B + instance (logged with their names); program tags by name.
    by_instance = {r.tag: r.instance_id for r in tag_requests}
    assert by_instance["Setpoint"] is not None and by_instance["Recipe[9]"] is not None
    assert by_instance["Program:Main.Step"] is None


async def test_pycomm3_falls_back_to_a_standard_forward_open_before_revision_20() -> None:
    async with EnipSim(static=True, revision="19.15") as sim:

        def run() -> tuple[Any, ...]:
            with logix(sim) as plc:
                size = plc.connection_size
                written = plc.write("Trend{200}", [float(i) / 4 for i in range(200)])
                return size, written, plc.read("Trend{200}")

        size, written, trend = await in_thread(run)
    assert size == 500
    assert written.error is None and trend.value == [float(i) / 4 for i in range(200)]
    statuses = [(r.name, r.general_status) for r in sim.received if "forward_open" in (r.name or "")]
    assert statuses == [("large_forward_open", 0x08), ("forward_open", 0)]
    names = {r.name for r in sim.received}
    assert {"read_tag_fragmented", "write_tag_fragmented"} <= names


async def test_cipdriver_generic_messages_on_identity(sim: EnipSim) -> None:
    def run() -> list[Any]:
        with CIPDriver(f"127.0.0.1:{sim.port}") as driver:
            common = {"class_code": ClassCode.IDENTITY, "instance": 1}
            return [
                driver.generic_message(
                    service=Services.get_attributes_all,
                    connected=False,
                    data_type=ModuleIdentityObject,
                    **common,
                ),
                driver.generic_message(
                    service=Services.get_attributes_all,
                    connected=True,
                    data_type=ModuleIdentityObject,
                    **common,
                ),
                driver.generic_message(
                    service=Services.get_attribute_single,
                    attribute=1,
                    connected=False,
                    unconnected_send=True,
                    route_path="1/0",
                    **common,
                ),
                driver.generic_message(service=Services.reset, connected=False, **common),
            ]

    unconnected, connected, vendor, reset = await in_thread(run)
    for identity in (unconnected, connected):
        assert identity.error is None
        assert identity.value["revision"] == {"major": 20, "minor": 11}
        assert identity.value["serial"] == "5a7e0001"
    assert vendor.value == b"\x01\x00"
    assert reset.error is None
    assert sim.resets == 1
    gaa = [r.connected for r in sim.received if r.name == "get_attributes_all"]
    assert gaa == [False, True]


# --------------------------------------------------------------------------------------------- pylogix


async def test_pylogix_reads_writes_and_arrays(sim: EnipSim) -> None:
    def run() -> list[Any]:
        with PLC("127.0.0.1", port=sim.port) as comm:
            return [
                comm.Read("Tank1_Level"),
                comm.Read("Recipe[2]", 5),
                comm.Read("Program:Main.Step"),
                comm.Write("Setpoint", 1500),
                comm.Read("Setpoint"),
                comm.Read(["Tank1_Temp", "Recipe[1]", "Counter", "Nope"]),
                comm.Write([("Recipe[6]", 9), ("Mode", -4)]),
                comm.Write("Recipe[7]", [1, 2, 3]),
                comm.Read("Recipe", 10),
                comm.Write("Alarms.5", True),
                comm.Read("Alarms"),
            ]

    (
        level,
        part,
        step,
        wrote,
        setpoint,
        multi,
        multi_write,
        array_write,
        recipe,
        bit,
        alarms,
    ) = await in_thread(run)
    assert (level.Value, level.Status) == (50.0, "Success")
    assert part.Value == RECIPE[2:7]
    assert step.Value == 10
    assert wrote.Status == "Success" and setpoint.Value == 1500
    assert [(r.Value, r.Status) for r in multi] == [
        (21.5, "Success"),
        (200, "Success"),
        (0, "Success"),
        (None, "Path segment error"),
    ]
    assert [r.Status for r in multi_write] == ["Success", "Success"]
    assert array_write.Status == "Success"
    assert recipe.Value == [100, 200, 300, 400, 500, 600, 9, 1, 2, 3]
    assert bit.Status == "Success" and alarms.Value == 1 << 5
    assert sim.tag("Mode") == -4


async def test_pylogix_tag_lists(sim: EnipSim) -> None:
    def run() -> tuple[Any, Any, Any]:
        with PLC("127.0.0.1", port=sim.port) as comm:
            return comm.GetTagList(), comm.GetProgramTagList("Program:Main"), comm.GetProgramsList()

    everything, program, programs = await in_thread(run)
    assert everything.Status == "Success"
    listed = {t.TagName: (t.DataType, t.Array, t.Size) for t in everything.Value}
    assert listed.pop("Program:Main") == ("", 0, 0)
    assert set(listed) == set(CONTROLLER_TAGS) | set(PROGRAM_TAGS)
    assert listed["Recipe"] == ("DINT", 1, 10)
    assert listed["Trend"] == ("REAL", 1, 200)
    assert listed["Program:Main.Step"] == ("DINT", 0, 0)
    assert {t.TagName for t in program.Value} == set(PROGRAM_TAGS)
    assert programs.Value == ["Program:Main"]


async def test_pylogix_small_connection_fragments_reads_and_writes(sim: EnipSim) -> None:
    def run() -> tuple[Any, Any, Any]:
        with PLC("127.0.0.1", port=sim.port) as comm:
            comm.ConnectionSize = 504
            written = comm.Write("Trend", [float(i) for i in range(200)])
            return written, comm.Read("Trend", 200), comm.Read("Trend[198]", 2)

    written, trend, tail = await in_thread(run)
    assert written.Status == "Success"
    assert trend.Value == [float(i) for i in range(200)]
    assert tail.Value == [198.0, 199.0]
    reads = [(r.name, r.general_status) for r in sim.received if r.name and r.name.startswith("read_tag")]
    # Read Tag answers what fits with 0x06; pylogix fetches the rest with Read Tag Fragmented.
    assert ("read_tag", 0x06) in reads and ("read_tag_fragmented", 0) in reads
    assert [r.name for r in sim.received if r.name == "forward_open"] == ["forward_open"]


async def test_clock_and_module_properties(sim: EnipSim) -> None:
    def run() -> tuple[Any, ...]:
        with logix(sim) as plc:
            plc.set_plc_time(1_900_000_000_000_000)
            pycomm3_time, module = plc.get_plc_time(), plc.get_module_info(0)
        with PLC("127.0.0.1", port=sim.port) as comm:
            return (
                pycomm3_time,
                module,
                comm.GetPLCTime(raw=True),
                comm.GetDeviceProperties(),
                comm.GetModuleProperties(2),
            )

    pycomm3_time, module, clock, device, slot_2 = await in_thread(run)
    assert 1_900_000_000_000_000 <= pycomm3_time.value["microseconds"] < 1_900_000_060_000_000
    assert module["product_name"] == "1756-L71/B ztgate sim"
    # pylogix reads the clock pycomm3 set (the controller keeps the offset to its host's clock).
    assert clock.Status == "Success" and 1_900_000_000_000_000 <= clock.Value < 1_900_000_060_000_000
    assert device.Value.Revision == "20.11" and device.Value.ProductName == "1756-L71/B ztgate sim"
    assert slot_2.Status == "Connection failure"  # nothing in slot 2: the controller is the whole rack


# ---------------------------------------------------------------------------------- values over time


async def test_values_change_over_time() -> None:
    async with EnipSim(interval_s=0.02) as sim:
        comm = PLC("127.0.0.1", port=sim.port)
        try:
            first = await in_thread(lambda: comm.Read(["Counter", "Tank1_Level", "Heartbeat"]))
            await sim.wait_scans(3)
            later = await in_thread(lambda: comm.Read(["Counter", "Tank1_Level", "Setpoint"]))
            wrote = await in_thread(lambda: comm.Write("Setpoint", 1400))
            await sim.wait_scans(3)
            last = await in_thread(lambda: comm.Read(["Setpoint", "Tank1_Pressure"]))
        finally:
            await in_thread(comm.Close)
    counter, level, _ = (r.Value for r in first)
    assert later[0].Value >= counter + 3
    assert later[1].Value != level  # the tank fills 1.2 % and drains 0.8 % per scan
    assert wrote.Status == "Success"
    setpoint, pressure = (r.Value for r in last)
    assert setpoint == 1400  # a client's write survives the scans...
    assert pressure > 1000  # ...and the plant follows it
