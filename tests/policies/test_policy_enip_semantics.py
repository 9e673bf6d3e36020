"""docs/policy.md "EtherNet/IP entries" and "How a decision is made", one rule at a time, on requests
encoded and flattened by the CIP codec exactly as the gateway decides them."""

from __future__ import annotations

import struct

import pytest

from protocols.enip import MessageRouterRequest, PortSegment
from protocols.enip.spec import DataType
from tests.policies.enip_helpers import (
    ALICE,
    BOB,
    TD,
    attribute_request,
    by_instance,
    decide,
    enip_policy,
    forward_close,
    forward_open,
    multiple,
    object_path,
    outcome,
    read_modify_write,
    read_tag,
    read_tag_message,
    routed,
    rule,
    tag_path,
    write_structure,
    write_tag,
)
from tests.policies.policy_helpers import at

EVERYONE = f"spiffe://{TD}/*"
SLOT_0 = PortSegment(1, b"\x00")


def deny_rule(entries: str, rule_id: str = "d") -> str:
    return rule(entries, rule_id, EVERYONE, effect="deny")


# ------------------------------------------------------------------------------------------ services


def test_services_by_name_and_by_pair_are_the_same() -> None:
    by_name = enip_policy(rule('{ service = "read_tag" }'))
    by_pair = enip_policy(rule('{ service = ["0x6B/0x4C", "107/77"] }'))
    for p in (by_name, by_pair):
        assert outcome(decide(p, read_tag("Anything"))) == ("allow", "r", 0)
    assert decide(by_name, write_tag("Anything", [1])).verdict == "deny"
    assert decide(by_pair, write_tag("Anything", [1])).verdict == "allow"  # 107/77 is write_tag


def test_codes_from_0x4b_up_are_told_apart_by_class() -> None:
    # 0x4E: forward_close on the Connection Manager, read_modify_write on a tag.
    p = enip_policy(rule('{ service = "forward_close" }'))
    assert decide(p, forward_close()).verdict == "allow"
    refused = decide(p, read_modify_write("Line1.Flags"))
    assert outcome(refused) == ("deny", None, 0x0F)
    assert "read_modify_write (0x6B/0x4E)" in refused.reason
    # 0x52: read_tag_fragmented on a tag; on the Connection Manager it is the (unwrapped) Unconnected Send.
    p = enip_policy(rule('{ service = "read_tag_fragmented" }'))
    assert decide(p, read_tag("Big", 100, fragmented=True)).verdict == "allow"
    # 0x4C: read_tag on a tag, initiate_download on the File object, read_template on Template.
    p = enip_policy(rule('{ service = "read_tag" }'))
    assert decide(p, attribute_request(0x4C, 0x37, 1)).verdict == "deny"
    assert decide(p, attribute_request(0x4C, 0x6C, 3, data=b"\x00" * 6)).verdict == "deny"


def test_a_common_service_by_name_applies_to_every_class_unless_class_narrows_it() -> None:
    p = enip_policy(rule('{ service = "get_attribute_single" }'))
    for class_id in (0x01, 0xF5, 0x37, 0x04):
        assert decide(p, attribute_request(0x0E, class_id, 1, 1)).verdict == "allow"
    p = enip_policy(rule('{ service = "get_attribute_single", class = [0x01, 0xF5] }'))
    assert decide(p, attribute_request(0x0E, 0xF5, 1, 3)).verdict == "allow"
    refused = decide(p, attribute_request(0x0E, 0x04, 100, 3))
    assert outcome(refused) == ("deny", "r", 0x0F)
    assert "class 0x04 outside rule r (class 0x01, 0xF5)" in refused.reason


def test_a_pair_with_a_common_code_names_that_class_only() -> None:
    p = enip_policy(rule('{ service = "0x01/0x05" }'))
    assert decide(p, attribute_request(0x05, 0x01, 1)).verdict == "allow"
    assert decide(p, attribute_request(0x05, 0xF5, 1)).verdict == "deny"


def test_a_named_vendor_pair_is_decided_like_any_other() -> None:
    p = enip_policy(rule('{ service = "0x64/0x4B" }'))
    assert decide(p, attribute_request(0x4B, 0x64, 1)).verdict == "allow"


