"""The ``ztgate`` command. Each sub-command lives in its own module, which adds its arguments with
``configure(subparsers)`` and sets ``func`` (taking the parsed arguments, returning an exit status)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from gateway.build_info import version_text

# Sub-command modules, in the order ``ztgate --help`` lists them.
COMMANDS = (
    "gateway.server",  # ztgate gateway
    "gateway.agent",  # ztgate agent
    "gateway.pki",  # ztgate ca init|issue
    "gateway.center.cli",  # ztgate center init|serve|token|policy|...
    "gateway.center.lock_cli",  # ztgate lock create|ls|rm
    "gateway.center.access_cli",  # ztgate access request|ls|approve|deny|revoke|cert
    "gateway.enroll",  # ztgate enroll
    "gateway.policy_cmd",  # ztgate policy check|explain
)
# The lab's commands (gateway/lab/), by name. The lab is not part of the runtime, and this is the one
# place outside it that names it: as strings, imported only to build the command line. Its packages
# come with the `lab` extra; without them its commands say how to install them.
LAB = "gateway.lab"
LAB_COMMANDS = {
    "sim": "gateway.lab.sim",  # ztgate sim modbus|enip|opcua
    "client": "gateway.lab.client",  # ztgate client modbus|enip read|write
    "demo": "gateway.lab.demo",  # ztgate demo
}


def log_to_stderr(level: str) -> None:
    """The log format of every long-running command (gateway, agent, center)."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


class _Version(argparse.Action):
    """``--version``: the version and the build (compiled or pure, and which modules), unwrapped."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ztgate",
        description="Zero Trust gateway for industrial control systems.",
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version and the build")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in (*COMMANDS, *LAB_COMMANDS.values()):
        importlib.import_module(name).configure(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in LAB_COMMANDS:
        missing_extra: Callable[[str], str | None] = importlib.import_module(LAB).missing_extra
        problem = missing_extra(args.command)
        if problem is not None:
            print(problem, file=sys.stderr)
            return 1
    try:
        status: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
