"""How much slower the same small piece of Python runs after an idle gap on this machine.

Idle ping RTT through a tunnel is one packet per hop with long gaps in between, so every hop
runs on caches and branch predictors that the gap has emptied. This probe times one unit of
work (a short Python loop plus one ChaCha20-Poly1305 seal of 1420 bytes, roughly a tenth of
what one tunnel hop does) back to back and after gaps of 1 ms to 200 ms, either sleeping or
spinning through the gap (spinning rules out CPU idle states as the cause).

    .venv/bin/python scripts/cold_cache_probe.py [--samples 200]

Read the ratio column: on the Firecracker VMs we measure on (2026-12), the unit cost 4-8 us
back to back and 10-18x that after a 200 ms gap, spinning or sleeping, which bounds what a
Python hop can reach at idle however few syscalls it makes. The figures swing between runs;
compare the shape, not the digits.
"""

from __future__ import annotations

import argparse
import statistics
import time

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

GAPS_S = (0.0, 0.001, 0.01, 0.05, 0.2)


def _unit(aead: ChaCha20Poly1305, nonce: bytes, payload: bytes) -> int:
    total = 0
    for i in range(100):
        total += i & 7
    return total + len(aead.encrypt(nonce, payload, None))


def _wait(gap: float, spin: bool) -> None:
    if gap <= 0:
        return
    if not spin:
        time.sleep(gap)
        return
    end = time.perf_counter() + gap
    while time.perf_counter() < end:
        pass


def measure(gap: float, spin: bool, samples: int) -> float:
    """Median microseconds of one unit after `gap` seconds of sleeping or spinning."""
    aead = ChaCha20Poly1305(bytes(32))
    nonce = bytes(12)
    payload = bytes(1420)
    _unit(aead, nonce, payload)
    times = []
    for _ in range(samples):
        _wait(gap, spin)
        start = time.perf_counter_ns()
        _unit(aead, nonce, payload)
        times.append((time.perf_counter_ns() - start) / 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--samples", type=int, default=200, help="timed units per gap")
    args = parser.parse_args(argv)
    print(f"{'gap':>8} {'sleep us':>9} {'spin us':>9} {'ratio':>6}")
    base = None
    for gap in GAPS_S:
        # Fewer samples for the long gaps keeps the whole probe under a minute.
        n = args.samples if gap < 0.05 else max(20, args.samples // 10)
        slept = measure(gap, False, n)
        spun = measure(gap, True, n)
        base = base or slept
        print(f"{gap * 1000:>6.0f}ms {slept:>9.1f} {spun:>9.1f} {slept / base:>6.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
