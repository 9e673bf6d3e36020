"""docs/policy.md "OPC UA entries" and "How a decision is made", one rule at a time, on operations built as
the codec lists them (asyncua NodeIds, DataValues and Variants)."""

from __future__ import annotations

import math
import uuid

import pytest
from asyncua import ua

from policies import Policy
from policies.opcua.evaluate import NODE_LISTS_SIZE
from protocols.opcua.operations import Operation
from tests.policies.opcua_helpers import (
    ALICE,
    BOB,
    DENIED,
    NAMESPACES,
    PLANT,
    SERVER_URI,
    TD,
    UNSUPPORTED,
    browse,
    call,
    decide,
    decide_service,
    history_read,
    monitor,
    namespaces,
    nid,
    opcua_policy,
    outcome,
    read,
    rule,
    write,
)
from tests.policies.policy_helpers import at

EVERYONE = f"spiffe://{TD}/*"
NS = f'namespace = "{PLANT}"'
DOUBLE = ua.VariantType.Double


def deny_rule(entries: str, rule_id: str = "d") -> str:
    return rule(entries, rule_id, EVERYONE, effect="deny")


# ------------------------------------------------------------------------------------------ services


def test_a_named_service_allows_that_service_only() -> None:
    p = opcua_policy(rule('{ service = "Read" }'))
    assert outcome(decide(p, read("Plant.Line1.Tank1.Level"))) == ("allow", "r", 0)
    assert outcome(decide_service(p, "Read")) == ("allow", "r", 0)
    assert outcome(decide(p, write("Plant.Line1.Tank1.Setpoint", 1.0, DOUBLE))) == ("deny", None, DENIED)
    assert outcome(decide_service(p, "Write")) == ("deny", None, DENIED)
    assert decide_service(p, "Write").reason == "no rule allows Write"


def test_service_sets_hold_their_services_but_never_the_explicit_only_ones() -> None:
    p = opcua_policy(
        rule('{ service_set = ["View", "Attribute", "Subscription", "MonitoredItem", "Method"] }')
    )
    for service in (
        "Browse",
        "BrowseNext",
        "TranslateBrowsePathsToNodeIds",
        "RegisterNodes",
        "UnregisterNodes",
        "Read",
        "Write",
        "HistoryRead",
        "Call",
        "CreateSubscription",
        "Publish",
        "Republish",
        "DeleteSubscriptions",
        "CreateMonitoredItems",
        "SetTriggering",
    ):
        assert decide_service(p, service).verdict == "allow", service
    for service in ("HistoryUpdate", "TransferSubscriptions", "AddNodes", "QueryFirst", "RegisterServer2"):
        assert outcome(decide_service(p, service)) == ("deny", None, DENIED), service


def test_presets() -> None:
    read_only = opcua_policy(rule('{ preset = "read-only" }'))
    read_write = opcua_policy(rule('{ preset = "read-write" }'))
    for service in ("Read", "Browse", "BrowseNext", "HistoryRead", "CreateMonitoredItems", "Publish"):
        assert decide_service(read_only, service).verdict == "allow", service
    for service in ("Write", "Call"):
        assert decide_service(read_only, service).verdict == "deny", service
        assert decide_service(read_write, service).verdict == "allow", service


@pytest.mark.parametrize(
    "service",
    [
        "AddNodes",
        "AddReferences",
        "DeleteNodes",
        "DeleteReferences",
        "HistoryUpdate",
        "QueryFirst",
        "QueryNext",
        "RegisterServer",
        "RegisterServer2",
        "TransferSubscriptions",
    ],
)
def test_what_no_preset_or_set_opens_opens_when_named(service: str) -> None:
    wide = opcua_policy(
        rule('{ preset = "read-write", service_set = ["Attribute", "Subscription", "View"] }')
    )
    assert outcome(decide_service(wide, service)) == ("deny", None, DENIED)
    named = opcua_policy(rule(f'{{ service = "{service}" }}'))
    assert outcome(decide_service(named, service)) == ("allow", "r", 0)


def test_service_star_names_every_service_a_rule_can_name() -> None:
    p = opcua_policy(rule('{ service = "*" }') + rule('{ service = "*" }', "cut", BOB, effect="deny"))
    for service in ("Read", "Write", "Call", "Browse", "Publish", "AddNodes", "HistoryUpdate", "QueryFirst"):
        assert outcome(decide_service(p, service)) == ("allow", "r", 0), service
        assert outcome(decide_service(p, service, subject=BOB)) == ("deny", "cut", DENIED), service
    assert outcome(decide(p, write("Plant.Line1.Tank1.Setpoint", 1.0, DOUBLE))) == ("allow", "r", 0)
    assert outcome(decide(p, read("Plant.Line1.Tank1.Level"), subject=BOB)) == ("deny", "cut", DENIED)
    for service in ("CreateSession", "GetEndpoints"):  # still the gateway's own
        assert "answered by the gateway itself" in decide_service(p, service).reason


