"""Deciding OPC UA services and operations on a compiled view (docs/policy.md, "How a decision is made").

A view keeps one :class:`OpcuaTable` per service some entry names. A table holds its candidates - one per
rule entry naming the service - split by effect and mode, in file order, and decides with the steps of the
other protocols: enforce deny entries that touch, then the first enforce allow entry that covers and its
pre-built decision, else the closest miss, then monitor rules.

Operations take a shortcut: per (namespace URI, identifier, attribute) - for a Call, per (object,
method) - a table keeps the deny, allow and monitor deny candidates whose node, method and attribute
fields already match, so a session reading the same nodes over and over compares them with the patterns
once; each decision then checks only windows, browse paths and written values. The lists are bounded:
a client picks the node ids.
"""

from __future__ import annotations

from collections.abc import Sequence

from policies.decision import ACTION_FORWARD, VERDICT_ALLOW, Decision, MonitoredAllows, Refuser
from policies.opcua.match import (
    Facts,
    NodeKey,
    OpcuaCandidate,
    deny_kind,
    node_part_covers,
    node_part_touches,
    opcua_covers,
    opcua_touches,
    path_covers,
    path_touches,
    probe_covers,
    probe_touches,
    target_covers,
    target_miss,
    value_miss,
    values_touch,
)
from policies.opcua.nodes import UA_NAMESPACE
from policies.opcua.operations import Number, operation_text, written
from policies.opcua.services import COUPLED_SERVICES
from protocols.opcua.operations import Operation

__all__ = ["NODE_LISTS_SIZE", "OpcuaTable", "couple"]

NODE_LISTS_SIZE = 512  # (node, attribute) keys remembered per table

_Lists = tuple[tuple[OpcuaCandidate, ...], tuple[OpcuaCandidate, ...], tuple[OpcuaCandidate, ...]]


def _key(index: int, identifier: object, namespaces: Sequence[str]) -> NodeKey:
    if index == 0:
        return UA_NAMESPACE, identifier
    if 0 < index < len(namespaces):
        return namespaces[index], identifier
    return None, identifier  # an index the device does not have: no pattern matches it


