"""EtherNet/IP end to end: pycomm3 and pylogix (real, independently written Logix clients) through
agent -> gateway -> ``ztgate sim enip``; values, CIP statuses and audit records asserted. The clients
are blocking, so each runs in a thread while the gateway and the simulator serve on the test's loop."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import orjson
import pytest
from pycomm3 import CIPDriver, LogixDriver, Services
from pylogix import PLC  # type: ignore[import-untyped]

from gateway.lab.sim.enip import EnipSim
from policies.view import SubjectView
from protocols.enip import CipRequest
from tests.e2e.harness import ALICE, FakeClock, Lab, enip_policy_text

T = TypeVar("T")

RULES = """
[[rules]]
id = "operators-read"
subjects = ["group:operators"]
assets = ["plc-2"]
enip = [{ preset = "read-only" }]

[[rules]]
id = "operators-setpoint"
subjects = ["group:operators"]
assets = ["plc-2"]
enip = [
  { service = ["write_tag", "read_modify_write"], tag = ["Setpoint", "Recipe[0..4]"], value = "0..1500" },
]

[[rules]]
id = "no-secrets"
effect = "deny"
subjects = ["group:operators"]
assets = ["plc-2"]
enip = [{ service = ["read_tag", "read_tag_fragmented"], tag = "Batch_ID" }]

[[rules]]
id = "nobody-resets"
effect = "deny"
subjects = ["spiffe://plant1.example/*"]
assets = ["plc-2"]
enip = [{ service = "reset" }]
"""


@pytest.fixture(autouse=True)
def quiet_clients(caplog: pytest.LogCaptureFixture) -> None:
    # pycomm3 logs refused requests with tracebacks; the tests assert on the results instead.
    caplog.set_level(logging.CRITICAL, logger="pycomm3")


@pytest.fixture
async def plc() -> AsyncIterator[EnipSim]:
    async with EnipSim(static=True) as running:
        yield running


def privileged(error: object) -> bool:
    """pycomm3's text for CIP general status 0x0F (privilege violation)."""
    return "Permission denied" in str(error)


async def in_thread(function: Callable[[], T]) -> T:
    async with asyncio.timeout(60):
        return await asyncio.to_thread(function)


async def _lab(lab: Lab, plc: EnipSim, rules: str = RULES, who: str = "alice") -> int:
    await lab.start_gateway(enip_policy_text(plc.port, rules))
    return await lab.start_agent(who, "plc-2", "enip")


async def test_pycomm3_logix_driver_default_startup_reads_and_writes(lab: Lab, plc: EnipSim) -> None:
    port = await _lab(lab, plc)

    def run() -> dict[str, Any]:
        with LogixDriver(f"127.0.0.1:{port}") as driver:  # default start-up: identity, tag list, programs
            out: dict[str, Any] = {"tags": sorted(driver.tags)}
            out["setpoint"] = driver.read("Setpoint").value
            out["recipe"] = driver.read("Recipe{10}").value
            out["multi"] = [
                (t.tag, t.value, t.error) for t in driver.read("Setpoint", "Recipe[2]", "Program:Main.Step")
            ]
            out["write"] = driver.write("Setpoint", 1200).error
            out["multi_write"] = [t.error for t in driver.write(("Recipe[0]", 7), ("Recipe[1]", 8))]
            out["after"] = driver.read("Setpoint").value
            return out

    out = await in_thread(run)
    assert "Setpoint" in out["tags"] and "Recipe" in out["tags"]
    assert out["setpoint"] == 1000
    assert out["recipe"] == [100 * (i + 1) for i in range(10)]
    assert out["multi"] == [
        ("Setpoint", 1000, None),
        ("Recipe[2]", 300, None),
        ("Program:Main.Step", 10, None),
    ]
    assert out["write"] is None and out["multi_write"] == [None, None] and out["after"] == 1200
    assert plc.tag("Setpoint") == 1200 and plc.tag("Recipe")[:2] == [7, 8]
    decisions = lab.audit_events(event="decision", identity=ALICE)
    write = next(e for e in decisions if e["service"] == "write_tag" and e.get("tag") == "Setpoint")
    assert (
        write["decision"] == "allow" and write["rule"] == "operators-setpoint" and write["values"] == [1200]
    )