def test_unknown_services_get_service_unsupported_and_the_gateways_own_are_never_forwarded() -> None:
    p = opcua_policy(rule('{ preset = "read-write" }'))
    assert outcome(decide_service(p, "FlyToTheMoon")) == ("deny", None, UNSUPPORTED)
    assert outcome(decide(p, Operation("FlyToTheMoon", 0, None))) == ("deny", None, UNSUPPORTED)
    for service in ("CreateSession", "ActivateSession", "GetEndpoints", "OpenSecureChannel"):
        refused = decide_service(p, service)
        assert outcome(refused) == ("deny", None, DENIED)
        assert "answered by the gateway itself" in refused.reason


def test_allow_decisions_are_shared() -> None:
    p = opcua_policy(rule(f'{{ preset = "read-only", {NS}, node = "Plant.*" }}'))
    first = decide(p, read("Plant.A"))
    assert decide(p, read("Plant.B")) is first
    assert decide(p, browse("Plant.C")) is first
    assert decide_service(p, "Publish") is first


# --------------------------------------------------------------------------------------------- nodes


def test_nodes_are_named_by_uri_whatever_index_the_device_gives_the_namespace() -> None:
    p = opcua_policy(rule(f'{{ service = "Read", {NS}, node = "Plant.Line1.*" }}'))
    assert decide(p, read("Plant.Line1.Level", index=2), ns=namespaces(SERVER_URI, PLANT)).verdict == "allow"
    other = namespaces("urn:a", "urn:b", "urn:c", PLANT)
    assert decide(p, read("Plant.Line1.Level", index=4), ns=other).verdict == "allow"
    # Index 2 on that device is another namespace with the same string ids.
    refused = decide(p, read("Plant.Line1.Level", index=2), ns=other)
    assert outcome(refused) == ("deny", "r", DENIED)
    assert "nsu=urn:b;s=Plant.Line1.Level outside rule r" in refused.reason


def test_an_index_the_namespace_array_lacks_matches_nothing() -> None:
    p = opcua_policy(rule(f'{{ service = "Read", {NS}, node = "*" }}'))
    refused = decide(p, read("Plant.Line1.Level", index=3))
    assert outcome(refused) == ("deny", "r", DENIED)
    assert "namespace index 3 is not in the device's namespace array" in refused.reason
    assert decide(p, read("Plant.Line1.Level", index=2), ns=()).verdict == "deny"
    # An entry naming no node allows any node, known namespace or not.
    assert decide(opcua_policy(rule('{ service = "Read" }')), read("X", index=3)).verdict == "allow"


def test_namespace_zero_is_the_standard_address_space_on_every_server() -> None:
    p = opcua_policy(rule('{ service = "Read", node = [{ namespace = 0, id = [2253, "i=2256-2260"] }] }'))
    for identifier in (2253, 2256, 2260):
        assert decide(p, read(identifier, index=0), ns=()).verdict == "allow"
    assert decide(p, read(2255, index=0)).verdict == "deny"
    by_uri = opcua_policy(rule('{ service = "Read", node = "nsu=http://opcfoundation.org/UA/;i=2253" }'))
    assert decide(by_uri, read(2253, index=0)).verdict == "allow"


@pytest.mark.parametrize(
    ("pattern", "allowed", "refused"),
    [
        (
            '"Plant.Line1.Tank1.Level"',
            ["Plant.Line1.Tank1.Level"],
            ["Plant.Line1.Tank1.Level2", "plant.line1.tank1.level"],
        ),
        (
            '"Plant.Line1.*"',
            ["Plant.Line1.Tank1", "Plant.Line1.Tank1.Level"],
            ["Plant.Line1", "Plant.Line10.X"],
        ),
        ('"Plant.Line1*"', ["Plant.Line1", "Plant.Line10.X", "Plant.Line1.Tank1"], ["Plant.Line2"]),
        ('"*.Level"', ["Plant.Line1.Tank1.Level", ".Level"], ["Plant.Level2", "Level"]),
        ('"Plant.*.Setpoint"', ["Plant.Line1.Tank1.Setpoint", "Plant..Setpoint"], ["Plant.Setpoint"]),
        ('"s=i=5"', ["i=5"], ["5"]),
        ('"*"', ["", "anything at all"], []),
    ],
)
def test_string_id_patterns(pattern: str, allowed: list[str], refused: list[str]) -> None:
    p = opcua_policy(rule(f'{{ service = "Read", {NS}, node = {pattern} }}'))
    for identifier in allowed:
        assert decide(p, read(identifier)).verdict == "allow", identifier
    for identifier in refused:
        assert decide(p, read(identifier)).verdict == "deny", identifier
    assert decide(p, read(5)).verdict == "deny"  # a string pattern never matches a numeric id


