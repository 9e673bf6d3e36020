"""The compiled OPC UA evaluator against the naive reference, on random policies, operations, namespace
arrays, browse paths and instants.

Policies are generated as TOML text over small domains - three namespaces (the standard one and two
URIs), string ids that share prefixes (``A``, ``A.B``, ``A.BC``), glob patterns over them, a few numeric
ranges, a GUID, an opaque id, browse paths that nest, attributes, method pairs and value bounds around
edges - so that entries collide. Operations are the codec's :class:`Operation` built from asyncua's own
NodeId, DataValue and Variant: every service with operations, nodes in namespaces the array has or
lacks, written values with NaN, arrays and strings, Call arguments, monitored items and history reads
of data and events, paths unresolved or under other namespaces.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from typing import Any

from asyncua import ua
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import Policy, parse_policy
from protocols.opcua.operations import Operation
from protocols.opcua.services import SERVICES
from tests.policies.policy_reference import reference_sees_asset, subject_matches
from tests.policies.policy_reference_opcua import (
    opcua_reference_decide,
    opcua_reference_service,
    reference_glob,
)
from tests.policies.test_policy_reference import (
    GROUPS,
    IDS,
    SUBJECT_LISTS,
    TD,
    instant_near,
    instants,
    pick,
    toml_value,
)

UA = "http://opcfoundation.org/UA/"
GUID = uuid.UUID("09087e75-8e5e-499b-954f-f2a9603db28a")
OPERATION_SERVICES = [
    "Read",
    "Write",
    "Call",
    "Browse",
    "BrowseNext",
    "TranslateBrowsePathsToNodeIds",
    "RegisterNodes",
    "CreateMonitoredItems",
    "ModifyMonitoredItems",
    "HistoryRead",
]
REQUEST_SERVICES = ["Publish", "CreateSubscription", "AddNodes", "HistoryUpdate", "TransferSubscriptions"]
ALL_SERVICES = [service.name for service in SERVICES] + ["Bogus"]
SETS = ["View", "Attribute", "Method", "MonitoredItem", "Subscription"]
NAMESPACE_VALUES: list[Any] = [0, "urn:a", "urn:b"]
STRING_PATTERNS = ["A", "A.*", "A*", "*", "*.B", "A.*.C", "*B*", "A.B", "s=A.M"]
OTHER_PATTERNS: list[Any] = [5, "i=0-9", "i=10-20", "i=*", 85, f"g={GUID}", "b=AQI="]
PATHS = ["/", "/Objects", "/Objects/A", "/Objects/{urn:a}A", "/Objects/A/B", "/Objects/A&/B"]
ATTRIBUTES: list[Any] = ["Value", "DisplayName", "EventNotifier", "AccessLevel", 3]
VALUE_BOUNDS: list[Any] = ["0..10", "-5..5", "-1.5..2.5", 7, ["0..1", "5..6"]]


def _node_spec(draw: st.DrawFn, default: Any) -> Any:
    """One node of a node field: a pattern in the entry's namespace, a table, or an nsu= string."""
    pattern = pick(draw, STRING_PATTERNS + OTHER_PATTERNS)
    roll = draw(st.integers(0, 5))
    if roll == 0:
        return {"namespace": pick(draw, NAMESPACE_VALUES)}
    if roll == 1 or default is None:
        return {"namespace": pick(draw, NAMESPACE_VALUES), "id": pattern}
    if roll == 2 and isinstance(pattern, str) and not pattern.startswith("s="):
        uri = pick(draw, [UA, "urn:a", "urn:b"])
        return f"nsu={uri};{pattern if pattern[:2] in ('i=', 'g=', 'b=') else 's=' + pattern}"
    return pattern


def _nodes(draw: st.DrawFn, default: Any) -> Any:
    items = [_node_spec(draw, default) for _ in range(draw(st.integers(1, 3)))]
    return items[0] if len(items) == 1 and draw(st.booleans()) else items


