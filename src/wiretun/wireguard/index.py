"""The Device's receiver-index table: which session or pending handshake an index names."""

from __future__ import annotations

from collections.abc import Callable

from wiretun.wireguard.peer import Peer
from wiretun.wireguard.session import Keypair


class IndexTable:
    """Receiver index -> (keypair, peer) for sessions, -> peer for pending initiations."""

    __slots__ = ("_rng", "keypairs", "pending")

    def __init__(self, rng: Callable[[int], bytes]) -> None:
        self._rng = rng
        self.keypairs: dict[int, tuple[Keypair, Peer]] = {}
        self.pending: dict[int, Peer] = {}

    def new_index(self) -> int:
        """A random index that names neither a session nor a pending handshake."""
        while True:
            index = int.from_bytes(self._rng(4), "little")
            if index not in self.keypairs and index not in self.pending:
                return index

    def install(self, peer: Peer, kp: Keypair) -> None:
        """Start a session for `peer`; the keypairs it pushes out are dropped."""
        for dead in peer.begin_session(kp):
            self.drop_keypair(dead)
        self.keypairs[kp.local_index] = (kp, peer)

    def drop_keypair(self, kp: Keypair) -> None:
        self.keypairs.pop(kp.local_index, None)
        kp.zero()

    def forget_pending(self, peer: Peer) -> None:
        """Abandon `peer`'s own initiation, if any."""
        if peer.handshake is not None:
            self.pending.pop(peer.handshake.sender_index, None)
            peer.handshake = None

    def forget_sessions(self, peer: Peer) -> None:
        """Remove all of `peer`'s keypairs (its pending handshake stays)."""
        for kp in peer.clear_keypairs():
            self.keypairs.pop(kp.local_index, None)
