"""The `wiretun` command: one subcommand per module, each with add_arguments() and run().

Only the module of the subcommand given is imported (`wiretun --help` imports none of them:
the tunnel, pyroute2, numpy and rich stay unloaded), so help and errors come back at once.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Protocol

from wiretun import __version__


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

VERBOSE_HELP = "more logging: -v info, -vv debug (-vvv adds pyroute2's netlink messages)"


def chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand named in `argv` (the first word not an option: the top level has no
    option that takes a value), or None."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with `argv`, only its subcommand's module is imported (all without)."""
    parser = argparse.ArgumentParser(prog="wiretun", description="Fast userspace tunnels on Linux.")
    parser.add_argument("--version", action="version", version=f"wiretun {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = chosen_command(argv) if argv is not None else None
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if argv is None or name == chosen:
            module: Command = importlib.import_module(module_name)
            # -v after the subcommand too (`wiretun up wg0 -v`); the counts add up.
            p.add_argument(
                "-v", "--verbose", action="count", default=0, dest="sub_verbose",
                help=VERBOSE_HELP,
            )  # fmt: skip
            module.add_arguments(p)
            p.set_defaults(_module=module)
    return parser


def setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pyroute2 logs every netlink message at DEBUG: wiretun's -vv is about wiretun.
    logging.getLogger("pyroute2").setLevel(logging.DEBUG if verbose >= 3 else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    args.verbose = args.verbose + getattr(args, "sub_verbose", 0)
    setup_logging(args.verbose)
    module: Command = args._module
    try:
        return module.run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
