"""OPC UA end to end: asyncua's Client and python-opcua (independently written clients) through
agent -> gateway -> ``ztgate sim opcua`` (an asyncua server); values, status codes, what the device saw
and audit records asserted."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop
from asyncua import Client, Server, ua
from asyncua.common.subscription import DataChangeNotif
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import nodeid_to_binary, struct_from_binary, struct_to_binary
from asyncua.ua.uaerrors import UaStatusCodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opcua import Client as SyncClient  # type: ignore[import-untyped]
from opcua import ua as sync_ua

from gateway.lab.sim.opcua import OpcUaSim, stop_server
from gateway.opcua.session import MAX_IN_FLIGHT
from protocols.opcua.connection import DEFAULT_MAX_CHUNK_COUNT
from tests.e2e.harness import ALICE, BOB, FakeClock, Lab, Pki, opcua_policy_text
from tests.protocols.opcua.opcua_canned_server import hello, open_request, opn, symmetric

T = TypeVar("T")
PLANT = "urn:ztgate:sim:plant"
NS = f'namespace = "{PLANT}"'
TANK = "Plant.Line1.Tank1"
DENIED = ua.StatusCodes.BadUserAccessDenied

RULES = f"""
[[rules]]
id = "operators-read"
subjects = ["group:operators"]
assets = ["opc-1"]
opcua = [{{ preset = "read-only" }}]

[[rules]]
id = "operators-setpoint"
subjects = ["group:operators"]
assets = ["opc-1"]
opcua = [{{ service = "Write", {NS}, node = "{TANK}.Setpoint", value = "0..1500" }}]

[[rules]]
id = "operators-pump"
subjects = ["group:operators"]
assets = ["opc-1"]
opcua = [
  {{ service = "Call", method = {{ object = {{ {NS}, id = "{TANK}" }},
     method = {{ {NS}, id = ["{TANK}.Start", "{TANK}.Stop"] }} }} }},
]

