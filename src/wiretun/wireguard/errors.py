"""Exception types of the WireGuard core; the device layer catches them and counts the drop."""

from __future__ import annotations


class WireGuardError(Exception):
    """Base class: something about a message or key was not acceptable."""


class CryptoError(WireGuardError):
    """A primitive failed: bad tag, bad key length, or a DH result of all zeros."""


class MessageError(WireGuardError):
    """A message had the wrong size, type header or field length."""


class HandshakeError(WireGuardError):
    """A handshake message did not authenticate or arrived in the wrong state."""
