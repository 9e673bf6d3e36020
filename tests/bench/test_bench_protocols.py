"""The EtherNet/IP and OPC UA rows of the benchmark: a tiny real run (pycomm3 and asyncua against the
simulators, direct and through agent -> gateway), checked for the JSON shape and zero errors; and the
OPC UA targets and the Markdown on made-up figures."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.loadgen import REPO
from bench.proto_load import Go, Recorder
from bench.report import (
    evaluate_targets,
    render_markdown,
    summarize_protocols,
)

pytestmark = pytest.mark.slow  # ~25 s: simulators, gateways, agents and clients on loopback


def test_quick_run_of_the_enip_and_opcua_rows(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bench", "--quick", "--protocols", "enip,opcua"]
    argv += ["--workloads", "enip-5tags,opcua-1x1", "--duration", "0.6", "--warmup", "0.2"]
    argv += ["--out", str(tmp_path), "--no-docs"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["samples"] == [] and "scale" not in results  # no Modbus rows asked for
    enip = results["protocols"]["enip"]
    assert set(enip["paths"]) == {"direct", "ztgate"} and list(enip["workloads"]) == ["enip-5tags"]
    for sample in enip["samples"]:
        assert "failed" not in sample, sample
        assert sample["errors"] == sample["mismatches"] == 0, sample
        assert sample["req_per_s"] > 0 and 0 < sample["p50_us"] <= sample["p99_us"]
        if sample["path"] == "ztgate":  # both processes' CPU read from /proc
            assert sample["gateway_cpu_us_per_req"] > 0 and sample["agent_cpu_us_per_req"] > 0
    health = enip["ztgate_after_run"]["metrics"]
    assert health["ztgate_requests_total"] > 0 and "ztgate_requests_total:deny" not in health

    opcua = results["protocols"]["opcua"]
    assert "direct" in opcua["paths"]
    for sample in opcua["samples"]:
        assert "failed" not in sample and sample["errors"] == sample["mismatches"] == 0, sample
        if sample["path"] == "ztgate-mtls":  # the client spoke the overlay itself: no agent
            assert (
                sample["gateway_cpu_us_per_req"] > 0 and "agent" not in opcua["paths"]["ztgate-mtls"]["label"]
            )
            assert sample["agent_cpu_us_per_req"] is None
    assert set(opcua["paths"]) == {"direct", "ztgate", "ztgate-mtls"}
    targets = {t["target"]: t for t in results["targets"]}
    assert targets["no errors, no mismatched replies"]["pass"] is True
    for via in ("agent -> ztgate", "ztgate (client with its own identity)"):
        assert targets[f"OPC UA 1x1 Read of 10 nodes: gateway CPU per Read, {via}"]["measured"] > 0

    section = (tmp_path / "performance-section.md").read_text()
    assert "#### enip-5tags:" in section and "#### opcua-1x1:" in section
    chart = tmp_path / "performance-protocols.png"
    if importlib.util.find_spec("matplotlib") is None:  # the test extra leaves it out: no chart, said so
        assert not chart.exists() and "no chart performance-protocols.png" in done.stdout
    else:
        assert chart.stat().st_size > 10_000


def _sample(path: str, workload: str, rep: int, rps: float, gateway: float | None) -> dict[str, Any]:
    return {
        "path": path,
        "workload": workload,
        "rep": rep,
        "req_per_s": rps,
        "p50_us": 1e6 / rps,
        "p99_us": 3e6 / rps,
        "gateway_cpu_us_per_req": gateway,
        "agent_cpu_us_per_req": None if gateway is None else 60.0,
        "errors": 0,
        "mismatches": 0,
        "exception_responses": 0,
    }


def _results(samples: list[dict[str, Any]]) -> dict[str, Any]:
    results: dict[str, Any] = {
        "meta": {
            "date": "2026-01-01 00:00 UTC",
            "command": "python -m bench --protocols opcua",
            "elapsed_s": 30.0,
            "machine": {
                "cpu": "cpu",
                "cores": 2,
                "memory_gib": 1.0,
                "os": "os",
                "kernel": "k",
                "python": "3.11",
                "openssl": "OpenSSL",
                "versions": {"haproxy": "2.6", "stunnel": "5.68", "uvloop": "0.23", "asyncua": "2.1.0"},
                "ztgate_commit": "abc",
            },
            "settings": {"repeat": 3, "workloads": []},
        },
        "paths": {},
        "workloads": {},
        "samples": [],
        "summary": {},
        "protocols": {
            "opcua": {
                "name": "OPC UA",
                "paths": {"direct": {"label": "direct"}, "ztgate": {"label": "agent -> ztgate"}},
                "workloads": {"opcua-1x1": {"label": "Read of 10, 1 x 1", "unit": "Read"}},
                "samples": samples,
                "unavailable": {},
                "settings": {"repeat": 3, "warmup_s": 1.0, "duration_s": 3.0},
            }
        },
    }
    summarize_protocols(results)
    return results


def test_stunnel_in_client_mode_in_the_agents_place_relays_every_request(tmp_path: Path) -> None:
    """The opt-in stunnel-client path: pycomm3 and asyncua clients into stunnel in client mode, carried
    over mutual TLS to the same gateway; every reply checked, the relay's CPU in the agent's column."""
    argv = [sys.executable, "-m", "bench", "--quick", "--protocols", "enip,opcua", "--only", "stunnel-client"]
    argv += ["--workloads", "enip-1tag,opcua-1x1", "--duration", "0.5", "--warmup", "0.2"]
    argv += ["--out", str(tmp_path), "--no-docs"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    for protocol in ("enip", "opcua"):
        rows = results["protocols"][protocol]
        assert set(rows["paths"]) == {"stunnel-client"}, rows["unavailable"]
        assert rows["paths"]["stunnel-client"]["label"].startswith("stunnel client mode")
        assert rows["samples"], protocol
        for sample in rows["samples"]:
            assert "failed" not in sample and sample["errors"] == sample["mismatches"] == 0, sample
            assert sample["req_per_s"] > 0, sample
            assert sample["gateway_cpu_us_per_req"] > 0 and sample["agent_cpu_us_per_req"] > 0, sample
        assert rows["ztgate_after_run"]["metrics"]["ztgate_requests_total"] > 0


def test_opcua_targets_and_markdown() -> None:
    samples = []
    for rep, (direct, through, cpu) in enumerate(
        [(2000, 1500, 150.0), (2100, 1400, 190.0), (1900, 1500, 170)]
    ):
        samples.append(_sample("direct", "opcua-1x1", rep, direct, None))
        samples.append(_sample("ztgate", "opcua-1x1", rep, through, cpu))
        mtls = {
            **_sample("ztgate-mtls", "opcua-1x1", rep, through * 0.9, cpu + 30),
            "agent_cpu_us_per_req": None,
        }
        samples.append(mtls)
    results = _results(samples)
    results["protocols"]["opcua"]["paths"]["ztgate-mtls"] = {"label": "client -> ztgate"}
    results["targets"] = evaluate_targets(results)
    by_name = {t["target"]: t for t in results["targets"]}
    ratio = by_name["OPC UA 1x1 Read of 10 nodes: round trips/s through agent -> ztgate"]
    assert ratio["measured"] == pytest.approx(1500 / 2000) and ratio["pass"] is True
    assert "per repetition 0.67-0.79" in ratio["shown"]
    cpu = by_name["OPC UA 1x1 Read of 10 nodes: gateway CPU per Read, agent -> ztgate"]
    assert cpu["measured"] == 170.0 and cpu["pass"] is True
    assert "the agent: 60 µs" in cpu["shown"]
    # Each path is judged on its own figures: 1,350 vs 2,000 misses 0.7 x.
    mtls_ratio = by_name[
        "OPC UA 1x1 Read of 10 nodes: round trips/s through ztgate (client with its own identity)"
    ]
    assert mtls_ratio["measured"] == pytest.approx(1350 / 2000) and mtls_ratio["pass"] is False
    mtls_cpu = by_name[
        "OPC UA 1x1 Read of 10 nodes: gateway CPU per Read, ztgate (client with its own identity)"
    ]
    assert mtls_cpu["measured"] == 200.0 and mtls_cpu["pass"] is True and "agent" not in mtls_cpu["shown"]
    assert by_name["8x4: ztgate req/s"]["pass"] is None  # no Modbus rows: not measured, not failed

    text = render_markdown(results, None, "performance-protocols.png")
    assert "| OPC UA | opcua-1x1 | 0.75 x | 500.0 → 666.7 | 170.0 + agent 60.0 | no stunnel path |" in text
    assert (
        "| OPC UA | opcua-1x1 (client speaks mTLS) | 0.68 x | 500.0 → 740.7 | 200.0 | no stunnel path |"
        in text
    )
    assert "| client -> ztgate | 1,350 <sub>1,260-1,350</sub> |" in text
    assert "| EtherNet/IP (CIP) | - | - | - | - | not measured in this run |" in text
    assert "| agent -> ztgate | 1,500 <sub>1,400-1,500</sub> |" in text
    assert "![EtherNet/IP and OPC UA: direct against ztgate](performance-protocols.png)" in text
    assert "### Where the gateway's time goes" not in text  # nothing to show without the Modbus rows


def test_a_failed_run_or_a_bad_reply_fails_the_error_target() -> None:
    samples = [_sample("direct", "opcua-1x1", 0, 2000, None), _sample("ztgate", "opcua-1x1", 0, 1000, 300.0)]
    samples[1]["errors"] = 2
    samples.append({"path": "ztgate", "workload": "opcua-1x1", "rep": 1, "failed": "agent exited"})
    results = _results(samples)
    by_name = {t["target"]: t for t in evaluate_targets(results)}
    errors = by_name["no errors, no mismatched replies"]
    assert errors["pass"] is False and errors["shown"] == "2 errors/mismatches/refusals, 1 failed runs"
    assert by_name["OPC UA 1x1 Read of 10 nodes: gateway CPU per Read, agent -> ztgate"]["pass"] is False


def test_a_path_that_did_not_start_fails_the_error_target() -> None:
    results = _results([_sample("direct", "opcua-1x1", 0, 2000, None)])
    results["protocols"]["opcua"]["unavailable"] = {"ztgate": "ztgate-opcua exited with status 1"}
    by_name = {t["target"]: t for t in evaluate_targets(results)}
    errors = by_name["no errors, no mismatched replies"]
    assert errors["pass"] is False and "1 EtherNet/IP or OPC UA paths that did not start" in errors["shown"]
    assert (
        by_name["OPC UA 1x1 Read of 10 nodes: round trips/s through ztgate (client with its own identity)"][
            "pass"
        ]
        is None
    )
    text = render_markdown({**results, "targets": list(by_name.values())}, None)
    assert "**Not measured:** OPC UA ztgate: ztgate-opcua exited with status 1" in text


def test_recorder_counts_good_replies_only_and_stops_after_a_client_exception() -> None:
    recorder = Recorder(Go(start=0.0, window_start=1.0, window_end=2.0))
    assert recorder.record(0.1, 0.2, None)  # warm-up
    assert recorder.record(1.0, 1.0005, None)  # in the window: 500 µs
    assert recorder.record(1.1, 1.2, "error:Setpoint: Permission denied")  # a refusal: counted apart
    assert not recorder.record(1.3, 1.3, "exception:CommError: connection lost")  # the client is gone
    result = recorder.result()
    assert result["phases"] == {"warmup": 1, "window": 1}
    assert result["latencies_us"] == [pytest.approx(500.0)]
    assert result["problems"] == {
        "error:Setpoint: Permission denied": 1,
        "exception:CommError: connection lost": 1,
    }
    assert not recorder.record(2.0, 2.1, None)  # past the window's end: the worker stops
