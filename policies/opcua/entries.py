"""Checking ``opcua = [...]`` entries: services, service sets and presets, nodes by namespace URI and
identifier pattern, browse-path prefixes, attributes, (object, method) pairs and value bounds
(docs/policy.md, "OPC UA entries").

Besides each field on its own, an entry is checked for combinations that could never mean what they say:
a node field on an entry whose services reach no node, ``value`` without a service that writes, a
service decided as a whole request (AddNodes, HistoryUpdate, ...) named beside fields that only apply to
operations. Such an entry would otherwise pass silently and allow or refuse something else than its
author meant.
"""

from __future__ import annotations

from policies.errors import FieldPath, quote, show
from policies.fields import FieldChecker, expected
from policies.model import OpcuaEntry
from policies.opcua.nodes import MethodPair, NodePattern, parse_id, parse_namespace, split_expanded
from policies.opcua.paths import BrowsePathPrefix, parse_browse_path
from policies.opcua.services import (
    ATTRIBUTE_SERVICES,
    EVERY_SERVICE,
    NAMEABLE_SERVICES,
    NODE_SERVICES,
    OPERATION_SERVICES,
    PRESETS,
    parse_attribute,
    parse_service_name,
    parse_service_set,
)
from policies.values import ValueBounds, parse_value_bounds

__all__ = ["OPCUA_ENTRY_KEYS", "OpcuaEntryChecks"]

OPCUA_ENTRY_KEYS = (
    "service",
    "service_set",
    "preset",
    "namespace",
    "node",
    "browse_path",
    "attribute",
    "method",
    "value",
)
_KEY_SET = frozenset(OPCUA_ENTRY_KEYS)
_NODE_KEYS = ("namespace", "id")
_METHOD_KEYS = ("object", "method")
_OPERATION_FIELDS = ("node", "browse_path", "attribute", "method", "value")
_NO_NAMESPACE = (
    'needs its namespace: give the entry namespace = "<namespace URI>" (0 for the standard address'
    ' space), write { namespace = "<URI>", id = ... }, or "nsu=<URI>;s=..."'
)
# The entry's namespace could not be read: already reported, so ids relying on it say nothing more.
_BROKEN = "\x00broken"


