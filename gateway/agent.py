"""``ztgate agent``: local plain TCP listeners on an HMI or vendor host, each carried to a gateway
over its own mutual-TLS overlay connection with SNI = the asset, so ordinary HMI tools work unchanged.

The agent relays bytes; the gateway decides. Each local connection gets one overlay connection, made
only when the local client connects, and both ends close together. A refusal by the gateway closes the
local connection and is logged with the clearest reason the agent can tell.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, cast

from gateway.admin import ProcessState, process_app, serve_admin, watch_certificate
from gateway.cli import log_to_stderr
from gateway.config import AgentConfig, AgentListener, ConfigError, TlsFiles, is_loopback, load_agent_config
from gateway.credentials import Credentials
from gateway.identity import PeerPin
from gateway.renewal import Renewer
from gateway.renewal_proof import prove_renewal
from gateway.runtime import cancel_tasks
from gateway.tls import AGENT_ROLE, RENEWAL_ALPN, PinMismatchError, TlsMaterial, client_context

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("ztgate.agent")

# A session the gateway ends this soon after the handshake, with no byte ever received, was refused.
REFUSAL_WINDOW_S = 2.0
# A proof of renewal that fails is tried again after 1, 2, 4, ... s, this many times in all.
PROOF_ATTEMPTS = 5

_ALERT_HINTS = {
    "UNKNOWN_CA": "this agent's certificate is not from the gateway's CA",
    "CERTIFICATE_EXPIRED": "this agent's certificate has expired: issue a new one",
    "CERTIFICATE_REVOKED": "this agent's certificate was revoked",
    "CERTIFICATE_REQUIRED": "the gateway wants a client certificate",
    "BAD_CERTIFICATE": "the gateway rejected this agent's certificate",
    "CERTIFICATE_UNKNOWN": "the gateway rejected this agent's certificate",
}


def explain_refusal(asset: str, exc: BaseException | None) -> str:
    text = f"{exc}" if exc is not None else ""
    for alert, hint in _ALERT_HINTS.items():
        if alert in text.upper().replace(" ", "_"):
            return f"gateway refused the session for asset {asset!r}: {hint} ({text})"
    return (
        f"gateway refused the session for asset {asset!r}: the asset is unknown, or this identity has no "
        "rule for it (the gateway's audit log has the reason)"
    )


class ConnectError(Exception):
    """An overlay connection was not made; the message names the cause, for the agent's log."""


async def _tcp_connect(host: str, port: int, deadline: float) -> socket.socket:
    """A connected socket to host:port (each address in turn), or ConnectError saying why not."""
    loop = asyncio.get_running_loop()
    where = f"gateway {host}:{port}"
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), max(0.0, deadline - loop.time())
        )
    except (OSError, TimeoutError) as exc:
        raise ConnectError(f"cannot resolve the gateway's host name {host!r}: {exc or 'timeout'}") from None
    problem = ""
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        timeout_s = max(0.0, deadline - loop.time())
        try:
            await asyncio.wait_for(loop.sock_connect(sock, address), timeout_s)
        except TimeoutError:
            sock.close()
            problem = (
                f"no TCP connection to {where} within the connect timeout: the host is down or "
                "unreachable, or a firewall drops the packets"
            )
            continue
        except ConnectionRefusedError:
            sock.close()
            problem = f"{where} refused the TCP connection: nothing listens there (gateway down? wrong port?)"
            continue
        except OSError as exc:
            sock.close()
            problem = f"cannot reach {where}: {exc}"
            continue
        return sock
    raise ConnectError(problem or f"cannot resolve the gateway's host name {host!r}: no address")


