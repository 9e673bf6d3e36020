"""The center's aiohttp application: authentication by client certificate, roles from the store, and
JSON errors for everything that goes wrong.

Every route of :data:`gateway.center.api.ROUTES` is wrapped by :func:`_guarded`: outside the public and
token routes, a request without a verified client certificate is refused (401), an identity the store
does not know or whose role the route does not list is refused (403, audited), before the handler
runs. Errors of any kind (bad input, unknown route, a body over ``max_body_bytes``) are answered as
``{"error": {"status": ..., "message": ...}}``.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.center.api import (
    PUBLIC,
    ROUTES,
    SERVICES,
    TOKEN,
    ApiError,
    Caller,
    Route,
    Services,
    json_response,
)
from gateway.identity import identity_from_certificate
from policies.spiffe import IdentityError

log = logging.getLogger("ztgate.center.api")

__all__ = ["build_app"]


def _error(status: int, message: str, **extra: object) -> web.Response:
    return json_response({"error": {"status": status, "message": message, **extra}}, status)


Plain = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _json_errors(request: web.Request, handler: Plain) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as error:
        return _error(error.status, error.message, **error.extra)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return _error(error.status, error.reason or error.text or "error")
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, "internal error (the center's log has the details)")


def _peer_identity(request: web.Request, trust_domain: str) -> str | None:
    transport = request.transport
    ssl_object: ssl.SSLObject | None = None if transport is None else transport.get_extra_info("ssl_object")
    der = None if ssl_object is None else ssl_object.getpeercert(binary_form=True)
    if der is None:
        return None
    try:
        return str(identity_from_certificate(der, trust_domain))
    except IdentityError as exc:
        raise ApiError(401, f"client certificate: {exc}") from None


def _guarded(route: Route, services: Services) -> Plain:
    async def handle(request: web.Request) -> web.StreamResponse:
        caller = None
        if route.access not in (PUBLIC, TOKEN):
            identity = _peer_identity(request, services.authority.trust_domain)
            if identity is None:
                raise ApiError(401, "a client certificate is required (enroll first: ztgate enroll)")
            role = await services.store.role_of(identity)
            if role is None or role not in route.access:
                detail = {"method": request.method, "path": request.path, "role": role}
                await services.store.audit("api_refused", identity, detail)
                need = ", ".join(sorted(route.access))
                raise ApiError(
                    403, f"{identity} has role {role or 'none'}; {route.path} needs one of: {need}"
                )
            caller = Caller(identity, role)
        return await route.handler(request, caller)

    return handle


def build_app(services: Services) -> web.Application:
    app = web.Application(middlewares=[_json_errors], client_max_size=services.config.max_body_bytes)
    app[SERVICES] = services
    for route in ROUTES:
        app.router.add_route(route.method, route.path, _guarded(route, services))
    return app
