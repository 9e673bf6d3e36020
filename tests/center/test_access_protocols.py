"""Just-in-time vendor access to EtherNet/IP and OPC UA assets, on a center process, a gateway, an
agent and the simulators, all on loopback: the vendor's pycomm3 and asyncua (through an agent that holds
the grant's certificate) work inside the grant, writes outside it are refused in each protocol's terms
(CIP status 0x0F; OPC UA BadUserAccessDenied per operation, a ServiceFault for a service not granted),
and the gateway cuts the sessions at the window's end. Requests outside ``[vendor_access]`` are refused
naming the operation, malformed operations get a 400 naming the bad part and change nothing, and the
policy's ``[[tests]]`` run on every revision that carries such grants."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from asyncua import Client, ua
from asyncua.ua.uaerrors import UaStatusCodeError
from pycomm3 import LogixDriver

from gateway.agent import Agent
from gateway.center.client import CenterClient, CenterError
from gateway.config import AgentConfig, AgentListener
from gateway.credentials import Credentials, make_csr
from gateway.lab.sim.enip import EnipSim
from gateway.lab.sim.opcua import NAMESPACE_URI, OpcUaSim
from gateway.server import Gateway
from tests.center.harness import ALICE, TD, Site, eventually
from tests.peers.modbus_server import REPO_ROOT

T = TypeVar("T")
ACME = f"spiffe://{TD}/vendor/acme/jo"
BOB = f"spiffe://{TD}/user/bob"
GATEWAY_ID = f"spiffe://{TD}/gateway/site1/gw-1"
TANK = "Plant.Line1.Tank1"
NODE = f"nsu={NAMESPACE_URI};s={TANK}"
DENIED = ua.StatusCodes.BadUserAccessDenied
ENIP_OPS = "read Setpoint, Tank1_Level, write Setpoint 0..1500"
OPCUA_OPS = f"read {NODE}.*, write {NODE}.Setpoint 0..1500, subscribe"
WINDOW_S = 16.0  # long enough for a client to start on a shared machine; the test waits for its end


def _policy(enip_port: int, opcua_port: int) -> str:
    return f"""
trust_domain = "{TD}"

[assets.plc-2]
protocol = "enip"
upstream = "127.0.0.1:{enip_port}"
route = "1/0"

[assets.opc-1]
protocol = "opcua"
upstream = "opc.tcp://127.0.0.1:{opcua_port}/"

[assets.opc-2]
protocol = "opcua"
upstream = "opc.tcp://127.0.0.1:{opcua_port}/"

[[rules]]
id = "operators-read"
subjects = ["{ALICE}"]
assets = ["plc-2", "opc-1"]
enip = [{{ preset = "read-only" }}]
opcua = [{{ preset = "read-only" }}]

[vendor_access]
subjects = ["spiffe://{TD}/vendor/*"]
assets = ["plc-2", "opc-1"]
max_window_s = 7200
enip = [
  {{ preset = "read-only", tag = ["Setpoint", "Tank1_Level", "Recipe"] }},
  {{ service = ["write_tag", "write_tag_fragmented"], tag = ["Setpoint", "Recipe"], value = "0..1500" }},
]
opcua = [
  {{ service = ["Read", "Write"], namespace = "{NAMESPACE_URI}", node = "Plant.*", value = "0..1500" }},
  {{ service_set = ["View", "MonitoredItem", "Subscription"] }},
]

[[tests]]
name = "no vendor may ever write the recipe on plc-2"
subject = "{ACME}"
asset = "plc-2"
request = {{ service = "write_tag", tag = "Recipe[0]", tag_value = ["5"] }}
expect = "deny"

[[tests]]
name = "no vendor may ever open the drain on opc-1"
subject = "{ACME}"
asset = "opc-1"
request = {{ service = "Write", node = "{NODE}.DrainCommand", ua_value = ["1"] }}
expect = "deny"

