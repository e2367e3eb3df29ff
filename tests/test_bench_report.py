"""Tests for wiretun.bench.results and wiretun.bench.report on stored iperf3 samples."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from wiretun.bench.iperf import parse_result
from wiretun.bench.plan import make_plan
from wiretun.bench.report import (
    LEGEND,
    PING_COLUMNS,
    SCHEMA,
    THROUGHPUT_COLUMNS,
    busy_warning,
    markdown_tables,
    path_versions,
    rich_tables,
    write_reports,
)
from wiretun.bench.results import ALL_WORKLOADS, Row, aggregate
from wiretun.bench.runner import BenchResult, PathStatus, RunRecord

DATA = Path(__file__).parent / "data" / "iperf3"


def record(
    path: str, workload: str, sample: str, repeat: int = 0, cpu: float | None = None
) -> RunRecord:
    res = parse_result((DATA / f"{sample}.json").read_text())
    return RunRecord(
        path, workload, repeat, value=res.gbps, bytes=res.bytes,
        retransmits=res.retransmits, cpu_seconds=cpu, udp=res.udp,
    )  # fmt: skip


def bench_result() -> BenchResult:
    plan = make_plan(
        quick=False, only="veth,wireguard-go,wiretun-q1,wiretun-q2", workloads="tcp,udp,ping",
        repeats=2,
    )  # fmt: skip
    paths = [
        PathStatus("veth"),
        PathStatus("wireguard-go", version="wireguard-go v0.0.20220316", peak_rss_bytes=37_000_000),
        PathStatus(
            "wiretun-q1", "failed", "failed: wiretun up exited with 2: usage:\nwiretun: error"
        ),
        PathStatus("wiretun-q2", "skipped", "skipped: TUN unavailable"),
    ]
    runs = [
        record("veth", "tcp", "veth-tcp"),
        record("wireguard-go", "tcp", "wireguard-go-tcp", cpu=2.0),
        record("veth", "udp", "veth-udp"),
        record("wireguard-go", "udp", "wireguard-go-udp", cpu=1.0),
        RunRecord("veth", "ping", 0, value=0.05, ping_sent=10, ping_received=10),
        RunRecord("wireguard-go", "ping", 0, value=0.20, ping_sent=10, ping_received=9),
        # Second round: wireguard-go from the reverse sample, one failed veth run.
        RunRecord("veth", "tcp", 1, error="iperf3: the server is busy"),
        record("wireguard-go", "tcp", "wireguard-go-tcp-rev", repeat=1, cpu=2.5),
    ]
    return BenchResult(plan, ("wtb-a", "wtb-b"), paths, runs)


def rows_by_key(rows: list[Row]) -> dict[tuple[str, str], Row]:
    return {(r.path, r.workload): r for r in rows}


def test_medians_min_max_and_retransmits() -> None:
    rows = rows_by_key(aggregate(bench_result()))
    wg_tcp = rows["wireguard-go", "tcp"]
    fwd = parse_result((DATA / "wireguard-go-tcp.json").read_text())
    rev = parse_result((DATA / "wireguard-go-tcp-rev.json").read_text())
    assert wg_tcp.status == "ok"
    assert wg_tcp.samples == (fwd.gbps, rev.gbps)
    assert wg_tcp.median == pytest.approx((fwd.gbps + rev.gbps) / 2)
    assert (wg_tcp.min, wg_tcp.max) == (min(fwd.gbps, rev.gbps), max(fwd.gbps, rev.gbps))
    assert fwd.retransmits is not None and rev.retransmits is not None
    assert wg_tcp.retransmits == pytest.approx((fwd.retransmits + rev.retransmits) / 2)


def test_cpu_seconds_per_gb_and_peak_rss() -> None:
    rows = rows_by_key(aggregate(bench_result()))
    fwd = parse_result((DATA / "wireguard-go-tcp.json").read_text())
    rev = parse_result((DATA / "wireguard-go-tcp-rev.json").read_text())
    expected = (2.0 + 2.5) / ((fwd.bytes + rev.bytes) / 1e9)
    assert rows["wireguard-go", "tcp"].cpu_s_per_gb == pytest.approx(expected)
    assert rows["wireguard-go", "tcp"].peak_rss_mb == pytest.approx(37.0)
    assert rows["veth", "tcp"].cpu_s_per_gb is None


def test_ratios_against_both_baselines() -> None:
    rows = rows_by_key(aggregate(bench_result()))
    veth, wg = rows["veth", "tcp"], rows["wireguard-go", "tcp"]
    assert veth.median is not None and wg.median is not None
    assert wg.ratio_vs_veth == pytest.approx(wg.median / veth.median)
    assert veth.ratio_vs_wireguard_go == pytest.approx(veth.median / wg.median)
    assert wg.ratio_vs_wireguard_go == pytest.approx(1.0)
    assert rows["wireguard-go", "ping"].ratio_vs_veth == pytest.approx(4.0)


def test_partial_failure_is_noted_and_whole_failures_get_one_row() -> None:
    rows = aggregate(bench_result())
    by_key = rows_by_key(rows)
    veth_tcp = by_key["veth", "tcp"]
    assert veth_tcp.status == "ok"
    assert veth_tcp.samples == (parse_result((DATA / "veth-tcp.json").read_text()).gbps,)
    assert (
        veth_tcp.note is not None and "1/2 runs failed: iperf3: the server is busy" in veth_tcp.note
    )
    failed = by_key["wiretun-q1", ALL_WORKLOADS]
    assert failed.status == "failed"
    assert failed.ratio_vs_veth is None
    assert by_key["wiretun-q2", ALL_WORKLOADS].status == "skipped"
    assert [r.path for r in rows].count("wiretun-q1") == 1


def test_udp_and_ping_notes() -> None:
    rows = rows_by_key(aggregate(bench_result()))
    udp = rows["wireguard-go", "udp"]
    jitter = parse_result((DATA / "wireguard-go-udp.json").read_text()).udp
    assert jitter is not None
    assert udp.udp_lost_percent == pytest.approx(24.177497852848553)
    assert udp.udp_jitter_ms == pytest.approx(jitter.jitter_ms)
    assert udp.note == f"loss 24.18%, jitter {jitter.jitter_ms:.3f} ms, out-of-order 0"
    assert rows["wireguard-go", "ping"].note == "9/10 replies"
    assert rows["wireguard-go", "ping"].unit == "ms"


def test_markdown_tables_shape() -> None:
    rows = aggregate(bench_result())
    text = markdown_tables(rows)
    lines = text.splitlines()
    flow_head = lines.index("| " + " | ".join(THROUGHPUT_COLUMNS) + " |")
    ping_head = lines.index("| " + " | ".join(PING_COLUMNS) + " |")
    assert flow_head < ping_head  # throughput first, ping apart
    flow = [ln for ln in lines[flow_head + 2 : ping_head] if ln.startswith("| ")]
    ping = [ln for ln in lines[ping_head + 2 :] if ln.startswith("| ")]
    assert len(flow) + len(ping) == len(rows)
    assert {ln.count(" | ") for ln in flow} == {len(THROUGHPUT_COLUMNS) - 1}
    assert {ln.count(" | ") for ln in ping} == {len(PING_COLUMNS) - 1}
    assert "| veth | 0.050 | 0.050-0.050 | 0.25 | 1.00 | 10/10 |" in ping
    assert "| wireguard-go | 0.200 | 0.200-0.200 | 1.00 | 4.00 | 9/10 |" in ping
    # Notes below the tables, one line each (multi-line output flattened); the legend.
    assert "- wiretun-q1 *: failed: wiretun up exited with 2: usage: / wiretun: error" in lines
    assert any(ln.startswith("- wireguard-go udp: loss 24.18%") for ln in lines)
    assert (
        "CPU s/GB: CPU seconds of the path's tunnel processes, both ends, per GB carried." in text
    )
    assert "above 1 is faster than it, for ping (a ratio of RTTs) below 1 is faster." in text


def rendered(table: object, width: int = 250) -> str:
    out = io.StringIO()
    Console(width=width, file=out).print(table)
    return out.getvalue()


def test_the_terminal_report_fits_80_columns_whole() -> None:
    result = bench_result()
    rows = aggregate(result)
    # The longest path name the bench has, with the widest figures it prints.
    wide = dataclasses.replace(
        rows_by_key(rows)["wireguard-go", "tcp"], path="wiretun-q1-threads", workload="tcp-rev",
        median=12.3, min=10.8, max=15.8, retransmits=3765, cpu_s_per_gb=26.13, peak_rss_mb=357.5,
        ratio_vs_wireguard_go=11.89, ratio_vs_veth=0.05,
    )  # fmt: skip
    rows.append(wide)
    text = rendered(rich_tables(rows, header=path_versions(result)), width=80)
    lines = text.splitlines()
    assert max(len(ln) for ln in lines) <= 80
    assert "…" not in text  # nothing cut short
    assert any(
        ln.split() == ["wiretun-q1-threads", "tcp-rev", "12.3", "10.8-15.8", "3765", "26.13",
                       "357.5", "11.89", "0.05"]
        for ln in lines
    )  # fmt: skip
    for head in ("Gbit/s", "CPU", "s/GB", "RSS", "MB", "wg-go", "veth", "RTT ms", "replies"):
        assert head in text
    for legend in LEGEND:
        assert legend.strip() in " ".join(text.split())


def test_a_busy_host_is_recorded_and_warned_about(tmp_path: Path) -> None:
    assert busy_warning(None, 2) is None
    assert busy_warning((0.9, 0.5, 0.5), 2) is None
    warning = busy_warning((3.2, 2.0, 1.0), 2)
    assert warning is not None and "load 3.20 on 2 CPUs" in warning
    result = bench_result()
    result.load_before, result.load_after = (3.2, 2.0, 1.0), (4.0, 2.5, 1.1)
    write_reports(result, aggregate(result), tmp_path, "wiretun bench")
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["host"]["load_before"] == [3.2, 2.0, 1.0]
    assert data["host"]["load_after"] == [4.0, 2.5, 1.1]
    md = (tmp_path / "results.md").read_text()
    assert "host load 3.20 at the start, 4.00 at the end" in md
    assert "**warning: the host was busy (load 3.20 on 2 CPUs" in md
    text = rendered(rich_tables(aggregate(result), warning=warning), width=80)
    assert "warning: the host was busy" in text


def test_write_reports(tmp_path: Path) -> None:
    result = bench_result()
    rows = aggregate(result)
    out = tmp_path / "out"
    files, problems = write_reports(result, rows, out, "wiretun bench --quick")
    assert problems == []
    assert sorted(f.name for f in files) == ["results.json", "results.md", "throughput.png"]
    data = json.loads((out / "results.json").read_text())
    assert data["schema"] == SCHEMA
    assert data["command"] == "wiretun bench --quick"
    assert data["host"]["cpu_count"] >= 1
    assert data["host"]["kernel"]
    assert data["versions"]["iperf3"].startswith("iperf 3")
    assert data["versions"]["wireguard-go"] == "wireguard-go v0.0.20220316"
    assert data["settings"]["repeats"] == 2
    assert data["namespaces"] == ["wtb-a", "wtb-b"]
    assert [p["status"] for p in data["paths"]] == ["ok", "ok", "failed", "skipped"]
    assert data["paths"][1]["peak_rss_mb"] == pytest.approx(37.0)
    assert len(data["rows"]) == len(rows)
    assert len(data["runs"]) == len(result.runs)
    wg_udp = next(r for r in data["runs"] if r["path"] == "wireguard-go" and r["workload"] == "udp")
    assert wg_udp["udp"]["out_of_order"] == 0
    md = (out / "results.md").read_text()
    assert "| wireguard-go | tcp |" in md
    assert "wiretun bench --quick" in md
    png = (out / "throughput.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 5000


KERNEL_SKIP = (
    "skipped: no kernel WireGuard: ip link add type wireguard: "
    "Unknown device type. (modprobe wireguard)"
)


def chosen_wireguard_go_result() -> BenchResult:
    """A run with --wireguard-go: the chosen binary's version, kernel-wg skipped."""
    plan = make_plan(
        quick=True, only="wireguard-go,kernel-wg", workloads="ping",
        wireguard_go="/opt/wg/wireguard-go",
    )  # fmt: skip
    paths = [
        PathStatus(
            "wireguard-go", version="wireguard-go v0.0.20250522", binary="/opt/wg/wireguard-go"
        ),
        PathStatus("kernel-wg", "skipped", KERNEL_SKIP),
    ]
    runs = [RunRecord("wireguard-go", "ping", 0, value=0.2, ping_sent=10, ping_received=10)]
    return BenchResult(plan, ("wtb-a", "wtb-b"), paths, runs)


