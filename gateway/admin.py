"""Admin HTTP (aiohttp), on loopback by default: health, readiness, Prometheus metrics, live sessions.

It shares the event loop with the data path and only reads state the data path keeps anyway; a scrape
never takes a lock the data path needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from gateway.metrics import UpstreamState
from gateway.runtime import Runtime

if TYPE_CHECKING:
    from gateway.bundles import CenterLink
    from gateway.renewal import Renewer
    from gateway.tls import TlsMaterial

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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


def build_app(runtime: Runtime) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return _json({"status": "ok", "gateway": runtime.name})

    def readiness() -> tuple[bool, dict[str, Any], dict[str, dict[str, Any]]]:
        """Whether the gateway itself can serve (every status source ready), its body, and the assets."""
        refusals = runtime.policies.refusals
        assets = {
            state.asset: _asset_state(state, refusals.get(state.asset))
            for state in runtime.upstreams.states()
        }
        policy = runtime.policies.current
        body: dict[str, Any] = {
            "policy_revision": policy.revision,
            "policy_origin": runtime.policies.origin,
            "policy_error": runtime.policies.last_error,
        }
        ready = True
        for name, source in runtime.status.items():
            body[name] = source()
            ready = ready and body[name].get("ready", True)
        return ready, body, assets

    async def readyz(_: web.Request) -> web.Response:
        # One dead device does not take the gateway out of service: it is ready while it can serve
        # at least one of its assets; each asset's own answer is /readyz/<asset>.
        ready, body, assets = readiness()
        down = sorted(name for name, asset in assets.items() if not asset["ready"])
        ready = ready and (not assets or len(down) < len(assets))
        body = {"ready": ready, **body, "assets": assets, "assets_down": down}
        return _json(body, 200 if ready else 503)

    async def readyz_asset(request: web.Request) -> web.Response:
        name = request.match_info["asset"]
        ready, body, assets = readiness()
        if name not in assets:
            return _json({"ready": False, "asset": name, "reason": "no such asset in the policy"}, 404)
        asset = assets[name]
        ready = ready and asset["ready"]
        return _json({**body, "asset": name, **asset, "ready": ready}, 200 if ready else 503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=runtime.metrics.render(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})

    async def sessions(_: web.Request) -> web.Response:
        return _json({"sessions": runtime.sessions.describe()})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/readyz/{asset}", readyz_asset)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/sessions", sessions)
    return app


async def start_admin(runtime: Runtime, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve the admin app; returns the runner (for cleanup) and the bound port."""
    runner = web.AppRunner(build_app(runtime), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server  # aiohttp exposes no public accessor for the bound port
    assert server is not None
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, bound


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


def watch_certificate(runtime: Runtime, material: TlsMaterial[Any], renewer: Renewer | None) -> None:
    """The serving certificate in /readyz (not ready while it is expired or not yet valid, or while a
    renewal is overdue) and in the metrics: every certificate's seconds to expiry, and the renewal."""

    def status() -> dict[str, Any]:
        found = material.status()
        if renewer is not None:
            found.update(renewer.status())
            found["ready"] = found["ready"] and not found["overdue"]
        return found

    runtime.status["certificate"] = status
    gauges, counters = runtime.metrics.gauges, runtime.metrics.counters
    runtime.metrics.labelled_gauges["ztgate_certificate_expiry_seconds"] = (
        "Seconds until the certificate's notAfter (negative: expired): the serving certificate (leaf) "
        "and each CA certificate trusted",
        ("certificate", "file", "subject"),
        material.expiry_seconds,
    )
    gauges["ztgate_certificate_not_after_seconds"] = lambda: material.not_after
    gauges["ztgate_certificate_expires_in_seconds"] = lambda: material.not_after - runtime.clock()
    counters["ztgate_certificate_reloads"] = lambda: float(material.reloads)
    if renewer is None:
        return
    gauges["ztgate_certificate_renewal_overdue"] = lambda: float(renewer.failures > 0)
    counters["ztgate_certificate_renewals"] = lambda: float(renewer.renewals)
    counters["ztgate_certificate_renewal_failures"] = lambda: float(renewer.failures_total)
