"""Private and preshared keys never show in repr/str of config, key or Device objects, in
errors, or in log records written during a handshake and a UAPI set (issue #8 audit)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import importlib
import logging
import pkgutil
import re
from pathlib import Path

import pytest

import wiretun
from wiretun.testing.uapi import MemoryBackend
from wiretun.testing.wgpair import make_pair
from wiretun.tunnel import config as config_module
from wiretun.tunnel import uapi_protocol
from wiretun.tunnel.config import ConfigError, parse_config, parse_key
from wiretun.tunnel.uapi import UapiServer
from wiretun.tunnel.uapi_protocol import (
    DeviceSnapshot,
    PeerSnapshot,
    PeerUpdate,
    SetPrivateKey,
    parse_set,
)
from wiretun.wireguard.crypto import public_key
from wiretun.wireguard.handshake import StaticIdentity, initial_state

PRIVATE = "SERyCch636eVNDlIMajZJ+lHsqvTClKWBcDAYjNHe3U="
PSK = "FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE="
PEER = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="

CONFIG = f"""[Interface]
PrivateKey = {PRIVATE}
ListenPort = 51820
Address = 10.0.0.1/24

[Peer]
PublicKey = {PEER}
PresharedKey = {PSK}
AllowedIPs = 10.0.0.2/32
Endpoint = 192.0.2.2:51820
"""


def secret_forms(key: bytes) -> list[str]:
    """Every text form a leaked key could take: base64, hex (both cases), bytes repr."""
    b64 = base64.b64encode(key).decode()
    return [b64, b64[:-1], key.hex(), key.hex().upper(), repr(key)[2:-1]]


def assert_no_secret(text: str, *keys: bytes) -> None:
    for key in keys:
        for form in secret_forms(key):
            assert form not in text, f"secret key form {form[:8]}... leaked"


def test_config_objects_hide_keys() -> None:
    config = parse_config(CONFIG, "wg0.conf")
    private, psk = parse_key(PRIVATE), parse_key(PSK)
    texts = [repr(config), str(config), repr(config.interface), str(config.interface)]
    texts += [repr(p) for p in config.peers] + [str(p) for p in config.peers]
    for text in texts:
        assert_no_secret(text, private, psk)
    assert PEER in CONFIG and config.peers[0].public_key == parse_key(PEER)  # parsed for real


@pytest.mark.parametrize(
    "line",
    [
        f"PrivateKey = {PRIVATE}x",  # malformed key
        f"PrivateKey {PRIVATE}",  # no '='
        f"PrivateKey{PRIVATE}",  # run together
        f"[Interface]PrivateKey = {PRIVATE}",  # mangled section line
        f"ListenPort = {PRIVATE}",  # pasted into the wrong field
    ],
)
def test_config_errors_hide_keys(line: str) -> None:
    text = CONFIG.replace(f"PrivateKey = {PRIVATE}", line)
    with pytest.raises(ConfigError) as info:
        parse_config(text, "wg0.conf")
    assert_no_secret(str(info.value), parse_key(PRIVATE))
    assert_no_secret(repr(info.value), parse_key(PRIVATE))
    assert_no_secret(str(info.value.field), parse_key(PRIVATE))


def test_key_objects_hide_private_keys() -> None:
    private, psk = parse_key(PRIVATE), parse_key(PSK)
    identity = StaticIdentity.from_private(private)
    ops = parse_set(
        [f"private_key={private.hex()}", f"public_key={'ab' * 32}", f"preshared_key={psk.hex()}"]
    )
    objects: list[object] = [
        identity,
        SetPrivateKey(private),
        PeerUpdate(public_key(private), preshared_key=psk),
        DeviceSnapshot(private_key=private, peers=(PeerSnapshot(b"\x01" * 32, psk),)),
        *ops,
    ]
    for obj in objects:
        assert_no_secret(repr(obj), private, psk)
        assert_no_secret(str(obj), private, psk)
    assert repr(identity.public) in repr(identity)  # repr still says which key it is


def test_parser_drafts_hide_keys() -> None:
    """Regression (#15): the half-built objects of the config and UAPI parsers showed their
    keys in repr() (an exception's locals, a debugger, a log of the draft)."""
    private, psk = parse_key(PRIVATE), parse_key(PSK)
    state = initial_state(parse_key(PEER))
    state.mix_chain(private)  # a chaining key that depends on a secret
    drafts: list[object] = [
        config_module._InterfaceDraft(line=1, private_key=private),
        config_module._PeerDraft(line=5, public_key=parse_key(PEER), preshared_key=psk),
        uapi_protocol._PeerDraft(parse_key(PEER), preshared_key=psk),
        state,
    ]
    for draft in drafts:
        assert_no_secret(repr(draft), private, psk, state.chaining_key)
        assert_no_secret(str(draft), private, psk, state.chaining_key)
    assert "line=5" in repr(drafts[1])  # the rest of the draft still shows


SECRET_FIELD = re.compile(r"private|preshared|psk|secret|chaining_key|(send|recv)_key")


def _wiretun_modules() -> list[str]:
    found = pkgutil.walk_packages(wiretun.__path__, "wiretun.")
    return [m.name for m in found if not m.name.endswith("__main__")]  # that one runs the CLI


def test_every_dataclass_field_holding_a_secret_stays_out_of_repr() -> None:
    """Every dataclass in the package whose field name says it holds a secret hides it, so
    the next draft or snapshot class cannot leak one by being added with a plain field."""
    checked = []
    for name in _wiretun_modules():
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if not (dataclasses.is_dataclass(obj) and isinstance(obj, type)):
                continue
            if obj.__module__ != name:
                continue
            for f in dataclasses.fields(obj):
                if SECRET_FIELD.search(f.name):
                    checked.append(f"{name}.{obj.__name__}.{f.name}")
                    assert not f.repr, f"{name}.{obj.__name__}.{f.name} shows in repr()"
    # The walk found the known key-holding classes (it is not vacuous).
    assert "wiretun.tunnel.config._InterfaceDraft.private_key" in checked
    assert "wiretun.wireguard.handshake.SessionKeys.send_key" in checked
    assert len(checked) >= 8, checked


def test_device_handshake_logs_no_keys(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    pair = make_pair(11, psk=parse_key(PSK))
    pair.a_to_b(b"ping")
    pair.net.roundtrip()
    pair.b_to_a(b"pong")
    pair.net.roundtrip()
    assert pair.delivered_to(pair.b) and pair.delivered_to(pair.a)  # the handshake happened
    keys = (pair.a.private_key, pair.b.private_key, parse_key(PSK))
    texts = [repr(pair.a), str(pair.b), repr(pair.a.peers), repr(pair.b.stats())]
    texts += [repr(e) for evs in pair.net.events.values() for e in evs]
    texts += [r.getMessage() for r in caplog.records]
    for text in texts:
        assert_no_secret(text, *keys)


def test_uapi_set_logs_no_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    private, psk = parse_key(PRIVATE), parse_key(PSK)
    request = (
        f"set=1\nprivate_key={private.hex()}\npublic_key={parse_key(PEER).hex()}\n"
        f"preshared_key={psk.hex()}\nallowed_ip=10.0.0.2/32\n\n"
        # A malformed set that quotes its lines would leak here:
        f"set=1\nprivate_key={private.hex()}0\n\nset=1\nprivate_key {private.hex()}\n\n"
    )

    async def run() -> bytes:
        backend = MemoryBackend()
        async with UapiServer("wgleak0", backend, socket_dir=str(tmp_path)) as server:
            reader, writer = await asyncio.open_unix_connection(server.path)
            writer.write(request.encode())
            await writer.drain()
            replies = b""
            while replies.count(b"\n\n") < 3:
                chunk = await asyncio.wait_for(reader.read(4096), 5)
                if not chunk:
                    break
                replies += chunk
            writer.close()
            await writer.wait_closed()
        assert backend.snapshot.private_key == private  # the set was applied
        return replies

    replies = asyncio.run(run())
    assert replies.startswith(b"errno=0\n\n")
    assert any(r.levelno == logging.DEBUG for r in caplog.records)  # debug logging was on
    for record in caplog.records:
        assert_no_secret(record.getMessage(), private, psk)


async def _send_to_uapi(tmp_path: Path, request: bytes) -> tuple[bytes, MemoryBackend]:
    """Writes `request` to a live UAPI socket and reads until the server closes it."""
    backend = MemoryBackend()
    async with UapiServer("wgleak1", backend, socket_dir=str(tmp_path)) as server:
        reader, writer = await asyncio.open_unix_connection(server.path)
        writer.write(request)
        await writer.drain()
        writer.write_eof()
        replies = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await writer.wait_closed()
    return replies, backend


@pytest.mark.parametrize(
    "request_text",
    [
        # A key sent without `set=1` first: the server rejects the operation line.
        f"private_key={parse_key(PRIVATE).hex()}\n\n",
        f"preshared_key={parse_key(PSK).hex()}\n",
        f"{parse_key(PRIVATE).hex()}\n",
        # A key pasted into the wrong field of a valid set.
        f"set=1\nlisten_port={parse_key(PRIVATE).hex()}\n\n",
        f"set=1\npublic_key={parse_key(PEER).hex()}\nendpoint={parse_key(PSK).hex()}\n\n",
        f"set=1\n{parse_key(PRIVATE).hex()}=1\n\n",
    ],
    ids=["no-set", "no-set-psk", "bare-key", "listen-port", "endpoint", "key-as-name"],
)
def test_uapi_rejects_without_logging_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, request_text: str
) -> None:
    caplog.set_level(logging.DEBUG)
    replies, backend = asyncio.run(_send_to_uapi(tmp_path, request_text.encode()))
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings, "the rejected request was not logged"
    assert not replies.startswith(b"errno=0")  # rejected: closed, or answered with an errno
    assert backend.snapshot.private_key is None  # nothing applied
    for record in caplog.records:
        assert_no_key_fragment(record.getMessage(), parse_key(PRIVATE), parse_key(PSK))


def assert_no_key_fragment(text: str, *keys: bytes, size: int = 16) -> None:
    """Stricter than assert_no_secret: no `size` hex digits in a row of any key either
    (a truncated quote such as op[:64] leaks most of a key)."""
    lowered = text.lower()
    for key in keys:
        digits = key.hex()
        for start in range(len(digits) - size + 1):
            assert digits[start : start + size] not in lowered, "part of a secret key leaked"
