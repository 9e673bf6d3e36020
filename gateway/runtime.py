"""What every session and listener of one gateway process shares: policy, audit, metrics, the live
session registry and the upstream pools. Built once by the server and handed down, so sessions never
reach for globals and tests can build a runtime of their own."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from gateway.admission import DEFAULT_MAX_SESSIONS_PER_IDENTITY
from gateway.audit import AuditLog
from gateway.locks import Lock, LockSet
from gateway.metrics import Metrics, UpstreamState
from gateway.pacing import IdentityBuckets
from gateway.reassembly import DEFAULT_REASSEMBLY_BUDGET_MIB, MIB, ReassemblyBudget

if TYPE_CHECKING:
    from gateway.policy_store import PolicyStore
    from policies import Asset, Policy


@dataclass(frozen=True)
class SessionLimits:
    """Per-client bounds on the data path."""

    max_in_flight: int = 16  # requests a client may have unanswered before the gateway stops reading it
    idle_timeout_s: float = 0.0  # 0: sessions may stay idle (HMIs poll; an engineer's tool may sit idle)
    # Requests the gateway answers itself (refusals, overload answers) per second: one session, and all
    # sessions of one identity together; past that the session stops reading (gateway/pacing.py).
    local_answers_per_s: float = 1000.0
    identity_local_answers_per_s: float = 2000.0
    # Refusals and overload answers are audited per session and kind: the first in full, then one count
    # per kind and interval, and the last counts when the session ends; 0: each on its own line.
    refusal_audit_interval_s: float = 1.0
    # Bytes all sessions together may hold for chunked messages not yet complete (gateway/reassembly.py),
    # and how long one such message may stay incomplete before its session is closed.
    reassembly_budget_bytes: int = int(DEFAULT_REASSEMBLY_BUDGET_MIB * MIB)
    reassembly_timeout_s: float = 30.0
    # Live sessions of one identity at once, over all assets; 0: no limit. Beyond it the overlay refuses
    # the session (audited, category identity_sessions).
    max_sessions_per_identity: int = DEFAULT_MAX_SESSIONS_PER_IDENTITY


class LiveSession(Protocol):
    """What the registry needs from a session, whatever its protocol."""

    id: str
    identity: str

    def describe(self) -> dict[str, Any]: ...

    def revalidate(self, policy: Policy) -> None: ...

    def request_counts(self) -> list[tuple[tuple[str, str, int | str, str], int]]: ...

    def close(self, reason: str) -> None: ...

    def extend_certificate(self, identity: str, source: str, not_after: float, policy: Policy) -> bool: ...
    def locked_by(self, locks: LockSet) -> Lock | None: ...

    def cut(self, by: str, reason: str, detail: Mapping[str, str]) -> None: ...


class SessionRegistry:
    """Live sessions by id; ids are unique per process and sortable by start."""

    def __init__(self) -> None:
        self._sessions: dict[str, LiveSession] = {}
        self._per_identity: dict[str, int] = {}
        self._prefix = os.urandom(3).hex()
        self._counter = itertools.count(1)

    def new_id(self) -> str:
        return f"{self._prefix}-{next(self._counter):06x}"

    def add(self, session: LiveSession) -> None:
        if session.id not in self._sessions:
            self._per_identity[session.identity] = self._per_identity.get(session.identity, 0) + 1
        self._sessions[session.id] = session

    def remove(self, session: LiveSession) -> None:
        if self._sessions.pop(session.id, None) is not None:
            left = self._per_identity.pop(session.identity) - 1
            if left:
                self._per_identity[session.identity] = left

    def of_identity(self, identity: str) -> int:
        """How many live sessions ``identity`` has, over all assets."""
        return self._per_identity.get(identity, 0)

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[LiveSession]:
        return iter(list(self._sessions.values()))

    def describe(self) -> list[dict[str, Any]]:
        return [session.describe() for session in self]

    def request_counts(self) -> list[tuple[tuple[str, str, int | str, str], int]]:
        return [item for session in self for item in session.request_counts()]

    def revalidate(self, policy: Policy) -> None:
        for session in self:
            session.revalidate(policy)

    def close_all(self, reason: str) -> None:
        for session in self:
            session.close(reason)

    def cut_locked(self, locks: LockSet, added: list[Lock]) -> None:
        """Cut every live session a lock in force stops (a :class:`LockSet` listener)."""
        for session in self:
            lock = session.locked_by(locks)
            if lock is not None:
                session.cut(f"lock {lock.id}", lock.reason, lock.audit_fields())


class UpstreamPool(Protocol):
    """An asset's connections to its device, whatever the protocol."""

    asset: Asset

    def start(self) -> None: ...

    def retire(self) -> None: ...

    def state(self) -> UpstreamState: ...


