"""``python -m bench audit-sinks``: the gateway's CPU per request with its audit going to a syslog
collector over TLS, next to the same gateway writing its audit file (issue 15: at most 10% more).

Real processes on loopback, the main bench's machinery (:mod:`bench.paths`, :mod:`bench.runner`): the
fast Modbus server, Debian's rsyslogd listening with imtcp over TLS (gnutls driver, the configuration
of ``tests/siem/rsyslog.py``, a certificate from the lab's CA) and two gateways with the main bench's
1,000-rule policy and settings, differing only in ``[audit]``:

- ``file``: the audit file (``[audit] file``), as in the main bench's ztgate rows;
- ``syslog-tls``: one ``type = "syslog"`` sink, ``transport = "tls"``, the collector verified against
  the CA, spooled to disk, in the sink's default format (ECS json; ``--format`` chooses another).

The Modbus workloads (1x1, 8x4, mix: reads aggregated per second as in the main bench, so the records
are mostly the mix's writes) run in interleaved repetitions, the path order rotating; the figure is the
gateway's CPU per request (its process tree, from /proc), median over the repetitions, with the ratio
syslog-tls / file of each repetition and their median. After the run the collector must have received
every record the sink sent, with nothing dropped and the spool empty, or the run fails.

``--ref REF`` adds a third gateway, the syslog-tls one as it was at git ``REF`` (exported as the main
bench's ``--ref`` does, its own spool, the same collector): an A/B of a change to the sink in one
interleaved run, each repetition's ratio to the file path given for both.

Results go to ``bench/results/raw/audit-sinks-<time>.json``; docs/performance.md keeps the figures by
hand. Run it under ``/work/bin/cpu-exclusive`` (or on an otherwise idle machine).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.lab import TRUST_DOMAIN, Lab, Pool, make_lab
from bench.loadgen import OWN_GENERATOR, REPO, WORKLOADS, start_server
from bench.machine import describe_machine
from bench.paths import PathContext, RunningPath, gateway_health, ref_tree, start_ztgate
from bench.procs import Supervisor, raise_fd_limit, run_dir
from bench.runner import run_matrix
from gateway import pki

__all__ = ["run"]

RAW_DIR = REPO / "bench" / "results" / "raw"
TARGET_RATIO = 1.10
COLLECTOR_ID = f"spiffe://{TRUST_DOMAIN}/gateway/bench/siem"
DRAIN_TIMEOUT_S = 60.0


def log(message: str) -> None:
    print(message, flush=True)


def _syslog_sink(port: int, lab: Lab, spool: Path, fmt: str) -> str:
    return f"""[[audit.sinks]]
name = "siem"
type = "syslog"
transport = "tls"
address = "127.0.0.1:{port}"
ca = "{lab.ca}"
server_name = "localhost"
spool_dir = "{spool}"
format = "{fmt}"
"""


def _sink_status(path: RunningPath) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{path.admin_port}/readyz", timeout=5) as response:
        body: dict[str, Any] = json.loads(response.read())
    status: dict[str, Any] = next(s for s in body["audit"]["sinks"] if s["name"] == "siem")
    return status


def _check_delivery(paths: list[RunningPath], collector: Any) -> dict[str, Any]:
    """Wait (bounded) until every sink's spool is empty and rsyslog has written every record the sinks
    sent (one collector for all of them). The gateways still write (read aggregates, session ends), so
    a record sent after the status was read may already be counted as received: the check waits for a
    moment where the two agree."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        statuses = [_sink_status(path) for path in paths]
        spooled = sum(status["spool"]["records"] for status in statuses)
        sent = sum(status["sent"] for status in statuses)
        received = collector.count()
        if (spooled == 0 and received == sent) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    dropped = {path.name: status["dropped"] for path, status in zip(paths, statuses, strict=True)}
    found = {
        "sent": sent,
        "received": received,
        "spooled": spooled,
        "dropped": dropped,
        "connect_failures": sum(status["connect_failures"] for status in statuses),
        # The sink's own CPU per record over the whole run (gateway/sinks: cpu_s, sender_cpu_s): the
        # writer's (format and spool) and the sender's (read, frame, TLS, cursor), by gateway.
        "sink_cpu_us_per_record": {
            path.name: {
                "writer": round(status["cpu_s"] * 1e6 / max(status["written"], 1), 2),
                "sender": round(status["sender_cpu_s"] * 1e6 / max(status["sent"], 1), 2),
            }
            for path, status in zip(paths, statuses, strict=True)
            if "sender_cpu_s" in status  # a ref from before the sinks counted their CPU has none
        },
    }
    if spooled or received != sent or any(any(d.values()) for d in dropped.values()):
        found["error"] = "the collector did not get every record"
    return found


