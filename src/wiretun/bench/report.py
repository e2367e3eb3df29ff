"""Writes a bench result as terminal tables (80 columns), results.json, results.md and
throughput.png.

results.json (schema "wiretun-bench/1"):

    schema      "wiretun-bench/1"
    date        ISO 8601 UTC time the report was written
    command     the command line that produced it
    host        {kernel, machine, cpu_count, python, load_before, load_after (the load
                 average [1, 5, 15 min] as the run began and ended; null if unknown)}
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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wiretun.bench.iperf import iperf3_version
from wiretun.bench.results import Row
from wiretun.bench.runner import BenchResult

if TYPE_CHECKING:  # rich is the bench extra's: imported where the terminal report is drawn
    from rich.console import Group

SCHEMA = "wiretun-bench/1"
# Terminal and results.md: throughput rows and ping rows in two tables, notes below them.
THROUGHPUT_COLUMNS = (
    "path", "workload", "Gbit/s", "min-max", "retr", "CPU s/GB", "RSS MB", "x wg-go", "x veth",
)  # fmt: skip
PING_COLUMNS = ("path", "RTT ms", "min-max", "x wg-go", "x veth", "replies")
TWO_LINE_HEADERS = frozenset({"CPU s/GB", "RSS MB", "x wg-go", "x veth"})
LEGEND = (
    "Gbit/s: median over the runs (iperf3, received); min-max: the runs' range.",
    "retr: TCP retransmits, median over the runs (iperf3's sender side).",
    "CPU s/GB: CPU seconds of the path's tunnel processes, both ends, per GB carried.",
    "RSS MB: the largest peak resident memory (VmHWM) of one tunnel process.",
    "x wg-go, x veth: this median / that path's median, same workload; for throughput",
    "  above 1 is faster than it, for ping (a ratio of RTTs) below 1 is faster.",
)
BUSY_LOAD = 0.5  # load average per CPU above which the host counts as busy


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _short(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _span(row: Row, digits: Callable[[float | None], str] = _short) -> str:
    if row.min is None or row.max is None:
        return "-"
    return f"{digits(row.min)}-{digits(row.max)}"


def _note(row: Row) -> str | None:
    # Process output may span lines; a note line may not.
    lines = [line.strip() for line in (row.note or "").splitlines() if line.strip()]
    return " / ".join(lines) or None


def is_ping(row: Row) -> bool:
    return row.unit == "ms"


def throughput_cells(row: Row) -> list[str]:
    return [
        row.path,
        row.workload,
        _num(row.median),
        _span(row),
        "-" if row.retransmits is None else f"{row.retransmits:g}",
        "-" if row.cpu_s_per_gb is None else f"{row.cpu_s_per_gb:.2f}",
        "-" if row.peak_rss_mb is None else f"{row.peak_rss_mb:.1f}",
        _ratio(row.ratio_vs_wireguard_go),
        _ratio(row.ratio_vs_veth),
    ]


def ping_cells(row: Row) -> list[str]:
    replies = row.note if row.note and row.note.endswith(" replies") else "-"
    return [
        row.path,
        _num(row.median),
        _span(row, _num),  # RTTs below a millisecond: three decimals
        _ratio(row.ratio_vs_wireguard_go),
        _ratio(row.ratio_vs_veth),
        replies.removesuffix(" replies"),
    ]


def notes(rows: list[Row]) -> list[str]:
    """One line per row with something to say (failures, UDP loss, partial runs); a ping
    row's "N/M replies" is its own column."""
    out = []
    for row in rows:
        text = _note(row)
        if text is None or (is_ping(row) and text.endswith(" replies") and "/" in text):
            continue
        out.append(f"{row.path} {row.workload}: {text}")
    return out


def busy_warning(load: tuple[float, float, float] | None, cpus: int | None) -> str | None:
    """A warning when the host was busy as the run began (1-minute load per CPU)."""
    if load is None or not cpus or load[0] <= BUSY_LOAD * cpus:
        return None
    return (
        f"warning: the host was busy (load {load[0]:.2f} on {cpus} CPUs as the run began): "
        "other work shared the cores; compare only runs made side by side"
    )


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


