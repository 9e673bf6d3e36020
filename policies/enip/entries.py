"""Checking ``enip = [...]`` entries: services by name or ``"class/service"`` pair, presets, class,
instance and attribute ranges, tag patterns and value bounds (docs/policy.md, "EtherNet/IP entries").

Besides each field on its own, an entry is checked for combinations that could never match anything
(``tag`` with ``instance``, ``read_tag`` with ``class = 1``, ``value`` without a writing service): such
an entry is a mistake that would otherwise pass silently and refuse what its author meant to allow.
"""

from __future__ import annotations

from policies.enip.services import CLASS_BOUNDS, PRESETS, ServiceKey, describe_key, parse_service
from policies.enip.tags import TagPattern, parse_tag_pattern
from policies.errors import FieldPath, quote, show
from policies.fields import FieldChecker, expected
from policies.model import EnipEntry
from policies.ranges import IntervalSet
from policies.values import ValueBounds, parse_value_bounds
from protocols.enip.logix import WRITING_SERVICES
from protocols.enip.spec import FIRST_CLASS_SPECIFIC_SERVICE, ClassCode

__all__ = ["ENIP_ENTRY_KEYS", "EVERY_SERVICE", "EnipEntryChecks", "writes"]

ENIP_ENTRY_KEYS = ("service", "preset", "class", "instance", "attribute", "tag", "value")
_KEY_SET = frozenset(ENIP_ENTRY_KEYS)
_RANGE_BOUNDS = {"class": CLASS_BOUNDS, "instance": (0, 0xFFFF_FFFF), "attribute": (0, 0xFFFF)}
_SYMBOL = int(ClassCode.SYMBOL)
EVERY_SERVICE = "*"  # service = "*": every service on every class (narrowed by class, instance, attribute)


def writes(key: ServiceKey) -> bool:
    """Whether the service writes a value (a tag write, Read-Modify-Write, Set_Attribute_*)."""
    code = key[1]
    return key in WRITING_SERVICES or (
        code < FIRST_CLASS_SPECIFIC_SERVICE and (None, code) in WRITING_SERVICES
    )


def _on_class(key: ServiceKey, classes: IntervalSet | None, class_id: int) -> bool:
    """Whether the service may be asked of ``class_id`` under the entry's ``class`` field."""
    return (key[0] is None or key[0] == class_id) and (classes is None or class_id in classes)


