"""``explain_opcua``: the decision the gateway would take on an OPC UA service or operation, and the
context around it."""

from __future__ import annotations

import pytest
from asyncua import ua

from tests.policies.opcua_helpers import (
    ALICE,
    NAMESPACES,
    PLANT,
    TD,
    call,
    monitor,
    opcua_policy,
    read,
    rule,
    write,
)
from tests.policies.policy_helpers import at

NS = f'namespace = "{PLANT}"'
RULES = (
    rule(
        f'{{ preset = "read-only", {NS}, node = ["Plant", "Plant.*"] }},'
        f' {{ service = "Write", {NS}, node = "Plant.Line1.Tank1.Setpoint", value = "0..2500" }},'
        f' {{ service = "Call", {NS},'
        ' method = { object = "Plant.Line1.Tank1", method = "Plant.Line1.Tank1.Start" } }',
        "day-shift",
        "group:operators",
        extra='when = { days = "mon-fri", hours = "06:00-18:00", tz = "Europe/Berlin" }\n',
    )
    + rule(
        f'{{ service = "Read", {NS}, node = "Plant.Recipes.*" }}',
        "recipes",
        f"spiffe://{TD}/*",
        effect="deny",
    )
    + rule(
        f'{{ service = "Write", {NS}, node = "Plant.Line1.Tank1.Setpoint", value = "2000..2500" }}',
        "trial-cap",
        "group:operators",
        effect="deny",
        extra='mode = "monitor"\n',
    )
)
THURSDAY_MORNING = at("2026-11-26T07:30", "Europe/Berlin")
SATURDAY = at("2026-11-28T12:00", "Europe/Berlin")
SETPOINT = "Plant.Line1.Tank1.Setpoint"


def test_explains_an_allowed_read_with_entry_namespaces_window_and_revision() -> None:
    p = opcua_policy(RULES)
    explanation = p.explain_opcua(
        ALICE, "opc-1", "Read", read("Plant.Line1.Tank1.Level"), NAMESPACES, THURSDAY_MORNING
    )
    assert explanation.decision.verdict == "allow"
    assert explanation.lines[:4] == [
        "decision: allow (forward to the device)",
        "rule: day-shift (allows)",
        "reason: allowed by rule day-shift",
        f"entry: preset read-only; node nsu={PLANT};s=Plant, nsu={PLANT};s=Plant.*",
    ]
    lines = explanation.lines
    assert (
        "asset: opc-1 (opcua, endpoint opc.tcp://10.0.0.9:4840/plant, security None/None, user anonymous,"
        " mode enforce)"
    ) in lines
    assert f"request: Read, node nsu={PLANT};s=Plant.Line1.Tank1.Level, attribute Value" in lines
    assert f"namespaces: 0 http://opcfoundation.org/UA/, 1 urn:freeopcua:python:server, 2 {PLANT}" in lines
    assert "rules naming Read:" in lines
    assert "  day-shift: allow, enforce, window open (mon-fri 06:00-18:00 Europe/Berlin)" in lines
    assert "  recipes: deny, enforce, no time window" in lines
    assert "trial-cap" not in str(explanation)
    assert lines[-1] == f"policy: policy.toml revision {p.revision}"


def test_explains_a_value_out_of_bounds_with_the_status_code() -> None:
    p = opcua_policy(RULES)
    operation = write(SETPOINT, 3000.0, ua.VariantType.Double)
    explanation = p.explain_opcua(ALICE, "opc-1", "Write", operation, NAMESPACES, THURSDAY_MORNING)
    assert explanation.lines[:4] == [
        "decision: deny: status BadUserAccessDenied (0x801F0000), action exception",
        "rule: day-shift (closest miss)",
        "reason: value 3000.0 outside rule day-shift (0..2500)",
        f"entry: service Write; node nsu={PLANT};s={SETPOINT}; value 0..2500",
    ]
    assert (
        f"request: Write, node nsu={PLANT};s={SETPOINT}, attribute Value, values 3000.0" in explanation.lines
    )


