"""What just-in-time grants need from a policy: periods (``when = { from, until }``) and
``[vendor_access]``, each refused with a message naming the line when malformed."""

from __future__ import annotations

import pytest

from policies import PolicyError, parse_policy
from policies.enip.tags import parse_tag_pattern
from policies.opcua.nodes import NodePattern, parse_id
from policies.timewindow import Period
from policies.values import ValueBounds, parse_value_bounds

HEAD = """trust_domain = "plant1.example"

[assets.plc-1]
protocol = "modbus"
upstream = "127.0.0.1:502"

[assets.logix-1]
protocol = "enip"
upstream = "127.0.0.1"

[assets.opc-1]
protocol = "opcua"
upstream = "opc.tcp://127.0.0.1:4840/"

[groups]
vendors = ["spiffe://plant1.example/vendor/*"]
"""


def _rule(when: str) -> str:
    return (
        HEAD + '\n[[rules]]\nid = "gr-1"\nsubjects = ["group:vendors"]\nassets = ["plc-1"]\n'
        f'when = {when}\nmodbus = [{{ fc = 3, address = "0-9" }}]\n'
    )


def test_a_period_is_open_once_from_its_start_to_its_end() -> None:
    policy = parse_policy(_rule("{ from = 2026-12-07T12:00:00Z, until = 2026-12-07T14:00:00+01:00 }"))
    window = policy.rules[0].window
    assert isinstance(window, Period)
    start = 1796644800.0  # 2026-12-07T12:00:00Z
    assert (window.start, window.end) == (start, start + 3600)
    assert [window.is_open(t) for t in (start - 1, start, start + 3599.9, start + 3600)] == [
        False,
        True,
        True,
        False,
    ]
    as_strings = parse_policy(_rule('{ from = "2026-12-07T12:00:00Z", until = "2026-12-07T13:00:00Z" }'))
    assert str(as_strings.rules[0].window) == "2026-12-07T12:00:00Z until 2026-12-07T13:00:00Z"


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ("{ from = 2026-12-07T12:00:00Z, until = 2026-12-07T12:00:00Z }", '"until" must come after "from"'),
        ("{ from = 2026-12-07T12:00:00, until = 2026-12-07T13:00:00Z }", "needs a UTC offset"),
        ('{ from = "soon", until = 2026-12-07T13:00:00Z }', "expected a date and time"),
        ("{ from = 2026-12-07T12:00:00Z }", 'a period is "from" and "until" together'),
        ('{ from = 2026-12-07T12:00:00Z, until = 2026-12-07T13:00:00Z, days = "mon" }', "together, without"),
    ],
)
def test_a_malformed_period_is_refused_on_its_line(when: str, message: str) -> None:
    with pytest.raises(PolicyError) as refused:
        parse_policy(_rule(when), "policy.toml")
    assert message in str(refused.value) and "policy.toml:22" in str(refused.value)


VENDOR_ACCESS = """
[vendor_access]
subjects = ["group:vendors"]
assets = ["plc-1", "logix-1", "opc-1"]
max_window_s = 7200
approvers = 2
modbus = [{ preset = "read-only", address = "0-99" }]
enip = [
  { preset = "read-only", tag = ["Setpoint", "Line1.*"] },
  { service = "write_tag", tag = "Setpoint", value = "0..1500" },
]
opcua = [{ service = ["Read", "Write"], namespace = "urn:plant1:line1", node = "Line1.*", value = "0..100" }]
"""


