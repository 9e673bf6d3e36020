"""Audit trail: one JSON line per decision and per session start/end, to one or more sinks.

The session code calls :meth:`AuditLog.emit` for every event it must record individually (session start and
end, denies, writes, refusals, upstream faults) and :meth:`AuditLog.aggregate_read` for every allowed read.
Both only append to memory; a daemon thread serialises with orjson and hands one batch per wake-up to every
sink (:mod:`gateway.sinks`: a file, stdout, syslog), each with a queue and a writer thread of its own, so a
slow or broken sink never stalls the data path or the other sinks. What cannot be queued or written is
counted (``dropped``, by kind) and reported in-band with an ``audit_dropped`` event as soon as a sink accepts
lines again.

The records' fields are the callers'; they are defined once in ``gateway/audit_schema.py`` and documented
in ``docs/audit.md``. This module adds two: ``gateway`` (the name of this gateway, when absent; ``center``
in a center's records, ``origin``) and ``time``
(RFC 3339 UTC with microseconds, always ``YYYY-MM-DDTHH:MM:SS.ffffffZ``; callers may pass an epoch float or
nothing, and the writer formats it, off the hot path). Unknown keys pass through.

Aggregated allowed reads carry the caller's fields plus ``"aggregated": true``, ``count``, ``interval_s``,
``time`` (first read), ``time_last`` (last read), ``latency_us`` ``{"avg": int, "max": int}`` and, when the
caller passed spans, ``span`` ``[lo, hi]``: the union of the address spans, named differently from
``address`` because it may cover addresses that no single request asked for. A read that cannot be
aggregated (aggregation off, or past ``aggregate_key_limit``) is written as one ordinary event with
``address`` (its span, when it has one) and ``latency_us``.

``audit_dropped`` events carry ``reason`` (``queue_full`` | ``write_error`` | ``spool_full`` | ``evicted`` |
``oversized``) and ``count``; ``audit_error`` replaces an event orjson could not encode and carries ``error``
and ``repr`` (a truncated repr of the event).

Bounds: the queue holds ``queue_limit`` events; past it ``emit`` refuses the *newest* allowed read and counts
it, and every other event (refusals, writes, session events) still goes in, up to twice ``queue_limit``; only
beyond that are they refused and counted too. The sinks have bounds of their own (:meth:`Sink.offer`): a
spooling sink never drops a refusal or a write decision while its spool has room; the writer thread here
waits for it instead. At most ``aggregate_key_limit`` keys are aggregated per
interval; reads under further keys are written one by one.

Threading: ``emit`` may be called from any thread (the queue-full counter is exact when only one does).
``aggregate_read`` (and ``reads.add``, which the Modbus session calls directly) must be called from one
thread only (the event loop): its per-key counters are updated without a lock. The event dict passed to
``emit`` belongs to the audit log afterwards: the writer adds ``gateway`` and formats ``time`` in place.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Final

import orjson

from gateway.read_aggregates import NO_SPAN, ReadAggregate, ReadAggregates
from gateway.sinks import KINDS, Record, Sink, record_kind
from gateway.sinks.file import FileSink, StdoutSink

__all__ = ["AuditLog", "ReadEvent"]

_log = logging.getLogger(__name__)

_DUMPS_OPTIONS: Final = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS
_REPR_LIMIT: Final = 2000
_REFUSED: Final = frozenset(("deny", "would-deny"))
# Refusals by rule (a metric): at most this many (rule, decision) series, so a policy of 10,000 rules
# cannot make 10,000 series; refusals by further rules count under OTHER_RULES.
RULE_SERIES_LIMIT: Final = 200
DEFAULT_DENY: Final = "(default deny)"
OTHER_RULES: Final = "(other rules)"

Event = dict[str, Any]


class ReadEvent(dict[str, Any]):
    """An allowed read's event (one read, or an interval's aggregate): the first to go when room runs out."""

    __slots__ = ()


class AuditLog:
    """Bounded, non-blocking audit writer with per-interval aggregation of allowed reads."""

    def __init__(
        self,
        *,
        gateway: str,
        file: str | os.PathLike[str] | None = None,
        stdout: bool = False,
        sinks: Sequence[Sink] = (),
        aggregate_reads_s: float = 1.0,
        queue_limit: int = 100_000,
        flush_interval_s: float = 0.05,
        clock: Callable[[], float] = time.time,
        aggregate_key_limit: int = 10_000,
        origin: str = "gateway",
    ) -> None:
        if aggregate_reads_s < 0 or not math.isfinite(aggregate_reads_s):
            raise ValueError(f"aggregate_reads_s must be a finite number >= 0, not {aggregate_reads_s!r}")
        if queue_limit < 1 or aggregate_key_limit < 1:
            raise ValueError("queue_limit and aggregate_key_limit must be >= 1")
        if not flush_interval_s > 0:
            raise ValueError(f"flush_interval_s must be > 0, not {flush_interval_s!r}")
        self._gateway = gateway
        self._origin = origin  # the field that names the writing process: "gateway", or "center"
        self.sinks: list[Sink] = list(sinks)
        if file is not None:
            self.sinks.append(FileSink("file", file, flush_interval_s=flush_interval_s))
        if stdout:
            self.sinks.append(StdoutSink("stdout", flush_interval_s=flush_interval_s))
        for sink in self.sinks:
            sink.marker = self._marker
        # Hand each record's event on to the sinks when one of them formats from it (not the flat line).
        self._hand_fields = any(sink.wants_fields for sink in self.sinks)
        self._aggregate_s = aggregate_reads_s
        self._aggregate_off = aggregate_reads_s == 0
        self._queue_limit = queue_limit
        self._key_limit = aggregate_key_limit
        self._flush_interval_s = flush_interval_s
        self._clock = clock

        # A deque with a bound we check ourselves: deque(maxlen) would evict the *oldest* events without
        # telling us. We refuse the newest instead and count it, so what is on disk is a gap-free prefix.
        self._queue: collections.deque[Event] = collections.deque()
        # Allowed reads counted per interval (gateway/read_aggregates.py, compiled): the sessions add to
        # it directly, the writer rotates and drains it.
        self.reads = ReadAggregates(clock, aggregate_key_limit, self._emit_read)
        self.reads.off = self._aggregate_off
        self._retired: tuple[dict[Hashable, ReadAggregate], int] | None = None
        self._deadline = self._next_boundary(clock())

        # Each counter has one writing thread (the emitting thread or the writer), so += loses no update.
        # (rule, decision) -> refusals the writer has seen, counted from the records (aggregates by count)
        self.refusals_by_rule: dict[tuple[str, str], int] = {}
        self._dropped_full = 0  # emit()
        self._dropped_full_kinds: dict[str, int] = dict.fromkeys(KINDS, 0)  # emit()
        self._handed = 0  # writer
        self._unserialisable = 0  # writer
        self._reported_full = 0

        self._full_streak = False
        self._full_seen = 0
        self._finished = False
        self._time_sec = -1
        self._time_prefix = ""

        self._cycle_lock = threading.Lock()  # writer side only: the thread, flush() and close()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- hot path ------------------------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        """Queue one event; never blocks. Drops and counts it when the queue is full: an allowed read at
        ``queue_limit``, any other event only at twice that."""
        queue = self._queue
        if len(queue) >= self._queue_limit and (
            type(event) is ReadEvent or len(queue) >= 2 * self._queue_limit or self._closed
        ):
            self._dropped_full += 1
            self._dropped_full_kinds[record_kind(event, type(event) is ReadEvent)] += 1
            return
        if "time" not in event:
            event["time"] = self._clock()
        queue.append(event)

    def aggregate_read(
        self,
        key: tuple[Hashable, ...],
        fields: Event,
        span: tuple[int, int] | None,
        latency_s: float,
        count: int = 1,
    ) -> None:
        """Count ``count`` allowed reads (the operations of one request) under ``key``; ``fields`` is
        copied at the interval's end, never mutated. (:attr:`reads` takes the span's ends apart.)"""
        if span is None:
            self.reads.add(key, fields, 0, NO_SPAN, latency_s, count)
        else:
            self.reads.add(key, fields, span[0], span[1], latency_s, count)

    def _emit_read(self, fields: Event, lo: int, hi: int, latency_s: float) -> None:
        event = ReadEvent(fields)  # the caller may reuse one fields dict for many reads
        event.setdefault("event", "decision")
        if hi != NO_SPAN:
            event["address"] = [lo, hi]
        event["latency_us"] = round(latency_s * 1e6)
        self.emit(event)

    @property
    def aggregates_reads(self) -> bool:
        """Whether allowed reads are counted per interval rather than written one by one."""
        return not self._aggregate_off

    # -- counters ------------------------------------------------------------------------------------------

    @property
    def dropped(self) -> int:
        """Events lost: refused because the queue was full, or lost by a sink (each sink's losses count)."""
        return self._dropped_full + sum(sum(sink.dropped.values()) for sink in self.sinks)

    def dropped_by_kind(self) -> dict[str, int]:
        """Events lost by kind (read, refusal, decision, event), the queue's and every sink's."""
        found = dict(self._dropped_full_kinds)
        for sink in self.sinks:
            for kind, count in sink.dropped.items():
                found[kind] += count
        return found

    @property
    def written(self) -> int:
        """Lines every sink has written (the count of the sink that wrote fewest)."""
        return min((sink.written for sink in self.sinks), default=0)

    @property
    def queued(self) -> int:
        return len(self._queue) + sum(sink.queued for sink in self.sinks)

    @property
    def healthy(self) -> bool:
        """Whether a record emitted now will be written: every sink takes records and the queue has room."""
        return len(self._queue) < self._queue_limit and all(sink.healthy for sink in self.sinks)

    @property
    def blocks_new_sessions(self) -> bool:
        """A full spool whose policy is ``block_new_sessions``: no new session may start."""
        return any(sink.blocks_new_sessions for sink in self.sinks)

    def status(self) -> dict[str, Any]:
        """The audit trail's state for /readyz."""
        return {
            "ready": self.healthy,
            "queued": len(self._queue),
            "blocks_new_sessions": self.blocks_new_sessions,
            "sinks": [sink.status() for sink in self.sinks],
        }

    def render_counters(self) -> dict[str, int]:
        lost: dict[str, int] = {}
        for sink in self.sinks:
            for reason, count in sink.lost.items():
                lost[reason] = lost.get(reason, 0) + count
        return {
            "dropped": self.dropped,
            "dropped_queue_full": self._dropped_full + lost.get("queue_full", 0),
            "dropped_write_error": lost.get("write_error", 0),
            "written": self.written,
            "queued": self.queued,
            "unserialisable": self._unserialisable,
        }

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the sinks and start the writer threads. A sink that cannot be opened is logged and retried."""
        if self._thread is not None or self._closed:
            raise RuntimeError("AuditLog.start() may be called once, before close()")
        for sink in self.sinks:
            sink.start()
        self._thread = threading.Thread(target=self._run, name="ztgate-audit", daemon=True)
        self._thread.start()

    def reopen(self) -> None:
        """Reopen files before the next batch (logrotate postrotate, SIGHUP). Safe in a signal handler."""
        for sink in self.sinks:
            sink.reopen()

    def flush(self) -> None:
        """Run one writer cycle now, in the calling thread, and have every sink write what it holds (tests,
        and callers that need the file current)."""
        with self._cycle_lock:
            if not self._finished:
                self._cycle(final=False)
        for sink in self.sinks:
            sink.drain()

    def close(self, timeout_s: float = 5.0) -> None:
        """Write pending aggregates and events, stop the writer, close the file; waits at most timeout_s."""
        if self._closed:
            return
        self._closed = True
        # From here on both entry points drop and count: nothing would ever write what they queue.
        self._aggregate_off = True
        self.reads.off = True
        self._queue_limit = 0
        thread = self._thread
        if thread is None:
            self._final_cycle()
            return
        self._stop.set()
        thread.join(timeout_s)
        if thread.is_alive():
            _log.warning(
                "audit writer did not finish within %.1f s; %d events queued", timeout_s, self.queued
            )

    def _run(self) -> None:
        # A periodic wake-up instead of a per-event signal keeps syscalls off the hot path.
        while not self._stop.wait(self._flush_interval_s):
            try:
                self.flush()
            except Exception:
                # The writer must outlive its own bugs; the data path does not depend on it.
                _log.exception("audit writer cycle failed")
        try:
            self._final_cycle()
        except Exception:
            _log.exception("audit writer failed to write its last batch")

    def _final_cycle(self) -> None:
        with self._cycle_lock:
            try:
                self._cycle(final=True)
            finally:
                self._finished = True
                for sink in self.sinks:
                    sink.close()

    # -- writer --------------------------------------------------------------------------------------------

    def _cycle(self, *, final: bool) -> None:
        now = self._clock()
        queue = self._queue
        # popleft() and append() are atomic on a deque, so taking a counted number of items is safe while
        # emit() keeps appending; iterating the deque itself would raise on a concurrent append.
        events = [queue.popleft() for _ in range(len(queue))]
        self._collect_aggregates(now, final, events)
        # The queue's drop report goes to every sink with this batch; each sink reports its own losses.
        full = self._dropped_full
        if full != self._reported_full:
            events.append(self._drop_event(now, "queue_full", full - self._reported_full))
        # Log when a streak of queue-full cycles begins, not on every cycle of it.
        new_drops = full != self._full_seen
        if new_drops and not self._full_streak:
            _log.warning("audit queue full: dropping events (%d so far)", full)
        self._full_streak, self._full_seen = new_drops, full
        if not events:
            return
        self._count_refusals(events)
        records = [self._record(event) for event in events]
        self._handed += len(records)
        self._reported_full = full
        for sink in self.sinks:
            sink.offer(records)

    def _count_refusals(self, events: list[Event]) -> None:
        counts = self.refusals_by_rule
        for event in events:
            decision = event.get("decision")
            if decision not in _REFUSED:
                continue
            rule = event.get("rule")
            label = rule if isinstance(rule, str) else DEFAULT_DENY
            if (label, decision) not in counts and len(counts) >= RULE_SERIES_LIMIT:
                label = OTHER_RULES
            count = event.get("count", 1) if event.get("aggregated") else 1
            key = (label, decision)
            counts[key] = counts.get(key, 0) + (count if isinstance(count, int) else 1)

    def _next_boundary(self, now: float) -> float:
        # Boundaries are aligned to multiples of the interval so aggregates from several gateways line up.
        if self._aggregate_s == 0:
            return math.inf
        return (math.floor(now / self._aggregate_s) + 1) * self._aggregate_s

    def _collect_aggregates(self, now: float, final: bool, events: list[Event]) -> None:
        # The hot path (ReadAggregates.add) mutates reads.current without a lock. The writer rotates it by
        # rebinding the attribute to a fresh dict, which is atomic under the GIL, so every add that starts
        # afterwards uses the new dict. One call may already hold the old dict in a local, though, if the
        # GIL switched threads inside it. reads.seq is odd exactly while a call is in progress (only the hot
        # path writes it): if it is even after the rebind, nobody can touch the old dict again and we drain
        # it now; if it is odd, we park the old dict until the sequence number has moved on, i.e. that call
        # has returned. This keeps counts exact without a lock or a syscall on the hot path. It relies on the
        # GIL; a free-threaded build would need a lock here.
        reads = self.reads
        if self._retired is not None:
            old, seq = self._retired
            if not final and reads.seq == seq:
                return
            self._retired = None
            self._drain_aggregates(old, events)
        if not final and now < self._deadline:
            return
        self._deadline = self._next_boundary(now)
        old = reads.current
        if not old:
            return
        reads.current = {}
        seq = reads.seq
        if seq & 1 and not final:
            self._retired = (old, seq)
        else:
            self._drain_aggregates(old, events)

    def _drain_aggregates(self, aggregates: dict[Hashable, ReadAggregate], events: list[Event]) -> None:
        for agg in list(aggregates.values()):
            event = ReadEvent(agg.fields)
            event.setdefault("event", "decision")
            event["time"] = agg.first
            event["time_last"] = self._format_time(agg.last)
            event["aggregated"] = True
            event["count"] = agg.count
            event["interval_s"] = self._aggregate_s
            if agg.hi >= 0:
                event["span"] = [agg.lo, agg.hi]
            event["latency_us"] = {
                "avg": round(agg.latency_sum / agg.count * 1e6),
                "max": round(agg.latency_max * 1e6),
            }
            events.append(event)

    def _drop_event(self, now: float, reason: str, count: int) -> Event:
        return {
            "time": now,
            self._origin: self._gateway,
            "event": "audit_dropped",
            "reason": reason,
            "count": count,
        }

    def _record(self, event: Event) -> Record:
        converted = self._unserialisable
        line = self._serialise(event)
        stamp = event.get("time")
        name = event.get("event")
        return Record(
            record_kind(event, type(event) is ReadEvent),
            stamp if isinstance(stamp, str) else "",
            name if isinstance(name, str) else "",
            line,
            # The event itself, unless the line says something else: a value converted (bytes as hex) or
            # the event replaced by an audit_error. The sink checks the rest (gateway/sinks/plain.py).
            event if self._hand_fields and converted == self._unserialisable else None,
        )

    def _marker(self, reason: str, count: int) -> Record:
        """A sink's report of records it lost (called from the sink's thread: no shared time cache)."""
        now = self._clock()
        micros = round(now * 1e6) % 1_000_000
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{micros:06d}Z"
        event = self._drop_event(now, reason, count)
        event["time"] = stamp
        return Record("event", stamp, "audit_dropped", orjson.dumps(event, option=_DUMPS_OPTIONS))

    def _serialise(self, event: Event) -> bytes:
        if self._origin not in event:
            event[self._origin] = self._gateway
        stamp = event.get("time")
        if isinstance(stamp, (int, float)) and not isinstance(stamp, bool):
            event["time"] = self._format_time(stamp)
        try:
            return orjson.dumps(event, default=self._default, option=_DUMPS_OPTIONS)
        except (orjson.JSONEncodeError, RecursionError) as exc:
            # Too large an int, invalid UTF-8, a cycle...: keep a record that something happened.
            self._unserialisable += 1
            try:
                text = repr(event)[:_REPR_LIMIT]
            except Exception:
                text = "<unrepresentable>"
            fallback = {
                "time": event.get("time") if isinstance(event.get("time"), str) else None,
                self._origin: self._gateway,
                "event": "audit_error",
                "error": str(exc),
                "repr": text,
            }
            return orjson.dumps(fallback, option=_DUMPS_OPTIONS)

    def _default(self, obj: Any) -> Any:
        # Called by orjson for types it does not know. Bytes are legitimate register payloads; anything else
        # is a caller bug we make visible rather than fatal.
        self._unserialisable += 1
        if isinstance(obj, (bytes, bytearray, memoryview)):
            return bytes(obj).hex()
        if isinstance(obj, (set, frozenset)):
            return list(obj)
        return str(obj)

    def _format_time(self, stamp: float) -> str:
        try:
            sec, micros = divmod(round(stamp * 1_000_000), 1_000_000)
            if sec != self._time_sec:
                self._time_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
                self._time_sec = sec
        except (OverflowError, OSError, ValueError):
            return repr(stamp)
        return f"{self._time_prefix}.{micros:06d}Z"
