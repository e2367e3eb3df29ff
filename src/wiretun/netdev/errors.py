"""The error type of the device manager: which operation on which object failed, and why."""

from __future__ import annotations

import errno as errno_mod
import os

from pyroute2 import NetlinkError

# Errors that netlink and OS calls can raise; anything else is a bug and propagates as is.
OS_ERRORS: tuple[type[Exception], ...] = (NetlinkError, OSError)


class NetdevError(Exception):
    """A netlink or socket operation failed: `op` on `obj` gave `errno`.

    The message reads like "add route 10.1.0.0/16 table 22356: [Errno 22] Invalid argument";
    the original NetlinkError/OSError is kept as `__cause__`.
    """

    def __init__(self, op: str, obj: str, errno: int) -> None:
        super().__init__(op, obj, errno)
        self.op = op
        self.obj = obj
        self.errno = errno

    def __str__(self) -> str:
        return f"{self.op} {self.obj}: [Errno {self.errno}] {os.strerror(self.errno)}"


def errno_of(exc: BaseException) -> int:
    """The errno carried by a NetlinkError or OSError (EIO when the OS gave none)."""
    if isinstance(exc, NetlinkError):
        return int(exc.code)
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    return errno_mod.EIO
