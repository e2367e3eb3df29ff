"""Runs a plan: brings the paths up, runs every workload interleaved, records each run."""

from __future__ import annotations

import os
import random
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from wiretun.bench.iperf import IperfError, UdpStats, run_iperf
from wiretun.bench.paths import PathError, PathHandle, PathKind, WiretunPath
from wiretun.bench.ping import ping
from wiretun.bench.plan import Plan, Workload
from wiretun.bench.sampling import ProcessGoneError, max_peak_rss_bytes, total_cpu_seconds
from wiretun.bench.topology import BenchTopology, bench_topology, deferred_signals

Status = Literal["ok", "failed", "skipped"]
# step description, steps done, steps in total
Progress = Callable[[str, int, int], None]

# What a path or a run may fail with; anything else is a bug and propagates.
_RUN_ERRORS = (
    PathError,
    IperfError,
    ProcessGoneError,
    RuntimeError,
    OSError,
    subprocess.SubprocessError,
)


@dataclass
class PathStatus:
    name: str
    status: Status = "ok"
    note: str | None = None
    version: str | None = None
    binary: str | None = None  # the executable that carried it, where the user may choose one
    queues: int | None = None
    offload: bool | None = None
    peak_rss_bytes: int | None = None


@dataclass
class RunRecord:
    path: str
    workload: str
    repeat: int
    value: float | None = None  # Gbit/s received, or median RTT in ms for ping
    bytes: int | None = None
    retransmits: int | None = None
    cpu_seconds: float | None = None  # all tunnel processes of the path, both ends
    udp: UdpStats | None = None
    ping_sent: int | None = None
    ping_received: int | None = None
    error: str | None = None


@dataclass
class BenchResult:
    plan: Plan
    namespaces: tuple[str, str]
    paths: list[PathStatus] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)
    # The host's load average (1, 5, 15 min) as the run began and ended: a busy machine
    # (other work on the cores) makes figures that do not compare with a quiet run's.
    load_before: tuple[float, float, float] | None = None
    load_after: tuple[float, float, float] | None = None


def _one_run(
    plan: Plan,
    topo: BenchTopology,
    handle: PathHandle,
    workload: Workload,
    *,
    repeat: int,
    port: int,
) -> RunRecord:
    record = RunRecord(handle.name, workload.name, repeat)
    try:
        cpu_before = total_cpu_seconds(handle.pids)
        if workload.kind == "ping":
            result = ping(topo.a, handle.target, plan.ping_count, plan.ping_interval)
            record.value = result.median_ms
            record.ping_sent, record.ping_received = result.sent, result.received
            if result.received == 0:
                record.error = f"no ping reply from {handle.target}"
        else:
            res = run_iperf(
                topo.b, topo.a, handle.target, port=port, workload=workload,
                duration=plan.duration, udp_rate_mbps=plan.udp_rate_mbps,
            )  # fmt: skip
            record.value, record.bytes = res.gbps, res.bytes
            record.retransmits, record.udp = res.retransmits, res.udp
        if handle.pids:
            record.cpu_seconds = total_cpu_seconds(handle.pids) - cpu_before
    except _RUN_ERRORS as e:
        record.value, record.error = None, str(e)
    return record


def run_bench(
    plan: Plan,
    kinds: list[PathKind],
    progress: Progress | None = None,
    ns_prefix: str | None = None,
) -> BenchResult:
    """Measure `plan` over `kinds`. A path that fails to come up, or breaks, gets a failed
    status and its runs are skipped; the other paths carry on."""
    steps = plan.steps()
    total = len(kinds) + len(steps)
    done = 0

    def tick(text: str) -> None:
        nonlocal done
        if progress is not None:
            progress(text, done, total)
        done += 1

    statuses = {k.name: PathStatus(k.name, version=k.version(), binary=k.binary()) for k in kinds}
    for kind in kinds:
        if isinstance(kind, WiretunPath):
            statuses[kind.name].queues, statuses[kind.name].offload = kind.queues, kind.offload
    handles: dict[str, tuple[PathKind, PathHandle]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="wiretun-bench-") as tmp,
        bench_topology(ns_prefix) as topo,
    ):
        result = BenchResult(plan, topo.namespaces, list(statuses.values()))
        result.load_before = os.getloadavg()
        try:
            for slot, kind in enumerate(kinds, start=1):
                tick(f"setting up {kind.name}")
                status = statuses[kind.name]
                if reason := kind.unavailable():
                    status.status, status.note = "skipped", f"skipped: {reason}"
                    continue
                try:
                    handles[kind.name] = (kind, kind.setup(topo, slot, Path(tmp)))
                except _RUN_ERRORS as e:
                    status.status, status.note = "failed", f"failed: {e}"
            port = random.randrange(20000, 40000)
            for repeat, workload, name in steps:
                tick(f"{name} {workload.name} ({repeat + 1}/{plan.repeats})")
                if name not in handles:
                    continue
                kind, handle = handles[name]
                port += 1
                record = _one_run(plan, topo, handle, workload, repeat=repeat, port=port)
                result.runs.append(record)
                if broken := handle.exited():
                    statuses[name].status, statuses[name].note = "failed", f"failed: {broken}"
                    del handles[name]
                    with deferred_signals():
                        kind.teardown(handle)
                    continue
                try:
                    peak = max_peak_rss_bytes(handle.pids)
                except ProcessGoneError:
                    peak = None
                if peak is not None:
                    statuses[name].peak_rss_bytes = max(peak, statuses[name].peak_rss_bytes or 0)
            if progress is not None:
                progress("done", total, total)
            result.load_after = os.getloadavg()
        finally:
            with deferred_signals():
                for kind, handle in handles.values():
                    kind.teardown(handle)
    return result