[[rules]]
id = "no-recipe-data"
effect = "deny"
subjects = ["group:operators"]
assets = ["opc-1"]
opcua = [{{ service = ["Read", "CreateMonitoredItems"], {NS}, node = ["{TANK}.Temperature", "{TANK}.Flow"] }}]
"""


class Recorder:
    """What the device's attribute service was asked for: the proof that refused operations never left
    the gateway."""

    def __init__(self, plc: OpcUaSim) -> None:
        self.reads: list[ua.NodeId] = []
        self.writes: list[ua.WriteValue] = []
        server = plc._running()
        service = server.iserver.attribute_service
        read, write = service.read, service.write

        def recording_read(params: ua.ReadParameters) -> Any:
            self.reads.extend(item.NodeId for item in params.NodesToRead)
            return read(params)

        async def recording_write(params: ua.WriteParameters, *args: Any, **kwargs: Any) -> Any:
            self.writes.extend(params.NodesToWrite)
            return await write(params, *args, **kwargs)

        service.read = recording_read  # type: ignore[method-assign]
        service.write = recording_write  # type: ignore[method-assign]


@pytest.fixture
async def plc() -> AsyncIterator[OpcUaSim]:
    async with OpcUaSim(static=True) as running:
        yield running


async def _lab(lab: Lab, plc: OpcUaSim, rules: str = RULES, who: str = "alice") -> str:
    await lab.start_gateway(opcua_policy_text(plc.port, rules))
    port = await lab.start_agent(who, "opc-1", "opcua")
    return f"opc.tcp://127.0.0.1:{port}/"


def tank(ns: int, name: str = "") -> ua.NodeId:
    return ua.NodeId(f"{TANK}.{name}" if name else TANK, ns)


def read_id(node: ua.NodeId, attribute: int = ua.AttributeIds.Value) -> ua.ReadValueId:
    return ua.ReadValueId(NodeId=node, AttributeId=attribute)


def write_value(node: ua.NodeId, value: Any, attribute: int = ua.AttributeIds.Value) -> ua.WriteValue:
    variant = value if isinstance(value, ua.Variant) else ua.Variant(value, ua.VariantType.Double)
    return ua.WriteValue(NodeId=node, AttributeId=attribute, Value=ua.DataValue(variant))


async def read(client: Client, items: list[ua.ReadValueId]) -> list[ua.DataValue]:
    params = ua.ReadParameters(NodesToRead=items, TimestampsToReturn=ua.TimestampsToReturn.Neither)
    return await client.uaclient.read(params)


def codes(results: list[Any]) -> list[int]:
    return [getattr(result, "StatusCode", result).value for result in results]


class Changes:
    """A subscription handler: data changes per node, awaitable."""

    def __init__(self) -> None:
        self.values: dict[str, list[Any]] = {}
        self._arrived = asyncio.Event()

    def datachange_notification(self, node: Any, value: Any, _data: DataChangeNotif) -> None:
        self.values.setdefault(node.nodeid.Identifier, []).append(value)
        self._arrived.set()

    async def wait_for(self, node: str, value: Any, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while value not in self.values.get(node, []):
                self._arrived.clear()
                await self._arrived.wait()


# ------------------------------------------------------------------------------------ the services


async def test_asyncua_client_browses_reads_writes_calls_and_subscribes(lab: Lab, plc: OpcUaSim) -> None:
    url = await _lab(lab, plc)
    async with Client(url, timeout=5) as client:
        ns = await client.get_namespace_index(PLANT)
        node = client.get_node(tank(ns))
        children = {reference.BrowseName.Name for reference in await node.get_children_descriptions()}
        assert {"Level", "Setpoint", "Start", "Stop", "Acknowledge", "Temperature"} <= children
        assert await client.get_node(tank(ns, "Level")).read_value() == plc.value("Level")

        await client.get_node(tank(ns, "Setpoint")).write_value(ua.Variant(1200.0, ua.VariantType.Double))
        assert plc.value("Setpoint") == 1200.0
        await node.call_method(tank(ns, "Stop"))
        assert plc.pump_command is False
        await node.call_method(tank(ns, "Start"))
        assert plc.pump_command is True

        changes = Changes()
        subscription = await client.create_subscription(50, changes)
        await subscription.subscribe_data_change(client.get_node(tank(ns, "Level")))
        await changes.wait_for(f"{TANK}.Level", plc.value("Level"))  # the initial value
        await plc.set_value("Level", 42.5)
        await changes.wait_for(f"{TANK}.Level", 42.5)
        await subscription.delete()

    write = lab.audit_events(event="decision", service="Write")[0]
    assert write["decision"] == "allow" and write["rule"] == "operators-setpoint"
    assert write["node"] == f"ns={ns};s={TANK}.Setpoint" and write["values"] == "1200.0"
    calls = lab.audit_events(event="decision", service="Call")
    assert [c["method"] for c in calls] == [f"ns={ns};s={TANK}.Stop", f"ns={ns};s={TANK}.Start"]
    assert all(c["rule"] == "operators-pump" and c["identity"] == ALICE for c in calls)


async def test_python_opcua_client_through_the_gateway(lab: Lab, plc: OpcUaSim) -> None:
    url = await _lab(lab, plc)

    def run() -> dict[str, Any]:
        client = SyncClient(url, timeout=5)
        client.connect()
        try:
            ns = client.get_namespace_index(PLANT)
            out: dict[str, Any] = {"level": client.get_node(f"ns={ns};s={TANK}.Level").get_value()}
            setpoint = client.get_node(f"ns={ns};s={TANK}.Setpoint")
            setpoint.set_value(sync_ua.Variant(900.0, sync_ua.VariantType.Double))
            out["setpoint"] = setpoint.get_value()
            try:
                client.get_node(f"ns={ns};s={TANK}.Temperature").get_value()
            except sync_ua.UaStatusCodeError as exc:
                out["temperature"] = exc.code
            children = client.get_node(f"ns={ns};s={TANK}").get_children_descriptions()
            out["children"] = {reference.BrowseName.Name for reference in children}
            return out
        finally:
            client.disconnect()

    out = await in_thread(run)
    assert out["level"] == plc.value("Level") and out["setpoint"] == 900.0 == plc.value("Setpoint")
    assert out["temperature"] == DENIED and "Setpoint" in out["children"]


async def in_thread(function: Callable[[], T]) -> T:
    async with asyncio.timeout(60):
        return await asyncio.to_thread(function)


# ------------------------------------------------------------------------------------- refusals


async def test_a_read_of_ten_nodes_with_two_denied_returns_eight_values(lab: Lab, plc: OpcUaSim) -> None:
    url = await _lab(lab, plc)
    names = ["Level", "Temperature", "Pressure", "Flow", "ScanCounter", "PumpRunning", "InletOpen"]
    names += ["DrainOpen", "AlarmActive", "Setpoint"]
    async with Client(url, timeout=5) as client:
        ns = await client.get_namespace_index(PLANT)
        recorder = Recorder(plc)
        results = await read(client, [read_id(tank(ns, name)) for name in names])
    assert len(results) == 10
    for name, result in zip(names, results, strict=True):
        if name in ("Temperature", "Flow"):
            assert result.StatusCode.value == DENIED and result.Value.Value is None
        else:
            assert result.StatusCode.is_good() and result.Value.Value == plc.value(name), name
    assert {n.Identifier for n in recorder.reads} == {f"{TANK}.{name}" for name in names} - {
        f"{TANK}.Temperature",
        f"{TANK}.Flow",
    }
    refused = lab.audit_events(event="decision", decision="deny", service="Read")
    assert sorted((e["node"], e["index"], e["rule"]) for e in refused) == [
        (f"ns={ns};s={TANK}.Flow", 3, "no-recipe-data"),
        (f"ns={ns};s={TANK}.Temperature", 1, "no-recipe-data"),
    ]


async def test_writes_out_of_bounds_or_of_other_attributes_are_refused_and_the_rest_run(
    lab: Lab, plc: OpcUaSim
) -> None:
    url = await _lab(lab, plc)
    async with Client(url, timeout=5) as client:
        ns = await client.get_namespace_index(PLANT)
        setpoint = tank(ns, "Setpoint")
        recorder = Recorder(plc)
        items = [
            write_value(setpoint, 2000.0),  # over the rule's 0..1500
            write_value(setpoint, ua.Variant(ua.LocalizedText("Hacked"), ua.VariantType.LocalizedText), 4),
            write_value(tank(ns, "DrainCommand"), ua.Variant(True, ua.VariantType.Boolean)),  # no rule
            write_value(setpoint, 1400.0),
        ]
        results = await client.uaclient.write(ua.WriteParameters(NodesToWrite=items))
    assert codes(results)[:3] == [DENIED] * 3 and results[3].is_good()
    assert plc.value("Setpoint") == 1400.0 and plc.value("DrainCommand") is False
    assert [(w.NodeId, w.Value.Value.Value) for w in recorder.writes] == [(setpoint, 1400.0)]
    refused = lab.audit_events(event="decision", decision="deny", service="Write")
    by_index = {e["index"]: e for e in refused}
    assert by_index[0]["rule"] == "operators-setpoint" and by_index[0]["values"] == "2000.0"
    assert "0..1500" in by_index[0]["reason"]
    assert by_index[1]["attribute"] == 4 and "DisplayName" in by_index[1]["reason"]
    assert by_index[2]["node"] == f"ns={ns};s={TANK}.DrainCommand"


async def test_a_method_not_allowed_is_refused_next_to_an_allowed_one(lab: Lab, plc: OpcUaSim) -> None:
    url = await _lab(lab, plc)
    async with Client(url, timeout=5) as client:
        ns = await client.get_namespace_index(PLANT)
        requests = [
            ua.CallMethodRequest(ObjectId=tank(ns), MethodId=tank(ns, "Acknowledge")),
            ua.CallMethodRequest(ObjectId=tank(ns), MethodId=tank(ns, "Stop")),
        ]
        results = await client.uaclient.call(requests)
    assert codes(results) == [DENIED, 0]
    assert plc.pump_command is False
    refused = lab.audit_events(event="decision", decision="deny", service="Call")
    assert [e["method"] for e in refused] == [f"ns={ns};s={TANK}.Acknowledge"]
    assert refused[0]["rule"] == "operators-pump" and "Acknowledge" in refused[0]["reason"]


async def test_a_monitored_item_on_a_denied_node_is_refused_and_its_neighbour_reports(
    lab: Lab, plc: OpcUaSim
) -> None:
    url = await _lab(lab, plc)
    async with Client(url, timeout=5) as client:
        ns = await client.get_namespace_index(PLANT)
        changes = Changes()
        subscription = await client.create_subscription(50, changes)
        nodes = [client.get_node(tank(ns, "Temperature")), client.get_node(tank(ns, "Level"))]
        handles = await subscription.subscribe_data_change(nodes)
        assert isinstance(handles[0], ua.StatusCode) and handles[0].value == DENIED
        assert isinstance(handles[1], int)
        await plc.set_value("Temperature", 99.0)
        await plc.set_value("Level", 12.5)
        await changes.wait_for(f"{TANK}.Level", 12.5)
        assert f"{TANK}.Temperature" not in changes.values
        # Modifying the refused item cannot reach the node either: the gateway decides on the node it
        # remembers for an item id, and it remembers none for this one.
        await subscription.delete()
    refused = lab.audit_events(event="decision", decision="deny", service="CreateMonitoredItems")
    assert [(e["node"], e["rule"]) for e in refused] == [(f"ns={ns};s={TANK}.Temperature", "no-recipe-data")]


async def test_node_management_and_unnamed_services_get_a_service_fault(lab: Lab, plc: OpcUaSim) -> None:
    url = await _lab(lab, plc)
    async with Client(url, timeout=5) as client:
        ns = await client.get_namespace_index(PLANT)
        item = ua.AddNodesItem(
            ParentNodeId=ua.NodeId(ua.ObjectIds.ObjectsFolder),
            ReferenceTypeId=ua.NodeId(ua.ObjectIds.Organizes),
            RequestedNewNodeId=ua.NodeId("Backdoor", ns),
            BrowseName=ua.QualifiedName("Backdoor", ns),
            NodeClass=ua.NodeClass.Object,
            NodeAttributes=ua.ObjectAttributes(),
            TypeDefinition=ua.NodeId(ua.ObjectIds.BaseObjectType),
        )
        with pytest.raises(UaStatusCodeError) as refused:
            await client.uaclient.add_nodes([item])
        assert refused.value.code == DENIED
        with pytest.raises(UaStatusCodeError) as history:
            await client.uaclient.history_update(ua.HistoryUpdateParameters())
        assert history.value.code == DENIED
        assert await client.get_node(tank(ns, "Level")).read_value() == plc.value("Level")  # still served
    add = lab.audit_events(event="decision", service="AddNodes")[0]
    assert add["decision"] == "deny" and add["outcome"] == "refused"
    assert "AddNodes" in add["reason"]


async def test_browse_shows_only_what_the_identity_may_browse(lab: Lab, plc: OpcUaSim) -> None:
    rules = f"""
