"""Start/SIGTERM cycles of `wiretun up` under one interface name, timing each phase and
listing whatever a cycle left behind (shared by the teardown test and its script)."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass

from scenarios.leftovers import wiretun_leftovers
from wiretun.lab.netns import NetNS, unique_name
from wiretun.lab.peers import KeyPair, PeerSpec, WiretunPeer

LISTEN_PORT = 51820


@dataclass(frozen=True)
class Cycle:
    up_seconds: float  # from exec to the pid file and UAPI socket being there
    down_seconds: float  # from SIGTERM to the process having exited
    exit_code: int
    leftovers: tuple[str, ...]

    @property
    def seconds(self) -> float:
        return self.up_seconds + self.down_seconds


def run_cycles(ns: NetNS, count: int, *, name: str | None = None) -> list[Cycle]:
    """`count` sequential start/SIGTERM cycles of the same interface in `ns` (which needs
    an underlay route to 192.168.241.2). What a cycle leaves is checked before any cleanup
    of ours runs, so a leak shows in that cycle's `leftovers`."""
    name = name or unique_name("wtc")
    keys, peer = KeyPair.generate(), KeyPair.generate()
    cycles: list[Cycle] = []
    for _ in range(count):
        with WiretunPeer(ns, name=name, keys=keys) as wt:
            wt.write_config(
                addresses=["10.9.0.1/24", "fd00:9::1/64"],
                listen_port=LISTEN_PORT,
                peers=[
                    PeerSpec(
                        peer.public,
                        ["10.9.0.0/24", "fd00:9::/64"],
                        endpoint="192.168.241.2:51821",
                        persistent_keepalive=1,
                    )
                ],
            )
            start = time.monotonic()
            wt.start()
            up = time.monotonic() - start
            assert wt.proc is not None
            start = time.monotonic()
            wt.proc.send_signal(signal.SIGTERM)
            code = wt.proc.wait(30)
            down = time.monotonic() - start
            left = wiretun_leftovers(ns, name, listen_port=LISTEN_PORT)
            cycles.append(Cycle(up, down, code, tuple(left)))
    return cycles
