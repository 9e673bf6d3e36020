"""Admin HTTP (aiohttp), on loopback by default: health, readiness, Prometheus metrics, live sessions.

It shares the event loop with the data path and only reads state the data path keeps anyway; a scrape
never takes a lock the data path needs.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.runtime import Runtime

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(body, option=orjson.OPT_INDENT_2), status=status, content_type="application/json"
    )


def build_app(runtime: Runtime) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return _json({"status": "ok", "gateway": runtime.name})

    async def readyz(_: web.Request) -> web.Response:
        policy = runtime.policies.current
        upstreams = [
            {"asset": state.asset, "protocol": state.protocol, "connected": state.connected}
            for state in runtime.upstreams.states()
        ]
        unreachable = [item["asset"] for item in upstreams if not item["connected"]]
        ready = not unreachable
        body = {
            "ready": ready,
            "policy_revision": policy.revision,
            "policy_error": runtime.policies.last_error,
            "upstreams": upstreams,
        }
        if unreachable:
            body["unreachable"] = unreachable
        return _json(body, 200 if ready else 503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=runtime.metrics.render(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})

    async def sessions(_: web.Request) -> web.Response:
        return _json({"sessions": runtime.sessions.describe()})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
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
