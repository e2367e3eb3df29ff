"""Give a socket the firewall mark that lets its packets bypass the tunnel's routing table."""

from __future__ import annotations

import socket

from wiretun.netdev.errors import NetdevError, errno_of

FWMARK_MAX = 0xFFFFFFFF


def mark_socket(sock: socket.socket, fwmark: int) -> None:
    """Set `SO_MARK` on `sock` (needs CAP_NET_ADMIN); raises NetdevError on failure."""
    if not 0 < fwmark <= FWMARK_MAX:
        raise ValueError(f"fwmark must be in 1..0x{FWMARK_MAX:x}, got {fwmark!r}")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, fwmark)
    except OSError as exc:
        raise NetdevError(
            "set SO_MARK", f"0x{fwmark:x} on socket fd {sock.fileno()}", errno_of(exc)
        ) from exc


def socket_mark(sock: socket.socket) -> int:
    """The socket's current `SO_MARK` (0 when unmarked)."""
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK)
