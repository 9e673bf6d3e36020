"""Each rule of docs/policy.md "How a decision is made", one test (or a few) at a time."""

from __future__ import annotations

import pytest

from policies import Decision
from tests.policies.policy_helpers import (
    ALICE,
    ANNA,
    BOB,
    EVE,
    NOON,
    TD,
    at,
    decide,
    device_id,
    diagnostics,
    mask_write,
    no_data,
    opaque,
    outcome,
    policy,
    read,
    read_files,
    read_write,
    write_coil,
    write_files,
    write_register,
    write_registers,
)

ALLOW_ALICE = """
[[rules]]
id = "{id}"
subjects = ["{subject}"]
assets = ["plc-1"]
modbus = [{entries}]
"""


def allow(entries: str, rule_id: str = "r", subject: str = ALICE) -> str:
    return ALLOW_ALICE.format(id=rule_id, subject=subject, entries=entries)


def deny(entries: str, rule_id: str = "d", subject: str = f"spiffe://{TD}/*") -> str:
    return allow(entries, rule_id, subject).replace("[[rules]]\n", '[[rules]]\neffect = "deny"\n')


# ------------------------------------------------------------------------------------------ spans


def test_whole_span_of_a_multi_register_write_must_be_inside() -> None:
    p = policy(allow('{ fc = 16, address = "0-999" }'))
    assert outcome(decide(p, write_registers(990, [1] * 10))) == ("allow", "r", 0)
    denied = decide(p, write_registers(990, [1] * 11))
    assert outcome(denied) == ("deny", "r", 2)
    assert "990-1000" in denied.reason and "0-999" in denied.reason


def test_a_span_may_run_across_adjacent_ranges_but_not_across_a_gap() -> None:
    p = policy(allow('{ fc = 3, address = ["0-9", "10-19", "30-39"] }'))
    assert decide(p, read(3, 5, 10)).verdict == "allow"
    assert decide(p, read(3, 15, 10)).verdict == "deny"


def test_fc23_needs_both_read_and_write_spans_inside() -> None:
    p = policy(allow('{ fc = 23, address = "0-99", value = "0-10" }'))
    assert outcome(decide(p, read_write(0, 10, 50, [1, 2]))) == ("allow", "r", 0)
    assert outcome(decide(p, read_write(95, 10, 50, [1]))) == ("deny", "r", 2)
    assert outcome(decide(p, read_write(0, 10, 99, [1, 2]))) == ("deny", "r", 2)
    assert outcome(decide(p, read_write(0, 10, 50, [1, 11]))) == ("deny", "r", 3)


def test_fc20_every_record_span_in_a_named_file() -> None:
    p = policy(allow('{ fc = 20, file = "1-3", address = "0-99" }'))
    assert decide(p, read_files((1, 0, 10), (3, 90, 10))).verdict == "allow"
    assert outcome(decide(p, read_files((1, 0, 10), (4, 0, 1)))) == ("deny", "r", 2)
    assert outcome(decide(p, read_files((2, 95, 6)))) == ("deny", "r", 2)


def test_fc21_writes_are_value_checked() -> None:
    p = policy(allow('{ fc = 21, file = 2, address = "0-9", value = "0-100" }'))
    assert decide(p, write_files((2, 0, [5, 100]))).verdict == "allow"
    assert outcome(decide(p, write_files((2, 0, [5, 101])))) == ("deny", "r", 3)


def test_requests_without_addresses_pass_an_address_field() -> None:
    p = policy(allow('{ fc = [7, 11, 17], address = "0-9" }'))
    for fc in (7, 11, 17):
        assert decide(p, no_data(fc)).verdict == "allow"


# ----------------------------------------------------------------------------------------- values


