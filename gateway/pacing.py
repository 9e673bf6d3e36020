"""Pacing of what the gateway answers itself: refusals and overload answers cost a session nothing at
the device, so without a budget one client could have them answered as fast as it can send, and one
identity on many sessions faster still (issue 16: a million local answers in 20 s).

Each session has a token bucket, and all sessions of one identity share another; every locally
answered request takes a token from both. A bucket holds one second's worth of its rate, and may run
into debt by the request that empties it: the request is answered, and the session then stops reading
its client until the debt is paid. Backpressure rather than closing: a real client (an HMI, a
driver) just sees slower answers to its refused requests and never has to reconnect, and the other
sessions and identities are not slowed at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenBucket:
    rate_per_s: float
    tokens: float = field(init=False)
    stamp: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.tokens = self.rate_per_s

    def take(self, now: float) -> float:
        """Take one token; 0 when there was one, else the seconds until the debt is paid."""
        tokens = min(self.rate_per_s, self.tokens + (now - self.stamp) * self.rate_per_s) - 1.0
        self.tokens = tokens
        self.stamp = now
        return 0.0 if tokens >= 0 else -tokens / self.rate_per_s


class IdentityBuckets:
    """One bucket per identity with a live session; forgotten when its last session ends."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[TokenBucket, int]] = {}

    def acquire(self, identity: str, rate_per_s: float) -> TokenBucket:
        bucket, users = self._buckets.get(identity) or (TokenBucket(rate_per_s), 0)
        self._buckets[identity] = (bucket, users + 1)
        return bucket

    def release(self, identity: str) -> None:
        bucket, users = self._buckets[identity]
        if users <= 1:
            del self._buckets[identity]
        else:
            self._buckets[identity] = (bucket, users - 1)

    def __len__(self) -> int:
        return len(self._buckets)
