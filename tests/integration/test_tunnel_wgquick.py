"""wg-quick parity: `wiretun up`, and `wg-quick` itself driving `wiretun-go`, against
Debian's wireguard-go as the server, in namespaces joined by veth pairs.

Assertions are about traffic that crossed (and which source address it arrived with) and
about the kernel's rules and routes (`ip -j`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from wiretun.lab.netns import NetNS, Topology, unique_name
from wiretun.lab.peers import (
    KeyPair,
    PeerSpec,
    WireguardGoPeer,
    have_wireguard_go,
)
from wiretun.lab.procs import wg_quick_config, write_secret

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not have_wireguard_go(), reason="needs wireguard-go and wg"),
]

VENV_BIN = os.path.dirname(sys.executable)
HAVE_WG_QUICK = shutil.which("wg-quick") is not None and shutil.which("nft") is not None
DEFAULT_RULES = {0, 32766, 32767}
SERVER_PORT = 51821
# On the server's loopback: "the internet", only reachable through the tunnel.
REMOTE4, REMOTE6 = "203.0.113.7", "2001:db8:ff::7"
# Also on the server's loopback: an endpoint reached through the client's default route, as
# over the internet (the reverse-path check of its replies then depends on the fwmark).
FAR_ENDPOINT = "198.51.100.1"


def ipj(ns: NetNS, *args: str) -> list[dict[str, Any]]:
    out = ns.run("ip", "-j", *args).strip()
    return json.loads(out) if out else []


def extra_rules(ns: NetNS) -> list[dict[str, Any]]:
    """Every policy rule besides the kernel's three, in both families."""
    return [
        r
        for family in ("-4", "-6")
        for r in ipj(ns, family, "rule")
        if r["priority"] not in DEFAULT_RULES
    ]


def nft_tables(ns: NetNS) -> list[str]:
    return ns.run("nft", "list", "tables").splitlines()


