"""Keypairs: the two transport AEADs of one session, its send counter and replay window,
and the batch seal and open of transport messages (the Device's per-packet path).

The ChaCha20Poly1305 objects are built once per keypair, so sealing or opening a transport
message costs one AEAD call plus a header pack or unpack. `seal_run` and `open_run` are the
only Python implementations of sealing and opening: a run of packets for one keypair per
call, the per-packet work inline (the Device calls them once per run, not per packet).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from wiretun.wireguard.crypto import NONCE
from wiretun.wireguard.events import Endpoint
from wiretun.wireguard.messages import MSG_TRANSPORT, TRANSPORT_HEADER, TRANSPORT_MIN_SIZE
from wiretun.wireguard.replay import REJECT_AFTER_MESSAGES, RING_MASK, WINDOW_SIZE, ReplayWindow
from wiretun.wireguard.stats import DropReason, Drops
from wiretun.wireguard.timers import REJECT_AFTER_TIME

__all__ = [
    "NONCE",
    "PADDING_MULTIPLE",
    "TRANSPORT_HEADER",
    "Buffer",
    "Keypair",
    "OpenedRun",
    "padding_size",
]

PADDING_MULTIPLE: Final = 16
_PAD: Final = [bytes(n) for n in range(PADDING_MULTIPLE)]

Buffer = bytes | bytearray | memoryview

OpenedRun = tuple[int, int, int, Endpoint | None, Endpoint | None, bool]
"""What `Keypair.open_run` did: (index after the run, messages that authenticated, their
bytes, source of the first of them, source of the last, whether any carried data)."""


def padding_size(length: int, mtu: int) -> int:
    """Zero bytes to append to a `length`-byte packet: wireguard-go's calculatePaddingSize.

    Up to a multiple of 16, never past `mtu`; a packet larger than the MTU is padded as its
    last MTU-sized unit (`length % mtu`) would be; `mtu` 0 means plain rounding. Always < 16.
    """
    last_unit = length
    if mtu == 0:
        return ((last_unit + PADDING_MULTIPLE - 1) & ~(PADDING_MULTIPLE - 1)) - last_unit
    if last_unit > mtu:
        last_unit %= mtu
    padded = min((last_unit + PADDING_MULTIPLE - 1) & ~(PADDING_MULTIPLE - 1), mtu)
    return padded - last_unit


class Keypair:
    """One direction pair of transport keys, identified by our index and the peer's."""

    __slots__ = (
        "created",
        "is_initiator",
        "local_index",
        "recv",
        "recv_key",
        "remote_index",
        "replay",
        "send",
        "send_counter",
        "send_key",
    )

    def __init__(
        self,
        send_key: bytes,
        recv_key: bytes,
        local_index: int,
        remote_index: int,
        *,
        is_initiator: bool,
        created: float,
    ) -> None:
        if len(send_key) != 32 or len(recv_key) != 32:
            raise ValueError("transport keys must be 32 bytes")
        self.send: ChaCha20Poly1305 | None = ChaCha20Poly1305(send_key)
        self.recv: ChaCha20Poly1305 | None = ChaCha20Poly1305(recv_key)
        # The raw keys, for the batch data path (wiretun.datapath), which seals and opens
        # many messages per call; valid exactly while `send` / `recv` are.
        self.send_key: bytes | None = bytes(send_key)
        self.recv_key: bytes | None = bytes(recv_key)
        self.local_index = local_index
        self.remote_index = remote_index
        self.is_initiator = is_initiator
        self.created = created
        self.send_counter = 0
        self.replay = ReplayWindow()

    def can_send(self, now: float) -> bool:
        """Whether this keypair may still seal (not too old, counter not exhausted)."""
        return (
            self.send is not None
            and now - self.created < REJECT_AFTER_TIME
            and self.send_counter < REJECT_AFTER_MESSAGES
        )

    def can_receive(self, now: float) -> bool:
        return self.recv is not None and now - self.created < REJECT_AFTER_TIME

    # ------------------------------------------------------------------ seal

    def seal_run(
        self, packets: Sequence[bytes], dest: list[bytes], mtu: int, *, pad: bool = True
    ) -> tuple[int, int]:
        """Seal `packets` in order with consecutive counters, appending the transport
        messages to `dest`; each is padded to 16 (never past `mtu`, wireguard-go's rule)
        unless `pad` is False (already padded). Returns (packets sealed, bytes appended):
        fewer than given when the keypair cannot send or its counter runs out."""
        aead = self.send
        if aead is None:
            return 0, 0
        encrypt = aead.encrypt
        header = TRANSPORT_HEADER.pack
        nonce = NONCE.pack
        remote = self.remote_index
        pads = _PAD
        append = dest.append
        counter = self.send_counter
        limit = REJECT_AFTER_MESSAGES
        tx = 0
        done = 0
        for packet in packets:
            if counter >= limit:
                break
            pkt = packet
            if pad:
                n = len(pkt)
                if n <= mtu:
                    # padding_size's common case inline (a call per packet cost ~0.3 us).
                    padded = ((n + 15) & ~15) - n
                    if n + padded > mtu:
                        padded = mtu - n
                else:
                    padded = padding_size(n, mtu)
                if padded:
                    pkt = pkt + pads[padded]
            msg = header(MSG_TRANSPORT, remote, counter) + encrypt(nonce(counter), pkt, None)
            append(msg)
            tx += len(msg)
            counter += 1
            done += 1
        self.send_counter = counter
        return done, tx

    def seal(self, padded: bytes) -> bytes:
        """One transport message carrying `padded` (already padded): `seal_run` of one."""
        out: list[bytes] = []
        if not self.seal_run([padded], out, 0, pad=False)[0]:
            raise ValueError("keypair can no longer send")
        return out[0]

    # ------------------------------------------------------------------ open

    def open_run(
        self,
        datagrams: Sequence[tuple[Buffer, Endpoint]],
        start: int,
        *,
        owner: object,
        cached_owner: Callable[[bytes], object | None],
        owner_of: Callable[[bytes], object | None],
        out: list[bytes],
        drops: Drops,
    ) -> OpenedRun:
        """Open the transport messages for this keypair from `datagrams[start]` on, up to
        the first datagram that is not one (another receiver index, another type).

        Per message: the replay window first (an obvious replay costs no AEAD), then the
        tag, then the window is marked (only after authentication: a forged counter must
        not slide it); the inner packet must be IPv4/IPv6 with a sane length, and its
        source must belong to `owner` (allowed-ips: `cached_owner`, the lookup cache's get,
        then `owner_of`, the lookup). What passes
        goes to `out` trimmed to its IP length; keepalives count as opened, not delivered.
        The caller checked that the keypair may receive (`can_receive`).
        """
        recv = self.recv
        assert recv is not None
        decrypt = recv.decrypt
        header = TRANSPORT_HEADER.unpack_from
        nonce = NONCE.pack
        replay = self.replay
        ring = replay.ring
        receiver = self.local_index
        append = out.append
        end = len(datagrams)
        opened = 0
        rx = 0
        first_src: Endpoint | None = None
        last_src: Endpoint | None = None
        got_data = False
        for i in range(start, end):
            data, src = datagrams[i]
            if len(data) < TRANSPORT_MIN_SIZE or data[0] != MSG_TRANSPORT:
                end = i
                break
            kind, index, counter = header(data)
            if index != receiver:
                end = i
                break
            if kind != MSG_TRANSPORT:
                drops.add(DropReason.BAD_TYPE)
                continue
            # The replay check of ReplayWindow.check_and_mark, inline (an equivalence test
            # holds the two together): reject before the AEAD what the window would.
            last = replay.last
            if counter <= last:
                if last - counter > WINDOW_SIZE or ring[counter & RING_MASK]:
                    drops.add(DropReason.REPLAY)
                    continue
            elif counter >= REJECT_AFTER_MESSAGES:
                drops.add(DropReason.REPLAY)
                continue
            try:
                plain = decrypt(nonce(counter), data[16:], None)
            except InvalidTag:
                drops.add(DropReason.DECRYPT)
                continue
            # Mark only after authentication; the next-in-order case inline.
            if counter == last + 1:
                ring[counter & RING_MASK] = 1
                replay.last = counter
            elif not replay.check_and_mark(counter):
                drops.add(DropReason.REPLAY)
                continue
            if not opened:
                first_src = src
            opened += 1
            rx += len(data)
            last_src = src
            if not plain:
                continue  # keepalive
            n = len(plain)
            version = plain[0] >> 4
            if version == 4 and n >= 20:
                length = (plain[2] << 8) | plain[3]
                source = plain[12:16]
                if length < 20:
                    length = n + 1  # force the bad_packet drop below
            elif version == 6 and n >= 40:
                length = 40 + ((plain[4] << 8) | plain[5])
                source = plain[8:24]
            else:
                drops.add(DropReason.BAD_PACKET)
                continue
            if length > n:
                drops.add(DropReason.BAD_PACKET)
                continue
            found = cached_owner(source)
            if found is None:
                found = owner_of(source)
            if found is not owner:
                drops.add(DropReason.ALLOWED_IPS)
                continue
            got_data = True
            append(plain if length == n else plain[:length])
        return end, opened, rx, first_src, last_src, got_data

    # ------------------------------------------------------------------ lifetime

    def stop_sending(self) -> None:
        """Receive only from now on (expired for sending, or the identity changed)."""
        self.send = None
        self.send_key = None

    def zero(self) -> None:
        """Forget the keys (Python cannot scrub memory, but nothing can use them any more)."""
        self.send = None
        self.recv = None
        self.send_key = None
        self.recv_key = None
