"""wiretun.tunnel.show's rendering: `wg show`'s fields and wording, wiretun's counters, JSON
without private keys (the live path is tests/integration/test_tunnel_show_live.py)."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import tempfile
from typing import Any

import pytest

from test_tunnel_stats import PEER, sample
from wiretun.testing.uapi import MemoryBackend
from wiretun.tunnel.show import _ago, _bytes, describe, describe_stats, gather, render_text
from wiretun.tunnel.uapi import UapiServer
from wiretun.tunnel.uapi_protocol import DeviceSnapshot, PeerSnapshot

PRIVATE = base64.b64decode("4Cb6HXpToPFrwjVch+a1gI9TS1tXKYn+u4/qWftbuW4=")
PUBLIC = "whfRkAvtsx3Cblt9O//zEeO0QAVTCHmBo8ncjCw23UQ="
PEER_KEY = bytes(range(32))
SNAP = DeviceSnapshot(
    PRIVATE,
    51820,
    0xCA6C,
    (
        PeerSnapshot(
            PEER_KEY,
            preshared_key=b"\x01" * 32,
            endpoint=("192.0.2.2", 51821),
            last_handshake_ns=1_700_000_000 * 10**9,
            rx_bytes=1536,
            tx_bytes=5 * 1024**2,
            persistent_keepalive=25,
            allowed_ips=(ipaddress.ip_network("10.9.0.2/32"),),
        ),
    ),
)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "Now"), (1, "1 second ago"), (63, "1 minute, 3 seconds ago"), (7200, "2 hours ago")],
)
def test_ago_as_wg_says_it(seconds: float, text: str) -> None:
    assert _ago(seconds) == text


def test_bytes_as_wg_says_them() -> None:
    assert [_bytes(n) for n in (0, 1023, 1536, 5 * 1024**2)] == [
        "0 B", "1023 B", "1.50 KiB", "5.00 MiB"
    ]  # fmt: skip


def test_text_is_wg_show_plus_wiretun_lines() -> None:
    info = describe("wt0", SNAP, sample(mac1=2).to_json())
    text = render_text(info, now=1_700_000_063)
    assert text.splitlines()[:5] == [
        "interface: wt0",
        f"  public key: {PUBLIC}",
        "  private key: (hidden)",
        "  listening port: 51820",
        "  fwmark: 0xca6c",
    ]
    assert (
        "  drops: core.mac1 2, frames.too_many_segments 1, tun_tx.x 1, udp.send_ENETUNREACH 4"
        in text
    )
    peer = text.split("\n\n", 1)[1].splitlines()
    assert peer == [
        f"peer: {base64.b64encode(PEER_KEY).decode()}",
        "  preshared key: (hidden)",
        "  endpoint: 192.0.2.2:51821",
        "  allowed ips: 10.9.0.2/32",
        "  latest handshake: 1 minute, 3 seconds ago",
        "  transfer: 1.50 KiB received, 5.00 MiB sent",
        "  persistent keepalive: every 25 seconds",
    ]


def test_a_device_without_counters_shows_what_wg_shows() -> None:
    text = render_text(describe("wgg0", SNAP, None), now=1_700_000_001)
    assert "wiretun:" not in text and "drops:" not in text
    assert "\n  note: not a `wiretun up` tunnel: wg show's fields only" in text
    assert "latest handshake: 1 second ago" in text


def test_json_never_holds_a_private_or_preshared_key() -> None:
    out = json.dumps(describe("wt0", SNAP, None))
    for secret in (PRIVATE, b"\x01" * 32):
        assert base64.b64encode(secret).decode() not in out and secret.hex() not in out
    assert json.loads(out)["peers"][0]["preshared_key"] is True


def test_the_counters_alone_describe_what_a_get_does() -> None:
    """A wiretun device's stats carry every field of `wg show`: shown from them alone, the
    same as from get=1 and the stats together (the private key aside: stats have none)."""
    stats = sample().to_json()
    peer = PeerSnapshot(
        base64.b64decode(PEER.public_key),
        endpoint=("192.0.2.2", 51820),
        last_handshake_ns=1_700_000_000 * 10**9,
        rx_bytes=1000,
        tx_bytes=2000,
        persistent_keepalive=25,
        allowed_ips=(ipaddress.ip_network("10.9.0.2/32"),),
    )
    from_get = describe("wt0", DeviceSnapshot(PRIVATE, 51820, 0, (peer,)), stats)
    alone = describe_stats("wt0", stats)
    assert alone["public_key"] == "x"  # sample()'s
    assert {**alone, "public_key": PUBLIC} == from_get
    assert render_text(alone, now=1_700_000_063) == render_text(
        {**from_get, "public_key": "x"}, now=1_700_000_063
    )


def _gather_from(stats: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="wt-show-") as sock_dir:

        async def main() -> dict[str, Any]:
            server = UapiServer("wt0", MemoryBackend(SNAP), socket_dir=sock_dir,
                                stats=lambda: stats)  # fmt: skip
            async with server:
                return await asyncio.to_thread(gather, "wt0", sock_dir)

        return asyncio.run(main())


def test_stats_alone_from_a_daemon_that_has_every_field() -> None:
    stats = sample().to_json()
    assert _gather_from(stats) == describe_stats("wt0", stats)


def test_an_older_daemon_without_a_field_is_asked_for_get_too() -> None:
    stats = sample().to_json()
    for peer in stats["peers"]:
        del peer["has_preshared_key"]
    shown = _gather_from(stats)
    assert shown == describe("wt0", SNAP, stats)
    assert shown["peers"][0]["preshared_key"] is True  # from get=1
