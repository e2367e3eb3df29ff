"""Counting traffic and reading a daemon's state for live tests: sequence-numbered UDP,
the drop counters of a live `wiretun up` (from its stats, as `wiretun show --json` reads
them; the teardown log lines are for people), and process RSS."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_SEQ = struct.Struct("!Q")


def _non_zero(counts: Mapping[str, Any]) -> dict[str, int]:
    return {str(k): int(v) for k, v in counts.items() if v}


def core_drops(stats: Mapping[str, Any]) -> dict[str, int]:
    """The WireGuard core's non-zero drops by reason, from a live tunnel's stats
    (`WiretunPeer.stats()`, i.e. TunnelStats.to_json())."""
    return _non_zero(stats["core_drops"])


def loop_drops(stats: Mapping[str, Any]) -> dict[str, int]:
    """The tunnel loop's own non-zero drops (core calls that raised), from the same stats."""
    return _non_zero(stats["loop"]["drops"])


def rss_kib(pid: int) -> int:
    """Resident set size of `pid` in KiB (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise LookupError(f"no VmRSS for pid {pid}")


@dataclass
class SeqCount:
    received: Counter[int] = field(default_factory=Counter)
    foreign: int = 0  # datagrams that are not ours

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.received.values() if n > 1)


class SeqReceiver:
    """Counts sequence-numbered datagrams on a bound UDP socket (create the socket inside
    the namespace it must listen in); a thread reads until `stop()`."""

    def __init__(self, sock: socket.socket, tag: bytes) -> None:
        self.sock = sock
        self.tag = tag
        self.count = SeqCount()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="seq-receiver", daemon=True)
        sock.settimeout(0.1)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> SeqReceiver:
        self._thread.start()
        return self

    def _run(self) -> None:
        n = len(self.tag)
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return  # closed under us by stop()
            if len(data) >= n + _SEQ.size and data[:n] == self.tag:
                self.count.received[_SEQ.unpack_from(data, n)[0]] += 1
            else:
                self.count.foreign += 1

    def wait_for(self, n: int, timeout: float) -> bool:
        """True once `n` distinct sequence numbers arrived, False after `timeout`."""
        deadline = time.monotonic() + timeout
        while len(self.count.received) < n:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self) -> SeqCount:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        return self.count


def send_sequence(
    sock: socket.socket,
    target: tuple[str, int],
    tag: bytes,
    first: int,
    count: int,
    *,
    size: int = 200,
    interval: float = 0.0,
) -> None:
    """Send datagrams `first`..`first+count-1`, each `tag` + 8-byte number, padded to `size`."""
    pad = bytes(max(0, size - len(tag) - _SEQ.size))
    for seq in range(first, first + count):
        sock.sendto(tag + _SEQ.pack(seq) + pad, target)
        if interval:
            time.sleep(interval)
