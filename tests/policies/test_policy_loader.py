"""Loading: valid files load with the documented defaults; every mistake is reported with file, line,
field path, the offending value and what was expected - all of them, in one run."""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies import DenyAction, PolicyError, PolicyIssue, load_policy, parse_policy
from tests.policies.policy_helpers import head, issues, only_issue

DOC = Path(__file__).resolve().parents[2] / "docs" / "policy.md"


def doc_blocks() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S)


# ---------------------------------------------------------------------------------- valid files


def test_the_example_at_the_top_of_the_reference_loads() -> None:
    policy = parse_policy(doc_blocks()[0], "policy.toml")
    assert policy.trust_domain == "plant1.example"
    assert [rule.id for rule in policy.rules] == [
        "operators-read-line1",
        "acme-read-only",
        "operators-line1-tags",
        "operators-opc-line1",
    ]
    asset = policy.assets["plc-1"]
    assert (asset.upstream_host, asset.upstream_port, asset.unit_ids) == ("10.0.0.5", 502, frozenset({1}))


def test_every_example_in_the_reference_loads_under_the_top_example() -> None:
    top, *examples = doc_blocks()
    assert len(examples) >= 3
    groups = 'engineers = ["spiffe://plant1.example/user/carol"]\n'
    for example in examples:
        text = top.replace("[groups]\n", "[groups]\n" + groups) + "\n" + example
        policy = parse_policy(text)
        assert len(policy.rules) == 4 + example.count("[[rules]]")


def test_asset_defaults_follow_the_reference() -> None:
    asset = parse_policy(head()).assets["plc-2"]
    assert asset.unit_ids == frozenset({1})
    assert dict(asset.unit_map) == {}
    assert asset.mode == "enforce"
    assert asset.deny == DenyAction("exception", 1, 2, 3)
    assert (asset.max_connections, asset.max_in_flight, asset.queue_limit) == (1, 1, 64)
    assert (asset.connect_timeout_s, asset.response_timeout_s) == (3.0, 2.0)
    assert (asset.queue_timeout_s, asset.on_desync, asset.preserve_order) == (0.4, "reconnect", False)
    assert asset.deny.unit == 0x0A


def test_device_fault_settings_and_their_mistakes_at_their_lines() -> None:
    extra = 'queue_timeout_s = 0.25\non_desync = "wait"\npreserve_order = true\ndeny = { unit = 11 }\n'
    asset = parse_policy(head(asset_extra=extra)).assets["plc-1"]
    assert (asset.queue_timeout_s, asset.on_desync, asset.preserve_order) == (0.25, "wait", True)
    assert asset.deny.unit == 11
    assert only_issue(head(asset_extra="queue_timeout_s = 0")) == (
        7,
        "assets.plc-1.queue_timeout_s",
        "0 is outside (0, 3600] seconds",
    )
    assert only_issue(head(asset_extra='on_desync = "retry"')) == (
        7,
        "assets.plc-1.on_desync",
        '"retry" is not one of: reconnect, wait',
    )
    line, path, message = only_issue(head(asset_extra='preserve_order = "yes"'))
    assert (line, path) == (7, "assets.plc-1.preserve_order") and "true or false" in message


def test_asset_settings() -> None:
    text = head(
        units='"1-3"',
        asset_extra=(
            'unit_map = { "1" = 17, "3" = 0 }\nmode = "monitor"\n'
            'deny = { action = "close", value = 9 }\nmax_connections = 4\nmax_in_flight = 8\n'
            "queue_limit = 0\nconnect_timeout_s = 1\nresponse_timeout_s = 0.25\n"
        ),
    ).replace('"10.0.0.6:502"', '"[fe80::1]:1502"')
    policy = parse_policy(text)
    asset = policy.assets["plc-1"]
    assert asset.unit_ids == frozenset({1, 2, 3})
    assert [asset.device_unit(u) for u in (1, 2, 3)] == [17, 2, 0]
    assert asset.mode == "monitor"
    assert asset.deny == DenyAction("close", 1, 2, 9)
    assert (asset.max_connections, asset.max_in_flight, asset.queue_limit) == (4, 8, 0)
    assert (asset.connect_timeout_s, asset.response_timeout_s) == (1.0, 0.25)
    assert (policy.assets["plc-2"].upstream_host, policy.assets["plc-2"].upstream_port) == ("fe80::1", 1502)


