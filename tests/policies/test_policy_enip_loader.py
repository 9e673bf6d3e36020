"""Loading EtherNet/IP assets and enip entries: the documented defaults and settings, and every mistake
reported with file, line, field path, the offending value and what was expected."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies import DenyAction, EnipIdentity, PolicyError, parse_policy
from policies.enip.services import PRESETS, parse_service
from policies.enip.tags import parse_tag_pattern
from policies.values import parse_value_bounds
from protocols.enip import PortSegment
from tests.policies.enip_helpers import enip_head, rule
from tests.policies.policy_helpers import issues, only_issue

DOC = Path(__file__).resolve().parents[2] / "docs" / "policy.md"


def entry_issue(entry: str) -> tuple[str, str]:
    """The one problem with a single entry of a rule on the enip asset: (path, message)."""
    _, path, message = only_issue(enip_head() + rule(entry))
    return path, message


# ------------------------------------------------------------------------------------------ assets


def test_enip_asset_defaults_follow_the_reference() -> None:
    asset = parse_policy(enip_head(route=None)).assets["logix-1"]
    assert (asset.protocol, asset.upstream_host, asset.upstream_port) == ("enip", "10.0.0.7", 44818)
    assert asset.deny == DenyAction("exception", 0x0F, 0x0F, 0x0F, 0x08)
    assert (asset.max_sessions, asset.max_connections, asset.connection_size) == (1, 1, 511)
    assert (asset.large_forward_open, asset.route, asset.mode) == (False, (), "enforce")
    assert (asset.queue_limit, asset.connect_timeout_s, asset.response_timeout_s) == (64, 3.0, 2.0)
    assert asset.identity == EnipIdentity(1, 0x2B, 1, 1, 1, 0, "EtherNet/IP Device")
    assert asset.identity.revision == "1.1"


def test_enip_asset_settings() -> None:
    text = enip_head(
        route="1/0/2/10.0.0.9",
        asset_extra=(
            'mode = "monitor"\ndeny = { action = "drop", value = 0x09 }\nmax_sessions = 2\n'
            "max_connections = 4\nconnection_size = 4002\nlarge_forward_open = true\nqueue_limit = 8\n"
            "connect_timeout_s = 1\nresponse_timeout_s = 0.5\n"
            'identity = { vendor_id = 0x1A, device_type = 0x0E, product_code = 55, revision = "20.11",'
            ' serial = 0xC0FFEE, product_name = "Line 1 PLC" }\n'
        ),
    ).replace('"10.0.0.7"', '"[fe80::7]"')
    asset = parse_policy(text).assets["logix-1"]
    assert (asset.upstream_host, asset.upstream_port) == ("fe80::7", 44818)
    assert asset.route == (PortSegment(1, b"\x00"), PortSegment(2, b"10.0.0.9"))
    assert asset.mode == "monitor"
    assert asset.deny == DenyAction("drop", 0x0F, 0x0F, 0x09, 0x08)
    assert (asset.max_sessions, asset.max_connections, asset.connection_size) == (2, 4, 4002)
    assert (asset.large_forward_open, asset.queue_limit) == (True, 8)
    assert (asset.connect_timeout_s, asset.response_timeout_s) == (1.0, 0.5)
    assert asset.identity == EnipIdentity(0x1A, 0x0E, 55, 20, 11, 0xC0FFEE, "Line 1 PLC")
    assert (
        parse_policy(enip_head().replace('"10.0.0.7"', '"plc.local:2222"')).assets["logix-1"].upstream_port
        == 2222
    )


ASSET_MISTAKES = [
    ('upstream = "10.0.0.7:x"', "upstream", "the port must be a number in 1..65535"),
    ('upstream = "[fe80::7"', "upstream", '"[fe80::7": the port must be a number in 1..65535'),
    ('upstream = "[fe80::zz]"', "upstream", '"fe80::zz" is not an IPv6 address'),
    ("unit_ids = [1]", "unit_ids", "applies to modbus assets only"),
    ("max_in_flight = 2", "max_in_flight", "applies to modbus assets only"),
    ("max_sessions = 0", "max_sessions", "0 is outside 1..64"),
    ("connection_size = 600", "connection_size", "600 is outside 64..511 bytes"),
    ("connection_size = 4003\nlarge_forward_open = true", "connection_size", "4003 is outside 64..4002"),
    ('large_forward_open = "yes"', "large_forward_open", "expected true or false"),
    ("deny = { unsupported = 0 }", "deny.unsupported", "0 is outside 1..255"),
    ('deny = { action = "reset" }', "deny.action", '"reset" is not one of: exception, drop, close'),
    ("identity = { vendor = 1 }", "identity.vendor", 'unknown key "vendor"; did you mean "vendor_id"?'),
    ('identity = { revision = "20" }', "identity.revision", 'expected "major.minor"'),
    ('identity = { revision = "0.1" }', "identity.revision", 'expected "major.minor"'),
    ('identity = { product_name = "" }', "identity.product_name", "1 to 32 printable ASCII"),
    ('identity = { product_name = "PLC\\u00e9" }', "identity.product_name", "1 to 32 printable ASCII"),
    ("identity = { serial = -1 }", "identity.serial", "-1 is outside 0..4294967295"),
    ("identity = 3", "identity", "expected a table, got an integer"),
]


@pytest.mark.parametrize(("setting", "path", "message"), ASSET_MISTAKES)
def test_enip_asset_mistakes(setting: str, path: str, message: str) -> None:
    text = enip_head(route=None, asset_extra=setting)
    if setting.startswith("upstream"):
        text = text.replace('upstream = "10.0.0.7"\n', "")
    line, got_path, got = only_issue(text)
    assert got_path == f"assets.logix-1.{path}"
    assert message in got
    assert line == text.splitlines().index(setting.splitlines()[0]) + 1


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ("1", 'expected "port/link" pairs'),
        ("1/0/2", 'expected "port/link" pairs'),
        ("0/1", 'port "0" is not a number in 1..65535'),
        ("1/256", 'link "256" is neither a node number (0..255) nor an IPv4 address'),
        ("2/plc.local", "nor an IPv4 address"),
        ("", 'expected "port/link" pairs'),
    ],
)
def test_route_mistakes(route: str, message: str) -> None:
    _, path, got = only_issue(enip_head(route=route))
    assert path == "assets.logix-1.route"
    assert message in got


def test_keys_of_the_other_protocol_on_a_modbus_asset() -> None:
    text = (
        'trust_domain = "plant1.example"\n[assets.plc-1]\nprotocol = "modbus"\nupstream = "10.0.0.5:502"\n'
        'route = "1/0"\ndeny = { unsupported = 8 }\n'
    )
    assert issues(text) == [
        (5, "assets.plc-1.route", "applies to enip assets only"),
        (
            6,
            "assets.plc-1.deny.unsupported",
            "applies to enip and opcua assets only (Modbus refuses unknown function codes with the"
            " function code)",
        ),
    ]


# ----------------------------------------------------------------------------------------- entries


def test_entry_fields_load_as_typed_values() -> None:
    entry = parse_policy(
        enip_head()
        + rule(
            '{ service = ["get_attribute_all", "0x01/0x05"], class = [0x01, "240-246"], instance = 1,'
            ' attribute = "1-7" }, { service = "write_tag", tag = ["Line1.*", "Recipe[0..9]"],'
            ' value = ["-1.5..2", 7, "0x10..0x20"] }'
        )
    ).rules[0]
    objects, tags = entry.enip
    assert objects.services == frozenset({(None, 0x01), (0x01, 0x05)})
    assert objects.classes is not None and objects.classes.ranges == ((1, 1), (240, 246))
    assert str(objects.instances) == "1" and str(objects.attributes) == "1-7"
    assert tags.tags is not None and [str(t) for t in tags.tags] == ["Line1.*", "Recipe[0..9]"]
    assert tags.values is not None and tags.values.ranges == ((-1.5, 2), (7, 7), (16, 32))
    assert objects.describe() == (
        "service get_attributes_all, reset on class 0x01; class 0x01, 0xF0-0xF6; instance 1; attribute 1-7"
    )


def test_presets_expand_as_documented() -> None:
    read_only = parse_policy(enip_head() + rule('{ preset = "read-only" }')).rules[0].enip[0]
    assert read_only.services == PRESETS["read-only"]
    assert read_only.describe() == "preset read-only"
    names = {name for name in PRESETS["read-write"] - PRESETS["read-only"]}
    assert names == {(0x6B, 0x4D), (0x6B, 0x53), (0x6B, 0x4E)}


def test_repeated_entries_are_checked_once_and_shared() -> None:
    text = (
        enip_head()
        + rule('{ preset = "read-only", tag = "A.*" }')
        + rule('{ preset = "read-only", tag = "A.*" }', "r2")
    )
    first, second = parse_policy(text).rules
    assert first.enip[0] is second.enip[0]


ENTRY_MISTAKES = [
    (
        "{ service = 0x4C }",
        "service",
        "76 (0x4C): a service code alone is ambiguous: codes from 0x4B up mean",
    ),
    (
        '{ service = "0x4E" }',
        "service",
        "(0x4E is forward_close on class 0x06, initiate_partial_write on class",
    ),
    (
        "{ service = 14 }",
        "service",
        '14 (0x0E): a service code alone is refused: name it: "get_attribute_single"',
    ),
    ('{ service = "0x40" }', "service", 'a service code alone is refused: give its class as "class/service"'),
    (
        '{ service = ["read_tag", "read_tg"] }',
        "service[1]",
        '"read_tg": unknown service name; did you mean "read_tag"?',
    ),
    ('{ service = "unconnected_send" }', "service", "wrappers are not decided as services"),
    ('{ service = ["read_tag", "*"] }', "service[1]", 'service = "*" stands alone, not in a list'),
    ('{ service = "*", tag = "A" }', "tag", 'goes with named services, not with service = "*"'),
    ('{ service = "*", preset = "read-only" }', "preset", "goes with named services"),
    ('{ service = "0x06/0x52" }', "service", "wrappers are not decided as services"),
    ('{ service = "0x02/0x0A" }', "service", "wrappers are not decided as services"),
    ('{ service = "0x10000/0x01" }', "service", "class 0x10000 is outside 0..0xFFFF"),
    ('{ service = "0x01/0x80" }', "service", "service 0x80 is outside 0..0x7F"),
    ("{ service = true }", "service", 'true: expected a service name or a "class/service" pair'),
    ("{ service = [] }", "service", "the array is empty: name at least one service"),
    ('{ preset = "read-mostly" }', "preset", '"read-mostly" is not one of: read-only, read-write'),
    ('{ tag = "A" }', "", 'names no service: give "service"'),
    ('{ service = "read_tag", tags = "A" }', "tags", 'unknown key "tags"; did you mean "tag"?'),
    ('{ service = "read_tag", class = 1 }', "class", "read_tag is a service of class 0x6B, not in class 1"),
    ('{ preset = "read-only", class = 0xF5 }', "class", "no service of preset read-only is on class 245"),
    ('{ service = "read_tag", class = "0x6B" }', "class", 'expected a number or a range "low-high"'),
    ('{ service = "get_attribute_single", instance = -1 }', "instance", "-1 is outside 0..4294967295"),
    ('{ service = "get_attribute_single", attribute = 70000 }', "attribute", "70000 is outside 0..65535"),
    ('{ service = "read_tag", tag = "Line*.x" }', "tag", '"*" stands only for a whole last part'),
    ('{ service = "read_tag", tag = "" }', "tag", "an empty tag pattern"),
    ('{ service = "read_tag", tag = "A..B" }', "tag", "an empty part between dots"),
    ('{ service = "read_tag", tag = "A-B" }', "tag", '"A-B" is not a tag name'),
    ('{ service = "read_tag", tag = "A[9..1]" }', "tag", "range start 9 is above its end 1"),
    ('{ service = "read_tag", tag = "A[1,2,3,4]" }', "tag", "more than 3 dimensions"),
    ('{ service = "read_tag", tag = "A[x]" }', "tag", 'expected an index or a range "low..high"'),
    ('{ service = "read_tag", tag = "A[4294967296]" }', "tag", "4294967296 is outside 0..4294967295"),
    ('{ service = "read_tag", tag = ["A", 3] }', "tag[1]", "expected a tag pattern string"),
    ('{ service = "read_tag", tag = [] }', "tag", "the array is empty: name at least one tag pattern"),
    ('{ service = "read_tag", tag = "A", instance = 1 }', "tag", "tag and instance exclude each other"),
    ('{ service = "forward_open", tag = "A" }', "tag", "applies to services on tags (class 0x6B), and this"),
    ('{ service = "get_attribute_single", class = 1, tag = "A" }', "tag", "applies to services on tags"),
    ('{ service = "read_tag", value = "0..1" }', "value", "this entry names no service that writes"),
    (
        '{ service = "write_tag", value = "0-1500" }',
        "value",
        '(CIP values may be negative, so ranges use "..")',
    ),
    ('{ service = "write_tag", value = "5..2" }', "value", '"5..2": range start 5 is above its end 2'),
    ('{ service = "write_tag", value = nan }', "value", "bounds must be finite numbers"),
    ('{ service = "write_tag", value = ["1", "x"] }', "value[1]", '"x": expected a number or a range'),
    ('{ service = "write_tag", value = [] }', "value", "the list is empty"),
    ('{ service = "write_tag", value = 1e30 }', "value", "is outside what any CIP atomic type holds"),
    ("3", "", "3: expected a table, got an integer"),
]


@pytest.mark.parametrize(("entry", "field", "message"), ENTRY_MISTAKES)
def test_entry_mistakes(entry: str, field: str, message: str) -> None:
    path, got = entry_issue(entry)
    expected_path = "rules[0].enip[0]" + (f".{field}" if field and not field.startswith("[") else field)
    assert path == expected_path.replace(".[", "[")
    assert message in got


def test_entry_errors_carry_their_line() -> None:
    text = enip_head() + (
        '[[rules]]\nid = "r"\nsubjects = ["spiffe://plant1.example/user/alice"]\nassets = ["logix-1"]\n'
        'enip = [\n  { service = "read_tag" },\n  { service = 0x4C },\n]\n'
    )
    line, path, _ = only_issue(text)
    assert path == "rules[0].enip[1].service"
    assert text.splitlines()[line - 1] == "  { service = 0x4C },"
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "plant.toml")
    assert str(caught.value).startswith(
        f"plant.toml:{line}: rules[0].enip[1].service: 76 (0x4C): a service code"
    )


def test_entries_must_fit_the_protocols_of_the_rules_assets() -> None:
    text = enip_head() + (
        '[assets.plc-1]\nprotocol = "modbus"\nupstream = "10.0.0.5:502"\n\n'
        + rule('{ preset = "read-only" }').replace("enip = [", "modbus = [{ fc = 3 }]\nenip = [")
        + rule('{ preset = "read-only" }', "r2").replace('["logix-1"]', '["plc-1"]')
        + rule('{ preset = "read-only" }', "r3").replace('["logix-1"]', '["*"]')
        + rule('{ preset = "read-only" }', "r4").replace('["logix-1"]', '["plc-1", "logix-1"]')
    )
    assert [(path, message) for _, path, message in issues(text)] == [
        ("rules[0].modbus", "none of the rule's assets speaks modbus (logix-1 is enip)"),
        ("rules[1].enip", "none of the rule's assets speaks enip (plc-1 is modbus)"),
    ]


def test_the_error_examples_in_the_reference_are_what_the_loader_says() -> None:
    shown = re.findall(r"^policy\.toml:\d+: (rules\[2\]\.enip\[\d\]\.service): (.*)$", DOC.read_text(), re.M)
    assert len(shown) == 2
    for (_, message), entry in zip(shown, ('{ service = "read_tg" }', "{ service = 0x4E }"), strict=True):
        assert entry_issue(entry)[1] == message


FIELD_TEXT = st.text(alphabet=st.sampled_from("0123456789xXaBf.:_*[],-+e /Line1Program"), max_size=24)


@settings(max_examples=300, deadline=None)
@given(service=st.one_of(FIELD_TEXT, st.integers(-5, 300)), tag=FIELD_TEXT, value=FIELD_TEXT)
def test_field_text_is_parsed_or_reported_never_crashed_on(service: str | int, tag: str, value: str) -> None:
    key, problem = parse_service(service)
    assert (key is None) != (problem is None)
    pattern, problem = parse_tag_pattern(tag)
    assert (pattern is None) != (problem is None)
    if pattern is not None:
        assert pattern.covers((("x", None),), 1) in (True, False)
    bounds, problems = parse_value_bounds(value)
    assert (bounds is None) != (not problems)
