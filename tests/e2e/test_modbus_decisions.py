"""Decisions end to end: real pymodbus clients through the agent or straight over mutual TLS, the
gateway, and a real pymodbus server; values, exception codes and audit records asserted."""

from __future__ import annotations

import asyncio
from datetime import datetime
from zoneinfo import ZoneInfo

import orjson
import pytest
from pymodbus.exceptions import ModbusIOException

from tests.e2e.harness import ALICE, VENDOR, FakeClock, Lab, policy_text
from tests.peers.modbus_server import expected_bit, expected_register

RULES = """
[[rules]]
id = "operators-read"
subjects = ["group:operators"]
assets = ["plc-1"]
modbus = [{ fc = [1, 2, 3, 4], address = "0-99" }]

[[rules]]
id = "operators-setpoint"
subjects = ["group:operators"]
assets = ["plc-1"]
modbus = [{ fc = [6, 16], address = "40-49", value = "0-1500" }]

[[rules]]
id = "operators-no-recipes"
effect = "deny"
subjects = ["group:operators"]
assets = ["plc-1"]
modbus = [{ fc = [3], address = "90-99" }]

[[rules]]
id = "vendor-read-only"
subjects = ["group:vendors"]
assets = ["plc-1"]
modbus = [{ preset = "read-only", address = "0-49" }]
"""


async def test_agent_path_reads_writes_and_refusals(lab: Lab) -> None:
    port = await lab.start_device()
    await lab.start_gateway(policy_text(port, RULES))
    client = await lab.plain_client(await lab.start_agent("alice"))

    result = await client.read_holding_registers(0, count=10, device_id=1)
    assert result.registers == [expected_register(i) for i in range(10)]
    result = await client.read_coils(0, count=16, device_id=1)
    assert result.bits[:16] == [bool(expected_bit(i)) for i in range(16)]

    assert not (await client.write_register(40, 1200, device_id=1)).isError()
    assert (await client.read_holding_registers(40, count=1, device_id=1)).registers == [1200]
    result = await client.write_register(40, 1501, device_id=1)
    assert result.isError() and result.exception_code == 3
    assert (await client.read_holding_registers(40, count=1, device_id=1)).registers == [1200]

    events = lab.audit_events(event="decision", identity=ALICE)
    refused = [e for e in events if e["decision"] == "deny"]
    assert len(refused) == 1
    assert refused[0]["rule"] == "operators-setpoint"
    assert refused[0]["values"] == [1501] and refused[0]["code"] == 3 and refused[0]["write"] == [40, 40]
    allowed_write = next(e for e in events if e["fc"] == 6 and e["decision"] == "allow")
    assert allowed_write["rule"] == "operators-setpoint" and allowed_write["values"] == [1200]
    assert allowed_write["outcome"] == "ok" and allowed_write["latency_us"] >= 0
    assert lab.audit_events(event="session_start", identity=ALICE)


@pytest.mark.parametrize(
    ("who", "call", "args", "code", "rule"),
    [
        # function code named by no rule for this identity
        ("alice", "write_coil", (0, True), 1, None),
        # a write span that starts inside the range and leaves it
        ("alice", "write_registers", (48, [1, 2, 3]), 2, "operators-setpoint"),
        # a read across the end of the allowed range
        ("alice", "read_holding_registers", (95, 10), 2, "operators-no-recipes"),
        # deny wins over allow (90-99 is inside operators-read's 0-99)
        ("alice", "read_holding_registers", (90, 1), 2, "operators-no-recipes"),
        # value out of bounds in the middle of a multi-register write
        ("alice", "write_registers", (40, [10, 2000, 30]), 3, "operators-setpoint"),
        # the vendor may read but not write
        ("vendor", "write_register", (40, 100), 1, None),
        ("vendor", "read_holding_registers", (50, 1), 2, "vendor-read-only"),
        # fingerprinting and diagnostics are refused unless named
        ("vendor", "read_device_information", (), 1, None),
        ("vendor", "diag_clear_counters", (), 1, None),
    ],
)
async def test_every_refusal_code(
    lab: Lab, who: str, call: str, args: tuple[object, ...], code: int, rule: str | None
) -> None:
    port = await lab.start_device()
    await lab.start_gateway(policy_text(port, RULES))
    client = await lab.client(who)
    method = getattr(client, call)
    if call.startswith("read_") and args:
        result = await method(args[0], count=args[1], device_id=1)
    else:
        result = await method(*args, device_id=1)
    assert result.isError(), result
    assert result.exception_code == code
    identity = ALICE if who == "alice" else VENDOR
    event = (lab.audit_events(event="decision", identity=identity, decision="deny"))[-1]
    assert event["code"] == code
    assert event["rule"] == rule
    assert event["reason"]
    # FC 8 is audited with its sub-function (0x0A, clear counters), FC 43 with its MEI type (14).
    sub_functions = {"diag_clear_counters": (8, 0x0A), "read_device_information": (43, 14)}
    if call in sub_functions:
        assert (event["fc"], event["sub_function"]) == sub_functions[call]
    else:
        assert "sub_function" not in event


