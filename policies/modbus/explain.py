"""``ztgate policy explain`` for Modbus: the request in words, the entry the decision rests on, the
asset's unit mapping, and the rules naming the request's function code."""

from __future__ import annotations

from collections.abc import Callable

from policies.decision import Decision
from policies.explain import Explanation, at_text, decision_line, rule_line, window_lines
from policies.modbus.evaluate import (
    Candidate,
    covers,
    function_text,
    span_text,
    touches,
    unit_and_addresses_cover,
)
from policies.model import SUBFUNCTION_CODES, Asset, Rule
from policies.view import SubjectView
from protocols.modbus.pdu import Request

__all__ = ["describe_request", "explain_view"]

_CODE_NAMES = {1: "illegal function", 2: "illegal data address", 3: "illegal data value"}


def describe_request(request: Request) -> str:
    parts = [f"{function_text(request)}, unit {request.unit_id}"]
    if request.read_address >= 0:
        parts.append(f"read {span_text(request.read_address, request.read_count)}")
    if request.write_address >= 0:
        parts.append(f"write {span_text(request.write_address, request.write_count)}")
    for file_number, record, length in request.file_records:
        parts.append(f"file {file_number} records {span_text(record, length)}")
    if request.values:
        if request.function_code == 22:
            parts.append(f"resulting values {request.values[0]}-{request.values[1]}")
        else:
            shown = ", ".join(str(value) for value in request.values[:8])
            more = f", ... ({len(request.values)} values)" if len(request.values) > 8 else ""
            parts.append(f"values {shown}{more}")
    return ", ".join(parts)


def _names_function(rule: Rule, request: Request) -> bool:
    code = request.function_code
    for entry in rule.modbus:
        if code in entry.function_codes:
            if code not in SUBFUNCTION_CODES:
                return True
            if entry.subfunctions is not None and request.sub_function in entry.subfunctions:
                return True
    return False


def _deciding_entry(view: SubjectView, decision: Decision, request: Request, now: float) -> str | None:
    """The entry of the deciding (or closest) rule that the decision rests on, in policy notation."""
    table = view.table(request)
    if table is None or decision.rule_id is None:
        return None
    # In the order the evaluator looks: a matching deny entry, an allowing entry, then the closest miss
    # (an entry allowing unit and addresses before one that does not).
    passes: tuple[tuple[tuple[Candidate, ...], Callable[[Candidate], bool]], ...] = (
        (table.deny, lambda c: touches(c, request, now)),
        (table.allow, lambda c: covers(c, request, now)),
        (table.allow, lambda c: unit_and_addresses_cover(c, request)),
        (table.allow, lambda c: True),
    )
    for candidates, matches in passes:
        for c in candidates:
            if c.rule_id == decision.rule_id and matches(c):
                return c.entry.describe()
    return None


def explain_view(view: SubjectView, request: Request, now: float, source: str) -> Explanation:
    decision = view.decide_modbus(request, now)
    asset = view.asset
    lines = [
        decision_line(decision, "exception", _CODE_NAMES),
        rule_line(decision, view.rules),
        f"reason: {decision.reason}",
    ]
    entry = _deciding_entry(view, decision, request, now)
    if entry is not None:
        lines.append(f"entry: {entry}")
    if decision.monitor_rule_id is not None:
        flip = "deny" if decision.verdict == "allow" else "allow"
        lines.append(f"monitor: rule {decision.monitor_rule_id} (monitor mode) would {flip} this request")
    lines.append(f"subject: {view.subject}")
    lines.append(_asset_line(asset, request.unit_id))
    lines.append(f"request: {describe_request(request)}")
    lines.append(f"time: {at_text(now)}")
    relevant = [rule for rule in view.rules if _names_function(rule, request)]
    lines.extend(window_lines(function_text(request), relevant, now))
    lines.append(f"policy: {source} revision {view.policy_revision}")
    return Explanation(decision, lines)


def _asset_line(asset: Asset, unit: int) -> str:
    mapped = asset.device_unit(unit)
    unit_text = f"unit {unit}" if mapped == unit else f"unit {unit} -> device unit {mapped}"
    return (
        f"asset: {asset.name} ({asset.protocol}, upstream {asset.upstream_host}:{asset.upstream_port},"
        f" mode {asset.mode}, {unit_text})"
    )
