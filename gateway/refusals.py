"""The audit of refused overlay connections, aggregated per source and kind so a flood cannot fill the disk.

The first refusal of a kind (``category``) from a source is written in full, as a ``session_refused``
event with the peer and the reason. Further refusals of that kind from that source are counted, and at
the end of each interval one event with ``aggregated: true`` and the exact ``count`` stands for them.
A source whose refusals of a kind stopped for a whole interval is forgotten: its next one is written in
full again. So a flood from one source writes one full line, then one line per interval.

The number of (source, kind) pairs held is bounded; past the bound, further sources are counted
together under the source ``"*"``. Every refusal is counted exactly once: in a full event, or in the
``count`` of an aggregated one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from gateway.audit import AuditLog

OTHER_SOURCES = "*"


class _Count:
    __slots__ = ("asset", "count", "first", "identity", "last", "reason")

    def __init__(self) -> None:
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.reason = ""
        self.asset: str | None = None
        self.identity: str | None = None


class RefusalAudit:
    def __init__(
        self,
        audit: AuditLog,
        *,
        interval_s: float,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._audit = audit
        self._interval_s = interval_s
        self._max_keys = max_keys
        self._clock = clock
        self._counts: dict[tuple[str, str], _Count] = {}
        self._due = clock() + interval_s

    def refused(
        self,
        source: str,
        peer: str,
        category: str,
        reason: str,
        *,
        asset: str | None = None,
        identity: str | None = None,
    ) -> None:
        key = (source, category)
        entry = self._counts.get(key)
        if entry is None and len(self._counts) >= self._max_keys:
            key = (OTHER_SOURCES, category)
            entry = self._counts.get(key)
        if entry is not None:
            now = self._clock()
            if entry.count == 0:
                entry.first = now
                entry.reason = reason
                entry.asset, entry.identity = asset, identity
            entry.count += 1
            entry.last = now
            return
        self._counts[key] = _Count()
        event: dict[str, Any] = {
            "event": "session_refused",
            "peer": peer,
            "source": source,
            "category": category,
            "reason": reason,
        }
        if asset is not None:
            event["asset"] = asset
        if identity is not None:
            event["identity"] = identity
        self._audit.emit(event)

    def tick(self) -> None:
        """Write the aggregates when the interval is over; call often (the listener's sweep does)."""
        if self._clock() >= self._due:
            self.flush()

    def flush(self) -> None:
        """Write one aggregated event per (source, kind) counted since the last flush."""
        self._due = self._clock() + self._interval_s
        for key, entry in list(self._counts.items()):
            if entry.count == 0:
                del self._counts[key]  # quiet for a whole interval: its next refusal is written in full
                continue
            source, category = key
            event: dict[str, Any] = {
                "event": "session_refused",
                "aggregated": True,
                "source": source,
                "category": category,
                "count": entry.count,
                "interval_s": self._interval_s,
                "time": entry.first,
                "time_last": datetime.fromtimestamp(entry.last, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "reason": entry.reason,  # the first counted one's
            }
            if entry.asset is not None:
                event["asset"] = entry.asset
            if entry.identity is not None:
                event["identity"] = entry.identity
            self._audit.emit(event)
            entry.count = 0
