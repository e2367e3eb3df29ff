"""Text forms of 32-byte WireGuard keys: base64 for config files, hex for the UAPI."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import string

from wiretun.wireguard.crypto import KEY_LEN

_HEX_DIGITS = frozenset(string.hexdigits)


def key_from_base64(text: str) -> bytes:
    """Decode a key as `wg genkey` prints it (44 characters, standard alphabet, padded)."""
    text = text.strip()
    if len(text) != 44 or not text.endswith("="):
        raise ValueError(f"a key is 44 base64 characters ending in '=', got {len(text)} chars")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"key is not valid base64: {exc}") from exc
    if len(raw) != KEY_LEN:
        raise ValueError(f"key decodes to {len(raw)} bytes, wanted {KEY_LEN}")
    return raw


def key_to_base64(key: bytes) -> str:
    """The 44-character base64 form of a 32-byte key."""
    _check_len(key)
    return base64.b64encode(key).decode("ascii")


def key_from_hex(text: str) -> bytes:
    """Decode a 64-digit hex key as the UAPI sends it."""
    if len(text) != 2 * KEY_LEN or not _HEX_DIGITS.issuperset(text):
        raise ValueError(f"a hex key is {2 * KEY_LEN} hex digits, got {text[:80]!r}")
    return bytes.fromhex(text)


def key_to_hex(key: bytes) -> str:
    """The 64-digit lowercase hex form of a 32-byte key."""
    _check_len(key)
    return key.hex()


def _check_len(key: bytes) -> None:
    if len(key) != KEY_LEN:
        raise ValueError(f"key is {len(key)} bytes, wanted {KEY_LEN}")


def keyed_repr(obj: object) -> str:
    """A dataclass's repr with each 32-byte key in base64, as `wg` prints keys (a field
    declared repr=False, such as a private or preshared key, stays out)."""
    parts = []
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        if not f.repr:
            continue
        value = getattr(obj, f.name)
        shown = key_to_base64(value) if isinstance(value, bytes) and len(value) == KEY_LEN else None
        parts.append(f"{f.name}={shown if shown is not None else repr(value)}")
    return f"{type(obj).__name__}({', '.join(parts)})"
