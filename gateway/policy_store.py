"""The policy in force, and hot reload: on SIGHUP and when the file changes on disk, or when a
center's verified bundle brings a new revision.

A new file is loaded and compiled in a worker thread (a 10,000-rule file takes a good part of a
second and must not stall the data path), checked completely, and only then swapped in with one
attribute assignment: every request is decided entirely under one revision. A file with errors is
refused with the same messages ``ztgate policy check`` prints, and the last good policy stays.

A file is watched by polling its stat. A file replaced whole (a new inode: ``mv``, a Kubernetes
ConfigMap's symlink swap, an editor that saves a new file) is complete when it appears, so it is loaded
at once, as on SIGHUP. A file rewritten in place may be caught half-way through: it is loaded only once
its size, mtime and content hash have stayed the same for ``quiet_s`` (default 3 s), so a writer that
pauses between two writes is not read in between.

In center mode (:meth:`PolicyStore.from_center`) there is no file: the bundle subscriber
(:mod:`gateway.bundles`) compiles each verified revision and hands it to :meth:`PolicyStore.install`.
Either way, assets can be closed on top of the verified policy (:meth:`PolicyStore.set_refusals`: a
stale policy's ``on_stale = "closed"`` assets) without recompiling anything; ``current`` is what is
enforced, ``verified`` what was loaded.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.audit import AuditLog
from policies import Policy, PolicyError, load_policy

log = logging.getLogger("ztgate.policy")

Listener = Callable[[Policy], None]


DEFAULT_QUIET_S = 3.0


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _digest(path: Path) -> bytes | None:
    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except OSError:
        return None


@dataclass
class PendingChange:
    """A file changed in place, waiting to stay unchanged for the quiet period."""

    stat: tuple[int, int, int]
    digest: bytes | None
    since: float  # the watcher's clock when the file was last seen to change
    polls: int = 1  # how many polls have seen it unchanged since then


class PolicyStore:
    def __init__(self, path: Path, audit: AuditLog, *, policy: Policy | None = None) -> None:
        self.path = path
        self._audit = audit
        self._listeners: list[Listener] = []
        self._stat = _stat_key(path)
        # At start-up a broken file is fatal: nothing to fall back on.
        self.verified: Policy = load_policy(path) if policy is None else policy
        self.current: Policy = self.verified
        self.refusals: Mapping[str, str] = {}
        self.reads_only: str | None = None  # why every asset refuses all but reads, when it does
        self.origin = "file" if policy is None else "center"
        self.last_error: str | None = None
        self.reloads = 0
        self.failed_reloads = 0
        self.pending: PendingChange | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_center(cls, policy: Policy, audit: AuditLog) -> PolicyStore:
        """A store fed by verified bundles (:meth:`install`), starting with ``policy``."""
        return cls(Path(policy.source), audit, policy=policy)

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(policy)`` after every successful swap (to revalidate sessions, pools...)."""
        self._listeners.append(listener)

    async def reload(self, trigger: str) -> bool:
        """Load the file again and swap it in if it is valid. Returns whether the swap happened."""
        if self.origin != "file":
            return False  # a center's policy changes by bundles only
        async with self._lock:
            self._stat = _stat_key(self.path)
            self.pending = None
            loop = asyncio.get_running_loop()
            try:
                policy = await loop.run_in_executor(None, load_policy, self.path)
            except PolicyError as error:
                self.failed_reloads += 1
                self.last_error = str(error)
                log.error(
                    "policy reload (%s) refused, keeping revision %s:\n%s",
                    trigger,
                    self.current.revision,
                    error,
                )
                self._audit.emit(
                    {
                        "event": "policy_rejected",
                        "trigger": trigger,
                        "file": str(self.path),
                        "errors": [str(issue) for issue in error.issues],
                        "policy_revision": self.current.revision,
                    }
                )
                return False
            if policy.revision == self.verified.revision:
                self.last_error = None
                return False
            self._swap(policy, trigger, {"file": str(self.path)})
            return True

    async def install(self, policy: Policy, trigger: str, detail: Mapping[str, Any]) -> None:
        """Swap in a policy compiled from a verified bundle (center mode)."""
        async with self._lock:
            self._swap(policy, trigger, detail)

    def _swap(self, policy: Policy, trigger: str, detail: Mapping[str, Any]) -> None:
        previous = self.verified
        self.verified = policy
        self.current = self._enforced(policy)
        self.reloads += 1
        self.last_error = None
        log.info("policy %s -> %s (%s)", previous.revision, policy.revision, trigger)
        self._audit.emit(
            {
                "event": "policy_loaded",
                "trigger": trigger,
                **detail,
                "policy_revision": policy.revision,
                "previous_revision": previous.revision,
                "rules": len(policy.rules),
                "assets": sorted(policy.assets),
            }
        )
        self._notify()

    def _enforced(self, policy: Policy) -> Policy:
        refusals = {asset: reason for asset, reason in self.refusals.items() if asset in policy.assets}
        if self.reads_only is not None:
            return policy.with_refusals(refusals, dict.fromkeys(policy.assets, self.reads_only))
        return policy.with_refusals(refusals) if refusals else policy

    def set_refusals(self, refusals: Mapping[str, str]) -> None:
        """Refuse every request on these assets (name -> reason) from now on, on top of the verified
        policy and of every later one; an empty mapping lifts them. Sessions are revalidated."""
        if dict(refusals) == dict(self.refusals):
            return
        self.refusals = dict(refusals)
        self.current = self._enforced(self.verified)
        self._notify()

    def set_reads_only(self, reason: str | None) -> None:
        """Refuse every request but reads on every asset, for ``reason``, from now on (None lifts it):
        what ``[audit] on_failure = "closed"`` enforces while the audit trail cannot be written."""
        if reason == self.reads_only:
            return
        self.reads_only = reason
        self.current = self._enforced(self.verified)
        self._notify()

    def _notify(self) -> None:
        for listener in self._listeners:
            listener(self.current)

    async def watch(
        self,
        interval_s: float = 1.0,
        quiet_s: float = DEFAULT_QUIET_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Poll the file's stat every ``interval_s``. Reload a file replaced whole at once, and a file
        changed in place once it has stayed unchanged for ``quiet_s``. Runs until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            trigger = self._poll(quiet_s, clock())
            if trigger is None:
                continue
            try:
                await self.reload(trigger)
            except Exception:  # a bug in a listener must not stop the watcher
                log.exception("policy reload failed")

    def _poll(self, quiet_s: float, now: float) -> str | None:
        """One look at the file: the reload trigger when it is time to load it, else None."""
        stat = _stat_key(self.path)
        if stat == self._stat or stat is None:  # unchanged, or gone for now (the old policy stays)
            self.pending = None
            return None
        if self._stat is None or stat[2] != self._stat[2]:
            self.pending = None
            return "file replaced"
        digest = _digest(self.path)
        pending = self.pending
        if pending is None or pending.stat != stat or pending.digest != digest:
            if pending is None:
                log.info("policy file %s changed in place: loaded after %g s unchanged", self.path, quiet_s)
            self.pending = PendingChange(stat, digest, now)
            return None
        pending.polls += 1
        if now - pending.since < quiet_s:
            return None
        self.pending = None
        return "file changed"
