"""The data path's per-segment work, native (C + OpenSSL) or pure Python, chosen once.

`load()` returns the backend: the C extension `_native` when it was built and loads, unless
``WIRETUN_PURE=1`` asks for the pure twin (`pure`), which also takes over, with one warning
line, when the extension is missing. Both offer the same functions (a `Backend`); the
protocol core is handed one (`Device(datapath=...)`) and never imports either.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

from wiretun.datapath import pure

__all__ = ["NATIVE", "PURE", "Backend", "CoalescerLike", "load", "native", "native_error"]

log = logging.getLogger(__name__)

_Buffer = bytes | bytearray | memoryview


class CoalescerLike(Protocol):
    def add(self, packet: _Buffer, /) -> None: ...
    def pending(self) -> int: ...
    def finish(self) -> list[bytes]: ...


SealResult = tuple[bytes, list[tuple[int, int]], int, dict[str, int]]
OpenResult = tuple[int, int, int, int, bool, tuple[int, int, int, int]]


@dataclass(frozen=True, slots=True)
class Backend:
    """One implementation of the per-segment work (see `pure` for what each does)."""

    name: str  # "native" or "pure"
    seal: Callable[[Sequence[_Buffer], bytes, int, int, int, int, bool], SealResult]
    open_run: Callable[
        [_Buffer, int, int, bytes, int, bytearray, int, bytes, bytes, Any], OpenResult
    ]
    segments: Callable[[_Buffer, bool], int]
    coalescer: Callable[..., CoalescerLike]  # (vnet=..., udp=...)
    # Frames to packets for the per-packet path (rare there: Python in both backends).
    split_frames: Callable[[Sequence[_Buffer]], tuple[list[bytes], dict[str, int]]]


PURE = Backend("pure", pure.seal, pure.open_run, pure.segments, pure.Coalescer, pure.split_frames)


_module: ModuleType | None
_error: str | None
try:
    from wiretun.datapath import _native as _module
except ImportError as exc:  # not built (no compiler or no libssl-dev at install time)
    _module, _error = None, str(exc)
else:
    _error = None

NATIVE: Backend | None = None
if _module is not None:
    NATIVE = Backend(
        "native",
        _module.seal,
        _module.open_run,
        _module.segments,
        _module.Coalescer,
        pure.split_frames_unvectorised,
    )

_warned = False


def native() -> ModuleType | None:
    """The C extension module, or None when it is not available."""
    return _module


def native_error() -> str | None:
    """Why the C extension could not be loaded (None when it loaded)."""
    return _error


def load(pure_python: bool | None = None) -> Backend:
    """The backend to use: native unless `pure_python` (default: ``WIRETUN_PURE=1``) or the
    extension is unavailable (then one warning line, once per process)."""
    global _warned
    if pure_python is None:
        pure_python = os.environ.get("WIRETUN_PURE", "") not in ("", "0")
    if pure_python:
        return PURE
    if NATIVE is None:
        if not _warned:
            _warned = True
            log.warning("wiretun: native data path unavailable (%s); using pure Python", _error)
        return PURE
    return NATIVE
