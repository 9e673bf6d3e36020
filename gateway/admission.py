"""Who may start a TLS handshake with the overlay, and for how long: limits per source address and for
the whole listener, and the handshake timeout that shrinks under pressure.

An unauthenticated connection costs the gateway a socket, a slot and — once its ClientHello arrives —
a TLS handshake's CPU. Nobody without a certificate may keep a valid client out, so:

- each *source* (an IPv4 address, an IPv6 /64: one host's worth of addresses) has a token bucket for
  new connections and a cap on the connections it has pending (accepted, not yet authenticated);
- the table of sources is bounded: a source with nothing pending may be forgotten (least recently seen
  first); only sources with something pending are kept, and those are bounded by the pending cap;
- the handshake timeout scales down as pending handshakes approach the listener's cap, like a scaled
  timer of Envoy's overload manager: at ``timeout_scale_from`` of the cap it starts shrinking from
  ``handshake_timeout_s``, and at the cap it is ``handshake_timeout_min_s``.

Established, authenticated sessions are not counted here: nothing pending can displace them.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

# Refusal categories of this module (``session_refused`` events and ``ztgate_sessions_refused_total``).
RATE: Final = "rate"
SOURCE_LIMIT: Final = "source_limit"
CAPACITY: Final = "capacity"

# Live sessions one identity may hold at once, over all assets, unless `[gateway]
# max_sessions_per_identity` says otherwise. An agent's one identity carries every session of its host,
# so the default leaves room for a busy HMI host or SCADA server, while one stolen or misbehaving
# identity can hold at most about 5% of the default `max_sessions` (20,000) and cannot lock others out.
DEFAULT_MAX_SESSIONS_PER_IDENTITY: Final = 1024


@dataclass(frozen=True)
class HandshakeLimits:
    """The overlay listener's bounds on connections that have not authenticated yet (``[overlay]``)."""

    max_pending_handshakes: int = 4096  # accepted, not yet authenticated, all sources together
    max_pending_per_source: int = 64
    source_rate_per_s: float = 20.0  # new connections per second and source, sustained
    source_burst: int = 128  # ... and in a burst (the token bucket's size)
    max_sources: int = 65_536  # sources remembered for their token buckets
    handshake_timeout_s: float = 5.0  # accept to authenticated, while the listener is not under pressure
    handshake_timeout_min_s: float = 0.5  # ... when pending handshakes reach the cap
    timeout_scale_from: float = 0.5  # fraction of the cap where the timeout starts shrinking
    listen_backlog: int = 4096  # the kernel caps it at net.core.somaxconn
    refusal_audit_interval_s: float = 10.0  # refusals per source and kind are counted over this interval

    def __post_init__(self) -> None:
        if self.max_pending_handshakes < 1 or self.max_pending_per_source < 1 or self.max_sources < 1:
            raise ValueError("max_pending_handshakes, max_pending_per_source and max_sources must be >= 1")
        if not self.source_rate_per_s > 0 or self.source_burst < 1:
            raise ValueError("source_rate_per_s must be > 0 and source_burst >= 1")
        if not 0 < self.handshake_timeout_min_s <= self.handshake_timeout_s:
            raise ValueError("need 0 < handshake_timeout_min_s <= handshake_timeout_s")
        if not 0 <= self.timeout_scale_from < 1:
            raise ValueError("timeout_scale_from must be in [0, 1)")
        if not self.refusal_audit_interval_s > 0:
            raise ValueError("refusal_audit_interval_s must be > 0")

    def timeout_s(self, pending: int) -> float:
        """The handshake timeout when ``pending`` connections are waiting to authenticate."""
        pressure = pending / self.max_pending_handshakes
        if pressure <= self.timeout_scale_from:
            return self.handshake_timeout_s
        scale = min(1.0, (pressure - self.timeout_scale_from) / (1 - self.timeout_scale_from))
        low = self.handshake_timeout_min_s
        return low + (1 - scale) * (self.handshake_timeout_s - low)


def source_of(host: str) -> str:
    """The source a peer address counts against: the IPv4 address, or the IPv6 address's /64."""
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host.partition("%")[0])
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return f"{ipaddress.IPv6Network((address, 64), strict=False)}"


class _Source:
    __slots__ = ("pending", "stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.pending = 0


class SourceTable:
    """Token buckets and pending counts per source, in bounded memory."""

    def __init__(self, limits: HandshakeLimits) -> None:
        self._limits = limits
        # Sources with nothing pending, least recently seen first: these may be forgotten.
        self._idle: OrderedDict[str, _Source] = OrderedDict()
        self._busy: dict[str, _Source] = {}

    def __len__(self) -> int:
        return len(self._idle) + len(self._busy)

    def pending(self, source: str) -> int:
        entry = self._busy.get(source)
        return 0 if entry is None else entry.pending

    def admit(self, source: str, now: float) -> str | None:
        """Count a new connection from ``source``; None if it may proceed, else the refusal category."""
        limits = self._limits
        entry = self._busy.get(source)
        if entry is None:
            entry = self._idle.pop(source, None)
            if entry is None:
                if len(self) >= limits.max_sources:
                    if not self._idle:
                        return CAPACITY
                    self._idle.popitem(last=False)
                entry = _Source(float(limits.source_burst), now)
        if entry.pending >= limits.max_pending_per_source:
            self._keep(source, entry)
            return SOURCE_LIMIT
        entry.tokens = min(
            float(limits.source_burst), entry.tokens + (now - entry.stamp) * limits.source_rate_per_s
        )
        entry.stamp = now
        if entry.tokens < 1:
            self._keep(source, entry)
            return RATE
        entry.tokens -= 1
        entry.pending += 1
        self._keep(source, entry)
        return None

    def release(self, source: str) -> None:
        """One of ``source``'s pending connections authenticated or ended."""
        entry = self._busy.get(source)
        if entry is None:
            return
        entry.pending -= 1
        if entry.pending <= 0:
            del self._busy[source]
            self._idle[source] = entry

    def _keep(self, source: str, entry: _Source) -> None:
        if entry.pending > 0:
            self._busy[source] = entry
        else:
            self._idle[source] = entry
            self._idle.move_to_end(source)
