"""The live robustness tests' tools, checked without root: each kind of garbage lands on
the drop reason it is meant to reach in a real (in-memory) Device with a live session, and
the stats readers take what `wiretun show --json` prints."""

from __future__ import annotations

import random
from dataclasses import fields

from scenarios.hostile import GarbageMaker, stranger_initiation
from scenarios.traffic import core_drops, loop_drops
from wiretun.testing.wgpair import make_pair
from wiretun.tunnel.loop import LoopStats
from wiretun.tunnel.stats import TunnelStats
from wiretun.wireguard.messages import MSG_TRANSPORT
from wiretun.wireguard.stats import DROP_REASONS

# kind -> the drop reasons it may reach (exactly one per datagram).
EXPECTED = {
    "random": {"bad_type", "bad_size"},
    "bad_type": {"bad_type"},
    "initiation_stranger": {"unknown_peer"},
    "initiation_mutated": {"mac1", "unknown_peer"},  # a flip inside mac2 leaves mac1 valid
    "initiation_bad_size": {"bad_size"},
    "response_bad_index": {"unknown_index"},
    "response_bad_size": {"bad_size"},
    "cookie_bad_index": {"unknown_index"},
    "cookie_bad_size": {"bad_size"},
    "transport_bad_index": {"unknown_index"},
    "transport_short": {"bad_size"},
    "transport_mutated": {"replay"},  # a copy of a seen counter fails the window first
    "transport_counter": {"decrypt"},
}


def test_each_kind_of_garbage_reaches_its_drop_reason() -> None:
    pair = make_pair(seed=8)
    pair.a_to_b(b"x" * 100)
    pair.net.roundtrip()
    assert len(pair.delivered_to(pair.b)) == 1
    seen = [d for src, dst, d in pair.net.sent if dst == pair.b_addr and d[0] == MSG_TRANSPORT]
    assert seen
    target = pair.b.public_key
    maker = GarbageMaker(
        random.Random(1), target, [stranger_initiation(target) for _ in range(4)], seen
    )
    kinds_seen: set[str] = set()
    for _ in range(600):
        kind, data = maker.make()
        kinds_seen.add(kind)
        before = pair.b.stats().drops
        out = pair.b.receive_datagrams([(data, ("198.51.100.7", 4000))], pair.clock.now)
        pair.b.process_handshakes(pair.clock.now)  # handshake messages wait in their queue
        after = pair.b.stats().drops
        grown = {r for r in after if after[r] != before.get(r, 0)}
        assert out == [], kind
        assert len(grown) == 1 and grown <= EXPECTED[kind], (kind, grown)
        assert sum(after.values()) == sum(before.values()) + 1
        pair.clock.advance(0.01)  # stay below the under-load threshold: no cookies here
    assert kinds_seen == set(EXPECTED)
    # The session is untouched: b still talks to a, at a's address.
    pair.b_to_a(b"still here")
    pair.net.roundtrip()
    assert pair.b.stats().peers[0].endpoint == pair.a_addr
    assert len(pair.delivered_to(pair.a)) == 1


# What `wiretun show --json` prints under "stats" (TunnelStats.to_json()), the parts read.
STATS = {
    "core_drops": dict.fromkeys(DROP_REASONS, 0) | {"mac1": 3, "replay": 40},
    "loop": {"packets_from_tun": 3, "drops": {"core_receive_error": 1, "x": 0}},
}


def test_stats_readers() -> None:
    assert core_drops(STATS) == {"mac1": 3, "replay": 40}  # zeros left out
    assert loop_drops(STATS) == {"core_receive_error": 1}
    # The keys they read are the snapshot's own field names.
    assert {"core_drops", "loop"} <= {f.name for f in fields(TunnelStats)}
    assert "drops" in {f.name for f in fields(LoopStats)}
