"""Allowed reads counted per interval and key for the audit: the part of the audit trail that runs once
per allowed read, on the event loop. :class:`gateway.audit.AuditLog` owns one, turns each interval's
aggregates into records, and hands a read that cannot be aggregated to its queue.

Compiled with mypyc (pyproject.toml [tool.ztgate] compiled); ``gateway/audit.py`` (threads, sinks, orjson)
is not.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Final

__all__ = ["NO_SPAN", "ReadAggregate", "ReadAggregates"]

NO_SPAN: Final = -1  # as ``hi``: the reads have no address span (lo is then meaningless)
# The low end of an empty span: above every address, so the first span's low end replaces it.
_EMPTY_LO: Final = 1 << 62

Fields = dict[str, Any]
# Where a read that cannot be aggregated goes: (fields, lo, hi, latency_s), one call per read.
Overflow = Callable[[Fields, int, int, float], None]


class ReadAggregate:
    """Running totals of one key within one interval. ``hi`` < 0: no read had a span."""

    __slots__ = ("count", "fields", "first", "hi", "last", "latency_max", "latency_sum", "lo")

    def __init__(self, fields: Fields, lo: int, hi: int, latency_s: float, now: float, count: int) -> None:
        self.fields = fields
        self.count = count
        self.first = now
        self.last = now
        self.lo = lo if hi >= 0 else _EMPTY_LO
        self.hi = hi if hi >= 0 else NO_SPAN
        self.latency_sum = latency_s * count
        self.latency_max = latency_s


class ReadAggregates:
    """The current interval's aggregates by key.

    :meth:`add` runs on one thread only (the event loop) and updates them without a lock. The audit
    writer, on its own thread, rotates ``current`` by binding a fresh dict (atomic under the GIL) and
    drains the old one once no :meth:`add` can still hold it: ``seq`` is odd exactly while an
    :meth:`add` runs (see ``AuditLog._collect_aggregates``)."""

    def __init__(self, clock: Callable[[], float], key_limit: int, overflow: Overflow) -> None:
        self.current: dict[Hashable, ReadAggregate] = {}
        self.seq = 0
        # Set when the audit log stops aggregating (it is closing): every read goes to ``overflow``.
        self.off = False
        self.clock = clock  # wall clock: an aggregate's first and last read
        self._key_limit = key_limit
        self._overflow = overflow

    def add(
        self,
        key: tuple[Hashable, ...],
        fields: Fields,
        lo: int,
        hi: int,
        latency_s: float,
        count: int = 1,
    ) -> None:
        """Count ``count`` allowed reads (the operations of one request) of the address span
        ``lo``..``hi`` (``hi`` = NO_SPAN: none) under ``key``; ``fields`` is copied at the interval's
        end, never changed."""
        if self.off:
            for _ in range(count):
                self._overflow(fields, lo, hi, latency_s)
            return
        self.seq += 1
        try:
            aggregates = self.current
            now: float = self.clock()
            agg = aggregates.get(key)
            if agg is None:
                if len(aggregates) >= self._key_limit:
                    # Bounded memory beats aggregation: the overflow goes through the bounded queue, one
                    # event per read, as with aggregation off (an OPC UA Read of 10 nodes is 10).
                    for _ in range(count):
                        self._overflow(fields, lo, hi, latency_s)
                else:
                    aggregates[key] = ReadAggregate(fields, lo, hi, latency_s, now, count)
                return
            agg.count += count
            agg.last = now
            agg.latency_sum += latency_s * count
            # Compare-and-store, not max()/min(): a builtin call costs more than the test.
            if latency_s > agg.latency_max:  # noqa: PLR1730
                agg.latency_max = latency_s
            if hi >= 0:
                if lo < agg.lo:  # noqa: PLR1730
                    agg.lo = lo
                if hi > agg.hi:  # noqa: PLR1730
                    agg.hi = hi
        finally:
            self.seq += 1
