"""In-memory WireGuard peers for tests: a fake clock, a seeded rng, a lossy datagram network.

`Network` joins Devices by address and shuttles their datagrams until nothing moves;
`roundtrip` fails after a bounded number of rounds, so a ping-pong bug fails fast instead of
hanging. `make_pair` builds two configured peers (a: 10.0.0.1, b: 10.0.0.2).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from wiretun.wireguard.crypto import generate_private_key, public_key
from wiretun.wireguard.device import Device
from wiretun.wireguard.events import Endpoint, Event

if TYPE_CHECKING:
    from wiretun.datapath import Backend

Filter = Callable[[Endpoint, Endpoint, bytes], bool]
"""(source, destination, datagram) -> deliver it?"""


def seeded_rng(seed: int) -> Callable[[int], bytes]:
    """A deterministic random-bytes source (tests only: not cryptographically secure)."""
    gen = random.Random(seed)
    return gen.randbytes


@dataclass
class FakeClock:
    """Monotonic seconds that only move when the test says so."""

    now: float = 1000.0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def ipv4_packet(src: str, dst: str, payload: bytes = b"", proto: int = 17) -> bytes:
    """A minimal IPv4 packet (no options; header checksum left zero: the core ignores it)."""
    total = 20 + len(payload)
    return (
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            total,
            0,
            0,
            64,
            proto,
            0,
            bytes(map(int, src.split("."))),
            bytes(map(int, dst.split("."))),
        )
        + payload
    )


def ipv6_packet(src: bytes, dst: bytes, payload: bytes = b"", proto: int = 17) -> bytes:
    """A minimal IPv6 packet from packed 16-byte addresses."""
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), proto, 64, src, dst) + payload


@dataclass
class Network:
    """Devices reachable at (host, port) addresses; datagrams move only in `step`."""

    clock: FakeClock
    devices: dict[Endpoint, Device] = field(default_factory=dict)
    delivered: dict[Endpoint, list[bytes]] = field(default_factory=dict)
    events: dict[Endpoint, list[Event]] = field(default_factory=dict)
    sent: list[tuple[Endpoint, Endpoint, bytes]] = field(default_factory=list)
    filter: Filter | None = None

    def attach(self, address: Endpoint, device: Device) -> None:
        self.devices[address] = device
        self.delivered.setdefault(address, [])
        self.events.setdefault(address, [])

    def move(self, old: Endpoint, new: Endpoint) -> None:
        """The device at `old` now sends from (and is reached at) `new`: roaming."""
        self.devices[new] = self.devices.pop(old)
        self.delivered[new] = self.delivered.pop(old)
        self.events[new] = self.events.pop(old)

    def address_of(self, device: Device) -> Endpoint:
        for addr, dev in self.devices.items():
            if dev is device:
                return addr
        raise KeyError("device not attached")

    def _drain_events(self) -> None:
        for addr, dev in self.devices.items():
            while (ev := dev.next_event()) is not None:
                self.events[addr].append(ev)

    def step(self) -> int:
        """Move every queued datagram once; returns how many were sent."""
        batches: dict[Endpoint, list[tuple[bytes, Endpoint]]] = {}
        moved = 0
        for src, dev in list(self.devices.items()):
            for dst, group in dev.datagrams_to_send():
                for datagram in group:
                    moved += 1
                    self.sent.append((src, dst, datagram))
                    if dst not in self.devices:
                        continue  # nobody there: lost
                    if self.filter is not None and not self.filter(src, dst, datagram):
                        continue
                    batches.setdefault(dst, []).append((datagram, src))
        for dst, batch in batches.items():
            dev = self.devices[dst]
            packets = dev.receive_datagrams(batch, self.clock.now)
            dev.process_handshakes(self.clock.now)
            self.delivered[dst].extend(packets)
        self._drain_events()
        return moved

    def roundtrip(self, max_rounds: int = 20) -> int:
        """Step until quiet; AssertionError if still busy after `max_rounds`."""
        total = 0
        for _ in range(max_rounds):
            moved = self.step()
            total += moved
            if moved == 0:
                return total
        raise AssertionError(f"network still busy after {max_rounds} rounds")

    def tick(self, seconds: float, step: float | None = None, max_wakeups: int = 100_000) -> None:
        """Advance time to each timer deadline in turn (at most `step` at a time), running
        the due devices' timers and then the network, until `seconds` have passed."""
        end = self.clock.now + seconds
        for _ in range(max_wakeups):
            deadlines = [d for dev in self.devices.values() if (d := dev.next_timer()) is not None]
            target = min([end, *deadlines])
            if step is not None:
                target = min(target, self.clock.now + step)
            self.clock.now = max(self.clock.now, target)
            for dev in list(self.devices.values()):
                due = dev.next_timer()
                if due is not None and due <= self.clock.now:
                    dev.handle_timers(self.clock.now)
            self.roundtrip()
            if self.clock.now >= end:
                return
        raise AssertionError(f"more than {max_wakeups} timer wake-ups in {seconds} s")


@dataclass
class WgPair:
    """Two peers a (10.0.0.1/32) and b (10.0.0.2/32) on an in-memory network."""

    net: Network
    a: Device
    b: Device
    a_addr: Endpoint
    b_addr: Endpoint

    @property
    def clock(self) -> FakeClock:
        return self.net.clock

    def send(self, src: Device, packets: list[bytes]) -> None:
        src.send_packets(packets, self.clock.now)

    def a_to_b(self, payload: bytes = b"hello") -> bytes:
        pkt = ipv4_packet("10.0.0.1", "10.0.0.2", payload)
        self.a.send_packets([pkt], self.clock.now)
        return pkt

    def b_to_a(self, payload: bytes = b"hello") -> bytes:
        pkt = ipv4_packet("10.0.0.2", "10.0.0.1", payload)
        self.b.send_packets([pkt], self.clock.now)
        return pkt

    def delivered_to(self, dev: Device) -> list[bytes]:
        return self.net.delivered[self.net.address_of(dev)]

    def events_of(self, dev: Device) -> list[Event]:
        return self.net.events[self.net.address_of(dev)]


def make_pair(
    seed: int = 1,
    *,
    psk: bytes | None = None,
    b_knows_a_endpoint: bool = False,
    persistent_keepalive: int | None = None,
    datapath: Backend | None = None,
) -> WgPair:
    """Two Devices that know each other; only a knows b's endpoint unless told otherwise."""
    rng_a = seeded_rng(seed)
    rng_b = seeded_rng(seed + 1_000_003)
    key_a = generate_private_key(rng_a)
    key_b = generate_private_key(rng_b)
    clock = FakeClock()
    a_addr: Endpoint = ("192.0.2.1", 51820)
    b_addr: Endpoint = ("192.0.2.2", 51820)
    a = Device(key_a, rng=rng_a, wall_clock_offset=1.7e9, datapath=datapath)
    b = Device(key_b, rng=rng_b, wall_clock_offset=1.7e9, datapath=datapath)
    a.add_peer(
        public_key(key_b),
        preshared_key=psk,
        endpoint=b_addr,
        allowed_ips=["10.0.0.2/32"],
        persistent_keepalive=persistent_keepalive,
    )
    b.add_peer(
        public_key(key_a),
        preshared_key=psk,
        endpoint=a_addr if b_knows_a_endpoint else None,
        allowed_ips=["10.0.0.1/32"],
    )
    net = Network(clock)
    net.attach(a_addr, a)
    net.attach(b_addr, b)
    return WgPair(net, a, b, a_addr, b_addr)