def udp_source(client: NetNS, server: NetNS, addr: str, timeout: float = 3.0) -> str | None:
    """Send a datagram from `client` to a socket bound to `addr` in `server`; the source
    address it arrived from once the reply also came back, or None if it was lost."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with server.enter():
        srv = socket.socket(family, socket.SOCK_DGRAM)
    with client.enter():
        cli = socket.socket(family, socket.SOCK_DGRAM)
    try:
        srv.bind((addr, 0))
        srv.settimeout(timeout)
        cli.settimeout(timeout)
        for _ in range(3):  # the first may wait for a handshake
            cli.sendto(b"probe", (addr, srv.getsockname()[1]))
            try:
                data, peer = srv.recvfrom(100)
                srv.sendto(data, peer)
                if cli.recv(100) == b"probe":
                    return str(peer[0])
            except TimeoutError:
                continue
        return None
    finally:
        srv.close()
        cli.close()


@dataclass
class Net:
    client: NetNS
    server: NetNS
    lan: NetNS
    wg: WireguardGoPeer
    keys: KeyPair


@pytest.fixture
def net(topology: Topology) -> Iterator[Net]:
    """client --192.168.241.0/24-- server (wireguard-go, REMOTE4/6 on its lo, and the
    client's default gateway); client --192.168.88.0/24, fd88::/64-- lan host."""
    client, server, lan = topology.netns(), topology.netns(), topology.netns()
    topology.veth(client, server, "192.168.241.1/24", "192.168.241.2/24")
    c_lan, _ = topology.veth(client, lan, "192.168.88.1/24", "192.168.88.2/24")
    client.run("ip", "addr", "add", "fd88::1/64", "dev", c_lan, "nodad")
    lan.run("ip", "route", "add", "default", "via", "192.168.88.1")
    for ns, cidr in ((lan, "fd88::2/64"),):
        dev = next(ln["ifname"] for ln in ipj(ns, "link") if ln["ifname"] != "lo")
        ns.run("ip", "addr", "add", cidr, "dev", dev, "nodad")
    client.run("ip", "route", "add", "default", "via", "192.168.241.2")
    server.run("ip", "addr", "add", f"{REMOTE4}/32", "dev", "lo")
    server.run("ip", "addr", "add", f"{REMOTE6}/128", "dev", "lo")
    server.run("ip", "addr", "add", f"{FAR_ENDPOINT}/32", "dev", "lo")
    keys = KeyPair.generate()
    with WireguardGoPeer(server).start() as wg:
        wg.configure(listen_port=SERVER_PORT)
        wg.add_peer(keys.public, allowed_ips=["10.9.0.1/32", "fd00:9::1/128"])
        wg.link_up(["10.9.0.2/24", "fd00:9::2/64"])
        yield Net(client, server, lan, wg, keys)


def _pid_in(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class Client:
    """The client end, brought up by `wiretun up` or by `wg-quick up` with wiretun-go."""

    def __init__(self, ns: NetNS, keys: KeyPair, kind: str) -> None:
        self.ns, self.keys, self.kind = ns, keys, kind
        self.name = unique_name("wq")
        self.dir = tempfile.TemporaryDirectory(prefix="wiretun-wgquick-")
        self.path = os.path.join(self.dir.name, f"{self.name}.conf")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = os.path.join(self.dir.name, "log")
        self.env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ['PATH']}")
        self.env["WG_QUICK_USERSPACE_IMPLEMENTATION"] = "wiretun-go"

    def write(
        self, wg: WireguardGoPeer, allowed: list[str], extra: str = "", host: str = "192.168.241.2"
    ) -> None:
        text = wg_quick_config(
            self.keys.private,
            addresses=["10.9.0.1/24", "fd00:9::1/64"],
            peers=[PeerSpec(wg.keys.public, allowed, endpoint=f"{host}:{SERVER_PORT}")],
            extra=extra,
        )
        write_secret(self.path, text)

    def up(self, *, expect_ok: bool = True) -> int:
        sock = f"/var/run/wireguard/{self.name}.sock"
        if self.kind == "wg-quick":
            proc = subprocess.run(
                ["ip", "netns", "exec", self.ns.name, "wg-quick", "up", self.path],
                env=self.env, capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            Path(self.log).write_text(proc.stdout + proc.stderr)
            assert (proc.returncode == 0) == expect_ok, proc.stderr
            return proc.returncode
        with open(self.log, "wb") as log:
            self.proc = self.ns.popen(
                sys.executable, "-m", "wiretun", "-v", "up", self.path,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self.env,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        pid = f"/var/run/wireguard/{self.name}.pid"
        # The pid file names this process (a SIGKILLed one's stays behind).
        while not (_pid_in(pid) == self.proc.pid and os.path.exists(sock)):
            code = self.proc.poll()
            if code is not None:
                assert not expect_ok, self.text()
                return code
            assert time.monotonic() < deadline, self.text()
            time.sleep(0.02)
        assert expect_ok, self.text()
        return 0

    def down(self, sig: int = signal.SIGTERM) -> int:
        if self.kind == "wg-quick":
            proc = subprocess.run(
                ["ip", "netns", "exec", self.ns.name, "wg-quick", "down", self.path],
                env=self.env, capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            self.wait_gone()
            return proc.returncode
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=20)
        self.proc = None
        return code

    def wait_gone(self) -> None:
        deadline = time.monotonic() + 10
        while os.path.exists(f"/var/run/wireguard/{self.name}.sock"):
            assert time.monotonic() < deadline, "wiretun-go did not exit"
            time.sleep(0.05)

    def text(self) -> str:
        return Path(self.log).read_text(errors="replace")

    def stub_resolvconf(self) -> Path:
        """A `resolvconf` first on PATH that records its arguments (and stdin for -a)."""
        record = Path(self.dir.name, "resolvconf.log")
        stub = Path(self.dir.name, "bin")
        stub.mkdir()
        Path(stub, "resolvconf").write_text(
            f'#!/bin/bash\necho "args: $*" >> {record}\n'
            f'[[ $1 == -a ]] && sed "s/^/stdin: /" >> {record}\nexit 0\n'
        )
        os.chmod(stub / "resolvconf", 0o755)
        self.env["PATH"] = f"{stub}:{self.env['PATH']}"
        return record

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.ns.run("ip", "link", "del", self.name, check=False)
        for suffix in ("sock", "pid", "installed"):
            Path(f"/var/run/wireguard/{self.name}.{suffix}").unlink(missing_ok=True)
        self.dir.cleanup()


@pytest.fixture
def make_client(net: Net) -> Iterator[Any]:
    made: list[Client] = []

    def make(kind: str = "wiretun") -> Client:
        c = Client(net.client, net.keys, kind)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


NEEDS_WG_QUICK = pytest.mark.skipif(not HAVE_WG_QUICK, reason="needs wg-quick and nft")
KINDS = ["wiretun", pytest.param("wg-quick", marks=NEEDS_WG_QUICK)]


@pytest.mark.parametrize("kind", KINDS)
def test_full_tunnel_keeps_the_lan_and_sends_the_rest_through(
    net: Net, make_client: Any, kind: str
) -> None:
    # Strict reverse-path checks: the encrypted replies from the far endpoint pass only
    # because the mark of the tunnel's UDP is restored on them (connmark, src_valid_mark).
    net.client.run("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1")
    c = make_client(kind)
    c.write(net.wg, ["0.0.0.0/0", "::/0"], host=FAR_ENDPOINT)
    c.up()
    # Everything else goes through the tunnel: it arrives from the tunnel address.
    assert udp_source(net.client, net.server, REMOTE4) == "10.9.0.1", c.text()
    assert udp_source(net.client, net.server, REMOTE6) == "fd00:9::1", c.text()
    # The directly connected LAN stays direct (suppress_prefixlength 0), v4 and v6.
    assert udp_source(net.client, net.lan, "192.168.88.2") == "192.168.88.1"
    assert udp_source(net.client, net.lan, "fd88::2") == "fd88::1"
    # Nobody on the LAN reaches the tunnel's own address (wg-quick's raw prerouting drop).
    net.lan.run("ip", "route", "add", "10.9.0.0/24", "via", "192.168.88.1")
    assert udp_source(net.lan, net.client, "10.9.0.1", timeout=0.5) is None
    assert udp_source(net.lan, net.client, "192.168.88.1") == "192.168.88.2"
    # No loop: the encrypted packets to the endpoint left by the underlay, so the server
    # saw our underlay address as the endpoint.
    _, peers = net.wg.dump()
    assert peers[0].endpoint.startswith("192.168.241.1:") and peers[0].rx_bytes > 0
    rules = extra_rules(net.client)
    for family in ("-4", "-6"):
        got = ipj(net.client, family, "rule")
        table = next(r["table"] for r in got if r.get("not") is None and "fwmark" in r)
        assert any(r.get("suppress_prefixlen") == 0 and r["table"] == "main" for r in got)
        assert ipj(net.client, family, "route", "show", "table", str(table))[0]["dst"] == "default"
    assert len(rules) == 4, rules
    assert len(nft_tables(net.client)) == 2  # one per family
    assert c.down() == 0
    assert extra_rules(net.client) == []
    assert nft_tables(net.client) == []
    assert c.name not in net.client.run("ip", "link")


@pytest.mark.parametrize("kind", KINDS)
def test_a_more_specific_main_route_beats_a_broader_allowed_ip(
    net: Net, make_client: Any, kind: str
) -> None:
    # A LAN inside the AllowedIPs: 10.0.0.0/8 through the tunnel, 10.1.2.0/24 direct.
    lan_dev = next(r["dev"] for r in ipj(net.client, "route") if r["dst"] == "192.168.88.0/24")
    net.client.run("ip", "addr", "add", "10.1.2.1/24", "dev", lan_dev)
    for ln in ipj(net.lan, "link"):
        if ln["ifname"] != "lo":
            net.lan.run("ip", "addr", "add", "10.1.2.2/24", "dev", ln["ifname"])
    net.server.run("ip", "addr", "add", "10.200.0.7/32", "dev", "lo")
    c = make_client(kind)
    c.write(net.wg, ["10.0.0.0/8"])
    c.up()
    assert extra_rules(net.client) == []  # no default route: no rules at all
    main = {r["dst"]: r["dev"] for r in ipj(net.client, "route")}
    assert main["10.0.0.0/8"] == c.name  # AllowedIPs go to the main table
    assert udp_source(net.client, net.lan, "10.1.2.2") == "10.1.2.1"
    assert udp_source(net.client, net.server, "10.200.0.7") == "10.9.0.1"
    assert c.down() == 0
    assert "10.0.0.0/8" not in {r["dst"] for r in ipj(net.client, "route")}


@pytest.mark.parametrize(
    ("table", "where", "kind"),
    [
        ("off", None, "wiretun"),
        ("main", "main", "wiretun"),
        ("1234", "1234", "wiretun"),
        ("254", "main", "wiretun"),
        pytest.param("1234", "1234", "wg-quick", marks=NEEDS_WG_QUICK),
    ],
)
def test_table_forms(net: Net, make_client: Any, table: str, where: str | None, kind: str) -> None:
    # A default route of our own in main (wg-quick fails on the gateway's, as we do).
    net.client.run("ip", "route", "del", "default")
    c = make_client(kind)
    c.write(net.wg, ["10.200.0.0/16", "0.0.0.0/0"], extra=f"Table = {table}")
    c.up()
    assert extra_rules(net.client) == []  # an explicit table never gets a rule
    if where is None:
        routes = [
            r for r in ipj(net.client, "route", "show", "table", "all") if r.get("dev") == c.name
        ]
        assert all(r.get("table") == "local" or r.get("protocol") == "kernel" for r in routes)
    else:
        routes = ipj(net.client, "route", "show", "table", where, "dev", c.name)
        dsts = {r["dst"] for r in routes}
        assert {"10.200.0.0/16", "default"} <= dsts, routes
    assert c.down() == 0


@pytest.mark.parametrize("kind", KINDS)
def test_hooks_run_in_order_with_the_interface_name(net: Net, make_client: Any, kind: str) -> None:
    c = make_client(kind)
    out = os.path.join(c.dir.name, "hooks")
    hooks = "\n".join(
        f"{key} = echo {key} %i $(ip -br link show dev %i 2>/dev/null | wc -l) >> {out}"
        for key in ("PreUp", "PostUp", "PreDown", "PostDown")
    )
    c.write(net.wg, ["10.200.0.0/16"], extra=hooks + f"\nPostUp = echo second >> {out}")
    c.up()
    assert c.down() == 0
    n = c.name
    # The device does not exist yet at PreUp and no longer at PostDown.
    assert Path(out).read_text().split("\n") == [
        f"PreUp {n} 0",
        f"PostUp {n} 1",
        "second",
        f"PreDown {n} 1",
        f"PostDown {n} 0",
        "",
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_a_failing_post_up_stops_up_and_tears_down(net: Net, make_client: Any, kind: str) -> None:
    c = make_client(kind)
    out = os.path.join(c.dir.name, "hooks")
    c.write(
        net.wg,
        ["0.0.0.0/0"],
        extra=f"PostUp = false\nPreDown = echo predown >> {out}\nPostDown = echo x >> {out}",
    )
    code = c.up(expect_ok=False)
    assert code != 0
    if kind == "wiretun":
        assert "PostUp `false` failed with exit status 1" in c.text()
    else:  # wg-quick's own teardown, which asks wiretun-go for the mark over UAPI
        assert "[#] false" in c.text()
        c.wait_gone()
    assert c.name not in net.client.run("ip", "link")
    assert extra_rules(net.client) == []
    assert not os.path.exists(out)  # no PreDown/PostDown for an interface that never came up


@pytest.mark.parametrize("kind", KINDS)
def test_dns_goes_to_resolvconf(net: Net, make_client: Any, kind: str) -> None:
    c = make_client(kind)
    record = c.stub_resolvconf()
    c.write(net.wg, ["10.200.0.0/16"], extra="DNS = 10.9.0.53, fd00:9::53, corp.example")
    c.up()
    assert c.down() == 0
    assert record.read_text().splitlines() == [
        f"args: -a {c.name} -m 0 -x",
        "stdin: nameserver 10.9.0.53",
        "stdin: nameserver fd00:9::53",
        "stdin: search corp.example",
        f"args: -d {c.name} -f",
    ]


def test_dns_without_resolvconf_or_resolvectl_is_one_clear_error(
    net: Net, make_client: Any
) -> None:
    c = make_client()
    bindir = os.path.join(c.dir.name, "bin")
    os.mkdir(bindir)
    for tool in ("bash", "ip"):
        os.symlink(shutil.which(tool) or tool, os.path.join(bindir, tool))
    c.env["PATH"] = bindir
    c.write(net.wg, ["10.200.0.0/16"], extra="DNS = 10.9.0.53")
    assert c.up(expect_ok=False) != 0
    assert "DNS is set, but neither resolvconf nor resolvectl is on PATH" in c.text()
    assert c.name not in net.client.run("ip", "link")


@pytest.mark.parametrize("kind", KINDS)
def test_save_config_round_trip(net: Net, make_client: Any, kind: str) -> None:
    # With wg-quick, what is saved comes from `wg showconf` answered by wiretun-go.
    c = make_client(kind)
    c.write(net.wg, ["10.200.0.0/16"], extra="SaveConfig = true\nPostUp = true")
    c.up()
    extra = KeyPair.generate()
    net.client.run(
        "wg", "set", c.name, "peer", extra.public, "allowed-ips", "10.77.0.0/24",
        "endpoint", "192.168.241.9:4000",
    )  # fmt: skip
    assert c.down() == 0
    saved = Path(c.path).read_text()
    assert os.stat(c.path).st_mode & 0o077 == 0
    assert f"PublicKey = {extra.public}" in saved and "Endpoint = 192.168.241.9:4000" in saved
    assert "SaveConfig = true" in saved and "PostUp = true" in saved
    assert "Address = 10.9.0.1/24" in saved and "Address = fd00:9::1/64" in saved
    # And it brings the same interface up again, with both peers.
    c.up()
    assert extra.public in net.client.run("wg", "show", c.name, "peers")
    assert c.down() == 0


@pytest.mark.parametrize("kind", KINDS)
def test_default_mtu_follows_the_underlay(net: Net, make_client: Any, kind: str) -> None:
    under = next(r["dev"] for r in ipj(net.client, "route") if r["dst"] == "192.168.241.0/24")
    net.client.run("ip", "link", "set", "dev", under, "mtu", "1400")
    c = make_client(kind)
    c.write(net.wg, ["10.200.0.0/16"])
    c.up()
    (link,) = ipj(net.client, "link", "show", "dev", c.name)
    assert link["mtu"] == 1320  # 1400 - 80, as wg-quick computes it
    # A full-size inner packet crosses without fragmenting the outer one.
    net.server.run("ip", "addr", "add", "10.200.0.7/32", "dev", "lo")
    net.client.run("ping", "-c", "1", "-W", "3", "-M", "do", "-s", "1292", "10.200.0.7")
    assert c.down() == 0


def test_nothing_left_after_sigkill_and_a_fresh_up(net: Net, make_client: Any) -> None:
    c = make_client()
    record = c.stub_resolvconf()
    c.write(net.wg, ["0.0.0.0/0", "::/0"], extra="DNS = 10.9.0.53")
    c.up()
    before, tables = extra_rules(net.client), nft_tables(net.client)
    assert len(before) == 4 and len(tables) == 2
    assert c.down(signal.SIGKILL) == -signal.SIGKILL
    assert extra_rules(net.client) == before  # a crash leaves the rules (they name no device)
    assert nft_tables(net.client) == tables  # and the nftables tables
    c.up()
    assert extra_rules(net.client) == before, "a fresh up piles rules on the leftovers"
    assert nft_tables(net.client) == tables
    assert udp_source(net.client, net.server, REMOTE4) == "10.9.0.1"
    assert c.down() == 0
    assert extra_rules(net.client) == [] and nft_tables(net.client) == []
    assert not os.path.exists(f"/var/run/wireguard/{c.name}.installed")
    # The killed run's DNS was removed by the fresh up before it set its own.
    add, delete = f"args: -a {c.name} -m 0 -x", f"args: -d {c.name} -f"
    calls = [line for line in record.read_text().splitlines() if line.startswith("args:")]
    assert calls == [add, delete, add, delete]
