"""Audit trail: JSON lines, aggregation of allowed reads, bounded queue, sink failures.

The writer is driven synchronously with flush() and a fake clock; only the tests named *_thread start the
real writer thread, and they wait on close(), not on sleeps.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import audit_formats
from gateway.audit import RULE_SERIES_LIMIT, AuditLog
from gateway.sinks import Record
from gateway.sinks.base import RECORD_OVERHEAD_BYTES
from gateway.sinks.file import FileSink
from gateway.sinks.syslog import SyslogSettings, SyslogSink
from tests.audit_validators import ecs_problems, ocsf_problems, parse_cef

T0 = 1_700_000_000.0  # a whole second, so interval boundaries fall on T0 + n
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def read_fields(session: str = "s1") -> dict[str, Any]:
    return {
        "event": "decision",
        "session": session,
        "identity": "spiffe://plant1.example/user/alice",
        "asset": "plc-1",
        "protocol": "modbus",
        "operation": "read_holding_registers",
        "unit": 1,
        "fc": 3,
        "decision": "allow",
        "rule": "operators-read",
        "policy_revision": 7,
    }


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


def make(path: Path | None, clock: FakeClock, **kwargs: Any) -> AuditLog:
    return AuditLog(gateway="gw-1", file=path, clock=clock, **kwargs)


def test_events_are_json_lines_with_common_fields(path: Path, clock: FakeClock) -> None:
    log = make(path, clock)
    log.emit({"event": "session_start", "session": "s1", "identity": "spiffe://plant1.example/user/alice"})
    clock.now += 0.25
    log.emit(
        {
            "event": "decision",
            "session": "s1",
            "asset": "plc-1",
            "protocol": "modbus",
            "unit": 1,
            "fc": 16,
            "address": [40, 41],
            "values": [1500, 7],
            "decision": "deny",
            "rule": None,
            "policy_revision": 7,
            "latency_us": 12,
        }
    )
    log.emit({"event": "session_end", "session": "s1", "time": "2024-01-01T00:00:00.000000Z"})
    assert log.queued == 3
    log.flush()

    start, deny, end = lines(path)
    assert start["event"] == "session_start"
    assert start["time"] == "2023-11-14T22:13:20.000000Z"
    assert deny["time"] == "2023-11-14T22:13:20.250000Z"
    assert RFC3339.match(deny["time"])
    assert {start["gateway"], deny["gateway"], end["gateway"]} == {"gw-1"}
    assert deny["address"] == [40, 41]
    assert deny["values"] == [1500, 7]
    assert deny["decision"] == "deny"
    assert deny["rule"] is None
    assert end["time"] == "2024-01-01T00:00:00.000000Z"  # a caller's string is kept
    assert (log.written, log.dropped, log.queued) == (3, 0, 0)
    assert log.render_counters()["written"] == 3


def test_stdout_sink(capsys: pytest.CaptureFixture[str], clock: FakeClock) -> None:
    log = make(None, clock, stdout=True)
    log.emit({"event": "session_start", "session": "s1"})
    log.flush()
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    assert orjson.loads(out[0])["event"] == "session_start"


def test_file_and_stdout_together(path: Path, capsys: pytest.CaptureFixture[str], clock: FakeClock) -> None:
    log = make(path, clock, stdout=True)
    log.emit({"event": "upstream", "asset": "plc-1", "error": "timeout"})
    log.flush()
    assert [orjson.loads(line) for line in capsys.readouterr().out.splitlines()] == lines(path)
    assert log.written == 1


def test_reads_in_one_interval_make_one_event(path: Path, clock: FakeClock) -> None:
    log = make(path, clock)
    key = ("s1", "plc-1", 1, 3, "operators-read")
    fields = read_fields()
    clock.now = T0 + 0.1
    log.aggregate_read(key, fields, (10, 19), 0.000100)
    clock.now = T0 + 0.5
    log.aggregate_read(key, fields, (0, 4), 0.000300)
    clock.now = T0 + 0.9
    log.aggregate_read(key, fields, (100, 100), 0.000200)
    log.flush()
    assert lines(path) == []  # the interval is still open

    clock.now = T0 + 1.0
    log.flush()
    [event] = lines(path)
    assert event["aggregated"] is True
    assert event["count"] == 3
    assert event["span"] == [0, 100]
    assert event["latency_us"] == {"avg": 200, "max": 300}
    assert event["interval_s"] == 1.0
    assert event["time"] == "2023-11-14T22:13:20.100000Z"
    assert event["time_last"] == "2023-11-14T22:13:20.900000Z"
    assert event["gateway"] == "gw-1"
    for name, value in fields.items():
        assert event[name] == value
    assert "aggregated" not in fields  # the caller's dict is not touched


def test_next_interval_starts_fresh(path: Path, clock: FakeClock) -> None:
    log = make(path, clock)
    key = ("s1", "plc-1", 1, 3, "operators-read")
    for _ in range(5):
        log.aggregate_read(key, read_fields(), (0, 9), 0.0001)
    clock.now = T0 + 1.2
    log.flush()
    log.aggregate_read(key, read_fields(), (50, 59), 0.0004)
    clock.now = T0 + 2.0
    log.flush()
    first, second = lines(path)
    assert (first["count"], first["span"]) == (5, [0, 9])
    assert (second["count"], second["span"], second["latency_us"]) == (1, [50, 59], {"avg": 400, "max": 400})
    clock.now = T0 + 5.0
    log.flush()
    assert len(lines(path)) == 2  # an idle interval writes nothing


def test_two_keys_make_two_events(path: Path, clock: FakeClock) -> None:
    log = make(path, clock)
    for session in ("s1", "s2"):
        for _ in range(3):
            log.aggregate_read((session, "plc-1", 1, 3, "r"), read_fields(session), (0, 1), 0.0001)
    clock.now = T0 + 1
    log.flush()
    events = lines(path)
    assert sorted((e["session"], e["count"]) for e in events) == [("s1", 3), ("s2", 3)]


def test_read_without_span(path: Path, clock: FakeClock) -> None:
    log = make(path, clock)
    log.aggregate_read(("s1", "diag"), read_fields(), None, 0.0001)
    log.aggregate_read(("s1", "diag"), read_fields(), None, 0.0001)
    log.close()
    [event] = lines(path)
    assert event["count"] == 2
    assert "span" not in event


def test_aggregation_off_writes_every_read(path: Path, clock: FakeClock) -> None:
    log = make(path, clock, aggregate_reads_s=0)
    key = ("s1", "plc-1", 1, 3, "operators-read")
    fields = read_fields()
    log.aggregate_read(key, fields, (0, 9), 0.000150)
    clock.now += 0.001
    log.aggregate_read(key, fields, (10, 19), 0.000250)
    log.flush()
    first, second = lines(path)
    assert (first["address"], first["latency_us"]) == ([0, 9], 150)
    assert (second["address"], second["latency_us"]) == ([10, 19], 250)
    assert "aggregated" not in first
    assert first["time"] == "2023-11-14T22:13:20.000000Z"
    assert second["time"] == "2023-11-14T22:13:20.001000Z"
    assert "address" not in fields


def test_denies_are_written_one_by_one(path: Path, clock: FakeClock) -> None:
    log = make(path, clock)
    deny = read_fields() | {"decision": "deny", "rule": None, "address": [2000, 2000]}
    for _ in range(4):
        log.emit(dict(deny))
    log.aggregate_read(("s1", "plc-1", 1, 3, "operators-read"), read_fields(), (0, 1), 0.0001)
    clock.now = T0 + 1
    log.flush()
    events = lines(path)
    assert [e["decision"] for e in events if not e.get("aggregated")] == ["deny"] * 4
    assert [e["count"] for e in events if e.get("aggregated")] == [1]


def test_queue_full_drops_newest_and_reports(path: Path, clock: FakeClock) -> None:
    log = make(path, clock, queue_limit=3)
    started = time.perf_counter()
    for i in range(10):
        log.emit({"event": "decision", "n": i})
    assert time.perf_counter() - started < 0.1  # never waits for the writer
    # Decisions other than allowed reads have a reserve as large again as the queue before they drop.
    assert (log.queued, log.dropped) == (6, 4)
    assert log.dropped_by_kind() == {"read": 0, "refusal": 0, "decision": 4, "event": 0}
    log.flush()
    events = lines(path)
    assert [e["n"] for e in events[:6]] == [0, 1, 2, 3, 4, 5]
    assert events[6] == events[6] | {"event": "audit_dropped", "reason": "queue_full", "count": 4}
    counters = log.render_counters()
    assert (counters["dropped"], counters["dropped_queue_full"], counters["written"]) == (4, 4, 7)
    log.flush()
    assert len(lines(path)) == 7  # reported once


def test_queue_full_drops_reads_before_refusals(path: Path, clock: FakeClock) -> None:
    log = make(path, clock, queue_limit=3, aggregate_reads_s=0)
    for i in range(3):
        log.aggregate_read(("s1",), read_fields() | {"n": i}, (i, i), 0.0001)
    log.aggregate_read(("s1",), read_fields() | {"n": 3}, (3, 3), 0.0001)  # a read past the limit: dropped
    log.emit({"event": "decision", "decision": "deny", "n": 4})  # a refusal past the limit: kept
    assert log.dropped_by_kind() == {"read": 1, "refusal": 0, "decision": 0, "event": 0}
    log.flush()
    assert [e.get("n") for e in lines(path)] == [0, 1, 2, 4, None]


def test_write_error_is_counted_and_writer_recovers(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "audit.jsonl"
    path.mkdir()  # opening a directory for writing fails like a vanished volume would
    log = make(path, clock)
    log.start()  # a sink that cannot be opened is not fatal
    log.emit({"event": "decision", "n": 1})
    log.emit({"event": "decision", "n": 2})
    log.flush()
    assert (log.dropped, log.written) == (2, 0)
    for _ in range(3):
        log.flush()  # the failing drop report is retried but not counted as another drop
    assert log.render_counters()["dropped_write_error"] == 2

    path.rmdir()
    log.emit({"event": "decision", "n": 3})
    log.close()
    # The sink's thread may write its loss report before or after the next event: both are there once.
    events = sorted(lines(path), key=lambda event: event["event"])
    assert events[0] | {"event": "audit_dropped", "reason": "write_error", "count": 2} == events[0]
    assert events[1]["n"] == 3
    assert (log.dropped, log.written) == (2, 2)


def test_writer_thread_survives_a_failing_cycle(path: Path) -> None:
    class FlakyClock:
        armed = True

        def __call__(self) -> float:
            if self.armed:
                self.armed = False
                raise RuntimeError("bug in a writer cycle")
            return T0

    flaky = FlakyClock()
    log = AuditLog(gateway="gw-1", file=path, clock=lambda: T0, flush_interval_s=0.001)
    log._clock = flaky  # armed after construction, so the first writer cycle is the one that fails
    log.start()
    deadline = time.monotonic() + 10
    while flaky.armed and time.monotonic() < deadline:
        time.sleep(0.001)
    assert not flaky.armed
    log.emit({"event": "decision", "n": 1})
    log.close()
    assert [e["n"] for e in lines(path)] == [1]


def test_torn_line_is_terminated_after_a_failed_write(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "audit.jsonl"
    path.mkdir()
    log = make(path, clock)
    log.emit({"event": "decision", "n": 1})
    log.flush()
    path.rmdir()
    path.write_bytes(b'{"event":"decis')  # what a write cut off by a full disk leaves behind
    log.emit({"event": "decision", "n": 2})
    log.flush()
    raw = path.read_bytes().splitlines()
    assert raw[0] == b'{"event":"decis'
    assert orjson.loads(raw[1])["n"] == 2


def test_follows_rotation_and_reopen(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "audit.jsonl"
    log = make(path, clock)
    log.emit({"n": 1})
    log.flush()
    path.rename(tmp_path / "audit.jsonl.1")  # logrotate without copytruncate
    log.emit({"n": 2})
    log.flush()
    assert [e["n"] for e in lines(path)] == [2]
    assert [e["n"] for e in lines(tmp_path / "audit.jsonl.1")] == [1]

    os.unlink(path)
    log.emit({"n": 3})
    log.flush()
    assert [e["n"] for e in lines(path)] == [3]

    log.reopen()
    log.emit({"n": 4})
    log.flush()
    assert [e["n"] for e in lines(path)] == [3, 4]
    assert log.dropped == 0


def test_close_flushes_pending_aggregates(path: Path, clock: FakeClock) -> None:
    log = make(path, clock)
    log.aggregate_read(("s1", "plc-1"), read_fields(), (0, 9), 0.0001)
    log.aggregate_read(("s1", "plc-1"), read_fields(), (0, 9), 0.0001)
    log.emit({"event": "session_end", "session": "s1"})
    log.close()
    events = lines(path)
    assert [e["event"] for e in events] == ["session_end", "decision"]
    assert events[1]["count"] == 2
    log.close()  # idempotent
    log.emit({"event": "late"})
    log.aggregate_read(("s1", "plc-1"), read_fields(), (0, 9), 0.0001)
    assert log.dropped == 2  # nothing after close() could ever be written: counted, not queued
    log.flush()
    assert len(lines(path)) == 2


def test_unserialisable_values_do_not_kill_the_writer(path: Path, clock: FakeClock) -> None:
    log = make(path, clock)
    log.emit({"event": "decision", "values": b"\x01\xff", "oops": object(), "tags": frozenset({"a"})})
    log.emit({"event": "decision", "values": [2**70]})  # beyond what JSON numbers in orjson allow
    log.emit({"event": "decision", "n": 3})
    log.flush()
    first, second, third = lines(path)
    assert first["values"] == "01ff"
    assert first["oops"].startswith("<object object")
    assert first["tags"] == ["a"]
    assert second["event"] == "audit_error"
    assert str(2**70) in second["repr"]
    assert second["time"] == "2023-11-14T22:13:20.000000Z"
    assert third["n"] == 3
    assert log.render_counters()["unserialisable"] == 4
    assert (log.written, log.dropped) == (3, 0)


def test_aggregate_key_limit_falls_back_to_single_events(path: Path, clock: FakeClock) -> None:
    log = make(path, clock, aggregate_key_limit=2)
    for unit in range(4):
        log.aggregate_read(("s1", unit), read_fields() | {"unit": unit}, (0, 0), 0.0001)
    log.close()
    events = lines(path)
    assert sorted((e["unit"], bool(e.get("aggregated"))) for e in events) == [
        (0, True),
        (1, True),
        (2, False),
        (3, False),
    ]


def test_past_the_key_limit_every_read_of_a_request_is_its_own_event(path: Path, clock: FakeClock) -> None:
    log = make(path, clock, aggregate_key_limit=1)
    log.aggregate_read(("s1", 0), read_fields() | {"unit": 0}, None, 0.0001, count=10)
    log.aggregate_read(("s1", 1), read_fields() | {"unit": 1}, None, 0.0001, count=10)
    log.close()
    events = lines(path)
    assert [(e["unit"], e.get("count")) for e in events if e.get("aggregated")] == [(0, 10)]
    assert [e["unit"] for e in events if not e.get("aggregated")] == [1] * 10


def test_rollover_waits_for_a_read_in_progress(path: Path) -> None:
    # The writer swaps the aggregation dict while aggregate_read holds the old one (a GIL switch inside
    # the call, simulated by running a writer cycle from the clock the call reads): that read must not be
    # lost, and the old dict must be drained only after the call has returned.
    clock = FakeClock()
    log = make(path, clock)
    key = ("s1", "plc-1")
    log.aggregate_read(key, read_fields(), (0, 0), 0.0001)

    class PreemptingClock:
        armed = False

        def __call__(self) -> float:
            if self.armed:
                self.armed = False
                clock.now = T0 + 1
                log.flush()
            return clock.now

    preempting = PreemptingClock()
    log.reads.clock = preempting  # the clock read inside aggregate_read is the preemption point
    preempting.armed = True
    log.aggregate_read(key, read_fields(), (5, 5), 0.0001)
    assert lines(path) == []  # parked: the call was still running when the writer swapped
    log.flush()
    [event] = lines(path)
    assert (event["count"], event["span"]) == (2, [0, 5])


def test_writer_thread_counts_every_read_exactly(path: Path) -> None:
    # Real clock and thread, rollovers every 2 ms while the main thread hammers the hot path.
    log = AuditLog(gateway="gw-1", file=path, aggregate_reads_s=0.002, flush_interval_s=0.0005)
    log.start()
    n = 100_000
    fields = read_fields()
    for i in range(n):
        log.aggregate_read(("s1", i & 3), fields, (i & 255, (i & 255) + 1), 0.0001)
    log.close()
    events = lines(path)
    assert sum(e["count"] for e in events) == n
    assert log.dropped == 0
    assert len(events) > 4  # several intervals actually rolled over while reads were arriving


def test_writer_thread_writes_and_close_waits(path: Path) -> None:
    log = AuditLog(gateway="gw-1", file=path, flush_interval_s=10.0)  # only close() will wake it
    log.start()
    with pytest.raises(RuntimeError):
        log.start()

    def emit_many(k: int) -> None:
        for _ in range(1000):
            log.emit({"event": "decision", "k": k})

    emitters = [threading.Thread(target=emit_many, args=(k,)) for k in range(4)]
    for thread in emitters:
        thread.start()
    for thread in emitters:
        thread.join()
    log.close(timeout_s=10.0)
    assert len(lines(path)) == 4000
    assert (log.written, log.queued, log.dropped) == (4000, 0, 0)


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        AuditLog(gateway="g", aggregate_reads_s=-1)
    with pytest.raises(ValueError):
        AuditLog(gateway="g", queue_limit=0)
    with pytest.raises(ValueError):
        AuditLog(gateway="g", flush_interval_s=0)


def test_file_is_created_0640_and_rotates_by_size(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "audit.jsonl"
    # About 1 KiB per rotation; each event is about 100 bytes.
    sink = FileSink("file", path, rotate_mib=1 / 1024, keep=2)
    log = AuditLog(gateway="gw-1", sinks=[sink], clock=clock)
    log.start()
    assert path.stat().st_mode & 0o777 == 0o640
    for n in range(40):
        log.emit({"event": "decision", "n": n, "pad": "x" * 60})
        log.flush()
    log.close()
    assert sink.rotations >= 3
    assert not (tmp_path / "audit.jsonl.3").exists()  # keep = 2
    kept = lines(tmp_path / "audit.jsonl.2") + lines(tmp_path / "audit.jsonl.1") + lines(path)
    numbers = [event["n"] for event in kept]
    assert numbers == list(range(numbers[0], 40)) and len(numbers) < 40  # the newest, in order, none torn
    for name in ("audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"):
        assert (tmp_path / name).stat().st_size <= 1024
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("fmt", ["json", "cef", "ocsf"])
def test_a_sink_writes_its_format_of_the_record_the_file_holds(
    tmp_path: Path, clock: FakeClock, fmt: str
) -> None:
    """``format`` is applied per sink, to the very record the flat file holds (bytes already hex, an
    unencodable event already an audit_error), so every format says what the file says."""
    flat = FileSink("flat", tmp_path / "flat.jsonl")
    other = FileSink(fmt, tmp_path / f"{fmt}.log", format=fmt)
    log = AuditLog(gateway="gw-1", sinks=[flat, other], clock=clock)
    log.emit({**read_fields(), "decision": "deny", "rule": None, "values": b"\x01\xff"})
    log.emit({"event": "decision", "values": [2**70]})
    log.flush()
    records = lines(tmp_path / "flat.jsonl")
    assert [r["event"] for r in records] == ["decision", "audit_error"]
    written = (tmp_path / f"{fmt}.log").read_text().splitlines()
    assert written == [audit_formats.format_record(record, fmt) for record in records]
    if fmt == "cef":
        header, pairs = parse_cef(written[0])
        assert header[4] == "decision:deny" and ("ztgateValues", "01ff") in pairs
    else:
        document = orjson.loads(written[0])
        problems = ocsf_problems(document) if fmt == "ocsf" else ecs_problems(records[0], document)
        assert problems == []
    assert flat.status()["format"] == "ztgate" and other.status()["format"] == fmt


def test_a_sink_refuses_an_unknown_format_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown audit format 'xml'; one of ztgate, json, cef, ocsf"):
        FileSink("f", tmp_path / "f.log", format="xml")


def test_refusals_are_counted_by_rule_with_a_bounded_number_of_series(path: Path, clock: FakeClock) -> None:
    log = make(path, clock)
    log.emit({**read_fields(), "decision": "deny", "rule": "setpoint-limit"})
    log.emit({**read_fields(), "decision": "deny", "rule": None})
    log.emit({**read_fields(), "decision": "would-deny", "rule": "setpoint-limit"})
    # An aggregated refusal stands for `count` of them.
    log.emit({**read_fields(), "decision": "deny", "rule": None, "aggregated": True, "count": 41})
    log.emit({**read_fields(), "decision": "allow"})
    log.flush()
    assert log.refusals_by_rule == {
        ("setpoint-limit", "deny"): 1,
        ("(default deny)", "deny"): 42,
        ("setpoint-limit", "would-deny"): 1,
    }
    for n in range(RULE_SERIES_LIMIT + 50):
        log.emit({**read_fields(), "decision": "deny", "rule": f"rule-{n}"})
    log.flush()
    assert len(log.refusals_by_rule) == RULE_SERIES_LIMIT + 1
    assert log.refusals_by_rule[("(other rules)", "deny")] == 53
    assert sum(log.refusals_by_rule.values()) == 44 + RULE_SERIES_LIMIT + 50


def test_a_sinks_queue_drops_reads_before_refusals_and_writes(tmp_path: Path) -> None:
    """A sink's own queue (its writer behind) keeps refusals and write decisions past its limit, up to
    twice that, and drops the reads; while it is over its limit the sink is not healthy (on_failure)."""
    sink = FileSink("f", tmp_path / "a.jsonl", queue_limit=3)

    def record(kind: str, n: int) -> Record:
        return Record(kind, "", "decision", orjson.dumps({"n": n}) + b"\n")

    sink.offer([record("read", n) for n in range(2)])
    assert sink.healthy
    sink.offer(
        [record("read", n) for n in (2, 3)] + [record("refusal", 4), record("decision", 5), record("read", 6)]
    )
    assert sink.dropped == {"read": 2, "refusal": 0, "decision": 0, "event": 0}
    assert not sink.healthy and sink.lost == {"queue_full": 2}
    sink.offer([record("refusal", n) for n in range(7, 10)])  # 5 queued, twice the limit is 6: one fits
    assert sink.dropped["refusal"] == 2
    sink.drain()
    assert [orjson.loads(line).get("n") for line in (tmp_path / "a.jsonl").read_bytes().splitlines()] == [
        0, 1, 2, 4, 5, 7,
    ]  # fmt: skip
    assert sink.healthy


def test_a_spooling_sinks_queue_drops_reads_only_and_holds_the_rest_for_the_spool(tmp_path: Path) -> None:
    """A syslog sink over TCP (spooled; its writer and sender not started) with a queue of 3 records and
    room for 3 of these records' bytes: past 3, reads are dropped; every other record goes in, and when
    the queue's bytes are full the caller writes the queue to the spool, in order, before it goes on."""
    line_bytes = 20  # each record's line below, padded: 3 fit in hold_bytes, a fourth does not
    settings = SyslogSettings("tcp", ("127.0.0.1", 9), "gw", spool_dir=tmp_path / "spool")
    sink = SyslogSink("s", settings, queue_limit=3, format="ztgate")
    sink.hold_bytes = 3 * (line_bytes + RECORD_OVERHEAD_BYTES)

    def record(kind: str, n: int) -> Record:
        return Record(kind, "", "decision", orjson.dumps({"n": n}).ljust(line_bytes - 1) + b"\n")

    sink.offer([record("read", 0), record("refusal", 1), record("read", 2), record("read", 3)])
    assert sink.dropped == {"read": 1, "refusal": 0, "decision": 0, "event": 0}  # 3: past the limit
    assert sink.healthy and sink.held == 0 and sink.queued == 3
    sink.offer([record("decision", 4), record("read", 5), record("refusal", 6), record("event", 7)])
    # 4 found the queue's bytes full: 0, 1, 2 went to the spool first; 7 found 4, 5, 6 there.
    assert sink.held == 2
    assert sink.dropped == {"read": 1, "refusal": 0, "decision": 0, "event": 0}  # 5 had room again
    assert sink.healthy and sink.lost == {"queue_full": 1}
    assert sink.queued == 1 and sink.queued_bytes == line_bytes + RECORD_OVERHEAD_BYTES
    sink.offer([record("refusal", n) for n in range(8, 12)])
    assert sink.held == 3 and sink.dropped["refusal"] == 0
    sink.drain()
    assert sink.queued == sink.queued_bytes == 0
    assert sink.spool is not None
    batch, _ = sink.spool.read(1 << 20)
    assert [int(message.rsplit(b'"n":', 1)[1].split(b"}")[0]) for _, message in batch] == [
        0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11,
    ]  # fmt: skip
    sink.close()
