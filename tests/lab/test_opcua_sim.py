"""``ztgate sim opcua`` and its library API, checked with asyncua's and python-opcua's clients over
loopback. asyncua's server takes 1-2 s to start, so the static simulator is shared by the module."""

from __future__ import annotations

import asyncio
import math
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import opcua
import pytest
import pytest_asyncio
from asyncua import Client, ua

from gateway.lab.sim.opcua import NAMESPACE_URI, OpcUaSim

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.asyncio(loop_scope="module")

TANK_CHILDREN = [
    "Level",
    "Temperature",
    "Pressure",
    "Flow",
    "ScanCounter",
    "PumpRunning",
    "InletOpen",
    "DrainOpen",
    "AlarmActive",
    "AlarmAcknowledged",
    "Setpoint",
    "DrainCommand",
    "Start",
    "Stop",
    "Acknowledge",
]
# Scan 0, as documented.
INITIAL = {
    "Level": 50.0,
    "Temperature": 21.5,
    "Pressure": 1000.0,
    "Flow": 48.0,
    "ScanCounter": 0,
    "PumpRunning": True,
    "InletOpen": True,
    "DrainOpen": False,
    "AlarmActive": False,
    "AlarmAcknowledged": True,
    "Setpoint": 1000.0,
    "DrainCommand": False,
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim() -> AsyncIterator[OpcUaSim]:
    async with OpcUaSim(static=True) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def client(sim: OpcUaSim) -> AsyncIterator[Client]:
    # Every test starts from scan 0 with the initial commands.
    sim.plant.__init__()  # type: ignore[misc]
    sim.scans = 0
    await sim.set_value("Setpoint", 1000.0)
    await sim.set_value("DrainCommand", False)
    await sim.step(0)
    async with Client(sim.endpoint, timeout=5) as connected:
        await connected.get_node(sim.node_ids["Start"]).get_parent()
        await connected.get_node(sim.node_ids["Tank1"]).call_method(sim.node_ids["Start"])
        await connected.get_node(sim.node_ids["Tank1"]).call_method(sim.node_ids["Acknowledge"])
        yield connected


def double(value: float) -> ua.DataValue:
    return ua.DataValue(ua.Variant(value, ua.VariantType.Double))


async def test_browse_plant_line_tank(sim: OpcUaSim, client: Client) -> None:
    index = await client.get_namespace_index(NAMESPACE_URI)
    assert index == sim.namespace_index
    path = [ua.QualifiedName(name, index) for name in ("Plant", "Line1", "Tank1")]
    plant = await client.nodes.objects.get_child(path[:1])
    assert await plant.read_node_class() == ua.NodeClass.Object
    assert (await plant.read_type_definition()) == ua.NodeId(ua.ObjectIds.FolderType)
    tank = await client.nodes.objects.get_child(path)
    assert tank.nodeid == sim.node_ids["Tank1"] == ua.NodeId("Plant.Line1.Tank1", index)
    children = await tank.get_children()
    names = [(await child.read_browse_name()).Name for child in children]
    assert names == TANK_CHILDREN
    classes = {name: await child.read_node_class() for name, child in zip(names, children, strict=True)}
    assert {name for name, kind in classes.items() if kind == ua.NodeClass.Method} == {
        "Start",
        "Stop",
        "Acknowledge",
    }
    assert all(sim.node_ids[name] == child.nodeid for name, child in zip(names, children, strict=True))


async def test_initial_values(sim: OpcUaSim, client: Client) -> None:
    nodes = [client.get_node(sim.node_ids[name]) for name in INITIAL]
    values = await client.read_values(nodes)
    assert dict(zip(INITIAL, values, strict=True)) == INITIAL
    assert {name: sim.value(name) for name in INITIAL} == INITIAL
    assert sim.endpoint == f"opc.tcp://127.0.0.1:{sim.port}/" and sim.port > 0
    euro = await client.get_node(
        ua.NodeId("Plant.Line1.Tank1.Setpoint.EURange", sim.namespace_index)
    ).read_value()
    assert (euro.Low, euro.High) == (0.0, 2500.0)


async def test_setpoint_write_and_bounds(sim: OpcUaSim, client: Client) -> None:
    setpoint = client.get_node(sim.node_ids["Setpoint"])
    await setpoint.write_value(double(1300.0))
    assert await setpoint.read_value() == 1300.0 == sim.value("Setpoint")
    for bad in (2500.5, -1.0, math.nan, math.inf):
        with pytest.raises(ua.UaStatusCodeError) as refused:
            await setpoint.write_value(double(bad))
        assert refused.value.code == ua.StatusCodes.BadOutOfRange
    with pytest.raises(ua.UaStatusCodeError) as mismatch:
        await setpoint.write_value(ua.DataValue(ua.Variant(1200, ua.VariantType.Int32)))
    assert mismatch.value.code == ua.StatusCodes.BadTypeMismatch
    # One Write, three operations: the out-of-range one fails alone.
    results = await client.uaclient.write_attributes(
        [sim.node_ids["Setpoint"], sim.node_ids["DrainCommand"], sim.node_ids["Setpoint"]],
        [double(9999.0), ua.DataValue(ua.Variant(True, ua.VariantType.Boolean)), double(1250.0)],
        ua.AttributeIds.Value,
    )
    assert [result.value for result in results] == [ua.StatusCodes.BadOutOfRange, 0, 0]
    assert (sim.value("Setpoint"), sim.value("DrainCommand")) == (1250.0, True)
    # Readings are the plant's: a client may not write them.
    with pytest.raises(ua.UaStatusCodeError) as read_only:
        await client.get_node(sim.node_ids["Level"]).write_value(double(10.0))
    assert read_only.value.code == ua.StatusCodes.BadUserAccessDenied


async def test_the_setpoint_drives_the_pressure_and_alarms(sim: OpcUaSim, client: Client) -> None:
    tank = client.get_node(sim.node_ids["Tank1"])
    await client.get_node(sim.node_ids["Setpoint"]).write_value(double(1300.0))
    await sim.step()
    pressure = client.get_node(sim.node_ids["Pressure"])
    assert 1000.0 < await pressure.read_value() < 1250.0  # it lags behind
    alarm, acknowledged = sim.node_ids["AlarmActive"], sim.node_ids["AlarmAcknowledged"]
    assert await client.read_values([client.get_node(alarm), client.get_node(acknowledged)]) == [True, False]
    assert await tank.call_method(sim.node_ids["Acknowledge"]) == 1  # the pressure deviation
    assert await client.get_node(acknowledged).read_value() is True
    assert await tank.call_method(sim.node_ids["Acknowledge"]) == 0
    await sim.step(15)  # a lag of 3/4 per scan, a ripple of 5 mbar; the temperature is still normal
    assert abs(await pressure.read_value() - 1300.0) <= 10
    assert await client.get_node(alarm).read_value() is False


async def test_methods_start_and_stop_the_pump(sim: OpcUaSim, client: Client) -> None:
    tank = client.get_node(sim.node_ids["Tank1"])
    assert await tank.call_method(sim.node_ids["Stop"]) is None
    assert not sim.pump_command
    assert await client.get_node(sim.node_ids["PumpRunning"]).read_value() is True  # until the next scan
    await sim.step()
    running, flow = sim.node_ids["PumpRunning"], sim.node_ids["Flow"]
    assert await client.read_values([client.get_node(running), client.get_node(flow)]) == [False, 0.0]
    assert (
        await client.get_node(sim.node_ids["Level"]).read_value() == 51.2
    )  # the inlet fills, nothing drains
    await tank.call_method(sim.node_ids["Start"])
    await sim.step()
    assert await client.get_node(running).read_value() is True
    with pytest.raises(ua.UaStatusCodeError) as extra:
        await tank.call_method(sim.node_ids["Start"], ua.Variant(1))
    assert extra.value.code == ua.StatusCodes.BadTooManyArguments


async def test_static_mode_changes_nothing_on_its_own(sim: OpcUaSim, client: Client) -> None:
    before = sim.value("ScanCounter")
    with pytest.raises(TimeoutError):
        await sim.wait_scans(1, timeout_s=0.1)
    assert sim.value("ScanCounter") == before == sim.scans


async def test_python_opcua_reads_and_calls(sim: OpcUaSim, client: Client) -> None:
    def session() -> tuple[Any, Any]:
        other = opcua.Client(sim.endpoint, timeout=5)
        other.connect()
        try:
            index = other.get_namespace_index(NAMESPACE_URI)
            tank = other.get_node(opcua.ua.NodeId("Plant.Line1.Tank1", index))
            level = tank.get_child([opcua.ua.QualifiedName("Level", index)]).get_value()
            acknowledged = tank.call_method(opcua.ua.NodeId("Plant.Line1.Tank1.Acknowledge", index))
        finally:
            other.disconnect()
        return level, acknowledged

    assert await asyncio.to_thread(session) == (50.0, 0)


async def test_values_change_and_subscriptions_see_them() -> None:
    async with OpcUaSim(interval_s=0.02) as timed, Client(timed.endpoint, timeout=5) as client:
        counter = client.get_node(timed.node_ids["ScanCounter"])
        first = await counter.read_value()
        await timed.wait_scans(3)
        assert await counter.read_value() >= first + 3
        changes: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        class Handler:
            def datachange_notification(self, node: Any, value: Any, _data: Any) -> None:
                changes.put_nowait((node, value))

        subscription = await client.create_subscription(20, Handler())
        await subscription.subscribe_data_change([client.get_node(timed.node_ids["Level"])])
        seen = []
        async with asyncio.timeout(5):
            while len(seen) < 3:
                seen.append((await changes.get())[1])
        assert len(set(seen)) == 3  # the level moved between notifications
        await subscription.delete()


# ------------------------------------------------------------------------------------------- CLI


async def spawn_cli(*args: str) -> asyncio.subprocess.Process:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.lab.sim",
        "opcua",
        *args,
        cwd=REPO_ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_cli_prints_its_endpoint_and_stops_on_sigterm() -> None:
    process = await spawn_cli("--listen", "127.0.0.1:0", "--interval-s", "0.05")
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            line = (await process.stdout.readline()).decode()
        found = re.fullmatch(
            r"ztgate sim opcua: listening on opc\.tcp://127\.0\.0\.1:(\d+)/, namespace urn:ztgate:sim:plant "
            r"\(scan every 0\.05 s, started in \d+\.\d s\)\n",
            line,
        )
        assert found, line
        async with Client(f"opc.tcp://127.0.0.1:{found.group(1)}/", timeout=5) as client:
            index = await client.get_namespace_index(NAMESPACE_URI)
            counter = client.get_node(ua.NodeId("Plant.Line1.Tank1.ScanCounter", index))
            counts: asyncio.Queue[int] = asyncio.Queue()

            class Handler:
                def datachange_notification(self, _node: Any, value: int, _data: Any) -> None:
                    counts.put_nowait(value)

            subscription = await client.create_subscription(20, Handler())
            await subscription.subscribe_data_change([counter])
            async with asyncio.timeout(5):
                first = await counts.get()
                while await counts.get() < first + 2:
                    pass
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            rest, errors = await process.communicate()
        assert process.returncode == 0
        assert rest == b""
        assert b"Traceback" not in errors and b"WARNING" not in errors, errors
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_cli_reports_a_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        process = await spawn_cli("--listen", f"127.0.0.1:{taken.getsockname()[1]}", "--static")
        async with asyncio.timeout(30):
            out, errors = await process.communicate()
    assert process.returncode == 1
    assert out == b""
    assert errors.decode().startswith("ztgate sim opcua: cannot listen on 127.0.0.1:")
    assert b"Traceback" not in errors


async def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        OpcUaSim(interval_s=0)