class OpcuaTable:
    """Candidates for one service."""

    __slots__ = (
        "allow",
        "coupled",
        "deny",
        "has_paths",
        "is_call",
        "monitor_allow",
        "monitor_deny",
        "monitor_service_deny",
        "node_lists",
        "service",
        "service_deny",
        "timeless",
        "view",
        "with_monitor",
    )

    def __init__(self, view: Refuser, service: str, candidates: Sequence[OpcuaCandidate]) -> None:
        self.view = view
        self.service = service
        self.is_call = service == "Call"
        self.coupled = service in COUPLED_SERVICES
        self.deny = self._pick(candidates, "deny", "enforce")
        self.allow = self._pick(candidates, "allow", "enforce")
        self.monitor_deny = self._pick(candidates, "deny", "monitor")
        self.monitor_allow = self._pick(candidates, "allow", "monitor")
        # Deny entries that name no per-operation field refuse the whole service.
        self.service_deny = tuple(c for c in self.deny if not c.per_operation)
        self.monitor_service_deny = tuple(c for c in self.monitor_deny if not c.per_operation)
        self.has_paths = any(c.paths is not None for c in candidates)
        self.timeless = all(c.window is None for c in candidates)
        self.node_lists: dict[tuple[object, ...], _Lists] = {}
        self.with_monitor = MonitoredAllows()

    @staticmethod
    def _pick(candidates: Sequence[OpcuaCandidate], effect: str, mode: str) -> tuple[OpcuaCandidate, ...]:
        return tuple(c for c in candidates if c.rule.effect == effect and c.rule.mode == mode)

    # ------------------------------------------------------------------------------- a service

    def decide_service(self, now: float) -> Decision:
        """The request as a whole: a service without operations, or the check before its operations."""
        for c in self.service_deny:
            if c.window is None or c.window.is_open(now):
                return self.view.deny(c.rule_id, "function", f"denied by rule {c.rule_id}: {self.service}")
        for c in self.allow:
            if c.window is None or c.window.is_open(now):
                break
        else:
            return self.service_default_deny(now)
        for m in self.monitor_service_deny:
            if m.window is None or m.window.is_open(now):
                return self.with_monitor.get(c.rule_id, m.rule_id)
        return c.decision

    def service_default_deny(self, now: float) -> Decision:
        closed = next(iter(self.allow), None)  # every allow entry's window is closed
        monitor_id = None
        if not any(m.window is None or m.window.is_open(now) for m in self.monitor_service_deny):
            monitor = next((m for m in self.monitor_allow if m.window is None or m.window.is_open(now)), None)
            monitor_id = None if monitor is None else monitor.rule_id
        suffix = "" if monitor_id is None else f"; monitor rule {monitor_id} would allow"
        if closed is not None:
            reason = (
                f"{self.service} is allowed only by rule {closed.rule_id},"
                f" whose window is closed ({closed.window})"
            )
        else:
            reason = f"no rule allows {self.service}"
        return self.view.deny(None, "function", reason + suffix, monitor_id)

    # ----------------------------------------------------------------------------- an operation

    def key(self, operation: Operation, namespaces: Sequence[str]) -> tuple[object, ...]:
        node = operation.node_id
        node_key = None if node is None else _key(node.NamespaceIndex, node.Identifier, namespaces)
        if self.is_call:
            method = operation.method_id
            method_key = (
                None if method is None else _key(method.NamespaceIndex, method.Identifier, namespaces)
            )
            return node_key, method_key, operation.attribute_id
        return node_key, operation.attribute_id

    def facts(self, operation: Operation, namespaces: Sequence[str], path: Sequence[str] | None) -> Facts:
        node = operation.node_id
        method = operation.method_id
        return Facts(
            operation,
            None if node is None else _key(node.NamespaceIndex, node.Identifier, namespaces),
            None if method is None else _key(method.NamespaceIndex, method.Identifier, namespaces),
            path,
        )

    def _lists_for(self, key: tuple[object, ...], f: Facts) -> _Lists:
        service = self.service
        lists = (
            tuple(c for c in self.deny if node_part_touches(c, service, f)),
            tuple(c for c in self.allow if node_part_covers(c, service, f)),
            tuple(c for c in self.monitor_deny if node_part_touches(c, service, f)),
        )
        if len(self.node_lists) >= NODE_LISTS_SIZE:
            self.node_lists.clear()
        self.node_lists[key] = lists
        return lists

    def decide(
        self, operation: Operation, namespaces: Sequence[str], now: float, path: Sequence[str] | None
    ) -> Decision:
        node = operation.node_id
        if node is not None and not self.is_call:
            # The common Read or Write, inline: one tuple, one dictionary look-up.
            index = node.NamespaceIndex
            if index == 0:
                uri: str | None = UA_NAMESPACE
            elif 0 < index < len(namespaces):
                uri = namespaces[index]
            else:
                uri = None
            key: tuple[object, ...] = ((uri, node.Identifier), operation.attribute_id)
        else:
            key = self.key(operation, namespaces)
        lists = self.node_lists.get(key)
        if lists is None:
            lists = self._lists_for(key, self.facts(operation, namespaces, path))
        deny, allow, monitor_deny = lists
        # What the operation writes is looked at only when an entry bounds values or denies.
        writes: bool | None = None
        numbers: tuple[Number, ...] | None = None
        if deny:
            writes, numbers = written(operation)
            for c in deny:
                if _rest_touches(c, writes, numbers, path, now):
                    return self._denied_by(c, self.facts(operation, namespaces, path), namespaces)
        for c in allow:
            if c.window is not None and not c.window.is_open(now):
                continue
            if c.paths is not None and not path_covers(c.paths, path):
                continue
            values = c.values
            if values is not None:
                if writes is None:
                    writes, numbers = written(operation)
                if writes and (numbers is None or not values.covers(numbers)):
                    continue
            break
        else:
            return self.default_deny(self.facts(operation, namespaces, path), namespaces, now)
        if monitor_deny:
            if writes is None:
                writes, numbers = written(operation)
            for m in monitor_deny:
                if _rest_touches(m, writes, numbers, path, now):
                    return self.with_monitor.get(c.rule_id, m.rule_id)
        return c.decision

    def may(
        self, operation: Operation, namespaces: Sequence[str], now: float, path: Sequence[str] | None
    ) -> bool:
        """Whether an operation like this one could be allowed, what it leaves open taken in the
        client's favour (see :meth:`policies.SubjectView.opcua_may`). Enforce rules only."""
        f = self.facts(operation, namespaces, path)
        service = self.service
        for c in self.deny:
            if (c.window is None or c.window.is_open(now)) and probe_touches(c, service, f):
                return False
        return any(
            (c.window is None or c.window.is_open(now)) and probe_covers(c, service, f) for c in self.allow
        )

    def _denied_by(self, c: OpcuaCandidate, f: Facts, namespaces: Sequence[str]) -> Decision:
        reason = f"denied by rule {c.rule_id}: {operation_text(f.operation, namespaces, f.path)}"
        return self.view.deny(c.rule_id, deny_kind(c), reason)

    def monitor_would_allow(self, f: Facts, now: float) -> OpcuaCandidate | None:
        """The monitor allow rule that would allow a default-denied operation, unless a monitor deny
        would deny it anyway."""
        service = self.service
        if not self.monitor_allow or any(opcua_touches(m, service, f, now) for m in self.monitor_deny):
            return None
        return next((m for m in self.monitor_allow if opcua_covers(m, service, f, now)), None)

    def default_deny(self, f: Facts, namespaces: Sequence[str], now: float) -> Decision:
        best: OpcuaCandidate | None = None
        best_level = 0  # 1: names the service; 2: also allows what the operation reaches
        closed: OpcuaCandidate | None = None
        for c in self.allow:
            if c.window is not None and not c.window.is_open(now):
                closed = closed or c
                continue
            level = 2 if target_covers(c, self.service, f) else 1
            if level > best_level:
                best, best_level = c, level
                if level == 2:
                    break  # nothing is closer
        monitor = self.monitor_would_allow(f, now)
        monitor_id = None if monitor is None else monitor.rule_id
        suffix = "" if monitor is None else f"; monitor rule {monitor.rule_id} would allow"
        view = self.view
        if best is None:
            what = operation_text(f.operation, namespaces, f.path)
            if closed is not None:
                reason = (
                    f"{self.service} is allowed only by rule {closed.rule_id}, whose window is closed"
                    f" ({closed.window}): {what}"
                )
            else:
                reason = f"no rule allows {self.service}: {what}"
            return view.deny(None, "function", reason + suffix, monitor_id)
        if best_level == 2:
            return view.deny(best.rule_id, "value", value_miss(best, f) + suffix, monitor_id)
        return view.deny(best.rule_id, "address", target_miss(best, self.service, f) + suffix, monitor_id)


