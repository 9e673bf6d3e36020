"""The EtherNet/IP and OPC UA rows: real clients (pycomm3, asyncua) against ztgate's simulators, direct
and through agent -> gateway, in interleaved repetitions.

Per protocol, one lab on loopback, on kernel-chosen ports:

- the simulator, ``python -m gateway sim enip|opcua --static --listen 127.0.0.1:0`` (values never change,
  so every reply can be checked);
- ``direct``: the clients connect to the simulator;
- ``ztgate``: the clients connect to an agent (``python -m gateway agent``: a plain local listener, the
  bench identity's mutual-TLS overlay connection to the gateway, SNI = the asset), and the gateway
  (``python -m gateway gateway``, audit to a file with read aggregation, metrics on) decides every request
  against the policy and re-originates it to the simulator - the deployment of docs/architecture.md, as
  an HMI tool sees it;
- ``ztgate-mtls`` (OPC UA only): the same gateway, reached by clients that speak the overlay themselves
  (mutual TLS 1.3 as the bench identity, SNI = the asset), as the Modbus rows' load generator does: the
  gateway alone between client and server. pycomm3 has no way to put TLS under its socket, so
  EtherNet/IP has no such row;
- ``ztgate-pure`` (only when ``--only`` names it): the ``ztgate`` path with a gateway of its own running
  the same sources as pure Python (:func:`bench.paths.pure_tree`), interleaved with the compiled one: an
  A/B of the two builds;
- ``stunnel-client`` (only when ``--only`` names it): the ``ztgate`` path's gateway, reached through
  stunnel in client mode doing the agent's job (the bench identity, SNI = the asset, TLS 1.3 only, the
  gateway's chain and name checked): the agent against a relay in C on the same row, its CPU in the
  agent's column.

The load is :mod:`bench.proto_load` (one worker process per client, one request in flight each). The
figures per run are those of the Modbus rows, with the CPU of the gateway and of the agent apart.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench.lab import (
    ENIP_ASSET,
    OPCUA_ASSET,
    Lab,
    enip_policy_text,
    opcua_policy_text,
    write_agent_config,
    write_gateway_config,
)
from bench.loadgen import REPO
from bench.paths import (
    PURE_DIR,
    gateway_health,
    pure_tree,
    start_gateway_process,
    start_stunnel_process,
    stunnel_client_service,
)
from bench.procs import Proc, ProcessError, Supervisor, port_from_log
from gateway.build_info import current_build

__all__ = [
    "PROTOCOLS",
    "PROTO_DEFAULT_PATHS",
    "PROTO_PATHS",
    "PROTO_WORKLOADS",
    "ProtoPath",
    "ProtoWorkload",
    "run_protocol",
]

Log = Callable[[str], None]
Sample = dict[str, Any]

PROTOCOLS: dict[str, str] = {"enip": "EtherNet/IP (CIP)", "opcua": "OPC UA"}
PROTO_PATHS = ("direct", "ztgate", "ztgate-mtls", "ztgate-pure", "stunnel-client")
# What runs unless --only names paths: the pure build's row is an A/B for who works on the compiled
# modules, and stunnel-client one for who works on the agent, not figures of the page.
PROTO_DEFAULT_PATHS = ("direct", "ztgate", "ztgate-mtls")
# Protocols whose bench client can speak the overlay itself, and the asset it names in SNI.
OVERLAY_CLIENTS: dict[str, str] = {"opcua": OPCUA_ASSET}

ENIP_TAGS_5 = ("Setpoint", "Tank1_Level", "Recipe[3]", "Mode", "Program:Main.Step")
OPCUA_NODES_10 = tuple(
    f"Plant.Line1.Tank1.{name}"
    for name in (
        "Level",
        "Temperature",
        "Pressure",
        "Flow",
        "ScanCounter",
        "PumpRunning",
        "InletOpen",
        "DrainOpen",
        "AlarmActive",
        "Setpoint",
    )
)


@dataclass(frozen=True)
class ProtoWorkload:
    name: str
    protocol: str
    label: str
    workers: int  # client processes, one request in flight each
    items: tuple[str, ...]  # read in one request
    unit: str = "request"  # what one round trip is called in the tables


PROTO_WORKLOADS: dict[str, ProtoWorkload] = {
    w.name: w
    for w in (
        ProtoWorkload(
            "enip-1tag",
            "enip",
            'pycomm3 LogixDriver.read("Setpoint"): one Read Tag per call; 4 client processes x 1 in flight',
            4,
            ("Setpoint",),
        ),
        ProtoWorkload(
            "enip-5tags",
            "enip",
            "pycomm3 read of 5 tags in one call: one Multiple Service Packet of 5 Read Tags; 4 x 1",
            4,
            ENIP_TAGS_5,
        ),
        ProtoWorkload(
            "opcua-1x1",
            "opcua",
            "asyncua Read of 10 nodes (Value) in one ReadRequest, 1 client x 1 in flight",
            1,
            OPCUA_NODES_10,
            unit="Read",
        ),
        ProtoWorkload(
            "opcua-4x1",
            "opcua",
            "asyncua Read of 10 nodes in one ReadRequest, 4 client processes x 1 in flight",
            4,
            OPCUA_NODES_10,
            unit="Read",
        ),
    )
}


@dataclass
class ProtoPath:
    name: str  # one of PROTO_PATHS
    label: str
    port: int  # where the clients connect
    watch: dict[str, int]  # processes whose CPU is read: server, gateway, agent
    procs: list[Proc] = field(default_factory=list)  # started for this path (stopped with it)
    admin_port: int | None = None
    audit_file: Path | None = None
    overlay_port: int | None = None  # the gateway's overlay listener
    options: dict[str, str] = field(default_factory=dict)  # the clients' --option KEY=VALUE


def start_simulator(sup: Supervisor, protocol: str) -> tuple[Proc, int]:
    argv = [sys.executable, "-m", "gateway", "sim", protocol, "--static", "--listen", "127.0.0.1:0"]
    proc = sup.spawn(f"sim-{protocol}", argv, cwd=REPO)
    return proc, port_from_log(proc, r"listening on (?:opc\.tcp://)?127\.0\.0\.1:(\d+)")


def start_ztgate_path(
    sup: Supervisor,
    lab: Lab,
    work: Path,
    protocol: str,
    server: Proc,
    server_port: int,
    rules: int,
    *,
    pure: bool = False,
    ref: tuple[str, Path] | None = None,
) -> ProtoPath:
    """Gateway + agent for the protocol's asset; the policy is checked by the gateway at start-up.
    ``pure``: the gateway runs the working tree's sources without their compiled modules. ``ref``:
    (commit, exported tree) to run both from instead of the working tree (path ``ztgate@commit``)."""
    tag = "" if ref is None else f"@{ref[0][:8]}"
    if pure:
        name = f"ztgate-pure-{protocol}"
        src = pure_tree(PURE_DIR.with_name(name))
        if current_build(src).compiled:
            raise RuntimeError(f"{src} still holds compiled modules")
    else:
        name = f"ztgate-{protocol}" + ("" if ref is None else f"-{ref[0][:8]}")
        src = REPO if ref is None else ref[1]
    policy = work / f"{name}-policy.toml"
    if protocol == "enip":
        asset = ENIP_ASSET
        links = max(w.workers for w in PROTO_WORKLOADS.values() if w.protocol == "enip")
        policy.write_text(enip_policy_text(rules, server_port, links))
        described = f"{rules:,}-rule policy, {links} upstream sessions"
    else:
        asset = OPCUA_ASSET
        policy.write_text(opcua_policy_text(rules, server_port))
        described = f"{rules:,}-rule policy"
    check = subprocess.run(
        [sys.executable, "-m", "gateway", "policy", "check", str(policy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    if check.returncode != 0:
        raise RuntimeError(
            f"the bench's {protocol} policy is refused:\n{(check.stdout + check.stderr)[-1500:]}"
        )
    audit = work / f"{name}-audit.jsonl"
    config = write_gateway_config(lab, name, policy, audit_file=audit, aggregate_reads_s=1.0)
    gateway, overlay, admin = start_gateway_process(sup, name, config, src=src)
    # A ref from before the agent pinned the gateway's identity refuses the key: leave it out for that one.
    pin = ref is None or '"gateway_id"' in (src / "gateway" / "config.py").read_text()
    agent_config = write_agent_config(lab, f"agent-{name}", overlay, asset, protocol, pin_gateway=pin)
    agent = sup.spawn(
        f"agent-{name}",
        [sys.executable, "-m", "gateway", "agent", "--config", str(agent_config)],
        cwd=REPO if pure else src,  # the pure path compares gateways: the same agent as the others
    )
    port = port_from_log(agent, r"127\.0\.0\.1:(\d+) -> ")
    build = "compiled" if current_build(src).compiled else "pure Python"
    return ProtoPath(
        "ztgate-pure" if pure else f"ztgate{tag}",
        f"agent -> ztgate{tag} ({build}; mutual TLS 1.3, {described}, audit + metrics)",
        port,
        {"server": server.pid, "gateway": gateway.pid, "agent": agent.pid},
        [gateway, agent],
        admin_port=admin,
        audit_file=audit,
        overlay_port=overlay,
    )


def overlay_client_path(lab: Lab, via_agent: ProtoPath, protocol: str) -> ProtoPath:
    """The gateway of ``via_agent``, reached straight over its overlay by clients with the bench identity."""
    assert via_agent.overlay_port is not None
    asset = OVERLAY_CLIENTS[protocol]
    label = via_agent.label.replace("agent -> ", "client with its own identity -> ", 1)
    return ProtoPath(
        via_agent.name.replace("ztgate", "ztgate-mtls", 1),
        label,
        via_agent.overlay_port,
        {k: v for k, v in via_agent.watch.items() if k != "agent"},
        admin_port=via_agent.admin_port,
        audit_file=via_agent.audit_file,
        overlay_port=via_agent.overlay_port,
        options={
            "overlay_cert": str(lab.client_cert),
            "overlay_key": str(lab.client_key),
            "overlay_ca": str(lab.ca),
            "overlay_asset": asset,
        },
    )


def stunnel_client_path(
    sup: Supervisor, lab: Lab, work: Path, via_agent: ProtoPath, protocol: str
) -> ProtoPath:
    """The gateway of ``via_agent``, reached through stunnel in client mode in the agent's place. The
    gateway's certificate names ``localhost``, the name stunnel checks (the agent checks its SPIFFE id)."""
    assert via_agent.overlay_port is not None
    asset = ENIP_ASSET if protocol == "enip" else OPCUA_ASSET
    service = stunnel_client_service(lab, via_agent.overlay_port, sni=asset, check_host="localhost")
    proc, port = start_stunnel_process(sup, work, f"stunnel-client-{protocol}", service)
    return ProtoPath(
        "stunnel-client",
        via_agent.label.replace("agent -> ", "stunnel client mode (its CPU in the agent's column) -> ", 1),
        port,
        {**via_agent.watch, "agent": proc.pid},
        [proc],
        admin_port=via_agent.admin_port,
        audit_file=via_agent.audit_file,
        overlay_port=via_agent.overlay_port,
    )


