"""The gateway's shared reassembly budget and the registry's count of sessions per identity."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from gateway.reassembly import MIB, TRIM_AFTER_RELEASED_BYTES, TRIM_DELAY_S, ReassemblyBudget, _malloc_trim
from gateway.runtime import LiveSession, SessionRegistry


def test_the_room_of_a_session_is_what_is_left_plus_what_it_holds() -> None:
    budget = ReassemblyBudget(100)
    assert budget.room(0) == 100
    held_a = budget.charge(0, 60)
    assert (budget.held_bytes, budget.room(held_a), budget.room(0)) == (60, 100, 40)
    held_b = budget.charge(0, 40)
    assert budget.room(0) == 0 and budget.room(held_b) == 40
    budget.charge(held_a, 0)  # a's message completed
    assert (budget.held_bytes, budget.peak_bytes, budget.room(0)) == (40, 100, 60)
    budget.charge(held_b, 0)
    assert budget.held_bytes == 0 and budget.peak_bytes == 100
    with pytest.raises(ValueError):
        ReassemblyBudget(-1)


class _Live:
    def __init__(self, id: str, identity: str) -> None:
        self.id, self.identity = id, identity  # all the registry's counts read


def test_the_registry_counts_live_sessions_per_identity() -> None:
    registry = SessionRegistry()
    a1, a2, b1 = (cast(LiveSession, _Live(i, who)) for i, who in (("1", "a"), ("2", "a"), ("3", "b")))
    for session in (a1, a2, b1, a1):  # adding one twice counts it once
        registry.add(session)
    assert (registry.of_identity("a"), registry.of_identity("b"), registry.of_identity("c")) == (2, 1, 0)
    registry.remove(a1)
    registry.remove(a1)  # removing one twice too
    registry.remove(b1)
    assert (registry.of_identity("a"), registry.of_identity("b")) == (1, 0)
    assert len(registry) == 1


async def test_free_heap_pages_go_back_once_the_budget_is_empty_after_a_large_release() -> None:
    if _malloc_trim() is None:
        pytest.skip("this C library has no malloc_trim")
    budget = ReassemblyBudget(64 * MIB)
    small = budget.charge(0, TRIM_AFTER_RELEASED_BYTES // 2)
    budget.charge(small, 0)
    assert not budget.trim_scheduled  # empty again, but too little was given back to be worth a trim
    big = budget.charge(0, TRIM_AFTER_RELEASED_BYTES)
    other = budget.charge(0, 1)
    budget.charge(big, 0)
    assert not budget.trim_scheduled  # enough given back, but a partial message is still held
    budget.charge(other, 0)
    assert budget.trim_scheduled  # empty: a trim, a moment later
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TRIM_DELAY_S + 10
    while budget.trims == 0:
        assert loop.time() < deadline, "no trim after the budget emptied"
        await asyncio.sleep(0.05)
    assert budget.trims == 1 and not budget.trim_scheduled
