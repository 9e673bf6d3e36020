"""The real-peer harnesses work against each other directly, before any gateway sits in between."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator

import pytest
from pymodbus.client import AsyncModbusTcpClient

from tests.peers.libmodbus import (
    REQUESTS_PER_LOOP,
    SOURCE,
    PeerUnavailableError,
    patched_source,
    random_test_client,
    run_random_test_client,
)
from tests.peers.modbus_server import ServerProcess, expected_bit, expected_register, start_modbus_server

ADDRESSES_PER_LOOP = 99  # random-test-client walks addresses 0..98
WRITES_PER_ADDRESS = 5  # FC 5, 15, 6, 16, 23; a failed write skips its read-back


@pytest.fixture
async def server() -> AsyncIterator[ServerProcess]:
    process = await start_modbus_server(units=(1, 17))
    try:
        yield process
    finally:
        await process.stop()


def read_holding_frame(transaction: int, unit: int, address: int, count: int) -> bytes:
    return struct.pack(">HHHBBHH", transaction, 0, 6, unit, 3, address, count)


async def read_holding_raw(port: int, address: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(read_holding_frame(1, 1, address, 1))
        reply = await asyncio.wait_for(reader.readexactly(11), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    assert reply[:9] == bytes([0, 1, 0, 0, 0, 5, 1, 3, 2])
    value: int = struct.unpack(">H", reply[9:])[0]
    return value


async def test_server_serves_the_documented_data(server: ServerProcess) -> None:
    async with AsyncModbusTcpClient("127.0.0.1", port=server.port, timeout=5) as client:
        for unit in (1, 17):
            holding = await client.read_holding_registers(0, count=10, device_id=unit)
            assert holding.registers == [expected_register(i) for i in range(10)]
            inputs = await client.read_input_registers(9990, count=10, device_id=unit)
            assert inputs.registers == [expected_register(i) for i in range(9990, 10000)]
            coils = await client.read_coils(100, count=16, device_id=unit)
            assert coils.bits == [bool(expected_bit(i)) for i in range(100, 116)]
            discrete = await client.read_discrete_inputs(9984, count=16, device_id=unit)
            assert discrete.bits == [bool(expected_bit(i)) for i in range(9984, 10000)]

        beyond = await client.read_holding_registers(9999, count=2, device_id=1)
        assert beyond.isError() and beyond.exception_code == 2
        unknown = await client.read_holding_registers(0, count=1, device_id=5)
        assert unknown.isError() and unknown.exception_code == 4

        # Each unit has its own writable copy.
        assert not (await client.write_register(3, 0xBEEF, device_id=1)).isError()
        assert not (await client.write_coil(1, True, device_id=1)).isError()
        assert (await client.read_holding_registers(3, device_id=1)).registers == [0xBEEF]
        assert (await client.read_holding_registers(3, device_id=17)).registers == [expected_register(3)]
        assert (await client.read_coils(1, device_id=1)).bits[0] is True
        assert (await client.read_coils(1, device_id=17)).bits[0] is False


def test_expected_values() -> None:
    assert [expected_register(i) for i in (0, 1, 9361, 9362)] == [3, 10, 65530, 1]  # wraps at 16 bits
    assert [expected_bit(i) for i in range(7)] == [1, 0, 0, 1, 0, 0, 1]


async def test_sigterm_exits_cleanly(server: ServerProcess) -> None:
    assert await server.stop() == 0
    assert not server.running


async def test_kill_then_restart_on_the_same_port(server: ServerProcess) -> None:
    port = server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(read_holding_frame(7, 17, 2, 1))
    assert (await asyncio.wait_for(reader.readexactly(11), 5))[-2:] == struct.pack(">H", expected_register(2))
    assert await read_holding_raw(port, 4) == expected_register(4)

    await server.kill()
    assert not server.running
    # The killed server's kernel closes the connection; closing ours leaves its side in TIME_WAIT.
    with contextlib.suppress(ConnectionResetError):
        assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    with pytest.raises(ConnectionRefusedError):
        await read_holding_raw(port, 4)

    await server.restart()
    assert (server.port, server.running) == (port, True)
    assert await read_holding_raw(port, 4) == expected_register(4)


async def test_restart_of_a_running_server_keeps_the_port(server: ServerProcess) -> None:
    port, pid = server.port, server.pid
    await server.restart()
    assert (server.port, server.running) == (port, True)
    assert server.pid != pid
    assert await read_holding_raw(port, 9) == expected_register(9)


async def test_random_test_client_passes_against_pymodbus() -> None:
    async with ServerProcess(units=(17,)) as server:
        result = await run_random_test_client("127.0.0.1", server.port, unit=17, timeout_s=60)
        assert result.passed, result.summary()
        assert result.returncode == 0
        assert "Test: SUCCESS" in result.stdout
        assert not result.errors
        # Its writes really landed on unit 17: coils and registers 0..98 no longer hold the initial data.
        async with AsyncModbusTcpClient("127.0.0.1", port=server.port, timeout=5) as client:
            registers = (await client.read_holding_registers(0, count=99, device_id=17)).registers
        assert registers != [expected_register(i) for i in range(99)]


async def test_random_test_client_reports_failures_with_its_exit_status() -> None:
    # Unit 255 is what the unpatched client sends over TCP; a server serving only 17 refuses every request.
    async with ServerProcess(units=(17,)) as server:
        result = await run_random_test_client("127.0.0.1", server.port, unit=255, timeout_s=60)
    assert not result.passed
    assert result.returncode == 1
    assert result.reported_fails == len(result.errors) == ADDRESSES_PER_LOOP * WRITES_PER_ADDRESS
    assert f"Test: {ADDRESSES_PER_LOOP * WRITES_PER_ADDRESS} FAILS" in result.stdout


async def test_random_test_client_without_a_server_fails_to_connect() -> None:
    # A bound socket that never listens: the port is ours, so nothing else can answer on it.
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
        result = await run_random_test_client("127.0.0.1", port, timeout_s=30)
    assert result.returncode == 255
    assert "Connection failed" in result.stderr
    assert not result.passed


async def test_random_test_client_debug_prints_frames_with_the_unit_id() -> None:
    async with ServerProcess(units=(17,)) as server:
        result = await run_random_test_client("127.0.0.1", server.port, debug=True, timeout_s=60)
    assert result.passed, result.summary()
    # libmodbus prints each request as [xx] bytes; byte 7 of the MBAP header is the unit id (0x11 = 17).
    requests = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert len(requests) == REQUESTS_PER_LOOP
    assert {line[24:28] for line in requests} == {"[11]"}
    functions = {int(line[28:32].strip("[]"), 16) for line in requests}
    assert functions == {1, 3, 5, 6, 15, 16, 23}


def test_build_is_cached() -> None:
    binary = random_test_client()
    built_at = binary.stat().st_mtime_ns
    assert random_test_client() == binary
    assert binary.stat().st_mtime_ns == built_at
    assert binary.parent.name == "peers" and binary.parent.parent.name == ".cache"


def test_patches_fail_loudly_when_the_example_changes() -> None:
    original = SOURCE.read_text()
    patched = patched_source(original)
    assert "modbus_set_slave(ctx, argc > 3" in patched
    assert "return nb_fail ? 1 : 0;" in patched
    with pytest.raises(PeerUnavailableError, match="LOOP"):
        patched_source(original.replace("#define LOOP             1", "#define LOOP 100"))


async def test_start_on_a_taken_port_gives_up_after_retrying() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = ServerProcess(units=(1,), port=taken.getsockname()[1])
        server.BIND_RETRY_S = 0.3
        with pytest.raises(RuntimeError, match="status 3"):
            await server.start()
    assert not server.running


async def test_random_test_client_loop_count() -> None:
    async with ServerProcess(units=(17,)) as server:
        result = await run_random_test_client("127.0.0.1", server.port, loops=2, timeout_s=60)
    assert result.passed, result.summary()
    assert result.stdout.count("Test: SUCCESS") == 2