def test_path_versions_names_the_chosen_binary() -> None:
    assert path_versions(chosen_wireguard_go_result()) == (
        "wireguard-go v0.0.20250522 (/opt/wg/wireguard-go)"
    )
    # Debian's on PATH and a kernel module: both named; wiretun's own version is elsewhere.
    result = bench_result()
    result.paths.append(PathStatus("kernel-wg", version="wireguard module 1.0.0"))
    assert path_versions(result) == "wireguard-go v0.0.20220316; kernel-wg: wireguard module 1.0.0"
    unknown = BenchResult(result.plan, result.namespaces, [PathStatus("wireguard-go", binary="/x")])
    assert path_versions(unknown) == "wireguard-go: version unknown (/x)"
    assert path_versions(BenchResult(result.plan, result.namespaces, [PathStatus("veth")])) is None


def test_skipped_kernel_wg_is_one_row_with_its_reason() -> None:
    result = chosen_wireguard_go_result()
    rows = aggregate(result)
    skipped = rows_by_key(rows)["kernel-wg", ALL_WORKLOADS]
    assert (skipped.status, skipped.note, skipped.median) == ("skipped", KERNEL_SKIP, None)
    assert [r.path for r in rows] == ["wireguard-go", "kernel-wg"]
    lines = markdown_tables(rows).splitlines()
    assert next(ln for ln in lines if "kernel-wg" in ln).startswith("| kernel-wg | * | - | - |")
    assert any("kernel-wg *: skipped: no kernel WireGuard" in ln for ln in lines)
    text = rendered(rich_tables(rows, header=path_versions(result)))
    assert "wireguard-go v0.0.20250522 (/opt/wg/wireguard-go)" in text.splitlines()[0]
    assert "skipped: no kernel WireGuard" in text


def test_reports_record_the_chosen_wireguard_go(tmp_path: Path) -> None:
    result = chosen_wireguard_go_result()
    cmd = "wiretun bench --quick --wireguard-go /opt/wg/wireguard-go"
    write_reports(result, aggregate(result), tmp_path, cmd)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["versions"]["wireguard-go"] == "wireguard-go v0.0.20250522"
    assert data["versions"]["kernel-wg"] is None
    assert data["settings"]["wireguard_go"] == "/opt/wg/wireguard-go"
    assert data["paths"][0]["binary"] == "/opt/wg/wireguard-go"
    assert data["paths"][1]["note"] == KERNEL_SKIP
    row = data["rows"][1]
    assert (row["path"], row["workload"], row["status"]) == ("kernel-wg", "*", "skipped")
    md = (tmp_path / "results.md").read_text()
    assert "wireguard-go v0.0.20250522 (/opt/wg/wireguard-go)" in md.splitlines()[2]