def _ratios(samples: list[dict[str, Any]], workload: str, ref: str | None = None) -> dict[str, Any]:
    by_rep: dict[int, dict[str, float]] = {}
    for sample in samples:
        cpu = sample.get("proxy_cpu_us_per_req")
        if sample["workload"] == workload and cpu is not None and "failed" not in sample:
            by_rep.setdefault(sample["rep"], {})[sample["path"]] = cpu

    def per_rep(path: str) -> list[float]:
        return [rep[path] / rep["file"] for rep in by_rep.values() if path in rep and "file" in rep]

    ratios = per_rep("syslog-tls")

    def median(path: str, metric: str) -> float | None:
        values = [
            s[metric]
            for s in samples
            if s["workload"] == workload and s["path"] == path and s.get(metric) is not None
        ]
        return round(statistics.median(values), 2) if values else None

    row = {
        "file_cpu_us_per_req": median("file", "proxy_cpu_us_per_req"),
        "syslog_cpu_us_per_req": median("syslog-tls", "proxy_cpu_us_per_req"),
        "file_req_per_s": median("file", "req_per_s"),
        "syslog_req_per_s": median("syslog-tls", "req_per_s"),
        "ratios": [round(r, 3) for r in ratios],
        "median_ratio": round(statistics.median(ratios), 3) if ratios else None,
    }
    if ref is not None:
        ref_ratios = per_rep(ref)
        row.update(
            ref_cpu_us_per_req=median(ref, "proxy_cpu_us_per_req"),
            ref_req_per_s=median(ref, "req_per_s"),
            ref_ratios=[round(r, 3) for r in ref_ratios],
            ref_median_ratio=round(statistics.median(ref_ratios), 3) if ref_ratios else None,
        )
    return row


