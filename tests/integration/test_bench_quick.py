"""Root tests of `wiretun bench`: a real quick run, failing paths, wireguard-go (Debian's or
one chosen with --wireguard-go), kernel WireGuard or its skip, and SIGTERM."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from wiretun.bench.paths import UAPI_DIR, KernelWgPath, VethPath, WireguardGoPath, WiretunPath
from wiretun.bench.ping import ping
from wiretun.bench.plan import make_plan
from wiretun.bench.results import ALL_WORKLOADS, aggregate
from wiretun.bench.runner import run_bench
from wiretun.bench.topology import bench_topology
from wiretun.lab.netns import NetNS

pytestmark = pytest.mark.root


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def test_quick_only_veth_writes_reports_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "wiretun", "bench", "--quick", "--only", "veth", "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md", "throughput.png"]
    data = json.loads((out / "results.json").read_text())
    used = data["namespaces"]
    assert len(used) == 2
    assert not set(used) & namespaces()
    rows = {(r["path"], r["workload"]): r for r in data["rows"]}
    assert set(rows) == {("veth", "tcp"), ("veth", "tcp-rev"), ("veth", "ping")}
    assert all(r["status"] == "ok" for r in rows.values())
    assert rows["veth", "tcp"]["median"] > 0.1  # Gbit/s: traffic really crossed the veth pair
    assert rows["veth", "ping"]["note"] == "10/10 replies"
    assert "| veth | tcp |" in (out / "results.md").read_text()
    assert "veth" in proc.stdout


def tun_names(ns: NetNS) -> list[str]:
    out = ns.run("ip", "-o", "link", "show", "type", "tun")
    return [line.split(":")[1].strip() for line in out.splitlines() if line.strip()]


class CrashingWiretun(WiretunPath):
    """A wiretun kind whose process dies at once, as `wiretun up` does before it exists."""

    def command(self, config: Path, ifname: str) -> list[str]:
        return [sys.executable, "-c", f"import sys; sys.exit('cannot bring up {ifname}')"]


def test_a_failing_path_is_a_row_not_an_abort() -> None:
    plan = make_plan(quick=True, only="veth,wiretun-q2", workloads="ping")
    kinds = [VethPath(), CrashingWiretun(2, offload=True, name="wiretun-q2")]
    result = run_bench(plan, kinds)
    assert not set(result.namespaces) & namespaces()
    rows = {(r.path, r.workload): r for r in aggregate(result)}
    assert rows["veth", "ping"].status == "ok"
    failed = rows["wiretun-q2", ALL_WORKLOADS]
    assert failed.status == "failed"
    assert failed.note is not None
    assert failed.note.startswith("failed: wiretun up exited with 1")
    assert "cannot bring up wtt" in failed.note


@pytest.mark.skipif(shutil.which("wireguard-go") is None, reason="wireguard-go not installed")
def test_wireguard_go_path_carries_traffic_and_is_torn_down() -> None:
    kind = WireguardGoPath()
    with tempfile.TemporaryDirectory() as tmp, bench_topology() as topo:
        handle = kind.setup(topo, 1, Path(tmp))
        try:
            assert len(handle.pids) == 2
            assert handle.exited() is None
            result = ping(topo.a, handle.target, 3, interval=0.05)
            assert result.received == 3
            ifnames = [tun_names(ns) for ns in (topo.a, topo.b)]
            assert [len(names) for names in ifnames] == [1, 1]
            sockets = [UAPI_DIR / f"{names[0]}.sock" for names in ifnames]
            assert all(sock.exists() for sock in sockets)
        finally:
            kind.teardown(handle)
        assert all(p.poll() is not None for p in handle.processes)
        assert not any(sock.exists() for sock in sockets)
        assert tun_names(topo.a) == tun_names(topo.b) == []


DEBIAN_WIREGUARD_GO = "/usr/bin/wireguard-go"
needs_debian_wireguard_go = pytest.mark.skipif(
    not Path(DEBIAN_WIREGUARD_GO).exists(), reason=f"{DEBIAN_WIREGUARD_GO} not installed"
)


@needs_debian_wireguard_go
def test_quick_with_chosen_wireguard_go_records_its_version(tmp_path: Path) -> None:
    version = subprocess.run(
        [DEBIAN_WIREGUARD_GO, "--version"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[0]
    assert version.startswith("wireguard-go v")
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable, "-m", "wiretun", "bench", "--quick", "--only", "wireguard-go",
            "--wireguard-go", DEBIAN_WIREGUARD_GO, "--out", str(out),
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"{version} ({DEBIAN_WIREGUARD_GO})" in proc.stdout  # the table's header line
    data = json.loads((out / "results.json").read_text())
    assert data["versions"]["wireguard-go"] == version
    assert data["settings"]["wireguard_go"] == DEBIAN_WIREGUARD_GO
    assert "--wireguard-go /usr/bin/wireguard-go" in data["command"]
    [path] = data["paths"]
    assert (path["name"], path["status"], path["version"], path["binary"]) == (
        "wireguard-go", "ok", version, DEBIAN_WIREGUARD_GO,
    )  # fmt: skip
    assert {r["status"] for r in data["rows"]} == {"ok"}
    assert f"{version} ({DEBIAN_WIREGUARD_GO})" in (out / "results.md").read_text()


@needs_debian_wireguard_go
def test_the_chosen_wireguard_go_is_the_one_that_runs(tmp_path: Path) -> None:
    # A wrapper with its own version that leaves a mark when it starts a tunnel, then becomes
    # Debian's wireguard-go (exec keeps the pid, so stopping it stops wireguard-go).
    wrapper = tmp_path / "my-wireguard-go"
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo "wireguard-go v9.9.9-test"; exit 0; fi\n'
        f'echo "$@" >> {tmp_path}/started\n'
        f'exec {DEBIAN_WIREGUARD_GO} "$@"\n'
    )
    wrapper.chmod(0o755)
    kind = WireguardGoPath(str(wrapper))
    assert kind.version() == "wireguard-go v9.9.9-test"
    with tempfile.TemporaryDirectory() as tmp, bench_topology() as topo:
        handle = kind.setup(topo, 1, Path(tmp))
        try:
            assert ping(topo.a, handle.target, 2, interval=0.05).received == 2
        finally:
            kind.teardown(handle)
    started = (tmp_path / "started").read_text().splitlines()
    assert len(started) == 2
    assert all(line.startswith("-f wtg") for line in started)


def test_kernel_wg_runs_or_is_a_skipped_row_with_the_reason() -> None:
    plan = make_plan(quick=True, only="kernel-wg", workloads="ping")
    result = run_bench(plan, [KernelWgPath()])
    assert not set(result.namespaces) & namespaces()
    rows = aggregate(result)
    if KernelWgPath().unavailable() is None:  # the machine has the wireguard module
        assert [(r.path, r.workload, r.status) for r in rows] == [("kernel-wg", "ping", "ok")]
    else:
        [row] = rows
        assert (row.path, row.workload, row.status) == ("kernel-wg", ALL_WORKLOADS, "skipped")
        assert row.note is not None
        assert row.note.startswith("skipped: ")
        assert "wireguard" in row.note
    assert not {n for n in namespaces() if n.startswith("wtk-")}  # the probe's namespace is gone


def test_sigterm_cleans_up(tmp_path: Path) -> None:
    before = {n for n in namespaces() if n.startswith("wtb")}
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "wiretun", "bench", "--only", "veth", "--workloads", "tcp",
            "--duration", "30", "--repeats", "1", "--out", str(tmp_path),
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        seen: set[str] = set()
        deadline = time.monotonic() + 20
        while len(seen) < 2 and time.monotonic() < deadline:
            seen = {n for n in namespaces() if n.startswith("wtb")} - before
            time.sleep(0.1)
        assert len(seen) == 2
        time.sleep(1.5)  # into the iperf3 run
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130
    assert "interrupted" in err
    assert "Traceback" not in err
    assert not seen & namespaces()
    assert not (tmp_path / "results.json").exists()