[[rules]]
id = "line-view"
subjects = ["group:operators"]
assets = ["opc-1"]
opcua = [
  {{ service = ["Browse", "BrowseNext", "Read"], {NS}, node = ["Plant", "Plant.*"] }},
  {{ service = ["Browse", "Read"], node = {{ namespace = 0, id = [84, 85, 2255] }} }},
]
"""
    url = await _lab(lab, plc, rules)
    async with Client(url, timeout=5) as client:
        ns = await client.get_namespace_index(PLANT)
        objects = client.get_node(ua.NodeId(ua.ObjectIds.ObjectsFolder))
        seen = {child.nodeid for child in await objects.get_children()}
        assert seen == {ua.NodeId("Plant", ns)}  # the Server object (i=2253) is not this identity's
        with pytest.raises(UaStatusCodeError) as refused:
            await client.get_node(ua.NodeId(ua.ObjectIds.Server)).read_browse_name()
        assert refused.value.code == DENIED


async def test_user_access_level_and_user_executable_say_what_the_policy_allows(
    lab: Lab, plc: OpcUaSim
) -> None:
    # Flow's value is hidden, its other attributes are not: its UserAccessLevel can be read and must
    # not claim CurrentRead.
    hidden_value = f"""
[[rules]]
id = "no-flow-value"
effect = "deny"
subjects = ["group:operators"]
assets = ["opc-1"]
opcua = [{{ service = "Read", {NS}, node = "{TANK}.Flow", attribute = "Value" }}]
"""
    both = f'["{TANK}.Temperature", "{TANK}.Flow"]'
    rules = RULES.replace(both, f'"{TANK}.Temperature"')
    assert rules != RULES
    url = await _lab(lab, plc, rules + hidden_value)
    user_access, user_executable = ua.AttributeIds.UserAccessLevel, ua.AttributeIds.UserExecutable
    async with Client(url, timeout=5) as client:
        ns = await client.get_namespace_index(PLANT)
        items = [
            read_id(tank(ns, "Setpoint"), user_access),
            read_id(tank(ns, "DrainCommand"), user_access),
            read_id(tank(ns, "Flow"), user_access),
            read_id(tank(ns, "Start"), user_executable),
            read_id(tank(ns, "Acknowledge"), user_executable),
        ]
        values = [result.Value.Value for result in await read(client, items)]
        # Again, the same bytes: a repeat, decided from its cache entry and rewritten as the first was.
        again = [result.Value.Value for result in await read(client, items)]
    assert again == values
    current_read, current_write = ua.AccessLevel.CurrentRead.mask, ua.AccessLevel.CurrentWrite.mask
    assert values[0] & current_read and values[0] & current_write  # operators may write the setpoint
    assert values[1] & current_read and not values[1] & current_write  # the device would; no rule does
    assert not values[2] & current_read  # its value is denied
    assert values[3:] == [True, False]


# ---------------------------------------------------------------------------------- the gateway's own


async def test_endpoints_sessions_and_subscription_ids_are_the_gateways_own(lab: Lab, plc: OpcUaSim) -> None:
    url = await _lab(lab, plc)
    async with Client(url, timeout=5) as client:
        endpoints = await client.get_endpoints()
        assert endpoints and all(str(plc.port) not in e.EndpointUrl for e in endpoints)
        assert all(e.Server.ApplicationUri.startswith("urn:ztgate:gateway:") for e in endpoints)
        subscription = await client.create_subscription(100, Changes())
        assert subscription.subscription_id == 1  # asyncua's server counts its own from 78
        second = await client.create_subscription(100, Changes())
        assert second.subscription_id == 2
        await second.delete()
        await subscription.delete()
        # Deleted, the id means nothing any more, and the device says so in its own terms.
        gone = await client.uaclient.set_publishing_mode(
            ua.SetPublishingModeParameters(PublishingEnabled=False, SubscriptionIds=[1])
        )
        assert codes(gone) == [ua.StatusCodes.BadSubscriptionIdInvalid]


async def test_many_sessions_each_with_their_own_subscription(lab: Lab, plc: OpcUaSim) -> None:
    url = await _lab(lab, plc)
    watched = ["Level", "Pressure", "ScanCounter", "Setpoint", "PumpRunning", "AlarmActive"]
    clients = [Client(url, timeout=5) for _ in watched]
    async with asyncio.timeout(60):
        await asyncio.gather(*(client.connect() for client in clients))
        try:
            ns = await clients[0].get_namespace_index(PLANT)
            handlers = [Changes() for _ in watched]
            for client, handler, name in zip(clients, handlers, watched, strict=True):
                subscription = await client.create_subscription(50, handler)
                assert subscription.subscription_id == 1
                await subscription.subscribe_data_change(client.get_node(tank(ns, name)))
            await plc.step(3)  # every reading changes
            await plc.set_value("Setpoint", 1111.0)
            for handler, name in zip(handlers, watched, strict=True):
                await handler.wait_for(f"{TANK}.{name}", plc.value(name))
                assert set(handler.values) == {f"{TANK}.{name}"}  # nobody else's data
        finally:
            await asyncio.gather(*(client.disconnect() for client in clients))


async def test_a_repeated_read_is_decided_again_after_a_reload_and_when_its_window_closes(
    lab: Lab, plc: OpcUaSim
) -> None:
    # The gateway keeps its decisions on a Read whose bytes repeat: a new policy or a closed window
    # must still refuse the very same bytes.
    read_rule = 'opcua = [{ preset = "read-only" }]'
    shift = RULES.replace(read_rule, read_rule + '\nwhen = { hours = "10:00-10:05" }', 1)
    assert shift != RULES
    no_level = f"""
