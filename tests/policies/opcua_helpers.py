"""Builders shared by the OPC UA policy tests: a policy head with an opcua asset, and operations built the
way the codec lists them, from asyncua's own NodeId, DataValue and Variant."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from asyncua import ua

from policies import Decision, Policy, parse_policy
from protocols.opcua.operations import Operation
from tests.policies.policy_helpers import ALICE, BOB, NOON, TD

__all__ = [
    "ALICE",
    "BOB",
    "NOON",
    "PLANT",
    "SERVER_URI",
    "TD",
    "UA",
    "browse",
    "call",
    "decide",
    "decide_service",
    "history_read",
    "monitor",
    "namespaces",
    "nid",
    "opcua_head",
    "opcua_policy",
    "outcome",
    "read",
    "rule",
    "write",
]

UA = "http://opcfoundation.org/UA/"
PLANT = "urn:ztgate:sim:plant"
SERVER_URI = "urn:freeopcua:python:server"
# The simulator's array: its own plant namespace at index 2.
NAMESPACES = (UA, SERVER_URI, PLANT)
DENIED = 0x801F0000
UNSUPPORTED = 0x800B0000


def namespaces(*uris: str) -> tuple[str, ...]:
    """A device's namespace array: index 0 and then ``uris``."""
    return (UA, *uris)


def opcua_head(*, asset_extra: str = "") -> str:
    return (
        f'trust_domain = "{TD}"\n\n'
        "[assets.opc-1]\n"
        'protocol = "opcua"\n'
        'upstream = "opc.tcp://10.0.0.9:4840/plant"\n'
        f"{asset_extra}\n"
        "[groups]\n"
        f'operators = ["{ALICE}", "{BOB}"]\n\n'
    )


def rule(
    entries: str, rule_id: str = "r", subject: str = ALICE, *, effect: str = "allow", extra: str = ""
) -> str:
    return (
        f'[[rules]]\nid = "{rule_id}"\neffect = "{effect}"\nsubjects = ["{subject}"]\n'
        f'assets = ["opc-1"]\n{extra}opcua = [{entries}]\n\n'
    )


def opcua_policy(rules: str, *, asset_extra: str = "") -> Policy:
    return parse_policy(opcua_head(asset_extra=asset_extra) + rules, "policy.toml")


def decide(
    p: Policy,
    operation: Operation,
    *,
    ns: Sequence[str] = NAMESPACES,
    path: Sequence[str] | None = None,
    subject: str = ALICE,
    now: float = NOON,
) -> Decision:
    view = p.view(subject, "opc-1")
    assert view is not None, f"opc-1 is cloaked for {subject}"
    return view.decide_opcua(operation, ns, now, path)


def decide_service(p: Policy, service: str, *, subject: str = ALICE, now: float = NOON) -> Decision:
    view = p.view(subject, "opc-1")
    assert view is not None, f"opc-1 is cloaked for {subject}"
    return view.decide_opcua_service(service, now)


def outcome(decision: Decision) -> tuple[str, str | None, int]:
    return decision.verdict, decision.rule_id, decision.exception_code


# ------------------------------------------------------------------------------------ operations


def nid(identifier: Any, index: int = 2) -> ua.NodeId:
    """A node id of the plant namespace (index 2 in NAMESPACES) unless told otherwise."""
    return ua.NodeId(identifier, index)


def read(identifier: Any, attribute: int = 13, index: int = 2) -> Operation:
    node = nid(identifier, index)
    return Operation("Read", 0, ua.ReadValueId(NodeId=node, AttributeId=attribute), node, attribute)


def write(
    identifier: Any, value: Any, variant_type: Any = None, attribute: int = 13, index: int = 2
) -> Operation:
    node = nid(identifier, index)
    variant = value if isinstance(value, ua.Variant) else ua.Variant(value, variant_type)
    data = ua.DataValue(variant)
    item = ua.WriteValue(NodeId=node, AttributeId=attribute, Value=data)
    return Operation("Write", 0, item, node, attribute, value=data)


def call(
    obj: Any, method: Any, *arguments: ua.Variant, object_index: int = 2, method_index: int = 2
) -> Operation:
    node, method_node = nid(obj, object_index), nid(method, method_index)
    item = ua.CallMethodRequest(ObjectId=node, MethodId=method_node, InputArguments=list(arguments))
    return Operation("Call", 0, item, node, method_id=method_node, arguments=tuple(arguments))


def browse(identifier: Any, index: int = 2) -> Operation:
    node = nid(identifier, index)
    return Operation("Browse", 0, ua.BrowseDescription(NodeId=node), node)


def monitor(identifier: Any, attribute: int = 13, index: int = 2, *, modify: bool = False) -> Operation:
    node = nid(identifier, index)
    service = "ModifyMonitoredItems" if modify else "CreateMonitoredItems"
    return Operation(service, 0, None, node, attribute)


def history_read(identifier: Any, index: int = 2, *, events: bool = False) -> Operation:
    node = nid(identifier, index)
    return Operation("HistoryRead", 0, None, node, 12 if events else 13)
