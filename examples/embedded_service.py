"""A plain asyncio service with a WireGuard tunnel inside it.

The service is a UDP echo server that listens on the tunnel's own address, so only peers of
the tunnel can reach it. The tunnel comes from a wg-quick file; the program reports what it
counts (`Tunnel.stats()`) as JSON lines on stdout every few seconds and once more when it
stops (SIGINT/SIGTERM). Run it as root (it creates a TUN device and sets its address):

    python examples/embedded_service.py /etc/wireguard/wg0.conf --listen 10.9.0.1:7000

and from a peer: `echo hello | nc -u -w1 10.9.0.1 7000`. ADDRESS must be one of the
config's Address= (the service binds to it once the tunnel is up). Exit codes as `wiretun
up`'s: 0 after a clean stop, 2 for a bad configuration or argument, 1 for anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import signal
import sys
from typing import cast

from wiretun import ConfigError, Tunnel, TunnelError, TunnelStats


class Echo(asyncio.DatagramProtocol):
    """Sends every datagram back where it came from, and counts them."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.echoed = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (CPython's datagram transport does not subclass DatagramTransport: no isinstance.)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)
        self.echoed += 1


def report(event: str, stats: TunnelStats, echoed: int) -> None:
    print(
        json.dumps(
            {
                "event": event,
                "echoed": echoed,
                "peers": [
                    {
                        "public_key": p.public_key,
                        "rx_bytes": p.rx_bytes,
                        "tx_bytes": p.tx_bytes,
                        "handshake_age": p.handshake_age,
                    }
                    for p in stats.peers
                ],
                "drops": stats.drops,
            }
        ),
        flush=True,
    )


def address_and_port(text: str) -> tuple[str, int]:
    """ADDRESS:PORT (an IPv6 address in brackets) for argparse."""
    host, sep, port = text.rpartition(":")
    try:
        address = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
        number = int(port)
    except ValueError:
        number = -1
    if not sep or not 0 < number < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not ADDRESS:PORT (e.g. 10.9.0.1:7000)")
    return str(address), number


async def serve(config: str, name: str | None, listen: tuple[str, int], every: float) -> None:
    async with Tunnel.from_config(config, name=name) as tunnel:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, tunnel.stop, sig.name)
        # The tunnel is up: its address exists, so the service can bind to it.
        try:
            transport, echo = await loop.create_datagram_endpoint(Echo, local_addr=listen)
        except OSError as e:
            raise TunnelError(f"cannot listen on {listen[0]} port {listen[1]}: {e.strerror}") from e
        print(json.dumps({"event": "up", "name": tunnel.name, "port": tunnel.listen_port,
                          "public_key": tunnel.public_key}), flush=True)  # fmt: skip
        closed = asyncio.ensure_future(tunnel.wait_closed())
        try:
            while not closed.done():
                await asyncio.wait([closed], timeout=every)
                report("stats", tunnel.stats(), echo.echoed)
        finally:
            transport.close()
    report("down", tunnel.stats(), echo.echoed)  # the counters outlive the tunnel


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="example: %(prog)s /etc/wireguard/wg0.conf --listen 10.9.0.1:7000",
    )
    parser.add_argument("config", help="a wg-quick configuration file")
    parser.add_argument("--name", help="interface name (default: the file's name)")
    parser.add_argument("--listen", required=True, type=address_and_port, metavar="ADDRESS:PORT",
                        help="where on the tunnel to echo (one of its Address=)")  # fmt: skip
    parser.add_argument("--every", type=float, default=5.0, metavar="SECONDS",
                        help="seconds between reports (default: 5)")  # fmt: skip
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.config, args.name, args.listen, args.every))
    except ConfigError as e:  # the file: one line naming it, the line and the field
        print(f"{parser.prog}: {e}", file=sys.stderr)
        return 2
    except TunnelError as e:  # could not come up (no root, name in use, ...): one line
        print(f"{parser.prog}: {e}", file=sys.stderr)
        return 2 if e.config else 1
    except KeyboardInterrupt:  # Ctrl-C before the tunnel was up (afterwards it stops it)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