def test_numeric_guid_and_opaque_ids() -> None:
    guid = uuid.UUID("09087e75-8e5e-499b-954f-f2a9603db28a")
    p = opcua_policy(
        rule(f'{{ service = "Read", {NS}, node = [1000, "i=2000-2999", "g={guid}", "b=AAEC"] }}')
    )
    for identifier in (1000, 2000, 2999, guid, b"\x00\x01\x02"):
        assert decide(p, read(identifier)).verdict == "allow", identifier
    for identifier in (999, 3000, "1000", uuid.uuid4(), b"\x00\x01", "AAEC"):
        assert decide(p, read(identifier)).verdict == "deny", identifier
    every_number = opcua_policy(rule(f'{{ service = "Read", {NS}, node = "i=*" }}'))
    assert decide(every_number, read(4_000_000_000)).verdict == "allow"
    assert decide(every_number, read("7")).verdict == "deny"


def test_every_node_of_a_namespace() -> None:
    p = opcua_policy(rule(f'{{ service = "Read", node = {{ namespace = "{PLANT}" }} }}'))
    for identifier in (7, "Plant", uuid.uuid4(), b"\x01"):
        assert decide(p, read(identifier)).verdict == "allow"
    assert decide(p, read(7, index=1)).verdict == "deny"


def test_a_node_table_mixes_namespaces_in_one_entry() -> None:
    p = opcua_policy(
        rule(
            f'{{ service = "Browse", {NS}, node = ["Plant", "Plant.*",'
            ' { namespace = 0, id = [84, 85] }, "nsu=urn:freeopcua:python:server;s=Diag.*"] }'
        )
    )
    assert decide(p, browse(85, index=0)).verdict == "allow"
    assert decide(p, browse("Plant")).verdict == "allow"
    assert decide(p, browse("Diag.X", index=1)).verdict == "allow"
    assert decide(p, browse(2253, index=0)).verdict == "deny"  # the Server object is not named


# ---------------------------------------------------------------------------------------- browse paths

LEVEL_PATH = (
    "Objects",
    "{urn:ztgate:sim:plant}Plant",
    "{urn:ztgate:sim:plant}Line1",
    "{urn:ztgate:sim:plant}Level",
)


def test_browse_path_prefixes_cover_the_node_and_everything_below() -> None:
    p = opcua_policy(rule('{ service = "Read", browse_path = "/Objects/Plant/Line1" }'))
    assert decide(p, read("x"), path=LEVEL_PATH).verdict == "allow"
    assert decide(p, read("x"), path=LEVEL_PATH[:3]).verdict == "allow"
    refused = decide(p, read("x"), path=LEVEL_PATH[:2])
    assert outcome(refused) == ("deny", "r", DENIED)
    assert "outside rule r (browse_path /Objects/Plant/Line1)" in refused.reason
    assert decide(p, read("x"), path=("Objects", "Plant", "Line10")).verdict == "deny"


def test_an_unresolved_path_is_inside_no_prefix_and_touches_every_deny() -> None:
    p = opcua_policy(
        rule('{ service = "Read", browse_path = "/Objects" }')
        + deny_rule('{ service = "Read", browse_path = "/Objects/Plant/Secret" }')
    )
    refused = decide(p, read("x"), path=None)
    assert outcome(refused) == ("deny", "d", DENIED)  # could be the secret
    allowed_only = opcua_policy(rule('{ service = "Read", browse_path = "/Objects" }'))
    refused = decide(allowed_only, read("x"), path=None)
    assert outcome(refused) == ("deny", "r", DENIED)
    assert "could not resolve the browse path" in refused.reason


def test_browse_names_plain_or_with_their_namespace_uri() -> None:
    plain = opcua_policy(rule('{ service = "Read", browse_path = "/Objects/Plant" }'))
    qualified = opcua_policy(rule(f'{{ service = "Read", browse_path = "/Objects/{{{PLANT}}}Plant" }}'))
    elsewhere = ("Objects", "{urn:other}Plant", "X")
    for p in (plain, qualified):
        assert decide(p, read("x"), path=LEVEL_PATH).verdict == "allow"
    assert decide(plain, read("x"), path=elsewhere).verdict == "allow"
    assert decide(qualified, read("x"), path=elsewhere).verdict == "deny"
    assert decide(qualified, read("x"), path=("Objects", "Plant")).verdict == "deny"  # namespace 0's Plant


