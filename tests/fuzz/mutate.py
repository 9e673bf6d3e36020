"""Byte-level mutations for the fuzz campaign, in the spirit of AFL's havoc stage: bit flips, interesting
values, inserted, deleted and duplicated runs, truncation, splicing two corpus entries, and edits of the
length fields a target names (so a frame can claim more or less than it holds)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

# (offset, width in bytes, byte order) of a length field in an input
LengthField = tuple[int, int, str]

INTERESTING: dict[int, tuple[int, ...]] = {
    1: (0, 1, 0x7F, 0x80, 0xFF),
    2: (0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF),
    4: (0, 1, 0xFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF),
}


class Mutator:
    """Stacks one to four random mutations on a corpus entry."""

    def __init__(
        self,
        rng: random.Random,
        corpus: Sequence[bytes],
        length_fields: Callable[[bytes], list[LengthField]] = lambda _data: [],
    ) -> None:
        self.rng = rng
        self.corpus = corpus
        self.length_fields = length_fields
        self._ops: list[Callable[[bytearray], bytearray]] = [
            self.flip_bit,
            self.flip_bit,
            self.set_byte,
            self.interesting,
            self.insert,
            self.delete,
            self.duplicate,
            self.truncate,
            self.splice,
            self.length_edit,
            self.length_edit,
        ]

    def mutate(self, data: bytes) -> bytes:
        out = bytearray(data)
        for _ in range(self.rng.choice((1, 1, 1, 2, 2, 3, 4))):
            out = self.rng.choice(self._ops)(out)
        return bytes(out)

    def _at(self, data: bytearray) -> int:
        return self.rng.randrange(len(data)) if data else 0

    def flip_bit(self, data: bytearray) -> bytearray:
        if data:
            data[self._at(data)] ^= 1 << self.rng.randrange(8)
        return data

    def set_byte(self, data: bytearray) -> bytearray:
        if data:
            data[self._at(data)] = self.rng.randrange(256)
        return data

    def interesting(self, data: bytearray) -> bytearray:
        width = self.rng.choice((1, 2, 4))
        if len(data) < width:
            return data
        at = self.rng.randrange(len(data) - width + 1)
        value = self.rng.choice(INTERESTING[width])
        data[at : at + width] = value.to_bytes(width, self.rng.choice(("little", "big")))
        return data

    def insert(self, data: bytearray) -> bytearray:
        at = self.rng.randrange(len(data) + 1)
        count = self.rng.choice((1, 2, 4, 8, 32, 200))
        filler = (
            bytes([self.rng.randrange(256)]) * count if self.rng.random() < 0.5 else self.rng.randbytes(count)
        )
        data[at:at] = filler
        return data

    def delete(self, data: bytearray) -> bytearray:
        if data:
            at = self._at(data)
            del data[at : at + self.rng.choice((1, 2, 4, 16))]
        return data

    def duplicate(self, data: bytearray) -> bytearray:
        if data:
            at = self._at(data)
            end = min(len(data), at + self.rng.choice((1, 4, 16, 64)))
            data[at:at] = data[at:end] * self.rng.choice((1, 2, 8))
        return data

    def truncate(self, data: bytearray) -> bytearray:
        return data[: self.rng.randrange(len(data) + 1)]

    def splice(self, data: bytearray) -> bytearray:
        other = self.rng.choice(self.corpus)
        if not data or not other:
            return data + bytearray(other)
        return data[: self._at(data)] + bytearray(other[self.rng.randrange(len(other)) :])

    def length_edit(self, data: bytearray) -> bytearray:
        fields = [f for f in self.length_fields(bytes(data)) if f[0] + f[1] <= len(data)]
        if not fields:
            return self.interesting(data)
        offset, width, order = self.rng.choice(fields)
        current = int.from_bytes(data[offset : offset + width], "little" if order == "<" else "big")
        choice = self.rng.random()
        if choice < 0.4:
            value = current + self.rng.choice((-2, -1, 1, 2, 8, -8))
        elif choice < 0.7:
            value = self.rng.choice(INTERESTING[width])
        else:
            value = self.rng.randrange(1 << (8 * width))
        value %= 1 << (8 * width)
        data[offset : offset + width] = value.to_bytes(width, "little" if order == "<" else "big")
        return data
