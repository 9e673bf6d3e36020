"""A deliberately naive EtherNet/IP evaluator, written from docs/policy.md ("EtherNet/IP entries",
"How a decision is made"), for the property tests to hold the compiled one to.

It loops over every rule and entry of the file for every request, reads tag patterns and the request's
tag from their text again, expands a request into the elements it reaches and checks each one, and
compares values one by one. It shares nothing with the compiled evaluator beyond the model types and
the codec's request view.
"""

from __future__ import annotations

import math
import re

from policies import Policy
from policies.model import EnipEntry, Rule
from protocols.enip import CipRequest, ForwardClose, ForwardOpen
from protocols.enip.spec import service_name
from tests.policies.policy_reference import (
    RefDecision,
    names_asset,
    reference_sees_asset,
    subject_matches,
    window_open,
)

__all__ = ["enip_reference_decide", "reference_tag_covers", "reference_tag_touches"]

SYMBOL = 0x6B
LIST_TAGS = 0x55
# An element of a request: its path as (lower-case name, index or None) pairs; SPAN stands for the
# elements of a multi-element request on a multi-dimensional index, which no one can enumerate.
SPAN = (-1,)
Part = tuple[str, tuple[int, ...] | None]
PatternPart = tuple[str, list[tuple[int, int]] | None]


def _in(ranges: tuple[tuple[int, int], ...], point: int) -> bool:
    return any(low <= point <= high for low, high in ranges)


# ---------------------------------------------------------------------------------------------- tags


def _split(text: str) -> list[str]:
    """At the dots that are not inside brackets."""
    return re.split(r"\.(?![^\[]*\])", text)


def _pattern(text: str) -> tuple[list[PatternPart], bool]:
    if text == "*":
        return [], True
    pieces = _split(text)
    wildcard = pieces[-1] == "*"
    if wildcard:
        pieces = pieces[:-1]
    parts: list[PatternPart] = []
    for piece in pieces:
        name, _, index = piece.partition("[")
        dims = None
        if index:
            dims = []
            for item in index.rstrip("]").split(","):
                low, _, high = item.partition("..")
                dims.append((int(low), int(high or low)))
        parts.append((name.lower(), dims))
    return parts, wildcard


def _tag_parts(text: str) -> list[Part]:
    parts: list[Part] = []
    for piece in text.split("."):
        name, _, index = piece.partition("[")
        parts.append((name.lower(), tuple(int(i) for i in index.rstrip("]").split(",")) if index else None))
    return parts


def _elements(request: CipRequest) -> list[list[Part]]:
    assert request.tag is not None
    parts = _tag_parts(request.tag)
    count = request.element_count or 1
    if count == 1:
        return [parts]
    name, index = parts[-1]
    if index is None:
        return [[*parts[:-1], (name, (k,))] for k in range(count)]
    if len(index) == 1:
        return [[*parts[:-1], (name, (index[0] + k,))] for k in range(count)]
    return [[*parts[:-1], (name, SPAN)]]


def _element_inside(pattern: list[PatternPart], wildcard: bool, element: list[Part]) -> bool:
    if len(element) < len(pattern) or (wildcard and len(element) == len(pattern)):
        return False
    for level, (name, dims) in enumerate(pattern):
        have, index = element[level]
        if have != name:
            return False
        if dims is None:
            continue
        if index == SPAN:
            return False
        if index is None:
            if level != len(element) - 1:
                return False
            index = (0,) * len(dims)
        if len(index) != len(dims):
            return False
        if not all(low <= i <= high for i, (low, high) in zip(index, dims, strict=True)):
            return False
    return True


def _element_touches(pattern: list[PatternPart], element: list[Part]) -> bool:
    for level in range(min(len(pattern), len(element))):
        name, dims = pattern[level]
        have, index = element[level]
        if have != name:
            return False
        if dims is None or index == SPAN:
            continue
        if index is None:
            if level != len(element) - 1:
                continue
            index = (0,) * len(dims)
        if len(index) != len(dims):
            continue
        if not all(low <= i <= high for i, (low, high) in zip(index, dims, strict=True)):
            return False
    return True


def reference_tag_covers(pattern: str, request: CipRequest) -> bool:
    parts, wildcard = _pattern(pattern)
    return all(_element_inside(parts, wildcard, element) for element in _elements(request))


def reference_tag_touches(pattern: str, request: CipRequest) -> bool:
    parts, _ = _pattern(pattern)
    return any(_element_touches(parts, element) for element in _elements(request))


def _tag_covered(entry: EnipEntry, request: CipRequest) -> bool:
    assert entry.tags is not None
    return any(reference_tag_covers(pattern.text, request) for pattern in entry.tags)


def _tag_touched(entry: EnipEntry, request: CipRequest) -> bool:
    assert entry.tags is not None
    return any(reference_tag_touches(pattern.text, request) for pattern in entry.tags)


# -------------------------------------------------------------------------------------------- fields


def _by_number(request: CipRequest) -> bool:
    return request.class_id == SYMBOL and request.tag is None and request.service != LIST_TAGS


def _attributes(request: CipRequest) -> tuple[int, ...]:
    if request.attribute_ids:
        return request.attribute_ids
    return () if request.attribute_id is None else (request.attribute_id,)


