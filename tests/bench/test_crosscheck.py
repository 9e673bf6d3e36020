"""The cross-check against an independent load generator: where the bench looks for one and what it says
when there is none, and how the pairs become the report's rows (on made-up figures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import loadgen
from bench.crosscheck import crosscheck_lines, crosscheck_section, summarize_crosscheck


def test_a_missing_independent_generator_is_named_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(loadgen.ENV_VAR, raising=False)
    monkeypatch.setattr(loadgen, "INDEPENDENT_DEFAULT", tmp_path / "shared" / "bench" / "modbus_load.py")
    generator, why = loadgen.find_independent()
    assert generator is None
    assert why.startswith(f"no independent load generator at {tmp_path}/shared/bench/modbus_load.py (give")

    monkeypatch.setenv(loadgen.ENV_VAR, str(tmp_path / "elsewhere.py"))
    assert loadgen.find_independent() == (
        None,
        f"no independent load generator at {tmp_path}/elsewhere.py (given)",
    )

    script = tmp_path / "modbus_load.py"
    script.write_text("")
    generator, why = loadgen.find_independent(str(script))  # the option wins over the variable
    assert generator is not None and generator.argv[1:] == (str(script), "load")
    assert why == f"the independent {script}"


def _sample(path: str, rep: int, rps: float, p50: float, generator: str, **extra: Any) -> dict[str, Any]:
    return {
        "path": path,
        "workload": "8x4",
        "rep": rep,
        "generator": generator,
        "req_per_s": rps,
        "p50_us": p50,
        "p99_us": p50 * 2,
        "proxy_cpu_us_per_req": None,
        "loadgen_cpu_us_per_req": 2.5,
        "errors": 0,
        "mismatches": 0,
        "exception_responses": 0,
        **extra,
    }


def test_pairs_become_medians_and_a_median_ratio() -> None:
    own = [_sample("direct", r, rps, 70.0, "own") for r, rps in enumerate((300_000, 330_000, 360_000))]
    independent = [
        _sample("direct", 0, 300_000, 70.0, "independent"),
        _sample("direct", 1, 300_000, 77.0, "independent", mismatches=2),
        {"path": "direct", "workload": "8x4", "rep": 2, "generator": "independent", "failed": "exit 2"},
    ]
    (row,) = summarize_crosscheck(own, independent)
    assert row["pairs"] == 2 and row["failed"] == 1 and row["failure"] == "exit 2" and row["errors"] == 2
    assert row["req_per_s"] == {"own": 315_000, "independent": 300_000, "ratio": 1.05}  # ratios 1.0 and 1.1
    assert row["p50_us"]["ratio"] == pytest.approx(0.955, abs=0.001)  # 70/70 and 70/77
    assert "proxy_cpu_us_per_req" not in row  # direct: no proxy, nothing to pair

    results = {"crosscheck": {"generator": "the independent /x/modbus_load.py", "rows": [row]}}
    table = crosscheck_section(results)
    assert "| direct | 8x4 | 315,000 | 300,000 | 1.05 | 70.0 | 73.5 | 0.95 | 2 (1 failed pairs) |" in table
    (line,) = crosscheck_lines(results["crosscheck"])[1:]
    assert "req/s   315,000 /   300,000 = 1.05" in line and "1 failed pairs" in line


def test_a_skipped_crosscheck_is_one_line() -> None:
    skipped = {"skipped": "no independent load generator at /x (given)"}
    assert crosscheck_lines(skipped) == [
        "bench: cross-check skipped: no independent load generator at /x (given)"
    ]
    assert crosscheck_section({"crosscheck": skipped})[0] == (
        "**Load generator cross-check:** not run: no independent load generator at /x (given)."
    )
    assert crosscheck_section({}) == []  # results from before the cross-check existed
