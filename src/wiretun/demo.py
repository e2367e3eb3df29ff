"""`wiretun demo`: placeholder until the TUN layer lands."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


def run(args: argparse.Namespace) -> int:
    del args
    print("nothing to demo yet")
    return 1
