"""Device.send_frames / receive_gro (the batch data path) against the per-packet path.

Two identical pairs (same seeds, same clock) are driven with the same input: one through the
batch entry points with a data path backend, the other through `send_packets` /
`receive_datagrams` with the offload codec's split and coalesce around them, as `wiretun up`
runs it without the native path. Wire bytes, TUN frames, drops and counters must be equal.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from test_datapath import frame_for, gro
from wiretun import datapath
from wiretun.datapath import Backend
from wiretun.testing.wgpair import WgPair, ipv4_packet, make_pair
from wiretun.tun.gro import coalesce
from wiretun.tun.gso import OffloadStats, decode_frames
from wiretun.wireguard.device import Device

BACKENDS = [b for b in (datapath.NATIVE, datapath.PURE) if b is not None]
assert datapath.NATIVE is not None, "the native data path is not built"


def established(backend: Backend | None, seed: int = 7) -> WgPair:
    pair = make_pair(seed, datapath=backend)
    pair.a.add_allowed_ips(pair.a.peers[0].public_key, ["fd00::2/128"])
    pair.b.add_allowed_ips(pair.b.peers[0].public_key, ["fd00::1/128"])
    pair.a_to_b()
    pair.net.roundtrip()
    pair.b_to_a()
    pair.net.roundtrip()
    assert pair.a.peers[0].current is not None and pair.b.peers[0].current is not None
    return pair


def wire(dev: Device) -> list[bytes]:
    """Everything the Device queued for the network, as datagrams, in sending order."""
    out = [d for _, group in dev.datagrams_to_send() for d in group]
    for _, buf, groups in dev.gso_to_send():
        at = 0
        for size, nbytes in groups:
            out += [buf[i : min(i + size, at + nbytes)] for i in range(at, at + nbytes, size)]
            at += nbytes
        assert at == len(buf)
    return out


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
@given(seed=st.integers(0, 2**32), vnet=st.booleans())
@settings(max_examples=40, deadline=None)
def test_send_frames_equals_send_packets(backend: Backend, seed: int, vnet: bool) -> None:
    rng = random.Random(seed)
    frames = [frame_for(rng, vnet) for _ in range(rng.randint(1, 5))]
    batch, ref = established(backend), established(None)
    now = batch.clock.now
    batch.a.send_frames(frames, now, vnet=vnet)
    decoded = OffloadStats()
    ref.a.send_packets(decode_frames(frames, decoded) if vnet else frames, now)
    assert wire(batch.a) == wire(ref.a)
    got, want = batch.a.stats(), ref.a.stats()
    assert got.drops == want.drops
    assert got.frame_drops == dict(decoded.dropped)
    assert (got.packets_sealed, got.peers) == (want.packets_sealed, want.peers)


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
@given(seed=st.integers(0, 2**32), udp=st.booleans())
@settings(max_examples=40, deadline=None)
def test_receive_gro_equals_receive_datagrams(backend: Backend, seed: int, udp: bool) -> None:
    rng = random.Random(seed)
    sender = established(None)
    frames = [frame_for(rng, True) for _ in range(rng.randint(1, 5))]
    sender.a.send_packets(decode_frames(frames, OffloadStats()), sender.clock.now)
    datagrams = wire(sender.a)
    # What an attacker or a lossy path adds: replays, forgeries, garbage, handshake-type
    # messages (right or wrong size, for the handshake queue or its size checks).
    for _ in range(rng.randint(0, 6)):
        r, i = rng.random(), rng.randrange(len(datagrams) + 1)
        if r < 0.25 and datagrams:
            datagrams.insert(i, rng.choice(datagrams))
        elif r < 0.5 and datagrams:
            bad = bytearray(rng.choice(datagrams))
            bad[rng.randrange(len(bad))] ^= 0x40
            datagrams.insert(i, bytes(bad))
        elif r < 0.75:
            kind, size = rng.choice([(1, 148), (2, 92), (3, 64), (4, 31)])
            size += rng.choice([0, 0, -1, 1])
            datagrams.insert(i, bytes([kind, 0, 0, 0]) + rng.randbytes(size - 4))
        else:
            datagrams.insert(i, rng.randbytes(rng.randint(0, 200)))
    batch, ref = established(backend), established(None)
    now = batch.clock.now
    src = batch.a_addr
    tun = backend.coalescer(vnet=True, udp=udp)
    batch.b.receive_gro([(buf, seg, src) for buf, seg in gro(datagrams)], now, tun)
    got_frames = tun.finish()
    packets = ref.b.receive_datagrams([(d, src) for d in datagrams], now)
    want_frames = coalesce(packets, OffloadStats(), udp=udp, verify=False) if packets else []
    assert got_frames == want_frames
    got, want = batch.b.stats(), ref.b.stats()
    assert got.drops == want.drops
    assert (got.packets_opened, got.peers) == (want.packets_opened, want.peers)
    assert wire(batch.b) == wire(ref.b)  # handshake answers, if any
    assert batch.b.handshakes_waiting == ref.b.handshakes_waiting
    assert batch.b.process_handshakes(now) == ref.b.process_handshakes(now) == 0
    assert batch.b.stats().drops == ref.b.stats().drops
    assert wire(batch.b) == wire(ref.b)


def test_frame_batches_need_a_data_path() -> None:
    pair = established(None)
    with pytest.raises(ValueError, match="datapath"):
        pair.a.send_frames([ipv4_packet("10.0.0.1", "10.0.0.2", b"x")], pair.clock.now, vnet=False)
