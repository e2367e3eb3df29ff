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
    from wiretun.tunnel.stats import TunnelStats
    from wiretun.tunnel.tunnel import Tunnel, TunnelError, TunnelOptions

_LAZY = {
    "Tunnel": "wiretun.tunnel.tunnel",
    "TunnelError": "wiretun.tunnel.tunnel",
    "TunnelOptions": "wiretun.tunnel.tunnel",
    "TunnelStats": "wiretun.tunnel.stats",
}

__all__ = ["Tunnel", "TunnelError", "TunnelOptions", "TunnelStats", "__version__"]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
