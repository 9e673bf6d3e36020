"""The answer to one request: forward it or refuse it, which rule said so, and why.

Decisions are immutable because allow decisions are built once per rule and shared by every request
the rule allows; a session that could modify one would change the answer for everybody else.
"""

from __future__ import annotations

from typing import Any, NoReturn, Protocol

__all__ = [
    "ACTION_FORWARD",
    "VERDICT_ALLOW",
    "VERDICT_DENY",
    "VERDICT_WOULD_DENY",
    "Decision",
    "MonitoredAllows",
    "Refuser",
]

VERDICT_ALLOW = "allow"
VERDICT_DENY = "deny"
VERDICT_WOULD_DENY = "would-deny"  # a deny on an asset in monitor mode: audited, then forwarded
ACTION_FORWARD = "forward"

_FIELDS = ("verdict", "allowed", "rule_id", "exception_code", "action", "reason", "monitor_rule_id")


class Decision:
    """``allowed`` says whether to forward the request (true for ``allow`` and ``would-deny``).

    ``exception_code`` is the code for a deny or would-deny (0 for allow): a Modbus exception code, on
    an EtherNet/IP asset the CIP general status to reply with (0x0F privilege violation, 0x08 service
    not supported), on an OPC UA asset the StatusCode of the refused operation's result or of the
    ServiceFault (0x801F0000 BadUserAccessDenied, 0x800B0000 BadServiceUnsupported) - or what the
    asset's ``deny`` says. ``action`` is ``forward`` or the
    asset's deny action (``exception``: reply with the code; ``drop``; ``close``). ``monitor_rule_id``
    names a monitor-mode rule that, enforced, would have changed whether the request is allowed.
    """

    __slots__ = _FIELDS

    verdict: str
    allowed: bool
    rule_id: str | None
    exception_code: int
    action: str
    reason: str
    monitor_rule_id: str | None

    def __init__(
        self,
        verdict: str,
        rule_id: str | None,
        exception_code: int,
        action: str,
        reason: str,
        monitor_rule_id: str | None = None,
    ) -> None:
        # object.__setattr__ by name, not through an alias: mypyc compiles these calls to plain stores,
        # where an alias would go through object.__setattr__, which refuses a class with its own.
        object.__setattr__(self, "verdict", verdict)
        object.__setattr__(self, "allowed", verdict != VERDICT_DENY)
        object.__setattr__(self, "rule_id", rule_id)
        object.__setattr__(self, "exception_code", exception_code)
        object.__setattr__(self, "action", action)
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "monitor_rule_id", monitor_rule_id)

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError(f"Decision is immutable (tried to set {name})")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"Decision is immutable (tried to delete {name})")

    def _key(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in _FIELDS)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Decision) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in _FIELDS)
        return f"Decision({fields})"


class MonitoredAllows:
    """Allow decisions that a monitor rule would have denied, one per (allowing rule, monitor rule) pair,
    built once and shared like every allow decision; bounded, as clients choose what they send."""

    MAX_PAIRS = 1024

    def __init__(self) -> None:
        self._decisions: dict[tuple[str, str], Decision] = {}

    def get(self, allowed_rule_id: str, monitor_rule_id: str) -> Decision:
        key = (allowed_rule_id, monitor_rule_id)
        decision = self._decisions.get(key)
        if decision is None:
            reason = f"allowed by rule {allowed_rule_id}; monitor rule {monitor_rule_id} would deny"
            decision = Decision(VERDICT_ALLOW, allowed_rule_id, 0, ACTION_FORWARD, reason, monitor_rule_id)
            if len(self._decisions) < self.MAX_PAIRS:
                self._decisions[key] = decision
        return decision


class Refuser(Protocol):
    """What a protocol's decision tables ask of the view that holds them: a refusal with the asset's
    code for a kind of refusal (function, address, value or unsupported), or its would-deny in monitor
    mode. The view (:class:`policies.view.SubjectView`) holds the tables and the tables know it only
    by this protocol (extended per protocol next to the tables), so no table module imports the view."""

    def deny(
        self, rule_id: str | None, kind: str, reason: str, monitor_rule_id: str | None = None
    ) -> Decision: ...
