"""Tests for wiretun.testing.uapi: the state-only UAPI backend follows the reference semantics."""

from __future__ import annotations

import ipaddress

from wiretun.testing.uapi import MemoryBackend
from wiretun.tunnel.uapi_protocol import (
    DeviceSnapshot,
    PeerUpdate,
    ReplacePeers,
    SetListenPort,
    SetOperation,
    apply_to_snapshot,
)

KEY_A = bytes(range(1, 33))
KEY_B = bytes(range(2, 34))


def test_starts_empty_or_from_the_given_snapshot() -> None:
    assert MemoryBackend().get_snapshot() == DeviceSnapshot()
    start = DeviceSnapshot(listen_port=51820, fwmark=7)
    assert MemoryBackend(start).get_snapshot() is start


def test_apply_keeps_state_between_calls_as_the_reference_does() -> None:
    net = ipaddress.ip_network("10.0.0.0/24")
    batches: list[list[SetOperation]] = [
        [SetListenPort(4500), PeerUpdate(KEY_A, add_allowed_ips=(net,))],
        [PeerUpdate(KEY_B, add_allowed_ips=(net,))],  # takes the prefix from KEY_A
        [PeerUpdate(KEY_A, remove=True)],
    ]
    backend = MemoryBackend()
    expected = DeviceSnapshot()
    for ops in batches:
        backend.apply(ops)
        expected = apply_to_snapshot(expected, ops)
        assert backend.get_snapshot() == expected
    snap = backend.get_snapshot()
    assert snap.listen_port == 4500
    assert [(p.public_key, p.allowed_ips) for p in snap.peers] == [(KEY_B, (net,))]
    backend.apply([ReplacePeers()])
    assert backend.get_snapshot().peers == ()
