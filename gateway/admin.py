"""Admin HTTP (aiohttp), on loopback by default: health, readiness, Prometheus metrics, live sessions.

It shares the event loop with the data path and only reads state the data path keeps anyway; a scrape
never takes a lock the data path needs. :func:`process_app` is what every process serves (the gateway,
and the agent when ``[agent] admin`` is set): ``/healthz``, ``/readyz`` from its status sources, and
``/metrics``; :func:`build_app` adds the gateway's assets and sessions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from aiohttp import web

from gateway.metrics import ProcessMetrics, UpstreamState
from gateway.runtime import Runtime

if TYPE_CHECKING:
    from gateway.bundles import CenterLink
    from gateway.renewal import Renewer
    from gateway.tls import TlsMaterial

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


# name -> what to show in /readyz; a "ready": false in it makes the process not ready.
StatusSources = dict[str, Callable[[], dict[str, Any]]]


class Observed(Protocol):
    """What the admin endpoints of a process read: a gateway's :class:`Runtime`, an agent's
    :class:`ProcessState`."""

    @property
    def name(self) -> str: ...

    @property
    def metrics(self) -> ProcessMetrics: ...

    @property
    def status(self) -> StatusSources: ...

    @property
    def clock(self) -> Callable[[], float]: ...


@dataclass
class ProcessState:
    """The admin state of a process without a gateway's runtime (the agent)."""

    name: str
    metrics: ProcessMetrics = field(default_factory=ProcessMetrics)
    status: StatusSources = field(default_factory=dict)
    clock: Callable[[], float] = time.time


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(body, option=orjson.OPT_INDENT_2), status=status, content_type="application/json"
    )


def _asset_state(state: UpstreamState, closed: str | None) -> dict[str, Any]:
    """One asset's readiness: ``up`` (a connection to a device that answers, or has not been asked
    anything yet), ``not_answering`` (connected, but a request timed out and the device has sent
    nothing since), ``unreachable`` (no connection), or ``closed`` (the policy refuses every request
    on it: a stale center policy's ``on_stale = "closed"``)."""
    if closed is not None:
        condition, reason = "closed", closed
    elif state.connected:
        condition, reason = "up", None
    elif state.not_answering:
        condition, reason = "not_answering", "a request timed out and the device has sent nothing since"
    else:
        condition, reason = "unreachable", state.last_error
    return {
        "protocol": state.protocol,
        "ready": condition == "up",
        "state": condition,
        "connections": state.connected,
        "not_answering": state.not_answering,
        "reason": reason,
    }


def readiness(observed: Observed) -> tuple[bool, dict[str, Any]]:
    """Whether every status source of the process is ready, and what each says."""
    body: dict[str, Any] = {}
    ready = True
    for name, source in observed.status.items():
        body[name] = source()
        ready = ready and body[name].get("ready", True)
    return ready, body