def test_service_star_names_every_service_on_every_class() -> None:
    # Alice may do anything; Bob may read tags, but a "*" deny later in the file cuts him off everywhere,
    # in the tables other rules made (read_tag) and in what no other rule names.
    p = enip_policy(
        rule('{ service = "*" }')
        + rule('{ service = "read_tag" }', "bob-reads", BOB)
        + rule('{ service = "*" }', "cut", BOB, effect="deny")
    )
    every = (
        read_tag("Line1.Speed"),
        write_tag("Line1.Speed", [7]),
        read_modify_write("Line1.Flags"),
        forward_open(),
        attribute_request(0x05, 0x01, 1),  # reset the Identity object
        attribute_request(0x10, 0xF5, 1, 3),  # set_attribute_single on TCP/IP Interface
        attribute_request(0x4B, 0x64, 1),  # a vendor's own service
    )
    for request in every:
        assert outcome(decide(p, request)) == ("allow", "r", 0), request
        assert outcome(decide(p, request, subject=BOB)) == ("deny", "cut", 0x0F), request


def test_service_star_is_narrowed_by_class() -> None:
    p = enip_policy(rule('{ service = "*", class = 0x01 }') + deny_rule('{ service = "*", class = 0xF5 }'))
    assert decide(p, attribute_request(0x05, 0x01, 1)).verdict == "allow"
    assert decide(p, attribute_request(0x0E, 0x01, 1, 7)).verdict == "allow"
    assert outcome(decide(p, attribute_request(0x10, 0xF5, 1, 3))) == ("deny", "d", 0x0F)
    assert decide(p, read_tag("Line1.Speed")).verdict == "deny"


def test_unknown_services_get_0x08_known_ones_0x0f() -> None:
    p = enip_policy(rule('{ preset = "read-write" }'))
    unknown = decide(p, attribute_request(0x4B, 0x64, 1))
    assert outcome(unknown) == ("deny", None, 0x08)
    assert "not a service the gateway knows" in unknown.reason
    assert outcome(decide(p, attribute_request(0x33, 0x01, 1))) == ("deny", None, 0x08)
    assert outcome(decide(p, attribute_request(0x05, 0x01, 1))) == ("deny", None, 0x0F)


def test_the_asset_deny_codes_apply() -> None:
    p = enip_policy(
        rule('{ service = "write_tag", tag = "Speed", value = "0..10" }'),
        asset_extra=(
            'deny = { action = "close", function = 0x08, address = 0x05, value = 0x09, unsupported = 0x16 }'
        ),
    )
    assert decide(p, attribute_request(0x05, 0x01, 1)).exception_code == 0x08
    assert decide(p, write_tag("Other", [1])).exception_code == 0x05
    assert decide(p, write_tag("Speed", [11])).exception_code == 0x09
    refused = decide(p, attribute_request(0x4B, 0x64, 1))
    assert (refused.exception_code, refused.action) == (0x16, "close")


# ------------------------------------------------------------------------------------------- presets