def _sample(path: ProtoPath, workload: ProtoWorkload, report: dict[str, Any]) -> Sample:
    processes = report.get("processes") or {}

    def cpu(name: str, key: str = "cpu_us_per_request") -> float | None:
        entry = processes.get(name)
        return None if not entry else entry.get(key)

    gateway, agent = cpu("gateway"), cpu("agent")
    latency = report.get("latency_us", {})
    return {
        "path": path.name,
        "workload": workload.name,
        "req_per_s": report.get("req_per_s"),
        "p50_us": latency.get("p50"),
        "p90_us": latency.get("p90"),
        "p99_us": latency.get("p99"),
        "max_us": latency.get("max"),
        "gateway_cpu_us_per_req": gateway,
        "gateway_user_us_per_req": cpu("gateway", "user_us_per_request"),
        "gateway_sys_us_per_req": cpu("gateway", "sys_us_per_request"),
        "gateway_cpu_util_pct": cpu("gateway", "cpu_util_pct"),
        "gateway_reads_per_req": cpu("gateway", "reads_per_request"),
        "gateway_writes_per_req": cpu("gateway", "writes_per_request"),
        "agent_cpu_us_per_req": agent,
        "agent_cpu_util_pct": cpu("agent", "cpu_util_pct"),
        "agent_reads_per_req": cpu("agent", "reads_per_request"),
        "agent_writes_per_req": cpu("agent", "writes_per_request"),
        "path_cpu_us_per_req": None if gateway is None or agent is None else round(gateway + agent, 2),
        "server_cpu_us_per_req": cpu("server"),
        "loadgen_cpu_us_per_req": report.get("loadgen_cpu_us_per_request"),
        "host_cpu_busy_pct": report.get("host_cpu_busy_pct"),
        "requests": report.get("requests"),
        "window_s": report.get("window_s"),
        "errors": int(report.get("errors", 0)),
        "mismatches": int(report.get("mismatches", 0)),
        "exception_responses": 0,  # refusals are errors here (the tag's or node's bad status)
        "error_detail": report.get("problems", {}),
    }


