"""Deciding Modbus requests on a compiled view (docs/policy.md, "How a decision is made").

A :class:`~policies.view.SubjectView` holds, for one identity on one asset, a table per function code
(per sub-function for FC 8 and 43). Each table keeps its candidates - one per rule entry naming the code -
split by effect and mode, in file order. A request is decided by:

1. the unit check;
2. enforce deny candidates that touch it: usually there are none, and otherwise one bisect on the
   union of their addresses rules out a request that stays clear of all of them;
3. enforce allow candidates: for a request with one address span, the candidates whose address
   intervals contain the span's first address come from one bisect, and only their end bound, unit
   set, value bounds and time window are checked; the first that allows wins and its pre-built
   decision is returned;
4. otherwise the closest miss among the enforce allow candidates (default deny);
5. monitor candidates, only when the table has any, to see whether enforcing them would flip
   allow/deny.

Nothing here loops over the rules of the file; the work per request depends on how many entries of
this identity's rules name the request's function code and address, not on the size of the policy.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import Protocol

from policies.decision import Decision, MonitoredAllows, Refuser
from policies.model import ModbusEntry, Rule
from policies.ranges import IntervalSet, SegmentIndex
from policies.timewindow import Window
from protocols.modbus.pdu import Request

__all__ = [
    "Candidate",
    "KeyTable",
    "ModbusView",
    "SubFunctionTable",
    "covers",
    "function_text",
    "span_text",
    "touches",
    "touches_addresses",
    "unit_and_addresses_cover",
]


class ModbusView(Refuser, Protocol):
    """What the tables ask of the view that holds them (:class:`policies.view.SubjectView`)."""

    def no_rule(self, request: Request) -> Decision: ...


# An entry without an address field covers every span, however long.
_NO_LIMIT = 1 << 40


class Candidate:
    """One rule entry, specialised for one function code."""

    __slots__ = ("addresses", "decision", "entry", "files", "rule", "rule_id", "units", "values", "window")

    def __init__(self, rule: Rule, entry: ModbusEntry, decision: Decision) -> None:
        self.rule = rule
        self.rule_id = rule.id
        self.entry = entry
        self.window: Window | None = rule.window
        self.units: frozenset[int] | None = (
            None
            if entry.units is None
            else frozenset(u for low, high in entry.units.ranges for u in range(low, high + 1))
        )
        self.addresses: IntervalSet | None = entry.addresses
        self.files: IntervalSet | None = entry.files
        self.values: IntervalSet | None = entry.values
        self.decision = decision  # the rule's shared allow decision


class _Slot:
    """A candidate at one of its address intervals: what the single-span fast path checks."""

    __slots__ = ("candidate", "checks_values", "high", "units", "value_high", "value_low", "values", "window")

    def __init__(self, high: int, candidate: Candidate) -> None:
        self.high = high
        self.candidate = candidate
        self.units = candidate.units
        self.window = candidate.window
        # One value interval (the usual "0-1500") is checked inline against min and max; a list of
        # intervals goes through the set.
        values = candidate.values
        self.checks_values = values is not None
        single = values is not None and len(values.ranges) == 1
        self.values = None if single else values
        self.value_low, self.value_high = (
            values.ranges[0] if values is not None and single else (0, _NO_LIMIT)
        )


def unit_and_addresses_cover(c: Candidate, request: Request) -> bool:
    """Whether the entry allows the request's unit, every span it touches, and every file."""
    if c.units is not None and request.unit_id not in c.units:
        return False
    addresses = c.addresses
    if addresses is not None:
        if request.read_address >= 0 and not addresses.contains_span(
            request.read_address, request.read_address + request.read_count - 1
        ):
            return False
        if request.write_address >= 0 and not addresses.contains_span(
            request.write_address, request.write_address + request.write_count - 1
        ):
            return False
        for _, record, length in request.file_records:
            if not addresses.contains_span(record, record + length - 1):
                return False
    if c.files is not None:
        for file_number, _, _ in request.file_records:
            if file_number not in c.files:
                return False
    return True


def covers(c: Candidate, request: Request, now: float) -> bool:
    """Allow-entry semantics: every field the entry names covers the request, in an open window."""
    if c.window is not None and not c.window.is_open(now):
        return False
    if not unit_and_addresses_cover(c, request):
        return False
    return (
        c.values is None
        or not request.values
        or c.values.covers_values(request.values, request.function_code)
    )


def touches_addresses(addresses: IntervalSet, request: Request) -> bool:
    """Whether any address the request touches (read, write or file record span) is in ``addresses``."""
    return (
        (
            request.read_address >= 0
            and addresses.overlaps(request.read_address, request.read_address + request.read_count - 1)
        )
        or (
            request.write_address >= 0
            and addresses.overlaps(request.write_address, request.write_address + request.write_count - 1)
        )
        or any(addresses.overlaps(record, record + length - 1) for _, record, length in request.file_records)
    )