class OpcuaEntryChecks(FieldChecker):
    def __init__(self) -> None:
        super().__init__()
        # Large files repeat entries: each distinct one is checked once.
        self._opcua_memo: dict[str, OpcuaEntry] = {}

    def opcua_entry(self, value: object, path: FieldPath) -> OpcuaEntry | None:
        table = self.table(value, path)
        if table is None:
            return None
        key = repr(table)
        known = self._opcua_memo.get(key)
        if known is not None:
            return known
        before = len(self.problems)
        if not table.keys() <= _KEY_SET:
            self.keys(table, path, OPCUA_ENTRY_KEYS)
        named = self.opcua_services(table["service"], (*path, "service")) if "service" in table else set()
        sets: list[str] = []
        services = set(named)
        if "service_set" in table:
            for name, members in self.service_sets(table["service_set"], (*path, "service_set")):
                sets.append(name)
                services |= members
        preset = self.choice(table["preset"], (*path, "preset"), PRESETS) if "preset" in table else None
        if preset is not None:
            services |= PRESETS[preset]
        if not ("service" in table or "service_set" in table or "preset" in table):
            self.error(
                path,
                'names no service: give "service" (e.g. service = "Read"), "service_set" (e.g. "View")'
                ' or "preset" ("read-only", "read-write")',
            )
        namespace: str | None = None
        if "namespace" in table:
            namespace, problem = parse_namespace(table["namespace"])
            if problem is not None:
                self.error((*path, "namespace"), problem)
                namespace = _BROKEN
        nodes = self.node_patterns(table["node"], (*path, "node"), namespace) if "node" in table else None
        paths = (
            self.browse_paths(table["browse_path"], (*path, "browse_path"))
            if "browse_path" in table
            else None
        )
        attributes = (
            self.attributes(table["attribute"], (*path, "attribute")) if "attribute" in table else None
        )
        methods = (
            self.method_pairs(table["method"], (*path, "method"), namespace) if "method" in table else None
        )
        values = None
        if "value" in table:
            values = self.opcua_value_bounds(table["value"], (*path, "value"))
        if len(self.problems) > before:
            return None
        every = named >= NAMEABLE_SERVICES
        if every and any(name in table for name in _OPERATION_FIELDS):
            self.error(
                (*path, "service"),
                '"*" names services decided as a whole request too, and node, browse_path, attribute,'
                " method and value only apply to operations: name the operation services (Read, Write,"
                " Call, Browse, ...)",
            )
            return None
        self.combine_opcua(path, table, frozenset(named), frozenset(services))
        if len(self.problems) > before:
            return None
        entry = OpcuaEntry(
            frozenset(services),
            nodes,
            paths,
            attributes,
            methods,
            values,
            preset,
            tuple(sets),
            frozenset(named),
            every,
        )
        self._opcua_memo[key] = entry
        return entry

    # ---------------------------------------------------------------------------------- services

    def opcua_services(self, value: object, path: FieldPath) -> set[str]:
        names: set[str] = set()
        for item_path, item in self._items(value, path, "service"):
            if item == EVERY_SERVICE:
                names |= NAMEABLE_SERVICES
                continue
            if not isinstance(item, str):
                self.error(item_path, expected(item, 'a service name such as "Read"'))
                continue
            name, problem = parse_service_name(item)
            if problem is not None:
                self.error(item_path, f"{quote(item)}: {problem}")
            elif name is not None:
                names.add(name)
        return names

    def service_sets(self, value: object, path: FieldPath) -> list[tuple[str, frozenset[str]]]:
        out: list[tuple[str, frozenset[str]]] = []
        for item_path, item in self._items(value, path, "service set"):
            if not isinstance(item, str):
                self.error(item_path, expected(item, 'a service set name such as "View"'))
                continue
            members, problem = parse_service_set(item)
            if problem is not None:
                self.error(item_path, f"{quote(item)}: {problem}")
            elif members is not None:
                out.append((item, members))
        return out

    def _items(self, value: object, path: FieldPath, what: str) -> list[tuple[FieldPath, object]]:
        """The elements of a field that takes one item or a list, each with its own path."""
        if not isinstance(value, list):
            return [(path, value)]
        if not value:
            self.error(path, f"the array is empty: name at least one {what}")
        return [((*path, index), item) for index, item in enumerate(value)]

    # ------------------------------------------------------------------------------------- nodes

    def node_patterns(
        self, value: object, path: FieldPath, namespace: str | None
    ) -> tuple[NodePattern, ...] | None:
        patterns: list[NodePattern] = []
        ok = True
        for item_path, item in self._items(value, path, "node"):
            found = self.node_item(item, item_path, namespace)
            if found is None:
                ok = False
            else:
                patterns.extend(found)
        return tuple(patterns) if ok and patterns else None

    def node_item(self, item: object, path: FieldPath, namespace: str | None) -> list[NodePattern] | None:
        if isinstance(item, dict):
            return self.node_table(item, path, namespace)
        if isinstance(item, str):
            uri_text, rest, problem = split_expanded(item)
            if problem is not None:
                self.error(path, problem)
                return None
            if uri_text is not None:
                uri, problem = parse_namespace(uri_text)
                if problem is not None:
                    self.error(path, f"{quote(item)}: {problem}")
                    return None
                assert uri is not None
                return self.ids(rest, path, uri)
            return self.ids(item, path, namespace)
        if isinstance(item, int) and not isinstance(item, bool):
            return self.ids(item, path, namespace)
        self.error(
            path,
            expected(
                item,
                'a node id pattern ("Plant.Line1.*", "i=2253", 2253), "nsu=<URI>;s=..." or'
                ' { namespace = "<URI>", id = ... }',
            ),
        )
        return None

    def node_table(
        self, table: dict[str, object], path: FieldPath, namespace: str | None
    ) -> list[NodePattern] | None:
        before = len(self.problems)
        self.keys(table, path, _NODE_KEYS)
        uri = namespace
        if "namespace" in table:
            uri, problem = parse_namespace(table["namespace"])
            if problem is not None:
                self.error((*path, "namespace"), problem)
                return None
        if len(self.problems) > before:
            return None
        if "id" not in table:
            if uri is None:
                self.error(path, "a node table " + _NO_NAMESPACE)
                return None
            if uri == _BROKEN:
                return None
            return [NodePattern(uri, None)]  # every node of the namespace
        patterns: list[NodePattern] = []
        ok = True
        for item_path, item in self._items(table["id"], (*path, "id"), "id"):
            found = self.ids(item, item_path, uri)
            if found is None:
                ok = False
            else:
                patterns.extend(found)
        return patterns if ok else None

    def ids(self, item: object, path: FieldPath, uri: str | None) -> list[NodePattern] | None:
        if isinstance(item, str):
            given, _, problem = split_expanded(item)
            if problem is None and given is not None:
                problem = f"{quote(item)}: the namespace is given already; write the id alone"
            if problem is not None:
                self.error(path, problem)
                return None
        pattern, problem = parse_id(item)
        if problem is not None:
            self.error(path, problem)
            return None
        if uri is None:
            shown = quote(item) if isinstance(item, str) else str(item)
            self.error(path, f"node id {shown} " + _NO_NAMESPACE)
            return None
        if uri == _BROKEN:
            return None
        return [NodePattern(uri, pattern)]

    def method_pairs(
        self, value: object, path: FieldPath, namespace: str | None
    ) -> tuple[MethodPair, ...] | None:
        pairs: list[MethodPair] = []
        ok = True
        for item_path, item in self._items(value, path, "method"):
            if not isinstance(item, dict):
                self.error(
                    item_path,
                    expected(item, '{ object = "<node id pattern>", method = "<node id pattern>" }'),
                )
                ok = False
                continue
            before = len(self.problems)
            self.keys(item, item_path, _METHOD_KEYS)
            for required in _METHOD_KEYS:
                if required not in item:
                    self.error(
                        item_path,
                        f'missing "{required}": a method is allowed as an (object, method) pair, and both'
                        " ids are checked",
                    )
            if len(self.problems) > before:
                ok = False
                continue
            objects = self.node_patterns(item["object"], (*item_path, "object"), namespace)
            methods = self.node_patterns(item["method"], (*item_path, "method"), namespace)
            if objects is None or methods is None:
                ok = False
                continue
            pairs.append(MethodPair(objects, methods))
        return tuple(pairs) if ok and pairs else None

    # ------------------------------------------------------------------------------ other fields

    def browse_paths(self, value: object, path: FieldPath) -> tuple[BrowsePathPrefix, ...] | None:
        prefixes: list[BrowsePathPrefix] = []
        ok = True
        for item_path, item in self._items(value, path, "browse path"):
            prefix, problem = parse_browse_path(item)
            if problem is not None:
                self.error(item_path, problem)
                ok = False
            elif prefix is not None:
                prefixes.append(prefix)
        return tuple(prefixes) if ok and prefixes else None

    def attributes(self, value: object, path: FieldPath) -> frozenset[int] | None:
        ids: set[int] = set()
        ok = True
        for item_path, item in self._items(value, path, "attribute"):
            attribute, problem = parse_attribute(item)
            if problem is not None:
                self.error(item_path, f"{show(item)}: {problem}")
                ok = False
            elif attribute is not None:
                ids.add(attribute)
        return frozenset(ids) if ok and ids else None

    def opcua_value_bounds(self, value: object, path: FieldPath) -> ValueBounds | None:
        bounds, problems = parse_value_bounds(value, "any OPC UA numeric type")
        for index, message in problems:
            self.error(path if index is None else (*path, index), message)
        return bounds

    # -------------------------------------------------------------------------------- the entry

    def combine_opcua(
        self, path: FieldPath, table: dict[str, object], named: frozenset[str], services: frozenset[str]
    ) -> None:
        """Checks that need several fields at once."""
        fields = [name for name in _OPERATION_FIELDS if name in table]
        whole = sorted(named - OPERATION_SERVICES)
        if fields and whole:
            listed = ", ".join(whole)
            self.error(
                (*path, "service"),
                f"{listed} {'is' if len(whole) == 1 else 'are'} decided as a whole request, and"
                f" {', '.join(fields)} only applies to operations (Read, Write, Call, Browse, ...):"
                " give it an entry of its own",
            )
            return
        needs = (
            ("node", NODE_SERVICES, "services whose operations reach nodes (Read, Write, Call, Browse, ...)"),
            (
                "browse_path",
                NODE_SERVICES,
                "services whose operations reach nodes (Read, Write, Browse, ...)",
            ),
            ("attribute", ATTRIBUTE_SERVICES, "Read, Write, HistoryRead or the monitored item services"),
            ("method", frozenset(("Call",)), "Call"),
            ("value", frozenset(("Write", "Call")), "Write or Call"),
        )
        for name, wanted, what in needs:
            if name in table and not services & wanted:
                self.error((*path, name), f"applies to {what}, and this entry names none")
        if "namespace" in table and "node" not in table and "method" not in table:
            self.error(
                (*path, "namespace"),
                "is the namespace of the entry's node and method ids, and the entry names neither",
            )
