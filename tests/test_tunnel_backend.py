"""Tests for wiretun.tunnel.backend: UAPI operations on a real Device match the reference."""

from __future__ import annotations

import errno
import ipaddress
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from wiretun.testing.uapi import MemoryBackend
from wiretun.tunnel.backend import DeviceBackend
from wiretun.tunnel.uapi_protocol import (
    DeviceSnapshot,
    PeerUpdate,
    ReplacePeers,
    SetFwmark,
    SetListenPort,
    SetOperation,
    SetParser,
    SetPrivateKey,
    UapiError,
    format_get,
    parse_set,
)
from wiretun.wireguard.device import Device


def _pub(priv: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(priv).public_key().public_bytes_raw()


def _net(s: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(s)


def _config_view(snap: DeviceSnapshot) -> DeviceSnapshot:
    """Configuration only, peers sorted (counters and handshake times are runtime state)."""
    peers = tuple(
        sorted(
            (
                type(p)(
                    public_key=p.public_key,
                    preshared_key=p.preshared_key,
                    endpoint=p.endpoint,
                    persistent_keepalive=p.persistent_keepalive,
                    allowed_ips=tuple(sorted(p.allowed_ips, key=str)),
                )
                for p in snap.peers
            ),
            key=lambda p: p.public_key,
        )
    )
    return DeviceSnapshot(snap.private_key, snap.listen_port, snap.fwmark, peers)


def _pair() -> tuple[DeviceBackend, MemoryBackend, list[int], list[int]]:
    priv = os.urandom(32)
    device = Device(priv, listen_port=51820, fwmark=0x5754)
    ports: list[int] = []
    marks: list[int] = []

    def rebind(port: int) -> int:
        ports.append(port)
        return port

    backend = DeviceBackend(device, now=lambda: 100.0, rebind=rebind, set_fwmark=marks.append)
    reference = MemoryBackend(backend.get_snapshot())
    return backend, reference, ports, marks


def _apply_both(backend: DeviceBackend, reference: MemoryBackend, ops: list[SetOperation]) -> None:
    backend.apply(ops)
    reference.apply(ops)
    assert _config_view(backend.get_snapshot()) == _config_view(reference.get_snapshot())


def test_peer_operations_match_the_reference() -> None:
    backend, reference, _, _ = _pair()
    k1, k2, psk = _pub(os.urandom(32)), _pub(os.urandom(32)), os.urandom(32)
    _apply_both(
        backend,
        reference,
        [
            PeerUpdate(
                k1,
                preshared_key=psk,
                endpoint=("192.0.2.1", 51820),
                persistent_keepalive=25,
                add_allowed_ips=(_net("10.0.0.0/24"), _net("fd00::/64")),
            ),
            PeerUpdate(k2, add_allowed_ips=(_net("10.0.1.0/24"),)),
        ],
    )
    # An allowed IP moves from k2 to k1; a psk of zeros removes it; keepalive 0 turns off.
    _apply_both(
        backend,
        reference,
        [
            PeerUpdate(k1, preshared_key=bytes(32), persistent_keepalive=0),
            PeerUpdate(k1, add_allowed_ips=(_net("10.0.1.0/24"),)),
            PeerUpdate(k2, remove_allowed_ips=(_net("10.0.1.0/24"),)),
        ],
    )
    _apply_both(
        backend,
        reference,
        [
            PeerUpdate(k1, replace_allowed_ips=True, add_allowed_ips=(_net("10.9.0.1/32"),)),
            PeerUpdate(_pub(os.urandom(32)), update_only=True),  # unknown: ignored
            PeerUpdate(k2, remove=True),
        ],
    )
    _apply_both(backend, reference, [ReplacePeers(), PeerUpdate(k2)])
    assert [p.public_key for p in backend.device.peers] == [k2]


def test_device_settings_go_to_the_sockets() -> None:
    backend, reference, ports, marks = _pair()
    _apply_both(backend, reference, [SetListenPort(40000), SetFwmark(0x1234)])
    assert ports == [40000] and marks == [0x1234]
    assert backend.device.listen_port == 40000 and backend.device.fwmark == 0x1234
    backend.apply([SetListenPort(40000), SetListenPort(0)])  # same port / "any": no rebind
    assert ports == [40000]
    new_key = os.urandom(32)
    _apply_both(backend, reference, [SetPrivateKey(new_key)])
    assert backend.device.public_key == _pub(new_key)


def test_failures_become_uapi_errors() -> None:
    backend, _, _, _ = _pair()

    def busy(port: int) -> int:
        raise OSError(errno.EADDRINUSE, "Address already in use")

    backend._rebind = busy
    with pytest.raises(UapiError) as e:
        backend.apply([SetListenPort(1)])
    assert e.value.errno == errno.EADDRINUSE
    with pytest.raises(UapiError) as e:
        backend.apply([SetPrivateKey(bytes(32))])
    assert e.value.errno == errno.EINVAL


def test_changed_runs_after_every_set_and_get_formats() -> None:
    calls: list[int] = []
    device = Device(os.urandom(32), listen_port=51820)
    backend = DeviceBackend(device, now=lambda: 0.0, changed=lambda: calls.append(1))
    key = _pub(os.urandom(32))
    backend.apply(parse_set([f"public_key={key.hex()}", "allowed_ip=10.1.0.0/16"]))
    assert calls == [1]
    text = format_get(backend.get_snapshot())
    assert f"public_key={key.hex()}\n" in text
    assert "allowed_ip=10.1.0.0/16\n" in text
    assert "listen_port=51820\n" in text
    assert text.endswith("errno=0\n\n")


def test_a_refused_peer_update_changes_nothing() -> None:
    """Found by the uapi fuzzer against the live backend (#15): an endpoint the Device
    refuses (port 0, which the UAPI parser accepts as wireguard-go does) failed only after
    the peer had been created and its preshared key set. The operation now applies whole or
    not at all, as the reference does."""
    device = Device(os.urandom(32))
    backend = DeviceBackend(device, now=lambda: 0.0)
    peer = _pub(os.urandom(32))
    bad = PeerUpdate(peer, preshared_key=b"\x11" * 32, endpoint=("2001:db8::1", 0))
    with pytest.raises(UapiError) as info:
        backend.apply([bad])
    assert info.value.errno == errno.EINVAL
    assert device.peers == []
    backend.apply([PeerUpdate(peer, preshared_key=b"\x22" * 32)])
    with pytest.raises(UapiError):
        backend.apply([bad])
    assert device.peer(peer).preshared_key == b"\x22" * 32 and device.peer(peer).endpoint is None


@pytest.mark.parametrize("exists", [False, True])
def test_update_only_after_a_piece_removes_only_a_peer_the_set_created(exists: bool) -> None:
    """Pieces of one large peer applied in separate calls, as the server streams them."""
    backend, reference, _, _ = _pair()
    key = _pub(os.urandom(32))
    if exists:
        _apply_both(backend, reference, [PeerUpdate(key, add_allowed_ips=(_net("fd00::/64"),))])
    other = _pub(os.urandom(32))
    _apply_both(backend, reference, [PeerUpdate(other, add_allowed_ips=(_net("10.0.0.0/24"),))])
    lines = [f"public_key={key.hex()}", "allowed_ip=10.0.0.0/24"]
    lines += [f"allowed_ip=10.1.{i // 256}.{i % 256}/32" for i in range(1100)]
    lines += ["update_only=true", "allowed_ip=10.2.0.0/16"]
    parser = SetParser(max_networks=500)
    ops, error = parser.feed(lines)
    assert error is None
    for op in [*ops, *parser.finish()]:
        _apply_both(backend, reference, [op])
    peers = {p.public_key: p for p in backend.device.peers}
    assert (key in peers) == exists
    # The new peer took 10.0.0.0/24 from `other` before it went: gone from both.
    assert _net("10.0.0.0/24") not in peers[other].allowed_ips
    if exists:
        assert _net("10.2.0.0/16") in peers[key].allowed_ips
        assert len(peers[key].allowed_ips) == 1 + 1 + 1100 + 1