def test_table_forms_of_when_and_modbus_entries() -> None:
    text = head() + (
        '[[rules]]\nid = "a"\nsubjects = ["spiffe://plant1.example/user/x"]\nassets = ["*"]\n'
        '[rules.when]\ndays = "sat,sun"\n'
        '[[rules.modbus]]\nfc = 3\n[[rules.modbus]]\nfc = 8\nsubfunction = "0-4"\n'
    )
    rule = parse_policy(text).rules[0]
    assert rule.window is not None and rule.window.days == frozenset({5, 6})
    assert [sorted(entry.function_codes) for entry in rule.modbus] == [[3], [8]]


def test_revision_and_source_of_a_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(doc_blocks()[0])
    policy = load_policy(path)
    assert policy.source == str(path)
    assert policy.revision == hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert parse_policy(doc_blocks()[0]).revision == policy.revision
    assert parse_policy(doc_blocks()[0] + "\n").revision != policy.revision


# ---------------------------------------------------------------------------------- file errors


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as missing:
        load_policy(tmp_path / "absent.toml")
    assert (
        str(missing.value) == f"{tmp_path / 'absent.toml'}: cannot read the file: No such file or directory"
    )
    latin = tmp_path / "latin.toml"
    latin.write_bytes('trust_domain = "x"\n# Grüße\n'.encode("latin-1"))
    with pytest.raises(PolicyError) as undecodable:
        load_policy(latin)
    assert str(undecodable.value) == f"{latin}:2: not UTF-8 text (TOML files are UTF-8)"


def test_syntax_errors_carry_the_parsers_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('trust_domain = "plant1.example"\n\n[assets.plc-1]\nprotocol "modbus"\n')
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert str(caught.value) == f"{path}:4:10: TOML syntax: Expected '=' after a key in a key/value pair"
    assert only_issue('trust_domain = "x"\nrules = [\n')[:2] == (3, "")


def test_issue_and_error_text() -> None:
    issue = PolicyIssue(
        "policy.toml", 14, None, "rules[1].modbus[0].address", '"10-5": range start 10 is above its end 5'
    )
    assert (
        str(issue) == 'policy.toml:14: rules[1].modbus[0].address: "10-5": range start 10 is above its end 5'
    )
    assert (
        str(PolicyIssue("p.toml", None, None, "trust_domain", "missing")) == "p.toml: trust_domain: missing"
    )
    error = PolicyError([issue, PolicyIssue("policy.toml", 3, 2, "", "TOML syntax: x")])
    assert str(error).splitlines() == ["policy.toml:3:2: TOML syntax: x", str(issue)]


# -------------------------------------------------------------------------- every error, located

MANY_MISTAKES = """\
trust_domain = "plant1.example"
colour = "blue"

[assets.plc-1]
protocol = "modbus-tcp"
upstream = "10.0.0.5"
unit_ids = [1, 300]
unit_map = { "x" = 1 }
mode = "learning"
deny = { action = "reset", function = 0, adress = 2 }
max_connections = 0
response_timeout_s = -1.0

[assets.PLC_2]
protocol = "modbus"
upstream = "[fe80::1]:502"

[groups]
operators = ["spiffe://plant1.example/user/alice", "group:admins", "spiffe://other.example/user/bob"]
"bad name" = []

[[rules]]
id = "r1"
subjects = ["group:operators", "group:nobody", "spiffe://plant1.example/user/../x", "spiffe://plant1.example/us*r"]
assets = ["plc-1", "plc-9"]
effect = "permit"
modbus = [
  { fc = [3, 200], address = "10-5" },
  { fc = 8 },
  { preset = "read-everything", address = "abc" },
  { subfunction = 1, fc = 3 },
  { unit = 256, address = [1, "2-70000", true], value = "5-" },
  { adress = "1" },
]
when = { days = "mon-fry", hours = "6:00-18:00", tz = "Europe/Berln", zone = 1 }

[[rules]]
id = "r1"
subjects = []
modbus = "fc 3"
mode = "audit"
"""

