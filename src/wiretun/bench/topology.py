"""The bench's two namespaces joined by a veth pair (the underlay every path rides on)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from wiretun.lab.netns import NetNS, Topology, unique_name

UNDERLAY_A = "10.77.0.1"
UNDERLAY_B = "10.77.0.2"
UNDERLAY_PREFIX = 24


@dataclass(frozen=True, slots=True)
class BenchTopology:
    """`a` runs the iperf3 clients, `b` the servers; both hold one end of each tunnel."""

    a: NetNS
    b: NetNS
    veth_a: str
    veth_b: str
    underlay_a: str = UNDERLAY_A
    underlay_b: str = UNDERLAY_B

    @property
    def namespaces(self) -> tuple[str, str]:
        return (self.a.name, self.b.name)


@contextmanager
def bench_topology(prefix: str | None = None) -> Iterator[BenchTopology]:
    """Create the namespaces and the veth pair; remove everything on exit, even on error."""
    topo = Topology(prefix or unique_name("wtb", 8))
    try:
        a, b = topo.netns(), topo.netns()
        veth_a, veth_b = topo.veth(
            a, b, f"{UNDERLAY_A}/{UNDERLAY_PREFIX}", f"{UNDERLAY_B}/{UNDERLAY_PREFIX}"
        )
        yield BenchTopology(a=a, b=b, veth_a=veth_a, veth_b=veth_b)
    finally:
        with deferred_signals():
            topo.close()


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM for the block so a second Ctrl-C cannot cut cleanup short."""
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
