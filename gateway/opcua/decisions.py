"""What the gateway decided about one OPC UA request, and the memo that keeps it for a request that repeats.

A :class:`Decided` holds a request's operations with their decisions, and what follows from them for
forwarding (the client's bytes as they are, or a request cut down to the allowed operations) and for the
audit (allowed reads counted per rule). A polling client sends the same Read over and over; the codec
decodes it once (its :class:`~protocols.opcua.messages.Repeat`), and :class:`DecisionMemo` keeps its
decisions beside it on the session's side, as long as they cannot differ: under the same view, with the
same namespace array, for a service the view decides the same at any time.

What the client is told of a response follows from the same decisions: :func:`rewrite_response` drops the
references to nodes the identity may not browse and says in UserAccessLevel and UserExecutable what the
policy allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from asyncua import ua
from asyncua.ua.attribute_ids import AttributeIds

from gateway.opcua.tracking import SUBSCRIPTION_SERVICES, TRACKED_RESPONSES
from policies import Decision, SubjectView
from protocols.opcua.messages import Repeat, RepeatCache
from protocols.opcua.operations import Operation

ATTRIBUTE_USER_ACCESS_LEVEL = 18
ATTRIBUTE_USER_EXECUTABLE = 22
# UserAccessLevel bits (Part 3, 8.57) and the operation on the Value attribute each one stands for.
_ACCESS_BITS = (("Read", 0x01), ("Write", 0x02), ("HistoryRead", 0x04))
# Services whose allowed operations the audit may count per rule rather than write one by one.
AGGREGATED: Final = frozenset(
    ("Read", "Browse", "BrowseNext", "TranslateBrowsePathsToNodeIds", "HistoryRead")
)


@dataclass(frozen=True, slots=True)
class Decided:
    """A request's operations with their decisions, and what follows from them for forwarding and
    accounting. A service without operations is decided as a whole (``whole``: its decision, allowed)."""

    view: SubjectView
    namespaces: tuple[str, ...]
    operations: list[Operation]
    decisions: list[Decision]
    all_allowed: bool
    relay: bool  # all allowed, nothing in the response for the gateway: the bytes go as they are
    by_rule: tuple[tuple[str | None, int], ...] | None  # allowed reads per rule, when all are plain allows
    whole: Decision | None = None


def decided_operations(
    view: SubjectView,
    service: str,
    namespaces: tuple[str, ...],
    operations: list[Operation],
    decisions: list[Decision],
) -> Decided:
    all_allowed = all(decision.allowed for decision in decisions)
    relay = all_allowed and service not in TRACKED_RESPONSES and not needs_rewrite(service, operations)
    by_rule: dict[str | None, int] | None = None
    if all_allowed and service in AGGREGATED and all(d.verdict == "allow" for d in decisions):
        by_rule = {}
        for decision in decisions:
            by_rule[decision.rule_id] = by_rule.get(decision.rule_id, 0) + 1
    return Decided(
        view,
        namespaces,
        operations,
        decisions,
        all_allowed,
        relay,
        None if by_rule is None else tuple(by_rule.items()),
    )


def decided_whole(
    view: SubjectView, service: str, namespaces: tuple[str, ...], decision: Decision
) -> Decided:
    """An allowed service without operations: its bytes go as they are unless they carry subscription
    ids, which the gateway maps."""
    relay = service not in SUBSCRIPTION_SERVICES
    return Decided(view, namespaces, [], [], True, relay, None, decision)


class DecisionMemo:
    """The decisions of repeated requests, by their codec cache entry, while the view and the namespace
    array they were made under are the ones in force. Bounded as the codec's cache is: an entry the codec
    dropped is never asked for again, and goes when the memo is full."""

    MAX_ENTRIES: Final = RepeatCache.MAX_ENTRIES

    __slots__ = ("_decided",)

    def __init__(self) -> None:
        self._decided: dict[Repeat, Decided] = {}

    def get(self, repeat: Repeat, view: SubjectView, namespaces: tuple[str, ...]) -> Decided | None:
        decided = self._decided.get(repeat)
        if decided is not None and decided.view is view and decided.namespaces is namespaces:
            return decided
        return None

    def keep(self, repeat: Repeat, decided: Decided) -> None:
        """Keep ``decided`` for ``repeat``; only for a service the view decides the same at any time."""
        memo = self._decided
        if repeat not in memo and len(memo) >= self.MAX_ENTRIES:
            del memo[next(iter(memo))]
        memo[repeat] = decided

    def clear(self) -> None:
        self._decided.clear()


def needs_rewrite(service: str, operations: list[Operation]) -> bool:
    """Whether the response says something the policy changes for the client (see rewrite_response)."""
    if service in ("Browse", "BrowseNext"):
        return True
    return service == "Read" and any(
        op.attribute_id in (ATTRIBUTE_USER_ACCESS_LEVEL, ATTRIBUTE_USER_EXECUTABLE) for op in operations
    )


def local_node_id(node: ua.NodeId, namespaces: tuple[str, ...]) -> ua.NodeId | None:
    """A reference target (asyncua decodes an ExpandedNodeId without URI or server as a plain NodeId) as
    a NodeId of the device's; None for a node on another server or in a namespace the device does not
    list (no rule can allow those)."""
    if not isinstance(node, ua.ExpandedNodeId):
        return node
    if node.ServerIndex:
        return None
    if not node.NamespaceUri:
        return ua.NodeId(node.Identifier, node.NamespaceIndex, node.NodeIdType)
    if node.NamespaceUri not in namespaces:
        return None
    return ua.NodeId(node.Identifier, ua.Int16(namespaces.index(node.NamespaceUri)), node.NodeIdType)


def rewrite_response(
    view: SubjectView,
    service: str,
    operations: list[Operation],
    response: Any,
    namespaces: tuple[str, ...],
    now: float,
) -> None:
    """``response`` (in place) as the identity may see it: Browse results without references to nodes it
    may not browse; UserAccessLevel and UserExecutable as the policy allows rather than what the
    gateway's own session may do."""
    if service in ("Browse", "BrowseNext"):
        results = response.Results if service == "Browse" else response.Parameters.Results
        for result in results or ():
            # A reference to a node the identity may not browse is no business of the client's.
            result.References = [
                reference
                for reference in result.References or ()
                if view.decide_opcua(
                    Operation("Browse", 0, None, local_node_id(reference.NodeId, namespaces)),
                    namespaces,
                    now,
                ).allowed
            ]
        return
    for op, result in zip(operations, response.Results or (), strict=False):
        value = getattr(getattr(result, "Value", None), "Value", None)
        if op.attribute_id == ATTRIBUTE_USER_ACCESS_LEVEL and isinstance(value, int):
            # A bit stays when some such operation may be allowed (a Write is decided on its value).
            for probed, bit in _ACCESS_BITS:
                probe = Operation(probed, 0, None, op.node_id, AttributeIds.Value)
                if value & bit and not view.opcua_may(probe, namespaces, now):
                    value &= ~bit
            result.Value.Value = value
        elif op.attribute_id == ATTRIBUTE_USER_EXECUTABLE and value is True:
            call = Operation("Call", 0, None, None, method_id=op.node_id)
            if not view.opcua_may(call, namespaces, now):
                result.Value.Value = False