def _table(rows: dict[str, dict[str, Any]], ref: str | None = None) -> list[str]:
    lines = [
        "| workload | file: CPU µs/req | syslog-tls: CPU µs/req | ratio (median of reps) | per repetition "
        "| req/s file / syslog-tls |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        reps = ", ".join(f"{r:.2f}" for r in row["ratios"])
        rates = f"{row['file_req_per_s']:,.0f} / {row['syslog_req_per_s']:,.0f}"
        lines.append(
            f"| {name} | {row['file_cpu_us_per_req']} | {row['syslog_cpu_us_per_req']} | "
            f"{row['median_ratio']} | {reps} | {rates} |"
        )
    if ref is not None:
        lines += ["", f"| workload | {ref}: CPU µs/req | ratio to file (median) | per repetition | req/s |"]
        lines.append("|---|---|---|---|---|")
        for name, row in rows.items():
            reps = ", ".join(f"{r:.2f}" for r in row["ref_ratios"])
            lines.append(
                f"| {name} | {row['ref_cpu_us_per_req']} | {row['ref_median_ratio']} | {reps} | "
                f"{row['ref_req_per_s'] or 0:,.0f} |"
            )
    return lines


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench audit-sinks", description=__doc__)
    parser.add_argument("--repeat", type=int, default=5, help="interleaved repetitions (default 5)")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (default 5)")
    parser.add_argument("--warmup", type=float, default=1.5, help="unmeasured seconds first (default 1.5)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated (default all)")
    parser.add_argument("--format", default="json", help="the syslog sink's format (default json: ECS)")
    parser.add_argument("--rules", type=int, default=1000, help="rules in the policy (default 1,000)")
    parser.add_argument("--ref", help="also run the syslog-tls gateway as it was at this git ref: an A/B")
    args = parser.parse_args(argv)
    workloads = [WORKLOADS[w.strip()] for w in args.workloads.split(",") if w.strip()]
    # Imported here: the collector helper lives with the SIEM tests, which start the same rsyslogd.
    from tests.siem.rsyslog import CollectorTls, Rsyslog

    raise_fd_limit(25_000)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    raw = run_dir(RAW_DIR, f"audit-sinks-{stamp}")
    pool = Pool(max_connections=1, max_in_flight=64, queue_limit=128)
    results: dict[str, Any] = {
        "meta": {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": shlex.join(["python", "-m", "bench", "audit-sinks", *argv]),
            "machine": describe_machine(REPO),
            "settings": {**vars(args), "pool": pool.describe(), "aggregate_reads_s": 1.0},
        }
    }
    paths = 3 if args.ref else 2
    lifetime_s = 120 + args.repeat * len(workloads) * paths * (args.warmup + args.duration + 3)
    with Supervisor(raw / "logs") as sup:
        lab = make_lab(raw / "lab")
        files = pki.issue(
            lab.directory / "ca", COLLECTOR_ID, dns_names=["localhost"], out_dir=raw, name="siem"
        )
        collector = Rsyslog(
            raw / "rsyslog",
            "tls",
            CollectorTls(lab.ca, files.cert, files.key, verify_clients=False),
            lifetime_s=lifetime_s,
        )
        collector_port = collector.start()
        try:
            server, server_port = start_server(sup)
            ctx = PathContext(
                sup=sup,
                lab=lab,
                server_port=server_port,
                work=raw / "lab",
                pool=pool,
                rules=args.rules,
                workloads=tuple(workloads),
            )
            file_path = start_ztgate(ctx, name="gw-file", path_name="file")
            syslog = start_ztgate(
                ctx,
                name="gw-syslog",
                path_name="syslog-tls",
                audit_sinks=_syslog_sink(collector_port, lab, raw / "spool", args.format),
            )
            syslogs = [syslog]
            if args.ref:
                sha, export = ref_tree(args.ref)
                syslogs.append(
                    start_ztgate(
                        ctx,
                        name="gw-syslog-ref",
                        path_name=f"syslog-tls@{sha[:8]}",
                        audit_sinks=_syslog_sink(collector_port, lab, raw / "spool-ref", args.format),
                        src=export,
                        version=sha,
                    )
                )
            log(f"bench audit-sinks: rsyslogd (TLS) on 127.0.0.1:{collector_port}; results in {raw}")
            samples, _ = run_matrix(
                OWN_GENERATOR,
                [file_path, *syslogs],
                server,
                workloads,
                repeat=args.repeat,
                warmup_s=args.warmup,
                duration_s=args.duration,
                log=log,
            )
            results["delivery"] = _check_delivery(syslogs, collector)
            results["health"] = {
                p.name: gateway_health(p.admin_port, p.audit_file) for p in (file_path, *syslogs)
            }
        finally:
            collector.stop()
    results["samples"] = samples
    ref = syslogs[1].name if len(syslogs) > 1 else None
    results["rows"] = {w.name: _ratios(samples, w.name, ref) for w in workloads}
    (raw / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    log("")
    for line in _table(results["rows"], ref):
        log(line)
    log(f"delivery: {results['delivery']}")
    worst = max((row["median_ratio"] or 0.0) for row in results["rows"].values())
    verdict = "pass" if worst <= TARGET_RATIO else "MISSED"
    log(f"{verdict}: syslog-tls CPU per request at most {TARGET_RATIO:.2f} x the file sink's (worst {worst})")
    log(f"bench audit-sinks: {raw / 'results.json'}")
    if "error" in results["delivery"]:
        log(f"FAILED: {results['delivery']['error']}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