[[tests]]
name = "operators can always read the setpoint on plc-2"
subject = "{ALICE}"
asset = "plc-2"
request = {{ service = "read_tag", tag = "Setpoint" }}
expect = "allow"
rule = "operators-read"
"""


class Lab:
    def __init__(self, site: Site, gateway: Gateway, people: dict[str, Credentials]) -> None:
        self.site = site
        self.gateway = gateway
        self.people = people

    async def call(self, who: str, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        client = CenterClient.for_credentials(self.people[who])
        try:
            return await client.call(method, path, body, **kw)
        finally:
            await client.close()

    async def request(self, asset: str, protocol: str, ops: str, for_s: float = 3600) -> dict[str, Any]:
        body = {"asset": asset, "protocol": protocol, "ops": ops, "for_s": for_s, "reason": "commissioning"}
        return dict(await self.call("acme", "POST", "/v1/access", body))

    async def granted(
        self, asset: str, protocol: str, ops: str, for_s: float
    ) -> tuple[dict[str, Any], Agent]:
        """Ask, approve, wait for the revision on the gateway; an agent holding the grant's
        certificate, listening for ``asset``."""
        grant = await self.request(asset, protocol, ops, for_s)
        approved = await self.call("bob", "POST", f"/v1/access/{grant['id']}/approve", {})
        revision = str(approved["revision"])
        await eventually(lambda: self.gateway.policy.revision == revision, what="the grant's revision")
        key, csr = make_csr(ACME)
        answer = await self.call("acme", "POST", f"/v1/access/{grant['id']}/certificate", {"csr": csr})
        credentials = Credentials(self.site.root / f"acme-{grant['id']}")
        credentials.save(key, answer["certificate"], answer["ca"], self.people["acme"].center())
        listener = AgentListener(
            ("127.0.0.1", 0), asset, ("127.0.0.1", self.gateway.port), protocol, GATEWAY_ID
        )
        agent = Agent(
            AgentConfig(
                source=self.site.root / "agent.toml",
                tls=credentials.tls,
                listeners=(listener,),
                connect_timeout_s=5.0,
            )
        )
        await agent.start()

        async def stop() -> None:
            await agent.stop()

        self.site.closers.insert(0, stop)
        return approved, agent

    async def window_end_cut(self, grant: dict[str, Any], protocol: str) -> dict[str, Any]:
        cut = await eventually(
            lambda: self.site.events(self.gateway, event="session_cut", identity=ACME, protocol=protocol),
            timeout_s=grant["not_after"] - time.time() + 15,
            what="the session cut at the window's end",
        )
        assert time.time() >= grant["not_after"]  # the grant's end, not a second early
        assert cut[0]["rule"] == grant["id"] and f"grant {grant['id']} ended" in cut[0]["reason"]
        started = self.site.events(self.gateway, event="session_start", identity=ACME, protocol=protocol)
        assert {e.get("grant") for e in started} == {grant["id"]}
        return dict(cut[0])


@pytest.fixture
async def devices() -> AsyncIterator[tuple[EnipSim, OpcUaSim]]:
    async with EnipSim(static=True) as enip, OpcUaSim(static=True) as opcua:
        yield enip, opcua


async def _lab(site: Site, devices: tuple[EnipSim, OpcUaSim]) -> Lab:
    await site.init()
    await site.start_center()
    await site.push(_policy(devices[0].port, devices[1].port))
    gateway = await site.start_gateway(await site.enroll("gateway", GATEWAY_ID, "gw-1"), "gw-1")
    people = {
        "acme": await site.enroll("vendor", ACME, "acme"),
        "bob": await site.enroll("approver", BOB, "bob"),
    }
    return Lab(site, gateway, people)


async def in_thread(function: Callable[[], T]) -> T:
    async with asyncio.timeout(60):
        return await asyncio.to_thread(function)


def privileged(error: object) -> bool:
    """pycomm3's text for CIP general status 0x0F (privilege violation)."""
    return "Permission denied" in str(error)


async def test_an_enip_grant_lets_pycomm3_work_inside_it_and_ends_with_its_window(
    site: Site, devices: tuple[EnipSim, OpcUaSim], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="pycomm3")
    plc = devices[0]
    lab = await _lab(site, devices)
    grant, agent = await lab.granted("plc-2", "enip", ENIP_OPS, WINDOW_S)
    rule = next(r for r in lab.gateway.policy.rules if r.id == grant["id"])
    assert [e.describe() for e in rule.enip] == [
        "preset read-only; tag Setpoint, Tank1_Level",
        "service write_tag, write_tag_fragmented; tag Setpoint; value 0..1500",
    ]
    port = agent.bound[0][1][1]
    driver = LogixDriver(f"127.0.0.1:{port}", init_program_tags=False)

    def work() -> dict[str, Any]:
        driver.open()  # default start-up: identity, the tag list (names and types, no values)
        return {
            "read": driver.read("Setpoint").value,
            "level": driver.read("Tank1_Level").error,
            "recipe": driver.read("Recipe[0]").error,  # not granted
            "write": driver.write("Setpoint", 1200).error,
            "over": driver.write("Setpoint", 2000).error,  # outside the grant's bounds
            "other": driver.write("Recipe[0]", 5).error,  # a tag the grant does not name
        }

    try:
        out = await in_thread(work)
        assert out["read"] == 1000 and out["level"] is None and out["write"] is None
        assert privileged(out["recipe"]) and privileged(out["over"]) and privileged(out["other"])
        assert plc.tag("Setpoint") == 1200 and plc.tag("Recipe")[0] == 100
        # Refusals of one kind after the first are audited as counts (gateway/refusals.py).
        refused = site.events(lab.gateway, event="decision", decision="deny", identity=ACME)
        assert [(e["service"], e["tag"], e["rule"]) for e in refused] == [
            ("read_tag", "Recipe[0]", grant["id"]),
            ("write_tag", "Setpoint", grant["id"]),
        ]
        assert "value 2000 outside rule" in refused[1]["reason"]

        await lab.window_end_cut(grant, "enip")
        assert not await in_thread(lambda: _reads(driver))
    finally:
        await in_thread(lambda: _quietly(driver.close))


