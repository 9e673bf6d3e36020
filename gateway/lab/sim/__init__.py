"""``ztgate sim``: soft PLCs for demos and tests, one sub-command per protocol.

``python -m gateway.lab.sim PROTOCOL ...`` runs the same sub-commands without the rest of the command line,
for a container that holds only a simulated PLC.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gateway.lab import missing_extra

# One module per protocol, each with ``configure(subparsers)``; a new simulator is one more line.
SIMULATORS = ("gateway.lab.sim.modbus", "gateway.lab.sim.opcua", "gateway.lab.sim.enip")

_DESCRIPTION = "Soft PLCs for demos and tests, on loopback by default."


def _add_protocols(parser: argparse.ArgumentParser) -> None:
    protocols = parser.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)
    for name in SIMULATORS:
        importlib.import_module(name).configure(protocols)


def configure(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _add_protocols(subparsers.add_parser("sim", help="run a simulated PLC", description=_DESCRIPTION))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ztgate sim", description=_DESCRIPTION)
    _add_protocols(parser)
    args = parser.parse_args(argv)
    problem = missing_extra("sim")
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    status: int = args.func(args)
    return status
