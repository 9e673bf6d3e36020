"""The overlay listener: accept, mutual TLS 1.3, identity, route by SNI to an asset, hand the
connection to that asset's protocol session engine.

Every refusal after a successful handshake — no SPIFFE id, another trust domain, an unknown asset, an
identity that no rule lets near the asset, an ALPN for another protocol — ends the connection the same
way, before a single application byte, so a client learns nothing about which assets exist. Chain
failures (unknown CA, expired) are refused by OpenSSL inside the handshake. Either way the audit
trail gets one ``session_refused`` event with the real reason.

The listener accepts sockets itself and runs the handshake with ``connect_accepted_socket`` rather
than ``create_server(ssl=...)``: that way a failed handshake raises here, where it can be audited,
instead of being swallowed by the event loop's TLS layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Mapping
from typing import cast

from gateway.runtime import Runtime
from gateway.session import Session, SessionInfo
from gateway.tls import certificate_not_after, peer_identity
from policies import SubjectView
from policies.spiffe import IdentityError

log = logging.getLogger("ztgate.overlay")

SessionFactory = Callable[[Runtime, SessionInfo, SubjectView], Session]

SNI_ATTRIBUTE = "ztgate_server_name"


def _remember_server_name(ssl_object: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
    # The server side cannot read SNI back after the handshake; keep it on the connection's SSLObject.
    setattr(ssl_object, SNI_ATTRIBUTE, server_name)


class _Handshaken(asyncio.Protocol):
    """Stands in for the session until the TLS handshake completes, then routes the connection."""

    def __init__(self, listener: OverlayListener, peer: str) -> None:
        self._listener = listener
        self._peer = peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._listener._route(cast(asyncio.Transport, transport), self._peer)

    def data_received(self, data: bytes) -> None:  # pragma: no cover - routing replaces this protocol first
        pass


class OverlayListener:
    def __init__(
        self,
        runtime: Runtime,
        context: ssl.SSLContext,
        factories: Mapping[str, SessionFactory],
        *,
        max_sessions: int = 20_000,
        max_handshakes: int = 512,
        handshake_timeout_s: float = 10.0,
    ) -> None:
        context.sni_callback = _remember_server_name
        self.runtime = runtime
        self._context = context
        self._factories = factories
        self._max_sessions = max_sessions
        self._max_handshakes = max_handshakes
        self._handshake_timeout_s = handshake_timeout_s
        self._handshakes: set[asyncio.Task[None]] = set()
        self._sockets: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []

    async def start(self, host: str, port: int) -> list[tuple[str, int]]:
        """Listen on every address ``host`` resolves to; returns the bound (host, port) pairs."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        bound: list[tuple[str, int]] = []
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address if not bound else (address[0], bound[0][1], *address[2:]))
            sock.listen(1024)
            sock.setblocking(False)
            self._sockets.append(sock)
            bound.append(sock.getsockname()[:2])
            self._accepting.append(loop.create_task(self._accept(sock)))
        return bound

    async def close(self) -> None:
        for task in (*self._accepting, *self._handshakes):
            task.cancel()
        for task in (*self._accepting, *self._handshakes):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(sock)
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                log.warning("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            peer = (
                f"{address[0]}:{address[1]}"
                if conn.family == socket.AF_INET
                else f"[{address[0]}]:{address[1]}"
            )
            if (
                len(self._handshakes) >= self._max_handshakes
                or len(self.runtime.sessions) >= self._max_sessions
            ):
                conn.close()
                self._refused(peer, None, None, "capacity", "gateway at capacity")
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(self._handshake(conn, peer))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, conn: socket.socket, peer: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                lambda: _Handshaken(self, peer),
                conn,
                ssl=self._context,
                ssl_handshake_timeout=self._handshake_timeout_s,
            )
        except ssl.SSLCertVerificationError as exc:
            self._refused(peer, None, None, "certificate", f"certificate rejected: {exc.verify_message}")
        except ssl.SSLError as exc:
            self._refused(peer, None, None, "handshake", f"TLS handshake failed: {exc.reason or exc}")
        except (TimeoutError, OSError, ConnectionError) as exc:
            self._refused(
                peer, None, None, "handshake", f"TLS handshake failed: {exc.__class__.__name__} {exc}".strip()
            )

    def _route(self, transport: asyncio.Transport, peer: str) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        server_name: str | None = getattr(ssl_object, SNI_ATTRIBUTE, None)
        policy = self.runtime.policies.current
        try:
            identity = str(peer_identity(ssl_object, policy.trust_domain))
        except IdentityError as exc:
            self._refuse(transport, peer, server_name, None, "identity", f"certificate identity: {exc}")
            return
        if not server_name:
            self._refuse(transport, peer, None, identity, "no_sni", "no SNI: the client named no asset")
            return
        view = policy.view(identity, server_name)
        if view is None:
            if server_name not in policy.assets:
                self._refuse(
                    transport, peer, server_name, identity, "unknown_asset", f"unknown asset {server_name!r}"
                )
            else:
                reason = f"no rule grants {identity} access to {server_name}"
                self._refuse(transport, peer, server_name, identity, "no_access", reason)
            return
        factory = self._factories.get(view.asset.protocol)
        alpn = ssl_object.selected_alpn_protocol()
        if factory is None:
            self._refuse(
                transport,
                peer,
                server_name,
                identity,
                "protocol",
                f"no session engine for {view.asset.protocol}",
            )
            return
        if alpn is not None and alpn != view.asset.protocol:
            reason = f"ALPN {alpn} but {server_name} speaks {view.asset.protocol}"
            self._refuse(transport, peer, server_name, identity, "protocol", reason)
            return
        info = SessionInfo(
            id=self.runtime.sessions.new_id(),
            identity=identity,
            asset=server_name,
            peer=peer,
            alpn=alpn,
            started=self.runtime.clock(),
            certificate_not_after=certificate_not_after(ssl_object),
        )
        session = factory(self.runtime, info, view)
        transport.set_protocol(session)
        session.connection_made(transport)

    def _refuse(
        self,
        transport: asyncio.Transport,
        peer: str,
        asset: str | None,
        identity: str | None,
        category: str,
        reason: str,
    ) -> None:
        # abort(): no close_notify, no data — the same ending for every refusal after the handshake.
        transport.abort()
        self._refused(peer, asset, identity, category, reason)

    def _refused(
        self, peer: str, asset: str | None, identity: str | None, category: str, reason: str
    ) -> None:
        self.runtime.metrics.count_refused_session(category)
        event = {"event": "session_refused", "peer": peer, "category": category, "reason": reason}
        if asset is not None:
            event["asset"] = asset
        if identity is not None:
            event["identity"] = identity
        self.runtime.audit.emit(event)