async def connect_overlay(
    factory: Callable[[], _Overlay], listener: AgentListener, context: ssl.SSLContext, timeout_s: float
) -> _Overlay:
    """TCP, then TLS with SNI = the asset, within ``timeout_s`` in all. Each failure raises
    ConnectError naming its cause: name resolution, TCP (refused, no answer), the gateway's
    certificate (not the pinned gateway, not from our CA), the gateway's refusal of this agent's
    certificate (its TLS alert), or a handshake that did not finish in time."""
    loop = asyncio.get_running_loop()
    host, port = listener.gateway
    where = f"gateway {host}:{port}"
    deadline = loop.time() + timeout_s
    sock = await _tcp_connect(host, port, deadline)
    tls_timeout_s = max(0.01, deadline - loop.time())
    try:
        _, overlay = await asyncio.wait_for(
            loop.create_connection(
                factory,
                sock=sock,
                ssl=context,
                server_hostname=listener.asset,
                ssl_handshake_timeout=tls_timeout_s,
            ),
            tls_timeout_s + 0.5,  # the handshake timeout comes first; this only backs it up
        )
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        if isinstance(exc, PinMismatchError):
            raise ConnectError(f"{where} is not the gateway this agent is pinned to: {exc}") from None
        reason = exc.verify_message or str(exc)
        raise ConnectError(f"the certificate of {where} failed this agent's check: {reason}") from None
    except ssl.SSLError as exc:
        sock.close()
        raise ConnectError(explain_refusal(listener.asset, exc)) from None
    except (TimeoutError, ConnectionAbortedError) as exc:
        sock.close()
        if isinstance(exc, TimeoutError) or "handshake" in str(exc).lower():
            raise ConnectError(
                f"{where} accepted the TCP connection but did not finish the TLS handshake within "
                f"{timeout_s:g} s: the gateway is overloaded, or what listens there is not a gateway"
            ) from None
        raise ConnectError(f"{where} closed the connection during the TLS handshake: {exc}") from None
    except OSError as exc:
        sock.close()
        raise ConnectError(
            f"{where} closed the connection during the TLS handshake ({exc.__class__.__name__}): it "
            "refused this host before authentication (too many connections from it?)"
        ) from None
    return overlay


class _Overlay(asyncio.Protocol):
    """The gateway side of one relayed connection."""

    def __init__(self, local: _Local) -> None:
        self.local = local
        self.transport: asyncio.Transport | None = None
        self.received = 0
        self.connected_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.connected_at = asyncio.get_running_loop().time()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.local.send(data)

    def connection_lost(self, exc: Exception | None) -> None:
        loop_time = asyncio.get_running_loop().time()
        if self.received == 0 and loop_time - self.connected_at < REFUSAL_WINDOW_S and not self.local.closed:
            self.local.agent.count(self.local.agent.refused, self.local.listener)
            log.warning("%s: %s", self.local.name, explain_refusal(self.local.listener.asset, exc))
        self.local.close()

    def pause_writing(self) -> None:
        self.local.pause_reading()

    def resume_writing(self) -> None:
        self.local.resume_reading()


class _Local(asyncio.Protocol):
    """One local client connection, relayed to the gateway."""

    def __init__(self, agent: Agent, listener: AgentListener) -> None:
        self.agent = agent
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.overlay: _Overlay | None = None
        self.closed = False
        self.early: list[bytes] = []  # what the client sent before the overlay was up
        self.name = "local"
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        peer = transport.get_extra_info("peername")
        self.name = f"{peer[0]}:{peer[1]} -> {self.listener.asset}" if peer else self.listener.asset
        # Nothing may pile up while the overlay connects. (uvloop may still deliver a first read after
        # this; data_received keeps it until the overlay is up.)
        self.transport.pause_reading()
        self._task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        host, port = self.listener.gateway
        try:
            overlay = await connect_overlay(
                lambda: _Overlay(self),
                self.listener,
                self.agent.context_for(self.listener),
                self.agent.config.connect_timeout_s,
            )
        except ConnectError as exc:
            self.agent.count(self.agent.connect_failures, self.listener)
            log.warning("%s: %s", self.name, exc)
            self.close()
            return
        if self.closed:
            assert overlay.transport is not None
            overlay.transport.close()
            return
        self.overlay = overlay
        self.agent.live.add(self)
        self.agent.count(self.agent.relayed, self.listener)
        log.info("%s: connected through %s:%d", self.name, host, port)
        if self.early and overlay.transport is not None:
            overlay.transport.write(b"".join(self.early))
            self.early.clear()
        if self.transport is not None:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.overlay is not None and self.overlay.transport is not None:
            self.overlay.transport.write(data)
        else:
            self.early.append(data)
            if self.transport is not None:
                self.transport.pause_reading()

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.agent.live.discard(self)
        if self.overlay is not None and self.overlay.transport is not None:
            self.overlay.transport.close()
        elif self._task is not None and not self._task.done():
            self._task.cancel()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.agent.live.discard(self)
            self.transport.close()

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        if self.overlay is not None and self.overlay.transport is not None:
            self.overlay.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.overlay is not None and self.overlay.transport is not None:
            self.overlay.transport.resume_reading()


# By (the ALPN protocol offered, the gateway pinned): every listener's, and one for proofs of renewal
# per gateway.
Contexts = dict[tuple[str | None, PeerPin], ssl.SSLContext]