[[rules]]
id = "no-level"
effect = "deny"
subjects = ["{ALICE}"]
assets = ["opc-1"]
opcua = [{{ service = "Read", {NS}, node = "{TANK}.Level" }}]
"""
    shift += f"""
[[rules]]
id = "pressure-any-time"
subjects = ["{ALICE}"]
assets = ["opc-1"]
opcua = [{{ service = "Read", {NS}, node = "{TANK}.Pressure" }}]
"""
    clock = FakeClock(datetime(2026, 11, 25, 10, 4, 30, tzinfo=UTC))
    gateway = await lab.start_gateway(opcua_policy_text(plc.port, shift), clock=clock)
    port = await lab.start_agent("alice", "opc-1", "opcua")
    async with Client(f"opc.tcp://127.0.0.1:{port}/", timeout=5, watchdog_intervall=600) as client:
        ns = await client.get_namespace_index(PLANT)
        level = [read_id(tank(ns, "Level"))]

        async def level_status() -> int:
            return codes(await read(client, level))[0]

        assert [await level_status() for _ in range(3)] == [0, 0, 0]
        lab.policy_path.write_text(opcua_policy_text(plc.port, shift + no_level))
        assert await gateway.reload_policy("test")
        assert await level_status() == DENIED
        lab.policy_path.write_text(opcua_policy_text(plc.port, shift))
        assert await gateway.reload_policy("test")
        assert await level_status() == 0
        clock.set(datetime(2026, 11, 25, 10, 5, tzinfo=UTC))  # the window's end is exclusive
        assert await level_status() == DENIED
    refusals = lab.audit_events(event="decision", decision="deny", service="Read")
    assert [e["rule"] for e in refusals[:1]] == ["no-level"]
    assert len(refusals) == 2 and refusals[-1]["node"].endswith(f"{TANK}.Level")


async def test_other_identities_get_their_own_decisions(lab: Lab, plc: OpcUaSim) -> None:
    rules = RULES.replace('subjects = ["group:operators"]', f'subjects = ["{ALICE}"]', 1)
    url = await _lab(lab, plc, rules, who="bob")
    async with Client(url, timeout=5) as client:
        ns = plc.namespace_index  # bob may not even read the namespace array
        # bob is an operator: the setpoint rule holds for him; read-only is alice's alone.
        with pytest.raises(UaStatusCodeError) as refused:
            await client.get_node(tank(ns, "Level")).read_value()
        assert refused.value.code == DENIED
    assert lab.audit_events(event="decision", decision="deny", identity=BOB)


# ---------------------------------------------------------------------------------- the upstream


async def test_a_slow_device_gives_bad_timeout_and_its_late_answer_is_dropped(lab: Lab) -> None:
    server = Server()
    await server.init()
    server.set_endpoint("opc.tcp://127.0.0.1:0/")
    index = await server.register_namespace("urn:test:slow")
    calls: list[float] = []

    async def slow(_parent: ua.NodeId) -> list[ua.Variant]:
        calls.append(asyncio.get_running_loop().time())
        await asyncio.sleep(1.0)  # past the asset's response_timeout_s
        return [ua.Variant(True, ua.VariantType.Boolean)]

    device = await server.nodes.objects.add_object(ua.NodeId("Dev", index), "Dev")
    await device.add_method(ua.NodeId("Dev.Slow", index), "Slow", slow, [], [ua.VariantType.Boolean])
    await device.add_variable(ua.NodeId("Dev.Value", index), "Value", 7.0)
    await server.start()
    try:
        assert server.bserver is not None
        rules = """