EXPECTED = [
    (
        2,
        "colour",
        'unknown key "colour" (expected one of: trust_domain, assets, groups, rules, tests, vendor_access)',
    ),
    (5, "assets.plc-1.protocol", '"modbus-tcp" is not one of: modbus, enip'),
    (6, "assets.plc-1.upstream", '"10.0.0.5": expected "host:port" (or "[v6addr]:port" for IPv6)'),
    (7, "assets.plc-1.unit_ids[1]", "300 is outside 0..255"),
    (8, "assets.plc-1.unit_map.x", '"x": expected a client unit id in 0..255'),
    (9, "assets.plc-1.mode", '"learning" is not one of: enforce, monitor'),
    (10, "assets.plc-1.deny.adress", 'unknown key "adress"; did you mean "address"?'),
    (10, "assets.plc-1.deny.action", '"reset" is not one of: exception, drop, close'),
    (10, "assets.plc-1.deny.function", "0 is outside 1..255"),
    (11, "assets.plc-1.max_connections", "0 is outside 1..1000"),
    (12, "assets.plc-1.response_timeout_s", "-1.0 is outside (0, 3600] seconds"),
    (14, "assets.PLC_2", 'asset name "PLC_2": expected DNS labels'),
    (19, "groups.operators[1]", '"group:admins": a group may not name another group'),
    (19, "groups.operators[2]", 'belongs to trust domain "other.example", not "plant1.example"'),
    (20, 'groups."bad name"', 'group name "bad name" may hold only'),
    (24, "rules[0].subjects[1]", '"group:nobody": no such group'),
    (24, "rules[0].subjects[2]", 'the path segment ".." is not allowed'),
    (24, "rules[0].subjects[3]", '"*" is allowed only at the end of a pattern'),
    (25, "rules[0].assets[1]", '"plc-9": no such asset'),
    (26, "rules[0].effect", '"permit" is not one of: allow, deny'),
    (28, "rules[0].modbus[0].fc[1]", "200 is outside 1..127"),
    (28, "rules[0].modbus[0].address", '"10-5": range start 10 is above its end 5'),
    (29, "rules[0].modbus[1]", "FC 8 is decided per sub-function: list them"),
    (30, "rules[0].modbus[2].preset", '"read-everything" is not one of: read-only, read-write'),
    (30, "rules[0].modbus[2].address", '"abc": expected a number or a range "low-high"'),
    (31, "rules[0].modbus[3].subfunction", "applies only to FC 8 and FC 43"),
    (32, "rules[0].modbus[4]", 'names no function code: give "fc"'),
    (32, "rules[0].modbus[4].unit", "256 is outside 0..255"),
    (32, "rules[0].modbus[4].address[1]", '"2-70000": 70000 is outside 0..65535'),
    (32, "rules[0].modbus[4].address[2]", "true: expected a number or a range"),
    (32, "rules[0].modbus[4].value", '"5-": expected a number or a range'),
    (33, "rules[0].modbus[5].adress", 'unknown key "adress"; did you mean "address"?'),
    (33, "rules[0].modbus[5]", "names no function code"),
    (35, "rules[0].when.zone", 'unknown key "zone"'),
    (35, "rules[0].when.days", '"mon-fry": expected days such as "mon-fri"'),
    (35, "rules[0].when.hours", '"6:00-18:00": expected "HH:MM-HH:MM"'),
    (35, "rules[0].when.tz", '"Europe/Berln" is not an IANA time zone name'),
    (37, "rules[1]", 'missing required key "assets"'),
    (38, "rules[1].id", 'duplicate rule id "r1" (first used by rules[0])'),
    (39, "rules[1].subjects", "the array is empty"),
    (40, "rules[1].modbus", '"fc 3": expected an array of inline tables'),
    (41, "rules[1].mode", '"audit" is not one of: enforce, monitor'),
]


