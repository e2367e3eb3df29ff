"""Fuzz every parser that sees outside bytes; exit non-zero on an escaped exception or a hang.

Seeded random generation with structured mutators (tests/fuzz), no extra dependencies:

    nice -n 10 .venv/bin/python scripts/fuzz.py [--inputs 100000] [--seed 0]
        [--only NAME ...] [--limit 1.0] [--crash-dir DIR] [--write-seeds] [--last-input FILE]
        [--replay FILE ...]

Per harness it prints inputs tried, escaped exceptions, hangs and the slowest input's time.
Failing inputs are written to --crash-dir; add them to tests/fuzz/corpus/<harness>/ once fixed.
--last-input keeps the input being run in FILE: after a sanitizer aborts the process (see
scripts/fuzz_native_asan.sh), FILE is the input that did it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# tests/ first: this file's own name would otherwise shadow the `fuzz` harness package.
sys.path.insert(0, str(ROOT / "tests"))

from fuzz.registry import NAMES, make  # noqa: E402
from fuzz.runner import CORPUS_DIR, corpus_file_name, fuzz, replay  # noqa: E402

MAX_SEED_FILE = 8192  # bigger seeds (64 KB super-packets, full GRO buffers) stay in code


def write_seeds(names: list[str]) -> None:
    """Store each harness's built-in seeds as corpus files (small, reviewable)."""
    for name in names:
        folder = CORPUS_DIR / name
        folder.mkdir(parents=True, exist_ok=True)
        for data in make(name).seeds():
            if len(data) <= MAX_SEED_FILE:
                (folder / f"seed-{corpus_file_name(data)}").write_bytes(data)


class LastInput:
    """The input being run, in a file (rewritten in place: no new file per input)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)

    def start(self, name: str) -> None:
        """Name the harness in FILE.harness (for the replay command)."""
        self.path.with_name(self.path.name + ".harness").write_text(name + "\n")

    def __call__(self, data: bytes) -> None:
        os.ftruncate(self.fd, len(data))
        os.pwrite(self.fd, data, 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--inputs", type=int, default=100_000, help="generated inputs per harness")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", choices=NAMES, help="run only these harnesses")
    parser.add_argument("--limit", type=float, default=1.0, help="seconds per input (SIGALRM)")
    parser.add_argument("--crash-dir", type=Path, default=Path("/tmp/wiretun-fuzz-crashes"))
    parser.add_argument("--write-seeds", action="store_true", help="refresh corpus seed files")
    parser.add_argument("--last-input", type=Path, help="keep the input being run in this file")
    parser.add_argument(
        "--replay", type=Path, nargs="+", metavar="FILE", help="run only these inputs"
    )
    args = parser.parse_args(argv)
    names = list(args.only or NAMES)
    if args.write_seeds:
        write_seeds(names)
        return 0
    head = ("inputs", "exceptions", "hangs", "slowest (ms)", "wall (s)")
    print(f"{'harness':<18}" + "".join(f"{h:>{len(h) + 3}}" for h in head))
    failed = False
    record = LastInput(args.last_input) if args.last_input else None
    for name in names:
        harness = make(name)
        if record is not None:
            record.start(name)
        start = time.perf_counter()
        if args.replay:
            result = replay(harness, [p.read_bytes() for p in args.replay])
        else:
            result = fuzz(harness, args.inputs, args.seed, limit=args.limit, record=record)
        wall = time.perf_counter() - start
        print(
            f"{name:<18}{result.inputs:>9}{result.exceptions:>13}{result.hangs:>8}"
            f"{result.max_seconds * 1e3:>15.2f}{wall:>11.1f}",
            flush=True,
        )
        if result.ok:
            continue
        failed = True
        folder = args.crash_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        for failure in result.failures:
            path = folder / corpus_file_name(failure.input)
            path.write_bytes(failure.input)
            print(f"  {failure.signature}: {failure.error[:160]}\n    input: {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