@st.composite
def entries(draw: st.DrawFn) -> dict[str, Any]:
    """An entry the loader accepts: generated freely, then repaired where fields need services."""
    entry: dict[str, Any] = {}
    services: list[str] = []
    roll = draw(st.integers(0, 6))
    if roll == 0:
        entry["preset"] = pick(draw, ("read-only", "read-write"))
    elif roll == 1:
        entry["service_set"] = pick(draw, SETS)
    if roll > 1 or draw(st.booleans()):
        services = draw(st.lists(st.sampled_from(OPERATION_SERVICES), min_size=1, max_size=3, unique=True))
    fields = draw(st.integers(0, 3)) > 0
    if not fields and draw(st.integers(0, 2)) == 0:
        services.append(pick(draw, REQUEST_SERVICES))
    default = None
    if fields:
        if draw(st.booleans()):
            default = entry["namespace"] = pick(draw, NAMESPACE_VALUES)
        if draw(st.integers(0, 2)) == 0:
            entry["node"] = _nodes(draw, default)
        if draw(st.integers(0, 3)) == 0:
            entry["browse_path"] = (
                pick(draw, PATHS) if draw(st.booleans()) else [pick(draw, PATHS), pick(draw, PATHS)]
            )
        if draw(st.integers(0, 3)) == 0:
            entry["attribute"] = draw(
                st.lists(st.sampled_from(ATTRIBUTES), min_size=1, max_size=2, unique=True)
            )
        if draw(st.integers(0, 3)) == 0:
            entry["method"] = [
                {"object": _nodes(draw, default), "method": _nodes(draw, default)}
                for _ in range(draw(st.integers(1, 2)))
            ]
        if draw(st.integers(0, 3)) == 0:
            entry["value"] = pick(draw, VALUE_BOUNDS)
    if "namespace" in entry and "node" not in entry and "method" not in entry:
        entry["node"] = _nodes(draw, default)
    if "method" in entry and "Call" not in services:
        services.append("Call")
    if "value" in entry and not {"Write", "Call"} & set(services):
        services.append(pick(draw, ("Write", "Call")))
    if "attribute" in entry and not {"Read", "Write", "HistoryRead", "CreateMonitoredItems"} & set(services):
        services.append(pick(draw, ("Read", "Write", "CreateMonitoredItems")))
    if ("node" in entry or "browse_path" in entry) and not set(services) & set(OPERATION_SERVICES):
        services.append(pick(draw, OPERATION_SERVICES))
    if services or not entry.keys() & {"preset", "service_set"}:
        entry["service"] = services[0] if len(services) == 1 and draw(st.booleans()) else services or ["Read"]
    return entry


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {_inline(item)}" for key, item in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_inline(item) for item in value) + "]"
    return toml_value(value)


ENTRY_LISTS = (st.lists(entries(), max_size=3), st.lists(entries(), min_size=1, max_size=3))
ASSET_LISTS = st.sampled_from((("opc-1",), ("opc-2",), ("*",), ("opc-1", "opc-2")))


