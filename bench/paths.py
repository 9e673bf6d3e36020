"""The paths a request can take to the fast Modbus server, each started as its own process on loopback:

- ``direct``: no proxy; the floor.
- ``haproxy``: Debian's HAProxy in tcp mode (``-db``, foreground): a plain TCP relay, no TLS, no parsing.
- ``stunnel``: Debian's stunnel4 with mutual TLS 1.3 (client certificate required and verified against
  the same CA as ztgate's): the "stunnel in front of a firewall" answer, without the firewall.
- ``ztgate``: the gateway, ``python -m gateway gateway --config ...``: mutual TLS 1.3, a 1,000-rule
  policy, every request parsed, decided, re-encoded on a shared upstream pool, audited (allowed reads
  aggregated per second) and counted in metrics.
- ``modbus-proxy``: the PyPI package (optional): a plain Python Modbus TCP proxy without TLS or policy.
- ``agent`` and ``stunnel-client``: the HMI side instead of the gateway's. The load generator speaks
  plain Modbus TCP to a local port; ztgate's agent, or stunnel in client mode, carries it over mutual
  TLS 1.3 (the bench identity, SNI = the asset) to a stunnel server in front of the server. The CPU
  these rows report is the relay's.

HAProxy and stunnel open one upstream connection per client connection; ztgate and modbus-proxy share
upstream connections between clients (ztgate: the asset's pool from the policy).

The EtherNet/IP and OPC UA rows have paths of their own (direct, and agent -> gateway): see
:mod:`bench.proto_rows`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

from bench.lab import (
    ASSET,
    Lab,
    Pool,
    check_policy_allows,
    policy_text,
    write_agent_config,
    write_gateway_config,
)
from bench.loadgen import REPO, Workload
from bench.procs import Proc, ProcessError, Supervisor, free_port, port_from_log, wait_listening
from gateway.build_info import current_build

__all__ = [
    "PATHS",
    "PathContext",
    "PathUnavailableError",
    "RunningPath",
    "gateway_health",
    "ref_tree",
    "start_agent",
    "start_gateway_process",
    "start_path",
    "start_stunnel_client",
    "start_stunnel_process",
    "start_ztgate",
    "start_ztgate_pure",
    "stunnel_client_service",
]

MODBUS_PROXY_VERSION = "0.8.0"
PURE_DIR = REPO / ".cache" / "bench" / "ztgate-pure"  # git-ignored
VENDOR_DIR = REPO / ".cache" / "bench" / "modbus-proxy"  # git-ignored


class PathUnavailableError(RuntimeError):
    """The path cannot run on this machine (a program is missing); the run goes on without it."""


@dataclass(frozen=True)
class PathContext:
    sup: Supervisor
    lab: Lab
    server_port: int
    work: Path
    pool: Pool
    rules: int
    workloads: tuple[Workload, ...]
    allow_install: bool = True  # may pip-install modbus-proxy into .cache/bench/modbus-proxy


@dataclass
class RunningPath:
    name: str
    label: str
    port: int
    proc: Proc | None
    version: str
    upstream: str  # how the path reaches the server
    tls_args: list[str] = field(default_factory=list)
    admin_port: int | None = None
    audit_file: Path | None = None

    @property
    def tls(self) -> bool:
        return bool(self.tls_args)


def _version(argv: list[str], pattern: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = re.search(pattern, done.stdout + done.stderr)
    return match.group(1) if match else "unknown"


def _start_on_free_port(
    sup: Supervisor,
    name: str,
    argv_for_port: Callable[[int], list[str]],
    *,
    env: dict[str, str] | None = None,
    attempts: int = 3,
) -> tuple[Proc, int]:
    """For programs that cannot listen on port 0: probe a free port, start, retry if it was taken."""
    last: ProcessError | None = None
    for _ in range(attempts):
        port = free_port()
        proc = sup.spawn(name, argv_for_port(port), env=env)
        try:
            wait_listening(proc, port=port, timeout_s=10)
            return proc, port
        except ProcessError as exc:
            last = exc
            sup.stop(proc)
    assert last is not None
    raise last


# ------------------------------------------------------------------------------------------- paths


def start_direct(ctx: PathContext) -> RunningPath:
    return RunningPath("direct", "direct to the server", ctx.server_port, None, "-", "-")


def start_haproxy(ctx: PathContext) -> RunningPath:
    exe = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if exe is None:
        raise PathUnavailableError("haproxy is not installed (apt-get install haproxy)")

    def config(port: int) -> list[str]:
        path = ctx.work / "haproxy.cfg"
        path.write_text(
            f"""global
    maxconn 4096

defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s

frontend modbus
    bind 127.0.0.1:{port}
    default_backend server

backend server
    server s1 127.0.0.1:{ctx.server_port}
"""
        )
        return [exe, "-db", "-f", str(path)]

    proc, port = _start_on_free_port(ctx.sup, "haproxy", config)
    version = _version([exe, "-v"], r"HAProxy version (\S+)")
    return RunningPath(
        "haproxy", "HAProxy, tcp mode", port, proc, version, "1 upstream connection per client connection"
    )


def _stunnel_exe() -> str:
    exe = shutil.which("stunnel4") or shutil.which("stunnel")
    if exe is None:
        raise PathUnavailableError("stunnel is not installed (apt-get install stunnel4)")
    return exe


def start_stunnel_process(
    sup: Supervisor, work: Path, name: str, service: Callable[[int], str]
) -> tuple[Proc, int]:
    """stunnel in the foreground with one service, ``service(port)``: its lines after the header."""
    exe = _stunnel_exe()

    def config(port: int) -> list[str]:
        path = work / f"{name}.conf"
        path.write_text(f"foreground = yes\npid =\nsyslog = no\ndebug = 4\n\n[{name}]\n{service(port)}")
        return [exe, str(path)]

    return _start_on_free_port(sup, name, config)


def _stunnel_server(ctx: PathContext, name: str) -> tuple[Proc, int]:
    """stunnel terminating mutual TLS in front of the server."""
    lab = ctx.lab
    # Same TLS terms as the gateway: TLS 1.3 only, client certificate required and its chain verified
    # against the ztgate CA, no session tickets, no Nagle on either side.
    return start_stunnel_process(
        ctx.sup,
        ctx.work,
        name,
        lambda port: (
            f"""accept = 127.0.0.1:{port}
