"""The client side of the UAPI socket: ask a running device (wiretun's or wireguard-go's)
`get=1`, or wiretun's `wiretun-stats=1`, and read the reply; no wireguard-tools needed.
The stats request goes only to a device whose get reply says it answers it
(uapi_protocol.STATS_MARKER): wireguard-go logs an error and hangs up on it."""

from __future__ import annotations

import errno as errno_codes
import glob
import ipaddress
import json
import os
import socket
from typing import Any

from wiretun.tunnel.uapi import SOCKET_DIR, socket_path
from wiretun.tunnel.uapi_protocol import (
    STATS_MARKER,
    STATS_OP,
    DeviceSnapshot,
    PeerSnapshot,
    UapiError,
    parse_endpoint,
)

TIMEOUT = 5.0
MAX_REPLY = 64 << 20


class UapiClientError(OSError):
    """No device answers on the socket, or its reply is not UAPI."""

    def __str__(self) -> str:
        return str(self.strerror)  # the message says it all; no "[Errno N]" before it


def interfaces(socket_dir: str = SOCKET_DIR) -> list[str]:
    """The names with a UAPI socket in `socket_dir`, sorted (as `wg show interfaces`)."""
    return sorted(
        os.path.basename(p).removesuffix(".sock")
        for p in glob.glob(os.path.join(glob.escape(socket_dir), "*.sock"))
    )


def request(path: str, req: bytes, timeout: float = TIMEOUT, *, stop: bytes | None = None) -> str:
    """Send one request, return its reply up to and including `errno=N` (without the blank
    line). With `stop`, a reply whose first line is `stop` is cut there: "" comes back and
    the connection is closed at once. Raises UapiClientError when nobody answers or the
    reply is cut off."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise UapiClientError(e.errno, f"no device answers on {path}: {e.strerror}") from e
        sock.sendall(req)
        data = bytearray()
        while not (data.endswith(b"\n\n") and b"errno=" in data):
            chunk = sock.recv(65536)
            if not chunk:
                raise UapiClientError(errno_codes.EPROTO, f"{path} closed the connection")
            data += chunk
            if stop is not None and len(data) >= len(stop):
                if data.startswith(stop):
                    return ""
                stop = None  # another first line: read the reply to its end
            if len(data) > MAX_REPLY:
                raise UapiClientError(errno_codes.EMSGSIZE, f"{path}: reply too large")
    except TimeoutError as e:
        raise UapiClientError(errno_codes.ETIMEDOUT, f"{path}: no reply in {timeout} s") from e
    finally:
        sock.close()
    return data.decode("utf-8", "replace").removesuffix("\n\n")


def _errno_of(reply: str) -> int:
    last = reply.rsplit("\n", 1)[-1]
    if not last.startswith("errno="):
        raise UapiClientError(errno_codes.EPROTO, "reply without errno")
    return -int(last.removeprefix("errno="))


def _get_reply(name: str, socket_dir: str) -> str:
    reply = request(socket_path(name, socket_dir), b"get=1\n\n")
    code = _errno_of(reply)
    if code:
        raise UapiError(code, f"{name}: get failed: {os.strerror(code)}")
    return reply


def get(name: str, socket_dir: str = SOCKET_DIR) -> DeviceSnapshot:
    """The device's state (`get=1`); UapiError if it answers with an errno."""
    return parse_get(_get_reply(name, socket_dir))


def get_unless_stats(name: str, socket_dir: str = SOCKET_DIR) -> str | None:
    """The whole get=1 reply of a device without wiretun's stats (wireguard-go, wiretun-go),
    or None, having read one line, from one that has them (its reply starts with
    STATS_MARKER): at 10k peers the stats alone are cheaper than a get and the stats."""
    reply = request(socket_path(name, socket_dir), b"get=1\n\n", stop=STATS_MARKER.encode())
    if not reply:
        return None
    code = _errno_of(reply)
    if code:
        raise UapiError(code, f"{name}: get failed: {os.strerror(code)}")
    return reply


def serves_stats(reply: str) -> bool:
    """Whether a get reply carries STATS_MARKER among its device lines."""
    marker = STATS_MARKER.rstrip("\n")
    for line in reply.splitlines():
        if line == marker:
            return True
        if line.startswith("public_key="):
            return False  # the peers begin: the device's lines are over
    return False


def stats(name: str, socket_dir: str = SOCKET_DIR) -> dict[str, Any] | None:
    """wiretun's counters (TunnelStats.to_json()), or None from a device that has none
    (wiretun-go answers EOPNOTSUPP; wireguard-go closes the connection, and logs an error:
    `get_unless_stats` tells which devices answer)."""
    try:
        reply = request(socket_path(name, socket_dir), STATS_OP + b"\n\n")
    except UapiClientError as e:
        if e.errno == errno_codes.EPROTO:
            return None
        raise
    if _errno_of(reply):
        return None
    line = reply.split("\n", 1)[0]
    if not line.startswith("stats="):
        raise UapiClientError(errno_codes.EPROTO, f"{name}: stats reply without stats=")
    out: dict[str, Any] = json.loads(line.removeprefix("stats="))
    return out


def parse_get(reply: str) -> DeviceSnapshot:
    """A `get=1` reply (as format_get writes it, or wireguard-go) as a DeviceSnapshot."""
    private_key: bytes | None = None
    listen_port = fwmark = 0
    peers: list[PeerSnapshot] = []
    peer: dict[str, Any] | None = None

    def flush() -> None:
        if peer is not None:
            peers.append(PeerSnapshot(**peer))

    for line in reply.splitlines():
        key, _, value = line.partition("=")
        if key == "private_key":
            private_key = bytes.fromhex(value)
        elif key == "listen_port":
            listen_port = int(value)
        elif key == "fwmark":
            fwmark = int(value)
        elif key == "public_key":
            flush()
            peer = {"public_key": bytes.fromhex(value), "allowed_ips": ()}
        elif peer is None:
            continue  # errno, or a device key we do not know
        elif key == "preshared_key":
            psk = bytes.fromhex(value)
            peer["preshared_key"] = psk if any(psk) else None
        elif key == "endpoint":
            peer["endpoint"] = parse_endpoint(value)
        elif key == "last_handshake_time_sec":
            peer["last_handshake_ns"] = peer.get("last_handshake_ns", 0) + int(value) * 10**9
        elif key == "last_handshake_time_nsec":
            peer["last_handshake_ns"] = peer.get("last_handshake_ns", 0) + int(value)
        elif key in ("tx_bytes", "rx_bytes"):
            peer[key] = int(value)
        elif key == "persistent_keepalive_interval":
            peer["persistent_keepalive"] = int(value)
        elif key == "allowed_ip":
            peer["allowed_ips"] = (*peer["allowed_ips"], ipaddress.ip_network(value))
    flush()
    return DeviceSnapshot(private_key, listen_port, fwmark, tuple(peers))
