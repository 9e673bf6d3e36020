"""``ztgate policy explain``: a decision with the reasons a person needs to trust or fix it.

The decision itself always comes from the compiled view, the same code the gateway runs; the
explanation only adds context around it: the request in words, the deciding rule or the closest miss,
the monitor rule that would change the outcome, the state of every relevant time window, and the policy
revision. This module holds what every protocol's explanation shares; each protocol's own part is its
``explain`` module (:mod:`policies.modbus.explain`, :mod:`policies.enip.explain`,
:mod:`policies.opcua.explain`).
"""

from __future__ import annotations

from datetime import UTC, datetime

from policies.decision import VERDICT_DENY, Decision
from policies.model import Rule

__all__ = [
    "Explanation",
    "at_text",
    "cloaked_explanation",
    "decision_line",
    "rule_line",
    "session_denied_explanation",
    "window_lines",
]


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


def at_text(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def decision_line(decision: Decision, what: str, names: dict[int, str]) -> str:
    """``what`` names the code (a Modbus exception, a CIP general status) and ``names`` its values."""
    if decision.verdict == "allow":
        return "decision: allow (forward to the device)"
    code = decision.exception_code
    name = names.get(code, "configured code")
    text = f"{decision.verdict}: {what} 0x{code:02X} ({name}), action {decision.action}"
    if decision.verdict != VERDICT_DENY:
        text += " (asset in monitor mode: forwarded and audited)"
    return f"decision: {text}"


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


def session_denied_explanation(
    rule: Rule, subject: str, request: str, now: float, source: str, revision: str
) -> Explanation:
    """A ``scope = "session"`` deny rule refuses the subject any session to the asset."""
    reason = f"rule {rule.id} denies every session of this subject to this asset"
    if rule.description:
        reason += f" ({rule.description})"
    decision = Decision(VERDICT_DENY, rule.id, 0, "close", reason + "; the connection is refused")
    lines = [
        "decision: deny: the connection is refused at the handshake, and live sessions are cut",
        f"rule: {rule.id} (effect deny, scope session)",
        f"reason: {decision.reason}",
        f"subject: {subject}",
        f"request: {request}",
        f"time: {at_text(now)}",
        f"policy: {source} revision {revision}",
    ]
    return Explanation(decision, lines)