def gateway_pin(listener: AgentListener, trust_domain: str) -> PeerPin:
    """The gateway identity ``listener`` accepts: its ``gateway_id``, or else any gateway id of the
    agent's trust domain whose last segment is the first label of the gateway's host name
    (gw-1.plant1.example -> spiffe://plant1.example/gateway/*/gw-1). Raises ValueError for an address."""
    if listener.gateway_id is not None:
        return PeerPin(trust_domain, "gateway", exact=listener.gateway_id)
    host = listener.gateway[0]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return PeerPin(trust_domain, "gateway", name=host.split(".", 1)[0])
    raise ValueError(
        f"listener for {listener.asset}: the gateway {host} is an address, so its SPIFFE id cannot be "
        "derived from its name: set gateway_id"
    )


def _overlay_contexts(keys: frozenset[tuple[str | None, PeerPin]]) -> Callable[[TlsFiles], Contexts]:
    """The client contexts the listeners and proofs of renewal need, all from the agent's certificate."""

    def build(files: TlsFiles) -> Contexts:
        return {
            (alpn, pin): client_context(files.cert, files.key, files.ca, alpn=alpn, peer=pin)
            for alpn, pin in keys
        }

    return build


class Agent:
    def __init__(self, config: AgentConfig, *, watch_tls_s: float = 1.0) -> None:
        self.config = config
        self._watch_tls_s = watch_tls_s
        self._watching: asyncio.Task[None] | None = None
        self.tls: TlsMaterial[Contexts] | None = None
        self.renewer: Renewer | None = None
        self._renewing: asyncio.Task[None] | None = None
        self._servers: list[asyncio.Server] = []
        self.bound: list[tuple[AgentListener, tuple[str, int]]] = []
        self.pins: dict[AgentListener, PeerPin] = {}
        self.live: set[_Local] = set()  # local connections whose overlay connection is up
        self._proofs: set[asyncio.Task[None]] = set()
        self.proofs_sent = 0
        # By asset, for /metrics: overlay connections made, not made, and refused by the gateway.
        self.relayed: dict[str, int] = {}
        self.connect_failures: dict[str, int] = {}
        self.refused: dict[str, int] = {}
        self.admin_port: int | None = None
        self._admin: web.AppRunner | None = None

    @staticmethod
    def count(counts: dict[str, int], listener: AgentListener) -> None:
        counts[listener.asset] = counts.get(listener.asset, 0) + 1

    def context_for(self, listener: AgentListener) -> ssl.SSLContext:
        # Taken per connection: after a renewal, new connections present the new certificate.
        assert self.tls is not None
        return self.tls.current[(listener.protocol, self.pins[listener])]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # Read now: a certificate of the wrong role, or unreadable files, fail the start, not the
        # first connection.
        own = AGENT_ROLE.check(self.config.tls.cert)
        self.pins = {listener: gateway_pin(listener, own.trust_domain) for listener in self.config.listeners}
        keys = {(listener.protocol, pin) for listener, pin in self.pins.items()}
        keys |= {(RENEWAL_ALPN, pin) for pin in self.pins.values()}
        self.tls = TlsMaterial(self.config.tls, _overlay_contexts(frozenset(keys)), role=AGENT_ROLE)
        self.tls.subscribe(self._renewed)
        # Files replaced on disk are taken like a SIGHUP; the log warns as the certificate nears its end.
        self._watching = loop.create_task(self.tls.watch(self._watch_tls_s))
        center = self.config.center
        if center is not None and center.renew:
            self.renewer = Renewer(Credentials(center.credentials), [self.tls])
            self._renewing = loop.create_task(self.renewer.run())
        if self.config.admin_listen is not None:
            state = self._admin_state(str(own))
            self._admin, self.admin_port = await serve_admin(
                process_app(state, "agent"), *self.config.admin_listen
            )
        for listener in self.config.listeners:
            host, port = listener.listen
            if not is_loopback(host):
                log.warning(
                    "LISTENING ON A NON-LOOPBACK ADDRESS %s:%d (allow_remote = true): anyone who "
                    "reaches this plaintext port uses asset %s with this agent's identity (certificate "
                    "%s); firewall it to the hosts that need it",
                    host,
                    port,
                    listener.asset,
                    self.config.tls.cert,
                )
            server = await loop.create_server(lambda li=listener: _Local(self, li), *listener.listen)  # type: ignore[misc]
            self._servers.append(server)
            host, port = server.sockets[0].getsockname()[:2]
            self.bound.append((listener, (host, port)))

    def _admin_state(self, name: str) -> ProcessState:
        """What the admin endpoints show: the agent's certificate (a reload that fails makes it not
        ready, since nothing else would tell), its renewal, and its relays by asset."""
        assert self.tls is not None
        state = ProcessState(name)
        watch_certificate(state, self.tls, self.renewer, reload_failure_unready=True)
        labeled = state.metrics.labeled
        for metric, counts in (
            ("ztgate_agent_connections_relayed", self.relayed),
            ("ztgate_agent_connect_failures", self.connect_failures),
            ("ztgate_agent_sessions_refused", self.refused),
        ):
            labeled[metric] = ("counter", ("asset",), partial(_by_asset, counts))
        state.metrics.gauges["ztgate_agent_connections_open"] = lambda: float(len(self.live))
        return state

    def _renewed(self, material: TlsMaterial[Contexts]) -> None:
        """A new certificate: prove it to every gateway that carries a live session of this agent, so
        that those sessions do not end with the old certificate."""
        loop = asyncio.get_running_loop()
        for gateway, pin in {(local.listener.gateway, self.pins[local.listener]) for local in self.live}:
            task = loop.create_task(self._prove(gateway, material.current[(RENEWAL_ALPN, pin)]))
            self._proofs.add(task)
            task.add_done_callback(self._proofs.discard)

    async def _prove(self, gateway: tuple[str, int], context: ssl.SSLContext) -> None:
        host, port = gateway
        timeout_s = self.config.connect_timeout_s
        for attempt in range(PROOF_ATTEMPTS):
            try:
                answer = await prove_renewal(host, port, context, timeout_s)
            except (OSError, ssl.SSLError, TimeoutError, ValueError) as exc:
                retry_s = 2.0**attempt
                log.warning(
                    "cannot prove the renewed certificate to gateway %s:%d (attempt %d of %d): %s",
                    host, port, attempt + 1, PROOF_ATTEMPTS, exc or "timeout",
                )  # fmt: skip
                if attempt + 1 < PROOF_ATTEMPTS:
                    await asyncio.sleep(retry_s)
                continue
            self.proofs_sent += 1
            log.info(
                "renewed certificate proved to gateway %s:%d: %s live session(s) now end at %s",
                host, port, answer.get("extended"), answer.get("not_after"),
            )  # fmt: skip
            return
        log.error(
            "gave up proving the renewed certificate to gateway %s:%d: its sessions end when the old "
            "certificate expires", host, port,
        )  # fmt: skip

    def reload_tls(self, trigger: str = "request") -> bool:
        """Read certificate, key and CA again (SIGHUP): new connections take them, live ones keep
        theirs, and the new certificate is proved to the gateways. False, logged, if they do not load."""
        assert self.tls is not None
        return self.tls.try_reload(trigger)

    async def stop(self) -> None:
        if self._admin is not None:
            await self._admin.cleanup()
        if self._watching is not None:
            await cancel_tasks([self._watching])
        await cancel_tasks(self._proofs)
        if self._renewing is not None:
            await cancel_tasks([self._renewing])
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()


