"""A deliberately naive OPC UA evaluator, written from docs/policy.md ("OPC UA entries", "How a decision
is made"), for the property tests to hold the compiled one to.

It loops over every rule and entry of the file for every operation, reads identifier patterns and browse
paths from their text again, matches string ids with a recursive glob, flattens written Variants itself
and compares numbers one by one. It shares nothing with the compiled evaluator beyond the model types
and the codec's operation view.
"""

from __future__ import annotations

import base64
import math
import uuid
from collections.abc import Sequence
from typing import Any

from policies import Policy
from policies.model import OpcuaEntry, Rule
from protocols.opcua.operations import Operation
from protocols.opcua.services import SERVICES_BY_NAME
from tests.policies.policy_reference import (
    RefDecision,
    names_asset,
    reference_sees_asset,
    subject_matches,
    window_open,
)

__all__ = ["opcua_reference_decide", "opcua_reference_service", "reference_glob"]

UA = "http://opcfoundation.org/UA/"
COUPLED = ("CreateMonitoredItems", "ModifyMonitoredItems", "HistoryRead")
VALUE, EVENT_NOTIFIER = 13, 12
NUMERIC_TYPES = range(1, 12)  # Boolean .. Double
Key = tuple[str | None, Any] | None


# ------------------------------------------------------------------------------------------- nodes


def reference_glob(pattern: str, text: str) -> bool:
    """``*`` is any run of characters, everything else literal."""
    if not pattern:
        return not text
    if pattern[0] == "*":
        return any(reference_glob(pattern[1:], text[i:]) for i in range(len(text) + 1))
    return bool(text) and text[0] == pattern[0] and reference_glob(pattern[1:], text[1:])


def _id_matches(kind: str, text: str, identifier: Any) -> bool:
    if kind == "s":
        return isinstance(identifier, str) and reference_glob(text, identifier)
    if kind == "i":
        if isinstance(identifier, bool) or not isinstance(identifier, int):
            return False
        if text == "*":
            return True
        low, _, high = text.partition("-")
        return int(low) <= identifier <= int(high or low)
    if kind == "g":
        return isinstance(identifier, uuid.UUID) and identifier == uuid.UUID(text)
    return isinstance(identifier, bytes) and identifier == base64.b64decode(text)


def _key(index: int, identifier: Any, namespaces: Sequence[str]) -> Key:
    if index == 0:
        return UA, identifier
    if 0 < index < len(namespaces):
        return namespaces[index], identifier
    return None, identifier


def _matched(patterns: Any, key: Key) -> bool:
    if key is None or key[0] is None:
        return False
    for pattern in patterns:
        if pattern.uri != key[0]:
            continue
        if pattern.ids is None or _id_matches(pattern.ids.kind, pattern.ids.text, key[1]):
            return True
    return False


def _touched(patterns: Any, key: Key) -> bool:
    return key is None or key[0] is None or _matched(patterns, key)


# ------------------------------------------------------------------------------------------- paths


def _rule_segments(text: str) -> list[tuple[str | None, str]]:
    segments: list[tuple[str | None, str]] = []
    raw = ""
    escaped = False
    pieces: list[str] = []
    for char in text[1:]:
        if escaped:
            raw += "&" + char
            escaped = False
        elif char == "&":
            escaped = True
        elif char == "/":
            pieces.append(raw)
            raw = ""
        else:
            raw += char
    if text != "/":
        pieces.append(raw)
    for piece in pieces:
        uri = None
        body = piece
        if piece.startswith("{"):
            uri, body = piece[1:].split("}", 1)
        name = ""
        index = 0
        while index < len(body):
            if body[index] == "&":
                index += 1
            name += body[index]
            index += 1
        segments.append((uri, name))
    return segments


def _given(segment: str) -> tuple[str, str]:
    if segment.startswith("{") and "}" in segment:
        uri, name = segment[1:].split("}", 1)
        return uri, name
    return UA, segment


def _under(text: str, path: Sequence[str]) -> bool:
    wanted = _rule_segments(text)
    if len(path) < len(wanted):
        return False
    for (uri, name), given in zip(wanted, path, strict=False):
        given_uri, given_name = _given(given)
        if name != given_name or (uri is not None and uri != given_uri):
            return False
    return True


# ------------------------------------------------------------------------------------------ values