def test_every_written_value_is_checked() -> None:
    p = policy(allow('{ fc = [6, 16], address = "40-49", value = "0-1500" }'))
    assert decide(p, write_register(40, 1500)).verdict == "allow"
    assert outcome(decide(p, write_register(40, 1501))) == ("deny", "r", 3)
    assert outcome(decide(p, write_registers(40, [1, 2, 3000, 4]))) == ("deny", "r", 3)
    assert "3000" in decide(p, write_registers(40, [1, 2, 3000, 4])).reason


def test_reads_pass_a_value_field() -> None:
    p = policy(allow('{ fc = [3, 6], address = "40", value = "0-10" }'))
    assert decide(p, read(3, 40)).verdict == "allow"


def test_coil_values_are_zero_and_one() -> None:
    p = policy(allow('{ fc = 5, address = "0-9", value = 0 }'))
    assert decide(p, write_coil(3, on=False)).verdict == "allow"
    assert outcome(decide(p, write_coil(3, on=True))) == ("deny", "r", 3)


def test_mask_write_counts_every_value_the_register_can_end_up_with() -> None:
    p = policy(allow('{ fc = 22, address = "40", value = "0-1500" }'))
    # AND 0x000F, OR 0x0100: the result is 0x0100 plus whatever the low nibble held: 256..271.
    assert decide(p, mask_write(40, 0x000F, 0x0100)).verdict == "allow"
    # AND 0x0FFF keeps bits up to 4095: the register may end above 1500.
    assert outcome(decide(p, mask_write(40, 0x0FFF, 0))) == ("deny", "r", 3)
    # Both extremes (0 and 31) lie in the list below, the values between them do not.
    gapped = policy(allow('{ fc = 22, address = "40", value = ["0-10", "20-40"] }'))
    assert outcome(decide(gapped, mask_write(40, 0x001F, 0))) == ("deny", "r", 3)


def test_deny_on_mask_write_matches_when_any_possible_value_is_inside() -> None:
    rules = allow('{ fc = 22, address = "40" }') + deny('{ fc = 22, value = "100-200" }')
    p = policy(rules)
    assert outcome(decide(p, mask_write(40, 0x00FF, 0))) == ("deny", "d", 3)  # 0..255 covers 100..200
    assert decide(p, mask_write(40, 0x000F, 0)).verdict == "allow"  # 0..15


# ------------------------------------------------------------------------------ presets, FC 8/43


def test_presets_come_from_the_codec_spec() -> None:
    p = policy(allow('{ preset = "read-only" }', "ro") + allow('{ preset = "read-write" }', "rw", BOB))
    for fc in (1, 2, 3, 4):
        assert decide(p, read(fc, 0)).rule_id == "ro"
    assert decide(p, read_files((1, 0, 1))).rule_id == "ro"
    assert decide(p, write_register(0, 1)).exception_code == 1
    for request in (
        write_register(0, 1),
        write_coil(0, on=True),
        mask_write(0, 1, 0),
        read_write(0, 1, 0, [1]),
    ):
        assert decide(p, request, subject=BOB).rule_id == "rw"
    for request in (diagnostics(0), device_id(), opaque(90)):
        assert outcome(decide(p, request, subject=BOB)) == ("deny", None, 1)


def test_preset_and_fc_make_a_union() -> None:
    p = policy(allow('{ preset = "read-only", fc = 90 }'))
    assert decide(p, opaque(90)).verdict == "allow"
    assert decide(p, read(3, 0)).verdict == "allow"


def test_fc8_is_decided_per_sub_function() -> None:
    p = policy(allow("{ fc = 8, subfunction = [0, 11, 12, 13, 14] }"))
    assert decide(p, diagnostics(0)).verdict == "allow"
    assert decide(p, diagnostics(11)).verdict == "allow"
    refused = decide(p, diagnostics(4))  # force listen-only mode
    assert outcome(refused) == ("deny", None, 1)
    assert "sub-function 4" in refused.reason


def test_fc43_is_decided_per_mei_type() -> None:
    p = policy(allow("{ fc = 43, subfunction = 14 }"))
    assert decide(p, device_id(14)).verdict == "allow"
    assert outcome(decide(p, device_id(13))) == ("deny", None, 1)