def _address_union(candidates: Sequence[Candidate]) -> IntervalSet | None:
    """Every address the candidates name, or None if one names none (and so may match any request)."""
    ranges: list[tuple[int, int]] = []
    for c in candidates:
        if c.addresses is None:
            return None
        ranges.extend(c.addresses.ranges)
    return IntervalSet(ranges)


def touches(c: Candidate, request: Request, now: float) -> bool:
    """Deny-entry semantics: every field the entry names touches the request, in an open window."""
    if c.window is not None and not c.window.is_open(now):
        return False
    if c.units is not None and request.unit_id not in c.units:
        return False
    if c.addresses is not None and not touches_addresses(c.addresses, request):
        return False
    if c.files is not None and not any(file_number in c.files for file_number, _, _ in request.file_records):
        return False
    return c.values is None or (
        bool(request.values) and c.values.touches_values(request.values, request.function_code)
    )


def span_text(low: int, count: int) -> str:
    return f"{low}" if count == 1 else f"{low}-{low + count - 1}"


def function_text(request: Request) -> str:
    if request.sub_function >= 0:
        return f"FC {request.function_code} sub-function {request.sub_function}"
    return f"FC {request.function_code}"


def _address_miss(c: Candidate, request: Request) -> str:
    """Why an entry that names the function does not allow the unit or an address."""
    rule = c.rule_id
    if c.units is not None and request.unit_id not in c.units:
        return f"unit {request.unit_id} not allowed by rule {rule} (unit {c.entry.units})"
    addresses = c.addresses
    if addresses is not None:
        spans = (
            ("read span", request.read_address, request.read_count),
            ("write span", request.write_address, request.write_count),
        )
        both = request.read_address >= 0 and request.write_address >= 0
        for label, low, count in spans:
            if low >= 0 and not addresses.contains_span(low, low + count - 1):
                what = label if both else "address span"
                return f"{what} {span_text(low, count)} outside rule {rule} ({addresses})"
        for file_number, record, length in request.file_records:
            if not addresses.contains_span(record, record + length - 1):
                records = span_text(record, length)
                return f"records {records} of file {file_number} outside rule {rule} ({addresses})"
    if c.files is not None:
        for file_number, _, _ in request.file_records:
            if file_number not in c.files:
                return f"file {file_number} outside rule {rule} (file {c.files})"
    return f"rule {rule} does not allow the unit or addresses"


def _value_miss(c: Candidate, request: Request) -> str:
    values = c.values
    assert values is not None
    if request.function_code == 22:
        low, high = request.values[0], request.values[1]
        return f"mask write may set values {low}-{high}, outside rule {c.rule_id} ({values})"
    bad = next((value for value in request.values if value not in values), request.values[0])
    return f"value {bad} outside rule {c.rule_id} ({values})"


def _touch_text(c: Candidate, request: Request) -> str:
    parts = [function_text(request)]
    if c.units is not None:
        parts.append(f"unit {request.unit_id}")
    if c.addresses is not None:
        parts.append(f"touches addresses {c.addresses}")
    if c.files is not None:
        parts.append(f"touches file {c.files}")
    if c.values is not None:
        parts.append(f"writes a value in {c.values}")
    return ", ".join(parts)