connect = 127.0.0.1:{ctx.server_port}
cert = {lab.server_cert}
key = {lab.server_key}
CAfile = {lab.ca}
verifyChain = yes
requireCert = yes
sslVersionMin = TLSv1.3
options = NO_TICKET
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
"""
        ),
    )


def _stunnel_version() -> str:
    return _version([_stunnel_exe(), "-version"], r"stunnel (\S+)")


def start_stunnel(ctx: PathContext) -> RunningPath:
    proc, port = _stunnel_server(ctx, "stunnel")
    return RunningPath(
        "stunnel",
        "stunnel, mutual TLS 1.3",
        port,
        proc,
        _stunnel_version(),
        "1 upstream connection per client connection",
        tls_args=ctx.lab.client_tls_args(),
    )


# The HMI side: a plain local port relayed over mutual TLS to a TLS end in front of the server, by the
# agent or by stunnel in client mode. The load generator speaks plain Modbus TCP to the relay; the far end
# is a stunnel server of its own per path (C, threads: never the bottleneck), so the process measured,
# the path's, is the relay alone.
RELAY_UPSTREAM = "1 TLS connection per local connection, to a stunnel server in front of the server"


def start_agent(ctx: PathContext) -> RunningPath:
    """``python -m gateway agent`` with the bench identity, relaying a local port to the TLS end (which
    presents the gateway's certificate, so the agent's pin on the gateway's SPIFFE id holds)."""
    _, far_port = _stunnel_server(ctx, "agent-tls-end")
    config = write_agent_config(ctx.lab, "agent-modbus", far_port, ASSET, "modbus")
    proc = ctx.sup.spawn(
        "agent-modbus", [sys.executable, "-m", "gateway", "agent", "--config", str(config)], cwd=REPO
    )
    port = port_from_log(proc, r"127\.0\.0\.1:(\d+) -> ")
    return RunningPath(
        "agent",
        "ztgate agent (not compiled): plain local port -> mutual TLS 1.3 (CPU: the agent's)",
        port,
        proc,
        _ztgate_version(),
        RELAY_UPSTREAM,
    )


def stunnel_client_service(lab: Lab, far_port: int, *, sni: str, check_host: str) -> Callable[[int], str]:
    """stunnel in client mode as the agent runs: a plain local port carried over mutual TLS 1.3 as the
    bench identity to ``far_port``, SNI ``sni``, the far end's chain verified and its name checked."""
    return lambda port: (
        f"""client = yes
accept = 127.0.0.1:{port}
connect = 127.0.0.1:{far_port}
cert = {lab.client_cert}
key = {lab.client_key}
CAfile = {lab.ca}
verifyChain = yes
checkHost = {check_host}
sni = {sni}
sslVersionMin = TLSv1.3
options = NO_TICKET
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
"""
    )


def start_stunnel_client(ctx: PathContext) -> RunningPath:
    """stunnel in client mode doing the agent's job: the bench identity's certificate, SNI = the asset,
    the far end's chain verified against the CA and its name checked."""
    _, far_port = _stunnel_server(ctx, "stunnel-client-tls-end")
    proc, port = start_stunnel_process(
        ctx.sup,
        ctx.work,
        "stunnel-client",
        stunnel_client_service(ctx.lab, far_port, sni=ASSET, check_host=ASSET),
    )
    return RunningPath(
        "stunnel-client",
        "stunnel client mode: plain local port -> mutual TLS 1.3 (CPU: stunnel's)",
        port,
        proc,
        _stunnel_version(),
        RELAY_UPSTREAM,
    )


def _get_json(url: str, timeout_s: float = 2.0) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        body: dict[str, object] = json.loads(response.read())
        return body


def start_gateway_process(
    sup: Supervisor, name: str, config: Path, *, src: Path = REPO
) -> tuple[Proc, int, int]:
    """``python -m gateway gateway --config CONFIG`` (the code in ``src``); returns the process, its overlay
    port and its admin port, once ``/readyz`` says every asset's device is connected."""
    proc = sup.spawn(name, [sys.executable, "-m", "gateway", "gateway", "--config", str(config)], cwd=src)
    ports = wait_listening(proc, count=2, timeout_s=30)
    overlay: int | None = None
    deadline = time.monotonic() + 10
    while overlay is None:
        # The last such line (a log may be appended to; asyncua logs a lot after it at start-up).
        found = re.findall(r"overlay on 127\.0\.0\.1:(\d+)", proc.log_tail(400))
        if found and int(found[-1]) in ports:
            overlay = int(found[-1])
        elif time.monotonic() > deadline:
            raise ProcessError(
                f"{name}: cannot tell the overlay port among {sorted(ports)}:\n{proc.log_tail()}"
            )
        else:
            time.sleep(0.05)
    admin = next(iter(ports - {overlay}))
    # Ready = the upstream pool is connected to the server.
    deadline = time.monotonic() + 15
    while True:
        proc.check_alive()
        try:
            if _get_json(f"http://127.0.0.1:{admin}/readyz").get("ready") is True:
                break
        except (OSError, urllib.error.URLError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise ProcessError(f"{name}: /readyz never said ready:\n{proc.log_tail()}")
        time.sleep(0.1)
    return proc, overlay, admin


def start_ztgate(
    ctx: PathContext,
    *,
    name: str = "ztgate",
    pool: Pool | None = None,
    rules: int | None = None,
    aggregate_reads_s: float = 1.0,
    src: Path = REPO,
    path_name: str = "ztgate",
    version: str | None = None,
    gateway_extra: str = "",
    audit_sinks: str | None = None,
) -> RunningPath:
    """A gateway process with a generated policy and config (see the module docstring), running the
    code in ``src`` (the working tree, or an exported git ref); ``gateway_extra``: more ``[gateway]``
    lines."""
    pool = pool or ctx.pool
    rules = rules or ctx.rules
    lab = ctx.lab
    policy = ctx.work / f"{name}-policy.toml"
    policy.write_text(policy_text(rules, ctx.server_port, pool))
    check_policy_allows(policy, [(w.mix, w.address, w.count) for w in ctx.workloads])
    audit = ctx.work / f"{name}-audit.jsonl"
    config = write_gateway_config(
        lab,
        name,
        policy,
        audit_file=audit,
        aggregate_reads_s=aggregate_reads_s,
        gateway_extra=gateway_extra,
        audit_sinks=audit_sinks,
    )
    proc, overlay, admin = start_gateway_process(ctx.sup, name, config, src=src)
    # What `python -m gateway` imports from src: compiled modules beside the sources, or none.
    build = "compiled" if current_build(src).compiled else "pure Python"
    label = f"ztgate ({build}), mutual TLS 1.3, {rules:,}-rule policy, audit + metrics"
    return RunningPath(
        path_name,
        label if path_name == "ztgate" else f"{path_name}: {label}",
        overlay,
        proc,
        version or _ztgate_version(),
        f"shared pool: {pool.describe()}",
        tls_args=lab.client_tls_args(),
        admin_port=admin,
        audit_file=audit,
    )


def _scrape(admin_port: int) -> dict[str, float]:
    """Totals per metric name from the gateway's Prometheus text (labels summed)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            totals[name] = totals.get(name, 0.0) + float(value)
            if 'decision="deny"' in name_labels:
                totals[f"{name}:deny"] = totals.get(f"{name}:deny", 0.0) + float(value)
        except ValueError:
            continue
    return totals


def gateway_health(admin_port: int | None, audit_file: Path | None) -> dict[str, Any]:
    """What the gateway itself says after the run: metrics and the audit trail it wrote."""
    out: dict[str, Any] = {}
    if admin_port is not None:
        try:
            metrics = _scrape(admin_port)
            keep = (
                "ztgate_requests_total",
                "ztgate_requests_total:deny",
                "ztgate_audit_dropped_total",
                "ztgate_upstream_timeouts_total",
                "ztgate_upstream_late_replies_total",
                "ztgate_protocol_errors_total",
                "ztgate_upstream_connections",
                "ztgate_sessions_refused_total",
            )
            out["metrics"] = {k: metrics[k] for k in keep if k in metrics}
        except OSError as exc:
            out["metrics_error"] = str(exc)
    if audit_file is not None and audit_file.exists():
        lines = 0
        dropped = 0
        with open(audit_file, "rb") as file:
            for line in file:
                lines += 1
                if b'"audit_dropped"' in line:
                    dropped += 1
        out["audit"] = {"lines": lines, "bytes": audit_file.stat().st_size, "dropped_events": dropped}
    return out


def start_ztgate_ref(ctx: PathContext, ref: str) -> RunningPath:
    """The gateway as it was at git ``ref``, exported (``git archive``) into .cache/bench/ and run
    from there with the same policy and settings: an A/B against the working tree in one run."""
    sha, export = ref_tree(ref)
    return start_ztgate(ctx, name=f"ztgate-{sha}", src=export, path_name=f"ztgate@{sha[:8]}", version=sha)


def ref_tree(ref: str) -> tuple[str, Path]:
    """Git ``ref``'s commit and its tree, exported into .cache/bench/ (with its compiled modules when
    the working tree has them): ``python -m gateway`` run from there is the gateway at ``ref``."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short=12", f"{ref}^{{commit}}"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise PathUnavailableError(f"git ref {ref!r} not found: {exc}") from None
    # Outside the bench package (tools that walk bench/ would find a second copy of everything).
    export = REPO / ".cache" / "bench" / f"ztgate-{sha}"
    if not (export / "gateway" / "__main__.py").exists():
        export.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", sha],
            capture_output=True,
            timeout=60,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(export)], input=archive, timeout=60, check=True)
    if current_build(REPO).compiled:
        if _compiles(export):
            export = _compiled_copy(export)
        else:
            print(f"  {sha} predates the compiled build: it runs as pure Python", flush=True)
    return sha, export