def measure(path: ProtoPath, workload: ProtoWorkload, *, warmup_s: float, duration_s: float) -> Sample:
    argv = [sys.executable, "-m", "bench.proto_load", workload.protocol, "--port", str(path.port)]
    argv += ["--workers", str(workload.workers), "--warmup", str(warmup_s), "--duration", str(duration_s)]
    for item in workload.items:
        argv += ["--item", item]
    for key, value in path.options.items():
        argv += ["--option", f"{key}={value}"]
    for name, pid in path.watch.items():
        argv += ["--pid", f"{name}={pid}"]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=warmup_s + duration_s + 120, check=False, cwd=REPO
        )
    except subprocess.TimeoutExpired as exc:
        return {"path": path.name, "workload": workload.name, "failed": f"no report in {exc.timeout:g} s"}
    lines = done.stdout.strip().splitlines()
    try:
        report: dict[str, Any] = json.loads(lines[-1])
    except (json.JSONDecodeError, IndexError):
        reason = f"proto_load exited with {done.returncode}: {done.stderr.strip()[-600:]}"
        return {"path": path.name, "workload": workload.name, "failed": reason}
    if "failed" in report:
        return {"path": path.name, "workload": workload.name, "failed": str(report["failed"])[:600]}
    return _sample(path, workload, report)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def sample_line(sample: Sample) -> str:
    if "failed" in sample:
        return f"{sample['path']:<8} FAILED: {sample['failed'].splitlines()[0][:200]}"
    bad = sample["errors"] + sample["mismatches"]
    detail = f"errors {bad}: {next(iter(sample['error_detail']), '')[:80]}" if bad else "ok"
    return (
        f"{sample['path']:<8} {_fmt(sample['req_per_s'], ',.0f'):>8} req/s  "
        f"p50 {_fmt(sample['p50_us'], ',.1f'):>8} µs  p99 {_fmt(sample['p99_us'], ',.1f'):>9} µs  "
        f"gateway {_fmt(sample['gateway_cpu_us_per_req'], '.1f'):>6} + agent "
        f"{_fmt(sample['agent_cpu_us_per_req'], '.1f'):>6} µs/req  {detail}"
    )


