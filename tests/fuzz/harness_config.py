"""wg-quick files: parse_config on arbitrary and mutated text raises ConfigError or nothing,
and a ConfigError never quotes a key that was given as a valid PrivateKey/PresharedKey."""

from __future__ import annotations

import re
from pathlib import Path

from fuzz.mutate import TEXT_MUTATORS
from fuzz.runner import Harness
from wiretun.tunnel.config import ConfigError, parse_config

CONFIG_DIR = Path(__file__).parent.parent / "data" / "configs"
_KEY_RE = re.compile(r"[A-Za-z0-9+/]{43}=")

FULL = b"""[Interface]
PrivateKey = SERyCch636eVNDlIMajZJ+lHsqvTClKWBcDAYjNHe3U=
ListenPort = 51820
Address = 10.0.0.1/24, fd00::1/64
MTU = 1420
FwMark = 0x1234
Table = off
DNS = 1.1.1.1
PostUp = true

[Peer]
PublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=
PresharedKey = FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE=
AllowedIPs = 10.0.0.2/32, fd00::2/128, 192.168.0.0/16
Endpoint = [2001:db8::1]:51820
PersistentKeepalive = 25

[Peer]
PublicKey = TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=
AllowedIPs = 0.0.0.0/0
Endpoint = vpn.example.com:4500
"""


class ConfigHarness(Harness):
    name = "config"
    mutators = TEXT_MUTATORS
    random_share = 0.05

    def seeds(self) -> list[bytes]:
        files = sorted(CONFIG_DIR.glob("*.conf")) if CONFIG_DIR.is_dir() else []
        return [FULL, *(p.read_bytes() for p in files)]

    def check(self, data: bytes) -> None:
        text = data.decode("utf-8", "replace")  # load_config hands over decoded text
        try:
            parse_config(text, "wg0.conf")
        except ConfigError as exc:
            message = str(exc)
            # However mangled the line, a secret key's text must not reach the message.
            for line in text.splitlines():
                if "private" in line.lower() or "preshared" in line.lower():
                    for secret in _KEY_RE.findall(line):
                        assert secret[:43] not in message, "a ConfigError quotes a secret key"
