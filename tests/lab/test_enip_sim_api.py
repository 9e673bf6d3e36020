"""``ztgate sim enip``: its library API (tag access, plant scans, validation) and its command line."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from pylogix import PLC  # type: ignore[import-untyped]

import gateway.cli
from gateway.lab.sim import main as sim_main
from gateway.lab.sim.enip import EnipSim, parse_revision, start_enip_sim
from gateway.lab.sim.plant import Commands, Plant

REPO_ROOT = Path(__file__).resolve().parents[2]

# The documented scan-0 values (module docstring of gateway.lab.sim.enip).
INITIAL: dict[str, Any] = {
    "Tank1_Level": 50.0,
    "Tank1_Temp": 21.5,
    "Tank1_Pressure": 1000.0,
    "Flow": 48.0,
    "Pump_Running": True,
    "Inlet_Open": True,
    "Drain_Open": False,
    "Heartbeat": False,
    "Counter": 0,
    "Line1_Speed": 1450,
    "Alarms": 0,
    "Status_Word": 0b00011,
    "Valve_Pos": 100,
    "Pump_Runtime": 0,
    "Energy_Wh": 0,
    "Total_Flow": 0.0,
    "Trend[0]": 50.0,
    "Trend[1]": 0.0,
    "Pump_Run": True,
    "Inlet_Cmd": True,
    "Drain_Cmd": False,
    "Setpoint": 1000,
    "Recipe": [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000],
    "Zone_Temps": [20.0, 20.5, 21.0, 21.5, 22.0, 22.5],
    "Zone_Temps[1,0]": 21.5,
    "Batch_ID": 202600000001,
    "Mode": 2,
    "Program:Main.Step": 10,
    "Program:Main.Fill_Count": 0,
    "Program:Main.Enable": True,
}


def test_initial_values_are_the_documented_ones() -> None:
    sim = EnipSim(static=True)
    assert {name: sim.tag(name) for name in INITIAL} == INITIAL
    assert sim.tag("recipe[4]") == 500  # Logix tag names ignore case
    assert sim.tag("PROGRAM:main.step") == 10


def test_scans_follow_the_plant_and_the_command_tags() -> None:
    sim = EnipSim(static=True)
    reference = Plant()
    sim.set_tag("Setpoint", 1300)
    total_flow, runtime, fills, inlet_was_open = 0.0, 0, 0, True
    for _ in range(300):
        sim.step()
        reference.scan(Commands(True, True, False, 1300))
        total_flow += reference.flow / 10
        runtime += reference.pump_running
        fills += reference.inlet_open and not inlet_was_open
        inlet_was_open = reference.inlet_open
        assert sim.tag("Tank1_Level") == pytest.approx(reference.level / 10)
        assert sim.tag("Tank1_Pressure") == reference.pressure_reading
        assert sim.tag("Trend")[reference.scans % 200] == pytest.approx(reference.level / 10)  # type: ignore[index]
    assert sim.scans == 300 and sim.tag("Counter") == 300
    assert sim.tag("Heartbeat") is False
    assert sim.tag("Pump_Runtime") == runtime and sim.tag("Energy_Wh") == 15 * runtime
    assert sim.tag("Total_Flow") == pytest.approx(total_flow)
    assert fills > 0 and sim.tag("Program:Main.Fill_Count") == fills
    # The pump commanded off and the drain open: the plant follows, and nothing a client owns is
    # rewritten by the scans.
    sim.set_tag("Pump_Run", False)
    sim.set_tag("Drain_Cmd", True)
    sim.set_tag("Recipe[3]", -7)
    sim.step(2)
    assert (sim.tag("Pump_Running"), sim.tag("Line1_Speed"), sim.tag("Flow")) == (False, 0, 0.0)
    assert sim.tag("Drain_Open") is True and sim.tag("Status_Word") & 0b101 == 0b100
    assert sim.tag("Recipe[3]") == -7 and sim.tag("Setpoint") == 1300 and sim.tag("Pump_Run") is False


def test_tag_access_errors() -> None:
    sim = EnipSim(static=True)
    for name in (
        "Nope",
        "Program:Nope.Step",
        "Program:Main",
        "Program:Main.Nope",
        "Recipe[",
        "Task:MainTask",
    ):
        with pytest.raises(KeyError):
            sim.tag(name)
    for name in ("Recipe[10]", "Zone_Temps[2,0]", "Zone_Temps[1]", "Setpoint[0]"):
        with pytest.raises(IndexError):
            sim.tag(name)
    with pytest.raises(IndexError):
        sim.set_tag("Recipe[9]", [1, 2])
    bad_values: list[tuple[str, Any]] = [
        ("Mode", 128),  # SINT
        ("Valve_Pos", -1),  # USINT
        ("Pump_Run", 2),
        ("Setpoint", 1.5),
        ("Tank1_Level", "high"),
        ("Tank1_Level", 1e40),  # beyond a REAL
        ("Recipe", [1, 2, 3]),  # the whole array takes 10 values
    ]
    for name, value in bad_values:
        with pytest.raises(ValueError):
            sim.set_tag(name, value)
    sim.set_tag("Recipe[8]", [-1, -2])
    sim.set_tag("Zone_Temps[0,2]", 3)  # an int is a fine REAL
    sim.set_tag("Batch_ID", -(2**63))
    assert sim.tag("Recipe")[7:] == [800, -1, -2]  # type: ignore[index]
    assert sim.tag("Zone_Temps[0,2]") == 3.0 and sim.tag("Batch_ID") == -(2**63)


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        EnipSim(interval_s=0)
    for revision in ("20", "x.1", "20.1.1"):
        with pytest.raises(ValueError, match=r"MAJOR\.MINOR"):
            EnipSim(revision=revision)
    with pytest.raises(ValueError, match="major 1-127"):
        EnipSim(revision=(200, 1))
    assert parse_revision("33.011") == (33, 11)


async def test_start_and_stop() -> None:
    sim = await start_enip_sim(static=True, revision=(21, 3))
    try:
        assert sim.host == "127.0.0.1" and sim.port > 0
        with pytest.raises(RuntimeError):
            await sim.start()
        assert sim.identity.revision == (21, 3)
    finally:
        await sim.stop()
    await sim.stop()  # a second stop does nothing
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", sim.port)) != 0


# ------------------------------------------------------------------------------------------------ CLI


async def spawn_cli(*args: str) -> asyncio.subprocess.Process:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.lab.sim",
        "enip",
        *args,
        cwd=REPO_ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_cli_prints_where_it_listens_and_stops_on_sigterm() -> None:
    process = await spawn_cli("--listen", "127.0.0.1:0", "--interval-s", "0.02", "--revision", "21.3")
    try:
        assert process.stdout is not None
        async with asyncio.timeout(15):
            line = (await process.stdout.readline()).decode()
        found = re.fullmatch(
            r"ztgate sim enip: listening on 127\.0\.0\.1:(\d+), revision 21\.3 \(scan every 0\.02 s\)\n", line
        )
        assert found, line
        port = int(found.group(1))

        def client() -> tuple[Any, list[int]]:
            with PLC("127.0.0.1", port=port) as comm:
                device = comm.GetDeviceProperties().Value
                counters: list[int] = []
                # The scans run on their own: Counter grows (bounded by the test's timeout, no sleeps).
                while len(set(counters)) < 3:
                    counters.append(comm.Read("Counter").Value)
                return device, counters

        async with asyncio.timeout(15):
            device, counters = await asyncio.to_thread(client)
        assert device.Revision == "21.3"
        assert counters == sorted(counters)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            rest, errors = await process.communicate()
        assert process.returncode == 0
        assert rest == b"" and b"Traceback" not in errors
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_cli_reports_a_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        process = await spawn_cli("--listen", f"127.0.0.1:{taken.getsockname()[1]}", "--static")
        async with asyncio.timeout(15):
            out, errors = await process.communicate()
    assert process.returncode == 1
    assert out == b""
    assert b"cannot listen on 127.0.0.1:" in errors


@pytest.mark.parametrize(
    "argv",
    [
        ["enip", "--listen", "nonsense"],
        ["enip", "--interval-s", "0"],
        ["enip", "--revision", "20"],
        ["enip", "--revision", "0.1"],
    ],
)
def test_cli_rejects_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        sim_main(argv)
    assert exited.value.code == 2


def test_cli_help_shows_the_tag_map(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        gateway.cli.main(["sim", "enip", "--help"])
    text = capsys.readouterr().out
    assert "Setpoint         DINT        mbar       command, initial 1000" in text
    assert "Program:Main.NAME" in text
