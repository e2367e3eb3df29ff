"""Structured mutators: byte-level for binary messages, line-level for text formats."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

Mutator = Callable[[random.Random, bytes, Sequence[bytes]], bytes]

# Values that sit on boundaries parsers tend to get wrong.
INTERESTING_8 = (0, 1, 0x7F, 0x80, 0xFF)
INTERESTING_16 = (0, 1, 0x7FFF, 0x8000, 0xFFFF, 20, 40, 1280, 1500)
INTERESTING_32 = (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


def random_bytes(rng: random.Random, max_len: int = 256) -> bytes:
    """Short lengths are the likeliest to hit edge cases, so they are favoured."""
    n = rng.choice((rng.randrange(8), rng.randrange(64), rng.randrange(max_len + 1)))
    return rng.randbytes(n)


def flip_bit(rng: random.Random, data: bytes, _pool: Sequence[bytes]) -> bytes:
    if not data:
        return data
    buf = bytearray(data)
    i = rng.randrange(len(buf))
    buf[i] ^= 1 << rng.randrange(8)
    return bytes(buf)


def set_byte(rng: random.Random, data: bytes, _pool: Sequence[bytes]) -> bytes:
    if not data:
        return data
    buf = bytearray(data)
    i = rng.randrange(min(len(buf), 64)) if rng.random() < 0.5 else rng.randrange(len(buf))
    buf[i] = rng.choice(INTERESTING_8) if rng.random() < 0.5 else rng.randrange(256)
    return bytes(buf)


def set_word(rng: random.Random, data: bytes, _pool: Sequence[bytes]) -> bytes:
    """Overwrite a u16/u32 in either byte order: lengths, indices and counters live there."""
    size = rng.choice((2, 4))
    if len(data) < size:
        return data
    values = INTERESTING_16 if size == 2 else INTERESTING_32
    value = rng.choice(values) if rng.random() < 0.7 else rng.randrange(1 << (8 * size))
    raw = value.to_bytes(size, "little" if rng.random() < 0.5 else "big")
    at = rng.randrange(len(data) - size + 1)
    return data[:at] + raw + data[at + size :]


def truncate(rng: random.Random, data: bytes, _pool: Sequence[bytes]) -> bytes:
    if not data:
        return data
    return data[: rng.randrange(len(data))]


def extend(rng: random.Random, data: bytes, _pool: Sequence[bytes]) -> bytes:
    return data + rng.randbytes(rng.choice((1, 2, 4, 16, rng.randrange(1, 300))))


def insert(rng: random.Random, data: bytes, _pool: Sequence[bytes]) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.randbytes(rng.randrange(1, 9)) + data[at:]


def delete(rng: random.Random, data: bytes, _pool: Sequence[bytes]) -> bytes:
    if not data:
        return data
    at = rng.randrange(len(data))
    return data[:at] + data[at + rng.randrange(1, 9) :]


def duplicate(rng: random.Random, data: bytes, _pool: Sequence[bytes]) -> bytes:
    if not data:
        return data
    a = rng.randrange(len(data))
    b = min(len(data), a + rng.randrange(1, 65))
    return data[:b] + data[a:b] + data[b:]


def splice(rng: random.Random, data: bytes, pool: Sequence[bytes]) -> bytes:
    other = rng.choice(pool) if pool else b""
    return data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1) :]


BYTE_MUTATORS: tuple[Mutator, ...] = (
    flip_bit,
    flip_bit,
    set_byte,
    set_word,
    truncate,
    extend,
    insert,
    delete,
    duplicate,
    splice,
)


def header_mutator(rng: random.Random, data: bytes, pool: Sequence[bytes]) -> bytes:
    """A set_byte/set_word/flip_bit within the first 80 bytes, where the headers are (a
    64 KB input keeps its size: the byte mutators would mostly cut or splice it)."""
    if not data:
        return data
    cut = min(len(data), 80)
    return rng.choice((flip_bit, set_byte, set_word))(rng, data[:cut], pool) + data[cut:]


HEADER_MUTATORS: tuple[Mutator, ...] = (header_mutator, header_mutator, *BYTE_MUTATORS)
SAME_LENGTH: tuple[Mutator, ...] = (header_mutator, header_mutator, flip_bit, set_byte, set_word)

# Tokens that stress text parsers: separators, signs, huge numbers, odd whitespace.
TEXT_TOKENS = (
    b"",
    b"=",
    b"==",
    b"-",
    b"0",
    b"-1",
    b"65536",
    b"4294967296",
    b"99999999999999999999999",
    b"0x",
    b"0xffffffff",
    b"::",
    b"[::1]",
    b"[",
    b"]",
    b":",
    b"/",
    b"/33",
    b"/129",
    b",",
    b"#",
    b"\t",
    b"\r",
    b" ",
    b"\x00",
    b"\xff",
    b"\xc3\xa9",
    b"true",
    b"off",
    b"auto",
    b"1.2.3.4",
    b"1.2.3.4/32",
    b"fe80::1%eth0",
    b"a" * 70,
)


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def line_delete(rng: random.Random, data: bytes, _pool: Sequence[bytes]) -> bytes:
    lines = _lines(data)
    del lines[rng.randrange(len(lines))]
    return b"\n".join(lines)


def line_duplicate(rng: random.Random, data: bytes, _pool: Sequence[bytes]) -> bytes:
    lines = _lines(data)
    i = rng.randrange(len(lines))
    lines.insert(rng.randrange(len(lines) + 1), lines[i])
    return b"\n".join(lines)


def line_swap(rng: random.Random, data: bytes, _pool: Sequence[bytes]) -> bytes:
    lines = _lines(data)
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return b"\n".join(lines)


def line_from_other(rng: random.Random, data: bytes, pool: Sequence[bytes]) -> bytes:
    lines = _lines(data)
    other = _lines(rng.choice(pool)) if pool else [b""]
    lines.insert(rng.randrange(len(lines) + 1), rng.choice(other))
    return b"\n".join(lines)


def value_replace(rng: random.Random, data: bytes, _pool: Sequence[bytes]) -> bytes:
    """Replace what follows a '=' (or a whole line) with a hostile token."""
    lines = _lines(data)
    i = rng.randrange(len(lines))
    key, sep, _ = lines[i].partition(b"=")
    token = rng.choice(TEXT_TOKENS)
    lines[i] = key + sep + token if sep and rng.random() < 0.8 else token
    return b"\n".join(lines)


def token_insert(rng: random.Random, data: bytes, _pool: Sequence[bytes]) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.choice(TEXT_TOKENS) + data[at:]


TEXT_MUTATORS: tuple[Mutator, ...] = (
    line_delete,
    line_duplicate,
    line_swap,
    line_from_other,
    value_replace,
    value_replace,
    token_insert,
    flip_bit,
    set_byte,
    truncate,
    delete,
    insert,
)


def mutate(
    rng: random.Random,
    data: bytes,
    pool: Sequence[bytes],
    mutators: Sequence[Mutator] = BYTE_MUTATORS,
    max_stack: int = 4,
) -> bytes:
    """Apply 1..max_stack mutators; most inputs stay close to a valid one."""
    for _ in range(1 + min(rng.randrange(max_stack), rng.randrange(max_stack))):
        data = rng.choice(mutators)(rng, data, pool)
    return data