def test_escaped_characters_in_browse_names_and_the_root() -> None:
    p = opcua_policy(rule('{ service = "Read", browse_path = "/Objects/Temp&/Pressure" }'))
    assert decide(p, read("x"), path=("Objects", "Temp/Pressure", "Max")).verdict == "allow"
    assert decide(p, read("x"), path=("Objects", "Temp", "Pressure")).verdict == "deny"
    root = opcua_policy(rule('{ service = "Read", browse_path = "/" }'))
    assert decide(root, read("x"), path=()).verdict == "allow"
    assert decide(root, read("x"), path=None).verdict == "deny"


def test_browse_paths_are_asked_for_only_where_an_entry_uses_them() -> None:
    p = opcua_policy(
        rule(
            f'{{ preset = "read-only", {NS}, node = "Plant.*" }},'
            ' { service = "Read", browse_path = "/Objects" }'
        )
    )
    view = p.view(ALICE, "opc-1")
    assert view is not None
    assert view.needs_browse_paths("Read")
    assert view.needs_browse_paths("CreateMonitoredItems")  # decided as a Read too
    assert view.needs_browse_paths("HistoryRead")
    assert not view.needs_browse_paths("Browse")
    assert not view.needs_browse_paths("Write")


def test_decisions_are_timeless_unless_an_entry_deciding_the_service_has_a_window() -> None:
    window = 'when = { hours = "06:00-18:00" }\n'
    p = opcua_policy(
        rule('{ preset = "read-only" }')
        + rule('{ service = "Write" }', "w", extra=window)
        + deny_rule('{ service = "Call" }', "no-calls")
        + rule('{ service = "HistoryRead" }', "h")
    )
    view = p.view(ALICE, "opc-1")
    assert view is not None
    assert view.opcua_timeless("Read") and view.opcua_timeless("Browse")
    assert not view.opcua_timeless("Write")
    assert view.opcua_timeless("AddNodes")  # named by no entry: refused at any time
    # Monitored items and history reads are decided as Reads too: a window on Read reaches them.
    shifted = opcua_policy(
        rule('{ service = "Read" }', extra=window)
        + rule('{ service = ["CreateMonitoredItems", "HistoryRead"] }', "m")
    )
    view = shifted.view(ALICE, "opc-1")
    assert view is not None
    assert not view.opcua_timeless("Read")
    assert not view.opcua_timeless("CreateMonitoredItems") and not view.opcua_timeless("HistoryRead")
    # A window on a deny entry counts as well.
    denied = opcua_policy(
        rule('{ service = "Read" }')
        + rule('{ service = "Read" }', "d", EVERYONE, effect="deny", extra=window)
    )
    view = denied.view(ALICE, "opc-1")
    assert view is not None and not view.opcua_timeless("Read")


# ---------------------------------------------------------------------------------------- attributes


def test_a_write_sets_value_only_unless_the_entry_names_attributes() -> None:
    p = opcua_policy(rule(f'{{ service = "Write", {NS}, node = "Plant.*" }}'))
    assert decide(p, write("Plant.Setpoint", 1.0, DOUBLE)).verdict == "allow"
    for attribute in (
        17,
        18,
        24,
        4,
        6,
    ):  # AccessLevel, UserAccessLevel, RolePermissions, DisplayName, WriteMask
        refused = decide(p, write("Plant.Setpoint", 3, ua.VariantType.Byte, attribute=attribute))
        assert outcome(refused) == ("deny", "r", DENIED), attribute
        assert "allows writing Value only" in refused.reason
    named = opcua_policy(
        rule(f'{{ service = "Write", {NS}, node = "Plant.*", attribute = ["Value", "DisplayName"] }}')
    )
    text = ua.Variant(ua.LocalizedText("Tank"), ua.VariantType.LocalizedText)
    assert decide(named, write("Plant.Tank", text, attribute=4)).verdict == "allow"
    assert decide(named, write("Plant.Tank", 3, ua.VariantType.Byte, attribute=17)).verdict == "deny"


def test_reads_may_read_any_attribute_unless_the_entry_names_some() -> None:
    p = opcua_policy(rule('{ service = "Read" }'))
    for attribute in (1, 3, 4, 13, 17, 24, 99):
        assert decide(p, read("x", attribute)).verdict == "allow", attribute
    named = opcua_policy(rule('{ service = ["Read", "Browse"], attribute = ["Value", 4] }'))
    assert decide(named, read("x", 4)).verdict == "allow"
    refused = decide(named, read("x", 17))
    assert "attribute AccessLevel outside rule r (attribute DisplayName, Value)" in refused.reason
    assert decide(named, browse("x")).verdict == "allow"  # a Browse names no attribute


# ------------------------------------------------------------------------------------------- methods

START = "Plant.Line1.Tank1.Start"
TANK = "Plant.Line1.Tank1"


