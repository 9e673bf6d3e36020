"""The audit log hands each record's event on to the sinks that format it (ECS json, CEF, OCSF), so they
need not parse the line back: what they write from the event must be what they write from the line,
byte for byte, for every event type and every value the line says otherwise than the event."""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.audit import AuditLog, ReadEvent
from gateway.audit_formats import CENTER_EXAMPLES, EXAMPLES, FORMATS, format_line
from gateway.sinks.base import EVENT_BYTES_PER_LINE_BYTE, RECORD_OVERHEAD_BYTES, Record, Sink
from gateway.sinks.file import FileSink
from gateway.sinks.plain import json_plain
from gateway.sinks.syslog import SyslogSettings, SyslogSink

FORMATTED = [fmt for fmt in FORMATS if fmt != "ztgate"]


class Color(enum.Enum):
    RED = "red"


class Name(str):
    pass


# Values the line says otherwise than the event (orjson converts them), each inside a decision record.
NOT_PLAIN: dict[str, Any] = {
    "bytes": b"\x01\x02",  # hex, through the audit log's default
    "set": {3},  # a list, through the default
    "tuple": (40, 41),  # an array
    "range tuple": (40, 40),
    "enum": Color.RED,  # its value
    "str subclass": Name("x"),
    "nan": math.nan,  # null
    "infinity": -math.inf,
    "non-str key": {1: "a"},  # the key as a string
    "nested tuple": [1, (2, 3)],
    "deep bytes": {"a": [b"\xff"]},
    "too large": 2**70,  # not encodable: the record becomes an audit_error
}


class Capture(Sink):
    """A sink that keeps the records it is given (in a format, so the audit log hands the events on)."""

    def __init__(self, fmt: str) -> None:
        super().__init__("capture", format=fmt)
        self.records: list[Record] = []

    def _deliver(self, records: list[Record]) -> bool:
        self.records += records
        return True


READ: dict[str, Any] = {"event": "decision", "protocol": "modbus", "fc": 3, "decision": "allow"}


def records_of(
    events: list[dict[str, Any]], fmt: str = "json", *, aggregate_reads_s: float = 1.0
) -> list[Record]:
    """The records an audit log hands its sinks for these events, then for two allowed reads (written
    one by one with ``aggregate_reads_s`` 0, else as an interval's aggregate)."""
    sink = Capture(fmt)
    log = AuditLog(gateway="gw-1", sinks=[sink], aggregate_reads_s=aggregate_reads_s)
    for event in events:
        log.emit(dict(event))
    log.aggregate_read(("s", 3), READ, (0, 9), 0.001)
    log.aggregate_read(("s", 3), READ, (5, 19), 0.002)
    log.close()
    return sink.records


@pytest.fixture
def syslog_sink(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SyslogSink]:
    fmt = getattr(request, "param", "json")
    sink = SyslogSink(
        "siem", SyslogSettings("tcp", ("127.0.0.1", 9), "gw-1", spool_dir=tmp_path / "spool"), format=fmt
    )
    yield sink
    sink.close()


def examples() -> list[dict[str, Any]]:
    return [dict(example) for example in (*EXAMPLES, *CENTER_EXAMPLES)]


def not_plain() -> Iterator[tuple[str, dict[str, Any]]]:
    base = {key: value for key, value in EXAMPLES[1].items() if key != "time"}
    for name, value in NOT_PLAIN.items():
        field = "write" if name == "range tuple" else "extra"
        yield name, {**base, field: value}


@pytest.mark.parametrize("syslog_sink", FORMATTED, indirect=True)
def test_every_event_type_formats_from_its_event_as_from_its_line(syslog_sink: SyslogSink) -> None:
    records = records_of(examples(), syslog_sink.format) + records_of(
        [], syslog_sink.format, aggregate_reads_s=0
    )
    names = {orjson.loads(record.line)["event"] for record in records}
    assert names == {example["event"] for example in examples()}  # every event type
    assert sum(bool(orjson.loads(record.line).get("aggregated")) for record in records) == 1
    assert sum(orjson.loads(record.line).get("fc") == 3 for record in records) == 3  # + 2 reads one by one
    for record in records:
        # Handed on, and what the line says: the sink formats it without parsing, to the same bytes.
        assert record.fields is not None and json_plain(record.fields), record.line
        assert orjson.loads(record.line) == record.fields
        assert syslog_sink._message(record) == syslog_sink._message(record._replace(fields=None))


