"""Deciding EtherNet/IP (CIP) requests on a compiled view (docs/policy.md, "How a decision is made").

A view keeps one :class:`EnipTable` per (class, service) pair that some entry names, and one per
common service named without a class. A table holds its candidates - one per rule entry naming the
service - split by effect and mode, in file order, the same steps as Modbus's
:class:`~policies.modbus.evaluate.KeyTable`: enforce deny entries that touch the request, then the first
enforce allow entry that covers it and its pre-built decision, else the closest miss, then monitor rules.

A request for a tag by name (the usual read or write) takes a shortcut: per tag text, each table keeps
the candidates whose class, instance and tag fields match that tag, so a decision only checks their
windows and written values. The first time a tag is seen, only the allow entries that name the same
first part (or any tag) are compared with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from policies.decision import Decision, MonitoredAllows, Refuser
from policies.enip.services import hex_ranges, service_text
from policies.enip.tags import RequestTag, TagPattern
from policies.model import EnipEntry, Rule
from policies.ranges import IntervalSet
from policies.timewindow import Window
from policies.values import ValueBounds
from protocols.enip.requests import CipRequest
from protocols.enip.spec import ClassCode, Service

__all__ = [
    "TAG_LISTS_SIZE",
    "EnipCandidate",
    "EnipTable",
    "EnipView",
    "attributes_of",
    "by_instance",
    "covers_target",
    "covers_values",
    "enip_covers",
    "enip_touches",
]


class EnipView(Refuser, Protocol):
    """What the tables ask of the view that holds them (:class:`policies.view.SubjectView`)."""

    def request_tag(self, request: CipRequest) -> RequestTag | None: ...


_SYMBOL = int(ClassCode.SYMBOL)
_LIST_TAGS = Service.GET_INSTANCE_ATTRIBUTE_LIST
TAG_LISTS_SIZE = 512  # tag texts (with element counts) remembered per table

# (deny, allow, monitor deny) candidates whose tag-only fields match a tag: see EnipTable.tag_lists.
_TagLists = tuple[tuple["EnipCandidate", ...], tuple["EnipCandidate", ...], tuple["EnipCandidate", ...]]


class EnipCandidate:
    """One rule entry, in the tables of the services it names."""

    __slots__ = (
        "attributes",
        "classes",
        "decision",
        "entry",
        "instances",
        "order",
        "rule",
        "rule_id",
        "tags",
        "values",
        "window",
    )

    def __init__(self, rule: Rule, entry: EnipEntry, order: int, decision: Decision) -> None:
        self.rule = rule
        self.rule_id = rule.id
        self.entry = entry
        self.order = order  # position in the file (rule, then entry), to merge candidate lists
        self.window: Window | None = rule.window
        self.classes: IntervalSet | None = entry.classes
        self.instances: IntervalSet | None = entry.instances
        self.attributes: IntervalSet | None = entry.attributes
        self.tags: tuple[TagPattern, ...] | None = entry.tags
        self.values: ValueBounds | None = entry.values
        self.decision = decision  # the rule's shared allow decision


def attributes_of(request: CipRequest) -> tuple[int, ...]:
    """The attributes a request names (none: it acts on the whole object)."""
    if request.attribute_ids:
        return request.attribute_ids
    return () if request.attribute_id is None else (request.attribute_id,)


def by_instance(request: CipRequest) -> bool:
    """A tag addressed by symbol instance number rather than by name (listing the tags with Get
    Instance Attribute List is not: its instance is where the list starts)."""
    return request.class_id == _SYMBOL and request.tag is None and request.service != _LIST_TAGS


def covers_target(c: EnipCandidate, request: CipRequest, tag: RequestTag | None) -> bool:
    """Whether the entry's class, instance, attribute and tag fields allow what the request addresses."""
    if c.classes is not None and (request.class_id is None or request.class_id not in c.classes):
        return False
    if tag is not None:
        if c.tags is not None:
            count = request.element_count or 1
            if not any(pattern.covers(tag, count) for pattern in c.tags):
                return False
    elif by_instance(request) and (c.tags is not None or c.classes is None or c.instances is None):
        # A tag by number could be any tag: only an entry naming class 0x6B and the instances, and
        # no tag patterns, allows it.
        return False
    if c.instances is not None and (request.instance_id is None or request.instance_id not in c.instances):
        return False
    if c.attributes is not None:
        attributes = attributes_of(request)
        if not attributes or not all(a in c.attributes for a in attributes):
            return False
    return True


