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
    "bench": (
        "wiretun.bench.cli",
        "measure throughput/latency of wiretun vs wireguard-go vs bare veth",
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `command`, only that subcommand's module is imported and given its
    arguments (so `wiretun up` never loads the bench or the lab), else every one."""
    parser = argparse.ArgumentParser(prog="wiretun", description="Fast userspace tunnels on Linux.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if command is None or name == command:
            module: Command = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_module=module)
    return parser


def command_of(argv: list[str]) -> str | None:
    """The subcommand `argv` names: its first word that is not an option (the top-level
    options take no value), if that is a command."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # An unknown or missing command gets argparse's usual error from the full table.
    args = build_parser(command_of(argv) or "").parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module: Command = args._module
    try:
        return module.run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
