"""The shared fuzz runner: seed corpora, input generation, per-input time limit, results."""

from __future__ import annotations

import hashlib
import random
import signal
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from fuzz.mutate import BYTE_MUTATORS, Mutator, mutate, random_bytes

CORPUS_DIR = Path(__file__).parent / "corpus"


class Hang(BaseException):
    """One input ran past the time limit. A BaseException so no `except Exception` eats it."""


class Harness(ABC):
    """One parser under test. `check` runs one input and raises only on a bug: documented
    errors are caught inside it, and its own assertions (drop counters, round trips) fail
    with AssertionError."""

    name: str = ""
    mutators: Sequence[Mutator] = BYTE_MUTATORS
    random_share = 0.15  # inputs that are pure random bytes rather than mutated seeds

    def seeds(self) -> list[bytes]:
        """Valid inputs built in code (the corpus on disk is added to these)."""
        return []

    def reset(self) -> None:
        """Bring a stateful harness back to its initial state (called before replays)."""
        return

    def generate(self, rng: random.Random, pool: Sequence[bytes]) -> bytes:
        if not pool or rng.random() < self.random_share:
            return random_bytes(rng)
        return mutate(rng, rng.choice(pool), pool, self.mutators)

    @abstractmethod
    def check(self, data: bytes) -> None: ...


@dataclass
class Failure:
    input: bytes
    error: str  # "ExcType: message"
    where: str  # the innermost frame, to group failures with one cause

    @property
    def signature(self) -> str:
        return f"{self.error.split(':', 1)[0]} at {self.where}"


@dataclass
class FuzzResult:
    name: str
    inputs: int = 0
    exceptions: int = 0
    hangs: int = 0
    max_seconds: float = 0.0
    slowest: bytes = b""
    failures: list[Failure] = field(default_factory=list)  # the first few of each signature

    @property
    def ok(self) -> bool:
        return self.exceptions == 0 and self.hangs == 0


def load_corpus(name: str, root: Path = CORPUS_DIR) -> list[bytes]:
    folder = root / name
    if not folder.is_dir():
        return []
    return [p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()]


def corpus_file_name(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _raise_hang(_signum: int, _frame: FrameType | None) -> None:
    raise Hang


@contextmanager
def time_limit(seconds: float | None, timer: int = signal.ITIMER_REAL) -> Iterator[None]:
    """Arm an interval timer around a block (main thread only). ITIMER_REAL counts wall
    time; ITIMER_VIRTUAL counts this process's CPU time and leaves SIGALRM to pytest-timeout."""
    if seconds is None:
        yield
        return
    signum = {
        signal.ITIMER_REAL: signal.SIGALRM,
        signal.ITIMER_VIRTUAL: signal.SIGVTALRM,
        signal.ITIMER_PROF: signal.SIGPROF,
    }[timer]
    old = signal.signal(signum, _raise_hang)
    try:
        yield
    finally:
        signal.setitimer(timer, 0)
        signal.signal(signum, old)


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{Path(last.filename).name}:{last.lineno} in {last.name}"


def run_one(
    harness: Harness,
    *,
    data: bytes,
    result: FuzzResult,
    limit: float | None,
    timer: int,
    keep: int,
) -> None:
    start = time.perf_counter()
    try:
        if limit is not None:
            signal.setitimer(timer, limit)
        try:
            harness.check(data)
        finally:
            if limit is not None:
                signal.setitimer(timer, 0)
    except Hang:
        result.hangs += 1
        harness.reset()  # whatever it was doing was cut short
        _keep(result, Failure(data, f"Hang: over {limit} s", "?"), keep)
    except Exception as exc:  # noqa: BLE001 (every escaped exception is a finding)
        result.exceptions += 1
        _keep(result, Failure(data, f"{type(exc).__name__}: {exc}", _where(exc)), keep)
    elapsed = time.perf_counter() - start
    result.inputs += 1
    if elapsed > result.max_seconds:
        result.max_seconds = elapsed
        result.slowest = data


def _keep(result: FuzzResult, failure: Failure, keep: int) -> None:
    same = sum(1 for f in result.failures if f.signature == failure.signature)
    if same < keep:
        result.failures.append(failure)


def fuzz(
    harness: Harness,
    inputs: int,
    seed: int = 0,
    *,
    limit: float | None = 1.0,
    timer: int = signal.ITIMER_REAL,
    keep: int = 3,
    record: Callable[[bytes], None] | None = None,
) -> FuzzResult:
    """Replay the seeds, then run `inputs` generated inputs (seeded, so reproducible).
    `record` sees each input before it runs: a sanitizer that aborts the process leaves the
    culprit behind that way."""
    result = FuzzResult(harness.name)
    pool = [*harness.seeds(), *load_corpus(harness.name)]
    rng = random.Random(f"{harness.name}:{seed}")
    with time_limit(limit, timer):
        harness.reset()
        for data in pool:
            if record is not None:
                record(data)
            run_one(harness, data=data, result=result, limit=limit, timer=timer, keep=keep)
        for _ in range(inputs):
            data = harness.generate(rng, pool)
            if record is not None:
                record(data)
            run_one(harness, data=data, result=result, limit=limit, timer=timer, keep=keep)
    return result


def replay(harness: Harness, inputs: Sequence[bytes]) -> FuzzResult:
    """Run fixed inputs from a fresh state, without a time limit (for the test suite)."""
    result = FuzzResult(harness.name)
    harness.reset()
    for data in inputs:
        run_one(harness, data=data, result=result, limit=None, timer=signal.ITIMER_REAL, keep=10)
    return result
