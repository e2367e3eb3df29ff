"""The data path's per-segment work, native (C + OpenSSL) or pure Python, chosen once.

`load()` returns the backend: the C extension `_native` when it was built and loads, unless
``WIRETUN_PURE=1`` asks for the pure twin (`pure`), which also takes over, with one warning
line, when the extension is missing. Both have the same functions (see `Backend`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from types import ModuleType
from typing import Protocol

from wiretun.datapath import pure

__all__ = ["Backend", "CoalescerLike", "load", "native", "native_error"]

log = logging.getLogger(__name__)

_Buffer = bytes | bytearray | memoryview


class CoalescerLike(Protocol):
    def add(self, packet: _Buffer, /) -> None: ...
    def pending(self) -> int: ...
    def finish(self) -> list[bytes]: ...


class Backend(Protocol):
    """What `_native` and `pure` both provide."""

    MAX_SEGMENTS: int

    def Coalescer(self, *, vnet: bool = ..., udp: bool = ...) -> CoalescerLike: ...  # noqa: N802

    def seal(
        self,
        frames: Sequence[_Buffer],
        key: bytes,
        receiver: int,
        counter: int,
        mtu: int,
        max_bytes: int,
        vnet: bool,
        /,
    ) -> tuple[bytes, list[tuple[int, int]], int, dict[str, int]]: ...

    def segments(self, frame: _Buffer, vnet: bool, /) -> int: ...

    def open_run(
        self,
        data: _Buffer,
        offset: int,
        segment: int,
        key: bytes,
        receiver: int,
        ring: bytearray,
        next_counter: int,
        allowed_v4: bytes,
        allowed_v6: bytes,
        coalescer: CoalescerLike,
        /,
    ) -> tuple[int, int, int, int, bool, tuple[int, int, int, int]]: ...


_module: ModuleType | None
_error: str | None
try:
    from wiretun.datapath import _native as _module
except ImportError as exc:  # not built (no compiler or no libssl-dev at install time)
    _module, _error = None, str(exc)
else:
    _error = None

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
        return pure  # type: ignore[return-value]
    if _module is None:
        if not _warned:
            _warned = True
            log.warning("wiretun: native data path unavailable (%s); using pure Python", _error)
        return pure  # type: ignore[return-value]
    return _module
