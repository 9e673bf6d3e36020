"""What the ``ztgate sim`` sub-commands share: their common options, and running a simulator until
SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar


class Simulator(Protocol):
    async def stop(self) -> None: ...


S = TypeVar("S", bound=Simulator)


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_hostport(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT``; port 0 lets the system choose."""
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError(f"write an IPv6 address in brackets: [{host}]:{port_text}")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port_text)


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("the interval must be positive")
    return value


def add_simulator_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    doc: str | None,
    default_listen: str,
) -> argparse.ArgumentParser:
    """The sub-command ``name`` with the module docstring ``doc`` as its help, and the options every
    simulator takes: ``--listen``, ``--static`` and ``--interval-s``."""
    description, _, details = (doc or "").partition("\n\n")
    parser = subparsers.add_parser(
        name,
        help=summary,
        description=description,
        epilog=details,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--listen",
        type=parse_hostport,
        default=parse_hostport(default_listen),
        metavar="HOST:PORT",
        help=f"address to listen on (default {default_listen}; port 0 picks a free port)",
    )
    parser.add_argument("--static", action="store_true", help="keep the initial values: nothing changes")
    parser.add_argument(
        "--interval-s",
        type=positive_seconds,
        default=1.0,
        metavar="S",
        help="scan period in seconds (default 1)",
    )
    return parser


def mode_text(static: bool, interval_s: float) -> str:
    return "static" if static else f"scan every {interval_s:g} s"


async def serve(name: str, start: Callable[[], Awaitable[S]], describe: Callable[[S], str]) -> int:
    """Start a simulator, say where it listens (``describe``), and run it until SIGINT or SIGTERM; 1
    when it cannot start (the OSError's text says why), else 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        sim = await start()
    except OSError as exc:
        print(f"ztgate sim {name}: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"ztgate sim {name}: {describe(sim)}", flush=True)
        await stop.wait()
    finally:
        await sim.stop()
    return 0


__all__ = [
    "add_simulator_parser",
    "format_hostport",
    "mode_text",
    "parse_hostport",
    "positive_seconds",
    "serve",
]
