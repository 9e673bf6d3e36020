"""docs/policy.md's OPC UA text holds: the error lines it shows are the loader's, and its examples decide
as their prose says."""

from __future__ import annotations

import re
from pathlib import Path

from asyncua import ua

from policies import Policy, parse_policy
from protocols.opcua.operations import Operation
from tests.policies.opcua_helpers import call, monitor, namespaces, opcua_head, read, write
from tests.policies.policy_helpers import ALICE, at
from tests.policies.test_policy_opcua_loader import entry_issue, only_issue

DOC = (Path(__file__).resolve().parents[2] / "docs" / "policy.md").read_text()
LINE1 = "urn:plant1:line1"
NS = namespaces("urn:other", LINE1)  # the line's namespace at index 2
CAROL = "spiffe://plant1.example/user/carol"
EVE = "spiffe://plant1.example/vendor/acme/eve"
THURSDAY_MORNING = at("2026-11-26T07:30", "Europe/Berlin")


def test_the_documented_error_lines_are_the_loaders() -> None:
    shown = dict(re.findall(r"^policy\.toml:\d+: rules\[3\]\.opcua\[\d\]\.(\w+): (.*)$", DOC, re.M))
    entries = {
        "service": '{ service = "Reed" }',
        "node": '{ service = "Read", node = "ns=2;s=Plant.*" }',
        "service_set": '{ preset = "read-write", service_set = "NodeManagement" }',
    }
    assert shown.keys() == entries.keys()
    for field, entry in entries.items():
        assert entry_issue(entry)[2] == shown[field]
    (asset_message,) = re.findall(r"^policy\.toml:\d+: assets\.opc-1\.security_policy: (.*)$", DOC, re.M)
    assert only_issue(opcua_head(asset_extra='security_policy = "Basic256"'))[2] == asset_message


def doc_policy() -> Policy:
    top, *examples = re.findall(r"```toml\n(.*?)```", DOC, re.S)
    opc = [example for example in examples if 'assets = ["opc-1"]' in example]
    groups = f'engineers = ["{CAROL}"]\n'
    return parse_policy(top.replace("[groups]\n", "[groups]\n" + groups) + "\n" + "\n".join(opc))


def decide(p: Policy, subject: str, operation: Operation, now: float = THURSDAY_MORNING) -> str:
    view = p.view(subject, "opc-1")
    assert view is not None
    decision = view.decide_opcua(operation, NS, now)
    return f"{decision.verdict} {decision.rule_id}"


def test_the_operator_example() -> None:
    p = doc_policy()
    assert decide(p, ALICE, Operation("Browse", 0, None, ua.NodeId(85, 0))).startswith("allow")
    assert decide(p, ALICE, read("Plant.Line1.Tank1.Level")).startswith("allow")
    assert decide(p, ALICE, monitor("Plant.Line1.Tank1.Level")).startswith("allow")
    assert decide(p, ALICE, write("Plant.Line1.Tank1.Setpoint", 1200.0, ua.VariantType.Double)).startswith(
        "allow"
    )
    assert decide(p, ALICE, write("Plant.Line1.Tank1.Setpoint", 3000.0, ua.VariantType.Double)).startswith(
        "deny"
    )
    assert decide(p, ALICE, call("Plant.Line1.Tank1", "Plant.Line1.Tank1.Stop")).startswith("allow")
    assert decide(p, ALICE, call("Plant.Line1.Alarms.High", 9111, method_index=0)).startswith("allow")
    assert decide(p, ALICE, call("Plant.Line1.Tank1", 9111, method_index=0)).startswith("deny")
    assert decide(p, ALICE, read("Plant.Recipes.R1")) == "deny no-one-reads-opc-recipes"
    assert decide(p, ALICE, monitor("Plant.Recipes.R1")) == "deny no-one-reads-opc-recipes"
    saturday = at("2026-11-28T12:00", "Europe/Berlin")
    assert decide(p, ALICE, read("Plant.Line2.Tank1.Level"), saturday).startswith("deny")


def test_the_vendor_and_commissioning_examples() -> None:
    p = doc_policy()
    path = ("Objects", "Plant", "Line1", "Tank1", "Level")
    view = p.view(EVE, "opc-1")
    assert view is not None and view.needs_browse_paths("Read")
    assert view.decide_opcua(read("x"), NS, THURSDAY_MORNING, path).verdict == "allow"
    assert view.decide_opcua(read(2256, index=0), NS, THURSDAY_MORNING).verdict == "allow"
    assert view.decide_opcua(monitor(2253, 12, 0), NS, THURSDAY_MORNING).verdict == "allow"
    assert (
        view.decide_opcua(write("x", 1.0, ua.VariantType.Double), NS, THURSDAY_MORNING, path).verdict
        == "deny"
    )
    engineer = p.view(CAROL, "opc-1")
    assert engineer is not None
    saturday = at("2026-11-28T10:00", "Europe/Berlin")
    assert engineer.decide_opcua_service("AddNodes", saturday).verdict == "allow"
    assert engineer.decide_opcua_service("AddNodes", THURSDAY_MORNING).verdict == "deny"
    text = ua.Variant(ua.LocalizedText("Tank 1"), ua.VariantType.LocalizedText)
    assert (
        engineer.decide_opcua(write("Plant.Line1.Tank1", text, attribute=4), NS, saturday).verdict == "allow"
    )