def test_vendor_access_says_who_may_ask_for_what_and_how_many_approve() -> None:
    policy = parse_policy(HEAD + VENDOR_ACCESS)
    access = policy.vendor_access
    assert access is not None
    assert (access.assets, access.max_window_s, access.approvers) == (
        ("plc-1", "logix-1", "opc-1"),
        7200.0,
        2,
    )
    assert [e.describe() for e in access.enip] == [
        "preset read-only; tag Setpoint, Line1.*",
        "service write_tag; tag Setpoint; value 0..1500",
    ]
    assert [e.describe() for e in access.opcua] == [
        "service Read, Write; node nsu=urn:plant1:line1;s=Line1.*; value 0..100"
    ]
    assert policy.may_request_grant("spiffe://plant1.example/vendor/acme/jo")
    assert not policy.may_request_grant("spiffe://plant1.example/user/alice")
    assert parse_policy(HEAD).vendor_access is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("approvers = 2", "approvers = 6"), "approvers"),
        (("max_window_s = 7200", "max_window_s = 0"), "max_window_s"),
        (('assets = ["plc-1", "logix-1", "opc-1"]', 'assets = ["plc-9"]'), "no such asset"),
        (('address = "0-99" }', 'address = "0-99", unit = 1 }'), "names fc, preset, address and value only"),
        (("approvers = 2", "approvers = 2\nmaybe = 1"), "maybe"),
        (
            ('tag = "Setpoint", value', 'tag = "Setpoint", class = 0x6B, value'),
            "names service, preset, tag and value only",
        ),
        (
            ('node = "Line1.*"', 'node = "Line1.*", attribute = "Value"'),
            "names service, service_set, preset, namespace, node and value only",
        ),
        (('tag = ["Setpoint", "Line1.*"]', 'tag = ["Set*point"]'), '"*" stands only for a whole last part'),
        (('node = "Line1.*"', 'node = "ns=2;s=Line1.*"'), "namespace indices differ between servers"),
    ],
)
def test_a_malformed_vendor_access_is_refused(change: tuple[str, str], message: str) -> None:
    with pytest.raises(PolicyError) as refused:
        parse_policy(HEAD + VENDOR_ACCESS.replace(*change), "policy.toml")
    assert message in str(refused.value) and "vendor_access" in str(refused.value)


@pytest.mark.parametrize(
    ("allowed", "asked", "included"),
    [
        ("*", "Line1.Speed", True),
        ("Line1", "Line1.Speed", True),
        ("Line1", "Line1.*", True),
        ("Line1", "Line1", True),
        ("Line1.*", "Line1.Speed", True),
        ("Line1.*", "Line1.*", True),
        ("Line1.*", "Line1", False),  # every member, not the tag as a whole
        ("Line1.*", "Line2.Speed", False),
        ("Line1.Speed", "Line1", False),
        ("Recipe", "Recipe[3]", True),
        ("Recipe[0..9]", "Recipe[3]", True),
        ("Recipe[0..9]", "Recipe[5..9]", True),
        ("Recipe[0..9]", "Recipe[5..10]", False),
        ("Recipe[0..9]", "Recipe", False),  # the whole array: its size is not known
        ("Line1.Speed", "*", False),
    ],
)
def test_a_tag_pattern_includes_another_only_when_all_it_stands_for_is_inside(
    allowed: str, asked: str, included: bool
) -> None:
    outer, _ = parse_tag_pattern(allowed)
    inner, _ = parse_tag_pattern(asked)
    assert outer is not None and inner is not None
    assert outer.includes(inner) is included


@pytest.mark.parametrize(
    ("allowed", "asked", "included"),
    [
        ("s=Line1.*", "s=Line1.Setpoint", True),
        ("s=Line1.*", "s=Line1.Tank*", True),
        ("s=Line1.*", "s=Line1*", False),  # Line10.X too
        ("s=*", "s=Anything.*", True),
        ("s=*.Setpoint", "s=Line1.Setpoint", True),
        ("s=*.Setpoint", "s=Line1.*.Setpoint", False),  # cannot be told: refused
        ("s=Line1.Setpoint", "s=Line1.Setpoint", True),
        ("i=1000-1999", "i=1200-1300", True),
        ("i=1000-1999", "i=1200-2000", False),
        ("i=*", "s=X", False),
        ("g=09087e75-8e5e-499b-954f-f2a9603db28a", "g=09087e75-8e5e-499b-954f-f2a9603db28a", True),
    ],
)
def test_a_node_pattern_includes_another_only_when_it_matches_all_it_does(
    allowed: str, asked: str, included: bool
) -> None:
    outer, _ = parse_id(allowed)
    inner, _ = parse_id(asked)
    assert outer is not None and inner is not None
    assert NodePattern("urn:a", outer).includes(NodePattern("urn:a", inner)) is included
    assert not NodePattern("urn:b", outer).includes(NodePattern("urn:a", inner))
    assert NodePattern("urn:a", None).includes(NodePattern("urn:a", inner))


def test_value_bounds_include_bounds_inside_them() -> None:
    def bounds(text: str) -> ValueBounds:
        found, _ = parse_value_bounds(text.split(","))
        assert found is not None
        return found

    assert bounds("0..1500").includes(bounds("0..100,1200..1500"))
    assert bounds("-40.5..120").includes(bounds("-40.5..-40"))
    assert not bounds("0..1500").includes(bounds("0..1500.5"))
    assert not bounds("0..10,20..30").includes(bounds("5..25"))
