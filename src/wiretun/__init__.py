"""wiretun: fast userspace tunnels on Linux (multi-queue TUN, WireGuard).

`wiretun.Tunnel` runs a WireGuard interface from a wg-quick config inside your asyncio
program; `wiretun.tun` is the TUN layer on its own, `wiretun.wireguard` the sans-I/O core.
The names here are imported on first use (PEP 562), so `import wiretun` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from wiretun.tunnel.config import ConfigError, TunnelConfig
    from wiretun.tunnel.stats import PeerCounters, TunnelStats
    from wiretun.tunnel.tunnel import (
        Tunnel,
        TunnelError,
        TunnelHooks,
        TunnelOptions,
        TunnelRunningError,
    )

# What a program embedding a tunnel uses: the Tunnel, its options and hooks, what it raises
# (ConfigError is a ValueError; TunnelRunningError a TunnelError) and what stats() returns.
# wiretun.tunnel says where each lives and imports it on first use.
__all__ = [
    "ConfigError",
    "PeerCounters",
    "Tunnel",
    "TunnelConfig",
    "TunnelError",
    "TunnelHooks",
    "TunnelOptions",
    "TunnelRunningError",
    "TunnelStats",
    "__version__",
]


def __getattr__(name: str) -> object:
    if name == "__version__" or name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module("wiretun.tunnel"), name)