def test_methods_are_object_and_method_pairs_and_both_ids_count() -> None:
    p = opcua_policy(
        rule(
            f'{{ service = "Call", {NS},'
            f' method = {{ object = "{TANK}", method = ["{START}", "{TANK}.Stop"] }} }}'
        )
    )
    assert outcome(decide(p, call(TANK, START))) == ("allow", "r", 0)
    assert decide(p, call(TANK, f"{TANK}.Stop")).verdict == "allow"
    # The server runs a method on whatever object the client names: the pair must hold.
    refused = decide(p, call("Plant.Line2.Tank1", START))
    assert outcome(refused) == ("deny", "r", DENIED)
    assert "is not a pair of rule r" in refused.reason
    assert decide(p, call(TANK, "Plant.Line2.Tank1.Start")).verdict == "deny"
    assert decide(p, call(START, TANK)).verdict == "deny"


def test_node_patterns_on_a_call_cover_both_the_object_and_the_method() -> None:
    p = opcua_policy(rule(f'{{ preset = "read-write", {NS}, node = "Plant.Line1.*" }}'))
    assert decide(p, call(TANK, START)).verdict == "allow"
    refused = decide(p, call(TANK, "Plant.Line2.Tank1.Start"))
    assert "method nsu=urn:ztgate:sim:plant;s=Plant.Line2.Tank1.Start outside rule r" in refused.reason
    assert decide(p, call("Plant.Line2.Tank1", START)).verdict == "deny"


def test_a_deny_entry_touches_a_call_through_the_object_or_the_method() -> None:
    p = opcua_policy(
        rule('{ preset = "read-write" }')
        + deny_rule(f'{{ service = "Call", {NS}, node = "Plant.Line1.Tank1.Drain*" }}')
        + deny_rule(f'{{ service = "Call", {NS}, method = {{ object = "Safety.*", method = "*" }} }}', "d2")
    )
    assert outcome(decide(p, call(TANK, "Plant.Line1.Tank1.DrainOpen"))) == ("deny", "d", DENIED)
    assert outcome(decide(p, call("Plant.Line1.Tank1.DrainValve", START))) == ("deny", "d", DENIED)
    assert outcome(decide(p, call("Safety.Interlock", START))) == ("deny", "d2", DENIED)
    assert decide(p, call(TANK, START)).verdict == "allow"
    # A method in a namespace the device lacks could be any method: the deny entry touches it.
    assert outcome(decide(p, call(TANK, START, method_index=7))) == ("deny", "d", DENIED)


def test_namespace_zero_methods_and_writes_need_an_entry_that_names_them() -> None:
    update_certificate = call(12637, 13737, object_index=0, method_index=0)
    anything = opcua_policy(rule('{ preset = "read-write" }'))
    refused = decide(anything, update_certificate)
    assert outcome(refused) == ("deny", "r", DENIED)
    assert "namespace 0" in refused.reason
    assert decide(anything, call(TANK, START)).verdict == "allow"
    assert decide(anything, write(2994, True, ua.VariantType.Boolean, index=0)).verdict == "deny"
    assert decide(anything, write("Plant.X", 1.0, DOUBLE)).verdict == "allow"
    named = opcua_policy(
        rule('{ service = ["Call", "Write"], node = { namespace = 0, id = [12637, 13737, 2994] } }')
    )
    assert decide(named, update_certificate).verdict == "allow"
    assert decide(named, write(2994, True, ua.VariantType.Boolean, index=0)).verdict == "allow"
    acknowledge = opcua_policy(
        rule(
            f'{{ service = "Call", method = {{ object = {{ {NS}, id = "Alarms.*" }},'
            " method = { namespace = 0, id = 9111 } } }"
        )
    )
    assert decide(acknowledge, call("Alarms.HighLevel", 9111, method_index=0)).verdict == "allow"


def test_browse_paths_alone_never_allow_a_call() -> None:
    p = opcua_policy(rule('{ preset = "read-write", browse_path = "/Objects/Plant" }'))
    path = ("Objects", "Plant", "Tank1")
    assert decide(p, write("Plant.X", 1.0, DOUBLE), path=path).verdict == "allow"
    refused = decide(p, call(TANK, START), path=path)
    assert outcome(refused) == ("deny", "r", DENIED)
    assert "say nothing about the method id" in refused.reason


# -------------------------------------------------------------------------------------------- values


def bounded(extra: str = "") -> str:
    return rule(f'{{ service = ["Write", "Call"], {NS}, node = "Plant.*", value = "0..2500" {extra}}}')


