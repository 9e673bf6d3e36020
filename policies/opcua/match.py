"""What each field of an ``opcua`` entry says about one operation (docs/policy.md, "What each field
applies to"): allow semantics (the entry *covers* the operation), deny semantics (it *touches* it), and
the words for a miss.

Fields are split by what they depend on, because the evaluator caches by node: ``node``, ``method`` and
``attribute`` depend on the (node, attribute) - or, for a Call, (object, method) - alone; ``browse_path``,
``value`` and the rule's window depend on each operation. The service whose entries are asked decides the
defaults: a Write entry without ``attribute`` writes Value only, a monitored item or history read of
events needs ``attribute = "EventNotifier"``, a Write to or Call of namespace 0 needs the entry to name
that node (or method) itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from policies.decision import Decision
from policies.errors import quote
from policies.model import OpcuaEntry, Rule
from policies.opcua.nodes import UA_NAMESPACE, NodePattern, node_text
from policies.opcua.operations import Number, written
from policies.opcua.paths import BrowsePathPrefix
from policies.opcua.services import (
    ATTRIBUTE_EVENT_NOTIFIER,
    ATTRIBUTE_VALUE,
    COUPLED_SERVICES,
    attribute_text,
)
from policies.timewindow import Window
from policies.values import ValueBounds
from protocols.opcua.operations import Operation

__all__ = [
    "Facts",
    "NodeKey",
    "OpcuaCandidate",
    "deny_kind",
    "node_part_covers",
    "node_part_touches",
    "opcua_covers",
    "opcua_touches",
    "path_covers",
    "path_touches",
    "probe_covers",
    "probe_touches",
    "target_covers",
    "target_miss",
    "value_miss",
    "values_cover",
    "values_touch",
]

NodeKey = tuple[str | None, object]  # (namespace URI or None when unresolved, identifier)


class OpcuaCandidate:
    """One rule entry, in the tables of the services it names."""

    __slots__ = (
        "attributes",
        "decision",
        "entry",
        "methods",
        "nodes",
        "order",
        "paths",
        "per_operation",
        "rule",
        "rule_id",
        "values",
        "window",
    )

    def __init__(self, rule: Rule, entry: OpcuaEntry, order: int, decision: Decision) -> None:
        self.rule = rule
        self.rule_id = rule.id
        self.entry = entry
        self.order = order  # position in the file (rule, then entry)
        self.window: Window | None = rule.window
        self.nodes = entry.nodes
        self.paths = entry.browse_paths
        self.attributes = entry.attributes
        self.methods = entry.methods
        self.values: ValueBounds | None = entry.values
        self.per_operation = entry.per_operation
        self.decision = decision  # the rule's shared allow decision


class Facts:
    """An operation, resolved once: its nodes as namespace URIs, its attribute, path and written
    numbers."""

    __slots__ = ("attribute", "method", "node", "numbers", "operation", "path", "writes")

    def __init__(
        self,
        operation: Operation,
        node: NodeKey | None,
        method: NodeKey | None,
        path: Sequence[str] | None,
    ) -> None:
        self.operation = operation
        self.node = node
        self.method = method
        self.attribute = operation.attribute_id
        self.path = path
        self.writes, self.numbers = written(operation)


def _matched(patterns: tuple[NodePattern, ...], key: NodeKey | None) -> bool:
    if key is None:
        return False
    uri, identifier = key
    return uri is not None and any(p.matches(uri, identifier) for p in patterns)


def _touched(patterns: tuple[NodePattern, ...], key: NodeKey | None) -> bool:
    """A node the gateway did not name or could not resolve could be any node: it touches."""
    return key is None or key[0] is None or _matched(patterns, key)


def _standard(key: NodeKey | None) -> bool:
    return key is not None and key[0] == UA_NAMESPACE


def node_part_covers(c: OpcuaCandidate, service: str, f: Facts) -> bool:
    """Allow semantics of ``node``, ``method`` and ``attribute``, and the defaults that depend on the
    service: everything that depends only on the operation's nodes and attribute."""
    if service == "Call":
        if c.nodes is not None and not (_matched(c.nodes, f.node) and _matched(c.nodes, f.method)):
            return False
        if c.methods is not None and not any(
            _matched(pair.objects, f.node) and _matched(pair.methods, f.method) for pair in c.methods
        ):
            return False
        if c.nodes is None and c.methods is None and (c.paths is not None or _standard(f.method)):
            # A path says nothing about the method id, and namespace 0's methods (certificates, trust
            # lists, roles, server state) are opened only by an entry that names them.
            return False
    else:
        if c.nodes is not None and not _matched(c.nodes, f.node):
            return False
        if service == "Write" and c.nodes is None and _standard(f.node):
            return False
    return _attribute_covers(c, service, f.attribute)