def covers_values(c: EnipCandidate, request: CipRequest) -> bool:
    values = c.values
    if values is None or not request.writes:
        return True
    return not request.opaque_values and values.covers(request.values)


def enip_covers(c: EnipCandidate, request: CipRequest, tag: RequestTag | None, now: float) -> bool:
    """Allow-entry semantics: every field the entry names covers the request, in an open window."""
    if c.window is not None and not c.window.is_open(now):
        return False
    return covers_target(c, request, tag) and covers_values(c, request)


def enip_touches(c: EnipCandidate, request: CipRequest, tag: RequestTag | None, now: float) -> bool:
    """Deny-entry semantics: every field the entry names touches the request, in an open window."""
    if c.window is not None and not c.window.is_open(now):
        return False
    if c.classes is not None and (request.class_id is None or request.class_id not in c.classes):
        return False
    if c.tags is not None:
        if tag is not None:
            count = request.element_count or 1
            if not any(pattern.touches(tag, count) for pattern in c.tags):
                return False
        elif not by_instance(request):
            return False  # addresses no tag
    if c.instances is not None and (request.instance_id is None or request.instance_id not in c.instances):
        return False
    if c.attributes is not None:
        attributes = attributes_of(request)
        if attributes and not any(a in c.attributes for a in attributes):
            return False
    if c.values is not None:
        if not request.writes:
            return False
        return request.opaque_values or c.values.touches(request.values)
    return True


def _deny_kind(c: EnipCandidate) -> str:
    """Which code a matching deny entry answers with: the most specific field it names."""
    if c.values is not None:
        return "value"
    if c.tags is not None or c.classes is not None or c.instances is not None or c.attributes is not None:
        return "address"
    return "function"


def request_text(request: CipRequest) -> str:
    """What a request addresses, in words (for reasons and explanations)."""
    parts = [service_text(request.class_id, request.service, request.name)]
    if request.tag is not None:
        parts.append(f"tag {request.tag}")
        if request.element_count is not None and request.element_count != 1:
            parts.append(f"{request.element_count} elements")
    else:
        if request.class_id is not None:
            parts.append(f"class 0x{request.class_id:02X}")
        if request.instance_id is not None:
            parts.append(f"instance {request.instance_id}")
        attributes = attributes_of(request)
        if attributes:
            parts.append("attribute " + ", ".join(str(a) for a in attributes))
    return ", ".join(parts)


def _target_miss(c: EnipCandidate, request: CipRequest, tag: RequestTag | None) -> str:
    """Why an entry that names the service does not allow what the request addresses."""
    rule = c.rule_id
    if c.classes is not None and (request.class_id is None or request.class_id not in c.classes):
        return f"class 0x{request.class_id or 0:02X} outside rule {rule} (class {hex_ranges(c.classes)})"
    if tag is not None and c.tags is not None:
        patterns = ", ".join(str(pattern) for pattern in c.tags)
        count = request.element_count or 1
        what = f"tag {request.tag}" if count == 1 else f"tag {request.tag} ({count} elements)"
        return f"{what} outside rule {rule} (tag {patterns})"
    if tag is None and by_instance(request):
        return (
            f"tag by instance number {request.instance_id} not allowed by rule {rule}: rules name tags by"
            " name; only an entry naming class 0x6B and the instance allows a tag by number"
        )
    if c.instances is not None:
        instance = "none" if request.instance_id is None else str(request.instance_id)
        return f"instance {instance} outside rule {rule} (instance {c.instances})"
    if c.attributes is not None:
        attributes = ", ".join(str(a) for a in attributes_of(request)) or "all (the whole object)"
        return f"attribute {attributes} outside rule {rule} (attribute {c.attributes})"
    return f"rule {rule} does not allow what the request addresses"


def _value_miss(c: EnipCandidate, request: CipRequest) -> str:
    values = c.values
    assert values is not None
    if request.opaque_values:
        return (
            f"writes data whose values the gateway cannot read (a structure, string, attribute or"
            f" Read-Modify-Write mask), and rule {c.rule_id} bounds values ({values})"
        )
    bad = next((value for value in request.values if value not in values), request.values[0])
    return f"value {bad} outside rule {c.rule_id} ({values})"


