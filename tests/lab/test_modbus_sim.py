"""``ztgate sim modbus`` and its library API, checked with pymodbus's client over loopback."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvloop
from pymodbus.client import AsyncModbusTcpClient

import gateway.cli
from gateway.lab.sim import main as sim_main
from gateway.lab.sim.cli import parse_hostport
from gateway.lab.sim.modbus import ModbusSim, start_modbus_sim
from gateway.lab.sim.plant import Commands, Plant

REPO_ROOT = Path(__file__).resolve().parents[2]

# Documented scan-0 values: IR 0-9, coils 0-15, discrete inputs 0-15.
INITIAL_INPUTS = [500, 215, 1000, 480, 0, 1000, 1450, None, 0b00011, 0]  # None: the unit id
INITIAL_COILS = [True, True] + [False] * 6 + [True, True, False, False, True, False, False, False]
INITIAL_DISCRETE = [False] * 15 + [True]


@pytest.fixture
async def sim() -> AsyncIterator[ModbusSim]:
    async with ModbusSim(units=(1, 17), static=True) as running:
        yield running


@pytest.fixture
async def client(sim: ModbusSim) -> AsyncIterator[AsyncModbusTcpClient]:
    async with AsyncModbusTcpClient(sim.host, port=sim.port, timeout=5, retries=0) as connected:
        yield connected


async def test_reads_return_the_documented_map(sim: ModbusSim, client: AsyncModbusTcpClient) -> None:
    for unit in (1, 17):
        inputs = (await client.read_input_registers(0, count=20, device_id=unit)).registers
        assert inputs == [unit if v is None else v for v in INITIAL_INPUTS] + [0] * 10
        assert (await client.read_input_registers(9999, device_id=unit)).registers == [0]
        holding = list((await client.read_holding_registers(0, count=100, device_id=unit)).registers)
        assert holding[40] == 1000
        assert holding[:40] + holding[41:] == [0] * 99
        assert (await client.read_coils(0, count=32, device_id=unit)).bits == INITIAL_COILS + [False] * 16
        assert (await client.read_discrete_inputs(0, count=16, device_id=unit)).bits == INITIAL_DISCRETE
        # The direct accessors see the same tables.
        assert sim.input_registers(unit, 0, 20) == inputs
        assert sim.holding(unit, 0, 100) == holding
        assert sim.coils(unit, 0, 16) == INITIAL_COILS
        assert sim.discrete_inputs(unit, 0, 16) == INITIAL_DISCRETE


async def test_tables_end_at_9999(sim: ModbusSim, client: AsyncModbusTcpClient) -> None:
    assert not (await client.read_holding_registers(9990, count=10, device_id=1)).isError()
    for reply in (
        await client.read_holding_registers(9999, count=2, device_id=1),
        await client.read_input_registers(10000, device_id=1),
        await client.read_coils(9990, count=11, device_id=1),
        await client.write_register(10000, 1, device_id=1),
    ):
        assert reply.isError() and reply.exception_code == 2
    with pytest.raises(IndexError):
        sim.holding(1, 9999, 2)
    with pytest.raises(IndexError):
        sim.set_coils(1, -1, [True])


async def test_unknown_unit_gets_exception_4(sim: ModbusSim, client: AsyncModbusTcpClient) -> None:
    for unit in (0, 2, 16, 255):
        for reply in (
            await client.read_holding_registers(0, device_id=unit),
            await client.read_coils(0, device_id=unit),
            await client.write_register(40, 5, device_id=unit),
        ):
            assert reply.isError() and reply.exception_code == 4
    assert sim.holding(1, 40) == sim.holding(17, 40) == [1000]
    with pytest.raises(KeyError, match="unit 2 is not served"):
        sim.holding(2, 0)


async def test_setpoint_write_sticks_and_the_pressure_follows(
    sim: ModbusSim, client: AsyncModbusTcpClient
) -> None:
    assert not (await client.write_register(40, 1300, device_id=17)).isError()
    assert sim.holding(17, 40) == [1300]
    sim.step()
    inputs = (await client.read_input_registers(0, count=10, device_id=17)).registers
    assert inputs[5] == 1300  # the active setpoint
    assert 1000 < inputs[2] < 1250  # the pressure lags behind
    assert sim.discrete_inputs(17, 3) == [True]  # pressure deviation alarm
    sim.step(40)
    assert (await client.read_holding_registers(40, device_id=17)).registers == [1300]
    inputs = (await client.read_input_registers(0, count=10, device_id=17)).registers
    assert abs(inputs[2] - 1300) <= 5
    assert sim.discrete_inputs(17, 3) == [False]
    # Unit 1 has its own setpoint and plant.
    assert sim.holding(1, 40) == [1000]
    assert sim.input_registers(1, 5) == [1000]


async def test_client_writes_survive_timed_scans() -> None:
    async with (
        ModbusSim(units=(1,), interval_s=0.01) as sim,
        AsyncModbusTcpClient(sim.host, port=sim.port, timeout=5, retries=0) as client,
    ):
        pattern = [(i * 331 + 7) & 0xFFFF for i in range(100)]
        assert not (await client.write_registers(0, pattern, device_id=1)).isError()
        commands = [False, True, True, True, False, True, False, True]
        assert not (await client.write_coils(0, commands, device_id=1)).isError()
        assert not (await client.write_coils(16, [True] * 16, device_id=1)).isError()
        scans = sim.scans
        await sim.wait_scans(5)
        assert sim.scans >= scans + 5
        assert (await client.read_holding_registers(0, count=100, device_id=1)).registers == pattern
        assert (await client.read_coils(0, count=8, device_id=1)).bits == commands
        assert (await client.read_coils(16, count=16, device_id=1)).bits == [True] * 16
        # The scans did run, and used what the client wrote (HR 40 and the pump command).
        inputs = (await client.read_input_registers(0, count=10, device_id=1)).registers
        assert inputs[5] == pattern[40]
        assert inputs[6] == 0  # pump commanded off


async def test_values_change_over_time() -> None:
    async with (
        ModbusSim(units=(1,), interval_s=0.01) as sim,
        AsyncModbusTcpClient(sim.host, port=sim.port, timeout=5, retries=0) as client,
    ):
        first = (await client.read_input_registers(0, count=10, device_id=1)).registers
        async with asyncio.timeout(5):
            while True:
                now = (await client.read_input_registers(0, count=10, device_id=1)).registers
                if now[4] >= first[4] + 3:
                    break
                await asyncio.sleep(0.01)
        assert now[0] != first[0]  # the level moves
        assert now[1:4] != first[1:4]  # temperature, pressure or flow moves


async def test_static_mode_changes_nothing_on_its_own() -> None:
    async with ModbusSim(units=(1,), static=True, interval_s=0.01) as sim:
        before = sim.input_registers(1, 0, 10), sim.coils(1, 0, 16), sim.discrete_inputs(1, 0, 16)
        await asyncio.sleep(0.2)  # twenty intervals
        assert sim.scans == 0
        assert (sim.input_registers(1, 0, 10), sim.coils(1, 0, 16), sim.discrete_inputs(1, 0, 16)) == before
        with pytest.raises(TimeoutError):
            await sim.wait_scans(1, timeout_s=0.05)


async def test_commands_drive_the_plant(sim: ModbusSim, client: AsyncModbusTcpClient) -> None:
    await client.write_coil(0, False, device_id=1)  # pump off
    await client.write_coil(2, True, device_id=1)  # drain open
    sim.step()
    inputs = sim.input_registers(1, 0, 10)
    assert inputs[0] == 500 + 12 - 10  # inlet fills, drain empties, the pump no longer drains
    assert inputs[3] == inputs[6] == 0  # no flow, no speed
    assert inputs[8] == 0b00110 | 1 << 4  # inlet open, drain open, heartbeat
    assert sim.coils(1, 8, 3) == [False, True, True]
    assert sim.coils(17, 8, 3) == [True, True, False]  # unit 17 is untouched


async def test_program_outputs_are_rewritten_every_scan(sim: ModbusSim, client: AsyncModbusTcpClient) -> None:
    await client.write_coils(8, [False] * 8, device_id=1)
    assert sim.coils(1, 8, 8) == [False] * 8
    sim.step()
    assert sim.coils(1, 8, 8) == [True, True, False, True, False, True, False, False]  # heartbeat, chaser


async def test_accessors_write_what_clients_read(sim: ModbusSim, client: AsyncModbusTcpClient) -> None:
    sim.set_holding(17, 100, [1, 0xFFFF, 3])
    sim.set_coils(17, 29, [True, False, True, True])
    assert (await client.read_holding_registers(100, count=3, device_id=17)).registers == [1, 0xFFFF, 3]
    assert (await client.read_coils(29, count=4, device_id=17)).bits[:4] == [True, False, True, True]
    assert (await client.read_coils(28, count=1, device_id=17)).bits[0] is False
    assert sim.holding(1, 100) == [0]
    with pytest.raises(ValueError):
        sim.set_holding(17, 0, [0x10000])


async def test_port_zero_binds_a_real_port_for_each_sim() -> None:
    first = await start_modbus_sim(units=(1,), static=True)
    second = await start_modbus_sim(units=(3,), static=True)
    try:
        assert first.host == second.host == "127.0.0.1"
        assert 0 < first.port != second.port
        for running, unit in ((first, 1), (second, 3)):
            async with AsyncModbusTcpClient(running.host, port=running.port, timeout=5, retries=0) as client:
                assert (await client.read_input_registers(7, device_id=unit)).registers == [unit]
    finally:
        await first.stop()
        await second.stop()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(first.host, first.port)


def test_runs_on_uvloop() -> None:
    # The gateway runs on uvloop, whose server object is no asyncio.Server; in-process tests may share it.
    async def exercise() -> list[int]:
        async with (
            ModbusSim(units=(5,), static=True) as running,
            AsyncModbusTcpClient(running.host, port=running.port, timeout=5, retries=0) as client,
        ):
            assert running.port > 0
            registers: list[int] = (await client.read_input_registers(0, count=10, device_id=5)).registers
            return registers

    assert uvloop.run(exercise()) == [5 if v is None else v for v in INITIAL_INPUTS]


async def test_invalid_arguments_are_refused() -> None:
    for units in ((), (0,), (256,), (1, 1)):
        with pytest.raises(ValueError):
            ModbusSim(units=units)
    with pytest.raises(ValueError):
        ModbusSim(interval_s=0)


def test_plant_level_saw_tooths_and_the_pump_trips() -> None:
    plant = Plant()
    levels, inlet_states = [], set()
    for _ in range(400):
        plant.scan(Commands(pump_run=True, inlet_open=True, drain_open=False, pressure_setpoint=1000))
        levels.append(plant.level)
        inlet_states.add(plant.inlet_open)
    assert inlet_states == {True, False}
    assert (min(levels[100:]), max(levels)) == (300, 900)
    for _ in range(200):
        plant.scan(Commands(pump_run=True, inlet_open=False, drain_open=False, pressure_setpoint=1000))
    assert not plant.pump_running and plant.level <= 100
    assert plant.alarms.pump_blocked and plant.alarms.level_low and plant.flow == 0


# ------------------------------------------------------------------------------------------- CLI


async def spawn_cli(*args: str) -> asyncio.subprocess.Process:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.lab.sim",
        "modbus",
        *args,
        cwd=REPO_ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_cli_prints_where_it_listens_and_stops_on_sigterm() -> None:
    process = await spawn_cli(
        "--listen", "127.0.0.1:0", "--unit", "1", "--unit", "17", "--interval-s", "0.05"
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        async with asyncio.timeout(15):
            line = (await process.stdout.readline()).decode()
        found = re.fullmatch(
            r"ztgate sim modbus: listening on 127\.0\.0\.1:(\d+), units 1, 17 \(.*\)\n", line
        )
        assert found, line
        port = int(found.group(1))
        async with AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0) as client:
            assert (await client.read_input_registers(7, device_id=17)).registers == [17]
            assert (await client.read_holding_registers(40, device_id=1)).registers == [1000]
            for _ in range(3):
                assert (await client.read_holding_registers(0, device_id=9)).exception_code == 4
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            rest, errors = await process.communicate()
        assert process.returncode == 0
        assert rest == b""
        # One line for the unknown unit, not pymodbus's traceback per request.
        assert errors.decode().count("request for unit 9") == 1
        assert b"Traceback" not in errors
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
        ["modbus", "--listen", "nonsense"],
        ["modbus", "--listen", "::1:502"],
        ["modbus", "--unit", "0"],
        ["modbus", "--unit", "x"],
        ["modbus", "--interval-s", "0"],
        ["bacnet"],  # no such simulator
    ],
)
def test_cli_rejects_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        sim_main(argv)
    assert exited.value.code == 2


def test_cli_refuses_repeated_units(capsys: pytest.CaptureFixture[str]) -> None:
    assert sim_main(["modbus", "--unit", "3", "--unit", "3"]) == 2
    assert "repeat" in capsys.readouterr().err


def test_cli_help_shows_the_register_map(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        sim_main(["modbus", "--help"])
    text = capsys.readouterr().out
    assert "40  pressure setpoint, mbar, initial 1000" in text
    assert "exception 4" in text
    assert gateway.cli.LAB_COMMANDS["sim"] == "gateway.lab.sim"


def test_parse_hostport() -> None:
    assert parse_hostport("127.0.0.1:5020") == ("127.0.0.1", 5020)
    assert parse_hostport("[::1]:0") == ("::1", 0)
    assert parse_hostport("localhost:502") == ("localhost", 502)


# ------------------------------------------------------------------------------------ fault front


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tid: int) -> bytes:
    """One FC 4 read of IR 7 (the unit id) under ``tid``; the whole reply frame."""
    writer.write(bytes.fromhex(f"{tid:04x} 0000 0006 01 04 0007 0001"))
    header = await asyncio.wait_for(reader.readexactly(6), 5)
    return header + await asyncio.wait_for(reader.readexactly(int.from_bytes(header[4:6], "big")), 5)


async def test_the_fault_front_spoils_only_the_chosen_replies() -> None:
    from gateway.lab.sim.faults import Fault

    async with ModbusSim(static=True, fault=Fault("wrong-tid", after=1, replies=1)) as sim:
        reader, writer = await asyncio.open_connection(sim.host, sim.port)
        good = bytes.fromhex("0000 0005 01 04 02 0001")
        assert await _exchange(reader, writer, 0x10) == bytes.fromhex("0010") + good
        assert await _exchange(reader, writer, 0x11) == bytes.fromhex("0012") + good  # spoiled
        assert await _exchange(reader, writer, 0x12) == bytes.fromhex("0012") + good
        assert sim.front is not None and (sim.front.replies, sim.front.spoiled) == (3, 1)
        writer.close()


def test_fault_settings_are_checked() -> None:
    from gateway.lab.sim.faults import Fault

    with pytest.raises(ValueError, match="expected one of wrong-tid, late, short, trickle"):
        Fault("slow")
    with pytest.raises(ValueError, match="replies 1 or more"):
        Fault("late", replies=0)
    assert Fault("short", after=2, replies=None).applies(9) and not Fault("short", after=2).applies(3)
