"""`wiretun up --metrics HOST:PORT`: a tunnel's counters in Prometheus text format at
http://HOST:PORT/metrics, read at each scrape.

prometheus_client renders the text; the HTTP side is a few lines of asyncio here rather than
its threaded server, so every scrape reads the counters on the tunnel's own event loop (the
counters are plain ints and dicts that loop writes; no thread may read them mid-change):
`Tunnel.stats_in_slices`, a loop turn every 5 ms. The frozen snapshot is then rendered in a
worker thread. At 10k peers a scrape built and rendered 4.5 MB in one go: ~0.7 s of the
loop, the data path stopped meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

if TYPE_CHECKING:
    from wiretun.tunnel.stats import TunnelStats
    from wiretun.tunnel.tunnel import Tunnel

log = logging.getLogger(__name__)

MAX_REQUEST = 8192  # bytes of request line and headers we read before answering
REQUEST_TIMEOUT = 5.0


class TunnelCollector(Collector):
    """The Prometheus view of one Tunnel's TunnelStats."""

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel

    def collect(self) -> Iterator[Metric]:
        if not self.tunnel.running:
            return
        yield from metrics_of(self.tunnel.stats())


def metrics_of(s: TunnelStats) -> Iterator[Metric]:
    """Metric families for one snapshot (labels: interface, and public_key per peer)."""
    iface = [s.name]
    peer_labels = ["interface", "public_key"]
    rx = CounterMetricFamily(
        "wiretun_peer_receive_bytes", "Bytes received from the peer (WireGuard messages)",
        labels=peer_labels,
    )  # fmt: skip
    tx = CounterMetricFamily(
        "wiretun_peer_transmit_bytes", "Bytes sent to the peer (WireGuard messages)",
        labels=peer_labels,
    )  # fmt: skip
    last = GaugeMetricFamily(
        "wiretun_peer_last_handshake_seconds",
        "Unix time of the latest completed handshake (0: never)",
        labels=peer_labels,
    )
    age = GaugeMetricFamily(
        "wiretun_peer_handshake_age_seconds",
        "Seconds since the latest completed handshake (absent: never)",
        labels=peer_labels,
    )
    session = GaugeMetricFamily(
        "wiretun_peer_has_session", "1 while the peer has a usable session", labels=peer_labels
    )
    for p in s.peers:
        labels = [s.name, p.public_key]
        rx.add_metric(labels, p.rx_bytes)
        tx.add_metric(labels, p.tx_bytes)
        last.add_metric(labels, p.last_handshake or 0)
        if p.handshake_age is not None:
            age.add_metric(labels, p.handshake_age)
        session.add_metric(labels, 1 if p.has_session else 0)
    yield from (rx, tx, last, age, session)

    drops = CounterMetricFamily(
        "wiretun_drops",
        "Packets or datagrams dropped, by layer (core, frames, loop, udp, tun_rx, tun_tx) "
        "and reason; every core reason is present, zeros included",
        labels=["interface", "layer", "reason"],
    )
    for reason, n in s.core_drops.items():
        drops.add_metric([s.name, "core", reason.value], n)
    for key, n in s.drops.items():
        layer, _, what = key.partition(".")
        if layer != "core":
            drops.add_metric([s.name, layer, what], n)
    yield drops

    counters = (
        ("wiretun_packets_sealed", "Packets encrypted for peers", s.packets_sealed),
        ("wiretun_packets_opened", "Packets decrypted from peers", s.packets_opened),
        ("wiretun_handshakes_completed", "Handshakes completed", s.handshakes_completed),
        ("wiretun_udp_datagrams_received", "UDP datagrams received", s.udp.datagrams_received),
        ("wiretun_udp_datagrams_sent", "UDP datagrams sent", s.udp.datagrams_sent),
        ("wiretun_udp_received_bytes", "UDP payload bytes received", s.udp.bytes_received),
        ("wiretun_udp_sent_bytes", "UDP payload bytes sent", s.udp.bytes_sent),
        ("wiretun_tun_received_packets", "Packets read from the TUN", s.tun.total.rx_packets),
        ("wiretun_tun_sent_packets", "Packets written to the TUN", s.tun.total.tx_packets),
    )
    for name, doc, value in counters:
        yield _one(CounterMetricFamily(name, doc, labels=["interface"]), iface, value)
    peers = GaugeMetricFamily("wiretun_peers", "Configured peers", labels=["interface"])
    yield _one(peers, iface, len(s.peers))
    uptime = GaugeMetricFamily(
        "wiretun_uptime_seconds", "Seconds since the interface came up", labels=["interface"]
    )
    yield _one(uptime, iface, s.uptime)


class _Snapshot(Collector):
    def __init__(self, stats: TunnelStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        yield from metrics_of(self.stats)


def render_stats(stats: TunnelStats) -> bytes:
    """The text format of one frozen snapshot (safe in any thread: it reads only `stats`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(stats))
    return generate_latest(registry)


def _one(
    family: CounterMetricFamily | GaugeMetricFamily, labels: list[str], value: float
) -> Metric:
    family.add_metric(labels, value)
    return family


class MetricsServer:
    """HTTP on HOST:PORT: GET /metrics answers the text format, anything else 404."""

    def __init__(self, tunnel: Tunnel, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(TunnelCollector(tunnel))
        self.registry_tunnel = tunnel
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def start(self) -> None:
        """Listen (OSError if the address is taken or not ours); port 0 picks one."""
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=MAX_REQUEST
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    def render(self) -> bytes:
        """The text, read at once (the collector's way; the server uses render_async)."""
        return generate_latest(self.registry)

    async def render_async(self) -> bytes:
        """The text from counters read a slice at a time, rendered off the loop."""
        tunnel = self.registry_tunnel
        if not tunnel.running:
            return b""
        stats = await tunnel.stats_in_slices()
        return await asyncio.to_thread(render_stats, stats)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")  # the reader's limit bounds it
            method, path, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            if method == "GET" and path.split("?", 1)[0] in ("/metrics", "/"):
                status, body, ctype = "200 OK", await self.render_async(), CONTENT_TYPE_LATEST
            else:
                status, body, ctype = "404 Not Found", b"see /metrics\n", "text/plain"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a client that sends nothing useful gets nothing
        except ConnectionError:
            pass
        except Exception:  # a bug rendering must not kill the server; the log shows it
            log.exception("metrics: request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