def _touch_text(c: EnipCandidate, request: CipRequest) -> str:
    parts = [request_text(request)]
    if c.tags is not None:
        parts.append("touches tag " + ", ".join(str(pattern) for pattern in c.tags))
    if c.values is not None:
        parts.append(f"writes a value in {c.values}")
    return ", ".join(parts)


class EnipTable:
    """Candidates for one (class, service) pair, or one common service on any class."""

    __slots__ = (
        "allow",
        "by_name",
        "deny",
        "for_tags",
        "monitor_allow",
        "monitor_deny",
        "tag_lists",
        "view",
        "with_monitor",
    )

    def __init__(self, view: EnipView, class_id: int | None, candidates: Sequence[EnipCandidate]) -> None:
        self.view = view
        self.deny = self._pick(candidates, "deny", "enforce")
        self.allow = self._pick(candidates, "allow", "enforce")
        self.monitor_deny = self._pick(candidates, "deny", "monitor")
        self.monitor_allow = self._pick(candidates, "allow", "monitor")
        self.with_monitor = MonitoredAllows()
        # Allow candidates that can cover a tag by name (on class 0x6B, naming no instance), by the
        # first part of their patterns; entries naming no tag, or "*", cover any name.
        for_tags = [c for c in self.allow if _may_address_tags(c, class_id)]
        names = {p.first for c in for_tags if c.tags is not None for p in c.tags if p.first is not None}
        self.for_tags = tuple(c for c in for_tags if _any_name(c.tags))
        self.by_name: dict[str, tuple[EnipCandidate, ...]] = {
            name: tuple(c for c in for_tags if _any_name(c.tags) or _names(c.tags, name)) for name in names
        }
        # By (tag text, element count): the deny, allow and monitor deny candidates whose class,
        # instance and tag fields already match that tag, so that a session reading the same tags
        # over and over compares its tag with the patterns once. Bounded: a client picks the tags.
        self.tag_lists: dict[tuple[str, int], _TagLists] = {}

    @staticmethod
    def _pick(candidates: Sequence[EnipCandidate], effect: str, mode: str) -> tuple[EnipCandidate, ...]:
        return tuple(c for c in candidates if c.rule.effect == effect and c.rule.mode == mode)

    def _lists_for(self, request: CipRequest, key: tuple[str, int]) -> _TagLists:
        tag = self.view.request_tag(request)
        assert tag is not None
        count = key[1]
        covering = self.by_name.get(tag[0][0], self.for_tags)
        lists = (
            tuple(c for c in self.deny if _tag_touches(c, tag, count)),
            tuple(c for c in covering if c.tags is None or any(p.covers(tag, count) for p in c.tags)),
            tuple(c for c in self.monitor_deny if _tag_touches(c, tag, count)),
        )
        if len(self.tag_lists) >= TAG_LISTS_SIZE:
            self.tag_lists.clear()
        self.tag_lists[key] = lists
        return lists

    def decide(self, request: CipRequest, now: float) -> Decision:
        text = request.tag
        if text is None:
            return self.decide_general(request, now)
        key = (text, request.element_count or 1)
        lists = self.tag_lists.get(key)
        if lists is None:
            lists = self._lists_for(request, key)
        deny, allow, monitor_deny = lists
        for c in deny:
            if _rest_touches(c, request, now):
                return self._denied_by(c, request)
        writes = request.writes
        for c in allow:
            if (
                (c.window is None or c.window.is_open(now))
                and (c.attributes is None or _attributes_covered(c, request))
                and (
                    not writes
                    or c.values is None
                    or (not request.opaque_values and c.values.covers(request.values))
                )
            ):
                break
        else:
            return self.default_deny(request, self.view.request_tag(request), now)
        for m in monitor_deny:
            if _rest_touches(m, request, now):
                return self.with_monitor.get(c.rule_id, m.rule_id)
        return c.decision

    def decide_general(self, request: CipRequest, now: float) -> Decision:
        """A request that names no tag: the same steps, without the per-tag lists."""
        if self.deny:
            denied = _first_touching(self.deny, request, None, now)
            if denied is not None:
                return self._denied_by(denied, request)
        for c in self.allow:
            if enip_covers(c, request, None, now):
                break
        else:
            return self.default_deny(request, None, now)
        if self.monitor_deny:
            monitor = _first_touching(self.monitor_deny, request, None, now)
            if monitor is not None:
                return self.with_monitor.get(c.rule_id, monitor.rule_id)
        return c.decision

    def _denied_by(self, c: EnipCandidate, request: CipRequest) -> Decision:
        return self.view.deny(
            c.rule_id, _deny_kind(c), f"denied by rule {c.rule_id}: {_touch_text(c, request)}"
        )

    def monitor_would_allow(
        self, request: CipRequest, tag: RequestTag | None, now: float
    ) -> EnipCandidate | None:
        """The monitor allow rule that would allow a default-denied request, unless a monitor deny
        would deny it anyway."""
        if not self.monitor_allow or _first_touching(self.monitor_deny, request, tag, now) is not None:
            return None
        return next((m for m in self.monitor_allow if enip_covers(m, request, tag, now)), None)

    def default_deny(self, request: CipRequest, tag: RequestTag | None, now: float) -> Decision:
        best: EnipCandidate | None = None
        best_level = 0  # 1: names the service; 2: also allows what it addresses
        closed: EnipCandidate | None = None
        for c in self.allow:
            if c.window is not None and not c.window.is_open(now):
                closed = closed or c
                continue
            level = 2 if covers_target(c, request, tag) else 1
            if level > best_level:
                best, best_level = c, level
                if level == 2:
                    break  # nothing is closer; a closed window no longer matters
        monitor = self.monitor_would_allow(request, tag, now)
        monitor_id = None if monitor is None else monitor.rule_id
        suffix = "" if monitor is None else f"; monitor rule {monitor.rule_id} would allow"
        view = self.view
        if best is None:
            service = service_text(request.class_id, request.service, request.name)
            if closed is not None:
                reason = (
                    f"{service} is allowed only by rule {closed.rule_id},"
                    f" whose window is closed ({closed.window})"
                )
            else:
                reason = f"no rule allows {service}"
            return view.deny(None, "function", reason + suffix, monitor_id)
        if best_level == 2:
            return view.deny(best.rule_id, "value", _value_miss(best, request) + suffix, monitor_id)
        return view.deny(best.rule_id, "address", _target_miss(best, request, tag) + suffix, monitor_id)