def _by_asset(counts: dict[str, int]) -> list[tuple[tuple[str, ...], float]]:
    return [((asset,), float(count)) for asset, count in counts.items()]


def configure(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "agent",
        help="run an agent: local ports relayed to a gateway over mutual TLS",
        description="Expose local plain TCP ports that reach assets through a gateway's mutual-TLS overlay.",
    )
    parser.add_argument("--config", required=True, type=Path, help="agent configuration file (TOML)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    log_to_stderr(args.log_level)
    try:
        config = load_agent_config(args.config)
    except ConfigError as error:
        print(f"ztgate agent: configuration refused:\n{error}", file=sys.stderr)
        return 2
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_serve(config))


async def _serve(config: AgentConfig) -> int:
    agent = Agent(config)
    try:
        await agent.start()
    except (OSError, ssl.SSLError, ValueError) as error:
        print(f"ztgate agent: cannot start: {error}", file=sys.stderr)
        await agent.stop()
        return 1
    for listener, (host, port) in agent.bound:
        gw_host, gw_port = listener.gateway
        log.info("%s:%d -> %s via %s:%d", host, port, listener.asset, gw_host, gw_port)
    if agent.admin_port is not None and config.admin_listen is not None:
        host = config.admin_listen[0]
        log.info("admin http://%s:%d", f"[{host}]" if ":" in host else host, agent.admin_port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, agent.reload_tls, "SIGHUP")
    await stop.wait()
    await agent.stop()
    return 0
