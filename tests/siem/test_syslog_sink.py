"""The syslog sink's parts that need no collector: the message it builds from its cached envelopes is
format_message's, in every format, and its loss counters add up while two threads count."""

from __future__ import annotations

import socket
import sys
import threading
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from gateway.audit_formats import CENTER_EXAMPLES, EXAMPLES, FORMATS
from gateway.sinks.base import KINDS, Record, line_formatter
from gateway.sinks.syslog import SyslogSettings, SyslogSink, format_message


def settings(tmp_path: Path) -> SyslogSettings:
    return SyslogSettings(
        transport="tcp", address=("127.0.0.1", 9), hostname="gw 1", spool_dir=tmp_path / "spool"
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_sinks_message_is_format_message_for_every_example_record(tmp_path: Path, fmt: str) -> None:
    sink = SyslogSink("siem", settings(tmp_path), format=fmt)
    line = line_formatter(fmt)
    # Every kind with every event: the severity follows both (an audit_dropped is an error whatever its kind).
    records = [
        Record(kind, example["time"], example["event"], orjson.dumps(example) + b"\n")
        for example in (*EXAMPLES, *CENTER_EXAMPLES)
        for kind in KINDS
    ]
    for record in records * 2:  # the second time from the cached envelopes
        expected = format_message(sink.settings, record, sink._pid, line(record))
        assert sink._message(record) == expected
        assert not expected.endswith(b"\n")


def test_the_loss_counters_add_up_while_another_thread_counts(tmp_path: Path) -> None:
    sink = SyslogSink("siem", settings(tmp_path))
    done = threading.Event()

    def count() -> None:
        for _ in range(20_000):
            sink.lose(["refusal", "event"], "spool_full")
        done.set()

    interval_s = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: a torn read shows quickly
    try:
        thread = threading.Thread(target=count)
        thread.start()
        seen = 0
        while not done.is_set():
            dropped, lost = sink.losses()
            assert sum(dropped.values()) == lost.get("spool_full", 0)
            seen += 1
        thread.join()
    finally:
        sys.setswitchinterval(interval_s)
    assert seen > 0
    assert sink.losses() == (
        {"read": 0, "refusal": 20_000, "decision": 0, "event": 20_000},
        {"spool_full": 40_000},
    )
    status = sink.status()
    assert sum(status["dropped"].values()) == status["lost"]["spool_full"]


def test_a_connect_that_meets_itself_is_no_collector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # With nothing listening on a loopback port, a connect whose source port is that port meets itself
    # (TCP simultaneous open). Made here on purpose; the sink must not take it for its collector.
    itself = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    itself.bind(("127.0.0.1", 0))
    port = itself.getsockname()[1]
    itself.connect(("127.0.0.1", port))
    assert itself.getpeername() == itself.getsockname()
    sink = SyslogSink("siem", replace(settings(tmp_path), address=("127.0.0.1", port)))
    monkeypatch.setattr(socket, "create_connection", lambda *args, **kwargs: itself)
    with pytest.raises(ConnectionRefusedError, match="self-connect"):
        sink._connect()
    assert itself.fileno() == -1 and sink._sock is None and not sink.connected  # closed, not kept