async def test_one_refused_request_in_a_multiple_service_packet(lab: Lab, plc: EnipSim) -> None:
    port = await _lab(lab, plc)

    def run() -> tuple[list[Any], list[Any]]:
        with LogixDriver(f"127.0.0.1:{port}") as driver:
            # pycomm3 packs each call's tags into one Multiple Service Packet.
            reads = [(t.tag, t.value, t.error) for t in driver.read("Setpoint", "Batch_ID", "Recipe[3]")]
            writes = [
                (t.tag, t.error) for t in driver.write(("Recipe[2]", 9), ("Recipe[7]", 9), ("Setpoint", 99))
            ]
            return reads, writes

    reads, writes = await in_thread(run)
    assert reads[0] == ("Setpoint", 1000, None) and reads[2] == ("Recipe[3]", 400, None)
    assert reads[1][1] is None and privileged(reads[1][2])
    assert writes[0] == ("Recipe[2]", None) and writes[2] == ("Setpoint", None)
    assert privileged(writes[1][1])
    # The device never saw the refused write; the allowed ones in the same packet ran.
    assert [w.tag for w in plc.writes()] == ["Recipe[2]", "Setpoint"]
    assert plc.tag("Recipe")[7] == 800
    refused = lab.audit_events(event="decision", decision="deny")
    assert {(e["service"], e.get("tag"), e["rule"]) for e in refused} == {
        ("read_tag", "Batch_ID", "no-secrets"),
        ("write_tag", "Recipe[7]", "operators-setpoint"),
    }


async def test_generic_messages_identity_allowed_reset_refused(lab: Lab, plc: EnipSim) -> None:
    port = await _lab(lab, plc)

    def run() -> tuple[Any, Any, Any]:
        with CIPDriver(f"127.0.0.1:{port}") as driver:
            identity = driver.generic_message(
                service=Services.get_attributes_all, class_code=0x01, instance=1, connected=False
            )
            reset = driver.generic_message(
                service=Services.reset, class_code=0x01, instance=1, connected=False
            )
            tcpip = driver.generic_message(
                service=Services.set_attribute_single,
                class_code=0xF5,
                instance=1,
                attribute=3,
                request_data=b"\x02\x00\x00\x00",
                connected=False,
            )
            return identity, reset, tcpip

    identity, reset, tcpip = await in_thread(run)
    assert identity.error is None and identity.value
    assert reset.error and privileged(reset.error)
    assert tcpip.error and privileged(tcpip.error)
    assert plc.resets == 0 and not [r for r in plc.received if r.class_id == 0xF5]
    refused = {e["service"]: e for e in lab.audit_events(event="decision", decision="deny")}
    assert refused["reset"]["rule"] == "nobody-resets" and refused["reset"]["class"] == 1
    set_tcpip = refused["set_attribute_single"]
    assert set_tcpip["class"] == 0xF5 and set_tcpip["attribute"] == 3
    assert set_tcpip["rule"] is None  # a default deny: no rule names it, and the reason says so
    assert "no rule allows set_attribute_single" in set_tcpip["reason"]


async def test_writes_outside_patterns_and_out_of_bounds_are_refused(lab: Lab, plc: EnipSim) -> None:
    port = await _lab(lab, plc)

    def run() -> tuple[Any, Any, Any]:
        with LogixDriver(f"127.0.0.1:{port}") as driver:
            return (
                driver.write("Mode", 2).error,  # no rule names Mode
                driver.write("Setpoint", 2000).error,  # out of 0..1500
                driver.write("Recipe[5]", 1).error,  # outside Recipe[0..4]
            )

    errors = await in_thread(run)
    assert all(error and privileged(error) for error in errors)
    assert plc.writes() == [] and plc.tag("Setpoint") == 1000
    refused = lab.audit_events(event="decision", decision="deny")
    # Each names the rule it came closest to, and why it fell outside.
    assert [(e["tag"], e["rule"]) for e in refused] == [
        ("Mode", "operators-setpoint"),
        ("Setpoint", "operators-setpoint"),
        ("Recipe[5]", "operators-setpoint"),
    ]
    assert "value 2000 outside rule operators-setpoint (0..1500)" in refused[1]["reason"]


