"""wiretun.tunnel.metrics over loopback (no root): the text format parses, per-peer bytes,
handshake age and drops by layer and reason are there; other paths are 404."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from prometheus_client.parser import text_string_to_metric_families

from test_tunnel_stats import PEER, sample
from wiretun.tunnel.metrics import MetricsServer
from wiretun.tunnel.stats import TunnelStats
from wiretun.tunnel.tunnel import Tunnel


class FakeTunnel:
    running = True

    def __init__(self, stats: TunnelStats) -> None:
        self._stats = stats

    def stats(self) -> TunnelStats:
        return self._stats

    async def stats_in_slices(self) -> TunnelStats:
        return self._stats


async def _get(port: int, path: str) -> tuple[str, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    head, _, body = data.decode().partition("\r\n\r\n")
    return head, body


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_scrape_over_loopback() -> None:
    async def main() -> tuple[str, str, str]:
        server = MetricsServer(cast(Tunnel, FakeTunnel(sample(mac1=3))), "127.0.0.1", 0)
        await server.start()
        try:
            head, body = await _get(server.port, "/metrics")
            missing, _ = await _get(server.port, "/other")
        finally:
            await server.close()
        return head, body, missing

    head, body, missing = asyncio.run(main())
    assert head.startswith("HTTP/1.1 200 OK") and "Content-Type: text/plain" in head
    assert missing.startswith("HTTP/1.1 404")
    got = _samples(body)
    peer = (("interface", "wt0"), ("public_key", PEER.public_key))
    assert got[("wiretun_peer_receive_bytes_total", peer)] == 1000
    assert got[("wiretun_peer_transmit_bytes_total", peer)] == 2000
    assert got[("wiretun_peer_handshake_age_seconds", peer)] == 3.5
    assert got[("wiretun_peer_last_handshake_seconds", peer)] == 1_700_000_000
    core = (("interface", "wt0"), ("layer", "core"))
    assert got[("wiretun_drops_total", (*core, ("reason", "mac1")))] == 3
    assert got[("wiretun_drops_total", (*core, ("reason", "replay")))] == 0
    udp = (("interface", "wt0"), ("layer", "udp"), ("reason", "send_ENETUNREACH"))
    assert got[("wiretun_drops_total", udp)] == 4
    assert got[("wiretun_packets_opened_total", (("interface", "wt0"),))] == 6


def test_a_stopped_tunnel_exports_nothing() -> None:
    fake = FakeTunnel(sample())
    fake.running = False
    server = MetricsServer(cast(Tunnel, fake), "127.0.0.1", 0)
    assert b"wiretun_" not in server.render()
    assert asyncio.run(server.render_async()) == b""


def test_the_served_text_is_the_collectors() -> None:
    """What a scrape gets (read in slices, rendered in a thread) is what the registry's
    collector renders from the same counters."""
    server = MetricsServer(cast(Tunnel, FakeTunnel(sample(mac1=1))), "127.0.0.1", 0)
    assert asyncio.run(server.render_async()) == server.render()
    assert b"wiretun_peer_receive_bytes_total" in server.render()