def _numbers(variant: Any) -> list[Any] | None:
    if variant is None or int(variant.VariantType) not in NUMERIC_TYPES:
        return None
    flat: list[Any] = []

    def walk(value: Any) -> bool:
        if isinstance(value, list):
            return all(walk(item) for item in value)
        if isinstance(value, bool | int | float):
            flat.append(value)
            return True
        return False

    if not walk(variant.Value) or not flat:
        return None
    return flat


def _written(op: Operation) -> tuple[bool, list[Any] | None]:
    if op.service == "Write":
        return True, None if op.value is None else _numbers(op.value.Value)
    if op.service == "Call" and op.arguments:
        out: list[Any] = []
        for argument in op.arguments:
            numbers = _numbers(argument)
            if numbers is None:
                return True, None
            out += numbers
        return True, out
    return False, None


def _inside(entry: OpcuaEntry, value: Any) -> bool:
    assert entry.values is not None
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return any(low <= value <= high for low, high in entry.values.ranges)


# ------------------------------------------------------------------------------------------ fields


class _Op:
    def __init__(self, op: Operation, namespaces: Sequence[str], path: Sequence[str] | None) -> None:
        self.node: Key = (
            None if op.node_id is None else _key(op.node_id.NamespaceIndex, op.node_id.Identifier, namespaces)
        )
        self.method: Key = (
            None
            if op.method_id is None
            else _key(op.method_id.NamespaceIndex, op.method_id.Identifier, namespaces)
        )
        self.attribute = op.attribute_id
        self.path = path
        self.writes, self.numbers = _written(op)


def _target_allowed(entry: OpcuaEntry, service: str, o: _Op) -> bool:
    standard_method = o.method is not None and o.method[0] == UA
    standard_node = o.node is not None and o.node[0] == UA
    if service == "Call":
        if entry.nodes is not None and not (
            _matched(entry.nodes, o.node) and _matched(entry.nodes, o.method)
        ):
            return False
        if entry.methods is not None and not any(
            _matched(pair.objects, o.node) and _matched(pair.methods, o.method) for pair in entry.methods
        ):
            return False
        if (
            entry.nodes is None
            and entry.methods is None
            and (entry.browse_paths is not None or standard_method)
        ):
            return False
    else:
        if entry.nodes is not None and not _matched(entry.nodes, o.node):
            return False
        if service == "Write" and entry.nodes is None and standard_node:
            return False
    if entry.browse_paths is not None and (
        o.path is None or not any(_under(prefix.text, o.path) for prefix in entry.browse_paths)
    ):
        return False
    if entry.attributes is not None:
        return o.attribute is None or o.attribute in entry.attributes
    if service == "Write":
        return o.attribute == VALUE
    return not (service in COUPLED and o.attribute == EVENT_NOTIFIER)


def _allows(entry: OpcuaEntry, service: str, o: _Op) -> bool:
    if not _target_allowed(entry, service, o):
        return False
    if entry.values is None or not o.writes:
        return True
    return o.numbers is not None and all(_inside(entry, v) for v in o.numbers)


def _touches(entry: OpcuaEntry, service: str, o: _Op) -> bool:
    if entry.nodes is not None:
        keys = (o.node, o.method) if service == "Call" else (o.node,)
        if not any(_touched(entry.nodes, key) for key in keys):
            return False
    if (
        entry.browse_paths is not None
        and o.path is not None
        and not any(_under(prefix.text, o.path) for prefix in entry.browse_paths)
    ):
        return False
    if entry.methods is not None:
        if service != "Call":
            return False
        if not any(
            _touched(pair.objects, o.node) and _touched(pair.methods, o.method) for pair in entry.methods
        ):
            return False
    if entry.attributes is not None and (o.attribute is None or o.attribute not in entry.attributes):
        return False
    if entry.values is not None:
        if not o.writes:
            return False
        if o.numbers is not None and not any(
            _inside(entry, v) or (isinstance(v, float) and not math.isfinite(v)) for v in o.numbers
        ):
            return False
    return True


def _per_operation(entry: OpcuaEntry) -> bool:
    return any(
        field is not None
        for field in (entry.nodes, entry.browse_paths, entry.attributes, entry.methods, entry.values)
    )


def _deny_kind(entry: OpcuaEntry) -> str:
    if entry.values is not None:
        return "value"
    return "address" if _per_operation(entry) else "function"


def _no_rule(service: str) -> str:
    return "unsupported" if service not in SERVICES_BY_NAME else "function"


