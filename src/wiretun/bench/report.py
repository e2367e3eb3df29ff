"""Writes a bench result as a rich table, results.json, results.md and throughput.png.

results.json (schema "wiretun-bench/1"):

    schema      "wiretun-bench/1"
    date        ISO 8601 UTC time the report was written
    command     the command line that produced it
    host        {kernel, machine, cpu_count, python}
    versions    {wiretun, iperf3, wireguard-go (first line of the binary's --version),
                 kernel-wg (the wireguard module's version), cryptography}: strings, null
                 when unknown
    settings    {quick, repeats, duration_s, udp_rate_mbps, ping_count, ping_interval_s,
                 offload, wireguard_go (--wireguard-go as given, null: Debian's from PATH),
                 paths: [names], workloads: [names]}
    namespaces  [the two namespace names used (removed by the time the file exists)]
    paths       [{name, status: "ok"|"failed"|"skipped", note, version, binary (absolute
                  path of the executable, for wireguard-go), queues, offload, peak_rss_mb}]
    rows        [{path, workload ("*" = the whole path, when it never ran), unit ("Gbit/s",
                  or "ms" for ping RTT), status, note, samples: [per-run values],
                  median, min, max, retransmits (median over runs, TCP sender side),
                  cpu_s_per_gb (CPU seconds of the path's tunnel processes, both ends,
                  per GB received), peak_rss_mb (largest VmHWM of one tunnel process),
                  ratio_vs_wireguard_go, ratio_vs_veth (median / baseline median, same
                  workload; for ping a ratio of RTTs), udp_lost_percent, udp_jitter_ms,
                  udp_out_of_order}]
    runs        [{path, workload, repeat, value, bytes, retransmits, cpu_seconds,
                  udp: {packets, lost_packets, lost_percent, jitter_ms, out_of_order} | null,
                  ping_sent, ping_received, error}]
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from rich.table import Table

from wiretun.bench.iperf import iperf3_version
from wiretun.bench.results import Row
from wiretun.bench.runner import BenchResult

SCHEMA = "wiretun-bench/1"
COLUMNS = (
    "path", "workload", "median Gbit/s", "min-max", "retransmits", "CPU s/GB",
    "peak RSS MB", "ratio vs wireguard-go", "ratio vs veth", "notes",
)  # fmt: skip


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:.3f}" if value < 10 else f"{value:.1f}"
    return f"{text} ms" if unit == "ms" else text


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def cells(row: Row) -> list[str]:
    """The row's table cells, in COLUMNS order."""
    span = "-"
    if row.min is not None and row.max is not None:
        span = f"{_num(row.min)}-{_num(row.max, row.unit)}"
    return [
        row.path,
        row.workload,
        _num(row.median, row.unit),  # Gbit/s is the column's unit; ms is spelled out
        span,
        "-" if row.retransmits is None else f"{row.retransmits:g}",
        "-" if row.cpu_s_per_gb is None else f"{row.cpu_s_per_gb:.2f}",
        "-" if row.peak_rss_mb is None else f"{row.peak_rss_mb:.1f}",
        _ratio(row.ratio_vs_wireguard_go),
        _ratio(row.ratio_vs_veth),
        # Process output may span lines; a table cell may not.
        " / ".join(line.strip() for line in (row.note or "").splitlines() if line.strip()),
    ]


def path_versions(result: BenchResult) -> str | None:
    """One line naming what the tunnels other than wiretun ran, e.g. "wireguard-go
    v0.0.20250522 (/opt/wg/wireguard-go)", for the table's header; None if nothing to say."""
    parts = []
    for p in result.paths:
        if (p.version is None and p.binary is None) or p.name.startswith("wiretun"):
            continue
        version = p.version or "version unknown"
        text = version if version.startswith(p.name) else f"{p.name}: {version}"
        parts.append(f"{text} ({p.binary})" if p.binary else text)
    return "; ".join(parts) or None


def rich_table(rows: list[Row], title: str = "wiretun bench", header: str | None = None) -> Table:
    table = Table(title=f"{title}\n{header}" if header else title)
    for name in COLUMNS:
        if name == "notes":
            table.add_column(name, max_width=60, overflow="ellipsis", no_wrap=True)
        else:
            table.add_column(name, justify="left" if name in {"path", "workload"} else "right")
    for row in rows:
        style = {"ok": None, "failed": "red", "skipped": "yellow"}[row.status]
        table.add_row(*cells(row), style=style)
    return table


