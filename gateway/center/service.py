"""A running center: its store, keys, HTTPS API and subscriptions, and the renewal of its own TLS
certificate. ``ztgate center serve --config center.toml`` runs one; tests and the demo start the
:class:`Center` object in their own event loop.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable

from aiohttp import web

from gateway.audit import AuditLog
from gateway.center.api import Services
from gateway.center.app import build_app
from gateway.center.authority import Authority, load_authority
from gateway.center.config import CenterConfig
from gateway.center.db import open_database
from gateway.center.store import Store
from gateway.center.stream import Hub, Publisher
from gateway.runtime import cancel_tasks
from gateway.sinks import build_sink
from gateway.tls import CENTER_ROLE, https_server_context, load_files

log = logging.getLogger("ztgate.center")

__all__ = ["Center"]


class Center:
    def __init__(self, config: CenterConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.authority: Authority = load_authority(config.keys, config.name)
        self.store = Store(open_database(config.store, config.base), clock=clock)
        # The center's audit to the [audit] sinks too (the store keeps every record either way).
        self.audit: AuditLog | None = None
        if config.audit_sinks:
            self.audit = AuditLog(
                gateway=config.name,
                origin="center",
                sinks=[build_sink(settings) for settings in config.audit_sinks],
                queue_limit=config.audit_queue_limit,
            )
            self.store.trail = self.audit
        self.hub = Hub()
        self.publisher = Publisher(
            self.store, self.authority, validity_s=config.bundle_validity_s, clock=clock
        )
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._context: ssl.SSLContext | None = None
        self._renewal: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = self.config.listen[0]
        return f"https://{host}:{self.port}"

    async def start(self) -> None:
        if self.audit is not None:
            self.audit.start()
        applied = await self.store.open()
        if applied:
            log.info("store migrated to schema %d", applied[-1])
        self.store.db.on_notify(self.hub.changed)
        self._renew_own_certificate()
        files = self.authority.tls_files
        CENTER_ROLE.check(files.cert)
        self._context = https_server_context(files.cert, files.key, files.ca)
        if self.authority.extra_trust.is_file():  # a CA rotation: certificates of both CAs are good
            load_files(self._context, None, None, self.authority.extra_trust)
        services = Services(self.config, self.store, self.authority, self.publisher, self.hub)
        self._runner = web.AppRunner(build_app(services), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, *self.config.listen, ssl_context=self._context)
        await site.start()
        server = site._server  # aiohttp exposes no public accessor for the bound port
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.config.listen[1]
        self._renewal = asyncio.get_running_loop().create_task(self._renew_loop())
        await self.store.audit("center_start", str(self.authority.center_id), {"url": self.config.url})
        log.info(
            "center %s on %s:%d, store %s, fingerprint %s",
            self.authority.center_id,
            self.config.listen[0],
            self.port,
            self.store.db.dialect,
            self.authority.fingerprint(),
        )

    def _renew_own_certificate(self) -> None:
        lifetime = self.config.lifetime("center")
        if self.authority.ensure_tls_certificate(lifetime, now=self.clock()) and self._context is not None:
            files = self.authority.tls_files
            # Same context, new chain: handshakes from now on present it; live connections keep theirs.
            load_files(self._context, files.cert, files.key, None)
            log.info("renewed the center's TLS certificate")

    async def _renew_loop(self) -> None:
        # Checked a few times per lifetime; ensure_tls_certificate renews past half-life.
        interval_s = max(1.0, min(3600.0, self.config.lifetimes_s["center"] / 8))
        while True:
            await asyncio.sleep(interval_s)
            try:
                self._renew_own_certificate()
            except Exception:
                log.exception("renewing the center's TLS certificate failed; retrying")

    async def stop(self) -> None:
        if self._renewal is not None:
            await cancel_tasks([self._renewal])
        if self._runner is not None:
            await self._runner.cleanup()
        await self.store.close()
        if self.audit is not None:
            # Writes what is queued; a syslog sink's spool keeps what the collector has not taken.
            await asyncio.get_running_loop().run_in_executor(None, self.audit.close)