def test_every_mistake_in_a_file_is_reported_at_its_line() -> None:
    found = issues(MANY_MISTAKES)
    assert len(found) == len(EXPECTED)
    for (line, path, message), (want_line, want_path, want_message) in zip(found, EXPECTED, strict=True):
        assert (line, path) == (want_line, want_path), message
        assert want_message in message, (path, message)


def test_issues_print_as_the_reference_shows() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(MANY_MISTAKES, "policy.toml")
    lines = str(caught.value).splitlines()
    assert lines[1] == 'policy.toml:5: assets.plc-1.protocol: "modbus-tcp" is not one of: modbus, enip, opcua'
    assert 'policy.toml:28: rules[0].modbus[0].address: "10-5": range start 10 is above its end 5' in lines


RULE = '[[rules]]\nid = "a"\nsubjects = ["spiffe://plant1.example/user/x"]\nassets = ["plc-1"]\n'


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        ("", "trust_domain", "missing"),
        ('trust_domain = "spiffe://plant1.example"', "trust_domain", "give the bare trust domain"),
        ('trust_domain = "plant1.example"\nassets = 3', "assets", "3: expected a table, got an integer"),
        ('trust_domain = "plant1.example"\nrules = {}', "rules", "{}: expected an array of tables"),
        (
            'trust_domain = "plant1.example"\n[assets.a]\nprotocol = "modbus"',
            "assets.a",
            'missing required key "upstream"',
        ),
        (
            head().replace('upstream = "10.0.0.6:502"', 'upstream = "10.0.0.6:0"'),
            "assets.plc-2.upstream",
            "port",
        ),
        (
            head().replace('upstream = "10.0.0.6:502"', 'upstream = "fe80::1:502"'),
            "assets.plc-2.upstream",
            "in brackets",
        ),
        (
            head().replace('upstream = "10.0.0.6:502"', 'upstream = "300.1.1.1:502"'),
            "assets.plc-2.upstream",
            "not an IPv4",
        ),
        (
            head(asset_extra='unit_map = { "2" = 5 }', units="[1]"),
            "assets.plc-1.unit_map.2",
            "not in unit_ids",
        ),
        (
            head(asset_extra="connect_timeout_s = true"),
            "assets.plc-1.connect_timeout_s",
            "true: expected a number",
        ),
        (head(units="[]"), "assets.plc-1.unit_ids", "the list is empty"),
        (head() + RULE.replace('id = "a"', "id = 7"), "rules[0].id", "7: expected a string, got an integer"),
        (head() + RULE + "description = 1\n", "rules[0].description", "expected a string"),
        (head() + RULE + "modbus = [{ fc = [] }]", "rules[0].modbus[0].fc", "the array is empty"),
        (head() + RULE + "modbus = [{ fc = 43 }]", "rules[0].modbus[0]", "FC 43 is decided per sub-function"),
        (head() + RULE + 'modbus = [{ fc = "all" }]', "rules[0].modbus[0].fc", 'fc = "*" names every one'),
        (head() + RULE + 'modbus = [{ fc = [3, "*"] }]', "rules[0].modbus[0].fc[1]", 'fc = "*" names every'),
        (
            head() + RULE + "modbus = [{ fc = 3, file = [[1]] }]",
            "rules[0].modbus[0].file[0]",
            "lists do not nest",
        ),
        (head() + RULE + "modbus = [3]", "rules[0].modbus[0]", "3: expected a table"),
        (
            head() + RULE + 'when = { hours = "06:00-06:00" }',
            "rules[0].when.hours",
            "start and end are equal",
        ),
        (head() + RULE + 'when = { hours = "06:00-24:30" }', "rules[0].when.hours", "the end must lie in"),
        (head() + RULE + "when = { days = 1 }", "rules[0].when.days", "expected a string"),
        (
            head() + RULE.replace('"spiffe://plant1.example/user/x"', '"spiffe://plant1.example*"'),
            "rules[0].subjects[0]",
            'must include "spiffe://plant1.example/"',
        ),
        (
            head() + RULE.replace('"spiffe://plant1.example/user/x"', '"spiffe://plant1.example/a b"'),
            "rules[0].subjects[0]",
            'path segment "a b"',
        ),
        (
            head() + RULE.replace('"spiffe://plant1.example/user/x"', '"https://plant1.example/x"'),
            "rules[0].subjects[0]",
            "expected a SPIFFE id",
        ),
        (
            head() + RULE.replace('"spiffe://plant1.example/user/x"', '"spiffe://plant1.example/"'),
            "rules[0].subjects[0]",
            "the path is empty",
        ),
        (
            head() + RULE.replace('assets = ["plc-1"]', 'assets = "plc-1"'),
            "rules[0].assets",
            'expected an array of asset names or "*"',
        ),
    ],
)
def test_single_mistakes(text: str, path: str, message: str) -> None:
    found = issues(text)
    assert any(p == path and message in m for _, p, m in found), found


