"""What a running `wiretun up` installed outside its device (policy rules, nftables tables,
DNS), kept in a
file so that the next `up` of the same interface removes what a crash left behind.

Routes need no record: they name the device and the kernel drops them with it. Rules name
only tables and marks, so they would outlive a SIGKILL and pile up run after run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import AsyncIPRoute

from wiretun.netdev.policy import RuleSpec, delete_rules
from wiretun.tunnel.runfiles import write_atomic

log = logging.getLogger(__name__)


def netns_id() -> int:
    """The inode of our network namespace: a record only applies in the one it was made in."""
    return os.stat("/proc/thread-self/ns/net").st_ino


@dataclass
class Leftovers:
    """The record for one interface, rewritten (atomically) on every change."""

    path: str
    rules: list[RuleSpec] = field(default_factory=list)
    dns: str | None = None  # the resolvconf/resolvectl interface name DNS was set for
    nft: list[str] = field(default_factory=list)  # nftables tables, "ip wiretun-wg0"

    def set_rules(self, rules: list[RuleSpec]) -> None:
        self.rules = list(rules)
        self.save()

    def set_nft(self, tables: list[str]) -> None:
        self.nft = list(tables)
        self.save()

    def set_dns(self, dns: str | None) -> None:
        self.dns = dns
        self.save()

    def save(self) -> None:
        if not self.rules and self.dns is None and not self.nft:
            self.remove()
            return
        data = {
            "pid": os.getpid(),
            "netns": netns_id(),
            "rules": [rule.to_json() for rule in self.rules],
            "dns": self.dns,
            "nft": self.nft,
        }
        write_atomic(self.path, json.dumps(data).encode(), 0o600)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


@dataclass(frozen=True)
class Found:
    rules: list[RuleSpec]
    dns: str | None
    nft: list[str]


def read_leftovers(path: str) -> Found | None:
    """What a record lists, if it exists and was made in this namespace."""
    try:
        with open(path) as f:
            data: dict[str, Any] = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable %s: %s", path, e)
        return None
    if data.get("netns") != netns_id():
        return None
    try:
        rules = [RuleSpec.from_json(item) for item in data.get("rules", [])]
        nft = [str(table) for table in data.get("nft", [])]
    except (KeyError, TypeError, ValueError) as e:
        log.warning("ignoring malformed %s: %s", path, e)
        return None
    dns = data.get("dns")
    return Found(rules, dns if isinstance(dns, str) else None, nft)


async def remove_rules(rules: list[RuleSpec]) -> None:
    ipr = AsyncIPRoute(groups=0)
    try:
        for err in await delete_rules(ipr, rules):
            log.warning("leftover: %s", err)
    finally:
        ipr.close()
