"""The exceptions of the TUN layer, named by whose fault they are."""

from __future__ import annotations


class TunError(Exception):
    """Base class of every error raised by `wiretun.tun`."""


class InvalidTunName(TunError, ValueError):  # noqa: N818 (names fixed by the API)
    """The interface name cannot be a Linux interface name (checked before any syscall)."""


class TunExists(TunError, FileExistsError):  # noqa: N818 (names fixed by the API)
    """A device with this name already exists (exclusive create refused with EBUSY)."""


class TunClosed(TunError):  # noqa: N818 (names fixed by the API)
    """The Tun was closed by its owner; no further I/O is possible."""


class TunBroken(TunError):  # noqa: N818 (names fixed by the API)
    """A queue failed (read error or end of file); the OSError, if any, is the cause."""


class QueueFull(TunError):  # noqa: N818 (names fixed by the API)
    """No room to queue a packet for writing now; wait with `send_ready()`."""


class TunBusy(TunError, RuntimeError):  # noqa: N818 (names fixed by the API)
    """Another task is already waiting in `recv_many`: one receiver at a time, or packets
    would go to whichever waiter the loop happens to wake first."""


class InvalidPacket(TunError, ValueError):  # noqa: N818 (names fixed by the API)
    """What was given to `send`/`send_many` is not an IP packet the TUN can take (not bytes,
    not IPv4/IPv6, its IP length does not match, or over 64 KiB); nothing was sent."""