async def test_a_tag_by_numeric_instance_is_refused(lab: Lab) -> None:
    async with EnipSim(static=True, revision="32.11") as plc:  # pycomm3 reads by instance from v21
        port = await _lab(lab, plc)

        def run() -> Any:
            with LogixDriver(f"127.0.0.1:{port}") as driver:
                return driver.read("Setpoint")

        result = await in_thread(run)
    assert result.value is None and privileged(result.error)
    refused = lab.audit_events(event="decision", decision="deny", service="read_tag")
    assert refused and refused[-1]["class"] == 0x6B and "instance" in refused[-1]
    # A symbol instance cannot be told apart from the tag a deny rule protects: that rule refuses it.
    assert refused[-1]["rule"] == "no-secrets" and "touches tag Batch_ID" in refused[-1]["reason"]


async def test_pylogix_reads_writes_and_arrays(lab: Lab, plc: EnipSim) -> None:
    port = await _lab(lab, plc)

    def run() -> dict[str, Any]:
        with PLC("127.0.0.1", port=port) as comm:
            return {
                "read": comm.Read("Setpoint").Value,
                "array": comm.Read("Recipe[0]", 5).Value,
                "write": comm.Write("Recipe[4]", 55).Status,
                "refused": comm.Write("Recipe[9]", 55).Status,
                "after": comm.Read("Recipe[4]").Value,
            }

    out = await in_thread(run)
    assert out["read"] == 1000 and out["array"] == [100, 200, 300, 400, 500]
    assert out["write"] == "Success" and out["after"] == 55
    assert out["refused"] != "Success"
    assert plc.tag("Recipe")[9] == 1000


async def test_many_clients_share_one_upstream_session(lab: Lab, plc: EnipSim) -> None:
    port = await _lab(lab, plc)

    def client(index: int) -> list[int]:
        seen = []
        with PLC("127.0.0.1", port=port) as comm:
            for round_ in range(5):
                assert comm.Write(f"Recipe[{index}]", index * 100 + round_).Status == "Success"
                seen.append(comm.Read(f"Recipe[{index}]").Value)
        return seen

    results = await asyncio.gather(*(in_thread(lambda i=i: client(i)) for i in range(5)))
    assert results == [[i * 100 + r for r in range(5)] for i in range(5)]
    assert lab.gateway is not None
    state = lab.gateway.runtime.upstreams.pool_for(lab.gateway.policy.assets["plc-2"]).state()
    assert state.connected == 1 and state.max_connections == 1
    assert len({r.session for r in plc.received}) == 1  # the device saw one encapsulation session


async def test_connected_messaging_runs_on_the_gateways_own_connection(lab: Lab, plc: EnipSim) -> None:
    # pycomm3 opens a class-3 connection (Forward Open) and closes it (Forward Close) around its work:
    # the gateway answers both itself and carries the requests on a connection of its own, so the
    # device sees one Forward Open however many clients come and go, and no client's Forward Close.
    port = await _lab(lab, plc)

    def run() -> Any:
        with LogixDriver(f"127.0.0.1:{port}") as driver:
            return driver.read("Setpoint").value

    assert await asyncio.gather(in_thread(run), in_thread(run)) == [1000, 1000]
    assert await in_thread(run) == 1000  # a third, after the first two closed theirs
    connection_manager = [r.service for r in plc.received if r.class_id == 0x06 and r.service != 0x52]
    assert connection_manager == [0x54]  # the gateway's own Forward Open, once
    reads = [r for r in plc.received if r.tag == "Setpoint" and r.service == 0x4C]
    assert len(reads) == 3 and all(r.connected for r in reads)
    # The clients' own Forward Opens (Large, as pycomm3 sends them) and Forward Closes, decided and
    # answered by the gateway.
    for service in ("large_forward_open", "forward_close"):
        decided = lab.audit_events(event="decision", service=service)
        assert len(decided) == 3 and all(e["decision"] == "allow" for e in decided), service


async def test_list_services_is_answered_by_the_gateway(lab: Lab, plc: EnipSim) -> None:
    port = await _lab(lab, plc)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        # ListServices (Vol 2, 2-4.6): command 0x0004, no data.
        writer.write(struct.pack("<HHII8sI", 0x0004, 0, 0, 0, b"ztgate-t", 0))
        header = await asyncio.wait_for(reader.readexactly(24), 5)
        command, length, _session, status, context, _options = struct.unpack("<HHII8sI", header)
        data = await reader.readexactly(length)
    finally:
        writer.close()
    assert (command, status, context) == (0x0004, 0, b"ztgate-t")
    count, item_type, item_length, version, flags = struct.unpack_from("<HHHHH", data)
    assert (count, item_type, item_length, version) == (1, 0x0100, 20, 1)
    assert flags & 0x0020 and not flags & 0x0100  # CIP over TCP; no class 0/1 over UDP
    assert data[10:26].rstrip(b"\0") == b"Communications"


