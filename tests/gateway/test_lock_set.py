"""The lock set a gateway enforces: what each target kind matches, TTLs, and which locks are new."""

from __future__ import annotations

import pytest

from gateway.locks import Lock, LockError, LockSet, parse_target

TD = "plant1.example"
ALICE = f"spiffe://{TD}/user/alice"
EVE = f"spiffe://{TD}/vendor/acme/eve"
HMI = f"spiffe://{TD}/agent/site1/hmi-3"


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def _lock(lock_id: str, target: str, expires_at: float | None = None) -> Lock:
    kind, value = parse_target(target, TD)
    return Lock(lock_id, kind, value, "why", ALICE, 0.0, expires_at)


def test_each_target_kind_matches_its_sessions_only() -> None:
    cases = [
        (f"identity={ALICE}", (ALICE, "plc-1", ()), (EVE, "plc-1", ())),
        (
            f"prefix=spiffe://{TD}/vendor/acme/*",
            (EVE, "plc-2", ()),
            (f"spiffe://{TD}/vendor/acme2/x", "plc-1", ()),
        ),
        (f"agent={HMI}", (HMI, "plc-1", ()), (f"{HMI}0", "plc-1", ())),
        ("asset=plc-2", (ALICE, "plc-2", ()), (ALICE, "plc-1", ())),
        ("grant=g-7f3a", (EVE, "plc-1", ("read", "g-7f3a")), (EVE, "plc-1", ("read",))),
    ]
    for target, matching, other in cases:
        locks = LockSet(Clock())
        locks.replace(1, [_lock("lk-1", target)])
        assert locks.match(*matching) is not None, target
        assert locks.match(*other) is None, target


def test_a_lock_past_its_ttl_no_longer_matches_and_is_dropped() -> None:
    clock = Clock()
    locks = LockSet(clock)
    locks.replace(1, [_lock("lk-1", f"identity={ALICE}", expires_at=1010.0), _lock("lk-2", "asset=plc-9")])
    assert locks.match(ALICE, "plc-1") is not None and locks.next_expiry() == 1010.0
    clock.now = 1010.0
    assert locks.match(ALICE, "plc-1") is None
    assert [lock.id for lock in locks.expired()] == ["lk-1"] and len(locks) == 1


def test_listeners_hear_of_new_locks_only() -> None:
    locks = LockSet(Clock())
    heard: list[list[str]] = []
    locks.subscribe(lambda _, added: heard.append([lock.id for lock in added]))
    locks.replace(1, [_lock("lk-1", "asset=plc-1")])
    locks.replace(2, [_lock("lk-1", "asset=plc-1"), _lock("lk-2", "asset=plc-2")])
    _, removed = locks.replace(3, [_lock("lk-2", "asset=plc-2")])
    assert heard == [["lk-1"], ["lk-2"]] and [lock.id for lock in removed] == ["lk-1"]
    assert locks.revision == 3


@pytest.mark.parametrize(
    "target",
    [
        "identity",
        "user=alice",
        f"identity={ALICE}/../bob",
        "asset=",
        "asset=plc 1",
        "grant=a/b",
        f"prefix={ALICE}*",
    ],
)
def test_malformed_targets_are_refused(target: str) -> None:
    with pytest.raises(LockError):
        parse_target(target, TD)


def test_a_lock_survives_its_json_form() -> None:
    lock = _lock("lk-1", f"prefix=spiffe://{TD}/vendor/*", expires_at=5.0)
    assert Lock.from_json(lock.to_json()) == lock
    with pytest.raises(LockError, match="unknown kind"):
        Lock.from_json({**lock.to_json(), "kind": "badge"})
    with pytest.raises(LockError, match="malformed"):
        Lock.from_json({"id": "x"})
