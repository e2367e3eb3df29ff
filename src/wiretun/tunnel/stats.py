"""`TunnelStats`: one frozen snapshot of everything a running tunnel counts (the core's drops
by reason, per-peer counters, the loop, the UDP sockets, the TUN and its offload codecs), and
its JSON form (what `wiretun show --json` prints and the UAPI stats request carries)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from enum import Enum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from wiretun.tun.stats import TunStats
from wiretun.tunnel.loop import LoopStats
from wiretun.tunnel.udp import UdpStats
from wiretun.wireguard.keys import key_to_base64
from wiretun.wireguard.stats import DropReason

if TYPE_CHECKING:
    from wiretun.tun.gso import OffloadStats
    from wiretun.tunnel.uapi import UapiStats
    from wiretun.wireguard.device import Device

_EMPTY: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class PeerCounters:
    """One peer at one moment; keys in base64 as `wg show` prints them."""

    public_key: str
    endpoint: str | None  # "host:port" or "[v6]:port"
    allowed_ips: tuple[str, ...]
    rx_bytes: int
    tx_bytes: int
    last_handshake: float | None  # wall-clock seconds (Unix time), None if never
    handshake_age: float | None  # seconds since it, at `TunnelStats.taken_at`
    persistent_keepalive: int  # seconds, 0 = off
    has_session: bool
    staged_packets: int  # waiting for a handshake
    # Only whether there is one; out of repr all the same, as every field named so is.
    has_preshared_key: bool = field(default=False, repr=False)


@dataclass(frozen=True, slots=True)
class OffloadCounters:
    """The TUN queues' offload codecs, summed (all zero without offload). `drops` are the
    frames read or packets written that a codec dropped, by reason."""

    frames_in: int = 0
    gso_frames_in: int = 0
    segments_out: int = 0
    packets_in: int = 0
    frames_out: int = 0
    gso_frames_out: int = 0
    coalesced: int = 0
    gso_write_rejected: int = 0
    fallback_packets: int = 0
    drops: Mapping[str, int] = field(default_factory=lambda: _EMPTY)

    @classmethod
    def total(cls, codecs: Iterable[OffloadStats]) -> OffloadCounters:
        sums: dict[str, int] = {}
        drops: dict[str, int] = {}
        names = [f.name for f in fields(cls) if f.name != "drops"]
        for stats in codecs:
            for name in names:
                sums[name] = sums.get(name, 0) + int(getattr(stats, name))
            for reason, n in stats.dropped.items():
                drops[reason] = drops.get(reason, 0) + n
        return cls(**sums, drops=MappingProxyType(drops))


@dataclass(frozen=True, slots=True)
class TunnelStats:
    """Everything a Tunnel counts, at `taken_at` (wall clock). Drops by layer:
    `core_drops` (every DropReason, zeros included), `frame_drops` (TUN frames the core's
    offload split refused), `loop.drops`, `udp.drops`, the TUN's `tx_drops`/`rx_drops`
    (its `rx_drops` include what the offload codecs dropped: `offload.drops` again, alone)."""

    name: str
    public_key: str
    listen_port: int
    fwmark: int
    mtu: int
    data_path: str  # "native" or "pure"
    taken_at: float
    uptime: float  # seconds since the tunnel came up
    peers: tuple[PeerCounters, ...]
    core_drops: Mapping[DropReason, int]
    packets_sealed: int
    packets_opened: int
    handshakes_completed: int
    frame_drops: Mapping[str, int]
    loop: LoopStats
    udp: UdpStats
    tun: TunStats
    offload: OffloadCounters
    uapi: UapiStats | None = None

    @property
    def drops(self) -> dict[str, int]:
        """Every non-zero drop count, keyed "layer.reason" (core, frames, loop, udp, tun_rx,
        tun_tx): one place to look for where packets went."""
        total = self.tun.total
        out: dict[str, int] = {}
        for layer, counts in (
            ("core", self.core_drops),
            ("frames", self.frame_drops),
            ("loop", self.loop.drops),
            ("udp", self.udp.drops),
            ("tun_rx", total.rx_drops),
            ("tun_tx", total.tx_drops),
        ):
            for reason, n in counts.items():
                if n:
                    out[f"{layer}.{_key(reason)}"] = n
        return out

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types only (dicts, lists, str, numbers, None)."""
        out: dict[str, Any] = _plain(self)
        out["drops"] = self.drops
        return out


def peer_counters(device: Device, now_wall: float) -> tuple[PeerCounters, ...]:
    """The Device's peers with their configuration (one pass over `device.peers`)."""
    return tuple(iter_peer_counters(device, now_wall))


def iter_peer_counters(device: Device, now_wall: float) -> Iterator[PeerCounters]:
    """peer_counters one peer at a time, from the peers there are when it is called (each
    built when asked for: a caller can spread 10k of them over several loop turns)."""
    for p in device.peers:  # a new list: later adds/removes do not change it
        hs = p.last_handshake
        yield PeerCounters(
            public_key=key_to_base64(p.public_key),
            endpoint=None if p.endpoint is None else format_endpoint(p.endpoint),
            allowed_ips=tuple(str(n) for n in p.allowed_ips),
            rx_bytes=p.rx_bytes,
            tx_bytes=p.tx_bytes,
            last_handshake=hs,
            handshake_age=None if hs is None else max(0.0, now_wall - hs),
            persistent_keepalive=p.persistent_keepalive,
            has_session=p.current is not None,
            staged_packets=len(p.staged),
            has_preshared_key=p.preshared_key is not None,
        )


_PEER_FIELDS = tuple(f.name for f in fields(PeerCounters))


def json_line_pieces(stats: TunnelStats, peers: Iterable[PeerCounters]) -> Iterator[str]:
    """`stats.to_json()` as one line of JSON in pieces, with `peers` (one piece each,
    taken as they come) in place of `stats.peers`: the same object, "peers" first."""
    rest = stats.to_json()
    del rest["peers"]
    yield '{"peers":['
    comma = ""
    for peer in peers:
        # PeerCounters holds JSON types only (a tuple is a list): no _plain walk needed.
        yield comma + json.dumps({name: getattr(peer, name) for name in _PEER_FIELDS},
                                 separators=(",", ":"))  # fmt: skip
        comma = ","
    yield "]," + json.dumps(rest, separators=(",", ":"))[1:]


def core_drops(drops: Mapping[str, int]) -> Mapping[DropReason, int]:
    """Every reason, zeros included (a dashboard wants the series before the first drop)."""
    return MappingProxyType({reason: drops.get(reason.value, 0) for reason in DropReason})


def format_endpoint(endpoint: tuple[str, int]) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _key(key: object) -> str:
    return str(key.value) if isinstance(key, Enum) else str(key)


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {_key(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return key_to_base64(value) if len(value) == 32 else value.hex()
    return value
