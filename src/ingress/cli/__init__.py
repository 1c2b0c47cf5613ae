"""The ``ingress`` command (docs/cli.md): one module per command group.

Every error a user can cause ends as one line on stderr and a non-zero exit,
never a traceback: configuration and corrupt input exit 2, everything else the
agent refuses (an output unusable at start-up, a missing credential, a locked
spool, an unreadable file) exits 1. Each group module imports what its command
needs inside the command, so ``ingress run`` loads nothing of the others.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ingress import __version__
from ingress.cli import check_config, deadletter, decode, keys, run, sink, spool, tenants
from ingress.cli.common import Parser, one_line, os_error
from ingress.errors import ConfigError, IngressError, WireError


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="ingress", description="multi-tenant host metrics agent")
    p.add_argument("--version", action="version", version=f"ingress {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for group in (run, check_config, decode, spool, keys, tenants, deadletter, sink):
        group.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
    except (ConfigError, WireError) as e:
        print(one_line(str(e)), file=sys.stderr)
        return 2
    except IngressError as e:
        print(one_line(str(e)), file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `ingress run --once | head`: the reader left; that is not an error.
        try:
            sys.stdout = open("/dev/null", "w")  # noqa: SIM115 - silence the interpreter's final flush
        except OSError:
            pass
        return 0
    except OSError as e:
        print(one_line(os_error(e)), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