@st.composite
def policies(draw: st.DrawFn) -> str:
    lines = [f'trust_domain = "{TD}"', ""]
    for name in ("opc-1", "opc-2"):
        lines += [f"[assets.{name}]", 'protocol = "opcua"', 'upstream = "127.0.0.1"']
        if draw(st.integers(0, 3)) == 0:
            lines.append('mode = "monitor"')
        if draw(st.booleans()):
            # Codes told apart, so the kind of every refusal is compared too.
            action = pick(draw, ("exception", "drop", "close"))
            lines.append(
                f'deny = {{ action = "{action}", function = "BadServiceUnsupported",'
                ' address = "BadNotReadable", value = "BadOutOfRange", unsupported = 0x80010000 }'
            )
        lines.append("")
    lines.append("[groups]")
    lines += [f"{name} = {toml_value(members)}" for name, members in GROUPS.items()]
    lines.append("")
    for index in range(draw(st.integers(2, 6))):
        lines += ["[[rules]]", f'id = "r{index}"', f"subjects = {toml_value(draw(SUBJECT_LISTS))}"]
        lines.append(f"assets = {toml_value(list(draw(ASSET_LISTS)))}")
        if draw(st.integers(0, 2)) == 0:
            lines.append('effect = "deny"')
        if draw(st.integers(0, 3)) == 0:
            lines.append('mode = "monitor"')
        lines.append(f"opcua = {_inline(draw(ENTRY_LISTS[index > 0]))}")
        if draw(st.integers(0, 3)) == 0:
            days = pick(draw, ("mon-fri", "sat,sun"))
            hours = pick(draw, ("06:00-18:00", "22:00-06:00"))
            tz = pick(draw, ("UTC", "Europe/Berlin"))
            lines.append(f'when = {{ days = "{days}", hours = "{hours}", tz = "{tz}" }}')
        lines.append("")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- operations

ARRAYS = [(UA, "urn:x", "urn:a", "urn:b"), (UA, "urn:b", "urn:a"), (UA, "urn:a"), (UA,), ()]
IDENTIFIERS: list[Any] = [
    "A",
    "A.B",
    "A.B.C",
    "A.BC",
    "B.A",
    "AB",
    "A.M",
    "",
    "x.B",
    0,
    5,
    9,
    10,
    20,
    21,
    85,
    GUID,
    uuid.UUID(int=7),
    b"\x01\x02",
    b"\x01",
]
GIVEN_PATHS: list[Any] = [
    None,
    (),
    ("Objects",),
    ("Objects", "A"),
    ("Objects", "{urn:a}A"),
    ("Objects", "{urn:b}A", "B"),
    ("Objects", "A", "B", "C"),
    ("Objects", "A/B"),
    ("Types",),
]
DOUBLE, INT32 = ua.VariantType.Double, ua.VariantType.Int32
VARIANTS: list[Any] = [
    ua.Variant(0.0, DOUBLE),
    ua.Variant(2.5, DOUBLE),
    ua.Variant(2.4999, DOUBLE),
    ua.Variant(7, INT32),
    ua.Variant(10, INT32),
    ua.Variant(11, INT32),
    ua.Variant(-5, ua.VariantType.Int16),
    ua.Variant(5.5, ua.VariantType.Float),
    ua.Variant(math.nan, DOUBLE),
    ua.Variant(-math.inf, DOUBLE),
    ua.Variant(True, ua.VariantType.Boolean),
    ua.Variant([0, 1, 6], INT32),
    ua.Variant([[1, 2], [5, 9]], INT32),
    ua.Variant([], DOUBLE),
    ua.Variant("7", ua.VariantType.String),
    ua.Variant(ua.LocalizedText("x"), ua.VariantType.LocalizedText),
]


def _node(draw: st.DrawFn) -> ua.NodeId:
    return ua.NodeId(pick(draw, IDENTIFIERS), pick(draw, (0, 0, 1, 2, 3, 4)))


@st.composite
def operations(draw: st.DrawFn, service: str | None = None) -> Operation:
    service = service or pick(draw, OPERATION_SERVICES)
    node = None if draw(st.integers(0, 12)) == 0 else _node(draw)
    attribute = None
    if service in ("Read", "Write", "CreateMonitoredItems", "ModifyMonitoredItems", "HistoryRead"):
        attribute = pick(
            draw, (13, 13, 13, 13, 4, 12, 17, 3) if service == "Write" else (13, 13, 13, 4, 12, 17, 3)
        )
    if service == "Write":
        return Operation(service, 0, None, node, attribute, value=ua.DataValue(pick(draw, VARIANTS)))
    if service == "Call":
        method = None if draw(st.integers(0, 12)) == 0 else _node(draw)
        arguments = tuple(pick(draw, VARIANTS) for _ in range(draw(st.integers(0, 2))))
        return Operation(service, 0, None, node, method_id=method, arguments=arguments)
    return Operation(service, 0, None, node, attribute)


