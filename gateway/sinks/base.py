"""The part every audit sink shares: records, their kinds, a bounded queue and a writer thread.

A record's *kind* decides what may be dropped first when something is full:

============ ===========================================================================================
``read``     an allowed read (one read, or an interval's aggregate of them)
``refusal``  a refused request or session (a deny, a would-deny, ``session_refused``; a center's
             ``*_refused``)
``decision`` every other decision (writes, and reads the device failed)
``event``    everything else: session start and end, policy loads, upstream faults, drop reports
============ ===========================================================================================
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

import orjson

from gateway.audit_formats import FORMATS, formatter
from gateway.sinks.plain import json_plain

__all__ = ["KINDS", "Record", "Sink", "record_kind"]

_log = logging.getLogger(__name__)

KINDS: Final = ("read", "refusal", "decision", "event")
_REFUSED: Final = frozenset(("deny", "would-deny"))
# What a queued record costs in memory besides its line: the tuple, its two strings and the bytes header.
RECORD_OVERHEAD_BYTES: Final = 200
# And a record that carries its event: the dict and its values, some three times the line (measured on a
# Modbus write's record: 400 bytes of line, 630 of dict, 1,760 with values no other record shares).
EVENT_BYTES_PER_LINE_BYTE: Final = 3


class Record(NamedTuple):
    """One serialised audit event: ``line`` is its JSON text (the flat ``ztgate`` format) with the
    newline, ``time`` its RFC 3339 stamp and ``event`` its event type (the syslog sink puts both in the
    header without parsing).

    ``fields`` is the event the line was serialised from, when the audit log hands it on (a sink in
    another format than ``ztgate`` wants it, and serialising it called for no conversion): a sink formats
    it instead of parsing the line back when it is plain JSON (:func:`json_plain`). Nobody changes it
    once it is in a record."""

    kind: str
    time: str
    event: str
    line: bytes
    fields: dict[str, Any] | None = None


def record_kind(event: dict[str, Any], read: bool) -> str:
    """The kind of an event; ``read`` is True for the allowed reads the audit log aggregates."""
    if read:
        return "read"
    name = event.get("event")
    # A refused request or session, and whatever else was refused (a center's enrollment, renewal, call).
    if event.get("decision") in _REFUSED or (isinstance(name, str) and name.endswith("_refused")):
        return "refusal"
    if name == "decision":
        return "decision"
    return "event"


def _cost(record: Record) -> int:
    """A record's bytes as a sink's queue counts them against ``hold_bytes``."""
    line = len(record.line)
    if record.fields is None:
        return line + RECORD_OVERHEAD_BYTES
    return line * (1 + EVENT_BYTES_PER_LINE_BYTE) + RECORD_OVERHEAD_BYTES


def _size(records: Sequence[Record]) -> int:
    return sum(map(_cost, records))


def _ztgate_line(record: Record) -> bytes:
    return record.line


def _ztgate_text(record: Record) -> bytes:
    return record.line.rstrip(b"\n")


def line_formatter(fmt: str, *, newline: bool = True) -> Callable[[Record], bytes]:
    """How a sink turns a record into its line in ``fmt`` (gateway/audit_formats.py): with the newline
    (a file's line), or without it (``newline=False``: a syslog message's MSG, with no copy to add and
    then strip it).

    The other formats say what the serialised flat line says, which is what was recorded (bytes already
    hex, an unencodable event already an ``audit_error``), so every format of a record says the same thing
    as the file: they start from the record's event when it parses back from the line unchanged (the
    audit log handed it on, and it is plain JSON), and from the line parsed back otherwise."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown audit format {fmt!r}; one of {', '.join(FORMATS)}")
    if fmt == "ztgate":
        return _ztgate_line if newline else _ztgate_text

    format_event = formatter(fmt)  # looked up once: the writer calls text() for every record

    def text(record: Record) -> bytes:
        return format_event(recorded(record))

    def formatted(record: Record) -> bytes:
        return text(record) + b"\n"

    return formatted if newline else text


def recorded(record: Record) -> dict[str, Any]:
    """The event as the record's line says it: its fields when they are plain JSON (the same values and
    types as the line parsed back; no parse), else the line parsed."""
    fields = record.fields
    if fields is not None and json_plain(fields):
        return fields
    parsed: dict[str, Any] = orjson.loads(record.line)
    return parsed