PRESET_ALLOWS = [
    read_tag("Line1.Speed"),
    read_tag("Recipe[0]", 10, fragmented=True),
    by_instance(0x55, 0, struct.pack("<HHH", 2, 1, 2)),
    attribute_request(0x4C, 0x6C, 7, data=struct.pack("<IH", 0, 100)),
    attribute_request(0x01, 0x01, 1),
    attribute_request(0x0E, 0x01, 1, 7),
    attribute_request(0x03, 0x8B, 1, data=struct.pack("<HH", 1, 6)),
    attribute_request(0x01, 0x64, 1),
    attribute_request(0x03, 0x6C, 7, data=struct.pack("<HHHHH", 4, 4, 5, 2, 1)),
    forward_open(),
]
# PROTOCOL-NOTES "operations a default policy refuses": none of them is in a preset.
NEVER_IN_A_PRESET = [
    attribute_request(0x05, 0x01, 1, data=b"\x00"),  # Reset on Identity
    attribute_request(0x06, 0x01, 1),  # Start
    attribute_request(0x07, 0x01, 1),  # Stop
    attribute_request(0x10, 0xF5, 1, 3, b"\x00\x00\x00\x00"),  # TCP/IP configuration
    attribute_request(0x10, 0xF5, 1, 5, b"\x00" * 20),  # TCP/IP interface configuration
    attribute_request(0x04, 0xF5, 1, data=struct.pack("<HH", 1, 3) + b"\x00" * 4),
    attribute_request(0x02, 0xF5, 1, data=b"\x00" * 8),
    attribute_request(0x10, 0xF6, 1, 6, b"\x00\x00\x00\x00"),  # Ethernet Link interface control
    attribute_request(0x10, 0x01, 1, 7, b"\x00"),  # Identity
    attribute_request(0x02, 0x01, 1, data=b"\x00"),
    attribute_request(0x10, 0x06, 1, 1, b"\x00"),  # Connection Manager
    attribute_request(0x4B, 0x37, 1),  # File: initiate upload
    attribute_request(0x4C, 0x37, 1),  # File: initiate download
    attribute_request(0x50, 0x37, 1),  # File: download transfer
    attribute_request(0x51, 0x37, 1),  # File: clear file
    attribute_request(0x4B, 0x67, 1, data=b"\x07\x00\x00\x00\x00\x00\x00\x0f\x00"),  # Execute PCCC
    attribute_request(0x10, 0x8B, 1, 6, b"\x00" * 8),  # set the controller's clock
    attribute_request(0x0E, 0xF5, 1, 5),  # TCP/IP: not among the classes the preset reads
    by_instance(0x4C, 12),  # a tag by number
    by_instance(0x4D, 12, struct.pack("<HHi", DataType.DINT, 1, 5)),
]


@pytest.mark.parametrize("preset", ["read-only", "read-write"])
def test_presets_allow_what_the_reference_lists(preset: str) -> None:
    p = enip_policy(rule(f'{{ preset = "{preset}" }}'))
    for request in PRESET_ALLOWS:
        assert decide(p, request).verdict == "allow", request


@pytest.mark.parametrize("preset", ["read-only", "read-write"])
@pytest.mark.parametrize("request_index", range(len(NEVER_IN_A_PRESET)))
def test_no_preset_opens_the_default_deny_list(preset: str, request_index: int) -> None:
    p = enip_policy(rule(f'{{ preset = "{preset}" }}'))
    decision = decide(p, NEVER_IN_A_PRESET[request_index])
    assert decision.verdict == "deny"
    assert decision.exception_code == 0x0F


def test_read_write_adds_the_tag_writes() -> None:
    read_only = enip_policy(rule('{ preset = "read-only" }'))
    read_write = enip_policy(rule('{ preset = "read-write" }'))
    writes = [write_tag("Line1.Speed", [5]), read_modify_write("Line1.Flags"), write_structure("Line1.Motor")]
    for request in writes:
        assert decide(read_only, request).verdict == "deny"
        assert decide(read_write, request).verdict == "allow"


def test_a_preset_with_class_keeps_its_services_on_those_classes() -> None:
    p = enip_policy(rule('{ preset = "read-only", class = 0x01 }'))
    assert decide(p, attribute_request(0x01, 0x01, 1)).verdict == "allow"
    assert decide(p, read_tag("Line1.Speed")).verdict == "deny"
    assert decide(p, forward_open()).verdict == "deny"


def test_a_preset_with_service_is_the_union() -> None:
    p = enip_policy(rule('{ preset = "read-only", service = "reset", class = 0x01 }'))
    assert decide(p, attribute_request(0x05, 0x01, 1)).verdict == "allow"
    assert decide(p, attribute_request(0x01, 0x01, 1)).verdict == "allow"


# ----------------------------------------------------------------------------------------------- tags


