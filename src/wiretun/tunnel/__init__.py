"""The asyncio shell around the WireGuard core: `Tunnel` (one interface as one object), config
loading, UAPI, UDP, the event loop, `wiretun up`/`down`/`show`.

The names below are imported on first use (PEP 562): `import wiretun.tunnel` alone, as the
CLI does for `--help`, costs nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wiretun.tunnel.config import ConfigError, TunnelConfig, load_config, parse_config
    from wiretun.tunnel.stats import PeerCounters, TunnelStats
    from wiretun.tunnel.tunnel import (
        Tunnel,
        TunnelError,
        TunnelHooks,
        TunnelOptions,
        TunnelRunningError,
    )

_LAZY = {
    "ConfigError": "wiretun.tunnel.config",
    "TunnelConfig": "wiretun.tunnel.config",
    "load_config": "wiretun.tunnel.config",
    "parse_config": "wiretun.tunnel.config",
    "PeerCounters": "wiretun.tunnel.stats",
    "TunnelStats": "wiretun.tunnel.stats",
    "Tunnel": "wiretun.tunnel.tunnel",
    "TunnelError": "wiretun.tunnel.tunnel",
    "TunnelHooks": "wiretun.tunnel.tunnel",
    "TunnelOptions": "wiretun.tunnel.tunnel",
    "TunnelRunningError": "wiretun.tunnel.tunnel",
}

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
    "load_config",
    "parse_config",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