@pytest.mark.parametrize("syslog_sink", FORMATTED, indirect=True)
@pytest.mark.parametrize("name", list(NOT_PLAIN))
def test_a_value_the_line_says_otherwise_is_formatted_from_the_line(
    syslog_sink: SyslogSink, name: str
) -> None:
    record = records_of([dict(not_plain())[name]], syslog_sink.format)[0]
    # Either the audit log kept the event back (it converted a value, or replaced the event), or the
    # sink sees that it is not plain: in both cases the sink formats the line parsed back.
    assert record.fields is None or not json_plain(record.fields)
    expected = format_line(orjson.loads(record.line), syslog_sink.format)
    assert syslog_sink._message(record).endswith(b" - " + expected)


def test_the_formatted_files_say_what_the_flat_file_says(tmp_path: Path) -> None:
    # Real sinks side by side: the flat file and one file per format, from one audit log. Each formatted
    # line is the format of the flat line parsed back.
    flat = FileSink("flat", tmp_path / "flat.jsonl")
    formatted = {fmt: FileSink(fmt, tmp_path / f"{fmt}.log", format=fmt) for fmt in FORMATTED}
    log = AuditLog(gateway="gw-1", sinks=[flat, *formatted.values()])
    log.start()
    events = examples() + [event for _name, event in not_plain()]
    for event in events:
        log.emit(event)
    log.close()
    lines = (tmp_path / "flat.jsonl").read_bytes().splitlines()
    assert len(lines) == len(events)
    for fmt in FORMATTED:
        written = (tmp_path / f"{fmt}.log").read_bytes().splitlines()
        assert written == [format_line(orjson.loads(line), fmt) for line in lines], fmt


def test_no_sink_that_writes_the_flat_line_gets_the_event() -> None:
    # A record's event stays in memory with it while it is queued: only for a sink that formats from it.
    assert all(record.fields is None for record in records_of(examples(), "ztgate"))
    assert all(record.fields is not None for record in records_of(examples(), "json"))


def test_a_record_with_its_event_counts_for_its_event_too_against_the_hold(syslog_sink: SyslogSink) -> None:
    # A record's event stays in memory with it while it is queued: the hold counts it.
    record = records_of(examples()[1:2])[0]
    syslog_sink.offer([record._replace(fields=None)])
    bare = len(record.line) + RECORD_OVERHEAD_BYTES
    assert syslog_sink.queued_bytes == bare
    syslog_sink.offer([record])
    assert syslog_sink.queued_bytes - bare == bare + EVENT_BYTES_PER_LINE_BYTE * len(record.line)


@pytest.mark.parametrize(
    ("value", "plain"),
    [
        ({"a": "x", "b": 1, "c": True, "d": None, "e": 1.5, "f": [1, "x", [None]], "g": {"h": [0.0]}}, True),
        (ReadEvent({"a": 1}), True),  # the record itself may be a dict subclass
        ({}, True),
        *(({"a": value}, False) for value in NOT_PLAIN.values() if not isinstance(value, int)),
        ({"a": [1, {"b": b""}]}, False),
        ({"a": {"b": {"c": math.inf}}}, False),
        ({"a": {2: 1}}, False),
        ({3: 1}, False),
        ({"a": [Name("x")]}, False),
        ({"a": ReadEvent()}, False),  # below the top, a subclass is not plain: orjson writes a dict
    ],
)
def test_json_plain(value: dict[Any, Any], plain: bool) -> None:
    assert json_plain(value) is plain
