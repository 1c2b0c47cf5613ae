"""The ``ingress`` command."""
from __future__ import annotations

import argparse
import sys

from ingress import __version__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ingress", description="multi-tenant host metrics agent")
    p.add_argument("--version", action="version", version=f"ingress {__version__}")
    p.add_subparsers(dest="command")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help(sys.stderr)
        return 2
    return 0
