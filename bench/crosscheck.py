"""The cross-check of the bench's own load generator against an independent one.

The Modbus rows are measured with :mod:`bench.modbus_load`. When an independent generator with the same
command line and report is at hand (``modbus_load.py`` of the project's reference material, see
:func:`bench.loadgen.find_independent`), the runner measures the direct and ztgate paths with it too, each
run right next to the bench's own run of the same path and workload (:func:`bench.runner.run_matrix`).
Here the pairs become one row per path and workload: both generators' medians side by side and the
median of the per-repetition ratios, so a generator that limits a path, or counts differently, shows as a
ratio away from 1. Without an independent generator the run says so in one line and goes on.
"""

from __future__ import annotations

import statistics
from typing import Any

__all__ = ["crosscheck_lines", "crosscheck_section", "summarize_crosscheck"]

Sample = dict[str, Any]
PAIRED = ("req_per_s", "p50_us", "p99_us", "proxy_cpu_us_per_req", "loadgen_cpu_us_per_req")


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def summarize_crosscheck(samples: list[Sample], checks: list[Sample]) -> list[dict[str, Any]]:
    """One row per (path, workload) of the cross-check: per metric the median of each generator (``own``,
    ``independent``) over the repetitions both ran, and the median of the per-repetition ratios
    own / independent; ``errors``: what the independent generator saw go wrong."""
    own = {(s["path"], s["workload"], s["rep"]): s for s in samples if "failed" not in s}
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for check in checks:
        key = (check["path"], check["workload"])
        row = rows.setdefault(key, {"path": key[0], "workload": key[1], "pairs": 0, "failed": 0, "errors": 0})
        mine = own.get((*key, check["rep"]))
        if "failed" in check or mine is None:
            row["failed"] += 1
            row.setdefault("failure", check.get("failed", "the bench's own run of this pair failed"))
            continue
        row["pairs"] += 1
        row["errors"] += check["errors"] + check["mismatches"] + check.get("exception_responses", 0)
        for metric in PAIRED:
            a, b = mine.get(metric), check.get(metric)
            if a is None or b is None:
                continue
            cell = row.setdefault(metric, {"own": [], "independent": [], "ratio": []})
            cell["own"].append(a)
            cell["independent"].append(b)
            if b:
                cell["ratio"].append(a / b)
    for row in rows.values():
        for metric in PAIRED:
            if metric in row:
                row[metric] = {
                    "own": _median(row[metric]["own"]),
                    "independent": _median(row[metric]["independent"]),
                    "ratio": round(statistics.median(row[metric]["ratio"]), 3)
                    if row[metric]["ratio"]
                    else None,
                }
    return list(rows.values())


def _cell(row: dict[str, Any], metric: str, digits: int = 0) -> tuple[str, str, str]:
    stat = row.get(metric) or {}

    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    ratio = stat.get("ratio")
    return num(stat.get("own")), num(stat.get("independent")), "-" if ratio is None else f"{ratio:.2f}"


def _figures(row: dict[str, Any]) -> tuple[tuple[str, str, str], tuple[str, str, str], str]:
    """A row's req/s and p50 cells (own, independent, ratio), and its failed pairs if any."""
    failed = f"{row['failed']} failed pairs" if row["failed"] else ""
    return _cell(row, "req_per_s"), _cell(row, "p50_us", 1), failed


def crosscheck_lines(crosscheck: dict[str, Any]) -> list[str]:
    """The cross-check as plain lines for the run's log."""
    if "skipped" in crosscheck:
        return [f"bench: cross-check skipped: {crosscheck['skipped']}"]
    out = [f"bench: cross-check with {crosscheck['generator']} (own / independent, median of pairs):"]
    for row in crosscheck["rows"]:
        rps, p50, failed = _figures(row)
        out.append(
            f"  {row['path']:<8} {row['workload']:<4} req/s {rps[0]:>9} / {rps[1]:>9} = {rps[2]}   "
            f"p50 µs {p50[0]:>7} / {p50[1]:>7} = {p50[2]}   independent errors {row['errors']}"
            + (f", {failed}" if failed else "")
        )
    return out


def crosscheck_section(results: dict[str, Any]) -> list[str]:
    """The cross-check in the Markdown of docs/performance.md: a small table, or one line saying why not."""
    crosscheck = results.get("crosscheck")
    if not crosscheck:
        return []
    if "skipped" in crosscheck:
        return [f"**Load generator cross-check:** not run: {crosscheck['skipped']}.", ""]
    out = [
        "#### Load generator cross-check",
        "",
        f"The direct and ztgate paths measured again with an independent load generator "
        f"({crosscheck['generator']}), each run next to the bench's own run of the same path and workload. "
        "Medians of the pairs, and the median of the per-repetition ratios own / independent.",
        "",
        "| path | workload | req/s own | req/s independent | ratio | p50 µs own | p50 µs independent "
        "| ratio | errors seen by the independent |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in crosscheck["rows"]:
        rps, p50, failed = _figures(row)
        out.append(
            f"| {row['path']} | {row['workload']} | {rps[0]} | {rps[1]} | {rps[2]} | {p50[0]} | {p50[1]} "
            f"| {p50[2]} | {row['errors']}{f' ({failed})' if failed else ''} |"
        )
    return [*out, ""]
