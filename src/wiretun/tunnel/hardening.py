"""What a root daemon holding WireGuard keys does to its own process before it reads them.

- No core file: a crash must not write the private key to disk (RLIMIT_CORE 0).
- Not dumpable (PR_SET_DUMPABLE 0): no core either way, and processes of our uid without
  CAP_SYS_PTRACE can neither ptrace us nor read /proc/PID/mem or environ. (The kernel's
  WireGuard keeps keys in kernel memory; wireguard-go relies on the same two settings being
  the administrator's.)
- No working-directory entries in PATH: hooks and the helpers we run (nft, resolvconf,
  resolvectl, bash) are looked up on PATH, and an empty or relative entry means "the current
  directory", wherever root happened to start us.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource

log = logging.getLogger(__name__)

PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4


def _prctl(option: int, arg: int = 0) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    result = int(prctl(option, arg, 0, 0, 0))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def is_dumpable() -> bool:
    return _prctl(PR_GET_DUMPABLE) != 0


def safe_path(path: str) -> str:
    """`path` (a PATH value) without the entries that mean the working directory."""
    return os.pathsep.join(p for p in path.split(os.pathsep) if os.path.isabs(p))


def harden_process() -> None:
    """Apply the settings above to this process (idempotent; a failure is logged, since a
    tunnel without them still works)."""
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (OSError, ValueError) as e:
        log.warning("cannot turn off core dumps: %s", e)
    try:
        _prctl(PR_SET_DUMPABLE, 0)
    except OSError as e:
        log.warning("cannot make the process non-dumpable: %s", e)
    path = os.environ.get("PATH")
    if path is not None and safe_path(path) != path:
        log.info("PATH: ignoring entries relative to the working directory")
        os.environ["PATH"] = safe_path(path)
