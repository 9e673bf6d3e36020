"""What the policy costs: nanoseconds per decision against the rule count, and the time to load and
compile a large policy.

Decision cost calls ``policy.view(subject, asset).decide_modbus(request, now)``'s bound method in a tight
loop, the way the session engine does (it binds the view's method once per session), for policies of
10 / 1,000 / 10,000 rules from ``tests/policies/gen_policy.py``. The figure includes the loop's own
overhead (~20 ns on this class of machine), the same for every rule count.

Load time is taken in a fresh interpreter each time (``python -m bench.policy_cost load FILE``), so no
cache of an earlier load (time zones, interned strings) flatters it.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.lab import ASSET, TRUST_DOMAIN
from bench.loadgen import REPO
from bench.modbus_load import request_kinds
from policies import Decision, load_policy, parse_policy
from protocols.modbus import Request
from tests.policies.gen_policy import bench_subject, generate_policy

__all__ = ["DECISION_REQUESTS", "decision_cost", "load_time"]

# (name, mix, address, count, expected verdict): the workload's allowed read and bounded write, and a
# read the "no-one-reads-recipes" deny rule refuses.
DECISION_REQUESTS: list[tuple[str, str, int, int, bool]] = [
    ("FC 3 read 10 @40 (allow)", "3", 40, 10, True),
    ("FC 6 write @40 = 40 (bounded, allow)", "6", 40, 1, True),
    ("FC 3 read 10 @5000 (deny rule)", "3", 5000, 10, False),
]


def decision_cost(rule_counts: list[int], *, iterations: int, rounds: int) -> list[dict[str, Any]]:
    """ns per decision, median of ``rounds`` loops of ``iterations`` decisions, per rule count and request.

    The rounds are interleaved (every rule count and request once per round) so that drift on a shared
    machine hits every rule count alike."""
    now = time.time()
    cases: list[tuple[int, str, Callable[[Request, float], Decision], Request]] = []
    for n_rules in rule_counts:
        policy = parse_policy(generate_policy(n_rules, trust_domain=TRUST_DOMAIN, asset=ASSET))
        view = policy.view(bench_subject(TRUST_DOMAIN), ASSET)
        if view is None:
            raise RuntimeError(f"{n_rules}-rule policy: the bench identity cannot see {ASSET}")
        for name, mix, address, count, allowed in DECISION_REQUESTS:
            (kind,) = request_kinds(mix, address, count)
            request = kind.request
            if view.decide_modbus(request, now).allowed is not allowed:
                raise RuntimeError(f"{n_rules}-rule policy decides {name!r} unexpectedly")
            cases.append((n_rules, name, view.decide_modbus, request))
    timings: dict[tuple[int, str], list[float]] = {(n, name): [] for n, name, _, _ in cases}
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            for n_rules, name, decide, request in cases:
                loop = range(iterations)
                started = time.perf_counter_ns()
                for _ in loop:
                    decide(request, now)
                timings[(n_rules, name)].append((time.perf_counter_ns() - started) / iterations)
    finally:
        gc.enable()
    rows: list[dict[str, Any]] = []
    for n_rules in rule_counts:
        row: dict[str, Any] = {"rules": n_rules, "requests": {}}
        for name, *_ in DECISION_REQUESTS:
            per_round = timings[(n_rules, name)]
            row["requests"][name] = {
                "ns_median": round(statistics.median(per_round), 1),
                "ns_min": round(min(per_round), 1),
                "ns_max": round(max(per_round), 1),
            }
        rows.append(row)
    return rows


def _measure_load(path: Path) -> dict[str, float]:
    started = time.perf_counter()
    policy = load_policy(path)
    loaded = time.perf_counter()
    view = policy.view(bench_subject(TRUST_DOMAIN), ASSET)
    compiled = time.perf_counter()
    assert view is not None
    return {
        "load_s": round(loaded - started, 4),
        "first_view_s": round(compiled - loaded, 4),
        "total_s": round(compiled - started, 4),
        "rules": len(policy.rules),
    }


def load_time(path: Path, *, rounds: int) -> dict[str, Any]:
    """Median (and spread) of ``rounds`` fresh-interpreter loads of ``path`` plus the first view compile."""
    runs: list[dict[str, float]] = []
    for _ in range(rounds):
        done = subprocess.run(
            [sys.executable, "-m", "bench.policy_cost", "load", str(path)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"loading {path} failed: {done.stderr.strip()[-500:]}")
        runs.append(json.loads(done.stdout))
    totals = [r["total_s"] for r in runs]
    return {
        "rules": int(runs[0]["rules"]),
        "load_s": statistics.median(r["load_s"] for r in runs),
        "first_view_s": statistics.median(r["first_view_s"] for r in runs),
        "total_s": statistics.median(totals),
        "total_min_s": min(totals),
        "total_max_s": max(totals),
        "rounds": rounds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.policy_cost")
    sub = parser.add_subparsers(dest="cmd", required=True)
    load = sub.add_parser("load", help="time load_policy(FILE) and the bench identity's first view; JSON")
    load.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    print(json.dumps(_measure_load(args.file)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