@pytest.mark.parametrize(
    ("pattern", "tag", "count", "allowed"),
    [
        ("Line1.*", "Line1.Speed", 1, True),
        ("Line1.*", "Line1.Motor.Amps", 1, True),
        ("Line1.*", "line1.motor.AMPS", 1, True),
        ("Line1.*", "Line1", 1, False),
        ("Line1.*", "Line1[0]", 1, False),
        ("Line1.*", "Line10.Speed", 1, False),
        ("Motor", "MOTOR", 1, True),
        ("Motor", "Motor.Drive.Amps", 1, True),
        ("Motor", "Motor[3]", 4, True),
        ("Motor", "Motors", 1, False),
        ("Motor", "Program:Main.Motor", 1, False),
        ("Recipe[0..9]", "Recipe[0]", 10, True),
        ("Recipe[0..9]", "Recipe[5]", 5, True),
        ("Recipe[0..9]", "Recipe[5]", 6, False),
        ("Recipe[0..9]", "Recipe[9]", 1, True),
        ("Recipe[0..9]", "Recipe[10]", 1, False),
        ("Recipe[0..9]", "Recipe", 10, True),
        ("Recipe[0..9]", "Recipe", 11, False),
        ("Recipe[0..9]", "Recipe[3].Temp", 1, True),
        ("Recipe[0..9]", "Recipe[12].Temp", 1, False),
        ("Recipe[0..9].Temp", "Recipe[4].Temp", 1, True),
        ("Recipe[0..9].Temp", "Recipe[4].Pressure", 1, False),
        ("Recipe[0..9].Temp", "Recipe[4]", 1, False),
        ("Recipe[0..9].Temp", "Recipe.Temp", 1, False),
        ("Recipe[0..9].Temp", "Recipe[4].Temp", 3, True),  # the count runs over Temp's own elements
        ("Grid[0..3,0..7]", "Grid[2,5]", 1, True),
        ("Grid[0..3,0..7]", "Grid[4,0]", 1, False),
        ("Grid[0..3,0..7]", "Grid[2,5]", 2, False),  # row-major over unknown dimensions
        ("Grid[0..3,0..7]", "Grid[2]", 1, False),
        ("Program:Main.*", "Program:Main.Count", 1, True),
        ("Program:Main.*", "PROGRAM:MAIN.Recipe[3]", 1, True),
        ("Program:Main.*", "Program:Other.Count", 1, False),
        ("Program:Main.*", "Count", 1, False),
        ("Count", "Program:Main.Count", 1, False),
        ("*", "Program:Main.Count", 1, True),
        ("*", "Anything[7].X", 3, True),
    ],
)
def test_tag_patterns_allow_whole_spans(pattern: str, tag: str, count: int, allowed: bool) -> None:
    p = enip_policy(rule(f'{{ service = "read_tag", tag = "{pattern}" }}'))
    decision = decide(p, read_tag(tag, count))
    assert decision.allowed is allowed, decision.reason
    if not allowed:
        assert outcome(decision) == ("deny", "r", 0x0F)
        assert f"tag {tag}" in decision.reason and pattern in decision.reason


@pytest.mark.parametrize(
    ("pattern", "tag", "count", "denied"),
    [
        ("Line1.Speed", "Line1", 1, True),  # a whole structure holds its members
        ("Line1.*", "Line1", 1, True),
        ("Line1.Speed", "Line1.Speed.X", 1, True),
        ("Line1.Speed", "Line1.Temp", 1, False),
        ("Recipe[0..9]", "Recipe[9]", 5, True),
        ("Recipe[0..9]", "Recipe[10]", 5, False),
        ("Recipe[5]", "Recipe", 5, False),  # elements 0-4
        ("Recipe[5]", "Recipe", 6, True),
        ("Recipe[5].Temp", "Recipe.Temp", 1, True),  # a path the device refuses: a deny matches anyway
        ("Grid[3,3]", "Grid[0,0]", 2, True),  # cannot tell which elements it reaches
        ("Grid[3,3]", "Grid[0,0]", 1, False),
        ("Grid[3,3]", "Grid[3]", 1, True),  # other dimensions: cannot tell
        ("Count", "Program:Main.Count", 1, False),
    ],
)
def test_deny_tag_patterns_match_what_they_touch(pattern: str, tag: str, count: int, denied: bool) -> None:
    p = enip_policy(
        rule('{ service = "read_tag" }') + deny_rule(f'{{ service = "read_tag", tag = "{pattern}" }}')
    )
    decision = decide(p, read_tag(tag, count))
    assert (decision.rule_id == "d") is denied, decision.reason


