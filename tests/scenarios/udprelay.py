"""A recording UDP relay for a middle namespace: forwards one peer's datagrams to another,
keeps a copy of each, and can later re-inject copies from the same address and port.

Peer A sends to `front` (the relay's address on A's side); the relay forwards from `back`
(its own socket on B's side) to B, so B sees `back` as A's endpoint, and B's answers go
back to the last address A used. `inject()` sends recorded datagrams toward B from `back`:
to B they are indistinguishable from the originals, which is what a replay test needs.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from dataclasses import dataclass, field

Address = tuple[str, int]


@dataclass
class Recorded:
    """Datagrams that went through, in arrival order, per direction."""

    a_to_b: list[bytes] = field(default_factory=list)
    b_to_a: list[bytes] = field(default_factory=list)


class UdpRelay:
    """Create the sockets inside the middle namespace (`NetNS.enter()`), then `start()`."""

    def __init__(self, front: socket.socket, back: socket.socket, b: Address) -> None:
        self.front = front
        self.back = back
        self.b = b
        self.recorded = Recorded()
        self.forwarding = True
        self._a: Address | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="udp-relay", daemon=True)

    @classmethod
    def open(cls, front_host: str, front_port: int, back_host: str, b: Address) -> UdpRelay:
        front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            front.bind((front_host, front_port))
            back.bind((back_host, 0))
        except OSError:
            front.close()
            back.close()
            raise
        return cls(front, back, b)

    def start(self) -> UdpRelay:
        self._thread.start()
        return self

    def _run(self) -> None:
        socks = [self.front, self.back]
        while not self._stop.is_set():
            ready, _, _ = select.select(socks, [], [], 0.1)
            for s in ready:
                try:
                    data, src = s.recvfrom(65535)
                except OSError:
                    continue  # an ICMP error from an earlier send: nothing to forward
                with self._lock:
                    if s is self.front:
                        self._a = (str(src[0]), int(src[1]))
                        self.recorded.a_to_b.append(data)
                        if self.forwarding:
                            self._send(self.back, data, self.b)
                    else:
                        self.recorded.b_to_a.append(data)
                        if self.forwarding and self._a is not None:
                            self._send(self.front, data, self._a)

    @staticmethod
    def _send(sock: socket.socket, data: bytes, to: Address) -> None:
        # The far side may be gone for now (ICMP errors): UDP may lose it anyway.
        with contextlib.suppress(OSError):
            sock.sendto(data, to)

    def inject(self, datagrams: list[bytes]) -> None:
        """Send recorded datagrams to B again, from the relay's B-side address."""
        for data in datagrams:
            self.back.sendto(data, self.b)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.front.close()
        self.back.close()

    def __enter__(self) -> UdpRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