def test_vendor_codes_need_a_rule_naming_them() -> None:
    p = policy(allow('{ preset = "read-write" }'))
    assert outcome(decide(p, opaque(90))) == ("deny", None, 1)
    assert decide(policy(allow("{ fc = 90 }")), opaque(90)).verdict == "allow"


def test_fc_star_names_every_function_code_and_sub_function() -> None:
    p = policy(allow('{ fc = "*", unit = 1 }') + deny('{ fc = "*" }', "cut", BOB))
    every = (
        read(3, 0),
        write_registers(0, [1, 2]),
        read_files((1, 0, 1)),
        diagnostics(4),  # force listen-only mode: named by "*" without listing sub-functions
        device_id(13),
        no_data(17),
        opaque(90),  # a vendor code
        opaque(127),
    )
    for request in every:
        assert outcome(decide(p, request)) == ("allow", "r", 0), request
        assert outcome(decide(p, request, subject=BOB))[:2] == ("deny", "cut"), request
    assert decide(p, read(3, 0, unit=2)).verdict == "deny"  # the entry's other fields still hold


def test_fc_star_with_subfunction_narrows_only_fc8_and_fc43() -> None:
    p = policy(allow('{ fc = "*", subfunction = [0, 14] }'))
    assert decide(p, diagnostics(0)).verdict == "allow"
    assert decide(p, device_id(14)).verdict == "allow"
    assert outcome(decide(p, diagnostics(4))) == ("deny", None, 1)
    assert decide(p, write_register(0, 1)).verdict == "allow"


# ----------------------------------------------------------------------------- deny rules, codes


def test_deny_wins_over_an_earlier_allow() -> None:
    p = policy(allow('{ preset = "read-only" }') + deny('{ fc = [3, 4], address = "5000-5999" }'))
    assert decide(p, read(3, 4990, 5)).verdict == "allow"
    assert outcome(decide(p, read(3, 4990, 20))) == ("deny", "d", 2)
    assert decide(p, read(1, 5000)).verdict == "allow"  # the deny names FC 3 and 4 only


@pytest.mark.parametrize(
    ("entry", "code"),
    [
        ('{ fc = 6, address = "40", value = "1200-65535" }', 3),
        ('{ fc = 6, address = "40" }', 2),
        ("{ fc = 6, unit = 1 }", 2),
        ("{ fc = 6 }", 1),
    ],
)
def test_deny_code_is_the_most_specific_field_named(entry: str, code: int) -> None:
    p = policy(allow('{ fc = 6, address = "0-99" }') + deny(entry))
    assert outcome(decide(p, write_register(40, 1300))) == ("deny", "d", code)


def test_deny_codes_come_from_the_asset() -> None:
    deny_table = 'deny = { action = "drop", function = 4, address = 5, value = 6 }'
    p = policy(allow('{ fc = 6, address = "0-99", value = "0-10" }'), asset_extra=deny_table)
    assert (decide(p, write_register(40, 11)).exception_code, decide(p, write_register(40, 11)).action) == (
        6,
        "drop",
    )
    assert decide(p, write_register(100, 1)).exception_code == 5
    assert decide(p, read(3, 0)).exception_code == 4


def test_deny_entry_with_value_does_not_match_reads() -> None:
    p = policy(
        allow('{ fc = [3, 6], address = "40" }')
        + deny('{ fc = [3, 6], address = "40", value = "1200-65535" }')
    )
    assert decide(p, read(3, 40)).verdict == "allow"
    assert decide(p, write_register(40, 1199)).verdict == "allow"
    assert outcome(decide(p, write_register(40, 1200))) == ("deny", "d", 3)