def _reads(driver: LogixDriver) -> bool:
    try:
        return driver.read("Setpoint").error is None
    except Exception:  # pycomm3 raises on a connection the gateway cut
        return False


def _quietly(close: Callable[[], object]) -> None:
    try:
        close()
    except Exception:  # pycomm3 raises closing a connection the gateway cut
        pass


async def test_an_opcua_grant_lets_asyncua_work_inside_it_and_ends_with_its_window(
    site: Site, devices: tuple[EnipSim, OpcUaSim], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="asyncua")
    sim = devices[1]
    lab = await _lab(site, devices)
    grant, agent = await lab.granted("opc-1", "opcua", OPCUA_OPS, WINDOW_S)
    rule = next(r for r in lab.gateway.policy.rules if r.id == grant["id"])
    assert [e.describe() for e in rule.opcua] == [
        f"service Read; node {NODE}.*",
        f"service Write; node {NODE}.Setpoint; value 0..1500",
        "service_set MonitoredItem, Subscription",
    ]
    port = agent.bound[0][1][1]
    ns = sim.namespace_index  # what the vendor's engineering tool knows of the device

    def tank(name: str) -> ua.NodeId:
        return ua.NodeId(f"{TANK}.{name}", ns)

    def write(node: ua.NodeId, value: Any, variant: ua.VariantType = ua.VariantType.Double) -> ua.WriteValue:
        return ua.WriteValue(
            NodeId=node, AttributeId=ua.AttributeIds.Value, Value=ua.DataValue(ua.Variant(value, variant))
        )

    client = Client(f"opc.tcp://127.0.0.1:{port}/", timeout=5)
    await client.connect()
    try:
        assert await client.get_node(tank("Level")).read_value() == sim.value("Level")
        results = await client.uaclient.write(
            ua.WriteParameters(
                NodesToWrite=[
                    write(tank("Setpoint"), 1200.0),
                    write(tank("Setpoint"), 2000.0),  # outside the grant's bounds
                    write(tank("DrainCommand"), True, ua.VariantType.Boolean),  # a node it does not name
                ]
            )
        )
        assert results[0].is_good() and [r.value for r in results[1:]] == [DENIED, DENIED]
        assert sim.value("Setpoint") == 1200.0 and sim.value("DrainCommand") is False
        pump = sim.pump_command
        with pytest.raises(UaStatusCodeError) as fault:  # Call is no service of the grant: a ServiceFault
            await client.uaclient.call(
                [ua.CallMethodRequest(ObjectId=ua.NodeId(TANK, ns), MethodId=tank("Start"))]
            )
        assert fault.value.code == DENIED and sim.pump_command is pump
        subscription = await client.create_subscription(50, None)
        handles = await subscription.subscribe_data_change([client.get_node(tank("Level"))])
        assert isinstance(handles[0], int)  # subscribe, on a node the grant reads

        await lab.window_end_cut(grant, "opcua")
        with pytest.raises(Exception):  # noqa: B017 - asyncua raises what its closed channel gives it
            await client.get_node(tank("Level")).read_value()
    finally:
        try:
            await client.disconnect()
        except Exception:  # the channel is gone
            pass


