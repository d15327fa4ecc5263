"""The `nncme` command.

Each subcommand has an `_add_<name>` function that declares its arguments and a handler
`_cmd_<name>(args) -> int` (the exit status). User errors (a bad network, a bad option) print
one clear line and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .network import NetworkError

__all__ = ["build_parser", "main"]


class UsageError(Exception):
    """A user error on the command line; printed as one line, exit status 2."""


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="how nncme was built (torch, CUDA, OpenMP)")
    p.set_defaults(handler=_cmd_info)


def _cmd_info(args: argparse.Namespace) -> int:
    from . import build_info

    print(json.dumps(build_info(), indent=2))
    return 0


def _add_show(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="print a network: species, reactions, laws, time grid")
    p.add_argument("network", help="a built-in system (see `nncme systems`) or a .toml/.json file")
    p.set_defaults(handler=_cmd_show)


def _cmd_show(args: argparse.Namespace) -> int:
    from .io import resolve_network

    print(resolve_network(args.network).summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nncme",
        description="Solve chemical master equations with variational autoregressive networks.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


_SUBCOMMANDS = [_add_info, _add_show]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (NetworkError, UsageError, FileNotFoundError) as exc:
        print(f"nncme {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nncme {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