def test_the_first_matching_rule_in_file_order_is_reported() -> None:
    p = policy(
        allow('{ fc = 3, address = "0-99" }', "first")
        + allow('{ fc = 3, address = "0-9" }', "second")
        + deny('{ fc = 6, address = "40" }', "deny-1")
        + deny("{ fc = 6 }", "deny-2")
    )
    assert decide(p, read(3, 0)).rule_id == "first"
    assert outcome(decide(p, write_register(40, 1))) == ("deny", "deny-1", 2)


# ------------------------------------------------------------------------------- default deny


def test_default_deny_with_no_rule_naming_the_function() -> None:
    p = policy(allow('{ fc = 3, address = "0-99" }'))
    assert outcome(decide(p, write_register(0, 1))) == ("deny", None, 1)


def test_default_deny_reports_the_closest_miss() -> None:
    p = policy(
        allow('{ fc = 6, address = "0-9" }', "narrow")
        + allow('{ fc = 6, unit = 2, address = "40" }', "other-unit")
        + allow('{ fc = 6, address = "40", value = "0-100" }', "bounded")
        + allow('{ fc = 6, address = "40", value = "0-200" }', "bounded-later")
    )
    # "bounded" allows unit and address: the miss is the value, and it comes first in file order.
    assert outcome(decide(p, write_register(40, 500))) == ("deny", "bounded", 3)
    # Nothing allows address 50: the first entry naming FC 6 is reported, with the address code.
    missed = decide(p, write_register(50, 1))
    assert outcome(missed) == ("deny", "narrow", 2)
    assert "50" in missed.reason and "0-9" in missed.reason


def test_a_unit_not_allowed_by_the_entry_is_an_address_miss() -> None:
    p = policy(allow('{ fc = 3, unit = 2, address = "0-9" }'))
    refused = decide(p, read(3, 0, unit=1))
    assert outcome(refused) == ("deny", "r", 2)
    assert "unit 1" in refused.reason


# ---------------------------------------------------------------------------------- time windows


WORKING_HOURS = """
[[rules]]
id = "day-shift"
subjects = ["group:operators"]
assets = ["plc-1"]
modbus = [{ fc = 3, address = "0-99" }]
when = { days = "mon-fri", hours = "06:00-18:00", tz = "Europe/Berlin" }
"""


def test_window_open_and_closed() -> None:
    p = policy(WORKING_HOURS)
    assert decide(p, read(3, 0), now=at("2026-11-26T06:00", "Europe/Berlin")).verdict == "allow"
    closed = decide(p, read(3, 0), now=at("2026-11-26T05:59:59", "Europe/Berlin"))
    assert outcome(closed) == ("deny", None, 1)
    assert "day-shift" in closed.reason and "closed" in closed.reason
    assert decide(p, read(3, 0), now=at("2026-11-26T18:00", "Europe/Berlin")).verdict == "deny"
    assert decide(p, read(3, 0), now=at("2026-11-28T12:00", "Europe/Berlin")).verdict == "deny"  # Saturday


def test_window_follows_the_wall_clock_across_daylight_saving() -> None:
    p = policy(WORKING_HOURS)
    # Friday before the change (CET, UTC+1) opens 05:00 UTC; Monday after it (CEST, UTC+2) 04:00 UTC.
    assert decide(p, read(3, 0), now=at("2026-03-27T04:59:59")).verdict == "deny"
    assert decide(p, read(3, 0), now=at("2026-03-27T05:00:00")).verdict == "allow"
    assert decide(p, read(3, 0), now=at("2026-03-30T03:59:59")).verdict == "deny"
    assert decide(p, read(3, 0), now=at("2026-03-30T04:00:00")).verdict == "allow"


