"""Large policies: the generator makes valid files, a decision's work does not depend on the size of
the file, and loading stays linear. (Figures: ``python tests/policies/bench_policy.py``.)"""

from __future__ import annotations

import sys
from pathlib import Path
from types import FrameType

import pytest
from asyncua import ua

from policies import parse_policy
from policies.modbus.evaluate import KeyTable
from tests.policies.enip_helpers import attribute_request, read_tag, write_tag
from tests.policies.gen_policy import (
    bench_subject,
    generate_enip_policy,
    generate_opcua_policy,
    generate_policy,
)
from tests.policies.opcua_helpers import NAMESPACES
from tests.policies.opcua_helpers import call as opcua_call
from tests.policies.opcua_helpers import read as opcua_read
from tests.policies.opcua_helpers import write as opcua_write
from tests.policies.policy_helpers import NOON, read, write_register, write_registers

POLICIES_DIR = str(Path(__file__).resolve().parents[2] / "policies")
REQUESTS = [
    read(3, 0, 10),
    read(3, 5000, 10),
    write_register(40, 1200),
    write_register(40, 2000),
    write_registers(100, [1, 2]),
]


@pytest.mark.parametrize("n", [0, 1, 3, 10, 1000])
def test_generated_policies_load(n: int) -> None:
    policy = parse_policy(generate_policy(n))
    assert len(policy.rules) == n
    assert len({rule.id for rule in policy.rules}) == n


def test_the_benchmark_subjects_view_is_the_same_at_any_size() -> None:
    small = parse_policy(generate_policy(10)).view(bench_subject(), "plc-1")
    large = parse_policy(generate_policy(3000)).view(bench_subject(), "plc-1")
    assert small is not None and large is not None
    assert [rule.id for rule in large.rules] == [rule.id for rule in small.rules]
    for request in REQUESTS:
        assert large.decide_modbus(request, NOON) == small.decide_modbus(request, NOON)
    table = large.table(read(3, 0))
    assert isinstance(table, KeyTable)
    assert (len(table.allow), len(table.deny)) == (1, 1)


def python_calls_in_policies(text: str) -> int:
    """Python function calls made by policies/ code while loading ``text`` (tomllib not counted)."""
    calls = 0

    def count(frame: FrameType, event: str, _: object) -> None:
        nonlocal calls
        if event == "call" and POLICIES_DIR in frame.f_code.co_filename:
            calls += 1

    sys.setprofile(count)
    try:
        parse_policy(text)
    finally:
        sys.setprofile(None)
    return calls


def test_loading_is_linear_in_the_number_of_rules() -> None:
    # Counted, not timed: a timing ratio would flake on a shared machine; a count is exact.
    small, large = (python_calls_in_policies(generate_policy(n)) for n in (300, 3000))
    assert 8 * small < large < 12 * small, (small, large)


ENIP_REQUESTS = [
    read_tag("Line1.Speed"),
    read_tag("Recipe[0]", 10),
    read_tag("Area3.Setpoint"),
    write_tag("Line1.Speed", [1200]),
    write_tag("Line1.Speed", [2000]),
    write_tag("Recipe[0]", [1]),
    attribute_request(0x05, 1, 1),
]


def test_the_benchmark_subjects_enip_view_is_the_same_at_any_size() -> None:
    small = parse_policy(generate_enip_policy(10)).view(bench_subject(), "logix-1")
    large = parse_policy(generate_enip_policy(3000)).view(bench_subject(), "logix-1")
    assert small is not None and large is not None
    assert [rule.id for rule in large.rules] == [rule.id for rule in small.rules]
    for request in ENIP_REQUESTS:
        assert large.decide_enip(request, NOON) == small.decide_enip(request, NOON)
    table = large.enip_table(read_tag("A"))
    assert table is not None and (len(table.allow), len(table.deny)) == (1, 0)


def test_loading_enip_rules_is_at_most_linear_in_their_number() -> None:
    # Less than linear here: the generated entries repeat, and each distinct one is checked once.
    small, large = (python_calls_in_policies(generate_enip_policy(n)) for n in (300, 3000))
    assert large < 12 * small, (small, large)


OPCUA_OPERATIONS = [
    opcua_read("Plant.Line1.Tank1.Level"),
    opcua_read("Plant.Recipes.R1"),
    opcua_read("Plant.Area3.Setpoint"),
    opcua_write("Plant.Line1.Tank1.Setpoint", 1200.0, ua.VariantType.Double),
    opcua_write("Plant.Line1.Tank1.Setpoint", 3000.0, ua.VariantType.Double),
    opcua_call("Plant.Line1.Tank1", "Plant.Line1.Tank1.Start"),
]


def test_the_benchmark_subjects_opcua_view_is_the_same_at_any_size() -> None:
    small = parse_policy(generate_opcua_policy(10)).view(bench_subject(), "opc-1")
    large = parse_policy(generate_opcua_policy(1000)).view(bench_subject(), "opc-1")
    assert small is not None and large is not None
    assert [rule.id for rule in large.rules] == [rule.id for rule in small.rules]
    for operation in OPCUA_OPERATIONS:
        assert large.decide_opcua(operation, NAMESPACES, NOON) == small.decide_opcua(
            operation, NAMESPACES, NOON
        )
    table = large.opcua_table("Read")
    assert table is not None and (len(table.allow), len(table.deny)) == (1, 1)


def test_loading_opcua_rules_is_at_most_linear_in_their_number() -> None:
    small, large = (python_calls_in_policies(generate_opcua_policy(n)) for n in (100, 1000))
    assert large < 12 * small, (small, large)