def _evaluate(
    rules: list[Rule], service: str, o: _Op, now: float, with_monitor: bool
) -> tuple[bool, str | None, str]:
    applicable = [r for r in rules if (with_monitor or r.mode == "enforce") and window_open(r, now)]
    for rule in applicable:
        if rule.effect == "deny":
            for entry in rule.opcua:
                if service in entry.services and _touches(entry, service, o):
                    return False, rule.id, _deny_kind(entry)
    for rule in applicable:
        if rule.effect == "allow":
            for entry in rule.opcua:
                if service in entry.services and _allows(entry, service, o):
                    return True, rule.id, ""
    closest: tuple[int, str | None] = (0, None)
    for rule in applicable:
        if rule.effect == "allow":
            for entry in rule.opcua:
                if service in entry.services:
                    level = 2 if _target_allowed(entry, service, o) else 1
                    if level > closest[0]:
                        closest = (level, rule.id)
    if closest[0] == 0:
        return False, None, _no_rule(service)
    return False, closest[1], {1: "address", 2: "value"}[closest[0]]


def _evaluate_service(
    rules: list[Rule], service: str, now: float, with_monitor: bool
) -> tuple[bool, str | None, str]:
    applicable = [r for r in rules if (with_monitor or r.mode == "enforce") and window_open(r, now)]
    for rule in applicable:
        if rule.effect == "deny":
            for entry in rule.opcua:
                if service in entry.services and not _per_operation(entry):
                    return False, rule.id, "function"
    for rule in applicable:
        if rule.effect == "allow" and any(service in entry.services for entry in rule.opcua):
            return True, rule.id, ""
    return False, None, _no_rule(service)


def _finish(
    policy: Policy,
    asset_name: str,
    enforced: tuple[bool, str | None, str],
    monitor_rule_id: str | None,
) -> RefDecision:
    asset = policy.assets[asset_name]
    deny = asset.deny
    codes = {
        "function": deny.function,
        "address": deny.address,
        "value": deny.value,
        "unsupported": deny.unsupported,
    }
    allowed, rule_id, kind = enforced
    if allowed:
        return RefDecision("allow", True, rule_id, 0, "forward", monitor_rule_id)
    if asset.mode == "monitor":
        return RefDecision("would-deny", True, rule_id, codes[kind], "forward", monitor_rule_id)
    return RefDecision("deny", False, rule_id, codes[kind], deny.action, monitor_rule_id)


def _rules(policy: Policy, subject: str, asset_name: str) -> list[Rule]:
    return [r for r in policy.rules if subject_matches(policy, r, subject) and names_asset(r, asset_name)]


def opcua_reference_service(
    policy: Policy, subject: str, asset_name: str, service: str, now: float
) -> RefDecision | None:
    """The decision on a request as a whole, or None when the asset is cloaked for the subject."""
    if not reference_sees_asset(policy, subject, asset_name):
        return None
    rules = _rules(policy, subject, asset_name)
    enforced = _evaluate_service(rules, service, now, with_monitor=False)
    monitored = _evaluate_service(rules, service, now, with_monitor=True)
    return _finish(policy, asset_name, enforced, monitored[1] if monitored[0] != enforced[0] else None)


def opcua_reference_decide(
    policy: Policy,
    subject: str,
    asset_name: str,
    op: Operation,
    namespaces: Sequence[str],
    now: float,
    path: Sequence[str] | None,
) -> RefDecision | None:
    """The decision on one operation, or None when the asset is cloaked for the subject."""
    if not reference_sees_asset(policy, subject, asset_name):
        return None
    rules = _rules(policy, subject, asset_name)
    o = _Op(op, namespaces, path)
    own_e = _evaluate(rules, op.service, o, now, with_monitor=False)
    own_m = _evaluate(rules, op.service, o, now, with_monitor=True)
    if op.service not in COUPLED:
        return _finish(policy, asset_name, own_e, own_m[1] if own_m[0] != own_e[0] else None)
    # A monitored item or a history read is a Read too: allowed when both allow it.
    read_e = _evaluate(rules, "Read", o, now, with_monitor=False)
    read_m = _evaluate(rules, "Read", o, now, with_monitor=True)
    enforced = own_e if not own_e[0] else read_e if not read_e[0] else own_e
    monitored_allowed = own_m[0] and read_m[0]
    monitor = None
    if monitored_allowed != enforced[0]:
        if enforced[0]:
            monitor = own_m[1] if not own_m[0] else read_m[1]
        else:
            monitor = own_m[1] if not own_e[0] else read_m[1]
    return _finish(policy, asset_name, enforced, monitor)
