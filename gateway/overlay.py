"""The overlay listener: accept, mutual TLS 1.3, identity, route by SNI to an asset, hand the
connection to that asset's protocol session engine.

Every refusal after a successful handshake — no SPIFFE id, another trust domain, an unknown asset, an
identity that no rule lets near the asset, a lock from the center, an ALPN for another protocol —
ends the connection the same way, before a single application byte, so a client learns nothing
about which assets exist. Chain failures (unknown CA, expired) are refused by OpenSSL inside the
handshake. Either way the audit trail gets one ``session_refused`` event with the real reason.

The listener accepts sockets itself and runs the handshake with ``connect_accepted_socket`` rather
than ``create_server(ssl=...)``: that way a failed handshake raises here, where it can be audited,
instead of being swallowed by the event loop's TLS layer.

Before any of that, :mod:`gateway.admission` decides who may hold a pending connection. An accepted
connection first waits, as a bare socket with a reader callback, for its first byte: an idle
connection costs a slot and nothing else, and when pending connections reach the cap the oldest idle
one is dropped to make room. Only a connection whose first byte opens a TLS handshake record gets a
TLS object and the CPU of a handshake. One periodic sweep ends whatever outlived the handshake timeout,
which shrinks as pending connections approach the cap. Refusals go through
:class:`gateway.refusals.RefusalAudit`: counted per source and kind, not one line each.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import socket
import ssl
import struct
from collections.abc import Callable, Mapping
from typing import Final, cast

from gateway.admission import CAPACITY, RATE, SOURCE_LIMIT, HandshakeLimits, SourceTable, source_of
from gateway.refusals import RefusalAudit
from gateway.renewal_proof import ProvenCertificates
from gateway.runtime import Runtime
from gateway.session import (
    Session,
    SessionInfo,
    grants_of,
    only_grants,
    open_grant,
    session_denial_reason,
)
from gateway.tls import (
    HANDSHAKE_SOCKET,
    RENEWAL_ALPN,
    SNI_ATTRIBUTE,
    TlsMaterial,
    certificate_not_after,
    peer_identity,
)
from policies import SubjectView
from policies.spiffe import CLIENT_KINDS, IdentityError

log = logging.getLogger("ztgate.overlay")

SessionFactory = Callable[[Runtime, SessionInfo, SubjectView], Session]

TLS_HANDSHAKE_RECORD: Final = b"\x16"  # the content type of the record that carries a ClientHello
ACCEPT_BATCH: Final = 256  # connections accepted per wake-up: a reconnect storm is taken in few passes
ACCEPT_PAUSE_S: Final = 0.1  # out of file descriptors: stop accepting this long, then try again
TIMEOUT: Final = "timeout"
HANDSHAKE: Final = "handshake"
IDENTITY_SESSIONS: Final = "identity_sessions"  # an identity at max_sessions_per_identity
# SO_LINGER on, 0 s: close() sends RST and keeps no TIME_WAIT state for connections refused in bulk.
_RESET: Final = struct.pack("ii", 1, 0)

_ADMISSION_REASONS: Final = {
    RATE: "too many new connections from this source",
    SOURCE_LIMIT: "too many pending handshakes from this source",
    CAPACITY: "too many sources with pending handshakes",
}


class _Pending:
    """An accepted connection that has not authenticated yet."""

    __slots__ = ("key", "peer", "sock", "source", "started", "task")

    def __init__(self, key: int, sock: socket.socket, source: str, peer: str, started: float) -> None:
        self.key = key
        self.sock = sock
        self.source = source
        self.peer = peer
        self.started = started
        self.task: asyncio.Task[None] | None = None


class _Handshaken(asyncio.Protocol):
    """Stands in for the session until the TLS handshake completes, then routes the connection."""

    def __init__(self, listener: OverlayListener, pending: _Pending) -> None:
        self._listener = listener
        self._pending = pending

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._listener._authenticated(cast(asyncio.Transport, transport), self._pending)

    def data_received(self, data: bytes) -> None:  # pragma: no cover - routing replaces this protocol first
        pass


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    sock.close()


class OverlayListener:
    def __init__(
        self,
        runtime: Runtime,
        tls: TlsMaterial[ssl.SSLContext],
        factories: Mapping[str, SessionFactory],
        *,
        max_sessions: int = 20_000,
        limits: HandshakeLimits | None = None,
    ) -> None:
        self.runtime = runtime
        self.limits = limits or HandshakeLimits()
        self._tls = tls
        self._factories = factories
        self._max_sessions = max_sessions
        self._sources = SourceTable(self.limits)
        self._refusals = RefusalAudit(runtime.audit, interval_s=self.limits.refusal_audit_interval_s)
        self.proofs = ProvenCertificates(runtime)
        # Insertion order is arrival order: the oldest of each kind is the first item.
        self._waiting: dict[int, _Pending] = {}  # no byte received yet
        self._handshaking: dict[int, _Pending] = {}  # ClientHello received, TLS handshake running
        self._keys = itertools.count()
        self._sockets: list[socket.socket] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_s = min(0.1, self.limits.handshake_timeout_min_s / 4)
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def pending(self) -> int:
        """Connections accepted and not yet authenticated."""
        return len(self._waiting) + len(self._handshaking)

    @property
    def sources(self) -> int:
        return len(self._sources)

    def timeout_s(self) -> float:
        """The handshake timeout in force now."""
        return self.limits.timeout_s(self.pending)

    async def start(self, host: str, port: int) -> list[tuple[str, int]]:
        """Listen on every address ``host`` resolves to; returns the bound (host, port) pairs."""
        loop = self._loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        bound: list[tuple[str, int]] = []
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address if not bound else (address[0], bound[0][1], *address[2:]))
            sock.listen(self.limits.listen_backlog)
            sock.setblocking(False)
            self._sockets.append(sock)
            bound.append(sock.getsockname()[:2])
        self._listen(True)
        self._sweeper = loop.call_later(self._sweep_s, self._sweep)
        return bound

    async def close(self) -> None:
        self._listen(False)
        if self._sweeper is not None:
            self._sweeper.cancel()
        for pending in list(self._waiting.values()):
            self._forget(pending)
            pending.sock.close()
        tasks = [p.task for p in self._handshaking.values() if p.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        self._refusals.flush()

    # ------------------------------------------------------------------------------- accept

    def _listen(self, on: bool) -> None:
        assert self._loop is not None
        for sock in self._sockets:
            if on:
                self._loop.add_reader(sock.fileno(), self._accept, sock)
            else:
                self._loop.remove_reader(sock.fileno())

    def _accept(self, sock: socket.socket) -> None:
        assert self._loop is not None
        for _ in range(ACCEPT_BATCH):
            try:
                conn, address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: leave the rest in the backlog instead of spinning on it.
                    log.warning("accept failed, pausing %.1f s: %s", ACCEPT_PAUSE_S, exc)
                    self._listen(False)
                    self._loop.call_later(ACCEPT_PAUSE_S, self._listen, True)
                return  # ECONNABORTED and friends: that connection is gone, the next wake-up goes on
            self._admit(conn, address[0], address[1])

    def _admit(self, conn: socket.socket, host: str, port: int) -> None:
        assert self._loop is not None
        peer = f"{host}:{port}" if conn.family == socket.AF_INET else f"[{host}]:{port}"
        source = source_of(host)
        if len(self.runtime.sessions) >= self._max_sessions:
            _reset(conn)
            self._refused(source, peer, None, None, CAPACITY, "gateway at its session limit")
            return
        now = self._loop.time()
        refusal = self._sources.admit(source, now)
        if refusal is not None:
            _reset(conn)
            self._refused(source, peer, None, None, refusal, _ADMISSION_REASONS[refusal])
            return
        if self.pending >= self.limits.max_pending_handshakes:
            if not self._waiting:
                self._sources.release(source)
                _reset(conn)
                self._refused(source, peer, None, None, CAPACITY, "pending handshakes at the cap")
                return
            # Idle connections go first: they have shown nothing, and cost the least to be wrong about.
            oldest = next(iter(self._waiting.values()))
            self._drop_waiting(
                oldest, CAPACITY, "dropped before a ClientHello: pending handshakes at the cap"
            )
        conn.setblocking(False)
        pending = _Pending(next(self._keys), conn, source, peer, now)
        self._waiting[pending.key] = pending
        self._loop.add_reader(conn.fileno(), self._first_bytes, pending)

    def _first_bytes(self, pending: _Pending) -> None:
        """The connection sent something: a TLS handshake record gets a handshake, anything else the door."""
        assert self._loop is not None
        try:
            first = pending.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            first = b""
        if first != TLS_HANDSHAKE_RECORD:
            reason = "closed before a ClientHello" if not first else "not a TLS handshake"
            self._drop_waiting(pending, HANDSHAKE, reason)
            return
        self._loop.remove_reader(pending.sock.fileno())
        del self._waiting[pending.key]
        self._handshaking[pending.key] = pending
        pending.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending.task = self._loop.create_task(self._handshake(pending))

    def _drop_waiting(self, pending: _Pending, category: str, reason: str) -> None:
        assert self._loop is not None
        self._loop.remove_reader(pending.sock.fileno())
        self._forget(pending)
        _reset(pending.sock)
        self._refused(pending.source, pending.peer, None, None, category, reason)

    def _forget(self, pending: _Pending) -> bool:
        """Take ``pending`` off the books (once); False if it already was."""
        if self._waiting.pop(pending.key, None) is None and self._handshaking.pop(pending.key, None) is None:
            return False
        self._sources.release(pending.source)
        return True

    def _sweep(self) -> None:
        """End what outlived the handshake timeout in force now; write the refusal aggregates when due."""
        assert self._loop is not None
        now = self._loop.time()
        timeout_s = self.timeout_s()
        reason = f"no authenticated session within {timeout_s:.2g} s"
        while self._waiting:
            oldest = next(iter(self._waiting.values()))
            if now - oldest.started < timeout_s:
                break
            self._drop_waiting(oldest, TIMEOUT, reason)
        while self._handshaking:
            oldest = next(iter(self._handshaking.values()))
            if now - oldest.started < timeout_s:
                break
            self._forget(oldest)
            # The TLS transport owns the socket now. A shutdown ends the connection under it at once
            # (the peer sees it closed, the transport reads EOF); cancelling alone would leave asyncio's
            # transport waiting out its TLS shutdown timeout with the socket open.
            with contextlib.suppress(OSError):
                oldest.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                oldest.sock.shutdown(socket.SHUT_RDWR)
            if oldest.task is not None:
                oldest.task.cancel()
            self._refused(oldest.source, oldest.peer, None, None, TIMEOUT, reason)
        self._refusals.tick()
        self._sweeper = self._loop.call_later(self._sweep_s, self._sweep)

    # ------------------------------------------------------------------------------- handshake

    async def _handshake(self, pending: _Pending) -> None:
        loop = asyncio.get_running_loop()
        # The sweep enforces the (shrinking) timeout; this one only backs it up.
        timeout_s = max(self.limits.handshake_timeout_s - (loop.time() - pending.started), self._sweep_s)
        HANDSHAKE_SOCKET.set(pending.sock)  # this task's context: a refused certificate's alert goes here
        try:
            await loop.connect_accepted_socket(
                lambda: _Handshaken(self, pending),
                pending.sock,
                ssl=self._tls.current,  # taken per handshake: a renewed certificate serves new ones
                ssl_handshake_timeout=timeout_s,
            )
        except ssl.SSLCertVerificationError as exc:
            if self._forget(pending):
                reason = f"certificate rejected: {exc.verify_message}"
                self._refused(pending.source, pending.peer, None, None, "certificate", reason)
        except ssl.SSLError as exc:
            if self._forget(pending):
                reason = f"TLS handshake failed: {exc.reason or exc}"
                self._refused(pending.source, pending.peer, None, None, HANDSHAKE, reason)
        except (TimeoutError, OSError, ConnectionError) as exc:
            if self._forget(pending):
                category = TIMEOUT if isinstance(exc, TimeoutError) else HANDSHAKE
                reason = f"TLS handshake failed: {exc.__class__.__name__} {exc}".strip()
                self._refused(pending.source, pending.peer, None, None, category, reason)
        finally:
            self._forget(pending)

    def _authenticated(self, transport: asyncio.Transport, pending: _Pending) -> None:
        # Off the books before routing: from here on the sweep can no longer cancel this connection.
        if not self._forget(pending):
            transport.abort()  # the sweep already gave up on it
            return
        if len(self.runtime.sessions) >= self._max_sessions:
            self._refuse(transport, pending, None, None, CAPACITY, "gateway at its session limit")
            return
        if self.runtime.audit.blocks_new_sessions:
            self._refuse(transport, pending, None, None, CAPACITY, "audit spool full (block_new_sessions)")
            return
        self._route(transport, pending)

    def _route(self, transport: asyncio.Transport, pending: _Pending) -> None:
        peer = pending.peer
        ssl_object = transport.get_extra_info("ssl_object")
        server_name: str | None = getattr(ssl_object, SNI_ATTRIBUTE, None)
        policy = self.runtime.policies.current
        try:
            spiffe_id = peer_identity(ssl_object, policy.trust_domain)
        except IdentityError as exc:
            self._refuse(transport, pending, server_name, None, "identity", f"certificate identity: {exc}")
            return
        identity = str(spiffe_id)
        if spiffe_id.kind not in CLIENT_KINDS:
            # A gateway's (or the center's) certificate serves; whoever holds one opens no session.
            kinds = ", ".join(sorted(CLIENT_KINDS))
            reason = f"a {spiffe_id.kind} identity opens no session: only {kinds} identities do"
            self._refuse(transport, pending, server_name, identity, "identity", reason)
            return
        alpn = ssl_object.selected_alpn_protocol()
        if alpn == RENEWAL_ALPN:
            self.proofs.prove(transport, identity, pending.source, peer)
            return
        if not server_name:
            self._refuse(transport, pending, None, identity, "no_sni", "no SNI: the client named no asset")
            return
        view = policy.view(identity, server_name)
        if view is None:
            if server_name not in policy.assets:
                self._refuse(
                    transport,
                    pending,
                    server_name,
                    identity,
                    "unknown_asset",
                    f"unknown asset {server_name!r}",
                )
            else:
                reason = f"no rule grants {identity} access to {server_name}"
                self._refuse(transport, pending, server_name, identity, "no_access", reason)
            return
        denial = policy.session_denial(identity, server_name)
        if denial is not None:
            reason = f"rule {denial.id}: {session_denial_reason(denial)}"
            self._refuse(transport, pending, server_name, identity, "denied", reason)
            return
        lock = self.runtime.locks.match(identity, server_name, [rule.id for rule in view.rules])
        if lock is not None:
            reason = f"lock {lock.id}: {lock.reason}"
            self._refuse(transport, pending, server_name, identity, "locked", reason)
            return
        if only_grants(view.rules) and open_grant(grants_of(view.rules), self.runtime.clock()) is None:
            ids = ", ".join(rule.id for rule in grants_of(view.rules))
            reason = f"only grants let {identity} near {server_name}, and none is open ({ids})"
            self._refuse(transport, pending, server_name, identity, "no_access", reason)
            return
        cap = self.runtime.limits.max_sessions_per_identity
        if cap and self.runtime.sessions.of_identity(identity) >= cap:
            # One identity cannot take every place: the cap is per identity, over all assets.
            reason = f"{identity} has {cap} live sessions (max_sessions_per_identity)"
            self._refuse(transport, pending, server_name, identity, IDENTITY_SESSIONS, reason)
            return
        factory = self._factories.get(view.asset.protocol)
        if factory is None:
            self._refuse(
                transport,
                pending,
                server_name,
                identity,
                "protocol",
                f"no session engine for {view.asset.protocol}",
            )
            return
        if alpn is not None and alpn != view.asset.protocol:
            reason = f"ALPN {alpn} but {server_name} speaks {view.asset.protocol}"
            self._refuse(transport, pending, server_name, identity, "protocol", reason)
            return
        info = SessionInfo(
            id=self.runtime.sessions.new_id(),
            identity=identity,
            asset=server_name,
            peer=peer,
            alpn=alpn,
            started=self.runtime.clock(),
            certificate_not_after=self.proofs.session_end(
                identity, pending.source, certificate_not_after(ssl_object)
            ),
            source=pending.source,
        )
        session = factory(self.runtime, info, view)
        transport.set_protocol(session)
        session.connection_made(transport)

    def _refuse(
        self,
        transport: asyncio.Transport,
        pending: _Pending,
        asset: str | None,
        identity: str | None,
        category: str,
        reason: str,
    ) -> None:
        # abort(): no close_notify, no data — the same ending for every refusal after the handshake.
        transport.abort()
        self._refused(pending.source, pending.peer, asset, identity, category, reason)

    def _refused(
        self, source: str, peer: str, asset: str | None, identity: str | None, category: str, reason: str
    ) -> None:
        self.runtime.metrics.count_refused_session(category)
        self._refusals.refused(source, peer, category, reason, asset=asset, identity=identity)