async def test_list_identity_is_answered_by_the_gateway(lab: Lab, plc: EnipSim) -> None:
    port = await _lab(lab, plc)

    identity = await in_thread(lambda: CIPDriver.list_identity(f"127.0.0.1:{port}"))
    assert identity["product_name"] == "Line 1 PLC" and identity["product_code"] == 55
    assert not any(r.service == 0x63 for r in plc.received)


async def test_pycomm3_defaults_read_an_array_over_the_assets_connection_size(lab: Lab, plc: EnipSim) -> None:
    # The asset's connection to the device is 500 bytes; pycomm3 asks for 4,000. Refused with
    # 0x01/0x0109 and 500, it opens 500 bytes and reads the 800-byte array in fragments, as it does
    # directly against the device. (Granted 4,000, its one Read Tag got a partial transfer, 0x06.)
    await lab.start_gateway(enip_policy_text(plc.port, RULES, asset_extra="connection_size = 500"))
    port = await lab.start_agent("alice", "plc-2", "enip")
    trend = [float(i) for i in range(200)]
    plc.set_tag("Trend", trend)

    def run() -> tuple[Any, int]:
        with LogixDriver(f"127.0.0.1:{port}") as driver:
            return driver.read("Trend{200}"), driver.connection_size

    result, size = await in_thread(run)
    assert result.error is None and result.value == trend and size == 500
    refused = lab.audit_events(event="decision", service="large_forward_open")
    assert [(e["decision"], e["code"]) for e in refused] == [("allow", 1)]
    assert "connection size 4000 bytes above the 500" in refused[0]["outcome"]
    assert not [r for r in plc.received if r.tag == "Trend" and r.service == 0x4C]  # fragments only


async def test_generic_get_attribute_list_with_trailing_bytes_is_decided_and_forwarded_without_them(
    lab: Lab, plc: EnipSim
) -> None:
    # pycomm3's generic messages over UCMM append their route path (here empty: 00 00) after the request
    # data. Devices ignore it; the gateway decides the attribute ids it decoded and forwards only them.
    port = await _lab(lab, plc)

    def run() -> tuple[Any, Any]:
        with CIPDriver(f"127.0.0.1:{port}") as driver:
            allowed = driver.generic_message(
                service=Services.get_attribute_list,
                class_code=0x8B,
                instance=1,
                request_data=b"\x01\x00\x06\x00",  # one attribute: 6, the wall clock's UTC time
                connected=False,
            )
            refused = driver.generic_message(
                service=Services.get_attribute_list,
                class_code=0xF5,  # TCP/IP Interface: the read-only preset does not name it
                instance=1,
                request_data=b"\x01\x00\x05\x00",
                connected=False,
            )
            return allowed, refused

    allowed, refused = await in_thread(run)
    assert allowed.error is None and len(allowed.value) == 2 + 2 + 2 + 8  # count, id, status, ULINT
    assert privileged(refused.error)
    clock = [r for r in plc.received if r.class_id == 0x8B]
    assert [(r.service, r.data) for r in clock] == [(0x03, b"\x01\x00\x06\x00")]  # no trailing bytes
    assert not [r for r in plc.received if r.class_id == 0xF5]
    denied = lab.audit_events(event="decision", decision="deny", service="get_attribute_list")
    assert [(e["class"], e["instance"]) for e in denied] == [(0xF5, 1)]