def _identifier_for(draw: st.DrawFn, pattern: Any) -> Any:
    """An identifier a node pattern matches, or one just beside it."""
    ids = pattern.ids
    if ids is None or draw(st.integers(0, 4)) == 0:
        return pick(draw, IDENTIFIERS)
    if ids.kind == "s":
        return "".join(pick(draw, ("", "B", ".B", "A.", "x")) if part == "*" else part for part in ids.text)
    if ids.kind == "i":
        low, high = pick(draw, ids.numbers.ranges)
        # Numeric ids are UInt32 on the wire.
        return min(0xFFFF_FFFF, max(0, pick(draw, (low - 1, low, high, high + 1))))
    return ids.exact


def _node_for(draw: st.DrawFn, patterns: Any, namespaces: Any) -> ua.NodeId:
    pattern = pick(draw, patterns)
    index = namespaces.index(pattern.uri) if pattern.uri in namespaces else draw(st.integers(0, 4))
    if pattern.uri == UA:
        index = 0
    if draw(st.integers(0, 5)) == 0:
        index = draw(st.integers(0, 4))
    return ua.NodeId(_identifier_for(draw, pattern), index)


def _path_for(draw: st.DrawFn, prefixes: Any) -> Any:
    if draw(st.integers(0, 4)) == 0:
        return pick(draw, GIVEN_PATHS)
    text = pick(draw, prefixes).text
    path = (
        [] if text == "/" else [part.replace("&", "") for part in text[1:].replace("&/", "\x00").split("/")]
    )
    path = [part.replace("\x00", "/") for part in path]
    roll = draw(st.integers(0, 3))
    if roll == 0 and path:
        path.pop()
    elif roll == 1:
        path.append("C")
    return tuple(path)


@st.composite
def aimed_operations(draw: st.DrawFn, policy: Policy, namespaces: Any) -> tuple[Operation, Any]:
    """An operation and a path aimed at the edges of one entry of the policy."""
    found = [entry for rule in policy.rules for entry in rule.opcua]
    if not found or draw(st.integers(0, 3)) == 0:
        return draw(operations()), pick(draw, GIVEN_PATHS)
    entry = pick(draw, found)
    services = sorted(entry.services & set(OPERATION_SERVICES)) or OPERATION_SERVICES
    operation = draw(operations(pick(draw, services)))
    changes: dict[str, Any] = {}
    if entry.nodes is not None and operation.service == "Call":
        # Object and method each inside or not: a deny entry touches a Call through either.
        if draw(st.booleans()):
            changes["node_id"] = _node_for(draw, entry.nodes, namespaces)
        if draw(st.integers(0, 3)) > 0:
            changes["method_id"] = _node_for(draw, entry.nodes, namespaces)
    elif entry.nodes is not None and draw(st.integers(0, 4)) > 0:
        changes["node_id"] = _node_for(draw, entry.nodes, namespaces)
    if entry.methods is not None and operation.service == "Call" and draw(st.integers(0, 4)) > 0:
        pair = pick(draw, entry.methods)
        changes["node_id"] = _node_for(draw, pair.objects, namespaces)
        changes["method_id"] = _node_for(draw, pair.methods, namespaces)
    if entry.attributes is not None and operation.attribute_id is not None and draw(st.booleans()):
        changes["attribute_id"] = pick(draw, sorted(entry.attributes))
    if entry.values is not None and operation.service in ("Write", "Call"):
        low, high = pick(draw, entry.values.ranges)
        edge = pick(draw, (low, high, low - 1, high + 1, high + 0.5, low - 0.25))
        variant = ua.Variant(float(edge), DOUBLE) if draw(st.booleans()) else ua.Variant([low, edge], DOUBLE)
        if operation.service == "Write":
            changes["value"] = ua.DataValue(variant)
        else:
            changes["arguments"] = (variant,)
    path = _path_for(draw, entry.browse_paths) if entry.browse_paths is not None else pick(draw, GIVEN_PATHS)
    return dataclasses.replace(operation, **changes), path