[[rules]]
id = "operators-slow"
subjects = ["group:operators"]
assets = ["opc-1"]
opcua = [
  { service = "Read" },
  { service = "Call", method = { object = { namespace = "urn:test:slow", id = "Dev" },
    method = { namespace = "urn:test:slow", id = "Dev.Slow" } } },
]
"""
        policy = opcua_policy_text(server.bserver.port, rules, asset_extra="response_timeout_s = 0.3")
        gateway = await lab.start_gateway(policy)
        port = await lab.start_agent("alice", "opc-1", "opcua")
        async with Client(f"opc.tcp://127.0.0.1:{port}/", timeout=5, watchdog_intervall=600) as client:
            ns = await client.get_namespace_index("urn:test:slow")
            dev = client.get_node(ua.NodeId("Dev", ns))

            async def call(after_s: float) -> ua.StatusCode:
                await asyncio.sleep(after_s)
                with pytest.raises(UaStatusCodeError) as late:
                    await dev.call_method(ua.NodeId("Dev.Slow", ns))
                return late.value.code

            # Two in flight on the one device session, with deadlines 0.1 s apart: each times out on its
            # own, the second after the first's timeout.
            codes = await asyncio.gather(call(0.0), call(0.1))
            assert codes == [ua.StatusCodes.BadTimeout] * 2
            pool = gateway.runtime.upstreams.pool_for(gateway.policy.assets["opc-1"])
            deadline = asyncio.get_running_loop().time() + 5
            while pool.late_replies < 2:  # the device answers in its own time: dropped, counted
                assert asyncio.get_running_loop().time() < deadline, "the late answers were never counted"
                await asyncio.sleep(0.05)
            # The device session goes on: the next request is answered.
            assert await client.get_node(ua.NodeId("Dev.Value", ns)).read_value() == 7.0
        assert pool.late_replies == 2 and pool.timeouts == 2
        assert len(calls) == 2  # a call is never sent twice
    finally:
        await stop_server(server)


async def test_device_restart_gives_bad_status_then_service_again(lab: Lab, plc: OpcUaSim) -> None:
    url = await _lab(lab, plc)
    port = plc.port
    # asyncua's client closes itself when its once-a-second ServerState probe fails: a slower probe
    # lets the test watch one session through the outage.
    async with Client(url, timeout=5, watchdog_intervall=600) as client:
        ns = await client.get_namespace_index(PLANT)
        level = client.get_node(tank(ns, "Level"))
        assert await level.read_value() == 50.0
        await plc.stop()
        with pytest.raises(UaStatusCodeError) as down:
            async with asyncio.timeout(10):  # a Bad status, not a hang
                await level.read_value()
        assert down.value.code in (ua.StatusCodes.BadServerNotConnected, ua.StatusCodes.BadTimeout)
        restarted = OpcUaSim(port=port, static=True)
        await restarted.start()
        try:
            await restarted.set_value("Level", 61.0)
            async with asyncio.timeout(20):
                while True:
                    try:
                        value = await level.read_value()
                        break
                    except UaStatusCodeError as error:  # until the gateway's new device session is up
                        assert error.code in (ua.StatusCodes.BadServerNotConnected, ua.StatusCodes.BadTimeout)
                        await asyncio.sleep(0.2)
            assert value == 61.0
        finally:
            await restarted.stop()
    states = [e["state"] for e in lab.audit_events(event="upstream")]
    assert "disconnected" in states


# ---------------------------------------------------------------------------------- bad input


class RawChannel:
    """A hand-driven opc.tcp client over the overlay, for bytes no well-behaved client sends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.channel_id = self.token_id = 0
        self.sequence = 0

    async def message(self, timeout_s: float = 5.0) -> tuple[bytes, bytes]:
        """(message type + chunk type, the whole message) of the next message from the gateway."""
        async with asyncio.timeout(timeout_s):
            header = await self.reader.readexactly(8)
            size = struct.unpack_from("<I", header, 4)[0]
            return header[:4], header + await self.reader.readexactly(size - 8)

    async def closed(self, timeout_s: float = 5.0) -> bool:
        async with asyncio.timeout(timeout_s):
            return await self.reader.read(1) == b""

    async def error(self) -> int:
        """The status of the Error message the gateway sends before it closes the connection."""
        kind, data = await self.message()
        if kind == b"ACKF":  # the Hello before the damage was fine
            kind, data = await self.message()
        assert kind == b"ERRF", kind
        assert await self.closed()
        return struct.unpack_from("<I", data, 8)[0]

    async def handshake(self) -> None:
        self.writer.write(hello())
        kind, _ = await self.message()
        assert kind == b"ACKF"
        self.sequence += 1
        self.writer.write(opn(open_request(), sequence=self.sequence))
        kind, data = await self.message()
        assert kind == b"OPNF"
        self.channel_id = struct.unpack_from("<I", data, 8)[0]
        response = struct_from_binary(ua.OpenSecureChannelResponse, Buffer(_after_sequence(data)))
        self.token_id = response.Parameters.SecurityToken.TokenId

    async def request(
        self, body: bytes, request_id: int, response_type: type[Any], timeout_s: float = 5.0
    ) -> Any:
        """Send one request body in a MSG chunk; its answer: ``response_type``, or a ServiceFault."""
        self.writer.write(self.msg(body, request_id))
        kind, data = await self.message(timeout_s)
        assert kind == b"MSGF", kind
        answer = data[24:]
        if answer.startswith(nodeid_to_binary(ua.NodeId(ua.ObjectIds.ServiceFault_Encoding_DefaultBinary))):
            return struct_from_binary(ua.ServiceFault, Buffer(answer))
        return struct_from_binary(response_type, Buffer(answer))

    async def session(self) -> ua.NodeId:
        """CreateSession and ActivateSession (request ids 2 and 3); the authentication token."""
        create = ua.CreateSessionRequest()
        create.Parameters.ClientDescription = ua.ApplicationDescription(ApplicationUri="urn:test:raw")
        created = await self.request(struct_to_binary(create), 2, ua.CreateSessionResponse)
        token: ua.NodeId = created.Parameters.AuthenticationToken
        activate = ua.ActivateSessionRequest()
        activate.RequestHeader.AuthenticationToken = token
        activated = await self.request(struct_to_binary(activate), 3, ua.ActivateSessionResponse)
        assert activated.ResponseHeader.ServiceResult.is_good()
        return token

    def msg(
        self, body: bytes, request_id: int, chunk_type: bytes = b"F", sequence: int | None = None
    ) -> bytes:
        if sequence is None:
            self.sequence += 1
            sequence = self.sequence
        return symmetric(
            body,
            chunk_type=chunk_type,
            channel_id=self.channel_id,
            token_id=self.token_id,
            sequence=sequence,
            request_id=request_id,
        )


def _after_sequence(opn_chunk: bytes) -> bytes:
    """The body of an OPN chunk (None policy): after the header, the security header and the sequence
    header."""
    uri_length = struct.unpack_from("<i", opn_chunk, 12)[0]
    offset = 16 + max(uri_length, 0)
    for _ in range(2):  # sender certificate, receiver thumbprint: null ByteStrings under policy None
        length = struct.unpack_from("<i", opn_chunk, offset)[0]
        offset += 4 + max(length, 0)
    return opn_chunk[offset + 8 :]


async def raw_channel(lab: Lab) -> RawChannel:
    return RawChannel(*await lab.raw_connection("alice", "opc-1"))


@pytest.fixture
async def served(lab: Lab, plc: OpcUaSim) -> AsyncIterator[tuple[Client, ua.NodeId]]:
    """A gateway with a well-behaved client reading away, to show bad input costs it nothing."""
    url = await _lab(lab, plc)
    client = Client(url, timeout=5)
    await client.connect()
    try:
        yield client, tank(await client.get_namespace_index(PLANT), "Level")
    finally:
        await client.disconnect()


