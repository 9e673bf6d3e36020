"""``ztgate gateway``: assemble and run one gateway process.

The :class:`Gateway` object is what the CLI, the demo and the end-to-end tests start; it owns the
runtime (policy store, audit, metrics, sessions, upstream pools), the overlay listener and the admin
HTTP server.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from gateway.admin import start_admin, watch_center, watch_certificate
from gateway.admission import HandshakeLimits
from gateway.audit import AuditLog
from gateway.audit_guard import guard_audit, watch_audit
from gateway.bundles import CenterLink, CenterUnavailableError
from gateway.cli import log_to_stderr
from gateway.config import CenterSettings, ConfigError, GatewayConfig, TlsFiles, load_gateway_config
from gateway.credentials import Credentials, CredentialsError
from gateway.enip.session import EnipSession
from gateway.enip.upstream import EnipUpstreamPool
from gateway.metrics import Metrics
from gateway.modbus.session import ModbusSession
from gateway.modbus.upstream import ModbusUpstreamPool
from gateway.opcua.session import OpcUaSession
from gateway.opcua.upstream import OpcUaPool
from gateway.overlay import OverlayListener, SessionFactory
from gateway.policy_store import DEFAULT_QUIET_S, PolicyStore
from gateway.reassembly import MIB
from gateway.renewal import Renewer
from gateway.runtime import PoolFactory, Runtime, SessionLimits, cancel_tasks, tune_garbage_collector
from gateway.sinks import build_sink
from gateway.tls import GATEWAY_ROLE, TlsMaterial, server_context
from policies import Policy, PolicyError

log = logging.getLogger("ztgate.gateway")

# One entry per protocol: the session engine facing clients and the pool facing devices.
SESSION_FACTORIES: dict[str, SessionFactory] = {
    "modbus": ModbusSession,
    "enip": EnipSession,
    "opcua": OpcUaSession,
}
POOL_FACTORIES: dict[str, PoolFactory] = {
    "modbus": ModbusUpstreamPool,
    "enip": EnipUpstreamPool,
    "opcua": OpcUaPool,
}


class Gateway:
    """One gateway process. With ``policy`` it enforces a file (hot reload on change); with
    ``center`` it enforces the center's verified bundles, renews its certificate, and does not start
    without a verified bundle (the one on disk, or the center's first)."""

    def __init__(
        self,
        *,
        name: str,
        tls: TlsFiles,
        policy: Path | None = None,
        center: CenterSettings | None = None,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        admin_listen: tuple[str, int] | None = ("127.0.0.1", 0),
        audit: AuditLog | None = None,
        limits: SessionLimits | None = None,
        clock: Callable[[], float] = time.time,
        max_sessions: int = 20_000,
        handshake_limits: HandshakeLimits | None = None,
        watch_policy_s: float | None = 1.0,
        watch_tls_s: float = 1.0,
        policy_quiet_s: float = DEFAULT_QUIET_S,
        audit_on_failure: str = "closed",
    ) -> None:
        if (policy is None) == (center is None):
            raise ValueError("a gateway takes its policy from a file or from a center, one of the two")
        self.name = name
        self.audit = audit if audit is not None else AuditLog(gateway=name)
        self._audit_on_failure = audit_on_failure
        self.clock = clock
        self._limits = limits or SessionLimits()
        self._center = center
        self.link: CenterLink | None = None
        self.renewer: Renewer | None = None
        self._tls = tls
        self._listen = listen
        self._admin_listen = admin_listen
        self._max_sessions = max_sessions
        self._handshake_limits = handshake_limits or HandshakeLimits()
        self._watch_policy_s = watch_policy_s if center is None else None
        self._watch_tls_s = watch_tls_s
        self._policy_quiet_s = policy_quiet_s
        self.listener: OverlayListener | None = None
        self.addresses: list[tuple[str, int]] = []
        self.admin_port: int | None = None
        self._admin: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.stopped = asyncio.Event()
        if policy is not None:
            self._build_runtime(PolicyStore(policy, self.audit))

    def _build_runtime(self, policies: PolicyStore) -> None:
        self.runtime = Runtime(
            name=self.name,
            policies=policies,
            audit=self.audit,
            metrics=Metrics(),
            limits=self._limits,
            clock=self.clock,
        )
        self.runtime.attach_upstreams(POOL_FACTORIES)
        metrics = self.runtime.metrics
        metrics.gauges["ztgate_sessions_live"] = lambda: float(len(self.runtime.sessions))
        watch_audit(self.runtime, self.audit)
        metrics.counters["ztgate_policy_reloads"] = lambda: float(self.runtime.policies.reloads)
        metrics.counters["ztgate_policy_reloads_failed"] = lambda: float(self.runtime.policies.failed_reloads)

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    @property
    def policy(self) -> Policy:
        return self.runtime.policies.current

    async def start(self) -> None:
        self.audit.start()
        if self._center is not None:
            await self._start_link(self._center)
        runtime = self.runtime
        runtime.policies.subscribe(runtime.upstreams.sync)
        runtime.policies.subscribe(runtime.sessions.revalidate)
        runtime.upstreams.sync(runtime.policies.current)
        self.tls = TlsMaterial(self._tls, _serving_context, role=GATEWAY_ROLE, clock=runtime.clock)
        listener = self.listener = OverlayListener(
            runtime,
            self.tls,
            SESSION_FACTORIES,
            max_sessions=self._max_sessions,
            limits=self._handshake_limits,
        )
        runtime.metrics.gauges["ztgate_handshakes_pending"] = lambda: float(listener.pending)
        runtime.metrics.gauges["ztgate_handshake_sources"] = lambda: float(listener.sources)
        runtime.metrics.gauges["ztgate_handshake_timeout_seconds"] = listener.timeout_s
        self.addresses = await self.listener.start(*self._listen)
        loop = asyncio.get_running_loop()
        if self._center is not None and self._center.renew:
            credentials = Credentials(self._center.credentials)
            self.renewer = Renewer(credentials, [self.tls], audit=self.audit, clock=runtime.clock)
            self._tasks.append(loop.create_task(self.renewer.run()))
        watch_certificate(runtime, self.tls, self.renewer)
        self.tls.subscribe(self._certificate_loaded)
        # Files replaced on disk are taken like a SIGHUP; the log warns as the certificate nears its end.
        self._tasks.append(loop.create_task(self.tls.watch(self._watch_tls_s)))
        if self._admin_listen is not None:
            self._admin, self.admin_port = await start_admin(runtime, *self._admin_listen)
        if self._watch_policy_s:
            watch = runtime.policies.watch(self._watch_policy_s, self._policy_quiet_s)
            self._tasks.append(loop.create_task(watch))
        self._tasks.append(loop.create_task(guard_audit(runtime, self.audit, self._audit_on_failure)))
        self.audit.emit(
            {
                "event": "gateway_start",
                "listen": [f"{host}:{port}" for host, port in self.addresses],
                "policy_revision": runtime.policies.current.revision,
                "policy_origin": runtime.policies.origin,
                "assets": sorted(runtime.policies.current.assets),
            }
        )

    async def _start_link(self, center: CenterSettings) -> None:
        """Center mode: the first verified policy, then the subscription feeding the store."""
        self.link = CenterLink(
            Credentials(center.credentials),
            self.audit,
            max_staleness_s=center.max_staleness_s,
            receive_timeout_s=center.receive_timeout_s,
            clock=self.clock,
        )
        try:
            policy = await self.link.initial(center.startup_timeout_s)
        except CenterUnavailableError:
            self.audit.close()
            raise
        self._build_runtime(PolicyStore.from_center(policy, self.audit))
        self.runtime.locks = self.link.locks
        self.runtime.locks.subscribe(self.runtime.sessions.cut_locked)
        self.link.start(self.runtime.policies)
        watch_center(self.runtime, self.link)

    def _certificate_loaded(self, material: TlsMaterial[ssl.SSLContext]) -> None:
        self.audit.emit(
            {
                "event": "certificate_loaded",
                "trigger": material.last_trigger,
                "cert": str(material.files.cert),
                "identity": str(material.identity),
                "not_after": material.status()["not_after"],
            }
        )

    def reload_tls(self, trigger: str = "request") -> bool:
        """Read certificate, key and CA again (SIGHUP); live sessions keep theirs. False, logged and
        audited, when the files do not load: the previous ones stay."""
        if self.tls.try_reload(trigger):
            return True
        error = self.tls.reload_error
        self.audit.emit({"event": "certificate_load_failed", "trigger": trigger, "error": error})
        return False

    async def reload_policy(self, trigger: str = "request") -> bool:
        return await self.runtime.policies.reload(trigger)

    async def stop(self) -> None:
        await cancel_tasks(self._tasks)
        if self.link is not None:
            await self.link.stop()
        if self.listener is not None:
            await self.listener.close()
        self.runtime.sessions.close_all("gateway stopping")
        self.runtime.upstreams.close()
        if self._admin is not None:
            await self._admin.cleanup()
        self.audit.emit({"event": "gateway_stop"})
        # Let transports deliver their connection_lost callbacks (session_end events) before the audit closes.
        await asyncio.sleep(0)
        self.audit.close()
        self.stopped.set()


def _serving_context(files: TlsFiles) -> ssl.SSLContext:
    return server_context(files.cert, files.key, files.ca)


# ------------------------------------------------------------------------------------------ CLI


def configure(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "gateway",
        help="run a gateway (policy enforcement point)",
        description="Run a gateway: terminate overlay sessions, enforce the policy, re-originate to devices. "
        "SIGHUP reloads the policy and reopens the audit file.",
    )
    parser.add_argument("--config", required=True, type=Path, help="gateway configuration file (TOML)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    log_to_stderr(args.log_level)
    try:
        config = load_gateway_config(args.config)
    except ConfigError as error:
        print(f"ztgate gateway: configuration refused:\n{error}", file=sys.stderr)
        return 2
    loop_factory = None
    if config.loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_serve(config))


async def _serve(config: GatewayConfig) -> int:
    try:
        audit = AuditLog(
            gateway=config.name,
            sinks=[build_sink(settings) for settings in config.audit_sinks],
            aggregate_reads_s=config.audit_aggregate_reads_s,
            queue_limit=config.audit_queue_limit,
        )
    except (OSError, ValueError, ssl.SSLError) as error:
        print(f"ztgate gateway: cannot start the audit trail: {error}", file=sys.stderr)
        return 1
    try:
        gateway = Gateway(
            name=config.name,
            policy=config.policy,
            tls=config.tls,
            center=config.center,
            listen=config.listen,
            admin_listen=config.admin_listen,
            audit=audit,
            limits=SessionLimits(
                max_in_flight=config.client_max_in_flight,
                idle_timeout_s=config.client_idle_timeout_s,
                local_answers_per_s=config.client_local_answers_per_s,
                identity_local_answers_per_s=config.identity_local_answers_per_s,
                refusal_audit_interval_s=config.client_refusal_audit_interval_s,
                reassembly_budget_bytes=int(config.reassembly_budget_mib * MIB),
                reassembly_timeout_s=config.reassembly_timeout_s,
                max_sessions_per_identity=config.max_sessions_per_identity,
            ),
            max_sessions=config.max_sessions,
            handshake_limits=config.overlay,
            policy_quiet_s=config.policy_quiet_s,
            audit_on_failure=config.audit_on_failure,
        )
    except PolicyError as error:
        print(f"ztgate gateway: policy refused:\n{error}", file=sys.stderr)
        return 2
    try:
        await gateway.start()
    except (OSError, ValueError, CenterUnavailableError, CredentialsError) as error:
        print(f"ztgate gateway: cannot start: {error}", file=sys.stderr)
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    reloads: set[asyncio.Task[bool]] = set()

    def on_hup() -> None:
        audit.reopen()
        gateway.reload_tls("SIGHUP")
        task = loop.create_task(gateway.reload_policy("SIGHUP"))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    tune_garbage_collector()
    policy = gateway.policy
    listen = ", ".join(f"{host}:{port}" for host, port in gateway.addresses)
    log.info(
        "gateway %s: overlay on %s, policy %s revision %s (%d assets, %d rules), admin %s",
        config.name,
        listen,
        config.policy or f"from the center ({gateway.link.info.url if gateway.link else '?'})",
        policy.revision,
        len(policy.assets),
        len(policy.rules),
        f"http://{config.admin_listen[0]}:{gateway.admin_port}" if config.admin_listen else "off",
    )
    await stop.wait()
    log.info("stopping")
    await gateway.stop()
    return 0
