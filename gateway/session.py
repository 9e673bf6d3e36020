"""What every overlay session does whatever its protocol: bookkeeping, audit of its start and end,
continuous validation against the current policy and the client certificate's expiry, and the
backpressure switches between the client's transport and its requests."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from gateway.runtime import Runtime
from policies import Policy, SubjectView


@dataclass(frozen=True)
class SessionInfo:
    """Who is on the other end, as the overlay established it."""

    id: str
    identity: str
    asset: str
    peer: str
    alpn: str | None
    started: float  # wall clock
    certificate_not_after: float | None
    source: str = ""  # the peer's address as admission counts it (IPv4, or an IPv6 /64)


class Session(asyncio.Protocol):
    """Base of the protocol session engines. Subclasses implement ``data_received`` and
    ``_view_changed``; they call :meth:`pause_requests` / :meth:`resume_requests` for in-flight caps."""

    protocol_name: ClassVar[str]

    def __init__(self, runtime: Runtime, info: SessionInfo, view: SubjectView) -> None:
        self.runtime = runtime
        self.info = info
        self.id = info.id
        self.view = view
        self.transport: asyncio.Transport | None = None
        self.closing = False
        self.close_reason = "client closed the connection"
        self.requests = 0
        self.denied = 0
        # Requests by operation and decision, for the metrics: an allowed one under its bare operation
        # (the hot path's key: no tuple to build), others under (operation, verdict).
        self.counts: dict[int | str | tuple[int | str, str], int] = {}
        self._paused_by: set[str] = set()
        self._expiry: asyncio.TimerHandle | None = None
        # Moves later when the identity proves a renewed certificate (gateway/renewal_proof.py).
        self.certificate_not_after = info.certificate_not_after
        self._idle_check: asyncio.TimerHandle | None = None
        self._requests_at_idle_check = 0

    # ------------------------------------------------------------------------------- lifecycle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.runtime.sessions.add(self)
        self.runtime.audit.emit(
            {
                "event": "session_start",
                "session": self.id,
                "identity": self.info.identity,
                "asset": self.info.asset,
                "protocol": self.protocol_name,
                "peer": self.info.peer,
                "policy_revision": self.view.policy_revision,
            }
        )
        loop = asyncio.get_running_loop()
        self._schedule_expiry()
        idle_s = self.runtime.limits.idle_timeout_s
        if idle_s > 0:
            self._idle_check = loop.call_later(idle_s, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self.closing:
            self.close_reason = f"connection lost: {exc}"
        self.closing = True
        for timer in (self._expiry, self._idle_check):
            if timer is not None:
                timer.cancel()
        self.runtime.sessions.remove(self)
        self.runtime.metrics.add_requests(self.request_counts())
        self.counts.clear()
        self._release()
        self.runtime.audit.emit(
            {
                "event": "session_end",
                "session": self.id,
                "identity": self.info.identity,
                "asset": self.info.asset,
                "protocol": self.protocol_name,
                "reason": self.close_reason,
                "requests": self.requests,
                "denied": self.denied,
                "duration_s": round(self.runtime.clock() - self.info.started, 3),
            }
        )

    def close(self, reason: str) -> None:
        """End the session at once; what was in flight for it is answered to nobody."""
        if self.closing or self.transport is None:
            return
        self.closing = True
        self.close_reason = reason
        self.transport.abort()

    def _schedule_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        not_after = self.certificate_not_after
        if not_after is not None:
            delay_s = max(0.0, not_after - self.runtime.clock())
            loop = asyncio.get_running_loop()
            self._expiry = loop.call_later(delay_s, self.close, "client certificate expired")

    def extend_certificate(self, identity: str, source: str, not_after: float, policy: Policy) -> bool:
        """``identity`` proved, from ``source``, a certificate valid until ``not_after``: if this is
        its session from that source, the policy in force still lets it near the asset, and that is
        later than the session's end, the session now ends then. A session the policy no longer
        grants is left to revalidation."""
        if self.closing or identity != self.info.identity or source != self.info.source:
            return False
        current = self.certificate_not_after
        if current is None or not_after <= current or policy.view(identity, self.info.asset) is None:
            return False
        self.certificate_not_after = not_after
        self._schedule_expiry()
        return True

    def _release(self) -> None:
        """Drop references to shared resources; subclasses extend."""

    def _check_idle(self) -> None:
        # Compare request counts between checks instead of stamping a clock on every read: the data
        # path pays nothing, and a session idle for at least idle_timeout_s (at most twice that) ends.
        if self.requests == self._requests_at_idle_check and not self.busy():
            self.close(f"idle for {self.runtime.limits.idle_timeout_s:g} s")
            return
        self._requests_at_idle_check = self.requests
        self._idle_check = asyncio.get_running_loop().call_later(
            self.runtime.limits.idle_timeout_s, self._check_idle
        )

    def busy(self) -> bool:
        """Whether requests of this session are still on their way; subclasses say."""
        return False

    # ------------------------------------------------------------------- continuous validation

    def revalidate(self, policy: Policy) -> None:
        """Called after every policy swap: keep going under the new view or end the session."""
        view = policy.view(self.info.identity, self.info.asset)
        if view is None:
            self.close(f"policy {policy.revision} no longer grants access to {self.info.asset}")
            return
        if view.asset.protocol != self.protocol_name:
            self.close(f"asset {self.info.asset} is now {view.asset.protocol}")
            return
        self.view = view
        self._view_changed()

    def _view_changed(self) -> None:
        """The policy changed under a live session; subclasses refresh what they derived from the view."""

    # ------------------------------------------------------------------------------- metrics

    def _count(self, operation: int | str, verdict: str) -> None:
        key: int | str | tuple[int | str, str] = operation if verdict == "allow" else (operation, verdict)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1

    def request_counts(self) -> list[tuple[tuple[str, str, int | str, str], int]]:
        """This session's counts under the metrics' (protocol, asset, operation, decision) labels."""
        protocol, asset = self.protocol_name, self.info.asset
        return [
            ((protocol, asset, *key) if isinstance(key, tuple) else (protocol, asset, key, "allow"), count)
            for key, count in list(self.counts.items())
        ]

    # ------------------------------------------------------------------------- backpressure

    def pause_requests(self, why: str) -> None:
        if not self._paused_by and self.transport is not None:
            self.transport.pause_reading()
        self._paused_by.add(why)

    def resume_requests(self, why: str) -> None:
        self._paused_by.discard(why)
        if not self._paused_by and self.transport is not None and not self.closing:
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        # A client that does not read its replies may not send more requests either.
        self.pause_requests("client not reading")

    def resume_writing(self) -> None:
        self.resume_requests("client not reading")

    # ---------------------------------------------------------------------------------- status

    def describe(self) -> dict[str, Any]:
        return {
            "session": self.id,
            "identity": self.info.identity,
            "asset": self.info.asset,
            "protocol": self.protocol_name,
            "peer": self.info.peer,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.info.started)),
            "requests": self.requests,
            "denied": self.denied,
            "policy_revision": self.view.policy_revision,
            "paused": sorted(self._paused_by),
            "certificate_not_after": None
            if self.certificate_not_after is None
            else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.certificate_not_after)),
        }
