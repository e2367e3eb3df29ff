"""SaveConfig's file parses back to the same interface and peers."""

from __future__ import annotations

import base64
import ipaddress
import os
from pathlib import Path

from wiretun.tunnel.config import load_config, parse_config
from wiretun.tunnel.saveconfig import render_config, write_config
from wiretun.tunnel.uapi_protocol import DeviceSnapshot, PeerSnapshot

PRIV = "4Cb6HXpToPFrwjVch+a1gI9TS1tXKYn+u4/qWftbuW4="
PUB = "BDU8H/VB+PjZSlFV55N3qyOHYXtlNMTngERTvM8aaxA="


def test_round_trip(tmp_path: Path) -> None:
    text = (
        f"[Interface]\nPrivateKey = {PRIV}\nMTU = 1400\nTable = off\nSaveConfig = true\n"
        "PostUp = echo %i\nDNS = 10.0.0.53\n"
    )
    iface = parse_config(text, "wg7.conf").interface
    peer = PeerSnapshot(
        public_key=base64.b64decode(PUB),
        endpoint=("192.0.2.1", 51820),
        persistent_keepalive=25,
        allowed_ips=(ipaddress.ip_network("10.7.0.0/24"),),
    )
    snap = DeviceSnapshot(
        private_key=iface.private_key, listen_port=4000, fwmark=0x42, peers=(peer,)
    )
    path = tmp_path / "wg7.conf"
    write_config(str(path), render_config(iface, snap, addresses=["10.7.0.1/24"], mtu=1400))
    assert os.stat(path).st_mode & 0o777 == 0o600
    back = load_config(path)
    assert back.warnings == ()
    b = back.interface
    assert (b.listen_port, b.fwmark, b.mtu, b.table, b.save_config) == (
        4000,
        0x42,
        1400,
        "off",
        True,
    )
    assert b.post_up == ("echo %i",) and b.dns == ("10.0.0.53",)
    assert [str(a) for a in b.addresses] == ["10.7.0.1/24"]
    (p,) = back.peers
    assert p.endpoint == ("192.0.2.1", 51820)
    assert p.persistent_keepalive == 25 and [str(n) for n in p.allowed_ips] == ["10.7.0.0/24"]
