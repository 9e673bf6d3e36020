"""The gateway's shared reassembly budget and the registry's count of sessions per identity."""

from __future__ import annotations

from typing import cast

import pytest

from gateway.reassembly import ReassemblyBudget
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