def test_explains_a_deny_rule_a_monitor_rule_and_a_closed_window() -> None:
    p = opcua_policy(RULES)
    denied = p.explain_opcua(ALICE, "opc-1", "Read", read("Plant.Recipes.R1"), NAMESPACES, THURSDAY_MORNING)
    assert denied.lines[1] == "rule: recipes (deny rule that matches)"
    assert denied.lines[3] == f"entry: service Read; node nsu={PLANT};s=Plant.Recipes.*"
    trial = write(SETPOINT, 2200.0, ua.VariantType.Double)
    monitored = p.explain_opcua(ALICE, "opc-1", "Write", trial, NAMESPACES, THURSDAY_MORNING)
    assert monitored.decision.verdict == "allow"
    assert "monitor: rule trial-cap (monitor mode) would deny this request" in monitored.lines
    closed = p.explain_opcua(ALICE, "opc-1", "Read", read("Plant.X"), NAMESPACES, SATURDAY)
    assert closed.decision.rule_id is None
    assert "whose window is closed" in closed.decision.reason
    assert "  day-shift: allow, enforce, window closed (mon-fri 06:00-18:00 Europe/Berlin)" in closed.lines


def test_explains_a_monitored_item_decided_as_a_read() -> None:
    p = opcua_policy(RULES)
    explanation = p.explain_opcua(
        ALICE, "opc-1", "CreateMonitoredItems", monitor("Plant.Recipes.R1"), NAMESPACES, THURSDAY_MORNING
    )
    assert explanation.decision.rule_id == "recipes"
    assert explanation.lines[3] == f"entry: (as a Read) service Read; node nsu={PLANT};s=Plant.Recipes.*"
    assert "rules naming Read (which this service is decided as too):" in explanation.lines


def test_explains_a_service_as_a_whole_and_a_call() -> None:
    p = opcua_policy(RULES)
    service = p.explain_opcua(ALICE, "opc-1", "AddNodes", None, NAMESPACES, THURSDAY_MORNING)
    assert service.lines[0] == "decision: deny: status BadUserAccessDenied (0x801F0000), action exception"
    assert "request: AddNodes (the request as a whole)" in service.lines
    assert not any(line.startswith("namespaces:") for line in service.lines)
    publish = p.explain_opcua(ALICE, "opc-1", "Publish", None, NAMESPACES, THURSDAY_MORNING)
    assert publish.lines[3] == f"entry: preset read-only; node nsu={PLANT};s=Plant, nsu={PLANT};s=Plant.*"
    unknown = p.explain_opcua(ALICE, "opc-1", "Teleport", None, NAMESPACES, THURSDAY_MORNING)
    assert unknown.lines[0] == "decision: deny: status BadServiceUnsupported (0x800B0000), action exception"
    stop = call("Plant.Line1.Tank1", "Plant.Line1.Tank1.Stop")
    refused = p.explain_opcua(ALICE, "opc-1", "Call", stop, NAMESPACES, THURSDAY_MORNING)
    assert "is not a pair of rule day-shift" in refused.decision.reason
    assert refused.lines[3].startswith("entry: service Call; method object nsu=")


def test_cloaked_assets_and_mismatched_operations() -> None:
    p = opcua_policy(RULES)
    cloaked = p.explain_opcua(ALICE, "opc-9", "Read", read("x"), NAMESPACES, SATURDAY)
    assert cloaked.lines[0].startswith("decision: deny: the connection is refused at the handshake")
    assert f"request: Read, node nsu={PLANT};s=x, attribute Value" in cloaked.lines
    with pytest.raises(ValueError, match="a Read operation, not Write"):
        p.explain_opcua(ALICE, "opc-1", "Write", read("x"), NAMESPACES, SATURDAY)