def _may_address_tags(c: EnipCandidate, class_id: int | None) -> bool:
    """Whether the entry can allow or deny a tag by name in a table of ``class_id`` (a tag by name
    is on class 0x6B and has no instance)."""
    return (
        c.instances is None
        and (class_id is None or class_id == _SYMBOL)
        and (c.classes is None or _SYMBOL in c.classes)
    )


def _tag_touches(c: EnipCandidate, tag: RequestTag, count: int) -> bool:
    """The fields of a deny entry that depend on the tag alone (class, instance, tag) touch it."""
    return _may_address_tags(c, None) and (c.tags is None or any(p.touches(tag, count) for p in c.tags))


def _rest_touches(c: EnipCandidate, request: CipRequest, now: float) -> bool:
    """The other fields of a deny entry (window, attribute, value) touch a tag request."""
    if c.window is not None and not c.window.is_open(now):
        return False
    if c.attributes is not None:
        attributes = attributes_of(request)
        if attributes and not any(a in c.attributes for a in attributes):
            return False
    if c.values is not None:
        return request.writes and (request.opaque_values or c.values.touches(request.values))
    return True


def _attributes_covered(c: EnipCandidate, request: CipRequest) -> bool:
    assert c.attributes is not None
    attributes = attributes_of(request)
    return bool(attributes) and all(a in c.attributes for a in attributes)


def _any_name(tags: tuple[TagPattern, ...] | None) -> bool:
    return tags is None or any(p.first is None for p in tags)


def _names(tags: tuple[TagPattern, ...] | None, name: str) -> bool:
    return tags is not None and any(p.first == name for p in tags)


def _first_touching(
    candidates: Iterable[EnipCandidate], request: CipRequest, tag: RequestTag | None, now: float
) -> EnipCandidate | None:
    """The first deny candidate, in file order, that touches the request."""
    for c in candidates:
        if enip_touches(c, request, tag, now):
            return c
    return None