# A report of records a sink lost: (reason, count) -> a record to write in-band once the sink works again.
MarkerFactory = Callable[[str, int], Record]


class Sink:
    """A bounded queue in front of one destination, written by a thread of its own.

    Subclasses implement :meth:`_deliver` (write one batch; True when it was taken) and may override
    :meth:`_open`, :meth:`_close` and :meth:`status`. What cannot be queued or written is counted per kind
    (``dropped``) and reported in-band with an ``audit_dropped`` record once the sink writes again.
    """

    type_name = "sink"
    default_format = "ztgate"

    def __init__(
        self,
        name: str,
        *,
        queue_limit: int = 100_000,
        flush_interval_s: float = 0.05,
        format: str | None = None,
        hold_bytes: int | None = None,
    ) -> None:
        if queue_limit < 1:
            raise ValueError("queue_limit must be >= 1")
        if hold_bytes is not None and hold_bytes < 1:
            raise ValueError("hold_bytes must be >= 1")
        self.name = name
        self.format = format or self.default_format
        self.line = line_formatter(self.format)  # called by the writer thread, once per record
        # A format other than the flat line's is made from the event: the audit log hands it on.
        self.wants_fields = self.format != "ztgate"
        self.queue_limit = queue_limit
        self.hold_bytes = hold_bytes
        self.held = 0  # times the audit log's writer waited for this sink's queue to go to the spool
        # The queue's bytes are offered minus taken: each counter has one writing thread at a time (offer,
        # and the writer cycle under _lock), so neither loses an update.
        self._offered_bytes = 0
        self._taken_bytes = 0
        self.flush_interval_s = flush_interval_s
        self.marker: MarkerFactory | None = None
        self._queue: collections.deque[Record] = collections.deque()
        self.dropped: dict[str, int] = dict.fromkeys(KINDS, 0)  # by kind
        self.lost: dict[str, int] = {}  # by reason: queue_full, write_error, spool_full, oversized
        self.written = 0
        self.cpu_s = 0.0  # the writer's CPU time in _deliver (formatting and writing), all batches
        self._unreported: dict[str, int] = {}  # reason -> records lost and not yet reported in-band
        self.failing = False
        self._lock = threading.Lock()  # one writer cycle at a time: the thread, drain() and close()
        # The loss counters change together (dropped, lost, _unreported) from two threads: the caller of
        # offer() and the writer cycle. Under one lock, a reader (losses(), status()) never sees a record
        # counted by kind and not yet by reason, and neither thread loses the other's update.
        self._counters = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- the audit log's side ------------------------------------------------------------------------------

    def offer(self, records: Sequence[Record]) -> None:
        """Queue a batch; never blocks the caller unless the sink holds (below). Past ``queue_limit`` allowed
        reads are dropped (counted by kind). Every other record goes in: a sink without ``hold_bytes`` takes
        them up to twice ``queue_limit`` and drops the rest; a sink with ``hold_bytes`` (a spooling sink)
        never drops one: once its queue holds that many bytes, the caller waits while the queue goes to the
        spool (:meth:`_hold`)."""
        queue = self._queue
        if self.hold_bytes is not None:
            self._offer_held(records)
        elif self.queue_limit - len(queue) >= len(records):
            queue.extend(records)
        else:
            lost = []
            for record in records:
                limit = self.queue_limit if record.kind == "read" else 2 * self.queue_limit
                if len(queue) < limit:
                    queue.append(record)
                else:
                    lost.append(record.kind)
            self.lose(lost, "queue_full")
        self._wake.set()

    def _offer_held(self, records: Sequence[Record]) -> None:
        queue, limit, hold_bytes = self._queue, self.queue_limit, self.hold_bytes
        assert hold_bytes is not None
        total = _size(records)
        if len(queue) + len(records) <= limit and self.queued_bytes + total <= hold_bytes:
            queue.extend(records)
            self._offered_bytes += total
            return
        lost = []
        for record in records:
            size = _cost(record)
            if record.kind == "read":
                if len(queue) >= limit or self.queued_bytes + size > hold_bytes:
                    lost.append("read")
                    continue
            elif self.queued_bytes + size > hold_bytes and not self._hold():
                lost.append(record.kind)
                continue
            queue.append(record)
            self._offered_bytes += size
        self.lose(lost, "queue_full")

    def _hold(self) -> bool:
        """Write the queue out in the calling thread (the audit log's writer), in order, so that the next
        record has room; False once the sink is closed."""
        with self._lock:
            if self._closed:
                return False
            self._cycle()
        self.held += 1
        return True

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        """The queue's records, in bytes as counted against ``hold_bytes``."""
        return self._offered_bytes - self._taken_bytes

    @property
    def healthy(self) -> bool:
        """Whether records given to this sink now reach its destination or its spool (and its queue has
        room for more than reads)."""
        if self.hold_bytes is not None:  # a holding sink loses no record past queue_limit but reads
            return not self.failing
        return not self.failing and len(self._queue) < self.queue_limit

    @property
    def blocks_new_sessions(self) -> bool:
        return False

    def losses(self) -> tuple[dict[str, int], dict[str, int]]:
        """The records lost so far, by kind and by reason, at one instant: the two add up to the same."""
        with self._counters:
            return dict(self.dropped), dict(self.lost)

    def status(self) -> dict[str, Any]:
        dropped, lost = self.losses()
        return {
            "name": self.name,
            "type": self.type_name,
            "format": self.format,
            "ready": self.healthy,
            "state": "ok" if self.healthy else "failing",
            "queued": self.queued,
            "queued_bytes": self.queued_bytes,
            "held": self.held,
            "written": self.written,
            "cpu_s": round(self.cpu_s, 6),
            "dropped": dropped,
            "lost": lost,
        }

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            self._open()
        self._thread = threading.Thread(target=self._run, name=f"ztgate-audit-{self.name}", daemon=True)
        self._thread.start()

    def reopen(self) -> None:
        """Reopen the destination before the next batch (SIGHUP). Safe in a signal handler."""

    def drain(self) -> None:
        """Write what is queued now, in the calling thread."""
        with self._lock:
            if not self._closed:
                self._cycle()

    def close(self, timeout_s: float = 5.0) -> None:
        thread = self._thread
        if thread is not None:
            self._stop.set()
            self._wake.set()
            thread.join(timeout_s)
            if thread.is_alive():
                _log.warning("audit sink %s did not finish within %.1f s", self.name, timeout_s)
                return
        with self._lock:
            if not self._closed:
                try:
                    self._cycle()
                finally:
                    self._closed = True
                    self._close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            try:
                self.drain()
            except Exception:
                _log.exception("audit sink %s: writer cycle failed", self.name)

    # -- writer --------------------------------------------------------------------------------------------

    def _cycle(self) -> None:
        queue = self._queue
        records = [queue.popleft() for _ in range(len(queue))]
        if self.hold_bytes is not None:
            self._taken_bytes += _size(records)
        with self._counters:
            reported = dict(self._unreported)
        markers = self._markers(reported)
        if not records and not markers:
            return
        batch = records + markers
        started_s = time.thread_time()
        delivered = self._deliver(batch)
        self.cpu_s += time.thread_time() - started_s
        if delivered:
            self.written += len(batch)
            # _deliver may itself have lost records (a full spool): those are reported next time.
            with self._counters:
                for reason, count in reported.items():
                    self._unreported[reason] -= count
            if self.failing:
                self.failing = False
                _log.warning("audit sink %s writable again", self.name)
        else:
            self.lose([record.kind for record in records], "write_error")

    def _markers(self, reported: dict[str, int]) -> list[Record]:
        marker = self.marker
        if marker is None:
            return []
        return [marker(reason, count) for reason, count in reported.items() if count]

    def lose(self, kinds: Sequence[str], reason: str) -> None:
        """Count records of these kinds as lost for ``reason``, to be reported in-band."""
        if not kinds:
            return
        with self._counters:
            dropped = self.dropped
            for kind in kinds:
                dropped[kind] += 1
            self.lost[reason] = self.lost.get(reason, 0) + len(kinds)
            self._unreported[reason] = self._unreported.get(reason, 0) + len(kinds)

    def note_failure(self, exc: BaseException) -> None:
        # Log once per failure streak: a full disk would otherwise log twenty lines a second.
        if not self.failing:
            self.failing = True
            _log.warning(
                "audit sink %s failed (%s); counting dropped records until it recovers", self.name, exc
            )

    def _open(self) -> None:
        """Open the destination at start; a failure is noted and retried by the writer."""

    def _close(self) -> None:
        """Release the destination."""

    def _deliver(self, records: list[Record]) -> bool:
        raise NotImplementedError
