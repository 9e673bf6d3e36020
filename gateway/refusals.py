"""The audit of refusals, aggregated so a flood cannot fill the disk: refused overlay connections per
source and kind (:class:`RefusalAudit`), and the requests one session had refused or answered as
overloaded per kind (:class:`SessionRefusals`).

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

import asyncio
import time
from collections.abc import Callable, Hashable
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


class _Kind:
    __slots__ = ("count", "first", "last", "summary")

    def __init__(self, summary: dict[str, Any]) -> None:
        self.summary = summary
        self.count = 0
        self.first = 0.0
        self.last = 0.0


class SessionRefusals:
    """One session's refused and overload-answered requests, audited per kind and interval.

    The first request of a kind (say: the function code, rule, code and action of a refusal) is written
    in full, as any decision record. Further ones are counted, and at the end of each interval one record
    with ``aggregated: true``, the exact ``count``, ``interval_s``, ``time`` (first counted) and
    ``time_last`` stands for them: the kind's fields (``summary``, the full record's without what differs
    from request to request), never another request's addresses or values. A kind with nothing counted
    for a whole interval is forgotten, so its next request is written in full again; :meth:`close` writes
    the last counts when the session ends. Every request is in exactly one record: a full one, or the
    ``count`` of an aggregate. Past ``max_kinds`` kinds, further ones are written in full (the session's
    pacing bounds how fast).
    """

    def __init__(
        self,
        audit: AuditLog,
        interval_s: float,
        *,
        clock: Callable[[], float] = time.time,
        max_kinds: int = 256,
    ) -> None:
        self._audit = audit
        self._interval_s = interval_s
        self._clock = clock
        self._max_kinds = max_kinds
        self._kinds: dict[Hashable, _Kind] = {}
        self._timer: asyncio.TimerHandle | None = None

    def note(self, key: Hashable, record: dict[str, Any], summary_keys: tuple[str, ...]) -> None:
        """One refused (or overload-answered) request of kind ``key``, with its full ``record``."""
        if not self._interval_s:
            self._audit.emit(record)
            return
        kind = self._kinds.get(key)
        if kind is None:
            if len(self._kinds) < self._max_kinds:
                summary = {name: record[name] for name in summary_keys if name in record}
                self._kinds[key] = _Kind(summary)
                if self._timer is None:
                    self._timer = asyncio.get_running_loop().call_later(self._interval_s, self._tick)
            self._audit.emit(record)
            return
        now = self._clock()
        if not kind.count:
            kind.first = now
        kind.count += 1
        kind.last = now

    def _tick(self) -> None:
        self._timer = None
        self._write(forget_quiet=True)
        if self._kinds:
            self._timer = asyncio.get_running_loop().call_later(self._interval_s, self._tick)

    def close(self) -> None:
        """The session ended: write what is counted, exactly."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._write(forget_quiet=False)
        self._kinds.clear()

    def _write(self, *, forget_quiet: bool) -> None:
        for key, kind in list(self._kinds.items()):
            if not kind.count:
                if forget_quiet:
                    del self._kinds[key]
                continue
            record = dict(kind.summary)
            record["aggregated"] = True
            record["count"] = kind.count
            record["interval_s"] = self._interval_s
            record["time"] = kind.first
            record["time_last"] = datetime.fromtimestamp(kind.last, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            self._audit.emit(record)
            kind.count = 0