@pytest.mark.parametrize(
    ("variant", "allowed"),
    [
        (ua.Variant(1200.0, DOUBLE), True),
        (ua.Variant(2500, ua.VariantType.Int32), True),
        (ua.Variant(2500.5, DOUBLE), False),
        (ua.Variant(-1, ua.VariantType.Int16), False),
        (ua.Variant([0.0, 100.0, 2500.0], DOUBLE), True),
        (ua.Variant([0.0, 2501.0], DOUBLE), False),
        (ua.Variant([[1, 2], [3, 4000]], ua.VariantType.Int32), False),
        (ua.Variant([[1, 2], [3, 4]], ua.VariantType.Int32), True),
        (ua.Variant(math.nan, DOUBLE), False),
        (ua.Variant(math.inf, ua.VariantType.Float), False),
        (ua.Variant([1.0, math.nan], DOUBLE), False),
        (ua.Variant(True, ua.VariantType.Boolean), True),
        (ua.Variant("1200", ua.VariantType.String), False),
        (ua.Variant([], DOUBLE), False),
        (ua.Variant(b"\x01", ua.VariantType.ByteString), False),
    ],
)
def test_written_values_inside_bounds(variant: ua.Variant, allowed: bool) -> None:
    p = opcua_policy(bounded())
    decision = decide(p, write("Plant.Setpoint", variant))
    assert outcome(decision) == (("allow", "r", 0) if allowed else ("deny", "r", DENIED))


def test_value_bounds_on_call_arguments() -> None:
    p = opcua_policy(bounded())
    assert (
        decide(p, call("Plant.Tank", "Plant.Tank.SetSpeed", ua.Variant(1500, ua.VariantType.UInt16))).verdict
        == "allow"
    )
    assert (
        decide(p, call("Plant.Tank", "Plant.Tank.Start")).verdict == "allow"
    )  # no arguments: nothing written
    refused = decide(p, call("Plant.Tank", "Plant.Tank.SetSpeed", ua.Variant(3000, ua.VariantType.UInt16)))
    assert "value 3000 outside rule r (0..2500)" in refused.reason
    two = (ua.Variant(1, ua.VariantType.Int32), ua.Variant("fast", ua.VariantType.String))
    refused = decide(p, call("Plant.Tank", "Plant.Tank.Set", *two))
    assert "not numbers" in refused.reason


def test_a_deny_entry_with_value_touches_what_it_cannot_read_and_never_reads() -> None:
    p = opcua_policy(
        rule(f'{{ preset = "read-write", {NS}, node = "Plant.*" }}')
        + deny_rule(f'{{ service = "Write", {NS}, node = "Plant.Setpoint", value = "2000..9999" }}')
    )
    assert outcome(decide(p, write("Plant.Setpoint", 2500.0, DOUBLE))) == ("deny", "d", DENIED)
    assert decide(p, write("Plant.Setpoint", 1500.0, DOUBLE)).verdict == "allow"
    assert outcome(decide(p, write("Plant.Setpoint", math.nan, DOUBLE))) == ("deny", "d", DENIED)
    assert outcome(decide(p, write("Plant.Setpoint", "x", ua.VariantType.String))) == ("deny", "d", DENIED)
    assert decide(p, read("Plant.Setpoint")).verdict == "allow"
    assert decide_service(p, "Write").verdict == "allow"  # the deny entry is per operation


# ------------------------------------------------------------- monitored items, history, browse, events


def test_a_monitored_item_is_decided_as_a_read_too() -> None:
    p = opcua_policy(
        rule(
            f'{{ service = "Read", {NS}, node = "Plant.Line1.*" }},'
            f' {{ service_set = ["Subscription", "MonitoredItem"] }}'
        )
    )
    assert decide(p, monitor("Plant.Line1.Level")).verdict == "allow"
    refused = decide(p, monitor("Plant.Line2.Level"))
    assert outcome(refused) == ("deny", "r", DENIED)
    assert refused.reason.startswith("CreateMonitoredItems delivers what a Read would, and as a Read:")
    assert decide(p, monitor("Plant.Line2.Level", modify=True)).verdict == "deny"
    no_read = opcua_policy(rule('{ service = "CreateMonitoredItems" }'))
    refused = decide(no_read, monitor("Plant.Line1.Level"))
    assert outcome(refused) == ("deny", None, DENIED)
    assert "no rule allows Read" in refused.reason


def test_a_read_deny_reaches_subscriptions_and_history() -> None:
    p = opcua_policy(
        rule('{ preset = "read-only" }') + deny_rule(f'{{ service = "Read", {NS}, node = "Plant.Secret.*" }}')
    )
    for operation in (monitor("Plant.Secret.Recipe"), history_read("Plant.Secret.Recipe")):
        assert outcome(decide(p, operation)) == ("deny", "d", DENIED), operation.service
    assert decide(p, monitor("Plant.Open.Level")).verdict == "allow"
    assert decide(p, browse("Plant.Secret.Recipe")).verdict == "allow"  # Browse has entries of its own


