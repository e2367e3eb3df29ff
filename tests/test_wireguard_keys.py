"""wiretun.wireguard.keys: key text forms, and reprs that show keys as `wg` does (base64)."""

from __future__ import annotations

import base64

import pytest

from wiretun.tunnel.uapi_protocol import PeerSnapshot, PeerUpdate
from wiretun.wireguard.events import HandshakeCompleted, KeysZeroed
from wiretun.wireguard.keys import (
    key_from_base64,
    key_from_hex,
    key_to_base64,
    key_to_hex,
    keyed_repr,
)
from wiretun.wireguard.stats import PeerStats

KEY = bytes(range(32))
B64 = base64.b64encode(KEY).decode()


def test_round_trips() -> None:
    assert key_from_base64(key_to_base64(KEY)) == KEY
    assert key_from_hex(key_to_hex(KEY)) == KEY
    with pytest.raises(ValueError, match="44 base64"):
        key_from_base64("abc")


@pytest.mark.parametrize(
    "obj",
    [
        HandshakeCompleted(KEY, True, ("192.0.2.1", 51820)),
        KeysZeroed(KEY),
        PeerStats(KEY, None, 1, 2, None, 0, False),
        PeerUpdate(KEY, preshared_key=b"\x01" * 32),
        PeerSnapshot(KEY, preshared_key=b"\x01" * 32),
    ],
)
def test_reprs_show_keys_in_base64_and_never_the_preshared_key(obj: object) -> None:
    text = repr(obj)
    assert f"public_key={B64}" in text
    assert "b'" not in text and KEY.hex() not in text
    assert "preshared" not in text
    assert text == keyed_repr(obj)