async def test_repeated_requests_get_what_a_fresh_connection_gets(lab: Lab, plc: EnipSim) -> None:
    """A polling client's repeated requests are decoded once per session (the repeat cache); a request
    that differs in a byte (another value) is decoded afresh. The same requests, each on a connection of
    its own (no repeats, so every one decoded afresh), must get the same replies and the same decisions."""
    port = await _lab(lab, plc)
    steps: list[tuple[str, tuple[Any, ...]]] = [
        ("read", ("Setpoint",)),
        ("read", ("Setpoint",)),
        ("read", ("Batch_ID",)),
        ("read", ("Batch_ID",)),
        ("read", ("Setpoint", "Recipe[2]", "Batch_ID")),
        ("read", ("Setpoint", "Recipe[2]", "Batch_ID")),
        ("write", (("Setpoint", 1200),)),
        ("write", (("Setpoint", 1600),)),  # one value byte apart, and out of 0..1500
        ("write", (("Setpoint", 1200),)),
        ("read", ("Setpoint",)),
        ("write", (("Setpoint", 1000),)),  # back where the second pass starts
    ]

    def step(driver: LogixDriver, kind: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        results = driver.read(*args) if kind == "read" else driver.write(*args)
        results = results if isinstance(results, list) else [results]
        return [(t.tag, t.value, bool(t.error), privileged(t.error)) for t in results]

    def one_connection() -> list[list[tuple[Any, ...]]]:
        with LogixDriver(f"127.0.0.1:{port}") as driver:
            return [step(driver, kind, args) for kind, args in steps]

    def fresh_connections() -> list[list[tuple[Any, ...]]]:
        out = []
        for kind, args in steps:
            with LogixDriver(f"127.0.0.1:{port}") as driver:
                out.append(step(driver, kind, args))
        return out

    def decisions(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [
            (e["service"], e.get("tag"), e["decision"], e["rule"], e.get("values"))
            for e in events
            if e["decision"] == "deny" or e["service"] == "write_tag"
        ]

    repeated = await in_thread(one_connection)
    seen = len(lab.audit_events(event="decision"))
    fresh = await in_thread(fresh_connections)
    assert repeated == fresh
    assert repeated[1] == [("Setpoint", 1000, False, False)]
    assert repeated[3][0][3] and repeated[7][0][3]  # Batch_ID and the write of 1600 refused, each time
    assert repeated[9] == [("Setpoint", 1200, False, False)]
    events = lab.audit_events(event="decision")
    assert decisions(events[:seen]) == decisions(events[seen:])
    assert [e[2] for e in decisions(events[:seen])].count("deny") == 5
    # The refused write never reached the device, on either pass.
    assert [w.data[-4:] for w in plc.writes("Setpoint")] == [
        struct.pack("<i", v) for v in (1200, 1200, 1000)
    ] * 2


async def test_allowed_reads_are_aggregated_refused_ones_are_not(lab: Lab, plc: EnipSim) -> None:
    """With read aggregation on, a polled Read Tag (decided once, its decision kept) is audited as one
    aggregated record per tag, rule and interval with its count; every refusal has a record of its own."""
    await lab.start_gateway(enip_policy_text(plc.port, RULES), aggregate_reads_s=1.0)
    port = await lab.start_agent("alice", "plc-2", "enip")

    def poll() -> list[tuple[Any, bool]]:
        with LogixDriver(f"127.0.0.1:{port}") as driver:
            out = [(driver.read("Setpoint").value, False) for _ in range(6)]
            for _ in range(2):  # one Multiple Service Packet each
                out += [(t.value, t.error is not None) for t in driver.read("Setpoint", "Mode")]
            out += [(None, privileged(driver.read("Batch_ID").error)) for _ in range(3)]
            return out

    values = await in_thread(poll)
    assert values[:6] == [(1000, False)] * 6 and all(not failed for _, failed in values[6:10])
    assert values[6] == (1000, False)
    assert values[10:] == [(None, True)] * 3
    assert lab.gateway is not None
    await lab.gateway.stop()  # a clean stop writes the interval's aggregates
    lab.gateway = None
    logged = [orjson.loads(line) for line in lab.audit_path.read_bytes().splitlines() if line]
    events = [
        e for e in logged if e.get("event") == "decision" and e.get("tag") in ("Setpoint", "Mode", "Batch_ID")
    ]
    setpoint = [e for e in events if e["tag"] == "Setpoint"]
    assert len(setpoint) == 1 and setpoint[0]["aggregated"] is True and setpoint[0]["count"] == 8
    assert setpoint[0]["decision"] == "allow" and setpoint[0]["identity"] == ALICE
    mode = [e for e in events if e["tag"] == "Mode"]
    assert len(mode) == 1 and mode[0]["count"] == 2
    refused = [e for e in events if e["tag"] == "Batch_ID"]
    assert len(refused) == 3 and all(e["decision"] == "deny" and e["rule"] == "no-secrets" for e in refused)
    assert not any(e.get("aggregated") for e in refused)


def _setpoint_reads(plc: EnipSim) -> int:
    """Read Tags of Setpoint that reached the simulator."""
    return len([r for r in plc.received if r.service in (0x4C, 0x52) and (r.tag or "").lower() == "setpoint"])


def _count_decisions(monkeypatch: pytest.MonkeyPatch, tag: str) -> list[str]:
    """The decisions the gateway makes on Read Tags of ``tag`` from now on (their verdicts)."""
    made: list[str] = []
    decide = SubjectView.decide_enip

    def counting(view: SubjectView, request: CipRequest, now: float) -> Any:
        decision = decide(view, request, now)
        if request.tag == tag:
            made.append(decision.verdict)
        return decision

    monkeypatch.setattr(SubjectView, "decide_enip", counting)
    return made


async def test_a_repeated_read_is_decided_once_per_view(
    lab: Lab, plc: EnipSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a policy without time windows, a polled Read Tag's decision is kept for its repeats on the
    session (the same bytes decide the same under the same view), and made again under a new view."""
    made = _count_decisions(monkeypatch, "Setpoint")
    port = await _lab(lab, plc)
    assert lab.gateway is not None

    def reads(n: int) -> list[tuple[Any, ...]]:
        return [(t.value, t.error) for t in (driver.read("Setpoint") for _ in range(n))]

    driver = LogixDriver(f"127.0.0.1:{port}")
    await in_thread(driver.open)
    try:
        assert await in_thread(lambda: reads(5)) == [(1000, None)] * 5
        assert made == ["allow"]
        # Refused now: a new view decides afresh, and the refusal reaches the client.
        lab.policy_path.write_text(enip_policy_text(plc.port, RULES.replace('tag = "Batch_ID"', 'tag = "*"')))
        assert await lab.gateway.reload_policy("test")
        assert [privileged(error) for _, error in await in_thread(lambda: reads(2))] == [True, True]
        assert made == ["allow", "deny", "deny"]
    finally:
        await in_thread(driver.close)
    assert _setpoint_reads(plc) == 5


async def test_a_repeated_read_is_decided_again_when_a_window_opens_or_closes(
    lab: Lab, plc: EnipSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rule with a time window may decide the same bytes otherwise a moment later: a repeat's decision
    is kept only until the next instant a window of the view opens or closes (or the clock is set back
    before the decision), and the read stops at the window's end on the same connection."""
    berlin = ZoneInfo("Europe/Berlin")
    clock = FakeClock(datetime(2026, 11, 25, 10, 0, tzinfo=berlin))  # a Wednesday, on shift
    when = 'when = { days = "mon-fri", hours = "06:00-18:00", tz = "Europe/Berlin" }'
    shift = RULES.replace(
        'enip = [{ preset = "read-only" }]', f'enip = [{{ preset = "read-only" }}]\n{when}', 1
    )
    made = _count_decisions(monkeypatch, "Setpoint")
    await lab.start_gateway(enip_policy_text(plc.port, shift), clock=clock)
    port = await lab.start_agent("alice", "plc-2", "enip")

    def at(hour: int, minute: int = 0, second: float = 0.0) -> None:
        clock.set(datetime(2026, 11, 25, hour, minute, tzinfo=berlin))
        clock.now += second

    def read(driver: LogixDriver) -> tuple[Any, bool]:
        tag = driver.read("Setpoint")
        return tag.value, privileged(tag.error)

    def poll() -> list[tuple[Any, bool]]:
        with LogixDriver(f"127.0.0.1:{port}") as driver:
            out = [read(driver) for _ in range(3)]  # 10:00, on shift: decided once
            at(17, 59, 59.875)  # the last moment of the shift: still the same span
            out.append(read(driver))
            at(9, 0)  # the clock set back: decided again
            out.append(read(driver))
            at(19, 0)  # the shift is over
            out += [read(driver) for _ in range(2)]
            return out

    assert await in_thread(poll) == [(1000, False)] * 5 + [(None, True)] * 2
    assert made == ["allow", "allow", "deny", "deny"]
    assert _setpoint_reads(plc) == 5