class KeyTable:
    """Candidates for one function code (and, for FC 8/43, one segment of sub-functions)."""

    __slots__ = (
        "allow",
        "deny",
        "deny_addresses",
        "function_code",
        "monitor_allow",
        "monitor_deny",
        "monitor_deny_addresses",
        "segments",
        "starts",
        "view",
        "with_monitor",
    )

    def __init__(self, view: ModbusView, function_code: int, candidates: Sequence[Candidate]) -> None:
        self.view = view
        self.function_code = function_code
        self.deny = self._pick(candidates, "deny", "enforce")
        self.allow = self._pick(candidates, "allow", "enforce")
        self.monitor_deny = self._pick(candidates, "deny", "monitor")
        self.monitor_allow = self._pick(candidates, "allow", "monitor")
        # Deny entries usually guard a few address blocks: one bisect on their union rules out every
        # request that stays clear of them, however many deny entries there are.
        self.deny_addresses = _address_union(self.deny)
        self.monitor_deny_addresses = _address_union(self.monitor_deny)
        covered: list[tuple[int, int, _Slot]] = []
        for c in self.allow:
            if c.addresses is None:
                covered.append((0, _NO_LIMIT, _Slot(_NO_LIMIT, c)))
            else:
                covered.extend((low, high, _Slot(high, c)) for low, high in c.addresses.ranges)
        segments = SegmentIndex(covered).segments()
        # Two plain lists, so the hot path is one bisect and one index.
        self.starts = [start for start, _ in segments]
        self.segments = [slots for _, slots in segments]
        self.with_monitor = MonitoredAllows()

    @staticmethod
    def _pick(candidates: Sequence[Candidate], effect: str, mode: str) -> tuple[Candidate, ...]:
        return tuple(c for c in candidates if c.rule.effect == effect and c.rule.mode == mode)

    def decide(self, request: Request, now: float) -> Decision:
        # The common request touches one span of addresses (FC 1-6, 15, 16, 22, 24); it is decided here
        # with two bisects and no further calls. FC 23, file records and address-less requests take
        # the general path.
        address = request.read_address
        if address >= 0:
            if request.write_address >= 0:
                return self.decide_general(request, now)
            end = address + request.read_count - 1
        else:
            address = request.write_address
            if address < 0 or request.file_records:
                return self.decide_general(request, now)
            end = address + request.write_count - 1
        if self.deny:
            union = self.deny_addresses
            if union is None or union.overlaps(address, end):
                denied = _first_touching(self.deny, None, request, now)
                if denied is not None:
                    return self._denied_by(denied, request)
        unit = request.unit_id
        values = request.values
        for s in self.segments[bisect_right(self.starts, address) - 1]:
            if (
                end <= s.high
                and (s.units is None or unit in s.units)
                and (
                    not values
                    or not s.checks_values
                    or (
                        s.value_low <= min(values)
                        and max(values) <= s.value_high
                        and (s.values is None or s.values.covers_values(values, request.function_code))
                    )
                )
                and (s.window is None or s.window.is_open(now))
            ):
                allowed = s.candidate
                break
        else:
            return self.default_deny(request, now)
        if self.monitor_deny:
            monitor = _first_touching(self.monitor_deny, self.monitor_deny_addresses, request, now)
            if monitor is not None:
                return self.with_monitor.get(allowed.rule_id, monitor.rule_id)
        return allowed.decision

    def decide_general(self, request: Request, now: float) -> Decision:
        """Any request: the same steps as :meth:`decide` without the single-span shortcuts."""
        if self.deny:
            denied = _first_touching(self.deny, self.deny_addresses, request, now)
            if denied is not None:
                return self._denied_by(denied, request)
        for c in self.allow:
            if covers(c, request, now):
                allowed = c
                break
        else:
            return self.default_deny(request, now)
        if self.monitor_deny:
            monitor = _first_touching(self.monitor_deny, self.monitor_deny_addresses, request, now)
            if monitor is not None:
                return self.with_monitor.get(allowed.rule_id, monitor.rule_id)
        return allowed.decision

    def _denied_by(self, c: Candidate, request: Request) -> Decision:
        return self.view.deny(
            c.rule_id, _deny_code(c), f"denied by rule {c.rule_id}: {_touch_text(c, request)}"
        )

    def monitor_would_allow(self, request: Request, now: float) -> Candidate | None:
        """The monitor allow rule that would allow a default-denied request, unless a monitor deny
        would deny it anyway."""
        if not self.monitor_allow:
            return None
        if _first_touching(self.monitor_deny, self.monitor_deny_addresses, request, now) is not None:
            return None
        for m in self.monitor_allow:
            if covers(m, request, now):
                return m
        return None

    def default_deny(self, request: Request, now: float) -> Decision:
        best: Candidate | None = None
        best_level = 0  # 1: names the function; 2: also allows unit and addresses
        closed: Candidate | None = None
        for c in self.allow:
            if c.window is not None and not c.window.is_open(now):
                closed = closed or c
                continue
            level = 2 if unit_and_addresses_cover(c, request) else 1
            if level > best_level:
                best, best_level = c, level
        monitor = self.monitor_would_allow(request, now)
        monitor_id = None if monitor is None else monitor.rule_id
        suffix = "" if monitor is None else f"; monitor rule {monitor.rule_id} would allow"
        view = self.view
        if best is None:
            if closed is not None:
                reason = (
                    f"{function_text(request)} is allowed only by rule {closed.rule_id},"
                    f" whose window is closed ({closed.window})"
                )
            else:
                reason = f"no rule allows {function_text(request)}"
            return view.deny(None, "function", reason + suffix, monitor_id)
        if best_level == 2:
            return view.deny(best.rule_id, "value", _value_miss(best, request) + suffix, monitor_id)
        return view.deny(best.rule_id, "address", _address_miss(best, request) + suffix, monitor_id)


def _first_touching(
    candidates: tuple[Candidate, ...], union: IntervalSet | None, request: Request, now: float
) -> Candidate | None:
    """The first deny candidate, in file order, matching the request; ``union`` is their addresses."""
    if union is not None and not touches_addresses(union, request):
        return None
    for c in candidates:
        if touches(c, request, now):
            return c
    return None


def _deny_code(c: Candidate) -> str:
    """Which exception a matching deny entry answers with: the most specific field it names."""
    if c.values is not None:
        return "value"
    if c.addresses is not None or c.units is not None or c.files is not None:
        return "address"
    return "function"


class SubFunctionTable:
    """FC 8 / FC 43: a :class:`KeyTable` per segment of sub-functions (MEI types)."""

    __slots__ = ("starts", "tables", "view")

    def __init__(self, view: ModbusView, starts: list[int], tables: list[KeyTable | None]) -> None:
        self.view = view
        self.starts = starts
        self.tables = tables

    def decide(self, request: Request, now: float) -> Decision:
        table = self.tables[bisect_right(self.starts, request.sub_function) - 1]
        if table is None:
            return self.view.no_rule(request)
        return table.decide(request, now)
