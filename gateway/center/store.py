"""What the center keeps: identities and roles, enrollment tokens, issued certificates, policy
revisions, locks, the heads of what it streams, and its own audit. One class over either database.

Every change that gateways must hear about bumps a row of ``heads`` and announces its kind in the same
transaction (:meth:`gateway.center.db.Transaction.notify`), so a replica on the same PostgreSQL wakes
its subscribers at commit, and a revision number is handed out exactly once across replicas (the row
lock on ``heads`` orders concurrent pushes).
"""

from __future__ import annotations

import difflib
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson

from gateway.audit import AuditLog
from gateway.center.db import Database, Row, Transaction
from gateway.locks import Lock

__all__ = [
    "ROLES",
    "GrantStateError",
    "HeadMovedError",
    "PolicyRevision",
    "Store",
    "TokenError",
    "center_record",
    "token_hash",
]

# Roles and the SPIFFE kind an identity of that role must have. Roles live here, never in certificates.
ROLES: dict[str, str] = {
    "admin": "user",
    "approver": "user",
    "viewer": "user",
    "user": "user",
    "vendor": "vendor",
    "agent": "agent",
    "gateway": "gateway",
}


class HeadMovedError(Exception):
    """Another revision came first: what was composed from the previous one must be composed again."""


class GrantStateError(Exception):
    """A grant that cannot take the step asked for; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class TokenError(Exception):
    """An enrollment token that cannot be used; ``reason`` is one of unknown, expired, used."""

    def __init__(self, reason: str, row: Row | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.row = row


@dataclass(frozen=True)
class PolicyRevision:
    revision: int
    policy: str
    sha256: str
    author: str
    created_at: float
    comment: str
    diff: str
    rollback_of: int | None

    @classmethod
    def from_row(cls, row: Row) -> PolicyRevision:
        rollback = row["rollback_of"]
        return cls(
            revision=int(row["revision"]),
            policy=row["policy"],
            sha256=row["sha256"],
            author=row["author"],
            created_at=float(row["created_at"]),
            comment=row["comment"],
            diff=row["diff"],
            rollback_of=None if rollback is None else int(rollback),
        )

    def summary(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "sha256": self.sha256,
            "author": self.author,
            "created_at": self.created_at,
            "comment": self.comment,
            "rollback_of": self.rollback_of,
        }


def _lock(row: Row) -> Lock:
    expires = row["expires_at"]
    return Lock(
        id=row["id"],
        kind=row["kind"],
        value=row["value"],
        reason=row["reason"],
        created_by=row["created_by"],
        created_at=float(row["created_at"]),
        expires_at=None if expires is None else float(expires),
    )


def _grant_detail(grant: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "asset", "protocol", "ops", "not_before", "not_after", "approvers_needed", "reason")
    return {key: grant[key] for key in keys}


def token_hash(token: str) -> str:
    # Tokens carry 256 random bits, so a plain hash is enough: nothing to brute-force, and the store
    # never holds a usable token.
    return hashlib.sha256(token.encode()).hexdigest()


def unified_diff(before: str, after: str, from_name: str, to_name: str) -> str:
    lines = difflib.unified_diff(
        before.splitlines(keepends=True), after.splitlines(keepends=True), from_name, to_name
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def center_record(
    seq: int, at: float, event: str, actor: str | None, detail: dict[str, Any]
) -> dict[str, Any]:
    """An audit row as a record for the sinks: the detail's fields, flat, then ``time``, ``event``,
    ``seq`` (the row's number) and ``identity`` (the actor, when there is one); the audit log adds
    ``center`` (docs/audit.md, "Records of the center")."""
    record = {**detail, "time": at, "event": event, "seq": seq}
    if actor is not None:
        record["identity"] = actor
    return record


class Store:
    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock
        self.trail: AuditLog | None = None  # the [audit] sinks, when the center has any

    async def open(self) -> list[int]:
        await self.db.open()
        return await self.db.migrate()

    async def close(self) -> None:
        await self.db.close()

    # -------------------------------------------------------------------------------- identities

    async def role_of(self, identity: str) -> str | None:
        row = await self.db.fetchone("SELECT role FROM identities WHERE id = ?", identity)
        return None if row is None else str(row["role"])

    async def identities(self) -> list[Row]:
        return await self.db.fetch("SELECT id, role, created_at, created_by FROM identities ORDER BY id")

    async def put_identity(self, identity: str, role: str, by: str, tx: Transaction | None = None) -> None:
        """Record ``identity`` with ``role`` (replacing its role if it has one)."""
        if tx is None:
            async with self.db.transaction() as own:
                await self._put_identity(own, identity, role, by)
        else:
            await self._put_identity(tx, identity, role, by)

    async def _put_identity(self, tx: Transaction, identity: str, role: str, by: str) -> None:
        await tx.execute(
            "INSERT INTO identities (id, role, created_at, created_by) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET role = excluded.role",
            identity,
            role,
            self.clock(),
            by,
        )

    # ------------------------------------------------------------------------------------ tokens

    async def create_token(self, token: str, identity: str, role: str, ttl_s: float, by: str) -> float:
        """Store a new token (hashed); returns when it expires."""
        now = self.clock()
        expires_at = now + ttl_s
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO tokens (hash, id, role, created_at, expires_at, created_by) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                token_hash(token),
                identity,
                role,
                now,
                expires_at,
                by,
            )
        return expires_at

    async def token(self, token: str) -> Row:
        """The token's row if it can still be used; raises :class:`TokenError` otherwise."""
        row = await self.db.fetchone("SELECT * FROM tokens WHERE hash = ?", token_hash(token))
        self._check_token(row)
        assert row is not None
        return row

    def _check_token(self, row: Row | None) -> None:
        if row is None:
            raise TokenError("unknown")
        if row["used_at"] is not None:
            raise TokenError("used", row)
        if float(row["expires_at"]) <= self.clock():
            raise TokenError("expired", row)

    async def use_token(self, token: str, used_by: str, tx: Transaction) -> Row:
        """Mark the token used, inside ``tx``; raises :class:`TokenError` when it cannot be.

        The update is conditional, so of two enrollments racing with one token (on two replicas,
        say) exactly one wins."""
        digest = token_hash(token)
        now = self.clock()
        changed = await tx.execute(
            "UPDATE tokens SET used_at = ?, used_by = ? "
            "WHERE hash = ? AND used_at IS NULL AND expires_at > ?",
            now,
            used_by,
            digest,
            now,
        )
        row = await tx.fetchone("SELECT * FROM tokens WHERE hash = ?", digest)
        if not changed:
            self._check_token(row)
            raise TokenError("used", row)  # lost a race between the check and the update
        assert row is not None
        return row

    # ------------------------------------------------------------------------------ certificates

    async def record_certificate(
        self,
        serial: int,
        identity: str,
        not_before: float,
        not_after: float,
        reason: str,
        tx: Transaction | None = None,
    ) -> None:
        sql = (
            "INSERT INTO certificates (serial, id, not_before, not_after, issued_at, reason) "
            "VALUES (?, ?, ?, ?, ?, ?)"
        )
        args = (f"{serial:x}", identity, not_before, not_after, self.clock(), reason)
        if tx is None:
            async with self.db.transaction() as own:
                await own.execute(sql, *args)
        else:
            await tx.execute(sql, *args)

    async def certificates(self, identity: str) -> list[Row]:
        return await self.db.fetch("SELECT * FROM certificates WHERE id = ? ORDER BY issued_at", identity)

    # ------------------------------------------------------------------------------------ policy

    async def heads(self) -> dict[str, int]:
        return {str(row["kind"]): int(row["value"]) for row in await self.db.fetch("SELECT * FROM heads")}

    async def push_policy(
        self,
        text: str,
        author: str,
        comment: str = "",
        rollback_of: int | None = None,
        *,
        after: int | None = None,
    ) -> PolicyRevision | None:
        """Store ``text`` (already validated) as the next revision, with its diff against the previous.

        With ``after``, only if the newest revision is still ``after`` (None otherwise): the text was
        composed from that revision and the grants then in force (gateway/center/grants.py)."""
        try:
            async with self.db.transaction() as tx:
                return await self.push_policy_in(tx, text, author, comment, rollback_of, after=after)
        except HeadMovedError:
            return None

    async def push_policy_in(
        self,
        tx: Transaction,
        text: str,
        author: str,
        comment: str = "",
        rollback_of: int | None = None,
        *,
        after: int | None = None,
    ) -> PolicyRevision:
        """:meth:`push_policy` inside ``tx``; :class:`HeadMovedError` when ``after`` is not the newest."""
        row = await tx.fetchone("UPDATE heads SET value = value + 1 WHERE kind = 'policy' RETURNING value")
        assert row is not None
        revision = int(row["value"])
        if after is not None and revision - 1 != after:
            raise HeadMovedError(revision - 1)  # rolls back the transaction, and with it the bump
        previous = await tx.fetchone("SELECT policy FROM policy_revisions WHERE revision = ?", revision - 1)
        before = "" if previous is None else str(previous["policy"])
        pushed = PolicyRevision(
            revision=revision,
            policy=text,
            sha256=hashlib.sha256(text.encode()).hexdigest(),
            author=author,
            created_at=self.clock(),
            comment=comment,
            diff=unified_diff(before, text, f"revision {revision - 1}", f"revision {revision}"),
            rollback_of=rollback_of,
        )
        await tx.execute(
            "INSERT INTO policy_revisions (revision, policy, sha256, author, created_at, comment, diff, "
            "rollback_of) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            pushed.revision,
            pushed.policy,
            pushed.sha256,
            pushed.author,
            pushed.created_at,
            pushed.comment,
            pushed.diff,
            pushed.rollback_of,
        )
        await self._audit(
            tx,
            "policy_rollback" if rollback_of is not None else "policy_pushed",
            author,
            {"revision": revision, "sha256": pushed.sha256, "rollback_of": rollback_of},
        )
        await tx.notify("policy")
        return pushed

    async def policy_revision(self, revision: int) -> PolicyRevision | None:
        row = await self.db.fetchone("SELECT * FROM policy_revisions WHERE revision = ?", revision)
        return None if row is None else PolicyRevision.from_row(row)

    async def policy_log(self, limit: int = 100) -> list[PolicyRevision]:
        rows = await self.db.fetch("SELECT * FROM policy_revisions ORDER BY revision DESC LIMIT ?", limit)
        return [PolicyRevision.from_row(row) for row in rows]

    # ------------------------------------------------------------------------------------- locks

    async def create_lock(self, lock: Lock) -> None:
        """Store ``lock`` (already checked) and announce a new ``locks`` head."""
        async with self.db.transaction() as tx:
            await self._insert_lock(tx, lock)
            await tx.notify("locks")

    async def _insert_lock(self, tx: Transaction, lock: Lock) -> None:
        await tx.execute(
            "INSERT INTO locks (id, kind, value, reason, created_by, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            lock.id,
            lock.kind,
            lock.value,
            lock.reason,
            lock.created_by,
            lock.created_at,
            lock.expires_at,
        )
        await tx.execute("UPDATE heads SET value = value + 1 WHERE kind = 'locks'")
        await self._audit(tx, "lock_created", lock.created_by, lock.to_json())

    async def remove_lock(self, lock_id: str, by: str) -> Lock | None:
        """Lift a lock in force; None if there is none of that id (unknown, removed or expired)."""
        now = self.clock()
        async with self.db.transaction() as tx:
            row = await tx.fetchone(
                "SELECT * FROM locks WHERE id = ? AND removed_at IS NULL "
                "AND (expires_at IS NULL OR expires_at > ?)",
                lock_id,
                now,
            )
            if row is None:
                return None
            await tx.execute("UPDATE locks SET removed_at = ?, removed_by = ? WHERE id = ?", now, by, lock_id)
            await tx.execute("UPDATE heads SET value = value + 1 WHERE kind = 'locks'")
            lock = _lock(row)
            await self._audit(tx, "lock_removed", by, {"id": lock_id, "target": lock.target})
            await tx.notify("locks")
        return lock

    async def locks(self) -> list[Lock]:
        """The locks in force now (not removed, TTL not run out), oldest first."""
        rows = await self.db.fetch(
            "SELECT * FROM locks WHERE removed_at IS NULL AND (expires_at IS NULL OR expires_at > ?) "
            "ORDER BY created_at, id",
            self.clock(),
        )
        return [_lock(row) for row in rows]

    # ------------------------------------------------------------------------------------ grants

    async def create_grant(self, grant: dict[str, Any]) -> None:
        """Store a pending grant request (already checked against the policy)."""
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO grants (id, requester, asset, protocol, ops, reason, not_before, not_after, "
                "approvers_needed, state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
                grant["id"],
                grant["requester"],
                grant["asset"],
                grant["protocol"],
                grant["ops"],
                grant["reason"],
                grant["not_before"],
                grant["not_after"],
                grant["approvers_needed"],
                grant["created_at"],
            )
            await self._audit(tx, "grant_requested", grant["requester"], _grant_detail(grant))

    async def grant(self, grant_id: str, tx: Transaction | None = None) -> dict[str, Any] | None:
        """A grant with its approvals; a pending one whose window has passed reads as ``expired``."""
        source = tx if tx is not None else self.db
        row = await source.fetchone("SELECT * FROM grants WHERE id = ?", grant_id)
        if row is None:
            return None
        approvals = await source.fetch(
            "SELECT approver, at FROM grant_approvals WHERE grant_id = ? ORDER BY at", grant_id
        )
        return self._grant(row, approvals)

    def _grant(self, row: Row, approvals: list[Row]) -> dict[str, Any]:
        grant = dict(row)
        for key in ("not_before", "not_after", "created_at"):
            grant[key] = float(grant[key])
        grant["approvers_needed"] = int(grant["approvers_needed"])
        grant["approvals"] = [{"approver": a["approver"], "at": float(a["at"])} for a in approvals]
        if grant["state"] == "pending" and grant["not_after"] <= self.clock():
            grant["state"] = "expired"
        return grant

    async def grants(
        self, states: tuple[str, ...] = (), requester: str | None = None
    ) -> list[dict[str, Any]]:
        """Grants, newest first, in any of ``states`` (all when empty), of ``requester`` if given."""
        rows = await self.db.fetch("SELECT * FROM grants ORDER BY created_at DESC, id LIMIT 1000")
        approvals: dict[str, list[Row]] = {}
        for row in await self.db.fetch("SELECT * FROM grant_approvals ORDER BY at"):
            approvals.setdefault(str(row["grant_id"]), []).append(row)
        found = [self._grant(row, approvals.get(str(row["id"]), [])) for row in rows]
        return [
            grant
            for grant in found
            if (not states or grant["state"] in states)
            and (requester is None or grant["requester"] == requester)
        ]

    async def grants_in_force(self, tx: Transaction | None = None) -> list[dict[str, Any]]:
        """Approved grants whose window has not ended, oldest first: the rules every revision carries."""
        source = tx if tx is not None else self.db
        rows = await source.fetch(
            "SELECT * FROM grants WHERE state = 'approved' AND not_after > ? ORDER BY created_at, id",
            self.clock(),
        )
        return [self._grant(row, []) for row in rows]

    async def approve_grant(self, grant_id: str, approver: str) -> dict[str, Any]:
        """Record ``approver``'s approval of a pending grant; returns the grant with its approvals.
        Raises :class:`GrantStateError` when the grant cannot take it."""
        async with self.db.transaction() as tx:
            grant = await self._pending(tx, grant_id)
            if grant["requester"] == approver:
                raise GrantStateError(
                    403, f"{approver} asked for grant {grant_id}: a requester never approves its own request"
                )
            if any(a["approver"] == approver for a in grant["approvals"]):
                raise GrantStateError(
                    409, f"{approver} has already approved grant {grant_id}: another approver must"
                )
            await tx.execute(
                "INSERT INTO grant_approvals (grant_id, approver, at) VALUES (?, ?, ?)",
                grant_id,
                approver,
                self.clock(),
            )
            grant["approvals"].append({"approver": approver, "at": self.clock()})
            await self._audit(
                tx,
                "grant_approval",
                approver,
                {"id": grant_id, "approvals": len(grant["approvals"]), "needed": grant["approvers_needed"]},
            )
        return grant

    async def _pending(self, tx: Transaction, grant_id: str) -> dict[str, Any]:
        # A no-op update takes the row's lock first (PostgreSQL), so two approvers on two replicas
        # count each other's approval; SQLite runs one transaction at a time anyway.
        await tx.execute("UPDATE grants SET state = state WHERE id = ?", grant_id)
        grant = await self.grant(grant_id, tx)
        if grant is None:
            raise GrantStateError(404, f"no grant {grant_id[:40]!r}")
        if grant["state"] != "pending":
            raise GrantStateError(409, f"grant {grant_id} is {grant['state']}, not pending")
        return grant

    async def activate_grant(
        self, grant_id: str, approver: str, text: str, after: int
    ) -> PolicyRevision | None:
        """Mark a fully approved grant approved and push ``text`` (composed from revision ``after`` and
        the grants in force with this one) as the next revision, in one transaction; None when another
        revision came first (compose again)."""
        try:
            async with self.db.transaction() as tx:
                await self._pending(tx, grant_id)
                await self._decide(tx, grant_id, "approved", approver, None)
                pushed = await self.push_policy_in(
                    tx, text, approver, f"grant {grant_id} approved", after=after
                )
                await self._audit(
                    tx, "grant_approved", approver, {"id": grant_id, "revision": pushed.revision}
                )
        except HeadMovedError:
            return None
        return pushed

    async def close_grant(
        self, grant_id: str, state: str, by: str, why: str, detail: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """End a pending grant as ``denied`` or ``refused`` (its revision failed a policy test)."""
        async with self.db.transaction() as tx:
            await self._pending(tx, grant_id)
            await self._decide(tx, grant_id, state, by, why)
            await self._audit(tx, f"grant_{state}", by, {"id": grant_id, "reason": why, **(detail or {})})
            grant = await self.grant(grant_id, tx)
        assert grant is not None
        return grant

    async def revoke_grant(self, grant_id: str, lock: Lock) -> dict[str, Any]:
        """End an approved grant early: ``lock`` (target ``grant=ID``) cuts its sessions everywhere."""
        async with self.db.transaction() as tx:
            grant = await self.grant(grant_id, tx)
            if grant is None:
                raise GrantStateError(404, f"no grant {grant_id[:40]!r}")
            if grant["state"] != "approved" or grant["not_after"] <= self.clock():
                raise GrantStateError(409, f"grant {grant_id} is not in force ({grant['state']})")
            await self._insert_lock(tx, lock)
            await tx.execute("UPDATE grants SET lock_id = ? WHERE id = ?", lock.id, grant_id)
            await self._decide(tx, grant_id, "revoked", lock.created_by, lock.reason)
            await self._audit(
                tx, "grant_revoked", lock.created_by, {"id": grant_id, "lock": lock.id, "reason": lock.reason}
            )
            await tx.notify("locks")
            revoked = await self.grant(grant_id, tx)
        assert revoked is not None
        return revoked

    async def _decide(self, tx: Transaction, grant_id: str, state: str, by: str, why: str | None) -> None:
        await tx.execute(
            "UPDATE grants SET state = ?, decided_at = ?, decided_by = ?, decision = ? WHERE id = ?",
            state,
            self.clock(),
            by,
            why,
            grant_id,
        )

    # ------------------------------------------------------------------------------------- audit

    async def audit(
        self, event: str, actor: str | None, detail: dict[str, Any], tx: Transaction | None = None
    ) -> None:
        """Record what the center did or refused: a row of the store's audit table (``ztgate center
        audit``) and, once it is committed, a record to the ``[audit]`` sinks (:func:`center_record`).
        Inside ``tx`` both follow the transaction: a rollback leaves neither."""
        if tx is None:
            async with self.db.transaction() as own:
                await self._audit(own, event, actor, detail)
        else:
            await self._audit(tx, event, actor, detail)

    async def _audit(self, tx: Transaction, event: str, actor: str | None, detail: dict[str, Any]) -> None:
        at = self.clock()
        row = await tx.fetchone(
            "INSERT INTO audit (at, actor, event, detail) VALUES (?, ?, ?, ?) RETURNING seq",
            at,
            actor,
            event,
            orjson.dumps(detail).decode(),
        )
        trail = self.trail
        if trail is not None and row is not None:
            tx.after_commit(partial(trail.emit, center_record(int(row["seq"]), at, event, actor, detail)))

    async def audit_log(self, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        rows = await self.db.fetch(
            "SELECT seq, at, actor, event, detail FROM audit WHERE seq > ? ORDER BY seq LIMIT ?", after, limit
        )
        return [{**row, "seq": int(row["seq"]), "detail": orjson.loads(row["detail"])} for row in rows]
