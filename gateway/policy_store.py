"""The policy in force, and hot reload: on SIGHUP and when the file changes on disk.

A new file is loaded and compiled in a worker thread (a 10,000-rule file takes a good part of a
second and must not stall the data path), checked completely, and only then swapped in with one
attribute assignment: every request is decided entirely under one revision. A file with errors is
refused with the same messages ``ztgate policy check`` prints, and the last good policy stays.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

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
    def __init__(self, path: Path, audit: AuditLog) -> None:
        self.path = path
        self._audit = audit
        self._listeners: list[Listener] = []
        self._stat = _stat_key(path)
        self.current: Policy = load_policy(
            path
        )  # at start-up a broken file is fatal: nothing to fall back on
        self.last_error: str | None = None
        self.reloads = 0
        self.failed_reloads = 0
        self._lock = asyncio.Lock()

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(policy)`` after every successful swap (to revalidate sessions, pools...)."""
        self._listeners.append(listener)

    async def reload(self, trigger: str) -> bool:
        """Load the file again and swap it in if it is valid. Returns whether the swap happened."""
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
            previous = self.current
            if policy.revision == previous.revision:
                self.last_error = None
                return False
            self.current = policy
            self.reloads += 1
            self.last_error = None
            log.info("policy %s -> %s (%s)", previous.revision, policy.revision, trigger)
            self._audit.emit(
                {
                    "event": "policy_loaded",
                    "trigger": trigger,
                    "file": str(self.path),
                    "policy_revision": policy.revision,
                    "previous_revision": previous.revision,
                    "rules": len(policy.rules),
                    "assets": sorted(policy.assets),
                }
            )
            for listener in self._listeners:
                listener(policy)
            return True

    async def watch(self, interval_s: float = 1.0) -> None:
        """Poll the file's stat; reload when it changed. Runs until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            if _stat_key(self.path) != self._stat:
                try:
                    await self.reload("file changed")
                except Exception:  # a bug in a listener must not stop the watcher
                    log.exception("policy reload failed")