BAD_INPUT: dict[str, Callable[[RawChannel], bytes]] = {
    "garbage instead of a Hello": lambda _raw: b"GET / HTTP/1.1\r\nHost: plc\r\n\r\n" + bytes(64),
    "a chunk header claiming 1 GiB": lambda _raw: b"HELF" + struct.pack("<I", 1 << 30),
    "MSG before any secure channel": lambda _raw: (
        hello() + symmetric(b"\x01\x00\x77\x02", channel_id=1, token_id=1, sequence=1, request_id=1)
    ),
}
BAD_INPUT_STATUS = {
    "garbage instead of a Hello": ua.StatusCodes.BadTcpMessageTypeInvalid,
    "a chunk header claiming 1 GiB": ua.StatusCodes.BadTcpMessageTooLarge,
    "MSG before any secure channel": ua.StatusCodes.BadTcpSecureChannelUnknown,
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
async def test_bad_bytes_before_the_channel_get_an_error_message_and_close(
    lab: Lab, served: tuple[Client, ua.NodeId], case: str
) -> None:
    client, level = served
    raw = await raw_channel(lab)
    raw.writer.write(BAD_INPUT[case](raw))
    assert await raw.error() == BAD_INPUT_STATUS[case]
    assert await client.get_node(level).read_value() == 50.0
    assert lab.audit_events(event="protocol_error", side="client")


async def test_out_of_order_and_flooding_chunks_on_an_open_channel(
    lab: Lab, served: tuple[Client, ua.NodeId]
) -> None:
    client, level = served
    # A sequence number that skips ahead.
    raw = await raw_channel(lab)
    await raw.handshake()
    raw.writer.write(raw.msg(struct_to_binary(ua.ReadRequest()), 2, sequence=raw.sequence + 5))
    assert await raw.error() == ua.StatusCodes.BadSequenceNumberInvalid
    # A second Issue on an open channel.
    raw = await raw_channel(lab)
    await raw.handshake()
    raw.sequence += 1
    raw.writer.write(opn(open_request(), channel_id=raw.channel_id, sequence=raw.sequence))
    assert await raw.error() == ua.StatusCodes.BadRequestTypeInvalid
    # Intermediate chunks past the chunk count limit, none of them final.
    raw = await raw_channel(lab)
    await raw.handshake()
    piece = bytes(8000)
    raw.writer.write(b"".join(raw.msg(piece, 3, chunk_type=b"C") for _ in range(DEFAULT_MAX_CHUNK_COUNT + 1)))
    assert await raw.error() == ua.StatusCodes.BadRequestTooLarge
    assert await client.get_node(level).read_value() == 50.0


async def test_an_unknown_service_gets_a_service_fault_and_the_channel_goes_on(
    lab: Lab, served: tuple[Client, ua.NodeId]
) -> None:
    client, level = served
    raw = await raw_channel(lab)
    await raw.handshake()
    unknown = nodeid_to_binary(ua.NodeId(ua.Int32(9999))) + struct_to_binary(ua.RequestHeader())
    fault = await raw.request(unknown, 2, ua.ServiceFault)
    assert isinstance(fault, ua.ServiceFault)
    assert fault.ResponseHeader.ServiceResult.value == ua.StatusCodes.BadServiceUnsupported
    # Still open: a Read without a session is answered, not dropped.
    fault = await raw.request(struct_to_binary(ua.ReadRequest()), 3, ua.ReadResponse)
    assert isinstance(fault, ua.ServiceFault)
    assert fault.ResponseHeader.ServiceResult.value == ua.StatusCodes.BadSessionNotActivated
    assert await client.get_node(level).read_value() == 50.0


async def test_a_request_under_another_authentication_token_is_refused_every_time(
    lab: Lab, served: tuple[Client, ua.NodeId]
) -> None:
    client, level = served
    raw = await raw_channel(lab)
    await raw.handshake()

    async def answer(request: Any, request_id: int, response_type: type[Any]) -> Any:
        return await raw.request(struct_to_binary(request), request_id, response_type)

    token = await raw.session()

    def read(with_token: ua.NodeId) -> ua.ReadRequest:
        request = ua.ReadRequest()
        request.RequestHeader.AuthenticationToken = with_token
        request.Parameters.NodesToRead = [read_id(level)]
        return request

    forged = ua.NodeId(b"\x00" * 32, 1, ua.NodeIdType.ByteString)
    # Twice each, interleaved: the second of each is a repeat the gateway has seen (and kept) before.
    for request_id in (4, 6):
        good = await answer(read(token), request_id, ua.ReadResponse)
        assert good.Results[0].Value.Value == 50.0
        refused = await answer(read(forged), request_id + 1, ua.ReadResponse)
        assert isinstance(refused, ua.ServiceFault)
        assert refused.ResponseHeader.ServiceResult.value == ua.StatusCodes.BadSessionIdInvalid
    assert await client.get_node(level).read_value() == 50.0


async def test_requests_outside_the_clients_session_are_refused_and_audited(lab: Lab, plc: OpcUaSim) -> None:
    """asyncua's client, driven step by step: a Read before ActivateSession, and one under a token that is
    not the session's, get their ServiceFaults, and each refusal is in the audit with its status and why;
    the session goes on."""
    url = await _lab(lab, plc)
    client = Client(url, timeout=5, watchdog_intervall=600)
    level = tank(2, "Level")  # the simulator's namespace, index 2 on the device
    params = ua.ReadParameters(NodesToRead=[read_id(level)])
    await client.connect_socket()
    try:
        await client.send_hello()
        await client.open_secure_channel()
        await client.create_session()
        with pytest.raises(UaStatusCodeError) as early:
            await client.uaclient.read(params)
        assert early.value.code == ua.StatusCodes.BadSessionNotActivated
        await client.activate_session()
        assert (await client.uaclient.read(params))[0].Value.Value == 50.0
        protocol = client.uaclient.protocol
        assert protocol is not None
        token = protocol.authentication_token
        protocol.authentication_token = ua.NodeId(b"\x01" * 32, 1, ua.NodeIdType.ByteString)
        with pytest.raises(UaStatusCodeError) as forged:
            await client.uaclient.read(params)
        assert forged.value.code == ua.StatusCodes.BadSessionIdInvalid
        protocol.authentication_token = token
        assert (await client.uaclient.read(params))[0].Value.Value == 50.0
    finally:
        await client.disconnect()
    refused = [
        (e["service"], e["code"], e["reason"], e["outcome"], e["rule"])
        for e in lab.audit_events(event="decision", decision="deny")
    ]
    assert refused == [
        (
            "Read",
            ua.StatusCodes.BadSessionNotActivated,
            "no activated session on this channel",
            "refused",
            None,
        ),
        (
            "Read",
            ua.StatusCodes.BadSessionIdInvalid,
            "authentication token of no session on this channel",
            "refused",
            None,
        ),
    ]
    end = await lab.wait_for_event(event="session_end", protocol="opcua")
    assert end["denied"] == 2


async def test_a_device_that_never_answers_gives_bad_server_not_connected(lab: Lab) -> None:
    """A device that takes the TCP connection and then says nothing: the gateway never gets its namespace
    array, so it cannot tell which node a request names. An asyncua client's Read is answered
    BadServerNotConnected - what the device's state is - and audited as allowed but unanswered, never as
    a policy's refusal."""
    silent: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)

    device = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        port = device.sockets[0].getsockname()[1]
        rules = f"""
[[rules]]
id = "operators-level"
subjects = ["group:operators"]
assets = ["opc-1"]
opcua = [{{ service = "Read", {NS}, node = "{TANK}.Level" }}]
"""
        await lab.start_gateway(opcua_policy_text(port, rules, asset_extra="connect_timeout_s = 0.5"))
        agent_port = await lab.start_agent("alice", "opc-1", "opcua")
        async with Client(f"opc.tcp://127.0.0.1:{agent_port}/", timeout=5, watchdog_intervall=600) as client:
            with pytest.raises(UaStatusCodeError) as down:
                await read(client, [read_id(tank(2, "Level"))])
            assert down.value.code == ua.StatusCodes.BadServerNotConnected
        assert silent, "the device never saw the gateway"
    finally:
        for writer in silent:
            writer.close()
        device.close()
        await device.wait_closed()
    assert lab.audit_events(event="decision", decision="deny") == []
    (unanswered,) = lab.audit_events(event="decision", service="Read")
    assert (unanswered["decision"], unanswered["outcome"]) == ("allow", "device unavailable")