def test_read_modify_write_on_a_tag_covers_its_bits() -> None:
    p = enip_policy(rule('{ service = "read_modify_write", tag = "Count" }'))
    assert decide(p, read_modify_write("Count", or_mask=1 << 3, and_mask=0xFFFFFFFF)).verdict == "allow"


# ------------------------------------------------------------------------------------- tags by number


def test_a_tag_by_number_is_refused_where_rules_name_tags() -> None:
    p = enip_policy(rule('{ preset = "read-write", tag = "*" }'))
    assert decide(p, read_tag("Secret")).verdict == "allow"
    refused = decide(p, by_instance(0x4C, 42))
    assert outcome(refused) == ("deny", "r", 0x0F)
    assert "tag by instance number 42" in refused.reason


def test_a_tag_by_number_needs_class_and_instance_named() -> None:
    no_tags_named = enip_policy(rule('{ service = "read_tag" }'))
    assert decide(no_tags_named, by_instance(0x4C, 42)).verdict == "deny"
    class_only = enip_policy(rule('{ service = "read_tag", class = 0x6B }'))
    assert decide(class_only, by_instance(0x4C, 42)).verdict == "deny"
    explicit = enip_policy(rule('{ service = "read_tag", class = 0x6B, instance = "1-100" }'))
    assert decide(explicit, by_instance(0x4C, 42)).verdict == "allow"
    assert decide(explicit, by_instance(0x4C, 101)).verdict == "deny"
    assert decide(explicit, read_tag("ByName")).verdict == "deny"  # a tag by name has no instance


def test_a_deny_naming_tags_matches_every_tag_by_number() -> None:
    p = enip_policy(
        rule('{ service = "read_tag", class = 0x6B, instance = "1-100" }')
        + deny_rule('{ service = "read_tag", tag = "Secret" }')
    )
    assert decide(p, by_instance(0x4C, 7)).rule_id == "d"


def test_listing_the_tags_is_not_a_tag_by_number() -> None:
    p = enip_policy(rule('{ service = "get_instance_attribute_list", tag = "Line1.*" }'))
    listing = by_instance(0x55, 0, struct.pack("<HHH", 2, 1, 2))
    assert decide(p, listing).verdict == "allow"
    hidden = enip_policy(
        rule('{ preset = "read-only" }') + deny_rule('{ service = "get_instance_attribute_list" }')
    )
    assert decide(hidden, listing).rule_id == "d"


# ---------------------------------------------------------------------------------- class / instance


def test_instance_and_attribute_ranges() -> None:
    p = enip_policy(
        rule(
            '{ service = ["get_attribute_single", "get_attribute_list"], class = 1, instance = 1,'
            ' attribute = "1-7" }'
        )
    )
    assert decide(p, attribute_request(0x0E, 1, 1, 7)).verdict == "allow"
    assert decide(p, attribute_request(0x03, 1, 1, data=struct.pack("<HHH", 2, 1, 7))).verdict == "allow"
    assert decide(p, attribute_request(0x03, 1, 1, data=struct.pack("<HHH", 2, 1, 8))).verdict == "deny"
    assert decide(p, attribute_request(0x0E, 1, 2, 1)).verdict == "deny"
    assert decide(p, attribute_request(0x0E, 1, None, 1)).verdict == "deny"  # the class itself


def test_a_request_naming_no_attribute_acts_on_the_whole_object() -> None:
    allow = enip_policy(rule('{ service = "get_attributes_all", class = 1, attribute = "1-7" }'))
    assert decide(allow, attribute_request(0x01, 1, 1)).verdict == "deny"
    p = enip_policy(
        rule('{ service = ["set_attribute_single", "set_attributes_all"], class = 0xF5 }')
        + deny_rule(
            '{ service = ["set_attribute_single", "set_attributes_all"], class = 0xF5, attribute = [3, 5] }'
        )
    )
    assert decide(p, attribute_request(0x02, 0xF5, 1, data=b"\x00" * 8)).rule_id == "d"
    assert decide(p, attribute_request(0x10, 0xF5, 1, 5, b"\x00" * 4)).rule_id == "d"
    assert outcome(decide(p, attribute_request(0x10, 0xF5, 1, 6, b"\x00" * 4))) == ("allow", "r", 0)