def _start_path(
    out: dict[str, Any], protocol: str, name: str, start: Callable[[], ProtoPath], log: Callable[[str], None]
) -> ProtoPath | None:
    """``start()``, or None with the reason kept under ``out["unavailable"][name]``: the other paths
    still run."""
    try:
        return start()
    except (ProcessError, RuntimeError, OSError) as exc:
        out["unavailable"][name] = str(exc).strip()[:1500]
        log(f"bench: {protocol}: {name} skipped: {str(exc).splitlines()[0]}")
        return None


def run_protocol(
    protocol: str,
    *,
    sup: Supervisor,
    lab: Lab,
    work: Path,
    paths: Sequence[str],
    workloads: Sequence[ProtoWorkload],
    repeat: int,
    warmup_s: float,
    duration_s: float,
    rules: int,
    log: Log = print,
    ref: tuple[str, Path] | None = None,
) -> dict[str, Any]:
    """One protocol's lab and its interleaved repetitions; the results' ``protocols.<protocol>`` part
    (summarized later, by :func:`bench.report.summarize_protocol`). ``ref``: (commit, exported tree) of
    a second gateway and agent whose ztgate paths (``ztgate@commit``, ``ztgate-mtls@commit``) run
    interleaved with the others: an A/B in one run."""
    out: dict[str, Any] = {
        "name": PROTOCOLS[protocol],
        "paths": {},
        "workloads": {
            w.name: {"label": w.label, "workers": w.workers, "items": list(w.items), "unit": w.unit}
            for w in workloads
        },
        "samples": [],
        "unavailable": {},
        "settings": {"repeat": repeat, "warmup_s": warmup_s, "duration_s": duration_s},
    }
    started: list[Proc] = []
    try:
        try:
            server, server_port = start_simulator(sup, protocol)
        except (ProcessError, OSError) as exc:  # the other protocols' rows still run
            out["unavailable"]["simulator"] = str(exc).strip()[:1500]
            log(f"bench: {protocol}: no simulator, no rows: {str(exc).splitlines()[0]}")
            return out
        started.append(server)
        log(f"bench: {protocol}: simulator on 127.0.0.1:{server_port} (pid {server.pid})")
        running: list[ProtoPath] = []
        gateway_path: ProtoPath | None = None
        ref_path: ProtoPath | None = None
        for name in paths:
            if name == "direct":
                running.append(
                    ProtoPath(
                        "direct", f"direct to ztgate sim {protocol}", server_port, {"server": server.pid}
                    )
                )
                continue
            if name == "ztgate-mtls" and protocol not in OVERLAY_CLIENTS:
                continue
            if name == "ztgate-pure":  # a gateway (and agent) of its own
                pure_path = _start_path(
                    out,
                    protocol,
                    name,
                    partial(
                        start_ztgate_path, sup, lab, work, protocol, server, server_port, rules, pure=True
                    ),
                    log,
                )
                if pure_path is None:
                    continue
                started.extend(pure_path.procs)
                running.append(pure_path)
                log(f"bench: {protocol}: {name} on 127.0.0.1:{pure_path.port} - {pure_path.label}")
                continue
            if gateway_path is None:  # one gateway (and agent) serves every ztgate path
                gateway_path = _start_path(
                    out,
                    protocol,
                    "ztgate",
                    partial(start_ztgate_path, sup, lab, work, protocol, server, server_port, rules),
                    log,
                )
                if gateway_path is None:
                    break
                started.extend(gateway_path.procs)
            if name == "stunnel-client":
                stunnel = _start_path(
                    out,
                    protocol,
                    name,
                    partial(stunnel_client_path, sup, lab, work, gateway_path, protocol),
                    log,
                )
                if stunnel is None:
                    continue
                path = stunnel
                started.extend(path.procs)
                running.append(path)
                log(f"bench: {protocol}: {name} on 127.0.0.1:{path.port} - {path.label}")
                continue
            path = gateway_path if name == "ztgate" else overlay_client_path(lab, gateway_path, protocol)
            running.append(path)
            log(f"bench: {protocol}: {name} on 127.0.0.1:{path.port} - {path.label}")
            if ref is None:
                continue
            if ref_path is None:
                ref_path = _start_path(
                    out,
                    protocol,
                    f"ztgate@{ref[0][:8]}",
                    partial(start_ztgate_path, sup, lab, work, protocol, server, server_port, rules, ref=ref),
                    log,
                )
                if ref_path is None:
                    ref = None
                    continue
                started.extend(ref_path.procs)
            path = ref_path if name == "ztgate" else overlay_client_path(lab, ref_path, protocol)
            running.append(path)
            log(f"bench: {protocol}: {path.name} on 127.0.0.1:{path.port} - {path.label}")
        out["paths"] = {p.name: {"label": p.label, "short": p.name} for p in running}
        out["samples"] = _interleave(running, workloads, repeat, warmup_s, duration_s, started, log)
        if gateway_path is not None:
            out["ztgate_after_run"] = gateway_health(gateway_path.admin_port, gateway_path.audit_file)
            log(f"bench: {protocol}: ztgate after the run: {json.dumps(out['ztgate_after_run'])}")
    finally:
        for proc in reversed(started):
            sup.stop(proc)
    return out