PoolFactory = Callable[["Asset", "Runtime"], UpstreamPool]


class UpstreamRegistry:
    """One pool per asset; a pool is replaced when its asset's upstream settings change."""

    def __init__(self, runtime: Runtime, factories: dict[str, PoolFactory]) -> None:
        self._runtime = runtime
        self._factories = factories
        self._pools: dict[str, UpstreamPool] = {}

    def pool_for(self, asset: Asset) -> UpstreamPool:
        pool = self._pools.get(asset.name)
        if pool is None or pool.asset != asset:
            if pool is not None:
                pool.retire()
            pool = self._pools[asset.name] = self._factories[asset.protocol](asset, self._runtime)
            pool.start()
        return pool

    def sync(self, policy: Policy) -> None:
        """Open pools for the policy's assets; retire those of assets it no longer names."""
        for name in list(self._pools):
            if name not in policy.assets:
                self._pools.pop(name).retire()
        for asset in policy.assets.values():
            if asset.protocol in self._factories:
                self.pool_for(asset)

    def states(self) -> list[UpstreamState]:
        return [pool.state() for pool in self._pools.values()]

    def close(self) -> None:
        for pool in self._pools.values():
            pool.retire()
        self._pools.clear()


@dataclass
class Runtime:
    name: str
    policies: PolicyStore
    audit: AuditLog
    metrics: Metrics
    limits: SessionLimits = field(default_factory=SessionLimits)
    sessions: SessionRegistry = field(default_factory=SessionRegistry)
    clock: Callable[[], float] = time.time  # wall clock for policy windows and audit; tests inject one
    # Locks from the center (gateway.bundles); a gateway on a policy file has none.
    locks: LockSet = field(default_factory=lambda: LockSet(time.time))
    upstreams: UpstreamRegistry = field(init=False)
    identity_buckets: IdentityBuckets = field(default_factory=IdentityBuckets)
    # More of /readyz: name -> what to show; a "ready": false in it makes the gateway not ready.
    status: dict[str, Callable[[], dict[str, Any]]] = field(default_factory=dict)
    reassembly: ReassemblyBudget = field(init=False)

    def __post_init__(self) -> None:
        self.metrics.live_requests = self.sessions.request_counts
        self.reassembly = ReassemblyBudget(self.limits.reassembly_budget_bytes)
        self.metrics.gauges["ztgate_reassembly_bytes"] = lambda: float(self.reassembly.held_bytes)
        self.metrics.gauges["ztgate_reassembly_peak_bytes"] = lambda: float(self.reassembly.peak_bytes)

    def attach_upstreams(self, factories: dict[str, PoolFactory]) -> None:
        self.upstreams = UpstreamRegistry(self, factories)
        self.metrics.upstream_sources.append(self.upstreams.states)


def tune_garbage_collector() -> None:
    """Keep the cyclic garbage collector off the data path.

    The data path allocates short-lived, acyclic objects (requests, decisions' events, reply bytes) by
    the hundred thousand per second; reference counting frees them, yet every 700 allocations CPython
    runs a generation-0 collection that finds nothing to free (14% of the gateway's CPU at load).
    Start-up objects are frozen out of the collector's reach and collections run 100 times less
    often; cycles are still collected, only later.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(70_000, 20, 20)


async def cancel_tasks(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel background tasks and wait until each has ended."""
    found = list(tasks)
    for task in found:
        task.cancel()
    for task in found:
        with contextlib.suppress(asyncio.CancelledError):
            await task
