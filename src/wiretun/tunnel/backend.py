"""The UAPI backend over a live Device: `wg show` reads it, `wg set` changes it."""

from __future__ import annotations

import errno
import logging
import weakref
from collections.abc import Callable, Iterator
from dataclasses import replace

from wiretun.tunnel.uapi_protocol import (
    GET_END,
    ZERO_KEY,
    BlockRecord,
    DeviceSnapshot,
    PeerSnapshot,
    PeerUpdate,
    ReplacePeers,
    SetFwmark,
    SetListenPort,
    SetOperation,
    SetPrivateKey,
    UapiError,
    format_device,
    format_peer,
)
from wiretun.wireguard.device import Device
from wiretun.wireguard.peer import Peer, check_endpoint

log = logging.getLogger(__name__)


class DeviceBackend:
    """Applies UAPI operations to `device` in order, as wireguard-go does; stops at the first
    failing one (its errno goes back to `wg`).

    `rebind(port)` moves the UDP sockets to a new port and returns the bound port (raises
    OSError, e.g. EADDRINUSE); `set_fwmark(mark)` re-marks them; `changed()` runs after every
    `apply` so the loop can send what the core queued and re-arm its timer; `now()` is the
    loop's clock.
    """

    def __init__(
        self,
        device: Device,
        *,
        now: Callable[[], float],
        rebind: Callable[[int], int] | None = None,
        set_fwmark: Callable[[int], None] | None = None,
        changed: Callable[[], None] | None = None,
    ) -> None:
        self.device = device
        self._now = now
        self._rebind = rebind
        self._set_fwmark = set_fwmark
        self._changed = changed
        self._blocks: BlockRecord = weakref.WeakKeyDictionary()  # see PeerBlock

    def get_snapshot(self) -> DeviceSnapshot:
        return replace(self._device_snapshot(), peers=tuple(map(_peer_snapshot, self.device.peers)))

    def get_pieces(self) -> Iterator[str]:
        """A `get=1` reply in pieces, from the peers there are now: each peer's lines are
        built when its piece is asked for, so the caller can spread the work (a peer removed
        meanwhile is still shown, as of the moment the get began)."""
        header = self._device_snapshot()
        peers = self.device.peers  # a new list: later adds/removes do not change it
        yield format_device(header)
        for peer in peers:
            yield format_peer(_peer_snapshot(peer))
        yield GET_END

    def _device_snapshot(self) -> DeviceSnapshot:
        d = self.device
        return DeviceSnapshot(
            private_key=d.private_key, listen_port=d.listen_port or 0, fwmark=d.fwmark or 0
        )

    def apply(self, ops: list[SetOperation]) -> None:
        try:
            for op in ops:
                self._apply_one(op)
        finally:
            # Even a partial set may have queued keepalives or changed timers.
            if self._changed is not None:
                self._changed()

    def _apply_one(self, op: SetOperation) -> None:
        d = self.device
        if isinstance(op, SetPrivateKey):
            if op.private_key == ZERO_KEY:
                raise UapiError(errno.EINVAL, "wiretun cannot run without a private key")
            _device_call(d.set_private_key, op.private_key)
        elif isinstance(op, SetListenPort):
            self._listen_port(op.port)
        elif isinstance(op, SetFwmark):
            if self._set_fwmark is not None:
                try:
                    self._set_fwmark(op.fwmark)
                except OSError as e:
                    raise UapiError(e.errno or errno.EIO, f"fwmark: {e}") from e
            d.fwmark = op.fwmark or None
        elif isinstance(op, ReplacePeers):
            d.remove_all_peers()
        else:
            self._peer(op)

    def _listen_port(self, port: int) -> None:
        d = self.device
        if port == (d.listen_port or 0) or (port == 0 and d.listen_port):
            # Port 0 asks for "any": the port we already hold is one.
            return
        if self._rebind is None:
            raise UapiError(errno.EOPNOTSUPP, "this device cannot change its port")
        try:
            d.listen_port = self._rebind(port)
        except OSError as e:
            raise UapiError(e.errno or errno.EIO, f"listen_port {port}: {e}") from e

    def _peer(self, op: PeerUpdate) -> None:
        d = self.device
        key = op.public_key
        if key == d.public_key:
            return  # wireguard-go ignores a peer with our own key
        exists = _has_peer(d, key)
        if op.remove:
            # A remove naming a block: only of a peer that block created (update_only).
            if exists and (op.block is None or self._blocks.get(op.block, False)):
                d.remove_peer(key)
            return
        if not exists and op.update_only:
            return
        # What the Device would refuse, refused before anything changes: an operation
        # applies whole or not at all (found by the uapi fuzzer: an endpoint with port 0
        # failed after the peer had been created and its preshared key set).
        _device_call(check_endpoint, op.endpoint)
        if op.block is not None:
            self._blocks.setdefault(op.block, not exists)
        if not exists:
            _device_call(d.add_peer, key)
        if op.preshared_key is not None:
            psk = None if op.preshared_key == ZERO_KEY else op.preshared_key
            _device_call(d.set_preshared_key, key, psk)
        if op.endpoint is not None:
            _device_call(d.set_endpoint, key, op.endpoint)
        if op.persistent_keepalive is not None:
            _device_call(d.set_persistent_keepalive, key, op.persistent_keepalive, self._now())
        if op.replace_allowed_ips:
            _device_call(d.replace_allowed_ips, key, ())
        if op.remove_allowed_ips:
            _device_call(d.remove_allowed_ips, key, op.remove_allowed_ips)
        if op.add_allowed_ips:
            _device_call(d.add_allowed_ips, key, op.add_allowed_ips)


def _has_peer(device: Device, key: bytes) -> bool:
    try:
        device.peer(key)
    except KeyError:
        return False
    return True


def _peer_snapshot(p: Peer) -> PeerSnapshot:
    return PeerSnapshot(
        public_key=p.public_key,
        preshared_key=p.preshared_key,
        endpoint=p.endpoint,
        last_handshake_ns=0 if p.last_handshake is None else int(p.last_handshake * 1_000_000_000),
        tx_bytes=p.tx_bytes,
        rx_bytes=p.rx_bytes,
        persistent_keepalive=p.persistent_keepalive,
        allowed_ips=tuple(p.allowed_ips),
    )


def _device_call(fn: Callable[..., object], *args: object) -> None:
    """Device misuse (ValueError/KeyError) becomes the EINVAL that `wg` expects."""
    try:
        fn(*args)
    except (ValueError, KeyError) as e:
        raise UapiError(errno.EINVAL, str(e)) from e
