"""``explain_enip``: the decision the gateway would take on a CIP request, and the context around it."""

from __future__ import annotations

from protocols.enip import PortSegment
from protocols.enip.spec import DataType
from tests.policies.enip_helpers import (
    ALICE,
    BOB,
    TD,
    attribute_request,
    by_instance,
    enip_policy,
    forward_open,
    read_tag,
    rule,
    write_structure,
    write_tag,
)
from tests.policies.policy_helpers import at

RULES = (
    rule(
        '{ preset = "read-only", tag = ["Line1.*", "Recipe[0..9]"] },'
        ' { service = "write_tag", tag = "Line1.Speed", value = "0..1500" }',
        "day-shift",
        "group:operators",
        extra='when = { days = "mon-fri", hours = "06:00-18:00", tz = "Europe/Berlin" }\n',
    )
    + rule('{ service = "write_tag", tag = "Recipe[0]" }', "recipe-0", f"spiffe://{TD}/*", effect="deny")
    + rule(
        '{ service = "write_tag", tag = "Line1.Speed", value = "1200..1500" }',
        "trial-cap",
        "group:operators",
        effect="deny",
        extra='mode = "monitor"\n',
    )
)
THURSDAY_MORNING = at("2026-11-26T07:30", "Europe/Berlin")
SATURDAY = at("2026-11-28T12:00", "Europe/Berlin")


def test_explains_an_allow_with_entry_window_and_revision() -> None:
    p = enip_policy(RULES)
    explanation = p.explain_enip(ALICE, "logix-1", read_tag("Recipe[0]", 10), THURSDAY_MORNING)
    assert explanation.decision.verdict == "allow"
    assert explanation.lines[:4] == [
        "decision: allow (forward to the device)",
        "rule: day-shift (allows)",
        "reason: allowed by rule day-shift",
        "entry: preset read-only; tag Line1.*, Recipe[0..9]",
    ]
    assert "asset: logix-1 (enip, upstream 10.0.0.7:44818, route 1/0, mode enforce)" in explanation.lines
    assert "request: read_tag (0x6B/0x4C), tag Recipe[0], 10 elements" in explanation.lines
    assert "rules naming read_tag (0x6B/0x4C):" in explanation.lines
    assert "  day-shift: allow, enforce, window open (mon-fri 06:00-18:00 Europe/Berlin)" in explanation.lines
    assert "recipe-0" not in str(explanation)  # it names write_tag only
    assert explanation.lines[-1] == f"policy: policy.toml revision {p.revision}"


def test_explains_a_deny_rule_in_cip_terms() -> None:
    p = enip_policy(RULES)
    explanation = p.explain_enip(BOB, "logix-1", write_tag("Recipe[0]", [3]), THURSDAY_MORNING)
    assert explanation.lines[:2] == [
        "decision: deny: general status 0x0F (privilege violation), action exception",
        "rule: recipe-0 (deny rule that matches)",
    ]
    assert "entry: service write_tag; tag Recipe[0]" in explanation.lines
    assert "request: write_tag (0x6B/0x4D), tag Recipe[0], values 3" in explanation.lines


def test_explains_a_closest_miss_and_a_monitor_rule() -> None:
    p = enip_policy(RULES)
    out_of_bounds = p.explain_enip(ALICE, "logix-1", write_tag("Line1.Speed", [1600]), THURSDAY_MORNING)
    assert "rule: day-shift (closest miss)" in out_of_bounds.lines
    assert "reason: value 1600 outside rule day-shift (0..1500)" in out_of_bounds.lines
    assert "entry: service write_tag; tag Line1.Speed; value 0..1500" in out_of_bounds.lines
    trial = p.explain_enip(ALICE, "logix-1", write_tag("Line1.Speed", [1300]), THURSDAY_MORNING)
    assert trial.decision.verdict == "allow"
    assert "monitor: rule trial-cap (monitor mode) would deny this request" in trial.lines


def test_explains_a_closed_window_unsupported_services_and_numbers() -> None:
    p = enip_policy(RULES)
    closed = p.explain_enip(ALICE, "logix-1", read_tag("Line1.Speed"), SATURDAY)
    assert "  day-shift: allow, enforce, window closed (mon-fri 06:00-18:00 Europe/Berlin)" in closed.lines
    assert "whose window is closed" in closed.decision.reason
    unknown = p.explain_enip(ALICE, "logix-1", attribute_request(0x4B, 0x64, 1), THURSDAY_MORNING)
    assert unknown.lines[0] == "decision: deny: general status 0x08 (service not supported), action exception"
    assert "rules naming service 0x4B on class 0x64: none for this subject on this asset" in unknown.lines
    number = p.explain_enip(ALICE, "logix-1", by_instance(0x4C, 9), THURSDAY_MORNING)
    assert "request: read_tag (0x6B/0x4C), class 0x6B, instance 9" in number.lines
    assert "tag by instance number 9" in number.decision.reason


def test_explains_values_that_cannot_be_read_floats_and_routes() -> None:
    p = enip_policy(RULES)
    structure = p.explain_enip(ALICE, "logix-1", write_structure("Line1.Speed"), THURSDAY_MORNING)
    assert (
        "request: write_tag (0x6B/0x4D), tag Line1.Speed, writes data whose values the gateway cannot read"
        in (structure.lines)
    )
    floats = p.explain_enip(ALICE, "logix-1", write_tag("Line1.Speed", [float("nan")], DataType.REAL), 0)
    assert "values nan" in str(floats)
    routed = p.explain_enip(ALICE, "logix-1", forward_open((PortSegment(1, b"\x04"),)), THURSDAY_MORNING)
    assert "request: forward_open (0x06/0x54), class 0x06, instance 1, route 1/4" in routed.lines
    assert "reason: route 1/4 leads elsewhere than asset logix-1 (route 1/0)" in routed.lines


def test_explains_a_cloaked_asset() -> None:
    p = enip_policy(RULES)
    explanation = p.explain_enip(
        "spiffe://other.example/user/zed", "logix-1", read_tag("A"), THURSDAY_MORNING
    )
    assert explanation.decision.action == "close"
    assert (
        explanation.lines[0]
        == "decision: deny: the connection is refused at the handshake (the asset is cloaked)"
    )
    assert "request: read_tag (0x6B/0x4C), tag A" in explanation.lines
    unknown = p.explain_enip(ALICE, "logix-9", read_tag("A"), THURSDAY_MORNING)
    assert "asset logix-9 is not defined in this policy" in unknown.decision.reason
