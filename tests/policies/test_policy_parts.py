"""The building blocks on their own: range syntax and interval sets, the segment index, the subject
index, the line locator. Subject checks are held against the handshake's parser in
tests/gateway/test_identity.py."""

from __future__ import annotations

import tomllib

from hypothesis import given, settings
from hypothesis import strategies as st

from policies.locator import LineLocator
from policies.ranges import IntervalSet, SegmentIndex, parse_ranges
from policies.subjects import SubjectIndex

# ------------------------------------------------------------------------------------- ranges

intervals = st.lists(
    st.tuples(st.integers(0, 60), st.integers(0, 8)).map(lambda p: (p[0], p[0] + p[1])), max_size=6
)


@settings(max_examples=300, deadline=None)
@given(ranges=intervals, low=st.integers(0, 70), length=st.integers(0, 12))
def test_interval_set_answers_like_a_plain_set(ranges: list[tuple[int, int]], low: int, length: int) -> None:
    members = {x for a, b in ranges for x in range(a, b + 1)}
    s = IntervalSet(ranges)
    high = low + length
    assert (low in s) == (low in members)
    assert s.contains_span(low, high) == all(x in members for x in range(low, high + 1))
    assert s.overlaps(low, high) == any(x in members for x in range(low, high + 1))
    # Stored merged: sorted, disjoint, and never adjacent.
    assert all(b + 1 < c for (_, b), (c, _) in zip(s.ranges, s.ranges[1:], strict=False))


def test_values_checks() -> None:
    s = IntervalSet([(0, 10), (20, 30)])
    assert s.covers_values((1, 25, 30), 16) and not s.covers_values((1, 15), 16)
    assert s.touches_values((15, 25), 16) and not s.touches_values((11, 19), 16)
    # FC 22: the values are the lowest and highest result; everything between may be written.
    assert not s.covers_values((5, 25), 22) and s.covers_values((21, 29), 22)
    assert s.touches_values((11, 40), 22) and not s.touches_values((11, 19), 22)


def test_range_syntax() -> None:
    assert parse_ranges(40, 0, 65535)[0] == IntervalSet([(40, 40)])
    assert parse_ranges("0-999", 0, 65535)[0] == IntervalSet([(0, 999)])
    assert parse_ranges(" 5 - 7 ", 0, 9)[0] == IntervalSet([(5, 7)])
    assert parse_ranges([1, "3-4", "10"], 0, 65535)[0] == IntervalSet([(1, 1), (3, 4), (10, 10)])
    assert str(parse_ranges([1, "2-3", 7], 0, 9)[0]) == "1-3, 7"


def test_range_mistakes_name_the_element() -> None:
    _, problems = parse_ranges([1, "9-2", 70000, "x", True], 0, 65535)
    assert [(p.index, p.message) for p in problems] == [
        (1, '"9-2": range start 9 is above its end 2'),
        (2, "70000 is outside 0..65535"),
        (3, '"x": expected a number or a range "low-high" such as "0-65535"'),
        (4, 'true: expected a number or a range such as "0-65535"'),
    ]
    assert parse_ranges(1.5, 0, 9)[1][0].message == '1.5: expected a number or a range such as "0-9"'
    assert parse_ranges("-3", 0, 9)[1][0].index is None


@settings(max_examples=200, deadline=None)
@given(
    items=st.lists(st.tuples(st.integers(0, 50), st.integers(0, 10)), max_size=8), point=st.integers(-5, 70)
)
def test_segment_index_finds_covering_items_in_order(items: list[tuple[int, int]], point: int) -> None:
    covered = [(low, low + length, index) for index, (low, length) in enumerate(items)]
    index = SegmentIndex(covered)
    assert list(index.at(point)) == [i for low, high, i in covered if low <= point <= high]


# ----------------------------------------------------------------------------------- subjects

TD = "plant1.example"


def test_subject_index_finds_exact_ids_and_prefixes() -> None:
    index = SubjectIndex()
    index.add(f"spiffe://{TD}/user/alice", 0)
    index.add(f"spiffe://{TD}/user/*", 1)
    index.add(f"spiffe://{TD}/user/a*", 2)
    index.add(f"spiffe://{TD}/*", 3)
    index.add(f"spiffe://{TD}/user/alice", 3)
    assert index.rules_for(f"spiffe://{TD}/user/alice") == {0, 1, 2, 3}
    assert index.rules_for(f"spiffe://{TD}/user/bob") == {1, 3}
    assert index.rules_for(f"spiffe://{TD}/vendor/x") == {3}
    assert index.rules_for("spiffe://plant1.example.evil/user/alice") == set()


# ------------------------------------------------------------------------------------ locator

LOCATED = """\
# a comment with [brackets] and { braces }
trust_domain = "plant1.example"

[assets."plc-1"]
protocol = 'modbus'
unit_map = { "1" = 17 }

[[rules]]
id = "a"
description = \"\"\"
[[rules]] inside a string, "quoted" \\\"\"\" too
\"\"\"
modbus = [
  { fc = 3 },   # [ not a table ]
  { fc = [1,
          2], address = "0-9" },
  { fc = 4, address = [
    "1", "3"] },
]

[[rules]]
id = 'b'
when.days = "mon"
"""


def test_locator_finds_headers_keys_and_array_elements() -> None:
    tomllib.loads(LOCATED)  # the locator only ever sees files the parser accepted
    locator = LineLocator(LOCATED)
    assert locator.line_of(("trust_domain",)) == 2
    assert locator.line_of(("assets", "plc-1")) == 4
    assert locator.line_of(("assets", "plc-1", "unit_map", "1")) == 6
    assert locator.line_of(("rules", 0)) == 8
    assert locator.line_of(("rules", 0, "modbus", 0, "fc")) == 14
    assert locator.line_of(("rules", 0, "modbus", 1)) == 15
    assert locator.line_of(("rules", 0, "modbus", 1, "fc", 1)) == 16
    assert locator.line_of(("rules", 0, "modbus", 1, "address")) == 16
    assert locator.line_of(("rules", 0, "modbus", 2, "address", 1)) == 18
    assert locator.line_of(("rules", 1)) == 21
    assert locator.line_of(("rules", 1, "when", "days")) == 23
    # Unknown fields fall back to the closest enclosing one.
    assert locator.line_of(("rules", 1, "modbus", 3)) == 21
    assert locator.line_of(("groups",)) is None
