"""The policy in force, and hot reload: on SIGHUP and when the file changes on disk, or when a
center's verified bundle brings a new revision.

A new file is loaded and compiled in a worker thread (a 10,000-rule file takes a good part of a
second and must not stall the data path), checked completely, and only then swapped in with one
attribute assignment: every request is decided entirely under one revision. A file with errors is
refused with the same messages ``ztgate policy check`` prints, and the last good policy stays.

In center mode (:meth:`PolicyStore.from_center`) there is no file: the bundle subscriber
(:mod:`gateway.bundles`) compiles each verified revision and hands it to :meth:`PolicyStore.install`.
Either way, assets can be closed on top of the verified policy (:meth:`PolicyStore.set_refusals`: a
stale policy's ``on_stale = "closed"`` assets) without recompiling anything; ``current`` is what is
enforced, ``verified`` what was loaded.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gateway.audit import AuditLog
from policies import Policy, PolicyError, load_policy

log = logging.getLogger("ztgate.policy")

Listener = Callable[[Policy], None]


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


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
        self.origin = "file" if policy is None else "center"
        self.last_error: str | None = None
        self.reloads = 0
        self.failed_reloads = 0
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
        return policy.with_refusals(refusals) if refusals else policy

    def set_refusals(self, refusals: Mapping[str, str]) -> None:
        """Refuse every request on these assets (name -> reason) from now on, on top of the verified
        policy and of every later one; an empty mapping lifts them. Sessions are revalidated."""
        if dict(refusals) == dict(self.refusals):
            return
        self.refusals = dict(refusals)
        self.current = self._enforced(self.verified)
        self._notify()

    def _notify(self) -> None:
        for listener in self._listeners:
            listener(self.current)

    async def watch(self, interval_s: float = 1.0) -> None:
        """Poll the file's stat; reload when it changed. Runs until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            if _stat_key(self.path) != self._stat:
                try:
                    await self.reload("file changed")
                except Exception:  # a bug in a listener must not stop the watcher
                    log.exception("policy reload failed")
