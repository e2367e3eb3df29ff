"""wg-quick's MTU when the config gives none: the largest route MTU towards the peers'
endpoints (else the default route's), minus 80 for WireGuard's overhead over IPv6."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger(__name__)

OVERHEAD = 80  # IPv6 40 + UDP 8 + WireGuard 32
FALLBACK_UNDERLAY_MTU = 1500


async def _messages(result: Any) -> list[Any]:
    """pyroute2 answers some requests with a list, others with an async iterator."""
    if hasattr(result, "__aiter__"):
        return [m async for m in result]
    return list(result)


async def _route_mtu(ipr: Any, msg: Any) -> int:
    """The route's `mtu` metric, else its device's MTU (0 if neither is known)."""
    metrics = msg.get("metrics") or msg.get_attr("RTA_METRICS")
    if metrics is not None:
        mtu = metrics.get("RTAX_MTU") or metrics.get_attr("RTAX_MTU")
        if mtu:
            return int(mtu)
    oif = msg.get("oif")
    if not oif:
        return 0
    links = await _messages(await ipr.get_links(int(oif)))
    return int(links[0].get("mtu") or 0) if links else 0


async def default_mtu(endpoint_hosts: Iterable[str]) -> int:
    """The MTU wg-quick would set, seen from the calling thread's namespace."""
    mtu = 0
    ipr = AsyncIPRoute(groups=0)
    try:
        for host in endpoint_hosts:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            try:
                routes = await _messages(await ipr.route("get", dst=host, family=family))
            except (NetlinkError, OSError) as e:  # unreachable: wg-quick skips it too
                log.debug("route to endpoint %s: %s", host, e)
                continue
            for msg in routes:
                mtu = max(mtu, await _route_mtu(ipr, msg))
        if mtu == 0:
            defaults = [
                m
                async for m in await ipr.get_routes(family=socket.AF_INET, table=254)
                if int(m["dst_len"]) == 0
            ]
            if defaults:
                mtu = await _route_mtu(ipr, defaults[0])
    finally:
        ipr.close()
    return (mtu or FALLBACK_UNDERLAY_MTU) - OVERHEAD
