"""Compile the rules that name one asset for one identity into a :class:`SubjectView`.

A view is compiled on first use (the gateway asks for it when a session starts) and cached by the
policy, so loading a large file does not pay for identities that never connect. Windows, modes and
effects are kept on the candidates rather than compiled away: a closed window must still be explained,
and monitor rules must still be evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence

from policies.decision import ACTION_FORWARD, VERDICT_ALLOW, Decision
from policies.enip.evaluate import EnipCandidate, EnipTable
from policies.modbus.evaluate import Candidate, KeyTable, SubFunctionTable
from policies.model import SUBFUNCTION_CODES, Asset, Rule
from policies.opcua.evaluate import OpcuaTable
from policies.opcua.match import OpcuaCandidate
from policies.ranges import SegmentIndex
from policies.view import SubjectView
from protocols.enip.spec import FIRST_CLASS_SPECIFIC_SERVICE

__all__ = ["compile_view"]


def compile_view(subject: str, asset: Asset, rules: Sequence[Rule], revision: str) -> SubjectView:
    """Compile ``rules``: those whose subjects match ``subject`` and whose assets name ``asset``, in file
    order. Only the entries of the asset's protocol are compiled."""
    view = SubjectView(subject, asset, revision, tuple(rules))
    # One shared decision per rule: allowing a request allocates nothing.
    allowed = {
        rule.id: Decision(VERDICT_ALLOW, rule.id, 0, ACTION_FORWARD, f"allowed by rule {rule.id}")
        for rule in rules
    }
    if asset.protocol == "enip":
        _compile_enip(view, rules, allowed)
        return view
    if asset.protocol == "opcua":
        _compile_opcua(view, rules, allowed)
        return view
    by_code: dict[int, list[Candidate]] = {}
    for rule in rules:
        for entry in rule.modbus:
            for code in sorted(entry.function_codes):
                by_code.setdefault(code, []).append(Candidate(rule, entry, allowed[rule.id]))
    tables: dict[int, KeyTable | SubFunctionTable] = {}
    for code, candidates in by_code.items():
        if code in SUBFUNCTION_CODES:
            tables[code] = _sub_function_table(view, code, candidates)
        else:
            tables[code] = KeyTable(view, code, candidates)
    view.install(tables)
    return view


def _compile_enip(view: SubjectView, rules: Sequence[Rule], allowed: dict[str, Decision]) -> None:
    pairs: dict[tuple[int, int], list[EnipCandidate]] = {}
    common: dict[int, list[EnipCandidate]] = {}
    every: list[EnipCandidate] = []  # service = "*": in every table, and the table of what no other names
    order = 0
    for rule in rules:
        for entry in rule.enip:
            candidate = EnipCandidate(rule, entry, order, allowed[rule.id])
            order += 1
            if entry.every_service:
                every.append(candidate)
            for class_id, service in entry.services:
                if class_id is None:
                    common.setdefault(service, []).append(candidate)
                elif entry.classes is None or class_id in entry.classes:
                    pairs.setdefault((class_id, service), []).append(candidate)
    pair_tables: dict[tuple[int | None, int], EnipTable] = {}
    for (class_id, service), named in pairs.items():
        candidates = named
        if service < FIRST_CLASS_SPECIFIC_SERVICE and service in common:
            # A common service named for one class and for any class: one table, in file order.
            candidates = [*named, *common[service]]
        candidates = sorted({id(c): c for c in (*candidates, *every)}.values(), key=_order)
        pair_tables[(class_id, service)] = EnipTable(view, class_id, candidates)
    common_tables = {
        service: EnipTable(view, None, sorted([*candidates, *every], key=_order))
        for service, candidates in common.items()
    }
    view.install_enip(pair_tables, common_tables, EnipTable(view, None, every) if every else None)


def _compile_opcua(view: SubjectView, rules: Sequence[Rule], allowed: dict[str, Decision]) -> None:
    by_service: dict[str, list[OpcuaCandidate]] = {}
    order = 0
    for rule in rules:
        for entry in rule.opcua:
            candidate = OpcuaCandidate(rule, entry, order, allowed[rule.id])
            order += 1
            for service in sorted(entry.services):
                by_service.setdefault(service, []).append(candidate)
    view.install_opcua({service: OpcuaTable(view, service, found) for service, found in by_service.items()})


def _order(candidate: EnipCandidate) -> int:
    return candidate.order


def _sub_function_table(view: SubjectView, code: int, candidates: list[Candidate]) -> SubFunctionTable:
    covered: list[tuple[int, int, Candidate]] = []
    for c in candidates:
        # The loader guarantees FC 8/43 entries list their sub-functions.
        assert c.entry.subfunctions is not None
        covered.extend((low, high, c) for low, high in c.entry.subfunctions.ranges)
    starts: list[int] = []
    tables: list[KeyTable | None] = []
    shared: dict[tuple[int, ...], KeyTable] = {}
    for start, members in SegmentIndex(covered).segments():
        starts.append(start)
        if not members:
            tables.append(None)
            continue
        key = tuple(id(c) for c in members)
        table = shared.get(key)
        if table is None:
            table = shared[key] = KeyTable(view, code, members)
        tables.append(table)
    return SubFunctionTable(view, starts, tables)