def markdown_table(rows: list[Row]) -> str:
    def line(items: list[str]) -> str:
        return "| " + " | ".join(i.replace("|", "\\|") for i in items) + " |"

    out = [line(list(COLUMNS)), "|" + "---|" * len(COLUMNS)]
    out += [line(cells(row)) for row in rows]
    return "\n".join(out) + "\n"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def metadata(result: BenchResult, command: str) -> dict[str, Any]:
    plan = result.plan
    version = {p.name: p.version for p in result.paths}
    return {
        "schema": SCHEMA,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command,
        "host": {
            "kernel": platform.release(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
        },
        "versions": {
            "wiretun": _version("wiretun"),
            "iperf3": iperf3_version(),
            "wireguard-go": version.get("wireguard-go"),
            "kernel-wg": version.get("kernel-wg"),
            "cryptography": _version("cryptography"),
        },
        "settings": {
            "quick": plan.quick,
            "repeats": plan.repeats,
            "duration_s": plan.duration,
            "udp_rate_mbps": plan.udp_rate_mbps,
            "ping_count": plan.ping_count,
            "ping_interval_s": plan.ping_interval,
            "offload": plan.offload,
            "wireguard_go": plan.wireguard_go,
            "paths": list(plan.paths),
            "workloads": [w.name for w in plan.workloads],
        },
        "namespaces": list(result.namespaces),
    }


def to_json(result: BenchResult, rows: list[Row], meta: dict[str, Any]) -> dict[str, Any]:
    paths = []
    for p in result.paths:
        entry = dataclasses.asdict(p)
        rss = entry.pop("peak_rss_bytes")
        entry["peak_rss_mb"] = rss / 1e6 if rss is not None else None
        paths.append(entry)
    return {
        **meta,
        "paths": paths,
        "rows": [dataclasses.asdict(r) for r in rows],
        "runs": [dataclasses.asdict(r) for r in result.runs],
    }


def write_markdown(
    path: Path, rows: list[Row], meta: dict[str, Any], tunnels: str | None = None
) -> None:
    """results.md: a header line (command, host, versions; `tunnels` from path_versions)
    and the table."""
    host, versions = meta["host"], meta["versions"]
    header = (
        f"# wiretun bench, {meta['date']}\n\n"
        f"`{meta['command']}`: kernel {host['kernel']}, {host['cpu_count']} CPUs, "
        f"{versions['iperf3']}, {tunnels or 'no wireguard-go'}, "
        f"wiretun {versions['wiretun'] or '-'}; {meta['settings']['repeats']} repeat(s) of "
        f"{meta['settings']['duration_s']:g} s, runs interleaved. Ping rows give RTT in ms.\n\n"
    )
    path.write_text(header + markdown_table(rows))


def write_plot(path: Path, rows: list[Row]) -> None:
    """Grouped bars: one group per throughput workload, one bar per path, min-max error bars."""
    import matplotlib  # noqa: PLC0415 (optional dependency, only needed here)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    bars = [r for r in rows if r.status == "ok" and r.unit == "Gbit/s" and r.median is not None]
    workloads = list(dict.fromkeys(r.workload for r in bars))
    paths = list(dict.fromkeys(r.path for r in bars))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(workloads) * max(1, len(paths)) / 2), 4.5))
    width = 0.8 / max(1, len(paths))
    for i, name in enumerate(paths):
        xs, heights, low, high = [], [], [], []
        for j, workload in enumerate(workloads):
            row = next((r for r in bars if r.path == name and r.workload == workload), None)
            if row is None or row.median is None or row.min is None or row.max is None:
                continue
            xs.append(j - 0.4 + width * (i + 0.5))
            heights.append(row.median)
            low.append(row.median - row.min)
            high.append(row.max - row.median)
        drawn = ax.bar(xs, heights, width, yerr=[low, high], capsize=3, label=name)
        ax.bar_label(drawn, fmt="%.2f", fontsize=7, padding=2)
    ax.set_xticks(range(len(workloads)), workloads)
    ax.set_ylabel("Gbit/s (median; error bars: min-max)")
    ax.set_title("wiretun bench: throughput per path")
    if paths:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(
    result: BenchResult, rows: list[Row], out_dir: Path, command: str
) -> tuple[list[Path], list[str]]:
    """Write results.json, results.md and throughput.png; return (files, problems)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = metadata(result, command)
    files = [out_dir / "results.json", out_dir / "results.md"]
    files[0].write_text(json.dumps(to_json(result, rows, meta), indent=2) + "\n")
    write_markdown(files[1], rows, meta, path_versions(result))
    problems = []
    try:
        write_plot(out_dir / "throughput.png", rows)
        files.append(out_dir / "throughput.png")
    except ImportError:
        problems.append(
            "throughput.png not written: matplotlib missing (pip install 'wiretun[bench]')"
        )
    return files, problems