async def test_requests_past_the_in_flight_limit_in_one_read_are_all_answered(
    lab: Lab, served: tuple[Client, ua.NodeId]
) -> None:
    """More requests in one read than may be on their way to the device at once: the session stops
    reading at the limit, and what was already read is answered once answers make room, without the
    client sending anything more."""
    client, level = served
    raw = await raw_channel(lab)
    await raw.handshake()
    token = await raw.session()
    count = MAX_IN_FLIGHT + 8
    reads = []
    for handle in range(1, count + 1):
        read = ua.ReadRequest()
        read.RequestHeader.AuthenticationToken = token
        read.RequestHeader.RequestHandle = handle
        read.Parameters.NodesToRead = [read_id(level)]
        reads.append(raw.msg(struct_to_binary(read), 100 + handle))
    raw.writer.write(b"".join(reads))
    answered = {}
    for _ in range(count):
        kind, data = await raw.message()
        assert kind == b"MSGF"
        response = struct_from_binary(ua.ReadResponse, Buffer(data[24:]))
        answered[struct.unpack_from("<I", data, 20)[0]] = response
    assert sorted(answered) == [100 + handle for handle in range(1, count + 1)]
    for request_id, response in answered.items():
        assert response.ResponseHeader.RequestHandle == request_id - 100
        assert response.Results[0].Value.Value == 50.0
    assert await client.get_node(level).read_value() == 50.0


def _requests() -> list[bytes]:
    """Well-formed request bodies to damage: the first things any client sends, and a Read."""
    create = ua.CreateSessionRequest()
    create.Parameters.ClientDescription = ua.ApplicationDescription(ApplicationUri="urn:fuzz")
    create.Parameters.SessionName = "fuzz"
    read = ua.ReadRequest()
    read.Parameters.NodesToRead = [read_id(ua.NodeId(f"{TANK}.Level", 2)) for _ in range(3)]
    return [struct_to_binary(create), struct_to_binary(ua.ActivateSessionRequest()), struct_to_binary(read)]


async def _damaged_request(lab: Lab, body: bytes) -> None:
    """One channel, one damaged request in a well-framed chunk: the gateway answers it (a response or a
    ServiceFault) or sends an Error and closes; never silence."""
    raw = await raw_channel(lab)
    try:
        await raw.handshake()
        raw.writer.write(raw.msg(body, 7))
        kind, data = await raw.message()
        if kind == b"ERRF":
            assert await raw.closed()
        else:
            assert kind == b"MSGF" and struct.unpack_from("<I", data, 20)[0] == 7
    finally:
        raw.writer.close()


def test_damaged_requests_through_the_gateway_while_a_client_reads(pki: Pki, tmp_path: Path) -> None:
    # Hypothesis drives plain functions: the lab runs on a loop of this test's own.
    loop = uvloop.new_event_loop()
    lab = Lab(pki, tmp_path)
    plc = OpcUaSim(static=True)
    bodies = _requests()

    async def start() -> Client:
        await plc.start()
        client = Client(await _lab(lab, plc), timeout=5)
        await client.connect()
        return client

    client = loop.run_until_complete(start())
    level = tank(plc.namespace_index, "Level")

    @settings(
        max_examples=60,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        which=st.integers(0, len(bodies) - 1),
        edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=6),
        cut=st.integers(0, 1 << 16),
    )
    def damaged(which: int, edits: list[tuple[int, int]], cut: int) -> None:
        body = bytearray(bodies[which])
        for at, value in edits:
            body[at % len(body)] = value
        body = body[: max(4, len(body) - cut % 8)] if cut % 3 == 0 else body
        loop.run_until_complete(asyncio.wait_for(_damaged_request(lab, bytes(body)), 15))

    try:
        damaged()
        assert loop.run_until_complete(client.get_node(level).read_value()) == 50.0
    finally:
        loop.run_until_complete(client.disconnect())
        loop.run_until_complete(lab.close())
        loop.run_until_complete(plc.stop())
        loop.close()


# ----------------------------------------------------------------- what the gateway maps back