def test_window_across_midnight_belongs_to_the_day_it_opened() -> None:
    p = policy(WORKING_HOURS.replace('"mon-fri", hours = "06:00-18:00"', '"fri", hours = "22:00-06:00"'))
    friday_night, saturday_morning = (
        at("2026-11-27T23:00", "Europe/Berlin"),
        at("2026-11-28T05:59", "Europe/Berlin"),
    )
    assert decide(p, read(3, 0), now=friday_night).verdict == "allow"
    assert decide(p, read(3, 0), now=saturday_morning).verdict == "allow"
    assert decide(p, read(3, 0), now=at("2026-11-28T06:00", "Europe/Berlin")).verdict == "deny"
    assert (
        decide(p, read(3, 0), now=at("2026-11-27T05:00", "Europe/Berlin")).verdict == "deny"
    )  # Thursday's night
    assert (
        decide(p, read(3, 0), now=at("2026-11-28T23:00", "Europe/Berlin")).verdict == "deny"
    )  # Saturday night


def test_a_deny_rule_outside_its_window_does_not_exist() -> None:
    rules = allow('{ fc = 3, address = "0-99" }') + deny("{ fc = 3 }").replace(
        "modbus = [{ fc = 3 }]", 'modbus = [{ fc = 3 }]\nwhen = { hours = "00:00-06:00" }'
    )
    p = policy(rules)
    assert outcome(decide(p, read(3, 0), now=at("2026-11-26T05:00"))) == ("deny", "d", 1)
    assert decide(p, read(3, 0), now=at("2026-11-26T06:00")).verdict == "allow"


# ------------------------------------------------------------------------------------ monitoring


TRIAL_CAP = """
[[rules]]
id = "trial-setpoint-cap"
effect = "deny"
mode = "monitor"
subjects = ["group:operators"]
assets = ["plc-1"]
modbus = [{ fc = [6, 16], address = "40", value = "1200-65535" }]
"""


def test_monitor_deny_rule_flags_but_never_blocks() -> None:
    p = policy(allow('{ fc = 6, address = "40", value = "0-1500" }') + TRIAL_CAP)
    flagged = decide(p, write_register(40, 1300))
    assert (flagged.verdict, flagged.rule_id, flagged.monitor_rule_id) == ("allow", "r", "trial-setpoint-cap")
    assert flagged.allowed and flagged.action == "forward"
    plain = decide(p, write_register(40, 1000))
    assert (plain.verdict, plain.monitor_rule_id) == ("allow", None)
    # Already denied by the enforced rules: enforcing the trial would not change the outcome.
    assert decide(p, write_register(40, 1600)).monitor_rule_id is None


def test_monitor_allow_rule_flags_what_it_would_allow() -> None:
    trial = allow('{ fc = 6, address = "41" }', "trial-allow").replace(
        "[[rules]]\n", '[[rules]]\nmode = "monitor"\n'
    )
    p = policy(allow('{ fc = 6, address = "40" }') + trial)
    flagged = decide(p, write_register(41, 1))
    assert (flagged.verdict, flagged.rule_id, flagged.exception_code) == ("deny", "r", 2)
    assert flagged.monitor_rule_id == "trial-allow"
    # A monitor deny that matches too means enforcing both would still deny: no flag.
    trial_deny = deny('{ fc = 6, address = "41" }', "trial-deny")
    both = policy(
        allow('{ fc = 6, address = "40" }')
        + trial
        + trial_deny.replace("[[rules]]\n", '[[rules]]\nmode = "monitor"\n')
    )
    assert decide(both, write_register(41, 1)).monitor_rule_id is None


def test_monitor_asset_forwards_what_it_would_deny() -> None:
    p = policy(allow('{ fc = 6, address = "40", value = "0-10" }'), asset_extra='mode = "monitor"')
    would = decide(p, write_register(40, 11))
    assert (would.verdict, would.allowed, would.action) == ("would-deny", True, "forward")
    assert (would.rule_id, would.exception_code) == ("r", 3)
    assert "11" in would.reason
    assert decide(p, write_register(40, 1)).verdict == "allow"
    assert decide(p, read(3, 0, unit=9)).verdict == "would-deny"


# ---------------------------------------------------------------------------------------- units


