"""``explain_modbus``: the decision the gateway would take, and the context a person needs."""

from __future__ import annotations

from tests.policies.policy_helpers import ALICE, BOB, at, policy, read, write_register

RULES = """
[[rules]]
id = "day-shift"
subjects = ["group:operators"]
assets = ["plc-1"]
modbus = [{ fc = [3, 6], address = "0-99", value = "0-1500" }]
when = { days = "mon-fri", hours = "06:00-18:00", tz = "Europe/Berlin" }

[[rules]]
id = "no-recipes"
effect = "deny"
subjects = ["spiffe://plant1.example/*"]
assets = ["plc-1"]
modbus = [{ fc = 3, address = "50-59" }]

[[rules]]
id = "trial-cap"
effect = "deny"
mode = "monitor"
subjects = ["group:operators"]
assets = ["plc-1"]
modbus = [{ fc = 6, address = "40", value = "1200-65535" }]
"""

THURSDAY_MORNING = at("2026-11-26T07:30", "Europe/Berlin")
SATURDAY = at("2026-11-28T12:00", "Europe/Berlin")


def test_explains_an_allow_with_window_status_and_revision() -> None:
    p = policy(RULES)
    explanation = p.explain_modbus(ALICE, "plc-1", read(3, 0, 10), THURSDAY_MORNING)
    text = str(explanation)
    assert explanation.decision.verdict == "allow"
    assert explanation.lines[0] == "decision: allow (forward to the device)"
    assert "rule: day-shift (allows)" in explanation.lines
    assert "entry: fc 3, 6; address 0-99; value 0-1500" in explanation.lines
    assert "request: FC 3, unit 1, read 0-9" in explanation.lines
    assert "  day-shift: allow, enforce, window open (mon-fri 06:00-18:00 Europe/Berlin)" in explanation.lines
    assert "  no-recipes: deny, enforce, no time window" in explanation.lines
    assert "time: 2026-11-26T06:30:00Z" in explanation.lines
    assert explanation.lines[-1] == f"policy: policy.toml revision {p.revision}"
    assert "trial-cap" not in text  # it names FC 6 only


def test_explains_a_closest_miss_with_its_code() -> None:
    explanation = policy(RULES).explain_modbus(ALICE, "plc-1", write_register(40, 1600), THURSDAY_MORNING)
    assert explanation.lines[0] == "decision: deny: exception 0x03 (illegal data value), action exception"
    assert "rule: day-shift (closest miss)" in explanation.lines
    assert "reason: value 1600 outside rule day-shift (0-1500)" in explanation.lines
    assert "entry: fc 3, 6; address 0-99; value 0-1500" in explanation.lines


def test_explains_a_matching_deny_rule() -> None:
    explanation = policy(RULES).explain_modbus(ALICE, "plc-1", read(3, 55), THURSDAY_MORNING)
    assert explanation.lines[0].startswith("decision: deny: exception 0x02 (illegal data address)")
    assert "rule: no-recipes (deny rule that matches)" in explanation.lines
    assert "entry: fc 3; address 50-59" in explanation.lines


def test_explains_a_closed_window() -> None:
    explanation = policy(RULES).explain_modbus(BOB, "plc-1", read(3, 0), SATURDAY)
    assert explanation.decision.exception_code == 1
    assert "rule: none" in explanation.lines
    assert "window is closed" in explanation.decision.reason
    assert (
        "  day-shift: allow, enforce, window closed (mon-fri 06:00-18:00 Europe/Berlin)" in explanation.lines
    )


def test_explains_what_a_monitor_rule_would_change() -> None:
    explanation = policy(RULES).explain_modbus(ALICE, "plc-1", write_register(40, 1300), THURSDAY_MORNING)
    assert explanation.decision.verdict == "allow"
    assert "monitor: rule trial-cap (monitor mode) would deny this request" in explanation.lines


def test_explains_a_would_deny_on_a_monitor_asset_and_the_unit_mapping() -> None:
    p = policy(RULES, asset_extra='mode = "monitor"\nunit_map = { "1" = 17 }')
    explanation = p.explain_modbus(ALICE, "plc-1", read(3, 55), THURSDAY_MORNING)
    assert "(asset in monitor mode: forwarded and audited)" in explanation.lines[0]
    asset_line = next(line for line in explanation.lines if line.startswith("asset: "))
    assert (
        asset_line == "asset: plc-1 (modbus, upstream 10.0.0.5:502, mode monitor, unit 1 -> device unit 17)"
    )


def test_explains_a_cloaked_asset() -> None:
    p = policy(RULES)
    unknown = p.explain_modbus(ALICE, "plc-9", read(3, 0), THURSDAY_MORNING)
    assert (unknown.decision.verdict, unknown.decision.action) == ("deny", "close")
    assert "asset plc-9 is not defined in this policy" in unknown.decision.reason
    unnamed = p.explain_modbus(ALICE, "plc-2", read(3, 0), THURSDAY_MORNING)
    assert "no rule names asset plc-2 for this subject" in unnamed.decision.reason
    assert unnamed.lines[-1] == f"policy: policy.toml revision {p.revision}"
