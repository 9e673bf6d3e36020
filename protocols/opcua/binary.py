"""asyncua's binary decoding, made safe for bytes from an untrusted peer.

asyncua 2.1 reads a length-prefixed field (String, ByteString, an ExtensionObject body) by passing the
length to ``Buffer.read``, and its Buffer takes a negative length as a step *back*: ``read(-4)`` returns
nothing and rewinds four bytes. Only -1 (null) is a legal negative length (Part 6, 5.2.2.4). A list whose
element is a String of length -4 then decodes the same four bytes over and over, as often as the list's
count says: a 100-byte ActivateSession with a count of 3,000,000 keeps asyncua busy for 8 s, and the
count may be 2**31 - 1. Every decode here goes through :class:`StrictBuffer`, which refuses negative
lengths, so each element consumes input and decoding is bounded by the message size.
"""

from __future__ import annotations

from typing import TypeVar

from asyncua.common.utils import Buffer, NotEnoughData
from asyncua.ua.ua_binary import struct_from_binary

T = TypeVar("T")


class StrictBuffer(Buffer):
    """asyncua's Buffer without negative reads; copies (ExtensionObject bodies) stay strict."""

    def read(self, size: int) -> bytes:
        # Buffer.read inlined (it runs for every field): the same bookkeeping, plus the sign check.
        if size < 0:
            raise ValueError(f"negative length {size} (only -1, null, is allowed and handled before this)")
        if size > self._size:
            raise NotEnoughData(f"{size} bytes wanted, {self._size} left")
        self._size -= size
        start = self._cur_pos
        self._cur_pos = end = start + size
        return self._data[start:end]

    def skip(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"negative length {size}")
        super().skip(size)

    def copy(self, size: int = -1) -> StrictBuffer:
        if size < -1:
            raise ValueError(f"negative length {size}")
        remaining = len(self)
        if size == -1 or size > remaining:
            size = remaining
        return StrictBuffer(self._data, self.cur_pos, size)


def decode(cls: type[T], data: bytes, offset: int = 0) -> tuple[T, int]:
    """An instance of the asyncua structure ``cls`` from ``data[offset:]``, and how many bytes are left
    after it. Raises whatever asyncua raises on bad bytes; callers turn that into a status code."""
    buffer = StrictBuffer(data, offset)
    value = struct_from_binary(cls, buffer)
    return value, len(buffer)


__all__ = ["StrictBuffer", "decode"]