async def test_browse_next_is_decided_on_the_node_its_continuation_point_came_from(
    lab: Lab, plc: OpcUaSim
) -> None:
    rules = f"""
[[rules]]
id = "tank-view"
subjects = ["group:operators"]
assets = ["opc-1"]
opcua = [{{ service = ["Browse", "BrowseNext"], {NS}, node = ["{TANK}", "{TANK}.*"] }}]
"""
    url = await _lab(lab, plc, rules)
    async with Client(url, timeout=5) as client:
        ns = plc.namespace_index
        description = ua.BrowseDescription(
            NodeId=tank(ns),
            BrowseDirection=ua.BrowseDirection.Forward,
            ReferenceTypeId=ua.NodeId(ua.ObjectIds.HierarchicalReferences),
            IncludeSubtypes=True,
            ResultMask=ua.BrowseResultMask.All,
        )
        params = ua.BrowseParameters(NodesToBrowse=[description], RequestedMaxReferencesPerNode=4)
        (first,) = await client.uaclient.browse(params)
        names = [r.BrowseName.Name for r in first.References]
        point = first.ContinuationPoint
        while point:
            next_params = ua.BrowseNextParameters(ContinuationPoints=[point])
            (more,) = await client.uaclient.browse_next(next_params)
            names += [r.BrowseName.Name for r in more.References]
            point = more.ContinuationPoint
        assert len(names) == len(set(names)) and {"Level", "Setpoint", "Start"} <= set(names)
        # A continuation point the gateway never handed out reaches no node: refused, not forwarded.
        (forged,) = await client.uaclient.browse_next(
            ua.BrowseNextParameters(ContinuationPoints=[b"\x01" * 8])
        )
        assert forged.StatusCode.value == DENIED
    refused = lab.audit_events(event="decision", decision="deny", service="BrowseNext")
    assert len(refused) == 1 and "node" not in refused[0]


async def test_modify_monitored_items_is_decided_on_the_node_the_item_watches(
    lab: Lab, plc: OpcUaSim
) -> None:
    rules = f"""
[[rules]]
id = "level-only"
subjects = ["group:operators"]
assets = ["opc-1"]
opcua = [
  {{ service_set = ["Subscription"] }},
  {{ service_set = ["MonitoredItem"], {NS}, node = "{TANK}.Level" }},
  {{ service = "Read", {NS}, node = "{TANK}.Level" }},
]
"""
    url = await _lab(lab, plc, rules)
    async with Client(url, timeout=5) as client:
        ns = plc.namespace_index
        subscription = await client.create_subscription(100, Changes())
        (handle,) = await subscription.subscribe_data_change([client.get_node(tank(ns, "Level"))])
        params = ua.ModifyMonitoredItemsParameters(
            SubscriptionId=subscription.subscription_id,
            ItemsToModify=[
                ua.MonitoredItemModifyRequest(
                    MonitoredItemId=handle,  # asyncua hands out the server's item id
                    RequestedParameters=ua.MonitoringParameters(SamplingInterval=250, QueueSize=1),
                ),
                ua.MonitoredItemModifyRequest(
                    MonitoredItemId=999_999, RequestedParameters=ua.MonitoringParameters(QueueSize=1)
                ),
            ],
        )
        results = await client.uaclient.modify_monitored_items(params)
        assert results[0].StatusCode.is_good() and results[1].StatusCode.value == DENIED
        await subscription.delete()
    allowed = lab.audit_events(event="decision", service="ModifyMonitoredItems", decision="allow")
    assert [e["node"] for e in allowed] == [f"ns={ns};s={TANK}.Level"]


async def test_browse_path_rules_are_decided_on_the_path_the_device_reports(lab: Lab, plc: OpcUaSim) -> None:
    rules = f"""
[[rules]]
id = "line1"
subjects = ["group:operators"]
assets = ["opc-1"]
opcua = [{{ service = "Read", browse_path = "/Objects/{{{PLANT}}}Plant/{{{PLANT}}}Line1" }}]
"""
    url = await _lab(lab, plc, rules)
    async with Client(url, timeout=5) as client:
        ns = plc.namespace_index
        results = await read(client, [read_id(tank(ns, "Level")), read_id(ua.NodeId(ua.ObjectIds.Server))])
    assert results[0].Value.Value == 50.0 and results[1].StatusCode.value == DENIED
    allowed = lab.audit_events(event="decision", service="Read", decision="allow")
    assert [e["rule"] for e in allowed] == ["line1"]


async def test_a_device_answer_after_the_client_closed_its_channel_is_dropped_quietly(
    lab: Lab, served: tuple[Client, ua.NodeId], caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the fuzz campaign: a request on its way to the device, then CloseSecureChannel in the
    same write. The device's answer found the channel closed and the codec's refusal to send on it escaped
    (an "Exception in callback" with a traceback in the gateway's log)."""
    client, level = served
    raw = await raw_channel(lab)
    await raw.handshake()
    token = await raw.session()
    translate = ua.TranslateBrowsePathsToNodeIdsRequest()
    translate.RequestHeader.AuthenticationToken = token
    element = ua.RelativePathElement(TargetName=ua.QualifiedName("Server"))
    translate.Parameters.BrowsePaths = [
        ua.BrowsePath(
            StartingNode=ua.NodeId(ua.ObjectIds.ObjectsFolder), RelativePath=ua.RelativePath([element])
        )
    ]
    message = raw.msg(struct_to_binary(translate), 4)
    close = symmetric(
        struct_to_binary(ua.CloseSecureChannelRequest()),
        message_type=b"CLO",
        channel_id=raw.channel_id,
        token_id=raw.token_id,
        sequence=raw.sequence + 1,
        request_id=5,
    )
    raw.writer.write(message + close)
    async with asyncio.timeout(5):
        await raw.reader.read()  # to the end: the gateway closes the connection after CloseSecureChannel
    await lab.wait_for_event(event="decision", service="TranslateBrowsePathsToNodeIds")
    assert await client.get_node(level).read_value() == 50.0
    errors = [
        r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith(("ztgate", "asyncio"))
    ]
    assert not errors, [r.getMessage() for r in errors]


async def test_node_ids_with_invalid_utf8_are_audited_escaped(
    lab: Lab, served: tuple[Client, ua.NodeId]
) -> None:
    """Found by the fuzz campaign: asyncua decodes invalid UTF-8 in a String NodeId to lone surrogates,
    which the audit writer cannot encode; the decision was replaced by an ``audit_error`` record."""
    raw = await raw_channel(lab)
    await raw.handshake()
    token = await raw.session()
    write = ua.WriteRequest()
    write.RequestHeader.AuthenticationToken = token
    write.Parameters.NodesToWrite = [
        ua.WriteValue(
            NodeId=ua.NodeId("Tank1.SetpoinX", 2),
            AttributeId=ua.AttributeIds.Value,
            Value=ua.DataValue(ua.Variant(1.0, ua.VariantType.Double)),
        )
    ]
    body = struct_to_binary(write).replace(b"SetpoinX", b"Setpoin\xff")
    await raw.request(body, 4, ua.WriteResponse)  # refused: no rule names that node
    event = await lab.wait_for_event(event="decision", service="Write")
    assert event["node"] == "ns=2;s=Tank1.Setpoin\\udcff" and event["decision"] == "deny"
    assert not lab.audit_events(event="audit_error")