def _attribute_covers(c: OpcuaCandidate, service: str, attribute: int | None) -> bool:
    if c.attributes is not None:
        return attribute is None or attribute in c.attributes
    if service == "Write":
        return attribute == ATTRIBUTE_VALUE
    return not (service in COUPLED_SERVICES and attribute == ATTRIBUTE_EVENT_NOTIFIER)


def path_covers(paths: tuple[BrowsePathPrefix, ...], path: Sequence[str] | None) -> bool:
    return path is not None and any(prefix.covers(path) for prefix in paths)


def target_covers(c: OpcuaCandidate, service: str, f: Facts) -> bool:
    """Everything but the written values and the window: the closest miss stops here."""
    return node_part_covers(c, service, f) and (c.paths is None or path_covers(c.paths, f.path))


def values_cover(values: ValueBounds, writes: bool, numbers: tuple[Number, ...] | None) -> bool:
    if not writes:
        return True
    return numbers is not None and values.covers(numbers)


def opcua_covers(c: OpcuaCandidate, service: str, f: Facts, now: float) -> bool:
    """Allow-entry semantics: every field the entry names covers the operation, in an open window."""
    if c.window is not None and not c.window.is_open(now):
        return False
    return target_covers(c, service, f) and (c.values is None or values_cover(c.values, f.writes, f.numbers))


def node_part_touches(c: OpcuaCandidate, service: str, f: Facts) -> bool:
    """Deny semantics of ``node``, ``method`` and ``attribute``."""
    if c.nodes is not None:
        if service == "Call":
            if not (_touched(c.nodes, f.node) or _touched(c.nodes, f.method)):
                return False
        elif not _touched(c.nodes, f.node):
            return False
    if c.methods is not None:
        if service != "Call":
            return False
        if not any(_touched(pair.objects, f.node) and _touched(pair.methods, f.method) for pair in c.methods):
            return False
    if c.attributes is not None:
        return f.attribute is not None and f.attribute in c.attributes
    return True


def path_touches(paths: tuple[BrowsePathPrefix, ...], path: Sequence[str] | None) -> bool:
    """A path the gateway could not resolve could be under any prefix."""
    return path is None or any(prefix.covers(path) for prefix in paths)


def values_touch(values: ValueBounds, writes: bool, numbers: tuple[Number, ...] | None) -> bool:
    """What is not numbers could be anything, and NaN or an infinity compares with nothing."""
    if not writes:
        return False
    return numbers is None or values.touches(numbers)


def opcua_touches(c: OpcuaCandidate, service: str, f: Facts, now: float) -> bool:
    """Deny-entry semantics: every field the entry names touches the operation, in an open window."""
    if c.window is not None and not c.window.is_open(now):
        return False
    return (
        node_part_touches(c, service, f)
        and (c.paths is None or path_touches(c.paths, f.path))
        and (c.values is None or values_touch(c.values, f.writes, f.numbers))
    )


def probe_covers(c: OpcuaCandidate, service: str, f: Facts) -> bool:
    """Allow semantics for a probe (:meth:`policies.SubjectView.opcua_may`): what the operation leaves
    open - the written value, a Call's object when it names none - is taken in the client's favour."""
    if service != "Call" or f.node is not None:
        return target_covers(c, service, f)
    if c.nodes is not None and not _matched(c.nodes, f.method):
        return False
    if c.methods is not None and not any(_matched(pair.methods, f.method) for pair in c.methods):
        return False
    if c.nodes is None and c.methods is None and (c.paths is not None or _standard(f.method)):
        return False
    return _attribute_covers(c, service, f.attribute)


def probe_touches(c: OpcuaCandidate, service: str, f: Facts) -> bool:
    """Deny semantics for a probe: what the operation leaves open - a value, the object, an unresolved
    node or path - is taken outside the entry."""
    if c.values is not None:
        return False
    if c.paths is not None and (f.path is None or not any(prefix.covers(f.path) for prefix in c.paths)):
        return False
    if c.nodes is not None:
        keys = (f.node, f.method) if service == "Call" else (f.node,)
        if not any(_matched(c.nodes, key) for key in keys):
            return False
    if c.methods is not None:
        if service != "Call":
            return False
        if not any(_matched(pair.objects, f.node) and _matched(pair.methods, f.method) for pair in c.methods):
            return False
    if c.attributes is not None:
        return f.attribute is not None and f.attribute in c.attributes
    return True