def _compiles(export: Path) -> bool:
    """Whether the exported tree names modules to compile (``[tool.ztgate] compiled``, for its setup.py)."""
    with (export / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)
    return bool(project.get("tool", {}).get("ztgate", {}).get("compiled"))


def _compiled_copy(export: Path) -> Path:
    """The exported tree installed (``pip install --target``, in pip's isolated build environment) into
    a directory beside it, with its compiled modules: an A/B compares the same build of both. Kept per
    commit, as the export is."""
    target = export.with_name(export.name + "-compiled")
    if current_build(target).compiled:
        return target
    shutil.rmtree(target, ignore_errors=True)
    print(f"  building {export.name} with its compiled modules (pip, mypyc: a minute or two) ...", flush=True)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"),
            *("--no-deps", "--no-compile", "--target", str(target), str(export)),
        ],
        env={k: v for k, v in os.environ.items() if k != "ZTGATE_PURE"},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0 or not current_build(target).compiled:
        raise PathUnavailableError(f"cannot build {export.name}: {(done.stdout + done.stderr)[-1500:]}")
    return target


def pure_tree(dest: Path = PURE_DIR) -> Path:
    """The working tree's packages without their compiled modules: ``python -m gateway`` run from there
    imports the sources, as a build without a C compiler (or with ZTGATE_PURE=1) does."""
    shutil.rmtree(dest, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", *(f"*{suffix}" for suffix in EXTENSION_SUFFIXES))
    for package in ("protocols", "policies", "gateway"):
        shutil.copytree(REPO / package, dest / package, ignore=ignore)
    return dest


def start_ztgate_pure(ctx: PathContext) -> RunningPath:
    """The same gateway, settings and policy as the ztgate path, on the pure-Python build."""
    src = pure_tree()
    if current_build(src).compiled:
        raise PathUnavailableError(f"{src} still holds compiled modules")
    return start_ztgate(ctx, name="ztgate-pure", src=src, path_name="ztgate-pure")


def _ztgate_version() -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() or "unknown"


def _modbus_proxy_path(install: bool) -> str | None:
    """A PYTHONPATH entry under which ``modbus_proxy`` imports, installing it privately if allowed."""
    if importlib.util.find_spec("modbus_proxy") is not None:
        return ""
    if (VENDOR_DIR / "modbus_proxy.py").exists():
        return str(VENDOR_DIR)
    if not install:
        return None
    print(f"  installing modbus-proxy {MODBUS_PROXY_VERSION} into {VENDOR_DIR} (pip) ...", flush=True)
    try:
        done = subprocess.run(
            [
                *(sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"),
                *("--no-deps", "--target", str(VENDOR_DIR), f"modbus-proxy=={MODBUS_PROXY_VERSION}"),
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0 or not (VENDOR_DIR / "modbus_proxy.py").exists():
        return None
    return str(VENDOR_DIR)


def start_modbus_proxy(ctx: PathContext) -> RunningPath:
    extra_path = _modbus_proxy_path(ctx.allow_install)
    if extra_path is None:
        raise PathUnavailableError(
            f"modbus-proxy {MODBUS_PROXY_VERSION} is not installed and could not be installed"
        )
    env = dict(os.environ)
    if extra_path:
        env["PYTHONPATH"] = extra_path + os.pathsep + env.get("PYTHONPATH", "")

    def argv(port: int) -> list[str]:
        upstream = f"tcp://127.0.0.1:{ctx.server_port}"
        return [sys.executable, "-m", "modbus_proxy", "-b", f"127.0.0.1:{port}", "--modbus", upstream]

    proc, port = _start_on_free_port(ctx.sup, "modbus-proxy", argv, env=env)
    return RunningPath(
        "modbus-proxy",
        f"modbus-proxy {MODBUS_PROXY_VERSION} (PyPI)",
        port,
        proc,
        MODBUS_PROXY_VERSION,
        "1 shared upstream connection, one request at a time",
    )


PATHS: dict[str, Callable[[PathContext], RunningPath]] = {
    "direct": start_direct,
    "haproxy": start_haproxy,
    "stunnel": start_stunnel,
    "ztgate": start_ztgate,
    "ztgate-pure": start_ztgate_pure,
    "modbus-proxy": start_modbus_proxy,
    "agent": start_agent,
    "stunnel-client": start_stunnel_client,
}


def start_path(name: str, ctx: PathContext) -> RunningPath:
    return PATHS[name](ctx)
