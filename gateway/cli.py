"""The ``ztgate`` command. Each sub-command lives in its own module, which adds its arguments with
``configure(subparsers)`` and sets ``func`` (taking the parsed arguments, returning an exit status)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gateway import __version__

# Sub-command modules, in the order ``ztgate --help`` lists them.
COMMANDS = (
    "gateway.server",  # ztgate gateway
    "gateway.agent",  # ztgate agent
    "gateway.pki",  # ztgate ca init|issue
    "gateway.policy_cmd",  # ztgate policy check|explain
    "gateway.sim",  # ztgate sim modbus
    "gateway.client",  # ztgate client modbus read|write
    "gateway.demo",  # ztgate demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ztgate",
        description="Zero Trust gateway for industrial control systems.",
    )
    parser.add_argument("--version", action="version", version=f"ztgate {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(name).configure(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