def test_hostile_keys_and_numbers_are_reported_not_crashed_on() -> None:
    line, path, _ = only_issue(head(asset_extra='unit_map = { "\\u001b[31m" = 1 }'))
    assert (line, path) == (7, 'assets.plc-1.unit_map."\\u001b[31m"')
    found = issues(head(asset_extra='unit_map = { "' + "1" * 5000 + '" = 1 }'))
    assert len(found[0][1]) < 80
    huge = "1" * 5000
    assert issues(head().replace('"10.0.0.6:502"', f'"h:{huge}"'))[0][1] == "assets.plc-2.upstream"
    assert (
        issues(head() + RULE + f'modbus = [{{ fc = 3, address = "{huge}" }}]')[0][1]
        == "rules[0].modbus[0].address"
    )
    assert issues(head() + RULE + f"modbus = [{{ fc = 3, address = {huge} }}]")[0][2].startswith(
        "TOML syntax: "
    )
    # Digits of other scripts are digits to Python, not to a policy.
    assert (
        issues(head() + RULE + 'modbus = [{ fc = 3, address = "\u0663-\u0665" }]')[0][1]
        == "rules[0].modbus[0].address"
    )
    assert issues(head() + RULE + 'when = { hours = "\u0660\u0666:00-18:00" }')[0][1] == "rules[0].when.hours"


# ------------------------------------------------------------------------------------- fuzzing

toml_scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        ["modbus", "0-999", "10-5", "*", "group:operators", "spiffe://plant1.example/x", "06:00-18:00"]
    ),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


def toml_text(value: object) -> str:
    """Any value as TOML, on one line (inline tables and arrays)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(str(value), repr(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_text(v)}" for k, v in value.items()) + " }"
    return str(value)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_random_damage_is_reported_never_crashed_on(data: st.DataObject) -> None:
    document = tomllib.loads(doc_blocks()[0])
    for _ in range(data.draw(st.integers(1, 3))):
        # Walk down a random path of the valid document and replace what is there.
        node: Any = document
        while True:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            key = data.draw(st.sampled_from(keys))
            child = node[key]
            if isinstance(child, dict | list) and child and data.draw(st.booleans()):
                node = child
                continue
            node[key] = data.draw(toml_values)
            break
    text = "\n".join(f"{json.dumps(key)} = {toml_text(value)}" for key, value in document.items())
    try:
        parse_policy(text, "fuzz.toml")
    except PolicyError as error:
        assert error.issues
        assert all(issue.source == "fuzz.toml" and issue.message for issue in error.issues)
