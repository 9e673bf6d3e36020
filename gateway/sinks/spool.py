"""A syslog sink's disk spool: a bounded, append-only directory of segments, read in order by the sender.

Layout: ``<dir>/<seq>.seg`` files, each a run of records ``length (u32, big-endian) | kind (u8) | message``,
and ``<dir>/cursor`` (``seq, offset`` as two u64, then their CRC-32 as a u32): where the next record to
send starts. Appends are written and synced (``fdatasync``: the records and the file's size, which is
all a read after a crash needs) once per batch; the cursor is overwritten in place (one ``pwrite``)
after every batch the collector took, and segments behind it are deleted. At start the spool is
scanned, a torn last record (a crash in the middle of an append) is cut off, and sending resumes at the
cursor, so a restarted gateway replays what it had not sent, in order. The cursor is not synced: after
an operating-system crash a few records already sent may be sent again, and a cursor that does not
match its checksum replays the spool from its oldest segment; none is lost.

The sender reads what the writer appended last from memory, not from the file: the spool keeps the
records of its newest appends (up to :data:`TAIL_BYTES`, each batch as the writer gave it) while they
are contiguous with the segment's end, and a read that starts where they start takes them as they are
(no read, no parse). Anything else, a replay after an outage or a restart among them, is read from the
segments.

The size limit counts the records not yet sent. When a batch does not fit, ``drop_oldest_reads`` drops
the oldest allowed-read records, one by one, until it fits, and rewrites the segments that held them
(every refusal and every other decision stays, and so does every newer read); when there is no read left
to drop, or under ``block_new_sessions``, the new record is refused, counted by kind, and
:attr:`Spool.full` stays set until the sender has brought the spool down to three quarters of its limit.
"""

from __future__ import annotations

import collections
import os
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

__all__ = ["ON_FULL_POLICIES", "Spool", "SpoolCursor"]

ON_FULL_POLICIES: Final = ("drop_oldest_reads", "block_new_sessions")
KIND_CODES: Final = {"read": 0, "refusal": 1, "decision": 2, "event": 3}
KIND_NAMES: Final = {code: name for name, code in KIND_CODES.items()}
_HEADER = struct.Struct(">IB")
_CURSOR = struct.Struct(">QQI")  # seq, offset, crc32 of the two
_POSITION = struct.Struct(">QQ")
_SUFFIX = ".seg"

SpoolCursor = tuple[int, int]  # (segment seq, offset just past the last record of a batch)
# The newest appends kept in memory for the sender, at most this many bytes of records.
TAIL_BYTES: Final = 4 * 1024 * 1024

# What an append's durability needs is the data and the file's size; fdatasync skips the timestamps
# (fsync where the platform has no fdatasync).
_sync = getattr(os, "fdatasync", os.fsync)


def _segment_name(seq: int) -> str:
    return f"{seq:016d}{_SUFFIX}"