def _rest_touches(
    c: OpcuaCandidate,
    writes: bool,
    numbers: tuple[Number, ...] | None,
    path: Sequence[str] | None,
    now: float,
) -> bool:
    """The fields of a deny entry that depend on the operation itself (window, path, values)."""
    if c.window is not None and not c.window.is_open(now):
        return False
    if c.paths is not None and not path_touches(c.paths, path):
        return False
    return c.values is None or values_touch(c.values, writes, numbers)


def couple(own: Decision, read: Decision, service: str) -> Decision:
    """A monitored item or a history read delivers what a Read of the same node and attribute would:
    it is allowed when both its own service's entries and the Read entries allow it.

    Monitor rules follow the same conjunction: ``monitor_rule_id`` is set only when the monitor rules,
    enforced on both parts, would change whether the operation is allowed.
    """
    own_flip = own.monitor_rule_id is not None
    read_flip = read.monitor_rule_id is not None
    if own.verdict != VERDICT_ALLOW:
        read_allowed_under_monitor = (read.verdict == VERDICT_ALLOW) != read_flip
        if own_flip and not read_allowed_under_monitor:
            return _without_monitor(own, own.reason.rsplit("; monitor rule", 1)[0])
        return own
    if read.verdict != VERDICT_ALLOW:
        monitor = read.monitor_rule_id if read_flip and not own_flip else None
        reason = read.reason if monitor is not None else read.reason.rsplit("; monitor rule", 1)[0]
        return Decision(
            read.verdict,
            read.rule_id,
            read.exception_code,
            read.action,
            f"{service} delivers what a Read would, and as a Read: {reason}",
            monitor,
        )
    if own_flip or not read_flip:
        return own
    reason = f"allowed by rule {own.rule_id}; as a Read, monitor rule {read.monitor_rule_id} would deny"
    return Decision(VERDICT_ALLOW, own.rule_id, 0, ACTION_FORWARD, reason, read.monitor_rule_id)


def _without_monitor(decision: Decision, reason: str) -> Decision:
    return Decision(
        decision.verdict, decision.rule_id, decision.exception_code, decision.action, reason, None
    )
