"""Turns run records into table rows: medians, min-max, CPU per GB and ratios to baselines."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from wiretun.bench.plan import WORKLOADS
from wiretun.bench.runner import BenchResult, RunRecord, Status

WIREGUARD_GO = "wireguard-go"
VETH = "veth"
ALL_WORKLOADS = "*"  # the workload of a row that stands for a whole path (skipped, failed)


@dataclass
class Row:
    path: str
    workload: str
    unit: str
    status: Status
    note: str | None = None
    samples: tuple[float, ...] = ()
    median: float | None = None
    min: float | None = None
    max: float | None = None
    retransmits: float | None = None  # median over runs, sender side
    cpu_s_per_gb: float | None = None
    peak_rss_mb: float | None = None
    ratio_vs_wireguard_go: float | None = None
    ratio_vs_veth: float | None = None
    udp_lost_percent: float | None = None
    udp_jitter_ms: float | None = None
    udp_out_of_order: float | None = None


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _notes(row: Row, ok: list[RunRecord], failed: list[RunRecord]) -> str | None:
    notes = []
    if row.udp_lost_percent is not None:
        notes.append(
            f"loss {row.udp_lost_percent:.2f}%, jitter {row.udp_jitter_ms or 0:.3f} ms, "
            f"out-of-order {row.udp_out_of_order or 0:g}"
        )
    pings = [r for r in ok if r.ping_sent]
    if pings:
        received = sum(r.ping_received or 0 for r in pings)
        notes.append(f"{received}/{sum(r.ping_sent or 0 for r in pings)} replies")
    if failed:
        notes.append(f"{len(failed)}/{len(ok) + len(failed)} runs failed: {failed[0].error}")
    return "; ".join(notes) or None


def _row(path: str, workload: str, records: list[RunRecord], peak_rss: int | None) -> Row:
    unit = WORKLOADS[workload].unit if workload in WORKLOADS else "Gbit/s"
    ok = [r for r in records if r.error is None and r.value is not None]
    failed = [r for r in records if r not in ok]
    if not ok:
        return Row(path, workload, unit, "failed", f"failed: {failed[0].error}" if failed else None)
    values = [r.value for r in ok if r.value is not None]
    row = Row(path, workload, unit, "ok", samples=tuple(values))
    row.median, row.min, row.max = statistics.median(values), min(values), max(values)
    row.retransmits = _median([r.retransmits for r in ok if r.retransmits is not None])
    cpu = [(r.cpu_seconds, r.bytes) for r in ok if r.cpu_seconds is not None and r.bytes]
    if cpu:
        row.cpu_s_per_gb = sum(c for c, _ in cpu) / (sum(b for _, b in cpu) / 1e9)
    row.peak_rss_mb = peak_rss / 1e6 if peak_rss is not None else None
    udp = [r.udp for r in ok if r.udp is not None]
    if udp:
        row.udp_lost_percent = _median([u.lost_percent for u in udp])
        row.udp_jitter_ms = _median([u.jitter_ms for u in udp])
        row.udp_out_of_order = _median([float(u.out_of_order) for u in udp])
    row.note = _notes(row, ok, failed)
    return row


def _ratio(row: Row, base: Row | None) -> float | None:
    if base is None or base.median is None or not base.median or row.median is None:
        return None
    return row.median / base.median


def aggregate(result: BenchResult) -> list[Row]:
    """One row per (path, workload) in plan order; one `*` row for a path that never ran."""
    rows: list[Row] = []
    for status in result.paths:
        records = [r for r in result.runs if r.path == status.name]
        if not records:
            rows.append(Row(status.name, ALL_WORKLOADS, "", status.status, status.note))
            continue
        for workload in result.plan.workloads:
            mine = [r for r in records if r.workload == workload.name]
            if mine:
                rows.append(_row(status.name, workload.name, mine, status.peak_rss_bytes))
            else:  # the path broke before this workload's turn
                rows.append(Row(status.name, workload.name, workload.unit, "failed", status.note))
    by_key = {(r.path, r.workload): r for r in rows if r.status == "ok"}
    for row in rows:
        row.ratio_vs_wireguard_go = _ratio(row, by_key.get((WIREGUARD_GO, row.workload)))
        row.ratio_vs_veth = _ratio(row, by_key.get((VETH, row.workload)))
    return rows
