"""What numpy costs `wiretun up` (issue #14: numpy only where it is still needed).

Side by side in one run: the import time of the modules `wiretun up` loads, with and without
numpy loaded beside them; the time to "ready" and the RSS of a live `wiretun up` (native
data path, a ping through it to wireguard-go in a second namespace), run as is and with
numpy imported first; and the offload split of one super-packet, vectorised with numpy and
segment by segment without it. Needs root, wireguard-go and wg.

    PYTHONPATH=src python scripts/numpy_cost.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from wiretun.lab.netns import Topology
from wiretun.lab.peers import PeerSpec, WireguardGoPeer, WiretunPeer, udp_ping

# The scenarios and the test packet builders live with the tests, as for scripts/soak.py.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from scenarios.traffic import rss_kib

UP_MODULES = "import wiretun.cli, wiretun.tunnel.up, wiretun.tunnel.tunnel, wiretun.tun.offload"
WITH_NUMPY = (
    "import numpy, runpy, sys; sys.argv[0] = 'wiretun'; "
    "runpy.run_module('wiretun', run_name='__main__')"
)


def import_ms(preamble: str) -> tuple[float, bool]:
    code = (
        "import sys, time\n"
        f"t = time.perf_counter()\n{preamble}\n{UP_MODULES}\n"
        "print((time.perf_counter() - t) * 1000, 'numpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    ms, loaded = out.stdout.split()
    return float(ms), loaded == "True"


class NumpyFirstPeer(WiretunPeer):
    """`wiretun up` with numpy imported before it starts (what it cost before #14's change)."""

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-c", WITH_NUMPY, *args]


def live(kind: type[WiretunPeer]) -> tuple[float, int, bool]:
    with Topology() as topo:
        a, b = topo.netns(), topo.netns()
        topo.veth(a, b, "192.168.241.1/24", "192.168.241.2/24")
        with WireguardGoPeer(b).start() as wg, kind(a) as wt:
            wg.configure(listen_port=51821)
            wg.add_peer(wt.keys.public, allowed_ips=["10.9.0.1/32"])
            wg.link_up(["10.9.0.2/24"])
            wt.write_config(addresses=["10.9.0.1/24"],
                            peers=[PeerSpec(wg.keys.public, ["10.9.0.2/32"],
                                            endpoint="192.168.241.2:51821")])  # fmt: skip
            t = time.monotonic()
            wt.start()
            ready = time.monotonic() - t
            assert udp_ping(a, b, "10.9.0.2") == 3
            assert wt.proc is not None
            pid = wt.proc.pid
            rss = rss_kib(pid)
            maps = Path(f"/proc/{pid}/maps").read_text()
            numpy_mapped = "_multiarray_umath" in maps
            assert wt.stats()["data_path"] == "native"
            assert wt.stop() == 0
    return ready, rss, numpy_mapped


def split_us() -> list[tuple[str, float, float]]:
    from test_tun_offload import Flow, data_of, segments, super_frame
    from wiretun.tun.gso import OffloadStats, decode_frame

    rows: list[tuple[str, float, float]] = []
    for size, mss in ((2896, 1448), (14480, 1448), (64000, 1448)):
        f = Flow()
        frame = super_frame(f, segments(f, data_of(size), mss), mss)
        out: list[float] = []
        for vectorised in (True, False):
            decode_frame(frame, OffloadStats(), vectorised=vectorised)  # numpy imported here
            n = 300
            t = time.perf_counter()
            for _ in range(n):
                decode_frame(frame, OffloadStats(), vectorised=vectorised)
            out.append((time.perf_counter() - t) / n * 1e6)
        rows.append((f"{size} B at MSS {mss} ({-(-size // mss)} segments)", out[0], out[1]))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {args.rounds} rounds, alternating; medians")
    for label, pre in (("without numpy", ""), ("with numpy", "import numpy")):
        runs = [import_ms(pre) for _ in range(args.rounds)]
        ms = statistics.median(r[0] for r in runs)
        print(f"import of up's modules {label:>14}: {ms:6.0f} ms (numpy loaded: {runs[0][1]})")
    results: dict[str, list[tuple[float, int, bool]]] = {"as is": [], "numpy first": []}
    for _ in range(args.rounds):
        results["as is"].append(live(WiretunPeer))
        results["numpy first"].append(live(NumpyFirstPeer))
    for label, rs in results.items():
        ready = statistics.median(r[0] for r in rs)
        rss = statistics.median(r[1] for r in rs)
        print(f"wiretun up {label:>11}: ready in {ready * 1000:5.0f} ms, RSS {rss / 1024:5.1f} MiB "
              f"after a ping (numpy mapped: {rs[0][2]})")  # fmt: skip
    print("offload split of one TCP/IPv4 super-packet (us): numpy / segment by segment")
    for label, vec, plain in split_us():
        print(f"  {label:<36} {vec:7.1f} / {plain:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