subjects = st.one_of(st.sampled_from(IDS), st.sampled_from([f"spiffe://{TD}/user/zed"]))
assets = st.sampled_from(["opc-1", "opc-1", "opc-2", "opc-9"])


@st.composite
def aimed_query(draw: st.DrawFn, policy: Policy) -> tuple[str, str, float]:
    """A subject a rule is for, on one of its assets, near one of its windows' edges."""
    if not policy.rules or draw(st.integers(0, 4)) == 0:
        return draw(subjects), draw(assets), draw(instants)
    rule = pick(draw, policy.rules)
    matching = [i for i in IDS if subject_matches(policy, rule, i)]
    subject = pick(draw, matching) if matching else draw(subjects)
    asset = pick(draw, [name for name in rule.assets if name != "*"] or ["opc-1", "opc-2"])
    return subject, asset, draw(instant_near(rule.window))


def _actual(got: Any) -> tuple[Any, ...]:
    return (got.verdict, got.allowed, got.rule_id, got.exception_code, got.action, got.monitor_rule_id)


def check(
    policy: Policy, subject: str, asset: str, operation: Operation, namespaces: Any, now: float, path: Any
) -> None:
    expected = opcua_reference_decide(policy, subject, asset, operation, namespaces, now, path)
    view = policy.view(subject, asset)
    assert (view is None) == (expected is None), (subject, asset)
    assert reference_sees_asset(policy, subject, asset) == (view is not None)
    if view is None or expected is None:
        return
    got = view.decide_opcua(operation, namespaces, now, path)
    wanted = (
        expected.verdict,
        expected.allowed,
        expected.rule_id,
        expected.exception_code,
        expected.action,
        expected.monitor_rule_id,
    )
    assert _actual(got) == wanted, (
        f"{operation!r} {namespaces} {path} at {now}: compiled {got!r}\nreference {expected!r}"
    )
    assert got.reason
    # The same again: now from the per-node lists.
    assert _actual(view.decide_opcua(operation, namespaces, now, path)) == wanted
    assert (
        policy.explain_opcua(subject, asset, operation.service, operation, namespaces, now, path).decision
        == got
    )


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=policies(), data=st.data())
def test_compiled_opcua_evaluator_agrees_with_reference(text: str, data: st.DataObject) -> None:
    policy = parse_policy(text)
    for subject, asset, now in data.draw(st.lists(aimed_query(policy), min_size=1, max_size=3)):
        for _ in range(4):
            namespaces = pick(data.draw, ARRAYS)
            operation, path = data.draw(aimed_operations(policy, namespaces))
            check(policy, subject, asset, operation, namespaces, now, path)
        service = pick(data.draw, ALL_SERVICES)
        expected = opcua_reference_service(policy, subject, asset, service, now)
        view = policy.view(subject, asset)
        if view is None or expected is None:
            assert view is None and expected is None
            continue
        got = view.decide_opcua_service(service, now)
        assert _actual(got) == (
            expected.verdict,
            expected.allowed,
            expected.rule_id,
            expected.exception_code,
            expected.action,
            expected.monitor_rule_id,
        ), f"{service} at {now}: compiled {got!r}\nreference {expected!r}"


@settings(max_examples=400, deadline=None)
@given(pattern=st.text(alphabet="AB.*", max_size=6), text=st.text(alphabet="AB.", max_size=6))
def test_string_id_globs_agree_with_reference(pattern: str, text: str) -> None:
    from policies.opcua.nodes import parse_id

    compiled, _ = parse_id("s=" + pattern) if pattern else (None, None)
    if compiled is None:
        return
    assert compiled.matches(text) == reference_glob(pattern, text), (pattern, text)