class EnipEntryChecks(FieldChecker):
    def __init__(self) -> None:
        super().__init__()
        # Large files repeat entries: each distinct one is checked once.
        self._enip_memo: dict[str, EnipEntry] = {}

    def enip_entry(self, value: object, path: FieldPath) -> EnipEntry | None:
        table = self.table(value, path)
        if table is None:
            return None
        memo = self._enip_memo
        key = repr(table)
        known = memo.get(key)
        if known is not None:
            return known
        before = len(self.problems)
        if not table.keys() <= _KEY_SET:
            self.keys(table, path, ENIP_ENTRY_KEYS)
        named: frozenset[ServiceKey] = frozenset()
        every = table.get("service") == EVERY_SERVICE
        if every:
            for key in ("preset", "tag", "value"):
                if key in table:
                    self.error(
                        (*path, key),
                        'goes with named services, not with service = "*" (every service on every'
                        " class): name the services",
                    )
        elif "service" in table:
            named = frozenset(self.services(table["service"], (*path, "service")))
        preset = None
        if "preset" in table:
            preset = self.choice(table["preset"], (*path, "preset"), PRESETS)
        elif "service" not in table:
            self.error(
                path,
                'names no service: give "service" (e.g. service = "read_tag" or "0x6B/0x4C")'
                ' or "preset" ("read-only", "read-write")',
            )
        ranges: dict[str, IntervalSet | None] = {}
        for name, bounds in _RANGE_BOUNDS.items():
            if name in table:
                ranges[name] = self.ranges(table[name], path, name, bounds)
        tags = self.tag_patterns(table["tag"], (*path, "tag")) if "tag" in table else None
        values = self.value_bounds(table["value"], (*path, "value")) if "value" in table else None
        if len(self.problems) > before:
            return None
        classes = ranges.get("class")
        services = frozenset[ServiceKey]() if every else self.combine(path, table, named, preset, classes)
        if services is None:
            return None
        entry = EnipEntry(
            services,
            classes,
            ranges.get("instance"),
            ranges.get("attribute"),
            tags,
            values,
            preset,
            named,
            every,
        )
        memo[key] = entry
        return entry

    def services(self, value: object, path: FieldPath) -> list[ServiceKey]:
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list) and not value:
            self.error(path, "the array is empty: name at least one service")
        keys: list[ServiceKey] = []
        for index, item in enumerate(items):
            if item == EVERY_SERVICE:
                self.error((*path, index), 'service = "*" stands alone, not in a list')
                continue
            key, problem = parse_service(item)
            item_path = (*path, index) if isinstance(value, list) else path
            if problem is not None:
                if isinstance(item, str):
                    problem = f"{quote(item)}: {problem}"
                elif isinstance(item, bool) or not isinstance(item, int):
                    problem = f"{show(item)}: {problem}"
                self.error(item_path, problem)
            elif key is not None:
                keys.append(key)
        return keys

    def tag_patterns(self, value: object, path: FieldPath) -> tuple[TagPattern, ...] | None:
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list) and not value:
            self.error(path, "the array is empty: name at least one tag pattern")
            return None
        patterns: list[TagPattern] = []
        ok = True
        for index, item in enumerate(items):
            item_path = (*path, index) if isinstance(value, list) else path
            if not isinstance(item, str):
                self.error(item_path, expected(item, 'a tag pattern string such as "Line1.*"'))
                ok = False
                continue
            pattern, problem = parse_tag_pattern(item)
            if problem is not None:
                self.error(item_path, problem)
                ok = False
            elif pattern is not None:
                patterns.append(pattern)
        return tuple(patterns) if ok else None

    def value_bounds(self, value: object, path: FieldPath) -> ValueBounds | None:
        bounds, problems = parse_value_bounds(value)
        for index, message in problems:
            self.error(path if index is None else (*path, index), message)
        return bounds

    def combine(
        self,
        path: FieldPath,
        table: dict[str, object],
        named: frozenset[ServiceKey],
        preset: str | None,
        classes: IntervalSet | None,
    ) -> frozenset[ServiceKey] | None:
        """The entry's services, after the checks that need several fields at once."""
        before = len(self.problems)
        for key in sorted(named, key=lambda k: (k[1], k[0] or -1)):
            if key[0] is not None and classes is not None and key[0] not in classes:
                self.error(
                    (*path, "class"),
                    f"{describe_key(key)} is a service of class 0x{key[0]:02X}, not in class {classes}",
                )
        services = set(named)
        if preset is not None:
            # A preset's services on classes the entry leaves out are simply not part of it.
            services.update(k for k in PRESETS[preset] if classes is None or k[0] is None or k[0] in classes)
            if not services:
                self.error((*path, "class"), f"no service of preset {preset} is on class {classes}")
        if "tag" in table:
            if "instance" in table:
                self.error(
                    (*path, "tag"),
                    "tag and instance exclude each other: a tag is addressed by name or by instance number,"
                    " never both (to allow tags by number, name class = 0x6B and instance without tag)",
                )
            if not any(_on_class(k, classes, _SYMBOL) for k in services):
                self.error(
                    (*path, "tag"),
                    "applies to services on tags (class 0x6B), and this entry names none",
                )
        if "value" in table and not any(writes(k) for k in services):
            self.error(
                (*path, "value"),
                "bounds written values, and this entry names no service that writes (write_tag,"
                " write_tag_fragmented, read_modify_write, set_attribute_*)",
            )
        if len(self.problems) > before:
            return None
        return frozenset(services)
