"""The syslog sink's disk spool on its own: order, replay after a restart, a torn append, and what each
policy does when the spool is full."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

from gateway.sinks import spool as spool_module
from gateway.sinks.spool import Spool

LIMIT_MIB = 0.01  # 10,485 bytes
RECORD_BYTES = 100  # on disk, with the 5-byte header: 104 fit in the limit, 105 do not


def message(kind: str, n: int) -> tuple[str, bytes]:
    return kind, f"{kind}-{n:05d}".encode().ljust(RECORD_BYTES - 5, b".")


def drain(spool: Spool) -> list[bytes]:
    out = []
    while True:
        batch, cursor = spool.read(4096)
        if not batch:
            return out
        out += [payload for _kind, payload in batch]
        spool.commit(cursor, len(batch))


def test_records_come_out_in_order_across_segments(tmp_path: Path) -> None:
    spool = Spool(tmp_path, limit_mib=1, segment_bytes=1000)
    sent = [message("decision", n) for n in range(200)]
    for start in range(0, 200, 7):
        assert spool.append(sent[start : start + 7]) == []
    assert spool.pending_records == 200
    assert len(list(tmp_path.glob("*.seg"))) > 10
    assert drain(spool) == [payload for _kind, payload in sent]
    assert spool.pending_records == 0 and spool.pending_bytes == 0
    assert len(list(tmp_path.glob("*.seg"))) == 1  # sent segments are deleted


def test_a_restart_replays_what_was_not_sent(tmp_path: Path) -> None:
    spool = Spool(tmp_path, limit_mib=1, segment_bytes=1000)
    sent = [message("refusal", n) for n in range(50)]
    spool.append(sent)
    batch, cursor = spool.read(1000)  # about ten records reach the collector
    spool.commit(cursor, len(batch))
    unsent, _ = spool.read(1000)  # read, but the connection dies before they are written
    spool.release()
    spool.close()

    again = Spool(tmp_path, limit_mib=1, segment_bytes=1000)
    assert again.pending_records == 50 - len(batch)
    assert again.data_ready.is_set()
    rest = drain(again)
    assert rest[: len(unsent)] == [payload for _kind, payload in unsent]
    assert rest == [payload for _kind, payload in sent[len(batch) :]]


def test_a_torn_append_is_cut_off_at_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path, limit_mib=1)
    spool.append([message("decision", n) for n in range(3)])
    spool.close()
    segment = next(tmp_path.glob("*.seg"))
    with open(segment, "ab") as file:
        file.write(b"\x00\x00\x00\x64\x02half a rec")  # a crash in the middle of an append
    again = Spool(tmp_path, limit_mib=1)
    assert again.pending_records == 3
    again.append([message("decision", 3)])
    assert drain(again) == [message("decision", n)[1] for n in range(4)]


def test_drop_oldest_reads_keeps_every_refusal_and_decision(tmp_path: Path) -> None:
    spool = Spool(tmp_path, limit_mib=LIMIT_MIB, segment_bytes=1000)
    records = []
    for n in range(100):  # 10,000 bytes: a read, a refusal, a decision, a read, ...
        records.append(message(("read", "refusal", "decision", "read")[n % 4], n))
    assert spool.append(records) == []
    more = [message("refusal", n) for n in range(100, 130)]  # 3,000 bytes: 2,515 more than fit
    assert spool.append(more) == []
    assert spool.evicted == 26 and not spool.full  # 2,600 bytes of reads, not one more
    out = drain(spool)
    kept = [payload for kind, payload in records if kind != "read"]
    reads = [payload for kind, payload in records if kind == "read"]
    # The oldest reads went, the newest stayed; everything else is there, in its order.
    assert [p for p in out if not p.startswith(b"read")] == kept + [payload for _kind, payload in more]
    assert [p for p in out if p.startswith(b"read")] == reads[26:]
    assert out == [p for _kind, p in records + more if not (p.startswith(b"read") and p in reads[:26])]


def test_drop_oldest_reads_drops_only_as_many_reads_as_needed_oldest_first(tmp_path: Path) -> None:
    spool = Spool(tmp_path, limit_mib=LIMIT_MIB, segment_bytes=1000)
    # 10,400 bytes, 85 short of the limit; the last segment, the one being written, holds the only reads.
    records = [message("refusal", n) for n in range(100)] + [message("read", n) for n in range(100, 104)]
    assert spool.append(records) == []
    assert spool.append([message("refusal", 104)]) == []  # 15 bytes short: one read, the oldest, goes
    assert spool.evicted == 1
    assert spool.append([message("decision", 105), message("refusal", 106)]) == []  # one batch, two reads
    assert spool.evicted == 3 and not spool.full
    out = drain(spool)
    assert out == [p for _kind, p in records[:100]] + [message("read", 103)[1]] + [
        message(kind, n)[1] for kind, n in (("refusal", 104), ("decision", 105), ("refusal", 106))
    ]


def test_drop_oldest_reads_refuses_new_records_once_no_read_is_left(tmp_path: Path) -> None:
    spool = Spool(tmp_path, limit_mib=LIMIT_MIB, segment_bytes=1000)
    spool.append([message("read", n) for n in range(4)] + [message("decision", n) for n in range(104)])
    assert spool.evicted == 4
    assert spool.append([message("refusal", 200), message("read", 201)]) == ["refusal", "read"]
    assert spool.full
    drain(spool)
    assert not spool.full
    assert spool.append([message("refusal", 202)]) == []


def test_block_new_sessions_refuses_records_and_stays_full_until_sent(tmp_path: Path) -> None:
    spool = Spool(tmp_path, limit_mib=LIMIT_MIB, on_full="block_new_sessions", segment_bytes=1000)
    assert spool.append([message("read", n) for n in range(105)]) == ["read"]
    assert spool.full and spool.evicted == 0  # nothing already spooled is dropped
    assert spool.append([message("refusal", 300)]) == ["refusal"]
    batch, cursor = spool.read(500)
    spool.commit(cursor, len(batch))
    assert spool.full  # a little room is not enough: it waits until three quarters of the limit
    drain(spool)
    assert not spool.full


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="on_full"):
        Spool(tmp_path, limit_mib=1, on_full="drop_newest")
    with pytest.raises(ValueError, match="size limit"):
        Spool(tmp_path, limit_mib=0)


def test_a_restart_resumes_at_the_cursor_and_a_corrupt_cursor_replays_from_the_oldest_segment(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, limit_mib=1, segment_bytes=1000)
    sent = [message("decision", n) for n in range(30)]
    spool.append(sent)
    batch, cursor = spool.read(1000)
    spool.commit(cursor, len(batch))
    spool.close()
    saved = (tmp_path / "cursor").read_bytes()
    assert len(saved) == 20  # seq, offset and their CRC-32

    again = Spool(tmp_path, limit_mib=1, segment_bytes=1000)
    assert drain(again) == [payload for _kind, payload in sent[len(batch) :]]  # exactly the rest
    again.close()

    other = tmp_path / "other"
    spool = Spool(other, limit_mib=1)
    more = [message("refusal", n) for n in range(10)]
    spool.append(more)
    batch, cursor = spool.read(500)
    assert 0 < len(batch) < len(more)
    spool.commit(cursor, len(batch))
    spool.close()
    torn = bytearray((other / "cursor").read_bytes())
    torn[15] ^= 0xFF  # an offset no longer matching its checksum (a crash mid-write, a bad disk)
    (other / "cursor").write_bytes(torn)
    # Records already sent come again (duplicates, as after an OS crash); none is lost.
    assert drain(Spool(other, limit_mib=1)) == [payload for _kind, payload in more]


def test_a_cursor_written_before_its_checksum_is_taken_as_it_is(tmp_path: Path) -> None:
    spool = Spool(tmp_path, limit_mib=1)
    sent = [message("decision", n) for n in range(10)]
    spool.append(sent)
    spool.close()
    # The layout of the cursor before the checksum: seq and offset only, here just past 4 records.
    (tmp_path / "cursor").write_bytes(struct.pack(">QQ", 0, 4 * RECORD_BYTES))
    assert drain(Spool(tmp_path, limit_mib=1)) == [payload for _kind, payload in sent[4:]]


def test_the_sender_reads_the_newest_appends_from_memory_in_batches_of_its_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path, limit_mib=1)
    appends = [[message("decision", 10 * b + n) for n in range(10)] for b in range(5)]  # 1,000 bytes each
    for records in appends:
        spool.append(records)
    opened: list[object] = []

    def counting_open(*args: Any, **kwargs: Any) -> Any:
        opened.append(args[0])
        return open(*args, **kwargs)

    monkeypatch.setattr(spool_module, "open", counting_open, raising=False)
    out = []
    # As from the segment: whole records up to max_bytes (two appends and half of one), then part of an
    # append, then the rest.
    for max_bytes, expected in ((2500, 25), (450, 4), (10_000, 21)):
        batch, cursor = spool.read(max_bytes)
        assert len(batch) == expected
        out += batch
        spool.commit(cursor, len(batch))
    assert out == [record for records in appends for record in records]
    assert opened == []  # none of it read back from the segment
    assert spool.read(10_000)[0] == [] and spool.pending_records == 0

    spool.append(appends[0])
    spool.close()
    again = Spool(tmp_path, limit_mib=1)  # a restart: the same records, from the segment
    assert again.read(10_000)[0] == appends[0] and opened


def test_the_records_held_for_the_sender_stay_within_their_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "TAIL_BYTES", 1500)
    spool = Spool(tmp_path, limit_mib=1)
    appends = [[message("decision", 10 * b + n) for n in range(10 if b != 2 else 20)] for b in range(4)]
    for records in appends:  # 1,000 bytes each, but the third: 2,000, more than may be held at all
        spool.append(records)
        assert spool._tail_bytes <= 1500
    assert spool._tail_bytes == 1000  # only the last append: the one before it was too large
    # All of it, in order, from the segment as far as the tail does not reach, then from the tail.
    assert drain(spool) == [payload for records in appends for _kind, payload in records]