def _inside_bounds(entry: EnipEntry, value: float) -> bool:
    assert entry.values is not None
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return False
    return any(low <= value <= high for low, high in entry.values.ranges)


def _names_service(entry: EnipEntry, request: CipRequest) -> bool:
    return (request.class_id, request.service) in entry.services or (
        request.service < 0x4B and (None, request.service) in entry.services
    )


def _target_allowed(entry: EnipEntry, request: CipRequest) -> bool:
    if entry.classes is not None and (
        request.class_id is None or not _in(entry.classes.ranges, request.class_id)
    ):
        return False
    if entry.instances is not None and (
        request.instance_id is None or not _in(entry.instances.ranges, request.instance_id)
    ):
        return False
    if entry.attributes is not None:
        attributes = _attributes(request)
        if not attributes or not all(_in(entry.attributes.ranges, a) for a in attributes):
            return False
    if request.tag is not None:
        return entry.tags is None or _tag_covered(entry, request)
    if _by_number(request):
        return entry.tags is None and entry.classes is not None and entry.instances is not None
    return True


def _allows(entry: EnipEntry, request: CipRequest) -> bool:
    if not _target_allowed(entry, request):
        return False
    if entry.values is None or not request.writes:
        return True
    return not request.opaque_values and all(_inside_bounds(entry, v) for v in request.values)


def _touches(entry: EnipEntry, request: CipRequest) -> bool:
    if entry.classes is not None and (
        request.class_id is None or not _in(entry.classes.ranges, request.class_id)
    ):
        return False
    if entry.instances is not None and (
        request.instance_id is None or not _in(entry.instances.ranges, request.instance_id)
    ):
        return False
    if entry.attributes is not None:
        attributes = _attributes(request)
        if attributes and not any(_in(entry.attributes.ranges, a) for a in attributes):
            return False
    if entry.tags is not None:
        if request.tag is not None:
            if not _tag_touched(entry, request):
                return False
        elif not _by_number(request):
            return False
    if entry.values is not None:
        if not request.writes:
            return False
        if not request.opaque_values and not any(
            _inside_bounds(entry, v) or (isinstance(v, float) and not math.isfinite(v))
            for v in request.values
        ):
            return False
    return True


def _deny_kind(entry: EnipEntry) -> str:
    if entry.values is not None:
        return "value"
    if any(f is not None for f in (entry.classes, entry.instances, entry.attributes, entry.tags)):
        return "address"
    return "function"


def _evaluate(
    rules: list[Rule], request: CipRequest, now: float, with_monitor: bool
) -> tuple[bool, str | None, str]:
    applicable = [r for r in rules if (with_monitor or r.mode == "enforce") and window_open(r, now)]
    for rule in applicable:
        if rule.effect == "deny":
            for entry in rule.enip:
                if _names_service(entry, request) and _touches(entry, request):
                    return False, rule.id, _deny_kind(entry)
    for rule in applicable:
        if rule.effect == "allow":
            for entry in rule.enip:
                if _names_service(entry, request) and _allows(entry, request):
                    return True, rule.id, ""
    closest: tuple[int, str | None] = (0, None)
    for rule in applicable:
        if rule.effect == "allow":
            for entry in rule.enip:
                if _names_service(entry, request):
                    level = 2 if _target_allowed(entry, request) else 1
                    if level > closest[0]:
                        closest = (level, rule.id)
    if closest[0] == 0:
        named_anywhere = any(_names_service(e, request) for r in rules for e in r.enip)
        unknown = service_name(request.class_id, request.service) is None
        return False, None, "unsupported" if unknown and not named_anywhere else "function"
    return False, closest[1], {1: "address", 2: "value"}[closest[0]]


def _route(request: CipRequest) -> tuple[object, ...]:
    route = tuple(request.route)
    if isinstance(request.payload, ForwardOpen | ForwardClose):
        route += tuple(request.payload.connection_path.route)
    return route


def enip_reference_decide(
    policy: Policy, subject: str, asset_name: str, request: CipRequest, now: float
) -> RefDecision | None:
    """The decision, or None when the asset is cloaked for the subject."""
    if not reference_sees_asset(policy, subject, asset_name):
        return None
    asset = policy.assets[asset_name]
    deny = asset.deny
    codes = {
        "function": deny.function,
        "address": deny.address,
        "value": deny.value,
        "unsupported": deny.unsupported,
    }
    if request.error is not None:
        return RefDecision("deny", False, None, request.error.general_status or 0x03, "exception", None)
    rules = [r for r in policy.rules if subject_matches(policy, r, subject) and names_asset(r, asset_name)]
    monitor_rule_id = None
    route = _route(request)
    if route and route != asset.route:
        allowed, rule_id, kind = False, None, "address"
    else:
        allowed, rule_id, kind = _evaluate(rules, request, now, with_monitor=False)
        monitored = _evaluate(rules, request, now, with_monitor=True)
        if monitored[0] != allowed:
            monitor_rule_id = monitored[1]
    if allowed:
        return RefDecision("allow", True, rule_id, 0, "forward", monitor_rule_id)
    if asset.mode == "monitor":
        return RefDecision("would-deny", True, rule_id, codes[kind], "forward", monitor_rule_id)
    return RefDecision("deny", False, rule_id, codes[kind], deny.action, monitor_rule_id)
