"""Real TUN devices in a namespace: exclusive create, close, read errors, foreign queues."""

from __future__ import annotations

import asyncio
import errno
import subprocess
import sys
import threading
import time

import pytest

from wiretun.lab.netns import NetNS, Topology, unique_name
from wiretun.tun import Tun, TunBroken, TunClosed, TunExists
from wiretun.tun.inline import InlineTun

ATTACH = """
import sys
from wiretun.tun.device import open_queue
fd = open_queue(sys.argv[1], exclusive=False, vnet_hdr=False)
print("attached", flush=True)
sys.stdin.read()
"""


def link_exists(ns: NetNS, name: str) -> bool:
    return ns.run("ip", "link", "show", name, check=False) != ""


@pytest.mark.root
def test_exclusive_create_refuses_existing_name(topology: Topology) -> None:
    ns = topology.netns()
    name = unique_name("wtx")
    with ns.enter(), Tun.open(name, queues=2, monitor_interval=None):
        with pytest.raises(TunExists) as info:
            Tun.open(name)
        assert isinstance(info.value.__cause__, OSError)
        assert info.value.__cause__.errno == errno.EBUSY
    # A device made by someone else (ip tuntap) is refused too.
    other = unique_name("wto")
    ns.run("ip", "tuntap", "add", "dev", other, "mode", "tun", "multi_queue")
    with ns.enter(), pytest.raises(TunExists):
        Tun.open(other)


@pytest.mark.root
def test_close_wakes_reader_and_removes_device_within_a_second(topology: Topology) -> None:
    ns = topology.netns()
    name = unique_name("wtc")
    with ns.enter():
        tun = Tun.open(name, queues=4, mtu=1300)
    assert "mtu 1300" in ns.run("ip", "link", "show", name)
    outcome: list[BaseException] = []

    def reader() -> None:
        try:
            tun.recv_batch()
        except TunClosed as e:
            outcome.append(e)

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.1)
    start = time.monotonic()
    tun.close()
    t.join(1)
    assert time.monotonic() - start < 1.0
    assert not t.is_alive() and len(outcome) == 1
    assert not link_exists(ns, name)
    assert not any(th.name.startswith(f"tun-{name}") for th in threading.enumerate())
    tun.close()


@pytest.mark.root
def test_device_deleted_under_us_surfaces_as_broken(topology: Topology) -> None:
    ns = topology.netns()
    name = unique_name("wtd")

    async def main(tun: Tun) -> None:
        waiter = asyncio.ensure_future(tun.recv_many())
        await asyncio.sleep(0.1)
        ns.run("ip", "link", "del", name)
        with pytest.raises(TunBroken) as info:
            await asyncio.wait_for(waiter, 5)
        assert isinstance(info.value.__cause__, OSError)

    with ns.enter(), Tun.open(name, monitor_interval=None) as tun:
        asyncio.run(main(tun))


@pytest.mark.root
def test_foreign_queue_is_detected_and_reported(
    topology: Topology, caplog: pytest.LogCaptureFixture
) -> None:
    ns = topology.netns()
    name = unique_name("wtf")
    with ns.enter():
        tun = Tun.open(name, queues=2, monitor_interval=0.05)
    try:
        assert tun.stats().foreign_queues == 0
        proc = ns.popen(
            sys.executable, "-c", ATTACH, name, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"attached\n"
            deadline = time.monotonic() + 5
            while "attached by another process" not in caplog.text:
                assert time.monotonic() < deadline, "the monitor did not report the foreign queue"
                time.sleep(0.05)
            stats = tun.stats()
            assert stats.foreign_queues == 1
            assert stats.foreign_seen == 1
        finally:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
        assert tun.stats().foreign_queues == 0
        assert tun.stats().foreign_seen == 1
    finally:
        tun.close()


ATTACH_ANY = """
import sys
from wiretun.tun.device import open_queue
from wiretun.tun.errors import TunError
for mq in (True, False):
    try:
        open_queue(sys.argv[1], exclusive=False, vnet_hdr=False, multi_queue=mq)
    except TunError as e:
        print(mq, e.__cause__.errno, flush=True)
    else:
        print(mq, "attached", flush=True)
"""


@pytest.mark.root
@pytest.mark.parametrize("inline", [False, True])
def test_single_queue_device_refuses_a_foreign_attach(topology: Topology, inline: bool) -> None:
    ns = topology.netns()
    name = unique_name("wts")
    with ns.enter():
        tun = InlineTun.open(name) if inline else Tun.open(name, queues=1, monitor_interval=None)
    try:
        out = ns.run(sys.executable, "-c", ATTACH_ANY, name)
        # The kernel says no either way: EINVAL for a multi-queue attach, EBUSY otherwise.
        assert out.split("\n")[:2] == [f"True {errno.EINVAL}", f"False {errno.EBUSY}"]
        assert tun.stats().foreign_seen == 0
    finally:
        tun.close()


@pytest.mark.root
def test_offload_open_sets_vnet_hdr(topology: Topology) -> None:
    ns = topology.netns()
    name = unique_name("wtg")
    with ns.enter():
        tun = Tun.open(name, queues=2, offload=True)
    with tun:
        details = ns.run("ip", "-d", "link", "show", name)
        assert "vnet_hdr on" in details
        assert "numqueues 2" in details
    assert not link_exists(ns, name)