def test_the_monitored_item_service_itself_must_allow_the_node() -> None:
    p = opcua_policy(
        rule(f'{{ service = "Read" }}, {{ service = "CreateMonitoredItems", {NS}, node = "Plant.Fast.*" }}')
    )
    assert decide(p, monitor("Plant.Fast.Level")).verdict == "allow"
    refused = decide(p, monitor("Plant.Slow.Level"))
    assert outcome(refused) == ("deny", "r", DENIED)
    assert not refused.reason.startswith("CreateMonitoredItems delivers")


def test_browse_is_decided_by_its_node() -> None:
    p = opcua_policy(rule(f'{{ service = ["Browse", "BrowseNext"], {NS}, node = ["Plant", "Plant.*"] }}'))
    assert decide(p, browse("Plant")).verdict == "allow"
    assert decide(p, browse("Other")).verdict == "deny"
    # BrowseNext: the gateway passes the node its continuation point came from; none, and nothing allows it.
    assert decide(p, Operation("BrowseNext", 0, b"cp", continuation_point=b"cp")).verdict == "deny"
    assert (
        decide(p, Operation("BrowseNext", 0, b"cp", nid("Plant.X"), continuation_point=b"cp")).verdict
        == "allow"
    )


def test_events_need_an_entry_naming_event_notifier() -> None:
    server = (2253, 0)
    plain = opcua_policy(rule('{ preset = "read-only" }'))
    refused = decide(plain, monitor(server[0], 12, server[1]))
    assert outcome(refused) == ("deny", "r", DENIED)
    assert "need an entry naming attribute EventNotifier" in refused.reason
    assert decide(plain, history_read(server[0], server[1], events=True)).verdict == "deny"
    assert decide(plain, read(server[0], 12, server[1])).verdict == "allow"  # the attribute itself is a byte
    events = opcua_policy(
        rule(
            '{ preset = "read-only" },'
            ' { preset = "read-only", node = { namespace = 0, id = 2253 }, attribute = "EventNotifier" }'
        )
    )
    assert decide(events, monitor(server[0], 12, server[1])).verdict == "allow"
    assert decide(events, history_read(server[0], server[1], events=True)).verdict == "allow"
    assert decide(events, monitor("Plant.Tank1", 12)).verdict == "deny"


# ------------------------------------------------------------------------- deny, codes, monitor, time


def test_deny_wins_and_a_deny_without_operation_fields_refuses_the_service() -> None:
    p = opcua_policy(rule('{ preset = "read-write" }') + deny_rule('{ service = "Write" }'))
    assert outcome(decide_service(p, "Write")) == ("deny", "d", DENIED)
    assert outcome(decide(p, write("Plant.X", 1.0, DOUBLE))) == ("deny", "d", DENIED)
    assert decide_service(p, "Read").verdict == "allow"
    subscriptions = opcua_policy(
        rule('{ preset = "read-only" }') + deny_rule('{ service = "CreateSubscription" }')
    )
    assert outcome(decide_service(subscriptions, "CreateSubscription")) == ("deny", "d", DENIED)


def test_deny_codes_and_action_per_asset() -> None:
    extra = (
        'deny = { action = "close", address = "BadNotReadable", value = "BadOutOfRange",'
        " unsupported = 0x80010000 }\n"
    )
    p = opcua_policy(
        bounded() + rule('{ service = "Read", namespace = 0, node = 85 }', "r2"), asset_extra=extra
    )
    refused = decide(p, write("Plant.Setpoint", 9000.0, DOUBLE))
    assert (refused.exception_code, refused.action) == (0x803C0000, "close")
    assert decide(p, read("Plant.Setpoint")).exception_code == 0x803A0000  # address: BadNotReadable
    assert decide_service(p, "Publish").exception_code == DENIED  # function: the default
    assert decide_service(p, "NoSuchService").exception_code == 0x80010000


def test_monitor_rules_are_reported_and_do_not_change_the_outcome() -> None:
    p = opcua_policy(
        rule(f'{{ preset = "read-only", {NS}, node = "Plant.*" }}')
        + rule(
            f'{{ service = "Read", {NS}, node = "Plant.Hot.*" }}',
            "trial",
            EVERYONE,
            effect="deny",
            extra='mode = "monitor"\n',
        )
        + rule('{ service = "Write" }', "maybe-write", ALICE, extra='mode = "monitor"\n')
    )
    d = decide(p, read("Plant.Hot.Temp"))
    assert (d.verdict, d.rule_id, d.monitor_rule_id) == ("allow", "r", "trial")
    d = decide(p, monitor("Plant.Hot.Temp"))  # as a Read, the monitor deny would refuse it
    assert (d.verdict, d.rule_id, d.monitor_rule_id) == ("allow", "r", "trial")
    d = decide(p, write("Plant.X", 1.0, DOUBLE))
    assert (d.verdict, d.rule_id, d.monitor_rule_id) == ("deny", None, "maybe-write")
    assert decide_service(p, "Write").monitor_rule_id == "maybe-write"


