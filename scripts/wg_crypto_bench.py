"""Cost of wiretun's AEAD wrappers per 1420-byte packet, next to raw ChaCha20Poly1305.encrypt,
and of a handshake (with and without the precomputed static-static DH the Device uses).

Each variant runs in interleaved rounds so machine noise hits all of them alike; the
report is the median per-packet time and its ratio to the raw call.

    .venv/bin/python scripts/wg_crypto_bench.py [--packets 20000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import struct
import sys
from collections.abc import Callable
from time import perf_counter

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from wiretun.wireguard.crypto import AeadKey, aead_open, aead_seal
from wiretun.wireguard.errors import HandshakeError
from wiretun.wireguard.handshake import (
    InitiatorHandshake,
    StaticIdentity,
    consume_initiation,
)
from wiretun.wireguard.messages import Initiation, Response

PACKET = 1420


def _time(fn: Callable[[int], object], n: int) -> float:
    start = perf_counter()
    for i in range(n):
        fn(i)
    return (perf_counter() - start) / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--packets", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)

    key = bytes(range(32))
    payload = bytes(PACKET)
    raw = ChaCha20Poly1305(key)
    nonce = struct.Struct("<4xQ")
    held = AeadKey(key)
    sealed = aead_seal(key, 0, payload, b"")

    variants: dict[str, Callable[[int], object]] = {
        "raw ChaCha20Poly1305.encrypt": lambda i: raw.encrypt(nonce.pack(i), payload, None),
        "AeadKey.seal (held key)": lambda i: held.seal(i, payload),
        "aead_seal (one-shot)": lambda i: aead_seal(key, i, payload, b""),
        "aead_open (one-shot)": lambda i: aead_open(key, 0, sealed, b""),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            samples[name].append(_time(fn, args.packets))

    base = statistics.median(samples["raw ChaCha20Poly1305.encrypt"])
    print(f"{PACKET}-byte packets, {args.packets} x {args.rounds} rounds, median per packet:")
    for name, times in samples.items():
        med = statistics.median(times)
        print(
            f"  {name:30s} {med * 1e6:8.2f} us  {PACKET / med / 1e6:8.1f} MB/s  x{med / base:.2f}"
        )

    alice, bob = StaticIdentity.generate(), StaticIdentity.generate()
    ss = alice.static_static(bob.public)
    known = {alice.public: ss}.get  # bob's view: his peers' precomputed DH
    stranger = InitiatorHandshake.create(StaticIdentity.generate(), bob.public, None, 1, 1.7e9)

    def handshake(_: int) -> object:
        ini = InitiatorHandshake.create(alice, bob.public, None, 1, 1.7e9)
        resp = consume_initiation(bob, Initiation.unpack(ini.message))
        msg, _keys = resp.create_response(None, 2)
        return ini.consume_response(Response.unpack(msg))

    def handshake_precomputed(_: int) -> object:
        # As the Device runs it: ss precomputed per peer on both sides.
        ini = InitiatorHandshake.create(alice, bob.public, None, 1, 1.7e9, static_static=ss)
        resp = consume_initiation(bob, Initiation.unpack(ini.message), static_static=known)
        msg, _keys = resp.create_response(None, 2)
        return ini.consume_response(Response.unpack(msg))

    def unknown_initiation(_: int) -> object:
        try:
            return consume_initiation(bob, Initiation.unpack(stranger.message), static_static=known)
        except HandshakeError:
            return None

    handshakes = {
        "full handshake (both sides)": handshake,
        "the same, ss precomputed": handshake_precomputed,
        "initiation from a non-peer": unknown_initiation,
    }
    for name, fn in handshakes.items():
        hs = statistics.median(_time(fn, 200) for _ in range(3))
        print(f"  {name:30s} {hs * 1e6:8.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
