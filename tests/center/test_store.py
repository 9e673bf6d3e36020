"""The center's store: the same tests on SQLite and on a real PostgreSQL (tests/postgres.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.center.db import PostgresDatabase, SqliteDatabase, StoreError
from gateway.center.migrations import MIGRATIONS
from gateway.center.store import GrantStateError, Store, TokenError
from gateway.locks import Lock

ALICE = "spiffe://plant1.example/user/alice"
HMI = "spiffe://plant1.example/agent/site1/hmi-3"
BOB = "spiffe://plant1.example/user/bob"
ACME = "spiffe://plant1.example/vendor/acme/jo"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        db: SqliteDatabase | PostgresDatabase = SqliteDatabase(tmp_path / "center.db")
    else:
        db = PostgresDatabase(request.getfixturevalue("pg_url"))
    found = Store(db, clock=Clock())
    assert await found.open() == [version for version, _, _ in MIGRATIONS]
    try:
        yield found
    finally:
        await found.close()


async def test_migrations_run_once_and_a_newer_schema_is_refused(store: Store) -> None:
    assert await store.db.migrate() == []
    async with store.db.transaction() as tx:
        await tx.execute(
            "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)", 999, "x", 0.0
        )
    with pytest.raises(StoreError, match=r"migrations \[999\] that this ztgate does not know"):
        await store.db.migrate()


async def test_identities_have_one_role_each(store: Store) -> None:
    assert await store.role_of(ALICE) is None
    await store.put_identity(ALICE, "admin", "init")
    await store.put_identity(HMI, "agent", ALICE)
    await store.put_identity(ALICE, "viewer", ALICE)
    assert await store.role_of(ALICE) == "viewer"
    assert [(row["id"], row["role"]) for row in await store.identities()] == [
        (HMI, "agent"),
        (ALICE, "viewer"),
    ]


async def test_a_token_is_used_once_and_expires(store: Store) -> None:
    clock = store.clock
    assert isinstance(clock, Clock)
    expires = await store.create_token("secret-1", HMI, "agent", 3600, ALICE)
    assert expires == clock.now + 3600
    assert (await store.token("secret-1"))["id"] == HMI
    raw = await store.db.fetch("SELECT hash FROM tokens")
    assert "secret-1" not in str(raw)  # only the hash is kept
    async with store.db.transaction() as tx:
        row = await store.use_token("secret-1", "127.0.0.1", tx)
    assert row["used_by"] == "127.0.0.1"
    for token, reason in (("secret-1", "used"), ("nope", "unknown")):
        with pytest.raises(TokenError) as refused:
            async with store.db.transaction() as tx:
                await store.use_token(token, "x", tx)
        assert refused.value.reason == reason
    await store.create_token("secret-2", HMI, "agent", 10, ALICE)
    clock.now += 10
    with pytest.raises(TokenError) as refused:
        await store.token("secret-2")
    assert refused.value.reason == "expired"


async def test_two_enrollments_racing_with_one_token_one_wins(store: Store) -> None:
    await store.create_token("race", HMI, "agent", 60, ALICE)

    async def enroll(who: str) -> str:
        try:
            async with store.db.transaction() as tx:
                await store.use_token("race", who, tx)
        except TokenError as exc:
            return exc.reason
        return "ok"

    assert sorted(await asyncio.gather(enroll("a"), enroll("b"))) == ["ok", "used"]


async def test_a_failed_transaction_changes_nothing(store: Store) -> None:
    await store.create_token("kept", HMI, "agent", 60, ALICE)
    with pytest.raises(RuntimeError):
        async with store.db.transaction() as tx:
            await store.use_token("kept", "x", tx)
            raise RuntimeError("the CSR was refused")
    assert (await store.token("kept"))["used_at"] is None


async def test_policy_revisions_number_up_keep_diffs_and_announce(store: Store) -> None:
    heard: list[str] = []
    three = asyncio.Event()

    def hear(topic: str) -> None:
        heard.append(topic)
        if len(heard) == 3:
            three.set()

    store.db.on_notify(hear)
    assert await store.heads() == {"policy": 0, "locks": 0}
    first = await store.push_policy("a = 1\n", ALICE, "first")
    second = await store.push_policy("a = 2\n", ALICE)
    back = await store.push_policy(first.policy, ALICE, "back", rollback_of=1)
    assert [first.revision, second.revision, back.revision] == [1, 2, 3]
    assert "-a = 1\n+a = 2\n" in second.diff and second.diff.startswith("--- revision 1\n+++ revision 2\n")
    assert await store.heads() == {"policy": 3, "locks": 0}
    shown = await store.policy_revision(2)
    assert shown == second
    assert await store.policy_revision(9) is None
    assert [r.revision for r in await store.policy_log()] == [3, 2, 1]
    assert (await store.policy_log())[0].rollback_of == 1
    await asyncio.wait_for(three.wait(), 5)  # PostgreSQL delivers on the LISTEN connection
    assert heard == ["policy"] * 3
    events = [(e["event"], e["detail"]["revision"]) for e in await store.audit_log()]
    assert events == [("policy_pushed", 1), ("policy_pushed", 2), ("policy_rollback", 3)]


async def test_concurrent_pushes_get_distinct_revisions(store: Store) -> None:
    pushed = await asyncio.gather(*(store.push_policy(f"n = {i}\n", ALICE) for i in range(8)))
    assert sorted(p.revision for p in pushed) == list(range(1, 9))


async def test_certificates_and_audit_are_kept(store: Store) -> None:
    await store.record_certificate(0xABC, HMI, 1.0, 2.0, "enroll")
    await store.audit("enrolled", HMI, {"serial": "abc"})
    assert [(c["serial"], c["reason"]) for c in await store.certificates(HMI)] == [("abc", "enroll")]
    log = await store.audit_log()
    assert (log[-1]["event"], log[-1]["actor"], log[-1]["detail"]) == ("enrolled", HMI, {"serial": "abc"})
    assert await store.audit_log(after=log[-1]["seq"]) == []


async def test_locks_are_kept_removed_and_lift_at_their_ttl(store: Store) -> None:
    clock = store.clock
    assert isinstance(clock, Clock)
    forever = Lock("lk-1", "identity", ALICE, "badge lost", ALICE, clock.now)
    brief = Lock("lk-2", "agent", HMI, "stolen", ALICE, clock.now, expires_at=clock.now + 60)
    await store.create_lock(forever)
    await store.create_lock(brief)
    assert await store.locks() == [forever, brief]
    assert (await store.heads())["locks"] == 2
    clock.now += 61
    assert await store.locks() == [forever]
    assert await store.remove_lock("lk-2", ALICE) is None  # expired: nothing to remove
    assert await store.remove_lock("lk-1", ALICE) == forever
    assert await store.remove_lock("lk-1", ALICE) is None
    assert await store.locks() == []
    assert (await store.heads())["locks"] == 3
    events = [(e["event"], e["detail"]["id"]) for e in await store.audit_log()]
    assert events == [("lock_created", "lk-1"), ("lock_created", "lk-2"), ("lock_removed", "lk-1")]


def _grant(clock: Clock, grant_id: str, needed: int = 2) -> dict[str, object]:
    return {
        "id": grant_id,
        "requester": ACME,
        "asset": "plc-1",
        "protocol": "modbus",
        "ops": "read 0-99",
        "reason": "firmware check",
        "not_before": clock.now,
        "not_after": clock.now + 3600,
        "approvers_needed": needed,
        "created_at": clock.now,
    }


async def test_grants_take_approvals_once_each_and_become_a_revision_in_one_step(store: Store) -> None:
    clock = store.clock
    assert isinstance(clock, Clock)
    await store.push_policy("base", ALICE)
    await store.create_grant(_grant(clock, "gr-1"))
    with pytest.raises(GrantStateError) as own:
        await store.approve_grant("gr-1", ACME)
    assert own.value.status == 403
    after_one = await store.approve_grant("gr-1", ALICE)
    assert [a["approver"] for a in after_one["approvals"]] == [ALICE]
    with pytest.raises(GrantStateError) as twice:
        await store.approve_grant("gr-1", ALICE)
    assert twice.value.status == 409
    assert await store.grants_in_force() == []
    # Composed from revision 1, but another revision came first: nothing changes, compose again.
    await store.push_policy("base 2", ALICE)
    assert await store.activate_grant("gr-1", BOB, "base + grant", after=1) is None
    assert (await store.grant("gr-1") or {})["state"] == "pending"
    assert (await store.heads())["policy"] == 2
    pushed = await store.activate_grant("gr-1", BOB, "base 2 + grant", after=2)
    assert pushed is not None and pushed.revision == 3 and pushed.policy == "base 2 + grant"
    assert [g["id"] for g in await store.grants_in_force()] == ["gr-1"]
    assert [g["id"] for g in await store.grants(("approved",), ACME)] == ["gr-1"]
    clock.now += 3601  # the window passed: no longer in force
    assert await store.grants_in_force() == []


async def test_a_pending_grant_is_denied_or_expires_and_an_approved_one_is_revoked_with_a_lock(
    store: Store,
) -> None:
    clock = store.clock
    assert isinstance(clock, Clock)
    await store.push_policy("base", ALICE)
    await store.create_grant(_grant(clock, "gr-1"))
    await store.create_grant(_grant(clock, "gr-2", needed=1))
    denied = await store.close_grant("gr-1", "denied", ALICE, "not today")
    assert (denied["state"], denied["decided_by"], denied["decision"]) == ("denied", ALICE, "not today")
    with pytest.raises(GrantStateError):
        await store.approve_grant("gr-1", BOB)
    await store.approve_grant("gr-2", BOB)
    assert await store.activate_grant("gr-2", BOB, "with gr-2", after=1) is not None
    lock = Lock("lk-9", "grant", "gr-2", "done early", BOB, clock.now, expires_at=clock.now + 3660)
    revoked = await store.revoke_grant("gr-2", lock)
    assert (revoked["state"], revoked["lock_id"]) == ("revoked", "lk-9")
    assert await store.locks() == [lock] and await store.grants_in_force() == []
    await store.create_grant(_grant(clock, "gr-3"))
    clock.now += 3601
    assert [(g["id"], g["state"]) for g in await store.grants(("expired",))] == [("gr-3", "expired")]
    events = [e["event"] for e in await store.audit_log() if e["event"].startswith("grant")]
    assert events == [
        "grant_requested",
        "grant_requested",
        "grant_denied",
        "grant_approval",
        "grant_approved",
        "grant_revoked",
        "grant_requested",
    ]
