"""`wiretun demo`: wiretun on both ends of a tunnel in throwaway namespaces, then wiretun
against Debian's wireguard-go, with ping, iperf3 and `wg show`; everything removed after."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import time

from wiretun.lab.netns import NetNS, Topology, unique_name
from wiretun.lab.peers import PeerSpec, WireguardGoPeer, WiretunPeer, generate_psk, udp_ping

# Interface names (and so UAPI socket names) of the demo start with this, so its tests can
# tell its files from those of other tunnels on the machine.
DEMO_IFACE = "wtdemo"

LEFT_UNDER, RIGHT_UNDER = "192.168.241.1", "192.168.241.2"
LEFT_OVER, RIGHT_OVER = "10.9.0.1", "10.9.0.2"
LEFT_OVER6, RIGHT_OVER6 = "fd00:9::1", "fd00:9::2"
LEFT_PORT, RIGHT_PORT = 51820, 51821
LEFT_ALLOWED = [f"{LEFT_OVER}/32", f"{LEFT_OVER6}/128"]
RIGHT_ALLOWED = [f"{RIGHT_OVER}/32", f"{RIGHT_OVER6}/128"]
OVERLAY_LEFT = [f"{LEFT_OVER}/24", f"{LEFT_OVER6}/64"]
OVERLAY_RIGHT = [f"{RIGHT_OVER}/24", f"{RIGHT_OVER6}/64"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--time", type=int, default=5, help="seconds per iperf3 run (default 5)")


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _ping(client: NetNS, server: NetNS, addr: str) -> str:
    """ICMP ping when ping(8) is installed, else a UDP echo; returns a one-line summary."""
    if shutil.which("ping"):
        out = client.run("ping", "-c", "3", "-i", "0.2", "-W", "2", addr, check=False)
        summary = [
            line for line in out.splitlines() if "packets transmitted" in line or "rtt" in line
        ]
        return "; ".join(summary) or out.strip()
    return f"{udp_ping(client, server, addr)}/3 UDP echoes answered"


def _iperf(client: NetNS, server: NetNS, addr: str, seconds: int, reverse: bool) -> str:
    srv = server.popen("iperf3", "-s", "-1", "-B", addr, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while ":5201" not in server.run("ss", "-ltnH"):
            if time.monotonic() > deadline:
                return "iperf3 server did not start"
            time.sleep(0.05)
        args = ["iperf3", "-c", addr, "-t", str(seconds), "-J"] + (["-R"] if reverse else [])
        end = json.loads(client.run(*args, timeout=seconds + 30))["end"]
    finally:
        if srv.poll() is None:
            srv.kill()
        srv.wait()
    gbits = end["sum_received"]["bits_per_second"] / 1e9
    return f"{gbits:.2f} Gbit/s, {end['sum_sent'].get('retransmits', 0)} TCP retransmits"


def _wiretun_pair(left: NetNS, right: NetNS, psk: str, seconds: int) -> bool:
    with (
        WiretunPeer(left, name=unique_name(DEMO_IFACE)) as a,
        WiretunPeer(right, name=unique_name(DEMO_IFACE)) as b,
    ):
        _step(f"`wiretun up` on both ends: {a.name} in {left.name}, {b.name} in {right.name}")
        a.write_config(
            addresses=OVERLAY_LEFT,
            listen_port=LEFT_PORT,
            peers=[PeerSpec(b.keys.public, RIGHT_ALLOWED, f"{RIGHT_UNDER}:{RIGHT_PORT}", psk)],
        )
        b.write_config(
            addresses=OVERLAY_RIGHT,
            listen_port=RIGHT_PORT,
            peers=[PeerSpec(a.keys.public, LEFT_ALLOWED, f"{LEFT_UNDER}:{LEFT_PORT}", psk)],
        )
        with open(a.config_path) as f:
            print(f.read().replace(a.keys.private, "(hidden)").replace(psk, "(hidden)"))
        a.start()
        b.start()
        _step("ping through the tunnel (IPv4, then IPv6)")
        print(f"{LEFT_OVER} -> {RIGHT_OVER}: {_ping(left, right, RIGHT_OVER)}")
        print(f"{LEFT_OVER6} -> {RIGHT_OVER6}: {_ping(left, right, RIGHT_OVER6)}")
        _step(f"iperf3, one TCP stream, {seconds} s each way, wiretun <-> wiretun")
        print(f"left -> right: {_iperf(left, right, RIGHT_OVER, seconds, False)}")
        print(f"right -> left: {_iperf(left, right, RIGHT_OVER, seconds, True)}")
        ok = udp_ping(left, right, RIGHT_OVER) == 3
        return ok and a.stop() == 0 and b.stop() == 0


def _against_wireguard_go(left: NetNS, right: NetNS, psk: str, seconds: int) -> bool:
    with (
        WiretunPeer(left, name=unique_name(DEMO_IFACE)) as wt,
        WireguardGoPeer(right, name=unique_name(DEMO_IFACE)).start() as wg,
    ):
        _step(f"wiretun ({wt.name}) against Debian's wireguard-go ({wg.name}), set up with `wg`")
        wg.configure(listen_port=RIGHT_PORT)
        wg.add_peer(wt.keys.public, allowed_ips=LEFT_ALLOWED, preshared_key=psk)
        wg.link_up(OVERLAY_RIGHT)
        wt.write_config(
            addresses=OVERLAY_LEFT,
            listen_port=LEFT_PORT,
            peers=[PeerSpec(wg.keys.public, RIGHT_ALLOWED, f"{RIGHT_UNDER}:{RIGHT_PORT}", psk)],
        )
        wt.start()
        print(f"{LEFT_OVER} -> {RIGHT_OVER}: {_ping(left, right, RIGHT_OVER)}")
        print(f"{RIGHT_OVER6} -> {LEFT_OVER6}: {_ping(right, left, LEFT_OVER6)}")
        _step(f"`wg show {wt.name}`: wireguard-tools talking UAPI to wiretun")
        print(wt.wg("show", wt.name))
        _step(f"iperf3, one TCP stream, {seconds} s each way, wiretun <-> wireguard-go")
        print(f"wiretun -> wireguard-go: {_iperf(left, right, RIGHT_OVER, seconds, False)}")
        print(f"wireguard-go -> wiretun: {_iperf(left, right, RIGHT_OVER, seconds, True)}")
        answered = udp_ping(right, left, LEFT_OVER6)
        _step("SIGTERM: wiretun removes its device, routes, rule and socket")
        assert wt.proc is not None
        wt.proc.send_signal(signal.SIGTERM)
        code = wt.proc.wait(15)
        print(f"exit code {code}; links and rules left in {left.name}:")
        print(left.run("ip", "-br", "link") + left.run("ip", "rule"))
        clean = wt.name not in left.run("ip", "link") and not os.path.exists(wt.socket_path)
        return answered == 3 and code == 0 and clean


def run(args: argparse.Namespace) -> int:
    missing = [t for t in ("ip", "wireguard-go", "wg", "iperf3") if shutil.which(t) is None]
    if os.geteuid() != 0 or missing:
        need = ", ".join(missing) or "nothing else"
        print(f"wiretun demo needs root and these tools: {need} (`make demo` installs them)")
        return 1
    psk = generate_psk()
    with Topology("wtdemo") as topo:
        left, right = topo.netns(), topo.netns()
        _step(f"namespaces {left.name} and {right.name}, joined by a veth pair")
        topo.veth(left, right, f"{LEFT_UNDER}/24", f"{RIGHT_UNDER}/24")
        pair_ok = _wiretun_pair(left, right, psk, args.time)
        interop_ok = _against_wireguard_go(left, right, psk, max(2, args.time // 2))
    ok = pair_ok and interop_ok
    print("\ndemo " + ("succeeded" if ok else "FAILED") + "; namespaces removed")
    return 0 if ok else 1