# ------------------------------------------------------------------------------------------- values


VALUES = (
    '{ service = ["write_tag", "write_tag_fragmented", "read_modify_write"], tag = "Line1.*",'
    ' value = "-10..1500.5" }'
)


@pytest.mark.parametrize(
    ("values", "data_type", "allowed"),
    [
        ([0, 1500, -10], DataType.DINT, True),
        ([1501], DataType.DINT, False),
        ([-11], DataType.INT, False),
        ([1500.5], DataType.REAL, True),
        ([1500.75], DataType.REAL, False),
        ([float("nan")], DataType.REAL, False),
        ([1.0, float("nan")], DataType.REAL, False),
        ([float("nan"), 1.0], DataType.LREAL, False),
        ([float("inf")], DataType.REAL, False),
        ([float("-inf")], DataType.LREAL, False),
        ([1, 0], DataType.BOOL, True),
    ],
)
def test_value_bounds_for_atomic_writes(values: list[float], data_type: int, allowed: bool) -> None:
    p = enip_policy(rule(VALUES))
    decision = decide(p, write_tag("Line1.Speed", values, data_type))
    assert decision.allowed is allowed, decision.reason
    if not allowed:
        assert outcome(decision) == ("deny", "r", 0x0F)
        assert "outside rule r (-10..1500.5)" in decision.reason


def test_writes_the_gateway_cannot_read_are_refused_by_value_bounds() -> None:
    p = enip_policy(rule(VALUES))
    for request in (write_structure("Line1.Motor"), read_modify_write("Line1.Flags")):
        refused = decide(p, request)
        assert outcome(refused) == ("deny", "r", 0x0F)
        assert "cannot read" in refused.reason
    unbounded = enip_policy(rule('{ service = ["write_tag", "read_modify_write"], tag = "Line1.*" }'))
    assert decide(unbounded, write_structure("Line1.Motor")).verdict == "allow"


def test_a_deny_with_values_matches_out_of_bounds_and_unreadable_writes_not_reads() -> None:
    p = enip_policy(
        rule('{ preset = "read-write" }')
        + deny_rule('{ service = ["read_tag", "write_tag"], tag = "Speed", value = "1000..65535" }')
    )
    assert outcome(decide(p, write_tag("Speed", [1200]))) == ("deny", "d", 0x0F)
    assert decide(p, write_tag("Speed", [999])).verdict == "allow"
    assert decide(p, write_tag("Speed", [float("nan")], DataType.REAL)).rule_id == "d"
    assert decide(p, write_structure("Speed")).rule_id == "d"
    assert decide(p, read_tag("Speed")).verdict == "allow"


def test_reads_pass_a_value_field() -> None:
    p = enip_policy(rule('{ preset = "read-write", tag = "Line1.*", value = "0..10" }'))
    assert decide(p, read_tag("Line1.Speed", 5)).verdict == "allow"
    assert decide(p, write_tag("Line1.Speed", [10])).verdict == "allow"
    assert decide(p, write_tag("Line1.Speed", [11])).verdict == "deny"


# ------------------------------------------------------------------------------ routes and wrappers


def test_routes_must_be_empty_or_the_assets() -> None:
    p = enip_policy(rule('{ preset = "read-only" }'))
    (via_slot_0,) = routed(read_tag_message("Line1.Speed"), [SLOT_0])
    assert decide(p, via_slot_0).verdict == "allow"
    (via_slot_3,) = routed(read_tag_message("Line1.Speed"), [PortSegment(1, b"\x03")])
    refused = decide(p, via_slot_3)
    assert outcome(refused) == ("deny", None, 0x0F)
    assert "route 1/3 leads elsewhere than asset logix-1 (route 1/0)" in refused.reason
    (onwards,) = routed(read_tag_message("Line1.Speed"), [SLOT_0, PortSegment(2, b"10.0.0.9")])
    assert decide(p, onwards).verdict == "deny"
    assert decide(p, forward_open()).verdict == "allow"
    assert decide(p, forward_open(())).verdict == "allow"
    assert decide(p, forward_open((PortSegment(1, b"\x02"),))).verdict == "deny"


