"""A structured mutator for when atheris (libFuzzer) is not installed, and for the bench.

Each new input is a corpus member with one to MAX_STACK mutations stacked: bit flips,
interesting bytes, byte runs inserted, deleted or duplicated, a splice with another member,
a token from the target's dictionary (CRLFs and header names for HTTP, compression
pointers and OPT heads for DNS), a 16-bit big-endian field set to a boundary value (DNS
counts, RDLENGTHs, option lengths, TCP length prefixes), and a DNS compression pointer
aimed before, at or after itself. Seeded, so a run is repeatable.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

MAX_STACK = 4  # mutations per generated input
MAX_INSERT_BYTES = 32
INTERESTING_BYTES = (0x00, 0x01, 0x3F, 0x40, 0x7F, 0x80, 0xC0, 0xFF)
INTERESTING_U16: tuple[int, ...] = (
    0,
    1,
    2,
    0x3F,
    0x40,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0x200,
    0x4D0,
    0x1000,
)
INTERESTING_U16 += (0x7FFF, 0x8000, 0xC000, 0xFFFE, 0xFFFF)


class Mutator:
    """Generates inputs from a corpus; `max_len` bounds every input it returns."""

    def __init__(
        self, corpus: Sequence[bytes], tokens: Sequence[bytes], seed: int, max_len: int
    ) -> None:
        if not corpus:
            raise ValueError("a mutator needs at least one seed input")
        self.corpus = list(corpus)
        self._tokens = list(tokens) or [b"\0"]
        self._rng = random.Random(seed)
        self._max_len = max_len
        self._ops: tuple[Callable[[bytearray], None], ...] = (
            self._flip_bit, self._set_byte, self._insert_random, self._delete,
            self._duplicate, self._splice, self._insert_token, self._insert_token,
            self._set_u16, self._set_u16, self._pointer, self._truncate,
        )  # fmt: skip

    def add(self, data: bytes) -> None:
        """Keep an input that did something new (the runner decides what is new)."""
        self.corpus.append(data)

    def generate(self) -> bytes:
        rng = self._rng
        data = bytearray(rng.choice(self.corpus))
        for _ in range(rng.randint(1, MAX_STACK)):
            rng.choice(self._ops)(data)
        return bytes(data[: self._max_len])

    def _offset(self, data: bytearray, extra: int = 0) -> int:
        return self._rng.randint(0, max(0, len(data) - 1 + extra))

    def _flip_bit(self, data: bytearray) -> None:
        if data:
            data[self._offset(data)] ^= 1 << self._rng.randrange(8)

    def _set_byte(self, data: bytearray) -> None:
        if data:
            data[self._offset(data)] = self._rng.choice(INTERESTING_BYTES)

    def _insert_random(self, data: bytearray) -> None:
        size = self._rng.randint(1, MAX_INSERT_BYTES)
        at = self._offset(data, 1)
        data[at:at] = self._rng.randbytes(size)

    def _delete(self, data: bytearray) -> None:
        if data:
            at = self._offset(data)
            del data[at : at + self._rng.randint(1, MAX_INSERT_BYTES)]

    def _duplicate(self, data: bytearray) -> None:
        if data:
            at = self._offset(data)
            chunk = data[at : at + self._rng.randint(1, 4 * MAX_INSERT_BYTES)]
            data[at:at] = chunk * self._rng.randint(1, 8)

    def _splice(self, data: bytearray) -> None:
        other = self._rng.choice(self.corpus)
        cut, start = self._offset(data, 1), self._rng.randint(0, len(other))
        data[cut:] = other[start:]

    def _insert_token(self, data: bytearray) -> None:
        at = self._offset(data, 1)
        token = self._rng.choice(self._tokens)
        if self._rng.random() < 0.5:
            data[at:at] = token
        else:
            data[at : at + len(token)] = token

    def _set_u16(self, data: bytearray) -> None:
        if len(data) >= 2:
            at = self._rng.randint(0, len(data) - 2)
            value = self._rng.choice(INTERESTING_U16)
            if self._rng.random() < 0.3:
                value = (len(data) + self._rng.randint(-3, 3)) & 0xFFFF
            data[at : at + 2] = value.to_bytes(2)

    def _pointer(self, data: bytearray) -> None:
        """A compression pointer (RFC 1035 §4.1.4) to here, before here or past the end."""
        at = self._offset(data, 1)
        target = self._rng.choice((at, max(0, at - 2), 12, self._rng.randint(0, len(data) + 4)))
        data[at : at + 2] = (0xC000 | (target & 0x3FFF)).to_bytes(2)

    def _truncate(self, data: bytearray) -> None:
        del data[self._offset(data, 1) :]