def test_an_asset_in_monitor_mode_forwards_what_it_would_deny() -> None:
    p = opcua_policy(rule('{ service = "Read", namespace = 0, node = 85 }'), asset_extra='mode = "monitor"\n')
    d = decide(p, read("Plant.X"))
    assert (d.verdict, d.allowed, d.action, d.exception_code) == ("would-deny", True, "forward", DENIED)
    assert decide_service(p, "AddNodes").verdict == "would-deny"


def test_windows() -> None:
    window = 'when = { days = "mon-fri", hours = "06:00-18:00", tz = "Europe/Berlin" }\n'
    p = opcua_policy(rule(f'{{ preset = "read-write", {NS}, node = "Plant.*" }}', extra=window))
    thursday_noon, thursday_night = (
        at("2026-11-26T12:00", "Europe/Berlin"),
        at("2026-11-26T22:00", "Europe/Berlin"),
    )
    assert decide(p, read("Plant.X"), now=thursday_noon).verdict == "allow"
    refused = decide(p, read("Plant.X"), now=thursday_night)
    assert outcome(refused) == ("deny", None, DENIED)
    assert "allowed only by rule r, whose window is closed" in refused.reason
    assert decide_service(p, "Publish", now=thursday_night).verdict == "deny"
    assert "whose window is closed" in decide_service(p, "Publish", now=thursday_night).reason


def test_subjects() -> None:
    p = opcua_policy(rule('{ preset = "read-only" }', subject="group:operators"))
    assert decide(p, read("x"), subject=BOB).verdict == "allow"
    assert p.view(f"spiffe://{TD}/user/zed", "opc-1") is None  # cloaked


def test_node_lists_stay_bounded_and_right() -> None:
    p = opcua_policy(rule(f'{{ service = "Read", {NS}, node = "Plant.*" }}'))
    view = p.view(ALICE, "opc-1")
    assert view is not None
    for number in range(3 * NODE_LISTS_SIZE):
        identifier = f"Plant.{number}" if number % 2 else f"Other.{number}"
        expected = "allow" if number % 2 else "deny"
        assert view.decide_opcua(read(identifier), NAMESPACES, 0.0).verdict == expected
    table = view.opcua_table("Read")
    assert table is not None and len(table.node_lists) <= NODE_LISTS_SIZE


# ------------------------------------------------------------------------------------------- probes


def may(p: Policy, operation: Operation, path: tuple[str, ...] | None = None) -> bool:
    view = p.view(ALICE, "opc-1")
    assert view is not None
    return view.opcua_may(operation, NAMESPACES, 0.0, path)


def test_probes_take_what_an_operation_leaves_open_in_the_clients_favour() -> None:
    p = opcua_policy(
        rule(
            f'{{ service = "Write", {NS}, node = "Plant.Setpoint", value = "0..2500" }},'
            f' {{ service = "Call", {NS}, method = {{ object = "{TANK}", method = "{START}" }} }},'
            f' {{ service = "Write", browse_path = "/Objects/Open" }}'
        )
        + deny_rule(f'{{ service = "Write", {NS}, node = "Plant.Setpoint", value = "2000..2500" }}')
        + deny_rule(f'{{ service = "Call", {NS}, node = "{TANK}.Stop" }}', "d2")
    )
    probe = Operation("Write", 0, None, nid("Plant.Setpoint"), 13)  # no value: any value
    assert may(p, probe)
    assert decide(p, probe).verdict == "deny"  # decided for real, a write without a value is refused
    assert not may(p, Operation("Write", 0, None, nid("Plant.Drain"), 13))
    assert not may(p, Operation("Write", 0, None, nid("Plant.Setpoint"), 17))  # AccessLevel
    # UserExecutable: the method on some object.
    assert may(p, Operation("Call", 0, None, None, method_id=nid(START)))
    assert not may(p, Operation("Call", 0, None, None, method_id=nid(f"{TANK}.Stop")))
    assert not may(p, Operation("Call", 0, None, None, method_id=nid("Plant.Other")))
    assert may(p, Operation("Write", 0, None, nid("x"), 13), ("Objects", "Open", "X"))
    assert not may(p, Operation("Write", 0, None, nid("x"), 13), None)
    monitored = opcua_policy(rule('{ service = "Read" }'), asset_extra='mode = "monitor"\n')
    assert may(monitored, Operation("Write", 0, None, nid("x"), 13))  # nothing is refused there