def test_unit_not_configured_is_refused_gateway_path_unavailable_without_rule() -> None:
    p = policy(allow("{ fc = 3 }"), units="[1]")
    refused = decide(p, read(3, 0, unit=2))
    assert outcome(refused) == ("deny", None, 0x0A)
    assert "unit 2" in refused.reason
    broadcast = decide(p, read(3, 0, unit=0))
    assert outcome(broadcast) == ("deny", None, 0x0A)


def test_unit_map_translates_client_units() -> None:
    p = policy(allow("{ fc = 3 }"), asset_extra='unit_map = { "1" = 17 }')
    asset = p.assets["plc-1"]
    assert (asset.device_unit(1), asset.device_unit(2)) == (17, 2)


# ---------------------------------------------------------------------------------- who, cloaking


def test_view_is_none_for_unknown_or_unnamed_assets() -> None:
    p = policy(allow("{ fc = 3 }"))
    assert p.view(ALICE, "plc-9") is None
    assert p.view(ALICE, "plc-2") is None
    assert p.view(BOB, "plc-1") is None
    assert p.view(ALICE, "plc-1") is not None


def test_any_rule_naming_the_asset_makes_it_visible() -> None:
    p = policy(
        deny("{ fc = 90 }", subject=BOB)
        + WORKING_HOURS.replace('"group:operators"', f'"{ANNA}"')
        + allow("{ fc = 3 }", "monitor-only", EVE).replace("[[rules]]\n", '[[rules]]\nmode = "monitor"\n')
    )
    assert p.view(BOB, "plc-1") is not None
    # Anna's only rule is out of its window on a Sunday: she sees the asset, her reads are refused.
    view = p.view(ANNA, "plc-1")
    assert view is not None and view.decide_modbus(read(3, 0), at("2026-11-29T12:00")).verdict == "deny"
    assert p.view(EVE, "plc-1") is not None


def test_star_names_every_asset() -> None:
    p = policy(allow("{ fc = 3 }").replace('assets = ["plc-1"]', 'assets = ["*"]'))
    assert p.view(ALICE, "plc-2") is not None
    assert p.view(ALICE, "plc-9") is None


@pytest.mark.parametrize(
    ("subject", "visible"),
    [
        (ALICE, True),
        (ANNA, True),
        (BOB, False),
        (f"spiffe://{TD}/user/a", True),
        (f"spiffe://{TD}/vendor/acme/field/eve", True),
        (f"spiffe://{TD}/vendor/acme", False),
        ("spiffe://other.example/user/alice", False),
    ],
)
def test_patterns_and_groups(subject: str, visible: bool) -> None:
    p = policy(
        allow("{ fc = 3 }", "prefix", f"spiffe://{TD}/user/a*")
        + allow("{ fc = 3 }", "vendors", "group:vendor-acme")
    )
    assert (p.view(subject, "plc-1") is not None) is visible


def test_group_members_match() -> None:
    p = policy(allow("{ fc = 3 }", "ops", "group:operators"))
    assert decide(p, read(3, 0), subject=BOB).rule_id == "ops"


# ----------------------------------------------------------------------------------- the objects


def test_allow_decisions_are_shared_and_immutable() -> None:
    p = policy(allow('{ fc = [3, 4], address = "0-99" }'))
    first, second = decide(p, read(3, 0)), decide(p, read(4, 50, 10))
    assert first is second
    with pytest.raises(AttributeError):
        first.allowed = False
    assert first == Decision("allow", "r", 0, "forward", "allowed by rule r")


def test_views_are_cached_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import policies.policy

    monkeypatch.setattr(policies.policy, "VIEW_CACHE_SIZE", 2)
    p = policy(allow("{ fc = 3 }", "a", f"spiffe://{TD}/*"))
    first = p.view(ALICE, "plc-1")
    assert p.view(ALICE, "plc-1") is first
    p.view(BOB, "plc-1")
    p.view(ANNA, "plc-1")
    assert len(p._views) == 2
    assert p.view(ALICE, "plc-1") is not first  # evicted, compiled again
    assert decide(p, read(3, 0), now=NOON).verdict == "allow"
