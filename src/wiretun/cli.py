"""The `wiretun` command: one subcommand per module, each with add_arguments() and run()."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Protocol


class Command(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...
    def run(self, args: argparse.Namespace) -> int: ...


# name -> (module implementing Command, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("wiretun.demo", "show wiretun at work inside throwaway network namespaces"),
    "up": ("wiretun.tunnel.up", "run a WireGuard interface from a wg-quick config file"),
    "down": ("wiretun.tunnel.down", "stop the `wiretun up` serving an interface"),
    "show": (
        "wiretun.tunnel.show",
        "show interfaces as `wg show` does, with wiretun's counters (--json for scripts)",
    ),
    "bench": (
        "wiretun.bench.cli",
        "measure throughput/latency of wiretun vs wireguard-go vs bare veth",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wiretun", description="Fast userspace tunnels on Linux.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module: Command = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module: Command = args._module
    try:
        return module.run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
