"""Loading OPC UA assets and opcua entries: the documented defaults and settings, and every mistake
reported with file, line, field path, the offending value and what was expected."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies import DenyAction, OpcUaUser, PolicyError, parse_policy
from policies.opcua.nodes import UA_NAMESPACE, NodePattern, parse_id
from policies.opcua.paths import parse_browse_path
from policies.opcua.services import PRESETS, SERVICE_SETS
from tests.policies.opcua_helpers import PLANT, opcua_head, opcua_policy, rule
from tests.policies.policy_helpers import issues, only_issue


def entry_issue(entry: str) -> tuple[int | None, str, str]:
    """The one problem with a single entry of a rule on the opcua asset: (line, path, message)."""
    return only_issue(opcua_head() + rule(entry))


# ------------------------------------------------------------------------------------------ assets


def test_opcua_asset_defaults_follow_the_reference() -> None:
    text = opcua_head().replace('"opc.tcp://10.0.0.9:4840/plant"', '"10.0.0.9"')
    asset = parse_policy(text).assets["opc-1"]
    assert (asset.protocol, asset.upstream_host, asset.upstream_port, asset.endpoint_path) == (
        "opcua",
        "10.0.0.9",
        4840,
        "",
    )
    assert asset.endpoint_url == "opc.tcp://10.0.0.9:4840"
    assert asset.deny == DenyAction("exception", 0x801F0000, 0x801F0000, 0x801F0000, 0x800B0000)
    assert (asset.security_policy, asset.security_mode, asset.user) == ("None", "None", OpcUaUser())
    assert (asset.application_cert, asset.application_key, asset.device_cert) == (None, None, None)
    assert (asset.max_sessions, asset.queue_limit, asset.mode) == (64, 64, "enforce")
    assert (asset.connect_timeout_s, asset.response_timeout_s) == (3.0, 2.0)


def test_opcua_asset_settings() -> None:
    text = opcua_head(
        asset_extra=(
            'security_policy = "Basic256Sha256"\nsecurity_mode = "SignAndEncrypt"\n'
            'user = { username = "ztgate", password_file = "/etc/ztgate/plc.pw" }\n'
            'application_cert = "/etc/ztgate/gw.der"\napplication_key = "/etc/ztgate/gw.pem"\n'
            'device_cert = "/etc/ztgate/plc-1.der"\n'
            "max_sessions = 8\nqueue_limit = 16\nconnect_timeout_s = 5\nresponse_timeout_s = 1.5\n"
            'mode = "monitor"\ndeny = { action = "drop", value = "BadOutOfRange" }\n'
        )
    )
    asset = parse_policy(text).assets["opc-1"]
    assert asset.endpoint_url == "opc.tcp://10.0.0.9:4840/plant"
    assert (asset.security_policy, asset.security_mode) == ("Basic256Sha256", "SignAndEncrypt")
    assert asset.user == OpcUaUser("username", "ztgate", "/etc/ztgate/plc.pw")
    assert str(asset.user) == "username ztgate"
    assert (asset.application_cert, asset.application_key) == ("/etc/ztgate/gw.der", "/etc/ztgate/gw.pem")
    assert asset.device_cert == "/etc/ztgate/plc-1.der"
    assert (asset.max_sessions, asset.queue_limit, asset.mode) == (8, 16, "monitor")
    assert asset.deny == DenyAction("drop", 0x801F0000, 0x801F0000, 0x803C0000, 0x800B0000)
    for upstream, host, port, path in (
        ("opc.tcp://plc.local/", "plc.local", 4840, "/"),
        ("OPC.TCP://[fe80::9]:4841/a/b", "fe80::9", 4841, "/a/b"),
        ("plc.local:48010", "plc.local", 48010, ""),
    ):
        found = parse_policy(opcua_head().replace("opc.tcp://10.0.0.9:4840/plant", upstream)).assets["opc-1"]
        assert (found.upstream_host, found.upstream_port, found.endpoint_path) == (host, port, path)
    assert found.endpoint_url == "opc.tcp://plc.local:48010"
    certificate = opcua_head(
        asset_extra='user = "certificate"\napplication_cert = "gw.der"\napplication_key = "gw.pem"\n'
    )
    assert parse_policy(certificate).assets["opc-1"].user == OpcUaUser("certificate")


ASSET_MISTAKES = [
    ('upstream = "http://10.0.0.9:4840"', "upstream", "expected opc.tcp://host:port/path"),
    ('upstream = "opc.tcp://10.0.0.9:4840/x?y=1"', "upstream", "no query or fragment"),
    ('upstream = "opc.tcp://10.0.0.9:0/"', "upstream", "the port must be a number in 1..65535"),
    ('security_policy = "Basic256"', "security_policy", '"Basic256" is deprecated'),
    ('security_policy = "Basic128Rsa15"', "security_policy", "deprecated (OPC UA 1.04"),
    ('security_policy = "Aes256_Sha256_RsaPss"', "security_policy", "not supported by the gateway"),
    (
        'security_policy = "http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256"',
        "security_policy",
        'write the policy\'s name alone, e.g. "Basic256Sha256"',
    ),
    ('security_policy = "basic256sha256"', "security_policy", "is not one of: None, Basic256Sha256"),
    ('security_mode = "Encrypt"', "security_mode", "is not one of: None, Sign, SignAndEncrypt"),
    ('security_mode = "Sign"', "security_mode", 'needs security_policy = "Basic256Sha256"'),
    (
        'security_policy = "Basic256Sha256"\nsecurity_mode = "None"',
        "security_mode",
        'needs security_mode "Sign"',
    ),
    ('user = "admin"', "user", 'expected "anonymous", "certificate" or'),
    ('user = { username = "a" }', "user", 'missing required key "password_file"'),
    ('user = { username = "", password_file = "p" }', "user.username", "expected 1 to 256 printable"),
    (
        'user = { name = "a", password_file = "p" }',
        "user.name",
        'unknown key "name"; did you mean "username"?',
    ),
    ('user = "certificate"', "user", "give application_cert and application_key"),
    ('application_cert = "gw.der"', "application_key", "application_cert and application_key go together"),
    ('application_key = ""', "application_key", "expected the path of a file"),
    ('device_cert = "plc.der"', "device_cert", 'on a signed channel only: it needs security_mode "Sign"'),
    ("device_cert = 3", "device_cert", "3: expected a string, got an integer"),
    ("max_sessions = 0", "max_sessions", "0 is outside 1..1000"),
    ("max_connections = 2", "max_connections", "applies to modbus and enip assets only"),
    ('route = "1/0"', "route", "applies to enip assets only"),
    ("unit_ids = [1]", "unit_ids", "applies to modbus assets only"),
    ('deny = { value = "BadNope" }', "deny.value", '"BadNope": not a Bad status code name'),
    ('deny = { value = "Good" }', "deny.value", "not a Bad status code name"),
    ("deny = { address = 3 }", "deny.address", "a refusal needs a Bad status code, 0x80000000..0xBFFFFFFF"),
    ("deny = { function = 0xC0000000 }", "deny.function", "a refusal needs a Bad status code"),
    ("deny = { function = 1.5 }", "deny.function", "1.5: expected a Bad status code"),
]


@pytest.mark.parametrize(("setting", "path", "message"), ASSET_MISTAKES)
def test_opcua_asset_mistakes(setting: str, path: str, message: str) -> None:
    text = opcua_head(asset_extra=setting)
    if setting.startswith("upstream"):
        text = text.replace('upstream = "opc.tcp://10.0.0.9:4840/plant"\n', "")
    found = [(line, got) for line, got_path, got in issues(text) if got_path == f"assets.opc-1.{path}"]
    assert any(message in got for _, got in found), issues(text)
    lines = text.splitlines()
    key = path.split(".", 1)[0]
    where = next(
        (i + 1 for i, line in enumerate(lines) if line.startswith(f"{key} =")),
        lines.index("[assets.opc-1]") + 1,
    )
    assert found[0][0] == where


def test_sign_needs_a_certificate() -> None:
    text = opcua_head(asset_extra='security_policy = "Basic256Sha256"\nsecurity_mode = "Sign"\n')
    _, path, message = only_issue(text)
    assert path == "assets.opc-1"
    assert "needs the gateway's application certificate" in message


# ------------------------------------------------------------------------------------------ entries


def test_entries_hold_what_they_name() -> None:
    p = parse_policy(
        opcua_head()
        + rule(
            f'{{ service = ["Read", "Browse"], service_set = "Method", namespace = "{PLANT}",'
            ' node = ["Plant.*", 7, { namespace = 0, id = "i=84-86" }, { namespace = "urn:x" }],'
            ' attribute = ["Value", 4] },'
            ' { preset = "read-only", browse_path = ["/Objects/Plant", "/Objects/{urn:x}Diag"] },'
            f' {{ service = "Write", node = "nsu={PLANT};s=Plant.Setpoint", value = ["0..10", 20] }}'
        )
    )
    first, second, third = p.rules[0].opcua
    assert first.services == {"Read", "Browse", "Call"}
    assert first.named_services == {"Read", "Browse"}
    assert first.service_sets == ("Method",)
    assert first.nodes is not None
    assert [str(n) for n in first.nodes] == [
        f"nsu={PLANT};s=Plant.*",
        f"nsu={PLANT};i=7",
        "i=84-86",
        "every node of urn:x",
    ]
    assert first.attributes == {13, 4}
    assert second.services == PRESETS["read-only"]
    assert second.browse_paths is not None
    assert [p.segments for p in second.browse_paths] == [
        ((None, "Objects"), (None, "Plant")),
        ((None, "Objects"), ("urn:x", "Diag")),
    ]
    assert third.values is not None and str(third.values) == "0..10, 20"
    assert third.nodes == (NodePattern(PLANT, parse_id("s=Plant.Setpoint")[0]),)
    assert "service Browse, Read" in first.describe()
    star = opcua_policy(rule('{ service = "*" }')).rules[0].opcua[0]
    assert star.every_service and star.describe() == "service *"
    assert "browse_path /Objects/Plant, /Objects/{urn:x}Diag" in second.describe()


def test_presets_and_sets_leave_out_what_only_a_name_opens() -> None:
    never = {"AddNodes", "HistoryUpdate", "QueryFirst", "RegisterServer", "TransferSubscriptions"}
    for services in (*PRESETS.values(), *SERVICE_SETS.values()):
        assert not services & never
        assert not services & {"CreateSession", "ActivateSession", "GetEndpoints", "FindServers"}


ENTRY_MISTAKES = [
    ('{ attribute = "Value" }', "", 'names no service: give "service"'),
    ('{ service = "read" }', "service", 'services are spelt as Part 4 spells them: "Read"'),
    ('{ service = "Reed" }', "service", '"Reed": unknown service name; did you mean "Read"?'),
    ('{ service = "View" }', "service", 'is a service set: write service_set = "View"'),
    ('{ service = "CreateSession" }', "service", "is answered by the gateway itself"),
    ('{ service = ["Read", "GetEndpoints"] }', "service[1]", "is answered by the gateway itself"),
    ("{ service = [] }", "service", "the array is empty: name at least one service"),
    ('{ service = "*", attribute = "Value" }', "service", '"*" names services decided as a whole'),
    ("{ service = 631 }", "service", '631: expected a service name such as "Read"'),
    (
        '{ service_set = "NodeManagement" }',
        "service_set",
        'name its services one by one with service ("AddNodes"',
    ),
    ('{ service_set = "Query" }', "service_set", "is never opened as a set"),
    ('{ service_set = "Session" }', "service_set", "is answered by the gateway itself"),
    ('{ service_set = "Veiw" }', "service_set", 'did you mean "View"?'),
    ('{ preset = "programming" }', "preset", '"programming" is not one of: read-only, read-write'),
    ('{ service = "Read", nodes = "A" }', "nodes", 'unknown key "nodes"; did you mean "node"?'),
    ('{ service = "Read", node = "A" }', "node", 'node id "A" needs its namespace: give the entry namespace'),
    ('{ service = "Read", node = "ns=2;s=A" }', "node", "namespace indices differ between servers"),
    ('{ service = "Read", namespace = 2, node = "A" }', "namespace", "name the namespace by its URI"),
    ('{ service = "Read", namespace = "2", node = "A" }', "namespace", "a namespace index in a string"),
    ('{ service = "Read", namespace = "urn:x" }', "namespace", "the entry names neither"),
    ('{ service = "Read", namespace = "urn:x", node = "" }', "node", "an empty string id"),
    ('{ service = "Read", namespace = "urn:x", node = "i=9-1" }', "node", "range start 9 is above its end 1"),
    ('{ service = "Read", namespace = "urn:x", node = "i=x" }', "node", '"i=x": '),
    ('{ service = "Read", namespace = "urn:x", node = -1 }', "node", "-1: numeric ids are 0..4294967295"),
    ('{ service = "Read", namespace = "urn:x", node = "g=nope" }', "node", "not a GUID"),
    ('{ service = "Read", namespace = "urn:x", node = "b=!!" }', "node", "not base64"),
    (
        '{ service = "Read", namespace = "urn:x", node = [true] }',
        "node[0]",
        "true: expected a node id pattern",
    ),
    ('{ service = "Read", node = "nsu=;s=A" }', "node", "expected a namespace URI"),
    ('{ service = "Read", node = "nsu=urn:x" }', "node", 'expected "nsu=<namespace URI>;s=<id pattern>"'),
    ('{ service = "Read", node = { id = "A" } }', "node.id", "needs its namespace"),
    ('{ service = "Read", node = { namespace = 0, ids = 1 } }', "node.ids", 'did you mean "id"?'),
    (
        '{ service = "Read", node = { namespace = 0, id = "nsu=urn:x;s=A" } }',
        "node.id",
        "namespace is given already",
    ),
    (
        '{ service = "Read", node = { namespace = 7, id = 1 } }',
        "node.namespace",
        "name the namespace by its URI",
    ),
    ('{ service = "Read", browse_path = "Objects/Plant" }', "browse_path", "it starts with /"),
    ('{ service = "Read", browse_path = "/Objects/2:Plant" }', "browse_path", "namespace indices differ"),
    ('{ service = "Read", browse_path = "/Objects//Plant" }', "browse_path", "an empty segment"),
    ('{ service = "Read", browse_path = "/Objects/" }', "browse_path", "an empty segment"),
    ('{ service = "Read", browse_path = "/Objects/{urn:x" }', "browse_path", "a { without its }"),
    ('{ service = "Read", browse_path = "/{urn:x}" }', "browse_path", "no name"),
    ('{ service = "Read", browse_path = "/{2}Plant" }', "browse_path", "expected {namespace URI}Name"),
    ('{ service = "Read", browse_path = "/A&" }', "browse_path", "ends in a lone &"),
    ('{ service = "Read", browse_path = 3 }', "browse_path", "3: expected a browse path"),
    ('{ service = "Read", attribute = "value" }', "attribute", 'attribute names are spelt "Value"'),
    ('{ service = "Read", attribute = "Valu" }', "attribute", 'did you mean "Value"?'),
    ('{ service = "Read", attribute = 28 }', "attribute", "28: attribute ids are 1..27"),
    ('{ service = "Read", attribute = [] }', "attribute", "the array is empty"),
    ('{ service = "Browse", attribute = "Value" }', "attribute", "applies to Read, Write, HistoryRead"),
    ('{ service = "Read", namespace = 0, method = { object = 1, method = 2 } }', "method", "applies to Call"),
    ('{ service = "Call", namespace = "urn:x", method = { object = "A" } }', "method", 'missing "method"'),
    ('{ service = "Call", namespace = "urn:x", method = "A" }', "method", "expected { object ="),
    (
        '{ service = "Call", namespace = "urn:x", method = { object = "A", method = "B", why = 1 } }',
        "method.why",
        'unknown key "why"',
    ),
    (
        '{ service = "Call", method = { object = "A", method = "nsu=urn:x;s=B" } }',
        "method.object",
        "needs its namespace",
    ),
    ('{ service = "Read", value = "0..1" }', "value", "applies to Write or Call, and this entry names none"),
    ('{ service = "Write", value = "0-1500" }', "value", 'ranges use "..")'),
    ('{ service = "Write", value = 1e30 }', "value", "is outside what any OPC UA numeric type holds"),
    ('{ service = "Write", value = nan }', "value", "bounds must be finite numbers"),
    ('{ service = "Publish", node = { namespace = 0 } }', "service", "Publish is decided as a whole request"),
    (
        '{ service_set = "Subscription", node = { namespace = 0 } }',
        "node",
        "applies to services whose operations reach",
    ),
    (
        '{ service = ["Read", "AddNodes"], namespace = "urn:x", node = "A" }',
        "service",
        "AddNodes is decided as a whole request, and node only applies to operations",
    ),
    (
        '{ service = ["HistoryUpdate", "QueryFirst"], value = "0..1" }',
        "service",
        "HistoryUpdate, QueryFirst are decided as a whole request",
    ),
    ("3", "", "3: expected a table, got an integer"),
]


@pytest.mark.parametrize(("entry", "field", "message"), ENTRY_MISTAKES)
def test_entry_mistakes(entry: str, field: str, message: str) -> None:
    text = opcua_head() + rule(entry)
    line, path, got = only_issue(text)
    expected_path = "rules[0].opcua[0]" + (f".{field}" if field and not field.startswith("[") else field)
    assert path == expected_path.replace(".[", "[")
    assert message in got, got
    assert line == text.splitlines().index("opcua = [" + entry + "]") + 1


def test_errors_name_file_line_and_field_across_rules() -> None:
    bad = '  { service = "Write", namespace = "urn:x", node = "ns=3;i=1" }'
    text = (
        opcua_head()
        + rule('{ preset = "read-only" }')
        + rule(f'{{ preset = "read-only" }},\n{bad}', "second")
    )
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "plant.toml")
    (issue,) = caught.value.issues
    line = text.splitlines().index(bad + "]") + 1
    assert str(issue).startswith(f"plant.toml:{line}: rules[1].opcua[1].node: ")


def test_opcua_entries_on_a_rule_for_other_protocols_are_an_error() -> None:
    text = (
        opcua_head()
        + '[assets.plc-1]\nprotocol = "modbus"\nupstream = "10.0.0.5:502"\n\n'
        + rule('{ preset = "read-only" }').replace('assets = ["opc-1"]', 'assets = ["plc-1"]')
    )
    _, path, message = only_issue(text)
    assert path == "rules[0].opcua"
    assert "none of the rule's assets speaks opcua (plc-1 is modbus)" in message
    modbus_on_opcua = opcua_head() + (
        '[[rules]]\nid = "m"\nsubjects = ["spiffe://plant1.example/user/a"]\nassets = ["opc-1"]\n'
        "modbus = [{ fc = 3 }]\n"
    )
    assert only_issue(modbus_on_opcua)[1] == "rules[0].modbus"


FIELD_TEXT = st.text(alphabet=st.sampled_from("isgbnu=;:/.*&{}0123456789-AaBb_ xX"), max_size=24)


@settings(max_examples=300, deadline=None)
@given(node=st.one_of(FIELD_TEXT, st.integers(-5, 2**33)), path=FIELD_TEXT)
def test_field_text_is_parsed_or_reported_never_crashed_on(node: str | int, path: str) -> None:
    pattern, problem = parse_id(node)
    assert (pattern is None) != (problem is None)
    if pattern is not None:
        assert pattern.kind in ("i", "s", "g", "b")
        pattern.matches(0)
        pattern.matches("x")
        pattern.matches(uuid.uuid4())
    prefix, problem = parse_browse_path(path)
    assert (prefix is None) != (problem is None)
    if prefix is not None:
        assert prefix.covers(()) == (not prefix.segments)
    node_text = str(node).replace('"', "")
    entry = (
        f'{{ service = "Read", namespace = "{UA_NAMESPACE}", node = "{node_text}", browse_path = "{path}" }}'
    )
    text = opcua_head() + rule(entry)
    try:
        parse_policy(text)
    except PolicyError as error:
        assert all(issue.line is not None for issue in error.issues)
