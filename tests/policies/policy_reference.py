"""A deliberately naive evaluator, written from docs/policy.md "How a decision is made".

It works on the parsed model only: every request loops over every rule of the file in file order,
checks addresses and values one by one against the raw ranges, and converts the time for every window
it looks at. No index, no cache, no shared code with the compiled evaluator beyond the model types.
The property tests hold the compiled evaluator to the same answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from policies import Policy
from policies.model import ModbusEntry, Rule
from protocols.modbus.pdu import Request

__all__ = [
    "RefDecision",
    "names_asset",
    "reference_decide",
    "reference_sees_asset",
    "subject_matches",
    "window_open",
]


@dataclass(frozen=True)
class RefDecision:
    verdict: str
    allowed: bool
    rule_id: str | None
    exception_code: int
    action: str
    monitor_rule_id: str | None


def _pattern_matches(pattern: str, subject: str) -> bool:
    if pattern.endswith("*"):
        return subject.startswith(pattern[:-1])
    return subject == pattern


def subject_matches(policy: Policy, rule: Rule, subject: str) -> bool:
    for item in rule.subjects:
        if item.startswith("group:"):
            if any(_pattern_matches(member, subject) for member in policy.groups[item[6:]]):
                return True
        elif _pattern_matches(item, subject):
            return True
    return False


def names_asset(rule: Rule, asset: str) -> bool:
    return any(name in ("*", asset) for name in rule.assets)


def window_open(rule: Rule, now: float) -> bool:
    window = rule.window
    if window is None:
        return True
    local = datetime.fromtimestamp(now, ZoneInfo(window.tz_name))
    minute = local.hour * 60 + local.minute
    day = local.weekday()
    if window.start < window.end:
        return day in window.days and window.start <= minute < window.end
    # Spans midnight: the part after midnight belongs to the day the window opened.
    return (day in window.days and minute >= window.start) or (
        (day - 1) % 7 in window.days and minute < window.end
    )


def _in(ranges: tuple[tuple[int, int], ...], point: int) -> bool:
    return any(low <= point <= high for low, high in ranges)


def _spans(request: Request) -> list[tuple[int, int]]:
    """Every (first, last) address span the request touches: read, write, file record spans."""
    spans = []
    if request.read_address >= 0:
        spans.append((request.read_address, request.read_address + request.read_count - 1))
    if request.write_address >= 0:
        spans.append((request.write_address, request.write_address + request.write_count - 1))
    for _, record, length in request.file_records:
        spans.append((record, record + length - 1))
    return spans


def _written(request: Request) -> list[int]:
    """Every value the request may write; FC 22 may leave any value between its lowest and highest."""
    if request.function_code == 22:
        return list(range(request.values[0], request.values[1] + 1))
    return list(request.values)


def _names_function(entry: ModbusEntry, request: Request) -> bool:
    if request.function_code not in entry.function_codes:
        return False
    if request.function_code in (8, 43):
        assert entry.subfunctions is not None
        return _in(entry.subfunctions.ranges, request.sub_function)
    return True


def _unit_and_addresses_allowed(entry: ModbusEntry, request: Request) -> bool:
    if entry.units is not None and not _in(entry.units.ranges, request.unit_id):
        return False
    if entry.addresses is not None:
        for first, last in _spans(request):
            if not all(_in(entry.addresses.ranges, address) for address in range(first, last + 1)):
                return False
    files = entry.files
    return files is None or all(_in(files.ranges, number) for number, _, _ in request.file_records)


def _allows(entry: ModbusEntry, request: Request) -> bool:
    if not _unit_and_addresses_allowed(entry, request):
        return False
    if entry.values is not None:
        return all(_in(entry.values.ranges, value) for value in _written(request))
    return True


def _touches(entry: ModbusEntry, request: Request) -> bool:
    if entry.units is not None and not _in(entry.units.ranges, request.unit_id):
        return False
    if entry.addresses is not None:
        touched = [a for first, last in _spans(request) for a in range(first, last + 1)]
        if not any(_in(entry.addresses.ranges, address) for address in touched):
            return False
    files, values = entry.files, entry.values
    if files is not None and not any(_in(files.ranges, number) for number, _, _ in request.file_records):
        return False
    return values is None or any(_in(values.ranges, value) for value in _written(request))


def _deny_kind(entry: ModbusEntry) -> str:
    if entry.values is not None:
        return "value"
    if entry.addresses is not None or entry.units is not None or entry.files is not None:
        return "address"
    return "function"


def _evaluate(
    rules: list[Rule], request: Request, now: float, with_monitor: bool
) -> tuple[bool, str | None, str]:
    """Steps 2-5: (allowed, rule id, exception kind) with the given rules, windows applied."""
    applicable = [r for r in rules if (with_monitor or r.mode == "enforce") and window_open(r, now)]
    for rule in applicable:
        if rule.effect == "deny":
            for entry in rule.modbus:
                if _names_function(entry, request) and _touches(entry, request):
                    return False, rule.id, _deny_kind(entry)
    for rule in applicable:
        if rule.effect == "allow":
            for entry in rule.modbus:
                if _names_function(entry, request) and _allows(entry, request):
                    return True, rule.id, ""
    closest: tuple[int, str | None] = (0, None)
    for rule in applicable:
        if rule.effect == "allow":
            for entry in rule.modbus:
                if _names_function(entry, request):
                    level = 2 if _unit_and_addresses_allowed(entry, request) else 1
                    if level > closest[0]:
                        closest = (level, rule.id)
    kind = {0: "function", 1: "address", 2: "value"}[closest[0]]
    return False, closest[1], kind


def reference_sees_asset(policy: Policy, subject: str, asset: str) -> bool:
    return asset in policy.assets and any(
        subject_matches(policy, r, subject) and names_asset(r, asset) for r in policy.rules
    )


def reference_decide(
    policy: Policy, subject: str, asset_name: str, request: Request, now: float
) -> RefDecision | None:
    """The decision, or None when the asset is cloaked for the subject."""
    if not reference_sees_asset(policy, subject, asset_name):
        return None
    asset = policy.assets[asset_name]
    rules = [r for r in policy.rules if subject_matches(policy, r, subject) and names_asset(r, asset_name)]
    codes = {
        "function": asset.deny.function,
        "address": asset.deny.address,
        "value": asset.deny.value,
        "unit": asset.deny.unit,
    }
    monitor_rule_id = None
    if request.unit_id not in asset.unit_ids:  # no path to that unit: the gateway's own exception
        allowed, rule_id, kind = False, None, "unit"
    else:
        allowed, rule_id, kind = _evaluate(rules, request, now, with_monitor=False)
        monitored = _evaluate(rules, request, now, with_monitor=True)
        if monitored[0] != allowed:
            monitor_rule_id = monitored[1]
    if allowed:
        return RefDecision("allow", True, rule_id, 0, "forward", monitor_rule_id)
    if asset.mode == "monitor":
        return RefDecision("would-deny", True, rule_id, codes[kind], "forward", monitor_rule_id)
    return RefDecision("deny", False, rule_id, codes[kind], asset.deny.action, monitor_rule_id)
