"""``ztgate demo``: a whole lab on loopback in one process.

It makes a PKI in a work folder, starts simulated PLCs (Modbus TCP and EtherNet/IP), a gateway with an
example policy (an operator who may read and write bounded setpoints during working hours; a vendor who
may only read) and one agent per person, prints what runs where and what to try, and runs until Ctrl-C.
``--walkthrough`` drives the lab with real clients instead, prints a table of requests and their
outcomes, and stops; it exits non-zero if any outcome differs from what the policy promises.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from pathlib import Path

from gateway.lab.demo.lab import print_banner, start_lab


async def _main(args: argparse.Namespace) -> int:
    lab = await start_lab(args.dir)
    try:
        if args.walkthrough:
            from gateway.lab.demo.walkthrough import walkthrough

            return await walkthrough(lab)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        print_banner(lab)  # only now: it tells the reader Ctrl-C is safe
        await stop.wait()
        print("\nstopping the lab", flush=True)
        return 0
    finally:
        await lab.stop()


def run(args: argparse.Namespace) -> int:
    import uvloop

    started = time.monotonic()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        status = runner.run(_main(args))
    if args.walkthrough:
        print(f"(walkthrough took {time.monotonic() - started:.1f} s)")
    return status


def configure(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the demo lab on loopback",
        description="Start a demo lab on loopback: PKI, simulated PLCs, gateway, agents. Ctrl-C stops it.",
    )
    parser.add_argument("--dir", type=Path, default=Path("ztgate-demo"), help="work folder (recreated)")
    parser.add_argument(
        "--walkthrough",
        action="store_true",
        help="drive the lab with real Modbus and EtherNet/IP clients, print the outcomes, stop",
    )
    parser.set_defaults(func=run)