def test_without_a_route_only_unrouted_requests_pass() -> None:
    p = enip_policy(rule('{ preset = "read-only" }'), route=None)
    assert decide(p, read_tag("A")).verdict == "allow"
    (via_slot_0,) = routed(read_tag_message("A"), [SLOT_0])
    assert "route 1/0 leads elsewhere than asset logix-1 (route none)" in decide(p, via_slot_0).reason
    assert decide(p, forward_open()).verdict == "deny"
    assert decide(p, forward_open(())).verdict == "allow"


def test_every_request_of_a_multiple_service_packet_is_decided_on_its_own() -> None:
    p = enip_policy(rule('{ preset = "read-write", tag = "Line1.*" }'))
    requests = multiple(
        read_tag_message("Line1.Speed"),
        read_tag_message("Secret"),
        MessageRouterRequest(0x4D, tag_path("Line1.Temp"), struct.pack("<HHi", DataType.DINT, 1, 5)),
        MessageRouterRequest(0x05, object_path(1, 1), b"\x00"),
    )
    assert [decide(p, request).verdict for request in requests] == ["allow", "deny", "allow", "deny"]


def test_an_embedded_request_that_does_not_parse_is_refused_even_in_monitor_mode() -> None:
    p = enip_policy(rule('{ preset = "read-write" }'), asset_extra='mode = "monitor"')
    requests = multiple(read_tag_message("A"), MessageRouterRequest(0x4C, tag_path("B"), b"\x01"))
    good, broken = (decide(p, request) for request in requests)
    assert good.verdict == "allow"
    assert (broken.verdict, broken.allowed, broken.rule_id) == ("deny", False, None)
    assert broken.exception_code == 0x13  # not enough data, as the codec says
    assert broken.action == "exception"


# ------------------------------------------------------------------------------------ the machinery


def test_deny_wins_over_allow_and_names_its_code() -> None:
    p = enip_policy(
        rule('{ preset = "read-write" }')
        + deny_rule('{ service = "write_tag", tag = "Recipe[0]" }', "tag-deny")
        + deny_rule('{ service = "reset" }', "service-deny")
    )
    assert outcome(decide(p, write_tag("Recipe[0]", [1]))) == ("deny", "tag-deny", 0x0F)
    assert decide(p, write_tag("Recipe[1]", [1])).verdict == "allow"


def test_deny_codes_follow_the_most_specific_field() -> None:
    codes = "deny = { function = 0x10, address = 0x11, value = 0x12 }"
    p = enip_policy(
        rule('{ preset = "read-write" }, { service = "reset" }')
        + deny_rule('{ service = "write_tag", tag = "A", value = "5..9" }', "v")
        + deny_rule('{ service = "write_tag", tag = "B" }', "t")
        + deny_rule('{ service = "reset" }', "f"),
        asset_extra=codes,
    )
    assert outcome(decide(p, write_tag("A", [6]))) == ("deny", "v", 0x12)
    assert outcome(decide(p, write_tag("B", [6]))) == ("deny", "t", 0x11)
    assert outcome(decide(p, attribute_request(0x05, 1, 1))) == ("deny", "f", 0x10)


def test_closest_miss_reasons() -> None:
    p = enip_policy(rule('{ service = "write_tag", tag = "Speed", value = "0..10" }'))
    assert "no rule allows read_tag (0x6B/0x4C)" in decide(p, read_tag("Speed")).reason
    assert "tag Other outside rule r (tag Speed)" in decide(p, write_tag("Other", [1])).reason
    assert "value 11 outside rule r (0..10)" in decide(p, write_tag("Speed", [11])).reason


def test_windows_apply_as_for_modbus() -> None:
    p = enip_policy(
        rule(
            '{ preset = "read-only" }',
            "day",
            extra='when = { days = "mon-fri", hours = "06:00-18:00", tz = "Europe/Berlin" }\n',
        )
    )
    assert decide(p, read_tag("A"), now=at("2026-11-26T07:30", "Europe/Berlin")).verdict == "allow"
    closed = decide(p, read_tag("A"), now=at("2026-11-28T07:30", "Europe/Berlin"))
    assert outcome(closed) == ("deny", None, 0x0F)
    assert "allowed only by rule day, whose window is closed" in closed.reason


