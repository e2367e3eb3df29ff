"""`wiretun-go [-f] INTERFACE`: wireguard-go's command line with wiretun as the device, so
that stock tools drive it (`WG_QUICK_USERSPACE_IMPLEMENTATION=wiretun-go wg-quick up wg0`).

As wireguard-go does, it creates the TUN and the UAPI socket and nothing else (no key, no
peers, no addresses, no routes: `wg setconf` and `ip` do the rest), daemonizes unless `-f`,
and exits on SIGTERM/SIGINT, when its UAPI socket is removed or when the device is deleted.
LOG_LEVEL=verbose|debug (wireguard-go's variable) turns on logging.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

# Only this: the daemonizing parent imports nothing heavy (the child does, once).
from wiretun.ifname import is_wg_quick_ifname
from wiretun.tunnel.detach import module_command, start_detached

if TYPE_CHECKING:
    from wiretun.tunnel.config import TunnelConfig

LOG_LEVELS = {"verbose": logging.INFO, "debug": logging.DEBUG, "error": logging.ERROR}


def _version() -> str:
    try:
        return version("wiretun")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wiretun-go",
        description="wireguard-go's command line, with wiretun as the WireGuard device.",
    )
    parser.add_argument("-f", "--foreground", action="store_true", help="do not daemonize")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("interface", nargs="?", help="the TUN device to create")
    parser.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def bare_config(name: str) -> TunnelConfig:
    """An interface as wireguard-go starts one: no key (shown as none), no peers, no routes,
    the default MTU until `ip link set mtu` (wg-quick does it right after)."""
    from wiretun.tunnel.config import InterfaceConfig, TunnelConfig  # noqa: PLC0415
    from wiretun.tunnel.uapi_protocol import ZERO_KEY  # noqa: PLC0415
    from wiretun.wireguard.device import DEFAULT_MTU  # noqa: PLC0415

    return TunnelConfig(
        InterfaceConfig(name=name, private_key=ZERO_KEY, mtu=DEFAULT_MTU, table="off"), ()
    )


def _daemonize(name: str) -> int:
    """Run ourselves in the foreground, detached; return once the device is up."""
    return start_detached(module_command("wiretun.tunnel.wiretun_go", ["-f", name]))[2]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.version:
        print(f"wiretun-go v{_version()} (wireguard-go's command line, wiretun inside)")
        return 0
    name = args.interface
    if name is None:
        print("Usage: wiretun-go [-f/--foreground] INTERFACE-NAME", file=sys.stderr)
        return 1
    if not is_wg_quick_ifname(name):
        print(f"wiretun-go: invalid interface name {name!r}", file=sys.stderr)
        return 1
    level = LOG_LEVELS.get(os.environ.get("LOG_LEVEL", "error"), logging.ERROR)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.foreground:
        return _daemonize(name)
    from wiretun.tunnel import up  # noqa: PLC0415

    opts = up.UpOptions(
        config="", name=name, queues=1, offload=True, ready_fd=args.ready_fd, print_steps=False
    )
    try:
        return asyncio.run(up.run_device(bare_config(name), opts))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