def rich_tables(
    rows: list[Row],
    title: str = "wiretun bench",
    header: str | None = None,
    warning: str | None = None,
) -> Group:
    """The terminal report, within 80 columns: the throughput table, the ping table, the
    notes, the column legend and the busy-host warning."""
    from rich import box  # noqa: PLC0415
    from rich.console import Group  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    def table(
        name: str, columns: tuple[str, ...], items: list[list[str]], styles: list[str | None]
    ) -> Table:
        # One space between columns (the box's divider), none at the edges: 80 columns.
        t = Table(title=name, box=box.SIMPLE_HEAD, padding=0, show_edge=False,
                  title_justify="left")  # fmt: skip
        for column in columns:
            left = column in {"path", "workload", "replies"}
            # Two-line headers ("CPU" over "s/GB") keep the columns as narrow as their figures.
            head = column.replace(" ", "\n", 1) if column in TWO_LINE_HEADERS else column
            t.add_column(head, justify="left" if left else "right", no_wrap=True)
        for cells_, style in zip(items, styles, strict=True):
            t.add_row(*cells_, style=style)
        return t

    style = {"ok": None, "failed": "red", "skipped": "yellow"}
    flow = [r for r in rows if not is_ping(r)]
    ping = [r for r in rows if is_ping(r)]
    parts: list[object] = [Text(title if header is None else f"{title}: {header}", style="bold")]
    if warning is not None:
        parts.append(Text(warning, style="bold red"))
    if flow:
        parts.append(Text(""))
        parts.append(table("throughput", THROUGHPUT_COLUMNS, [throughput_cells(r) for r in flow],
                           [style[r.status] for r in flow]))  # fmt: skip
    if ping:
        parts.append(Text(""))
        parts.append(table("ping (round-trip time)", PING_COLUMNS, [ping_cells(r) for r in ping],
                           [style[r.status] for r in ping]))  # fmt: skip
    if notes(rows):
        parts.append(Text(""))
    for line in notes(rows):
        parts.append(Text(line, overflow="fold"))
    parts.append(Text(""))
    parts.append(Text("\n".join(LEGEND), style="dim"))
    return Group(*parts)  # type: ignore[arg-type]


def markdown_tables(rows: list[Row]) -> str:
    """results.md's tables: throughput, ping, then the notes and the legend."""

    def line(items: list[str]) -> str:
        return "| " + " | ".join(i.replace("|", "\\|") for i in items) + " |"

    def table(columns: tuple[str, ...], items: list[list[str]]) -> list[str]:
        return [line(list(columns)), "|" + "---|" * len(columns), *(line(c) for c in items)]

    out: list[str] = []
    flow = [throughput_cells(r) for r in rows if not is_ping(r)]
    ping = [ping_cells(r) for r in rows if is_ping(r)]
    if flow:
        out += ["Throughput:", "", *table(THROUGHPUT_COLUMNS, flow), ""]
    if ping:
        out += ["Ping (round-trip time):", "", *table(PING_COLUMNS, ping), ""]
    out += [f"- {n}" for n in notes(rows)]
    if notes(rows):
        out.append("")
    out += [f"{text.strip()}  " for text in LEGEND]
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
            "load_before": None if result.load_before is None else list(result.load_before),
            "load_after": None if result.load_after is None else list(result.load_after),
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
        f"{meta['settings']['duration_s']:g} s, runs interleaved{_load_text(host)}.\n\n"
    )
    warning = busy_warning(_load_of(host), host["cpu_count"])
    if warning is not None:
        header += f"**{warning}**\n\n"
    path.write_text(header + markdown_tables(rows))


def _load_of(host: dict[str, Any]) -> tuple[float, float, float] | None:
    load = host.get("load_before")
    return None if load is None else (load[0], load[1], load[2])


def _load_text(host: dict[str, Any]) -> str:
    before, after = host.get("load_before"), host.get("load_after")
    if before is None:
        return ""
    text = f"; host load {before[0]:.2f} at the start"
    return text + (f", {after[0]:.2f} at the end" if after is not None else "")


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