def _interleave(
    paths: Sequence[ProtoPath],
    workloads: Sequence[ProtoWorkload],
    repeat: int,
    warmup_s: float,
    duration_s: float,
    procs: Sequence[Proc],
    log: Log,
) -> list[Sample]:
    samples: list[Sample] = []
    if not paths:
        return samples
    total = repeat * len(workloads) * len(paths)
    done = 0
    clock = time.monotonic()
    for rep in range(repeat):
        shift = rep % len(paths)
        order = [*paths[shift:], *paths[:shift]]
        for workload in workloads:
            log(f"[{workload.protocol} repetition {rep + 1}/{repeat}] {workload.name}: {workload.label}")
            for path in order:
                done += 1
                dead = next((p for p in procs if not p.alive()), None)
                if dead is not None:
                    sample: Sample = {
                        "path": path.name,
                        "workload": workload.name,
                        "failed": f"{dead.name} exited: {dead.log_tail(3)}",
                    }
                else:
                    sample = measure(path, workload, warmup_s=warmup_s, duration_s=duration_s)
                sample["rep"] = rep
                samples.append(sample)
                eta = (time.monotonic() - clock) / done * (total - done)
                log(f"  {sample_line(sample)}   [{done}/{total}, ~{eta:.0f} s left]")
                time.sleep(0.2)
    return samples
