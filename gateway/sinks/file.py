"""The audit file and stdout sinks: one line per record, in the sink's format (JSON lines by default).

The file is created 0640 (the audit trail names identities and values; the group is for log shippers),
follows logrotate (a renamed or deleted file is noticed at the next batch; SIGHUP reopens it) and can
rotate itself by size: past ``rotate_mib`` the file becomes ``<name>.1`` (older ones shift up to
``<name>.<keep>``, the oldest is deleted) and a new one is started.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable

from gateway.sinks.base import Record, Sink

__all__ = ["FileSink", "StdoutSink"]

FILE_MODE = 0o640


def _join(line: Callable[[Record], bytes], records: list[Record]) -> bytearray:
    # Appending to one bytearray frees each line at once; a join() over a list kept them all alive.
    data = bytearray()
    for record in records:
        data += line(record)
    return data


class FileSink(Sink):
    type_name = "file"

    def __init__(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        rotate_mib: float = 0,
        keep: int = 5,
        queue_limit: int = 100_000,
        flush_interval_s: float = 0.05,
        format: str | None = None,
    ) -> None:
        super().__init__(name, queue_limit=queue_limit, flush_interval_s=flush_interval_s, format=format)
        if rotate_mib < 0 or keep < 1:
            raise ValueError("rotate_mib must be >= 0 and keep >= 1")
        self.path = os.fspath(path)
        self.rotate_bytes = int(rotate_mib * 1024 * 1024)
        self.keep = keep
        self.rotations = 0
        self._file: io.FileIO | None = None
        self._file_id: tuple[int, int] | None = None
        self._size = 0
        self._reopen_requested = False
        self._torn = False  # a failed write may have left half a line at the end of the file

    def status(self) -> dict[str, object]:
        return {**super().status(), "path": self.path, "rotations": self.rotations}

    def reopen(self) -> None:
        self._reopen_requested = True

    def _open(self) -> None:
        try:
            self._ensure_file()
        except OSError as exc:
            self.note_failure(exc)

    def _close(self) -> None:
        self._close_file()

    def _deliver(self, records: list[Record]) -> bool:
        data = _join(self.line, records)
        try:
            file = self._ensure_file()
            if self.rotate_bytes and self._size and self._size + len(data) > self.rotate_bytes:
                self._rotate()
                file = self._ensure_file()
            view = memoryview(data)
            while view:
                count = file.write(view)
                if not count:
                    raise OSError(f"short write to {self.path}")
                self._size += count
                view = view[count:]
        except OSError as exc:
            self.note_failure(exc)
            self._torn = True
            self._close_file()
            return False
        return True

    def _rotate(self) -> None:
        self._close_file()
        for index in range(self.keep - 1, 0, -1):
            older = f"{self.path}.{index}"
            if os.path.exists(older):
                os.replace(older, f"{self.path}.{index + 1}")
        os.replace(self.path, f"{self.path}.1")
        self.rotations += 1

    def _ensure_file(self) -> io.FileIO:
        file = self._file
        if file is not None and (self._reopen_requested or self._rotated()):
            self._close_file()
            file = None
        if file is None:
            self._reopen_requested = False
            # Unbuffered: the batch is the buffer. A BufferedWriter would keep the bytes of a failed write and
            # flush them later on close(), writing records already counted as dropped.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
            file = io.FileIO(fd, "ab", closefd=True)
            try:
                stat = os.fstat(fd)
                if self._torn and stat.st_size > 0 and not self._ends_with_newline():
                    file.write(b"\n")  # finish a torn line so the next record starts a parsable one
            except OSError:
                file.close()
                raise
            self._torn = False
            self._file, self._file_id, self._size = file, (stat.st_dev, stat.st_ino), stat.st_size
        return file

    def _rotated(self) -> bool:
        # One stat per batch notices logrotate's rename or a deleted file even without reopen().
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (stat.st_dev, stat.st_ino) != self._file_id

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as reader:
            reader.seek(-1, os.SEEK_END)
            return reader.read(1) == b"\n"

    def _close_file(self) -> None:
        file, self._file, self._file_id = self._file, None, None
        if file is not None:
            try:
                file.close()
            except OSError:
                self._torn = True


class StdoutSink(Sink):
    type_name = "stdout"

    def _deliver(self, records: list[Record]) -> bool:
        out = sys.stdout  # looked up per batch: tests and daemons replace it
        data = _join(self.line, records)
        try:
            out.flush()  # text already buffered by print() goes first, so lines never interleave
            buffer = getattr(out, "buffer", None)
            if buffer is not None:
                buffer.write(data)
                buffer.flush()
            else:
                out.write(data.decode())
                out.flush()
        except (OSError, ValueError, AttributeError) as exc:
            self.note_failure(exc)
            return False
        return True