def process_app(
    observed: Observed,
    process: str,
    *,
    fields: Callable[[], dict[str, Any]] = dict,
    assets: Callable[[], dict[str, dict[str, Any]]] | None = None,
) -> web.Application:
    """``/healthz``, ``/readyz`` and ``/metrics`` of a ``process`` ("gateway", "agent"). ``/readyz``
    shows ``fields()``, then every status source, then ``assets()`` when given."""

    async def healthz(_: web.Request) -> web.Response:
        return _json({"status": "ok", process: observed.name})

    async def readyz(_: web.Request) -> web.Response:
        ready, found_status = readiness(observed)
        body = {**fields(), **found_status}
        if assets is not None:
            # One dead device does not take the gateway out of service: it is ready while it can serve
            # at least one of its assets; each asset's own answer is /readyz/<asset>.
            found = assets()
            down = sorted(name for name, asset in found.items() if not asset["ready"])
            ready = ready and (not found or len(down) < len(found))
            body = {**body, "assets": found, "assets_down": down}
        return _json({"ready": ready, **body}, 200 if ready else 503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=observed.metrics.render(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


def build_app(runtime: Runtime) -> web.Application:
    """The gateway's: the process's endpoints with its policy and assets, ``/readyz/<asset>`` and
    ``/sessions``."""

    def policy_status() -> dict[str, Any]:
        return {
            "policy_revision": runtime.policies.current.revision,
            "policy_origin": runtime.policies.origin,
            "policy_error": runtime.policies.last_error,
        }

    def assets() -> dict[str, dict[str, Any]]:
        refusals = runtime.policies.refusals
        return {
            state.asset: _asset_state(state, refusals.get(state.asset))
            for state in runtime.upstreams.states()
        }

    async def readyz_asset(request: web.Request) -> web.Response:
        name = request.match_info["asset"]
        ready, body = readiness(runtime)
        found = assets()
        if name not in found:
            return _json({"ready": False, "asset": name, "reason": "no such asset in the policy"}, 404)
        asset = found[name]
        ready = ready and asset["ready"]
        return _json(
            {**policy_status(), **body, "asset": name, **asset, "ready": ready}, 200 if ready else 503
        )

    async def sessions(_: web.Request) -> web.Response:
        return _json({"sessions": runtime.sessions.describe()})

    app = process_app(runtime, "gateway", fields=policy_status, assets=assets)
    app.router.add_get("/readyz/{asset}", readyz_asset)
    app.router.add_get("/sessions", sessions)
    return app


async def serve_admin(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve an admin app; returns the runner (for cleanup) and the bound port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server  # aiohttp exposes no public accessor for the bound port
    assert server is not None
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, bound


async def start_admin(runtime: Runtime, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve the gateway's admin app; returns the runner (for cleanup) and the bound port."""
    return await serve_admin(build_app(runtime), host, port)


def watch_center(runtime: Runtime, link: CenterLink) -> None:
    """The center link in /readyz (not ready once the policy is stale) and in the metrics."""

    def status() -> dict[str, Any]:
        return {
            "url": link.info.url,
            "connected": link.connected,
            "revision": link.revision,
            **link.staleness(),
            "closed_assets": sorted(runtime.policies.refusals),
            "bundles_refused": link.refused,
            "last_refusal": link.last_refusal,
            "ready": not link.stale,
        }

    def staleness_s() -> float:
        age = link.staleness()["stale_s"]
        return float("nan") if age is None else float(age)

    runtime.status["center"] = status
    gauges, counters = runtime.metrics.gauges, runtime.metrics.counters
    gauges["ztgate_center_connected"] = lambda: float(link.connected)
    gauges["ztgate_policy_staleness_seconds"] = staleness_s
    gauges["ztgate_policy_max_staleness_seconds"] = lambda: link.max_staleness_s
    gauges["ztgate_policy_stale"] = lambda: float(link.stale)
    gauges["ztgate_policy_center_revision"] = lambda: float(link.revision)
    counters["ztgate_bundles_received"] = lambda: float(link.received)
    counters["ztgate_bundles_refused"] = lambda: float(link.refused)


def watch_certificate(
    observed: Observed,
    material: TlsMaterial[Any],
    renewer: Renewer | None,
    *,
    reload_failure_unready: bool = False,
) -> None:
    """A process's own certificate in /readyz (not ready while it is expired or not yet valid, or while
    a renewal is overdue; with ``reload_failure_unready``, also while files put in its place do not
    load) and in the metrics: every certificate's seconds to expiry, and the renewal."""

    def status() -> dict[str, Any]:
        found = material.status()
        if renewer is not None:
            found.update(renewer.status())
            found["ready"] = found["ready"] and not found["overdue"]
        if reload_failure_unready and material.reload_error is not None:
            found["ready"] = False
            found.setdefault(
                "reason",
                f"the certificate files do not load ({material.reload_error}); the previous ones are in use",
            )
        return found

    observed.status["certificate"] = status
    gauges, counters = observed.metrics.gauges, observed.metrics.counters
    observed.metrics.labelled_gauges["ztgate_certificate_expiry_seconds"] = (
        "Seconds until the certificate's notAfter (negative: expired): the process's own certificate "
        "(leaf) and each CA certificate trusted",
        ("certificate", "file", "subject"),
        material.expiry_seconds,
    )
    gauges["ztgate_certificate_not_after_seconds"] = lambda: material.not_after
    gauges["ztgate_certificate_expires_in_seconds"] = lambda: material.not_after - observed.clock()
    counters["ztgate_certificate_reloads"] = lambda: float(material.reloads)
    if renewer is None:
        return
    gauges["ztgate_certificate_renewal_overdue"] = lambda: float(renewer.failures > 0)
    counters["ztgate_certificate_renewals"] = lambda: float(renewer.renewals)
    counters["ztgate_certificate_renewal_failures"] = lambda: float(renewer.failures_total)
