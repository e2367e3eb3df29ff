"""`wiretun bench [--quick] [--duration S] [--out DIR] [--only NAMES] [--wireguard-go PATH]`:
the command line."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path
from types import FrameType

from wiretun.bench.env import environment_problems
from wiretun.bench.paths import path_kind, resolve_program
from wiretun.bench.plan import DEFAULT_PATHS, WORKLOADS, make_plan
from wiretun.bench.report import busy_warning, path_versions, rich_tables, write_reports
from wiretun.bench.results import aggregate
from wiretun.bench.runner import run_bench


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 repeat of ~3 s: TCP both ways + ping over veth, wireguard-go, wiretun-q1",
    )
    parser.add_argument(
        "--duration", type=float, metavar="S", help="seconds per iperf3 run (default 8, quick 3)"
    )
    parser.add_argument(
        "--repeats", type=int, metavar="N", help="interleaved rounds (default 3, quick 1)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results"),
        metavar="DIR",
        help="directory for results.json, results.md, throughput.png (default ./bench-results)",
    )
    parser.add_argument(
        "--only", metavar="NAMES", help=f"comma-separated paths: {','.join(DEFAULT_PATHS)}"
    )
    parser.add_argument(
        "--workloads", metavar="NAMES", help=f"comma-separated workloads: {','.join(WORKLOADS)}"
    )
    parser.add_argument("--udp-rate", type=int, default=500, metavar="MBPS",
                        help="offered UDP rate in Mbit/s (default 500)")  # fmt: skip
    parser.add_argument("--offload", action=argparse.BooleanOptionalAction, default=True,
                        help="TUN/UDP offloads for the wiretun-qN paths (default on)")  # fmt: skip
    parser.add_argument(
        "--ping-interval", type=float, default=0.2, metavar="S",
        help="seconds between echo requests of the ping workload (default 0.2: an idle link;"
        " a short interval shows the RTT of a warm one)",
    )  # fmt: skip
    parser.add_argument(
        "--wireguard-go",
        metavar="PATH",
        help="the wireguard-go binary for the wireguard-go path (default: Debian's, from PATH)",
    )


def command_line(args: argparse.Namespace) -> str:
    """The options as given, for the report (independent of how the program was started)."""
    words = ["wiretun", "bench"]
    if args.quick:
        words.append("--quick")
    for flag, value in (("--duration", args.duration), ("--repeats", args.repeats),
                        ("--only", args.only), ("--workloads", args.workloads),
                        ("--wireguard-go", args.wireguard_go)):  # fmt: skip
        if value is not None:
            words += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    if args.udp_rate != 500:
        words += ["--udp-rate", str(args.udp_rate)]
    if args.ping_interval != 0.2:
        words += ["--ping-interval", f"{args.ping_interval:g}"]
    if not args.offload:
        words.append("--no-offload")
    words += ["--out", str(args.out)]
    return shlex.join(words)


def _terminate(signum: int, frame: FrameType | None) -> None:
    del signum, frame
    # Unwind like Ctrl-C so every `finally` removes namespaces and stops processes.
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    try:  # rich (progress, tables) comes with the bench extra, not with wiretun itself
        from rich.console import Console  # noqa: PLC0415
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )
    except ImportError:
        print("wiretun bench: needs the bench extra: pip install 'wiretun[bench]'", file=sys.stderr)
        return 2
    # The tables fit 80 columns; piped to a file, long notes and paths stay on one line.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    err = Console(stderr=True)
    try:
        plan = make_plan(
            quick=args.quick, only=args.only, workloads=args.workloads, repeats=args.repeats,
            duration=args.duration, udp_rate_mbps=args.udp_rate, offload=args.offload,
            wireguard_go=args.wireguard_go, ping_interval=args.ping_interval,
        )  # fmt: skip
    except ValueError as e:
        # soft_wrap: a path in the message stays whole, to copy.
        err.print(f"wiretun bench: {e}", markup=False, soft_wrap=True)
        return 2
    if plan.wireguard_go is not None and resolve_program(plan.wireguard_go) is None:
        err.print(f"wiretun bench: --wireguard-go {plan.wireguard_go}: not an executable file",
                  markup=False, soft_wrap=True)  # fmt: skip
        return 2
    kinds = [path_kind(name, plan.offload, plan.wireguard_go) for name in plan.paths]
    if problems := environment_problems(kinds):
        for problem in problems:
            err.print(f"wiretun bench: {problem}", markup=False)
        return 1
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=err, transient=True,
        ) as progress:  # fmt: skip
            task = progress.add_task("starting", total=None)

            def update(text: str, done: int, total: int) -> None:
                progress.update(task, description=text, completed=done, total=total)

            result = run_bench(plan, kinds, update)
    except KeyboardInterrupt:
        err.print("wiretun bench: interrupted; namespaces and tunnel processes removed")
        return 130
    except RuntimeError as e:  # the topology itself could not be built
        err.print(f"wiretun bench: cannot build the test network: {e}", markup=False)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    rows = aggregate(result)
    warning = busy_warning(result.load_before, os.cpu_count())
    console.print(rich_tables(rows, header=path_versions(result), warning=warning))
    files, problems = write_reports(result, rows, args.out, command_line(args))
    for problem in problems:
        err.print(f"wiretun bench: {problem}", markup=False)
    for status in result.paths:
        if status.note:
            err.print(f"{status.name}: {status.note}", markup=False)
    console.print("wrote " + ", ".join(str(f) for f in files), markup=False)
    return 0 if any(r.status == "ok" for r in rows) else 1


if __name__ == "__main__":
    from wiretun.cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))