async def test_unit_not_configured_and_unknown_function_code(lab: Lab) -> None:
    port = await lab.start_device()
    await lab.start_gateway(policy_text(port, RULES))
    client = await lab.client("alice")
    result = await client.read_holding_registers(0, count=1, device_id=2)
    assert result.isError() and result.exception_code == 0x0A  # gateway path unavailable
    event = lab.audit_events(event="decision", decision="deny")[-1]
    assert event["unit"] == 2 and event["rule"] is None

    # A vendor function code (90, UMAS) the codec keeps opaque: refused as a function not allowed.
    reader, writer = await lab.raw_connection("alice")
    writer.write(bytes.fromhex("0007 0000 0004 01 5a 0001"))
    reply = await asyncio.wait_for(reader.readexactly(9), 3)
    assert reply == bytes.fromhex("0007 0000 0003 01 da 01")
    writer.close()


async def test_deny_actions_codes_drop_and_close(lab: Lab) -> None:
    port = await lab.start_device()
    asset_extra = 'deny = { action = "exception", function = 4, address = 11, value = 12 }'
    await lab.start_gateway(policy_text(port, RULES, asset_extra=asset_extra))
    client = await lab.client("alice")
    assert (await client.write_coil(0, True, device_id=1)).exception_code == 4
    assert (await client.read_holding_registers(95, count=10, device_id=1)).exception_code == 11
    assert (await client.write_register(40, 9999, device_id=1)).exception_code == 12


async def test_silent_drop_never_reaches_the_device(lab: Lab) -> None:
    port = await lab.start_device()
    await lab.start_gateway(policy_text(port, RULES, asset_extra='deny = { action = "drop" }'))
    client = await lab.client("alice", timeout_s=0.5)
    with pytest.raises(ModbusIOException):
        await client.write_register(40, 9999, device_id=1)
    # The refused value never reached the device.
    client = await lab.client("alice")
    assert (await client.read_holding_registers(40, count=1, device_id=1)).registers == [
        expected_register(40)
    ]
    assert lab.audit_events(event="decision", decision="deny")[-1]["action"] == "drop"


async def test_close_action_ends_the_session(lab: Lab) -> None:
    port = await lab.start_device()
    await lab.start_gateway(policy_text(port, RULES, asset_extra='deny = { action = "close" }'))
    reader, writer = await lab.raw_connection("alice")
    writer.write(bytes.fromhex("0001 0000 0006 01 05 0000 ff00"))  # write coil 0: not allowed
    assert await asyncio.wait_for(reader.read(), 3) == b""
    end = await lab.wait_for_event(event="session_end", identity=ALICE)
    assert "refused by rule" in end["reason"]


async def test_monitor_asset_forwards_and_audits_would_deny(lab: Lab) -> None:
    port = await lab.start_device()
    await lab.start_gateway(policy_text(port, RULES, asset_extra='mode = "monitor"'))
    client = await lab.client("alice")
    assert not (await client.write_register(40, 2000, device_id=1)).isError()
    assert (await client.read_holding_registers(40, count=1, device_id=1)).registers == [2000]
    event = lab.audit_events(event="decision", fc=6)[-1]
    assert event["decision"] == "would-deny"
    assert event["rule"] == "operators-setpoint" and event["would_code"] == 3
    assert "exception" not in event and event["outcome"] == "ok"


