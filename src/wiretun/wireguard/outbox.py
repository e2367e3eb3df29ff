"""The datagrams a Device has for the network, per endpoint, until the shell drains them."""

from __future__ import annotations

from collections.abc import Hashable

from wiretun.wireguard.events import Endpoint


class Outbox:
    """Datagrams per endpoint, in the order they were put; one per `key` may be withdrawn
    while it still waits (a stale initiation that a newer one replaces, whose response
    could only be dropped as unknown_index)."""

    __slots__ = ("_by_endpoint", "_withdrawable")

    def __init__(self) -> None:
        self._by_endpoint: dict[Endpoint, list[bytes]] = {}
        self._withdrawable: dict[Hashable, tuple[Endpoint, bytes]] = {}

    def to(self, endpoint: Endpoint) -> list[bytes]:
        """The list for `endpoint`, to append to (the seal loops add whole runs)."""
        return self._by_endpoint.setdefault(endpoint, [])

    def put(self, endpoint: Endpoint, datagram: bytes, *, key: Hashable | None = None) -> None:
        """Queue `datagram`; with a `key`, `withdraw(key)` can take it back until drained."""
        self._by_endpoint.setdefault(endpoint, []).append(datagram)
        if key is not None:
            self._withdrawable[key] = (endpoint, datagram)

    def withdraw(self, key: Hashable) -> bytes | None:
        """Take back the datagram put under `key` if it still waits; returns it."""
        entry = self._withdrawable.pop(key, None)
        if entry is None:
            return None
        endpoint, datagram = entry
        queued = self._by_endpoint.get(endpoint, [])
        found = None
        for i, waiting in enumerate(queued):
            if waiting is datagram:
                del queued[i]
                found = datagram
                break
        if not queued:
            self._by_endpoint.pop(endpoint, None)
        return found

    def drain(self) -> list[tuple[Endpoint, list[bytes]]]:
        """Everything queued, grouped per endpoint in order; the outbox is empty after."""
        out = list(self._by_endpoint.items())
        self._by_endpoint = {}
        self._withdrawable.clear()
        return out
