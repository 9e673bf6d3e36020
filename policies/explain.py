"""``ztgate policy explain``: a decision with the reasons a person needs to trust or fix it.

The decision itself always comes from the compiled view, the same code the gateway runs; this module
only adds context around it: the request in words, the deciding rule or the closest miss, the monitor
rule that would change the outcome, the state of every relevant time window, and the policy revision.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from policies.decision import VERDICT_DENY, Decision
from policies.evaluate import (
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

__all__ = [
    "Explanation",
    "at_text",
    "cloaked_explanation",
    "decision_line",
    "describe_request",
    "explain_view",
    "rule_line",
    "window_lines",
]

_CODE_NAMES = {1: "illegal function", 2: "illegal data address", 3: "illegal data value"}


class Explanation:
    """A decision and the lines that explain it (``str()`` gives the text to print)."""

    __slots__ = ("decision", "lines")

    def __init__(self, decision: Decision, lines: list[str]) -> None:
        self.decision = decision
        self.lines = lines

    def __str__(self) -> str:
        return "\n".join(self.lines)

    def __repr__(self) -> str:
        return f"Explanation({self.decision!r})"


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


def at_text(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def decision_line(decision: Decision, what: str = "exception", names: dict[int, str] = _CODE_NAMES) -> str:
    """``what`` names the code (a Modbus exception, a CIP general status) and ``names`` its values."""
    if decision.verdict == "allow":
        return "decision: allow (forward to the device)"
    code = decision.exception_code
    name = names.get(code, "configured code")
    text = f"{decision.verdict}: {what} 0x{code:02X} ({name}), action {decision.action}"
    if decision.verdict != VERDICT_DENY:
        text += " (asset in monitor mode: forwarded and audited)"
    return f"decision: {text}"


def _names_function(rule: Rule, request: Request) -> bool:
    code = request.function_code
    for entry in rule.modbus:
        if code in entry.function_codes:
            if code not in SUBFUNCTION_CODES:
                return True
            if entry.subfunctions is not None and request.sub_function in entry.subfunctions:
                return True
    return False


def rule_line(decision: Decision, rules: tuple[Rule, ...]) -> str:
    if decision.rule_id is None:
        return "rule: none"
    rule = next((r for r in rules if r.id == decision.rule_id), None)
    if decision.verdict == "allow":
        role = "allows"
    elif rule is not None and rule.effect == "deny":
        role = "deny rule that matches"
    else:
        role = "closest miss"
    return f"rule: {decision.rule_id} ({role})"


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
        decision_line(decision),
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


def window_lines(service: str, relevant: list[Rule], now: float) -> list[str]:
    """The rules that name the request's function or service, with the state of their windows."""
    if not relevant:
        return [f"rules naming {service}: none for this subject on this asset"]
    lines = [f"rules naming {service}:"]
    for rule in relevant:
        if rule.window is None:
            state = "no time window"
        else:
            state = f"window {'open' if rule.window.open_at(now) else 'closed'} ({rule.window})"
        lines.append(f"  {rule.id}: {rule.effect}, {rule.mode}, {state}")
    return lines


def _asset_line(asset: Asset, unit: int) -> str:
    mapped = asset.device_unit(unit)
    unit_text = f"unit {unit}" if mapped == unit else f"unit {unit} -> device unit {mapped}"
    return (
        f"asset: {asset.name} ({asset.protocol}, upstream {asset.upstream_host}:{asset.upstream_port},"
        f" mode {asset.mode}, {unit_text})"
    )


def cloaked_explanation(
    subject: str, asset_name: str, known_asset: bool, request: str, now: float, source: str, revision: str
) -> Explanation:
    """The asset is unknown, or no rule names it for the subject: the session would be refused."""
    if known_asset:
        reason = f"no rule names asset {asset_name} for this subject: the asset is cloaked"
    else:
        reason = f"asset {asset_name} is not defined in this policy"
    decision = Decision(VERDICT_DENY, None, 0, "close", reason + "; the connection is refused")
    lines = [
        "decision: deny: the connection is refused at the handshake (the asset is cloaked)",
        "rule: none",
        f"reason: {decision.reason}",
        f"subject: {subject}",
        f"request: {request}",
        f"time: {at_text(now)}",
        f"policy: {source} revision {revision}",
    ]
    return Explanation(decision, lines)