def deny_kind(c: OpcuaCandidate) -> str:
    """Which code a matching deny entry answers with: the most specific field it names."""
    if c.values is not None:
        return "value"
    if c.per_operation:
        return "address"
    return "function"


# ------------------------------------------------------------------------------------------ words


def _node_words(key: NodeKey | None, index: int | None) -> str:
    if key is None:
        return "no node (the gateway named none)"
    return node_text(key[0], -1 if index is None else index, key[1])


def target_miss(c: OpcuaCandidate, service: str, f: Facts) -> str:
    """Why an entry that names the service does not allow what the operation reaches."""
    rule = c.rule_id
    op = f.operation
    node_index = None if op.node_id is None else op.node_id.NamespaceIndex
    method_index = None if op.method_id is None else op.method_id.NamespaceIndex
    node = _node_words(f.node, node_index)
    if service == "Call":
        method = _node_words(f.method, method_index)
        if c.nodes is not None:
            if not _matched(c.nodes, f.node):
                return f"object {node} outside rule {rule} (node {_patterns(c.nodes)})"
            if not _matched(c.nodes, f.method):
                return f"method {method} outside rule {rule} (node {_patterns(c.nodes)})"
        if c.methods is not None and not any(
            _matched(p.objects, f.node) and _matched(p.methods, f.method) for p in c.methods
        ):
            pairs = "; ".join(str(p) for p in c.methods)
            return f"method {method} on object {node} is not a pair of rule {rule} ({pairs})"
        if c.nodes is None and c.methods is None:
            if c.paths is not None:
                return (
                    f"rule {rule} names only browse paths, which say nothing about the method id: a Call"
                    " needs node or method"
                )
            if _standard(f.method):
                return (
                    f"method {method} is in namespace 0 (the server's own: certificates, trust lists,"
                    f" roles, server state), which rule {rule} does not name"
                )
    else:
        if c.nodes is not None and not _matched(c.nodes, f.node):
            return f"node {node} outside rule {rule} (node {_patterns(c.nodes)})"
        if service == "Write" and c.nodes is None and _standard(f.node):
            return (
                f"node {node} is in namespace 0 (the server's own address space), and rule {rule}"
                " names no node there"
            )
    attribute = f.attribute
    if c.attributes is not None:
        if attribute is not None and attribute not in c.attributes:
            named = ", ".join(attribute_text(a) for a in sorted(c.attributes))
            return f"attribute {attribute_text(attribute)} outside rule {rule} (attribute {named})"
    elif service == "Write" and attribute != ATTRIBUTE_VALUE:
        shown = "none" if attribute is None else attribute_text(attribute)
        return f"attribute {shown}: rule {rule} names no attribute, so it allows writing Value only"
    elif service in COUPLED_SERVICES and attribute == ATTRIBUTE_EVENT_NOTIFIER:
        return (
            "events (attribute EventNotifier) need an entry naming attribute EventNotifier;"
            f" rule {rule} names none"
        )
    if c.paths is not None and not path_covers(c.paths, f.path):
        prefixes = ", ".join(str(p) for p in c.paths)
        if f.path is None:
            return (
                f"the gateway could not resolve the browse path of {node}, and rule {rule} names browse paths"
            )
        shown = quote("/" + "/".join(f.path), 200)[1:-1]
        return f"path {shown} outside rule {rule} (browse_path {prefixes})"
    return f"rule {rule} does not allow what the operation reaches"


def value_miss(c: OpcuaCandidate, f: Facts) -> str:
    values = c.values
    assert values is not None
    if f.numbers is None:
        return (
            f"writes data that is not numbers (or no number at all), and rule {c.rule_id}"
            f" bounds values ({values})"
        )
    bad = next((value for value in f.numbers if value not in values), f.numbers[0])
    shown = str(int(bad)) if isinstance(bad, bool) else repr(bad) if isinstance(bad, float) else str(bad)
    return f"value {shown} outside rule {c.rule_id} ({values})"


def _patterns(patterns: tuple[NodePattern, ...]) -> str:
    text = ", ".join(str(p) for p in patterns[:4])
    return text + (f", ... ({len(patterns)} patterns)" if len(patterns) > 4 else "")