async def test_requests_outside_vendor_access_and_malformed_ops_per_protocol(
    site: Site, devices: tuple[EnipSim, OpcUaSim]
) -> None:
    lab = await _lab(site, devices)
    before = await site.audit()
    for asset, protocol, ops, message in (
        (
            "plc-2",
            "enip",
            "erase Setpoint",
            "'erase' is no operation on enip assets; expected one of: read TAG, write TAG",
        ),
        ("plc-2", "enip", "read", "'read': expected the tag it acts on"),
        (
            "plc-2",
            "enip",
            "read Line1.*.Speed",
            '\'read Line1.*.Speed\': tag: "Line1.*.Speed": "*" stands only',
        ),
        (
            "plc-2",
            "enip",
            "write Setpoint 0..lots",
            "'write Setpoint 0..lots': value: \"0..lots\": expected a number",
        ),
        ("plc-2", "enip", "service reed_tag Setpoint", 'service[0]: "reed_tag": unknown service name'),
        ("plc-2", "enip", "read Setpoint 0..5", "'read Setpoint 0..5': value: "),
        (
            "opc-1",
            "opcua",
            "read ns=2;s=Line1.*",
            "'read ns=2;s=Line1.*': node: \"ns=2;s=Line1.*\": namespace indices",
        ),
        ("opc-1", "opcua", "read Line1.*", "'read Line1.*': node: node id \"Line1.*\" needs its namespace"),
        ("opc-1", "opcua", f"write {NODE}.Setpoint 0..x", 'value: "0..x": expected a number'),
        ("opc-1", "opcua", "service Reed", "'service Reed': service[0]: \"Reed\": unknown service name"),
        ("opc-1", "opcua", "call Start", "'call' is no operation on opcua assets"),
        ("opc-1", "opcua", f"read {NODE}.Level 0..5", "value: applies to Write or Call"),
        ("opc-1", "enip", "read Setpoint", "asset opc-1 speaks opcua, not enip"),
    ):
        with pytest.raises(CenterError) as refused:
            await lab.request(asset, protocol, ops)
        error = refused.value
        assert error.status == 400 and message in error.message, (ops, error.message)
    assert await site.audit() == before  # bad input changes nothing, not even the audit
    assert (await lab.call("bob", "GET", "/v1/access", params={"state": "all"}))["grants"] == []

    for asset, protocol, ops, message in (
        (
            "plc-2",
            "enip",
            "write Setpoint 0..2000",
            "'write Setpoint 0..2000': write_tag, write_tag_fragmented there is outside",
        ),
        ("plc-2", "enip", "read Tank1_Temp", "'read Tank1_Temp': "),
        ("plc-2", "enip", "service read_modify_write Setpoint 0..7", "read_modify_write there is outside"),
        (
            "opc-1",
            "opcua",
            f"write {NODE}.Setpoint 0..2000",
            f"'write {NODE}.Setpoint 0..2000': Write there is outside",
        ),
        ("opc-1", "opcua", "read nsu=urn:other;s=Plant.X", "Read there is outside"),
        (
            "opc-1",
            "opcua",
            "write nsu=urn:ztgate:sim:plant;s=Plant.Line1.Tank1.Setpoint",
            "Write there is outside",
        ),
        ("opc-1", "opcua", f"service Call {NODE}", "Call there is outside"),
        ("opc-2", "opcua", "browse", "asset opc-2 is not among the [vendor_access] assets"),
    ):
        with pytest.raises(CenterError) as refused:
            await lab.request(asset, protocol, ops)
        error = refused.value
        assert error.status == 403 and message in error.message, (ops, error.message)
        assert "lets be asked for" in error.message or "not among" in error.message
    assert len(await site.audit("grant_request_refused")) == 8


async def test_policy_tests_run_on_revisions_that_carry_enip_and_opcua_grants(
    site: Site, devices: tuple[EnipSim, OpcUaSim], tmp_path: Path
) -> None:
    lab = await _lab(site, devices)
    # Inside [vendor_access], and against a promise of the policy's tests: refused at approval.
    for asset, protocol, ops, test in (
        ("plc-2", "enip", "write Recipe 0..100", "no vendor may ever write the recipe on plc-2"),
        ("opc-1", "opcua", f"write {NODE}.DrainCommand 0..1", "no vendor may ever open the drain on opc-1"),
    ):
        grant = await lab.request(asset, protocol, ops)
        with pytest.raises(CenterError) as refused:
            await lab.call("bob", "POST", f"/v1/access/{grant['id']}/approve", {})
        error = refused.value
        assert error.status == 422 and f'policy test "{test}"' in error.message, error.message
        assert error.body["tests"][0]["rule"] == grant["id"]
    assert (await site.client().call("GET", "/v1/policy/revisions"))["revisions"][0]["revision"] == 1

    # Grants the tests allow become rules of an ordinary revision, whose tests `ztgate policy check` runs.
    for asset, protocol, ops in (("plc-2", "enip", ENIP_OPS), ("opc-1", "opcua", OPCUA_OPS + ", browse")):
        grant = await lab.request(asset, protocol, ops)
        await lab.call("bob", "POST", f"/v1/access/{grant['id']}/approve", {})
    revision = await site.client().call("GET", "/v1/policy/revisions/3")
    assert "enip = [{ preset" in revision["policy"] and 'opcua = [{ service = ["Read"]' in revision["policy"]
    path = tmp_path / "revision-3.toml"
    path.write_text(revision["policy"])
    checked = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway", "policy", "check", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "3 policy test(s) passed" in checked.stdout + checked.stderr, checked.stdout + checked.stderr
