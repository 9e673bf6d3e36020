"""Compile the rules that name one asset for one identity into a :class:`SubjectView`.

A view is compiled on first use (the gateway asks for it when a session starts) and cached by the
policy, so loading a large file does not pay for identities that never connect. Windows, modes and
effects are kept on the candidates rather than compiled away: a closed window must still be explained,
and monitor rules must still be evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence

from policies.decision import ACTION_FORWARD, VERDICT_ALLOW, Decision
from policies.evaluate import Candidate, KeyTable, SubFunctionTable, SubjectView
from policies.model import SUBFUNCTION_CODES, Asset, Rule
from policies.ranges import SegmentIndex

__all__ = ["compile_view"]


def compile_view(subject: str, asset: Asset, rules: Sequence[Rule], revision: str) -> SubjectView:
    """Compile ``rules``: those whose subjects match ``subject`` and whose assets name ``asset``, in file
    order."""
    view = SubjectView(subject, asset, revision, tuple(rules))
    by_code: dict[int, list[Candidate]] = {}
    for rule in rules:
        # One shared decision per rule: allowing a request allocates nothing.
        allowed = Decision(VERDICT_ALLOW, rule.id, 0, ACTION_FORWARD, f"allowed by rule {rule.id}")
        for entry in rule.modbus:
            for code in sorted(entry.function_codes):
                by_code.setdefault(code, []).append(Candidate(rule, entry, allowed))
    tables: dict[int, KeyTable | SubFunctionTable] = {}
    for code, candidates in by_code.items():
        if code in SUBFUNCTION_CODES:
            tables[code] = _sub_function_table(view, code, candidates)
        else:
            tables[code] = KeyTable(view, code, candidates)
    view.install(tables)
    return view


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
