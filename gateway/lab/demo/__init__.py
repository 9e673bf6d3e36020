"""``ztgate demo``: a whole lab on loopback in one process.

It starts a center in a work folder and pushes an example policy to it (an operator who may read and
write bounded setpoints during working hours; a vendor who may only read), simulated PLCs (Modbus TCP,
EtherNet/IP, OPC UA), a gateway and one agent per person, all enrolled with one-time tokens, prints
what runs where and what to try, and runs until Ctrl-C. ``--walkthrough`` drives the lab with real
clients instead, prints a table of requests and their outcomes, then shows the center at work (a push
reaching the gateway; the center stopped, the gateway enforcing its last bundle, stale, then closing;
the center back and a new revision applied), and stops; it exits non-zero if anything differs from
what the policy promises.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from pathlib import Path

from gateway.lab.demo.lab import print_banner, start_lab

WALKTHROUGH_STALENESS_S = 3.0


async def _main(args: argparse.Namespace) -> int:
    # The walkthrough stops the center and waits for the gateway's policy to go stale: seconds, not a day.
    lab = await start_lab(args.dir, max_staleness_s=WALKTHROUGH_STALENESS_S if args.walkthrough else 86400.0)
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
