"""Locks: who or what may not hold a session, whatever the policy says, until the lock is removed or
its TTL runs out.

A lock names one target, ``KIND=VALUE``:

- ``identity=spiffe://td/user/alice``: that SPIFFE id;
- ``prefix=spiffe://td/vendor/acme/*``: every id under that path (a whole vendor organisation);
- ``agent=spiffe://td/agent/site1/hmi-3``: the sessions an agent opens for its HMI;
- ``asset=plc-1``: every session to that asset;
- ``grant=ID``: the sessions a just-in-time grant allows (the rule of that id).

The center keeps locks and streams the set of those in force as a signed ``locks`` document; a gateway
holds the set here (:class:`LockSet`), refuses new handshakes that match, and cuts the live sessions
that match (:meth:`gateway.runtime.SessionRegistry.cut_locked`). This module is imported by gateways and by
the center, which validates targets with :func:`parse_target`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from policies.spiffe import IdentityError, parse_spiffe_id

__all__ = ["MAX_REASON_CHARS", "TARGET_KINDS", "Lock", "LockError", "LockSet", "parse_target"]

TARGET_KINDS = ("identity", "prefix", "agent", "asset", "grant")
# Kinds that name who holds a certificate: these also stop the center from renewing it.
IDENTITY_KINDS = frozenset({"identity", "prefix", "agent"})
MAX_REASON_CHARS = 500
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class LockError(ValueError):
    """A lock target or field that cannot be used; the message says why."""


def parse_target(text: str, trust_domain: str) -> tuple[str, str]:
    """``KIND=VALUE`` -> (kind, value), checked; raises :class:`LockError`."""
    kind, sep, value = text.partition("=")
    if not sep or kind not in TARGET_KINDS:
        raise LockError(
            f"target {text[:80]!r}: expected KIND=VALUE with KIND one of {', '.join(TARGET_KINDS)}"
        )
    if kind in ("asset", "grant"):
        if _NAME.fullmatch(value) is None:
            raise LockError(f"{kind} {value[:80]!r}: expected a name of letters, digits, '.', '_', '-'")
        return kind, value
    if kind == "prefix":
        if not value.endswith("/*"):
            raise LockError(f"prefix {value[:80]!r}: expected an id path ending in /*")
        _checked_id(value[:-2], trust_domain)
        return kind, value
    sid = _checked_id(value, trust_domain)
    if kind == "agent" and sid.kind != "agent":
        raise LockError(f"agent {value[:80]!r}: expected spiffe://{trust_domain}/agent/...")
    return kind, str(sid)


def _checked_id(text: str, trust_domain: str) -> Any:
    try:
        sid = parse_spiffe_id(text)
    except IdentityError as exc:
        raise LockError(str(exc)) from None
    if sid.trust_domain != trust_domain:
        raise LockError(f"{text[:80]} is not in trust domain {trust_domain}")
    return sid


def check_reason(reason: str, needs: str = "a lock") -> str:
    """A reason a person gives (for a lock; also for a grant request and its denial): not blank, and at
    most MAX_REASON_CHARS, since every gateway's record of a cut session carries it."""
    reason = reason.strip()
    if not reason:
        raise LockError(f"{needs} needs a reason")
    if len(reason) > MAX_REASON_CHARS:
        raise LockError(f"reason of {len(reason)} characters: at most {MAX_REASON_CHARS}")
    return reason


@dataclass(frozen=True)
class Lock:
    id: str
    kind: str
    value: str
    reason: str
    created_by: str
    created_at: float
    expires_at: float | None = None

    @property
    def target(self) -> str:
        return f"{self.kind}={self.value}"

    def live(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at

    def matches(self, identity: str, asset: str, rule_ids: Iterable[str]) -> bool:
        kind, value = self.kind, self.value
        if kind == "prefix":
            return identity.startswith(value[:-1])
        if kind == "asset":
            return asset == value
        if kind == "grant":
            return value in rule_ids
        return identity == value  # identity, agent

    def covers_identity(self, identity: str) -> bool:
        """Whether this lock stops ``identity`` itself (its certificate's renewal, say)."""
        return self.kind in IDENTITY_KINDS and self.matches(identity, "", ())

    def audit_fields(self) -> dict[str, str]:
        """What names this lock in a gateway's audit record of a session it cut."""
        return {"lock": self.id, "target": self.target}

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "target": self.target,
            "kind": self.kind,
            "value": self.value,
            "reason": self.reason,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Lock:
        """A lock from a verified document; raises :class:`LockError` for a malformed one."""
        try:
            expires = data.get("expires_at")
            lock = cls(
                id=str(data["id"]),
                kind=str(data["kind"]),
                value=str(data["value"]),
                reason=str(data["reason"]),
                created_by=str(data["created_by"]),
                created_at=float(data["created_at"]),
                expires_at=None if expires is None else float(expires),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LockError(f"malformed lock: {exc}") from None
        if lock.kind not in TARGET_KINDS:
            raise LockError(f"lock {lock.id}: unknown kind {lock.kind!r}")
        return lock


Listener = Callable[["LockSet", list[Lock]], None]


class LockSet:
    """The locks a gateway enforces. ``replace`` takes a new set (the newest ``locks`` document) and
    tells the listeners which locks are new; a lock whose TTL ran out no longer matches."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.locks: dict[str, Lock] = {}
        self.revision = 0
        self._listeners: list[Listener] = []

    def __len__(self) -> int:
        return len(self.locks)

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def replace(self, revision: int, locks: Iterable[Lock]) -> tuple[list[Lock], list[Lock]]:
        """Install the set of ``revision``; returns (added, removed)."""
        new = {lock.id: lock for lock in locks}
        added = [lock for lock_id, lock in new.items() if lock_id not in self.locks]
        removed = [lock for lock_id, lock in self.locks.items() if lock_id not in new]
        self.locks = new
        self.revision = revision
        if added:
            for listener in self._listeners:
                listener(self, added)
        return added, removed

    def match(self, identity: str, asset: str, rule_ids: Iterable[str] = ()) -> Lock | None:
        """The first lock in force that stops ``identity`` on ``asset`` (under rules ``rule_ids``)."""
        if not self.locks:
            return None
        now = self._clock()
        ids = tuple(rule_ids)
        for lock in self.locks.values():
            if lock.live(now) and lock.matches(identity, asset, ids):
                return lock
        return None

    def expired(self) -> list[Lock]:
        """Locks whose TTL has run out; they are dropped from the set (the center no longer sends them)."""
        now = self._clock()
        gone = [lock for lock in self.locks.values() if not lock.live(now)]
        for lock in gone:
            del self.locks[lock.id]
        return gone

    def next_expiry(self) -> float | None:
        times = [lock.expires_at for lock in self.locks.values() if lock.expires_at is not None]
        return min(times) if times else None
