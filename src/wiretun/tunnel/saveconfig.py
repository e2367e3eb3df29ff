"""wg-quick's SaveConfig = true: on the way down, the config file is rewritten from the
interface as it is then (peers and endpoints learnt or set with `wg set`, addresses)."""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence

from wiretun.tunnel.config import InterfaceConfig
from wiretun.tunnel.runfiles import write_atomic
from wiretun.tunnel.uapi_protocol import DeviceSnapshot, format_endpoint


def _key(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def render_config(
    iface: InterfaceConfig,
    snapshot: DeviceSnapshot,
    *,
    addresses: Sequence[str],
    mtu: int | None,
) -> str:
    """The file wg-quick would write: its own keys first (hooks verbatim), then what
    `wg showconf` shows. `mtu` is written only when the config gave one, as wg-quick does."""
    lines = ["[Interface]"]
    lines += [f"Address = {a}" for a in addresses]
    lines += [f"DNS = {d}" for d in (*iface.dns, *iface.dns_search)]
    if iface.mtu is not None and mtu is not None:
        lines.append(f"MTU = {mtu}")
    if iface.table_given:
        lines.append(f"Table = {iface.table}")
    if iface.save_config:
        lines.append("SaveConfig = true")
    for key, hooks in (
        ("PreUp", iface.pre_up),
        ("PostUp", iface.post_up),
        ("PreDown", iface.pre_down),
        ("PostDown", iface.post_down),
    ):
        lines += [f"{key} = {hook}" for hook in hooks]
    if snapshot.listen_port:
        lines.append(f"ListenPort = {snapshot.listen_port}")
    if snapshot.fwmark:
        lines.append(f"FwMark = 0x{snapshot.fwmark:x}")
    if snapshot.private_key is not None:
        lines.append(f"PrivateKey = {_key(snapshot.private_key)}")
    for peer in snapshot.peers:
        lines += ["", "[Peer]", f"PublicKey = {_key(peer.public_key)}"]
        if peer.preshared_key is not None and any(peer.preshared_key):
            lines.append(f"PresharedKey = {_key(peer.preshared_key)}")
        if peer.allowed_ips:
            lines.append(f"AllowedIPs = {', '.join(str(n) for n in peer.allowed_ips)}")
        if peer.endpoint is not None:
            lines.append(f"Endpoint = {format_endpoint(peer.endpoint)}")
        if peer.persistent_keepalive:
            lines.append(f"PersistentKeepalive = {peer.persistent_keepalive}")
    return "\n".join(lines) + "\n"


def write_config(path: str, text: str) -> None:
    """Replace `path` atomically with a mode-0600 file (it holds the private key); a symlink
    is followed, as wg-quick writes through `readlink -f`."""
    write_atomic(os.path.realpath(path), text.encode(), 0o600, sync=True)