async def test_monitor_rule_is_audited_but_changes_nothing(lab: Lab) -> None:
    port = await lab.start_device()
    trial = """
[[rules]]
id = "trial-cap"
effect = "deny"
mode = "monitor"
subjects = ["group:operators"]
assets = ["plc-1"]
modbus = [{ fc = [6], address = "40", value = "1200-65535" }]
"""
    await lab.start_gateway(policy_text(port, RULES + trial))
    client = await lab.client("alice")
    assert not (await client.write_register(40, 1300, device_id=1)).isError()
    event = lab.audit_events(event="decision", fc=6)[-1]
    assert event["decision"] == "allow" and event["monitor_rule"] == "trial-cap"


async def test_time_window_with_an_injected_clock(lab: Lab) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    clock = FakeClock(datetime(2026, 11, 25, 10, 0, tzinfo=berlin))  # a Wednesday, on shift
    shift = RULES.replace(
        'modbus = [{ fc = [6, 16], address = "40-49", value = "0-1500" }]',
        'modbus = [{ fc = [6, 16], address = "40-49", value = "0-1500" }]\n'
        'when = { days = "mon-fri", hours = "06:00-18:00", tz = "Europe/Berlin" }',
    )
    port = await lab.start_device()
    await lab.start_gateway(policy_text(port, shift), clock=clock)
    client = await lab.client("alice")
    assert not (await client.write_register(40, 1000, device_id=1)).isError()

    clock.set(datetime(2026, 11, 25, 18, 0, tzinfo=berlin))  # the window's end is exclusive
    result = await client.write_register(40, 1001, device_id=1)
    assert result.isError() and result.exception_code == 1
    assert "window" in lab.audit_events(event="decision", decision="deny")[-1]["reason"]

    clock.set(datetime(2026, 11, 28, 10, 0, tzinfo=berlin))  # Saturday
    assert (await client.write_register(40, 1002, device_id=1)).exception_code == 1
    # Reads are not windowed and keep working in the same session.
    assert (await client.read_holding_registers(40, count=1, device_id=1)).registers == [1000]


async def test_unit_id_mapping(lab: Lab) -> None:
    port = await lab.start_device(units=(17,))
    await lab.start_gateway(policy_text(port, RULES, asset_extra='unit_map = { "1" = 17 }'))
    client = await lab.client("alice")
    assert not (await client.write_register(41, 777, device_id=1)).isError()
    direct = await lab.plain_client(port)
    assert (await direct.read_holding_registers(41, count=1, device_id=17)).registers == [777]
    result = await client.read_holding_registers(41, count=1, device_id=1)
    assert result.registers == [777] and result.dev_id == 1


async def test_allowed_reads_are_aggregated_denies_are_not(lab: Lab) -> None:
    port = await lab.start_device()
    gateway = await lab.start_gateway(policy_text(port, RULES), aggregate_reads_s=1.0)
    client = await lab.client("alice")
    for address in (0, 10, 20):
        for _ in range(5):
            assert not (await client.read_holding_registers(address, count=5, device_id=1)).isError()
    for _ in range(3):
        assert (await client.write_coil(0, True, device_id=1)).isError()
    await gateway.stop()  # a clean stop writes the interval's aggregates
    lab.gateway = None
    events = [orjson.loads(line) for line in lab.audit_path.read_bytes().splitlines()]
    reads = [e for e in events if e.get("event") == "decision" and e.get("fc") == 3]
    assert len(reads) == 1
    assert reads[0]["aggregated"] is True and reads[0]["count"] == 15 and reads[0]["span"] == [0, 24]
    assert reads[0]["rule"] == "operators-read" and reads[0]["identity"] == ALICE
    denies = [e for e in events if e.get("decision") == "deny"]
    assert len(denies) == 3 and all(e["fc"] == 5 and e["code"] == 1 for e in denies)
