#!/usr/bin/env python3
"""What one large `set=1` costs a running `wiretun up` in memory (issue #15).

    .venv/bin/python scripts/uapi_set_rss.py [--megabytes 8]

Needs root. Starts `wiretun up` (no peers) in a throwaway namespace and sends one set of
MEGABYTES of `listen_port=PORT` lines (its own port: they change nothing, so what grows is
what the server holds for the request, not device state), then the blank line; prints the
daemon's RSS before, at its peak while the lines arrive, and after the reply.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from scenarios.traffic import rss_kib
from wiretun.lab.netns import Topology
from wiretun.lab.peers import WiretunPeer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=8.0)
    args = parser.parse_args()
    with Topology() as topo:
        a = topo.netns()
        with WiretunPeer(a) as wt:
            wt.write_config(addresses=["10.9.0.1/24"], listen_port=51820, peers=[])
            wt.start(verbose=0)
            assert wt.proc is not None
            pid = wt.proc.pid
            time.sleep(0.5)
            before = rss_kib(pid)
            peak = before
            done = threading.Event()

            def watch() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, rss_kib(pid))
                    time.sleep(0.01)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            line = b"listen_port=51820\n"
            count = int(args.megabytes * 1024 * 1024) // len(line)
            chunk = line * 4096
            start = time.monotonic()
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(wt.socket_path)
                sock.sendall(b"set=1\n")
                for _ in range(count // 4096):
                    sock.sendall(chunk)
                sock.sendall(b"\n")
                reply = b""
                while not reply.endswith(b"\n\n"):
                    got = sock.recv(4096)
                    if not got:
                        break
                    reply += got
            seconds = time.monotonic() - start
            time.sleep(0.3)
            done.set()
            watcher.join()
            after = rss_kib(pid)
    print(f"set of {count // 4096 * 4096} lines ({args.megabytes:g} MiB): reply "
          f"{reply.strip().decode()!r} in {seconds:.2f} s")  # fmt: skip
    print(f"RSS before {before / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB "
          f"(+{(peak - before) / 1024:.1f}), after {after / 1024:.1f} MiB")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
