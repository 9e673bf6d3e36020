"""``python -m bench`` (or ``./run bench``): ztgate side by side with direct, HAProxy, stunnel and
modbus-proxy, on loopback, in one interleaved run; then the scale figures and a profile of the gateway.

    python -m bench                      # the full run (~12 min): updates docs/performance.md + .png
    python -m bench --quick              # ~1 min smoke check; results under bench/results/raw/
    python -m bench --only ztgate,stunnel --repeat 5 --duration 10
    python -m bench scale                # only the scale figures
    python -m bench report bench/results/latest.json   # re-render the doc from a JSON result
    python -m bench center               # policy push -> two gateways deciding by it (bench/center.py)
    python -m bench fairness             # a poller's p99 idle and while another identity floods
    python -m bench opcua-memory         # the gateway's RSS under issue 16's OPC UA chunk attack
    python -m bench locks                # lock create -> 50 of 100 live sessions cut (bench/locks.py)
    python -m bench audit-sinks          # CPU per request: syslog over TLS next to the audit file

See docs/performance.md for how to read the results.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.chart import write_chart, write_protocol_chart
from bench.crosscheck import crosscheck_lines, summarize_crosscheck
from bench.lab import Pool, make_lab
from bench.loadgen import OWN_GENERATOR, REPO, WORKLOADS, Generator, find_independent, start_server
from bench.machine import describe_machine
from bench.paths import (
    PATHS,
    PathContext,
    PathUnavailableError,
    RunningPath,
    gateway_health,
    ref_tree,
    start_path,
    start_ztgate_ref,
)
from bench.procs import Proc, ProcessError, Supervisor, raise_fd_limit, run_dir
from bench.profiling import find_py_spy, profile_gateway
from bench.proto_rows import (
    PROTO_DEFAULT_PATHS,
    PROTO_PATHS,
    PROTO_WORKLOADS,
    PROTOCOLS,
    ProtoWorkload,
    run_protocol,
)
from bench.report import (
    evaluate_targets,
    render_markdown,
    summarize_protocols,
    summarize_samples,
    update_doc,
)
from bench.runner import run_matrix
from bench.scale import ScaleSettings, run_scale

RESULTS_DIR = REPO / "bench" / "results"
RAW_DIR = RESULTS_DIR / "raw"
DOC = REPO / "docs" / "performance.md"
CHART = REPO / "docs" / "performance.png"
PROTO_CHART = REPO / "docs" / "performance-protocols.png"
LATEST = RESULTS_DIR / "latest.json"

SHORT = {
    "direct": "direct",
    "haproxy": "HAProxy",
    "stunnel": "stunnel",
    "ztgate": "ztgate",
    "stunnel-client": "stunnel client",
}


def log(message: str) -> None:
    print(message, flush=True)


ALL_PROTOCOLS = ("modbus", *PROTOCOLS)


def _all_workloads() -> dict[str, str]:
    """Every workload name, with its protocol."""
    return {**{w: "modbus" for w in WORKLOADS}, **{w.name: w.protocol for w in PROTO_WORKLOADS.values()}}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark ztgate against direct, HAProxy, stunnel and modbus-proxy on loopback; "
        "and EtherNet/IP and OPC UA clients direct against agent -> ztgate.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    workloads = _all_workloads()
    parser.add_argument("command", nargs="?", default="run", choices=("run", "scale", "report"))
    parser.add_argument("file", nargs="?", type=Path, help="for `report`: a results JSON")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (~1 minute)")
    parser.add_argument("--repeat", type=int, help="interleaved repetitions (default 5; quick 1)")
    parser.add_argument(
        "--duration",
        type=float,
        help="measured seconds per run (default 5, EtherNet/IP and OPC UA rows 3; quick 2)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        help="unmeasured seconds before each run (default 1.5, EtherNet/IP and OPC UA rows 1; quick 0.5)",
    )
    parser.add_argument(
        "--protocols",
        default=",".join(ALL_PROTOCOLS),
        help=f"comma-separated, of {', '.join(ALL_PROTOCOLS)} (default: all)",
    )
    parser.add_argument(
        "--only",
        help=f"comma-separated paths to run (default: all of {', '.join(PATHS)}; "
        "EtherNet/IP and OPC UA have direct and ztgate; OPC UA also ztgate-mtls, its clients speaking the "
        "overlay themselves)",
        default=None,
    )
    parser.add_argument(
        "--workloads", default=",".join(workloads), help=f"comma-separated, of {', '.join(workloads)}"
    )
    parser.add_argument("--skip-scale", action="store_true", help="no scale figures")
    parser.add_argument("--no-profile", action="store_true", help="no py-spy profile of the gateway")
    parser.add_argument("--no-modbus-proxy", action="store_true", help="leave modbus-proxy out")
    parser.add_argument("--rules", type=int, default=1000, help="rules in the ztgate paths' policies")
    parser.add_argument(
        "--pool",
        default="1:64",
        help="the ztgate asset's upstream pool as MAX_CONNECTIONS:MAX_IN_FLIGHT (default 1:64)",
    )
    parser.add_argument(
        "--ref", help="also run the gateway as it was at this git ref (exported), same settings: an A/B"
    )
    parser.add_argument("--out", type=Path, help="write JSON, Markdown and charts into this directory")
    docs = parser.add_mutually_exclusive_group()
    docs.add_argument("--docs", dest="docs", action="store_true", default=None, help="update docs/ too")
    docs.add_argument("--no-docs", dest="docs", action="store_false", help="never touch docs/")
    parser.add_argument(
        "--modbus-load",
        help="an independent load generator to cross-check the direct and ztgate figures with "
        "(default $ZTGATE_MODBUS_LOAD, else ../shared/bench/modbus_load.py beside the repository; "
        "skipped when missing)",
    )
    parser.add_argument("--no-crosscheck", action="store_true", help="no cross-check, even when one is found")
    args = parser.parse_args(argv)
    quick = args.quick
    args.repeat = args.repeat or (1 if quick else 5)
    # The EtherNet/IP and OPC UA rows run shorter by default (4 workloads x 2 paths more per repetition):
    # a few thousand requests per run are plenty for their medians and p99.
    args.proto_duration = args.duration or (2.0 if quick else 3.0)
    args.proto_warmup = args.warmup if args.warmup is not None else (0.5 if quick else 1.0)
    args.duration = args.duration or (2.0 if quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if quick else 1.5)
    if args.repeat < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("--repeat must be >= 1, --duration > 0, --warmup >= 0")
    if args.command == "report" and args.file is None:
        parser.error("report needs a results JSON file")
    known = list(dict.fromkeys((*PATHS, *PROTO_PATHS)))
    selected = [p.strip() for p in (args.only or ",".join(known)).split(",") if p.strip()]
    unknown = [p for p in selected if p not in known]
    if unknown:
        parser.error(f"unknown path(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    if args.no_modbus_proxy or (quick and args.only is None):
        selected = [p for p in selected if p != "modbus-proxy"]
    args.paths = [p for p in selected if p in PATHS]
    args.proto_paths = [
        p for p in PROTO_PATHS if p in selected and (args.only is not None or p in PROTO_DEFAULT_PATHS)
    ]
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    if any(p not in ALL_PROTOCOLS for p in protocols):
        parser.error(f"--protocols: choose from {', '.join(ALL_PROTOCOLS)}")
    chosen = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if any(w not in workloads for w in chosen):
        parser.error(f"--workloads: choose from {', '.join(workloads)}")
    # A protocol runs the chosen workloads that are its own; with none, it does not run.
    args.workload_list = [w for w in chosen if workloads[w] == "modbus" and "modbus" in protocols]
    args.proto_workloads = {
        p: [PROTO_WORKLOADS[w] for w in chosen if workloads[w] == p] for p in PROTOCOLS if p in protocols
    }
    args.proto_workloads = {p: w for p, w in args.proto_workloads.items() if w and args.proto_paths}
    args.modbus = bool(args.workload_list)
    if args.command == "run" and not args.modbus and not args.proto_workloads:
        parser.error("nothing to run: no workload of the chosen protocols and paths")
    try:
        connections, in_flight = (int(x) for x in args.pool.split(":"))
    except ValueError:
        parser.error("--pool must be MAX_CONNECTIONS:MAX_IN_FLIGHT, e.g. 1:64")
    args.pool_values = (connections, in_flight)
    # Only a complete run may replace the published figures.
    complete = args.ref is None and (
        not quick
        and args.only is None
        and args.command == "run"
        and set(chosen) == set(workloads)
        and set(protocols) == set(ALL_PROTOCOLS)
    )
    if args.docs is None:
        args.docs = complete and args.out is None
    return args


def _gateway_health(path: RunningPath) -> dict[str, Any]:
    """What the gateway itself says after the run: metrics and the audit trail it wrote."""
    return gateway_health(path.admin_port, path.audit_file)


def _paths_meta(running: list[RunningPath]) -> dict[str, Any]:
    return {
        p.name: {
            "label": p.label,
            "short": SHORT.get(p.name, p.name),
            "version": p.version,
            "upstream": p.upstream,
            "tls": p.tls,
        }
        for p in running
    }


def _run_modbus(
    args: argparse.Namespace,
    ctx: PathContext,
    server: Proc,
    crosscheck: Generator | None,
    results: dict[str, Any],
    raw: Path,
) -> None:
    """The Modbus rows: every path, interleaved repetitions, then py-spy on the gateway."""
    sup = ctx.sup
    running: list[RunningPath] = []
    for name in args.paths:
        try:
            path = start_path(name, ctx)
        except PathUnavailableError as exc:
            results["unavailable"][name] = str(exc)
            log(f"bench: {name} skipped: {exc}")
            continue
        running.append(path)
        pid = f"pid {path.proc.pid}" if path.proc else "no process"
        log(f"bench: {name} on 127.0.0.1:{path.port} ({pid}) - {path.label}")
    if args.ref:
        try:
            path = start_ztgate_ref(ctx, args.ref)
        except PathUnavailableError as exc:
            results["unavailable"][f"ztgate@{args.ref}"] = str(exc)
            log(f"bench: ztgate@{args.ref} skipped: {exc}")
        else:
            running.append(path)
            log(f"bench: {path.name} on 127.0.0.1:{path.port}: the gateway at {path.version}")
    results["paths"] = _paths_meta(running)
    results["samples"], checks = run_matrix(
        OWN_GENERATOR,
        running,
        server,
        list(ctx.workloads),
        repeat=args.repeat,
        warmup_s=args.warmup,
        duration_s=args.duration,
        crosscheck=crosscheck,
        log=log,
    )
    if crosscheck is not None:
        rows = summarize_crosscheck(results["samples"], checks)
        results["crosscheck"].update(samples=checks, rows=rows)
        for line in crosscheck_lines(results["crosscheck"]):
            log(line)
    gateway = next((p for p in running if p.name == "ztgate"), None)
    if gateway is not None:
        results["ztgate_after_run"] = _gateway_health(gateway)
        log(f"bench: ztgate after the run: {json.dumps(results['ztgate_after_run'])}")
        py_spy = find_py_spy()
        if not args.no_profile and not args.quick and py_spy is not None:
            results["profiles"] = {}
            for name in ("8x4", "1x1"):
                log(f"bench: profiling the gateway under the {name} workload (py-spy, own run)")
                results["profiles"][name] = profile_gateway(
                    py_spy, gateway, WORKLOADS[name], raw, duration_s=10
                )
        elif not args.no_profile and not args.quick:
            error = {"error": "py-spy is not installed (pip install -e '.[bench]')"}
            results["profiles"] = {"8x4": error}
    for path in running:
        if path.proc is not None:
            sup.stop(path.proc)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    need_modbus = args.command == "scale" or args.modbus
    crosscheck, found = find_independent(args.modbus_load)
    if args.no_crosscheck:
        crosscheck, found = None, "--no-crosscheck"
    raise_fd_limit(25_000)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    raw = run_dir(RAW_DIR, stamp)
    started = time.monotonic()
    workloads = [WORKLOADS[w] for w in args.workload_list] if args.command == "run" else []
    proto_workloads: dict[str, list[ProtoWorkload]] = args.proto_workloads if args.command == "run" else {}
    pool = Pool(max_connections=args.pool_values[0], max_in_flight=args.pool_values[1], queue_limit=128)
    results: dict[str, Any] = {
        "meta": {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": shlex.join(["python", "-m", "bench", *argv]),
            "machine": describe_machine(REPO),
            "raw_dir": str(raw.relative_to(REPO)),
            "settings": {
                "repeat": args.repeat,
                "warmup_s": args.warmup,
                "duration_s": args.duration,
                "rules": args.rules,
                "pool": pool.describe(),
                "aggregate_reads_s": 1.0,
                "workloads": args.workload_list if args.command == "run" else [],
                "protocols": (["modbus"] if workloads else []) + list(proto_workloads),
                "quick": args.quick,
                "load_generator": OWN_GENERATOR.name,
            },
        },
        "workloads": {
            w.name: {
                "label": w.label,
                "connections": w.connections,
                "depth": w.depth,
                "mix": w.mix,
                "address": w.address,
                "count": w.count,
            }
            for w in workloads
        },
        "paths": {},
        "unavailable": {},
        "samples": [],
        "protocols": {},
    }
    log(f"bench: raw output, logs and lab files in {raw.relative_to(REPO)}")
    try:
        with Supervisor(raw / "logs") as sup:
            lab = make_lab(raw / "lab")
            if need_modbus:
                server, server_port = start_server(sup)
                log(f"bench: fast Modbus server on 127.0.0.1:{server_port} (pid {server.pid})")
                ctx = PathContext(
                    sup=sup,
                    lab=lab,
                    server_port=server_port,
                    work=raw / "lab",
                    pool=pool,
                    rules=args.rules,
                    workloads=tuple(workloads),
                    allow_install=not args.quick,
                )
                if workloads:
                    if crosscheck is None:
                        log(f"bench: cross-check skipped: {found}")
                        results["crosscheck"] = {"skipped": found}
                    else:
                        log(f"bench: cross-check of the direct and ztgate paths with {found}")
                        results["crosscheck"] = {"generator": found}
                    _run_modbus(args, ctx, server, crosscheck, results, raw)
            ref: tuple[str, Path] | None = None
            if args.ref and proto_workloads:
                try:
                    ref = ref_tree(args.ref)
                except PathUnavailableError as exc:
                    log(f"bench: ztgate@{args.ref} skipped in the protocol rows: {exc}")
            for protocol, chosen in proto_workloads.items():
                log(f"bench: {PROTOCOLS[protocol]}: {', '.join(w.name for w in chosen)}")
                results["protocols"][protocol] = run_protocol(
                    protocol,
                    sup=sup,
                    lab=lab,
                    work=raw / "lab",
                    paths=args.proto_paths,
                    workloads=chosen,
                    repeat=args.repeat,
                    warmup_s=args.proto_warmup,
                    duration_s=args.proto_duration,
                    rules=args.rules,
                    log=log,
                    ref=ref,
                )
            if need_modbus and (args.command == "scale" or not args.skip_scale):
                settings = ScaleSettings(
                    quick=args.quick, warmup_s=args.warmup, duration_s=min(args.duration, 5.0)
                )
                results["scale"] = run_scale(ctx, settings, log)
    except KeyboardInterrupt:
        log("\nbench: interrupted; every process it started has been stopped")
        return 130
    except ProcessError as exc:
        log(f"bench: a process failed: {exc}")
        return 2
    except (RuntimeError, OSError) as exc:  # set-up: a policy that refuses the workload, a missing file
        log(f"bench: cannot run: {exc}")
        return 2
    results["meta"]["elapsed_s"] = round(time.monotonic() - started, 1)
    if results["samples"]:
        results["summary"] = summarize_samples(results["samples"])
    else:
        results["summary"] = {}
    summarize_protocols(results)
    results["targets"] = evaluate_targets(results)
    return write_outputs(results, args, raw)


def _write_charts(results: dict[str, Any], directory: Path) -> tuple[str | None, str | None]:
    """The Modbus chart and the EtherNet/IP + OPC UA chart, where there is something to draw; their
    file names (for the Markdown) or None."""
    names: list[str | None] = []
    for path, draw, has in (
        (directory / CHART.name, write_chart, bool(results.get("samples"))),
        (
            directory / PROTO_CHART.name,
            write_protocol_chart,
            any(p.get("samples") for p in (results.get("protocols") or {}).values()),
        ),
    ):
        error = draw(results, path) if has else "no samples"
        if error and has:
            log(f"bench: no chart {path.name}: {error}")
        names.append(None if error else path.name)
    return names[0], names[1]


def write_outputs(results: dict[str, Any], args: argparse.Namespace, raw: Path) -> int:
    out_dir: Path = args.out or raw
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    chart, proto_chart = _write_charts(results, out_dir)
    (out_dir / "performance-section.md").write_text(render_markdown(results, chart, proto_chart))
    log(f"bench: results in {json_path}")
    if args.docs:
        LATEST.write_text(json.dumps(results, indent=1, default=str) + "\n")
        chart, proto_chart = _write_charts(results, CHART.parent)
        update_doc(DOC, render_markdown(results, chart, proto_chart))
        log(
            f"bench: updated {LATEST.relative_to(REPO)}, {DOC.relative_to(REPO)}, "
            f"{CHART.relative_to(REPO)} and {PROTO_CHART.relative_to(REPO)}"
        )
    log("")
    for target in results["targets"]:
        verdict = {True: "pass", False: "MISSED", None: "not measured"}[target["pass"]]
        log(f"  {verdict:<12} {target['target']}: {target['shown']} (limit {target['limit']})")
    bad = [t for t in results["targets"] if t["target"].startswith("no errors") and t["pass"] is False]
    return 1 if bad else 0


def report(args: argparse.Namespace) -> int:
    results = json.loads(args.file.read_text())
    if results.get("protocols") and any("summary" not in p for p in results["protocols"].values()):
        summarize_protocols(results)
    results["targets"] = evaluate_targets(results)
    out_dir: Path = args.out or args.file.parent
    chart, proto_chart = _write_charts(results, CHART.parent if args.docs else out_dir)
    section = render_markdown(results, chart, proto_chart)
    if args.docs:
        update_doc(DOC, section)
        LATEST.write_text(json.dumps(results, indent=1, default=str) + "\n")
        log(
            f"bench: updated {DOC.relative_to(REPO)}, {CHART.relative_to(REPO)}, "
            f"{PROTO_CHART.relative_to(REPO)} and {LATEST.relative_to(REPO)}"
        )
    else:
        (out_dir / "performance-section.md").write_text(section)
        log(f"bench: wrote {out_dir / 'performance-section.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["fairness"]:  # its own measurement and options (bench/fairness.py)
        from bench import fairness

        return fairness.run(argv[1:])
    if argv[:1] == ["opcua-memory"]:  # its own measurement and options (bench/opcua_memory.py)
        from bench import opcua_memory

        return opcua_memory.run(argv[1:])
    if argv[:1] == ["locks"]:  # its own measurement and options (bench/locks.py)
        from bench import locks

        return locks.run(argv[1:])
    if argv[:1] == ["audit-sinks"]:  # the syslog-TLS sink next to the file sink (bench/audit_sinks.py)
        from bench import audit_sinks

        return audit_sinks.run(argv[1:])
    if argv[:1] == ["center"]:  # its own measurement and options (bench/center.py)
        from bench import center

        return center.run(argv[1:])
    args = parse_args(argv)
    if args.command == "report":
        return report(args)
    return run(args, argv)


if __name__ == "__main__":
    sys.exit(main())
