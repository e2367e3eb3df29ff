"""wiretun: fast userspace tunnels on Linux (multi-queue TUN, WireGuard)."""

__version__ = "0.1.0"
