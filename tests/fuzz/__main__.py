"""``python -m tests.fuzz PROTOCOL --count N``: a fuzz campaign through a real session (see campaign.py).

Prints one JSON report; exits 1 when an invariant broke (a hang, a traceback in the gateway's log, a
failed health check, no protocol error audited, memory growth past the bound). See docs/fuzzing.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys

import orjson
import uvloop

from tests.fuzz.campaign import run_campaign
from tests.fuzz.targets import TARGETS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("protocol", choices=sorted(TARGETS))
    parser.add_argument("--count", type=int, default=100_000, help="inputs to send (default 100000)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a new one, printed)")
    parser.add_argument("--check-every-s", type=float, default=1.0, help="health check period")
    parser.add_argument("--rss-growth-limit-mib", type=int, default=64)
    parser.add_argument("--progress-every", type=int, default=0, help="progress to stderr every N inputs")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    report = uvloop.run(
        run_campaign(
            TARGETS[args.protocol],
            args.count,
            seed=seed,
            check_every_s=args.check_every_s,
            progress_every=args.progress_every,
        )
    )
    problems = report.problems(args.rss_growth_limit_mib << 20)
    output = dataclasses.asdict(report) | {"problems": problems}
    print(orjson.dumps(output, option=orjson.OPT_INDENT_2).decode())
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