def _records(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(offset after the record, kind code, message) for each complete record in ``data``."""
    offset, size = 0, len(data)
    while offset + _HEADER.size <= size:
        length, kind = _HEADER.unpack_from(data, offset)
        end = offset + _HEADER.size + length
        if end > size or kind not in KIND_NAMES:
            return
        yield end, kind, data[offset + _HEADER.size : end]
        offset = end


class Spool:
    """One sink's spool. ``append`` runs in the sink's writer thread, ``read``/``commit`` in its sender."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        limit_mib: float,
        on_full: str = "drop_oldest_reads",
        segment_bytes: int | None = None,
    ) -> None:
        if on_full not in ON_FULL_POLICIES:
            raise ValueError(f"on_full must be one of {', '.join(ON_FULL_POLICIES)}, not {on_full!r}")
        if not limit_mib > 0:
            raise ValueError("the spool's size limit must be > 0 MiB")
        self.directory = Path(directory)
        self.limit_bytes = int(limit_mib * 1024 * 1024)
        self.on_full = on_full
        # Small enough that dropping reads (a rewrite of the oldest segments that hold them, once per batch
        # while the spool is full) rewrites little at a time, large enough to keep files few.
        self.segment_bytes = segment_bytes or max(4096, min(self.limit_bytes // 16, 1024 * 1024))
        # Once full, the spool takes records again when the sender has brought it down to 3/4 of the limit,
        # so a collector that trickles does not make it flap between full and not.
        self.resume_bytes = self.limit_bytes * 3 // 4
        self.full = False
        self.evicted = 0  # read records dropped to make room
        self._lock = threading.Lock()
        self.data_ready = threading.Event()
        self._outstanding: SpoolCursor | None = None
        # (seq, start, end, records) of the newest appends, contiguous in one segment.
        self._tail: collections.deque[tuple[int, int, int, Sequence[tuple[str, bytes]]]] = collections.deque()
        self._tail_bytes = 0
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._sizes: dict[int, int] = {}
        self._counts: dict[int, int] = {}
        self._load()

    # -- state ---------------------------------------------------------------------------------------------

    def _load(self) -> None:
        for path in sorted(self.directory.glob("*" + _SUFFIX)):
            stem = path.name[: -len(_SUFFIX)]
            if stem.isdigit():
                self._sizes[int(stem)] = path.stat().st_size
        seq, offset = self._read_cursor()
        for old in [s for s in self._sizes if s < seq]:
            os.unlink(self._path(old))
            del self._sizes[old]
        if seq not in self._sizes:
            offset = 0
            seq = min(self._sizes, default=seq)
        self._cursor: SpoolCursor = (seq, offset)
        for segment in sorted(self._sizes):
            data = self._path(segment).read_bytes()
            start = offset if segment == seq else 0
            end, count = 0, 0
            for end, _kind, _message in _records(data):
                if end > start:
                    count += 1
            if end < len(data):  # a torn append at a crash: cut it off
                with open(self._path(segment), "r+b") as file:
                    file.truncate(end)
                self._sizes[segment] = end
            self._counts[segment] = count
        if not self._sizes:
            self._sizes[seq] = 0
            self._counts[seq] = 0
            self._path(seq).touch(mode=0o640)
        self._write_seq = max(self._sizes)
        self._file = open(self._path(self._write_seq), "ab")  # noqa: SIM115 - closed by close()
        # Kept open: the sender overwrites it after every batch, one pwrite instead of a file and a rename.
        self._cursor_fd = os.open(self.directory / "cursor", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._save_cursor()  # never an empty file, and a cursor from before the checksum gets one
        if self.pending_records:
            self.data_ready.set()

    def _read_cursor(self) -> SpoolCursor:
        try:
            raw = (self.directory / "cursor").read_bytes()
        except FileNotFoundError:
            return (0, 0)
        if len(raw) == _POSITION.size:  # written before the checksum: taken as it is
            seq, offset = _POSITION.unpack(raw)
            return seq, offset
        if len(raw) != _CURSOR.size:
            return (0, 0)
        seq, offset, crc = _CURSOR.unpack(raw)
        if zlib.crc32(raw[: _POSITION.size]) != crc:
            return (0, 0)  # torn or stale after a crash: replay from the oldest segment
        return seq, offset

    def _path(self, seq: int) -> Path:
        return self.directory / _segment_name(seq)

    @property
    def pending_bytes(self) -> int:
        return sum(self._sizes.values()) - self._cursor[1]

    @property
    def pending_records(self) -> int:
        return sum(self._counts.values())

    # -- writer side ---------------------------------------------------------------------------------------

    def append(self, records: Sequence[tuple[str, bytes]]) -> list[str]:
        """Append (kind, message) records and sync them; returns the kinds of the records refused for room."""
        refused: list[str] = []
        with self._lock:
            used = self.pending_bytes
            size = len(records) * _HEADER.size + sum(len(message) for _kind, message in records)
            seq = self._write_seq
            if used + size <= self.limit_bytes and self._sizes[seq] + size < self.segment_bytes:
                # The common case: the batch fits the spool and the segment, and goes in one write.
                pack, codes = _HEADER.pack, KIND_CODES
                start = self._sizes[seq]
                # Each message copied once, into the buffer (header + message concatenated first was two).
                buffer = bytearray()
                for kind, message in records:
                    buffer += pack(len(message), codes[kind])
                    buffer += message
                self._write(buffer)
                self._counts[seq] += len(records)
                _sync(self._file.fileno())
                if records:
                    self._keep(seq, start, records)
                    self.data_ready.set()
                return refused
            self._tail.clear()  # a roll or a rewrite of segments may follow: read those from the files
            self._tail_bytes = 0
            buffer = bytearray()
            remaining = size  # this record and the ones after it in the batch
            for kind, message in records:
                size = _HEADER.size + len(message)
                remaining -= size
                if used + size > self.limit_bytes:
                    if self.on_full == "drop_oldest_reads" and size <= self.limit_bytes:
                        self._write(buffer)
                        buffer = bytearray()
                        # Room for the rest of the batch in one pass, so a segment is rewritten once.
                        self._evict_reads(used + size + remaining - self.limit_bytes)
                        used = self.pending_bytes
                    if used + size > self.limit_bytes:
                        refused.append(kind)
                        self.full = True
                        continue
                if self._sizes[self._write_seq] + len(buffer) >= self.segment_bytes:
                    self._write(buffer)
                    buffer = bytearray()
                    self._roll()
                buffer += _HEADER.pack(len(message), KIND_CODES[kind])
                buffer += message
                used += size
                self._counts[self._write_seq] += 1
            self._write(buffer)
            _sync(self._file.fileno())
        if len(refused) < len(records):
            self.data_ready.set()
        return refused

    def _keep(self, seq: int, start: int, records: Sequence[tuple[str, bytes]]) -> None:
        tail, end = self._tail, self._sizes[seq]
        if tail and (
            tail[-1][0] != seq or tail[-1][2] != start or self._tail_bytes + end - start > TAIL_BYTES
        ):
            tail.clear()  # not contiguous, or too much held: start again from this batch
            self._tail_bytes = 0
        if end - start <= TAIL_BYTES:  # a larger batch alone (a hold's) is read back from the segment
            tail.append((seq, start, end, records))
            self._tail_bytes += end - start

    def _from_tail(self, seq: int, offset: int, max_bytes: int) -> list[tuple[str, bytes]] | None:
        """The records from (seq, offset) on, up to about ``max_bytes`` (at least one), when the tail
        holds that offset; None when it does not (read the segment)."""
        tail = self._tail
        while tail and (tail[0][0] < seq or (tail[0][0] == seq and tail[0][2] <= offset)):
            _seq, start, end, _records = tail.popleft()  # sent already
            self._tail_bytes -= end - start
        if not tail or tail[0][0] != seq or not tail[0][1] <= offset:
            return None
        batch: list[tuple[str, bytes]] = []
        end = offset
        for chunk_seq, chunk_start, chunk_end, records in tail:
            if chunk_seq != seq or chunk_start > end:
                break
            if chunk_start == end and chunk_end - offset <= max_bytes:  # the whole append, as given
                batch += records
                end = chunk_end
                continue
            position = chunk_start  # record by record: the cursor is inside it, or it is too big
            for kind, message in records:
                following = position + _HEADER.size + len(message)
                if position == end:
                    if batch and following - offset > max_bytes:
                        break
                    batch.append((kind, message))
                    end = following
                elif position > end:
                    break
                position = following
            if end != chunk_end:
                break
        if not batch:
            return None
        self._outstanding = (seq, end)
        return batch

    def _write(self, buffer: bytes | bytearray) -> None:
        if buffer:
            self._file.write(buffer)
            self._file.flush()
            self._sizes[self._write_seq] += len(buffer)

    def _roll(self) -> None:
        _sync(self._file.fileno())
        self._file.close()
        self._write_seq += 1
        self._sizes[self._write_seq] = 0
        self._counts[self._write_seq] = 0
        self._file = open(self._path(self._write_seq), "ab")  # noqa: SIM115 - closed by close()
        os.chmod(self._path(self._write_seq), 0o640)

    def _evict_reads(self, needed_bytes: int) -> None:
        """Drop the oldest unsent read records, one by one, until ``needed_bytes`` are free (or no read is
        left); each segment that loses some is rewritten without them."""
        freed = 0
        for seq in sorted(self._sizes):
            if freed >= needed_bytes:
                break
            start = self._cursor[1] if seq == self._cursor[0] else 0
            if self._outstanding is not None and self._outstanding[0] == seq:
                start = max(start, self._outstanding[1])  # the sender holds a batch up to there
            path = self._path(seq)
            data = path.read_bytes()
            kept = bytearray(data[:start])
            dropped = 0
            for end, kind, message in _records(data):
                if end <= start:
                    continue
                if kind == KIND_CODES["read"] and freed < needed_bytes:
                    dropped += 1
                    freed += _HEADER.size + len(message)
                else:
                    kept += _HEADER.pack(len(message), kind)
                    kept += message
            if not dropped:
                continue
            writing = seq == self._write_seq
            if writing:
                self._file.close()
            temporary = path.with_suffix(".tmp")
            with open(temporary, "wb") as file:
                file.write(kept)
                file.flush()
                os.fsync(file.fileno())
            os.chmod(temporary, 0o640)
            os.replace(temporary, path)
            if writing:
                self._file = open(path, "ab")  # noqa: SIM115 - closed by close()
            self._sizes[seq] = len(kept)
            self._counts[seq] -= dropped
            self.evicted += dropped

    # -- sender side ---------------------------------------------------------------------------------------

    def read(self, max_bytes: int) -> tuple[list[tuple[str, bytes]], SpoolCursor]:
        """The next records to send, in order, up to about ``max_bytes``; nothing moves until commit()."""
        with self._lock:
            seq, offset = self._cursor
            while offset >= self._sizes[seq] and seq != self._write_seq:
                self._drop_segment(seq)
                seq, offset = self._cursor
            if offset >= self._sizes[seq]:
                self.data_ready.clear()
                return [], self._cursor
            kept = self._from_tail(seq, offset, max_bytes)
            if kept is not None:
                assert self._outstanding is not None
                return kept, self._outstanding
            with open(self._path(seq), "rb") as file:
                file.seek(offset)
                data = file.read(min(max_bytes, self._sizes[seq] - offset))
                if len(data) < _HEADER.size + 1 or next(_records(data), None) is None:
                    # One record larger than max_bytes: read exactly it.
                    file.seek(offset)
                    length, _kind = _HEADER.unpack(file.read(_HEADER.size))
                    file.seek(offset)
                    data = file.read(_HEADER.size + length)
            batch: list[tuple[str, bytes]] = []
            end = 0
            for record_end, kind, message in _records(data):
                batch.append((KIND_NAMES[kind], message))
                end = record_end
            self._outstanding = (seq, offset + end)
            return batch, self._outstanding

    def commit(self, cursor: SpoolCursor, count: int) -> None:
        """The records read up to ``cursor`` reached the collector."""
        with self._lock:
            self._outstanding = None
            seq, offset = cursor
            self._cursor = cursor
            self._counts[seq] -= count
            if offset >= self._sizes[seq] and seq != self._write_seq:
                self._drop_segment(seq)
            self._save_cursor()
            if self.full and self.pending_bytes <= self.resume_bytes:
                self.full = False

    def release(self) -> None:
        """The batch from read() was not sent; it will be read again."""
        with self._lock:
            self._outstanding = None

    def _drop_segment(self, seq: int) -> None:
        os.unlink(self._path(seq))
        del self._sizes[seq]
        del self._counts[seq]
        self._cursor = (min(self._sizes), 0)

    def _save_cursor(self) -> None:
        position = _POSITION.pack(*self._cursor)
        os.pwrite(self._cursor_fd, position + zlib.crc32(position).to_bytes(4, "big"), 0)

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.flush()
                _sync(self._file.fileno())
                self._file.close()
            if self._cursor_fd >= 0:
                os.close(self._cursor_fd)
                self._cursor_fd = -1
