"""asyncua's binary decoding, made safe for bytes from an untrusted peer.

asyncua 2.1 reads a length-prefixed field (String, ByteString, an ExtensionObject body) by passing the
length to ``Buffer.read``, and its Buffer takes a negative length as a step *back*: ``read(-4)`` returns
nothing and rewinds four bytes. Only -1 (null) is a legal negative length (Part 6, 5.2.2.4). A list whose
element is a String of length -4 then decodes the same four bytes over and over, as often as the list's
count says: a 100-byte ActivateSession with a count of 3,000,000 keeps asyncua busy for 8 s, and the
count may be 2**31 - 1. Every decode here goes through :class:`StrictBuffer`, which refuses negative
lengths, so each element consumes input and decoding is bounded by the message size.

One element type consumes nothing at all: a Variant's Null. asyncua decodes an array of it by building
a list as long as the count says, so a Write whose value is a Variant array of Null with a count of
2**31 - 1 (six bytes) made the gateway allocate 16 GiB (found by the fuzz campaign). Such an array is
held to the same bound as every other: no more elements than bytes left in the message.
"""

from __future__ import annotations

from typing import IO, Any, TypeVar

from asyncua import ua
from asyncua.common.utils import Buffer, NotEnoughData
from asyncua.ua import ua_binary
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


_unpack_uatype_array = ua_binary.unpack_uatype_array


def unpack_uatype_array(vtype: ua.VariantType, data: Buffer | IO[Any]) -> list[Any] | None:
    """asyncua's array decoding, with an array of Null bounded by the bytes left (see above)."""
    if vtype is not ua.VariantType.Null:
        return _unpack_uatype_array(vtype, data)
    length = ua_binary.Primitives.Int32.unpack(data)
    if length == -1:
        return None
    left = len(data) if isinstance(data, Buffer) else 0
    if not 0 <= length <= left:
        raise NotEnoughData(f"an array of {length} Null values with {left} bytes left")
    return [None] * length


# Variant decoding looks the function up in its module at every call: this is what it finds.
ua_binary.unpack_uatype_array = unpack_uatype_array


def decode(cls: type[T], data: bytes, offset: int = 0) -> tuple[T, int]:
    """An instance of the asyncua structure ``cls`` from ``data[offset:]``, and how many bytes are left
    after it. Raises whatever asyncua raises on bad bytes; callers turn that into a status code."""
    buffer = StrictBuffer(data, offset)
    value = struct_from_binary(cls, buffer)
    return value, len(buffer)


__all__ = ["StrictBuffer", "decode", "unpack_uatype_array"]
