"""``ztgate policy explain`` for OPC UA: a service's or an operation's decision with the reasons around it.

As for the other protocols (:mod:`policies.explain`), the decision comes from the compiled view the
gateway runs; this module adds the operation in words (service, node as ``nsu=URI;s=...``, attribute,
method, written values, browse path), the namespace array it was resolved with, the entry the decision
rests on - for a monitored item or a history read, in its own service's entries or in Read's - and the
windows of the rules that name the service.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from policies.decision import VERDICT_ALLOW, VERDICT_DENY, Decision
from policies.errors import quote
from policies.explain import Explanation, at_text, rule_line, window_lines
from policies.opcua.evaluate import OpcuaTable
from policies.opcua.match import Facts, OpcuaCandidate, opcua_covers, opcua_touches, target_covers
from policies.opcua.operations import operation_text
from policies.opcua.services import COUPLED_SERVICES
from policies.view import SubjectView
from protocols.opcua.operations import Operation
from protocols.opcua.spec import status_name

__all__ = ["describe_opcua_request", "explain_opcua_view", "opcua_decision_line"]

_SHOWN_NAMESPACES = 8


def describe_opcua_request(
    service: str,
    operation: Operation | None,
    namespaces: Sequence[str],
    browse_path: Sequence[str] | None = None,
) -> str:
    if operation is None:
        return f"{_printable(service)} (the request as a whole)"
    return operation_text(operation, namespaces, browse_path)


def opcua_decision_line(decision: Decision) -> str:
    if decision.verdict == VERDICT_ALLOW:
        return "decision: allow (forward to the device)"
    code = decision.exception_code
    text = f"{decision.verdict}: status {status_name(code)} (0x{code:08X}), action {decision.action}"
    if decision.verdict != VERDICT_DENY:
        text += " (asset in monitor mode: forwarded and audited)"
    return f"decision: {text}"


def _printable(text: str) -> str:
    return text if text.isprintable() and len(text) <= 64 else quote(text, 64)


def _service_entry(table: OpcuaTable, decision: Decision, now: float) -> str | None:
    passes: tuple[tuple[tuple[OpcuaCandidate, ...], Callable[[OpcuaCandidate], bool]], ...] = (
        (table.service_deny, lambda c: c.window is None or c.window.is_open(now)),
        (table.allow, lambda c: c.window is None or c.window.is_open(now)),
        (table.allow, lambda c: True),
    )
    return _first(passes, decision)


def _operation_entry(table: OpcuaTable, decision: Decision, f: Facts, now: float) -> str | None:
    service = table.service
    # In the order the evaluator looks: a matching deny entry, an allowing entry, then the closest miss.
    passes: tuple[tuple[tuple[OpcuaCandidate, ...], Callable[[OpcuaCandidate], bool]], ...] = (
        (table.deny, lambda c: opcua_touches(c, service, f, now)),
        (table.allow, lambda c: opcua_covers(c, service, f, now)),
        (table.allow, lambda c: target_covers(c, service, f)),
        (table.allow, lambda c: True),
    )
    return _first(passes, decision)


def _first(
    passes: tuple[tuple[tuple[OpcuaCandidate, ...], Callable[[OpcuaCandidate], bool]], ...],
    decision: Decision,
) -> str | None:
    for candidates, matches in passes:
        for c in candidates:
            if c.rule_id == decision.rule_id and matches(c):
                return c.entry.describe()
    return None


def _deciding_entry(
    view: SubjectView,
    decision: Decision,
    service: str,
    operation: Operation | None,
    namespaces: Sequence[str],
    browse_path: Sequence[str] | None,
    now: float,
) -> str | None:
    if decision.rule_id is None:
        return None
    table = view.opcua_table(service)
    if operation is None:
        return None if table is None else _service_entry(table, decision, now)
    tables = [table]
    if table is not None and table.coupled:
        tables.append(view.opcua_table("Read"))
    for candidate_table in tables:
        if candidate_table is None:
            continue
        f = candidate_table.facts(operation, namespaces, browse_path)
        found = _operation_entry(candidate_table, decision, f, now)
        if found is not None:
            prefix = "" if candidate_table is table else "(as a Read) "
            return prefix + found
    return None


def _namespaces_line(namespaces: Sequence[str]) -> str:
    shown = ", ".join(
        f"{index} {quote(uri, 80)[1:-1]}" for index, uri in enumerate(namespaces[:_SHOWN_NAMESPACES])
    )
    more = f", ... ({len(namespaces)} namespaces)" if len(namespaces) > _SHOWN_NAMESPACES else ""
    return f"namespaces: {shown or 'none given (only namespace 0 resolves)'}{more}"


def explain_opcua_view(
    view: SubjectView,
    service: str,
    operation: Operation | None,
    namespaces: Sequence[str],
    now: float,
    source: str,
    browse_path: Sequence[str] | None = None,
) -> Explanation:
    """Decide ``operation`` (or, when None, the request of ``service`` as a whole) as the gateway would
    and say why."""
    if operation is None:
        decision = view.decide_opcua_service(service, now)
    else:
        decision = view.decide_opcua(operation, namespaces, now, browse_path)
    asset = view.asset
    lines = [opcua_decision_line(decision), rule_line(decision, view.rules), f"reason: {decision.reason}"]
    entry = _deciding_entry(view, decision, service, operation, namespaces, browse_path, now)
    if entry is not None:
        lines.append(f"entry: {entry}")
    if decision.monitor_rule_id is not None:
        flip = "deny" if decision.verdict == VERDICT_ALLOW else "allow"
        lines.append(f"monitor: rule {decision.monitor_rule_id} (monitor mode) would {flip} this request")
    lines += [
        f"subject: {view.subject}",
        f"asset: {asset.name} ({asset.protocol}, endpoint {asset.endpoint_url}, security"
        f" {asset.security_policy}/{asset.security_mode}, user {asset.user}, mode {asset.mode})",
        f"request: {describe_opcua_request(service, operation, namespaces, browse_path)}",
    ]
    if operation is not None:
        lines.append(_namespaces_line(namespaces))
    lines.append(f"time: {at_text(now)}")
    shown = _printable(service)
    relevant = [rule for rule in view.rules if any(service in entry.services for entry in rule.opcua)]
    lines.extend(window_lines(shown, relevant, now))
    if operation is not None and service in COUPLED_SERVICES:
        reads = [rule for rule in view.rules if any("Read" in entry.services for entry in rule.opcua)]
        lines.extend(window_lines("Read (which this service is decided as too)", reads, now))
    lines.append(f"policy: {source} revision {view.policy_revision}")
    return Explanation(decision, lines)