def test_monitor_rules_and_monitor_assets() -> None:
    p = enip_policy(
        rule('{ preset = "read-write" }')
        + rule(
            '{ service = "write_tag", tag = "Speed", value = "100..65535" }',
            "trial",
            EVERYONE,
            effect="deny",
            extra='mode = "monitor"\n',
        )
        + rule('{ service = "reset" }', "would-reset", extra='mode = "monitor"\n')
    )
    trial = decide(p, write_tag("Speed", [200]))
    assert (trial.verdict, trial.rule_id, trial.monitor_rule_id) == ("allow", "r", "trial")
    assert decide(p, write_tag("Speed", [200])) is trial  # built once
    reset = decide(p, attribute_request(0x05, 1, 1))
    assert (reset.verdict, reset.monitor_rule_id) == ("deny", "would-reset")
    learning = enip_policy(rule('{ preset = "read-only" }'), asset_extra='mode = "monitor"')
    would = decide(learning, attribute_request(0x05, 1, 1))
    assert (would.verdict, would.allowed, would.exception_code, would.action) == (
        "would-deny",
        True,
        0x0F,
        "forward",
    )
    (elsewhere,) = routed(read_tag_message("A"), [PortSegment(1, b"\x05")])
    assert decide(learning, elsewhere).verdict == "would-deny"


def test_allow_decisions_are_shared_per_rule() -> None:
    p = enip_policy(
        rule('{ preset = "read-only", tag = "Line1.*" }, { service = "write_tag", tag = "Line1.*" }')
    )
    first, second = decide(p, read_tag("Line1.A")), decide(p, write_tag("line1.b", [1]))
    assert first is second


def test_a_rule_names_its_subjects_and_assets() -> None:
    p = enip_policy(rule('{ preset = "read-only" }', "ops", "group:operators"))
    assert decide(p, read_tag("A"), subject=BOB).rule_id == "ops"
    assert p.view(f"spiffe://{TD}/user/zed", "logix-1") is None
    assert decide(p, read_tag("A"), subject=ALICE).verdict == "allow"


def test_modbus_entries_do_not_apply_to_an_enip_asset_and_back() -> None:
    text = (
        rule('{ preset = "read-only" }')
        .replace("enip = [", "modbus = [{ fc = 3 }]\nenip = [")
        .replace('assets = ["logix-1"]', 'assets = ["*"]')
    )
    head = '[assets.plc-1]\nprotocol = "modbus"\nupstream = "10.0.0.5:502"\n\n'
    p = enip_policy(head + text)
    view = p.view(ALICE, "plc-1")
    assert view is not None and view.enip_table(read_tag("A")) is None
    assert decide(p, read_tag("A")).verdict == "allow"


def test_per_tag_candidate_lists_are_bounded_and_invisible(monkeypatch: pytest.MonkeyPatch) -> None:
    import policies.enip.evaluate

    monkeypatch.setattr(policies.enip.evaluate, "TAG_LISTS_SIZE", 2)
    p = enip_policy(
        rule('{ service = "write_tag", tag = "T[0..9]", value = "0..5" }')
        + deny_rule('{ service = "write_tag", tag = "T[3]", value = "4..5" }')
    )
    view = p.view(ALICE, "logix-1")
    assert view is not None
    table = view.enip_table(write_tag("T[0]", [1]))
    assert table is not None
    for _ in range(2):
        for index in range(12):
            for value in (1, 4, 6):
                decision = view.decide_enip(write_tag(f"T[{index}]", [value]), 0)
                # Rule r allows, or is the closest miss of, everything rule d does not deny.
                expected = "d" if index == 3 and value == 4 else "r"
                assert decision.rule_id == expected, (index, value, decision.reason)
                assert decision.allowed is (index <= 9 and value <= 5 and not (index == 3 and value == 4))
                assert len(table.tag_lists) <= 2
