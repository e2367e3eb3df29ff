"""Linux interface names: the kernel's rule, for the TUN layer and the device manager, and
wg-quick's stricter one on top, for what the command line accepts (`wiretun up`, `down`,
`wiretun-go`, the UAPI socket's name). Standard library only: the daemonizing parent of
`wiretun-go` checks a name before anything heavy is imported."""

from __future__ import annotations

import re

IFNAMSIZ = 16  # the kernel's name buffer, NUL included: at most 15 bytes
# Besides '/', ':' and whitespace (the kernel's dev_valid_name), '%' would make the kernel
# pick the name from a template, so the device we get would not be the one asked for.
_FORBIDDEN = frozenset("/:%")
# wg-quick's rule for interface names (and thus for config file stems).
_WG_QUICK_RE = re.compile(r"[a-zA-Z0-9_=+.-]{1,15}")
_WG_QUICK_BAD_RE = re.compile(r"[^a-zA-Z0-9_=+.-]")


def ifname_problem(name: object) -> str | None:
    """Why the kernel would refuse `name`, or create the device under another name; None
    if it takes it as it is."""
    if not isinstance(name, str):
        return f"interface name must be str, not {type(name).__name__}"
    if name in ("", ".", ".."):
        return f"invalid interface name {name!r}"
    if not name.isascii():
        return f"invalid interface name {name!r}: not ASCII"
    if len(name) >= IFNAMSIZ:
        return f"invalid interface name {name!r}: longer than {IFNAMSIZ - 1} bytes"
    bad = sorted({c for c in name if c in _FORBIDDEN or not c.isprintable() or c.isspace()})
    if bad:
        return f"invalid interface name {name!r}: contains {''.join(bad)!r}"
    return None


def check_ifname(name: str) -> str:
    """`name`, or ValueError saying why the kernel would not take it."""
    problem = ifname_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


def is_wg_quick_ifname(name: str) -> bool:
    """True if wg-quick would accept `name` (1-15 of a-z A-Z 0-9 _ = + . -) and the kernel
    takes it as it is (so not "." or "..")."""
    return _WG_QUICK_RE.fullmatch(name) is not None and ifname_problem(name) is None


def wg_quick_ifname_problem(name: str) -> str | None:
    """Why wg-quick would refuse `name`, in words for a person (None if it takes it)."""
    if is_wg_quick_ifname(name):
        return None
    if not name:
        return "it is empty"
    if len(name) >= IFNAMSIZ:
        return f"{len(name)} characters, and Linux allows at most {IFNAMSIZ - 1} (IFNAMSIZ)"
    bad = sorted(set(_WG_QUICK_BAD_RE.findall(name)))
    if bad:
        return f"{''.join(bad)!r} not allowed (only a-z A-Z 0-9 _ = + . -)"
    return "the kernel would not take it as it is"
