"""OPC UA towards the device: the gateway's own secure channel and session per client session.

Subscriptions, monitored items and continuation points live in an OPC UA session, so every client session
gets a device session of its own (:class:`DeviceSession`), opened with asyncua's client stack under the
asset's security settings. Requests go out through :mod:`gateway.opcua.asyncua_adapter`, the only module
that touches asyncua's internals, either as a request object (re-encoded) or, when the policy forwards a
request unchanged, as the client's own bytes with the header fields that belong to the gateway's session
patched in (no decode, no re-encode). Responses come back as bytes, by callback, to be relayed or decoded
by the session engine; one timer per device session times out those that do not come.

The asset's pool (:class:`OpcUaPool`) holds one control session of its own: it keeps readiness honest
(``/readyz``), reads the device's namespace array (which policies need to resolve namespace URIs) and
counts device sessions against ``max_sessions``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from time import monotonic
from typing import Any, ClassVar, Final

from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto import security_policies
from asyncua.crypto.uacrypto import CertProperties
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from gateway.metrics import UpstreamState
from gateway.opcua.asyncua_adapter import AsyncuaLink, Reply, ReplyCallback
from gateway.runtime import Runtime
from policies import Asset

# The asset's reconnection to its device (the control session's loop, which every client session's new
# device session waits for): at once, then after waits doubling from BACKOFF_INITIAL_S to BACKOFF_MAX_S,
# each drawn between half and all of it (jitter: gateways and sessions do not come back in step).
BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 5.0
CONTROL_CHECK_S = 1.0  # how often the control session's socket is looked at
SERVER_STATE = ua.NodeId(ua.Int32(ObjectIds.Server_ServerStatus_State), ua.Int16(0))
MAX_BROWSE_DEPTH = 32  # hierarchy levels between the Root and a node; deeper is a loop or a trap
MAX_CACHED_PATHS = 10_000
ROOT = ua.NodeId(ua.Int32(ObjectIds.RootFolder), ua.Int16(0))
log = logging.getLogger("ztgate.opcua.upstream")


# libuv's timers count milliseconds: a timer may run up to one early for the float deadline it was set at.
_TIMER_SLACK_S: Final = 0.001


def jittered(backoff_s: float) -> float:
    return backoff_s * (0.5 + random.random() / 2)


class UpstreamUnavailableError(Exception):
    """The device session is not there (not yet, or no more): answer Bad, do not wait."""


class DeviceSession:
    """One asyncua client session on the device, for one client session of the gateway."""

    def __init__(self, asset: Asset) -> None:
        self.asset = asset
        self.client = Client(asset.endpoint_url, timeout=asset.response_timeout_s)
        self.namespaces: tuple[str, ...] = ()
        self.closed = False
        self._link = AsyncuaLink(self.client)
        self._loop: asyncio.AbstractEventLoop | None = None  # kept: getting it is a getpid() each time
        self._deadlines: _Deadlines | None = None  # of the requests sent; made with the loop

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        password = await asyncio.to_thread(read_password, self.asset)
        await configure_security(self.client, self.asset, password)
        async with asyncio.timeout(self.asset.connect_timeout_s):
            await self.client.connect(auto_reconnect=False)
            self.namespaces = tuple(await self.client.get_namespace_array())
        self._link.take_fast_replies()

    @property
    def alive(self) -> bool:
        return not self.closed and self._link.connected

    def send(self, request: Any, timeout_s: float, reply: ReplyCallback, late: Callable[[], None]) -> None:
        """Send a request object, encoded by asyncua with the session's handle, token and timeout in its
        header. No coroutine and no future: ``reply(body, None)`` runs in the ``data_received`` that
        brings the response, ``reply(None, error)`` when the connection fails or (TimeoutError) when
        ``timeout_s`` passes first; a response after that calls ``late()``. Raises
        UpstreamUnavailableError when the session is gone (then ``reply`` is never called), or what the
        device's connection raises."""
        waiter = Reply(reply, late)
        if self.closed or not self._link.send(request, timeout_s, waiter):
            raise UpstreamUnavailableError("no session on the device")
        self._deadline(waiter, timeout_s)

    def send_raw(
        self,
        body: bytes,
        timeout_s: float,
        reply: ReplyCallback,
        late: Callable[[], None],
        token_span: tuple[int, int] | None = None,
    ) -> None:
        """:meth:`send` for the client's own request bytes, sent with the device session's authentication
        token and request handle patched in (no decode, no re-encode). ``token_span``: where the client's
        AuthenticationToken is in ``body``, when already known."""
        waiter = Reply(reply, late)
        if self.closed or not self._link.send_raw(body, waiter, token_span):
            raise UpstreamUnavailableError("no session on the device")
        self._deadline(waiter, timeout_s)

    def _deadline(self, waiter: Reply, timeout_s: float) -> None:
        deadlines = self._deadlines
        if deadlines is None:
            deadlines = self._deadlines = _Deadlines(self._loop or asyncio.get_running_loop(), self._waiting)
        deadlines.add(waiter, timeout_s)

    def _waiting(self) -> list[Any]:
        """The recipients still waiting for a response."""
        return [] if self.closed else self._link.waiting()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._deadlines is not None:
            self._deadlines.cancel()
        try:
            async with asyncio.timeout(2):
                await self.client.disconnect()
        except Exception:  # the device may be gone already: nothing to say goodbye to
            self.client.disconnect_socket()


class _Deadlines:
    """The deadlines of many requests on one timer: it wakes at the earliest, times out what is due and
    sleeps until the next (a timer per request costs more than the rest of the relay's bookkeeping).
    ``waiting()`` lists the recipients still waiting; answered ones drop out of it."""

    __slots__ = ("_at", "_loop", "_timer", "_waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, waiting: Callable[[], list[Any]]) -> None:
        self._loop = loop
        self._waiting = waiting
        self._timer: asyncio.TimerHandle | None = None
        self._at = 0.0

    def add(self, waiter: Reply, timeout_s: float) -> None:
        waiter.deadline = deadline = self._loop.time() + timeout_s
        if self._timer is None or deadline < self._at:  # earlier: a shorter timeout since a reload
            self._arm(deadline)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, deadline: float) -> None:
        self.cancel()
        self._at = deadline
        self._timer = self._loop.call_at(deadline, self._expire_due)

    def _expire_due(self) -> None:
        self._timer = None
        now = self._loop.time() + _TIMER_SLACK_S
        following: float | None = None
        for waiter in self._waiting():
            if type(waiter) is not Reply or waiter.done():
                continue
            if waiter.deadline <= now:
                waiter.expire()
            elif following is None or waiter.deadline < following:
                following = waiter.deadline
        if following is not None:
            self._arm(following)


def read_password(asset: Asset) -> str | None:
    """The device password from the asset's ``password_file``, read for every new device session so a
    changed file takes effect without a restart."""
    password_file = asset.user.password_file
    return Path(password_file).read_text().strip() if password_file else None


def load_certificate(path: Path) -> x509.Certificate:
    """An X.509 certificate from a PEM or DER file, told apart by what is in it (never by the file's name);
    ValueError naming the file when it is neither."""
    data = path.read_bytes()
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as error:
        raise ValueError(f"{path}: not an X.509 certificate in PEM or DER ({error})") from None


def load_private_key(path: Path) -> PrivateKeyTypes:
    """An unencrypted private key from a PEM or DER file, told apart by what is in it; ValueError naming
    the file when it is neither."""
    data = path.read_bytes()
    try:
        if b"-----BEGIN" in data:
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError) as error:  # TypeError: encrypted, and no password to give
        raise ValueError(f"{path}: not an unencrypted private key in PEM or DER ({error})") from None


@dataclass(frozen=True)
class Credentials:
    """What the gateway shows the device of itself, and the device's certificate when pinned, loaded."""

    certificate: x509.Certificate | None
    key: PrivateKeyTypes | None
    device: x509.Certificate | None

    @property
    def application_uri(self) -> str | None:
        """The URI in the certificate's subjectAltName, if it has one."""
        if self.certificate is None:
            return None
        try:
            names = self.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return None
        uris = names.get_values_for_type(x509.UniformResourceIdentifier)
        return uris[0] if uris else None


def load_credentials(asset: Asset) -> Credentials:
    """The asset's application certificate and key and pinned device certificate, read from their files
    (read for every new device session, so replaced files take effect without a restart)."""
    return Credentials(
        load_certificate(Path(asset.application_cert)) if asset.application_cert else None,
        load_private_key(Path(asset.application_key)) if asset.application_key else None,
        load_certificate(Path(asset.device_cert)) if asset.device_cert else None,
    )


def _der(certificate: x509.Certificate) -> CertProperties:
    return CertProperties(certificate.public_bytes(serialization.Encoding.DER), extension="der")


async def configure_security(client: Client, asset: Asset, password: str | None) -> None:
    """The asset's security policy, mode and user token on an asyncua client, with the certificates and
    key loaded here (asyncua would tell PEM from DER by the file's extension)."""
    loaded = await asyncio.to_thread(load_credentials, asset)
    uri = loaded.application_uri
    if uri is not None:
        # The ApplicationUri the gateway states must be the one in its certificate (Part 4, 5.6.2).
        client.application_uri = uri
    if asset.security_mode != "None":
        if loaded.certificate is None or loaded.key is None:
            raise ValueError(
                f"{asset.name}: {asset.security_policy} {asset.security_mode} needs application_cert"
                " and application_key"
            )
        key = loaded.key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # Without device_cert asyncua takes the certificate the device's endpoint offers, unchecked.
        await client.set_security(
            getattr(security_policies, f"SecurityPolicy{asset.security_policy}"),
            _der(loaded.certificate),
            CertProperties(key, extension="der"),
            server_certificate=None if loaded.device is None else _der(loaded.device),
            mode=getattr(ua.MessageSecurityMode, asset.security_mode),
        )
    user = asset.user
    if user.kind == "username" and user.username:
        client.set_user(user.username)
        if password is not None:
            client.set_password(password)
    elif user.kind == "certificate" and loaded.certificate is not None and loaded.key is not None:
        client.user_certificate = loaded.certificate
        client.user_private_key = loaded.key


# Status codes by which a device says it refused the gateway's application certificate.
_CERTIFICATE_REFUSALS: Final = frozenset(
    (
        StatusCodes.BadSecurityChecksFailed,
        StatusCodes.BadCertificateUntrusted,
        StatusCodes.BadCertificateInvalid,
        StatusCodes.BadCertificateUriInvalid,
        StatusCodes.BadCertificateUseNotAllowed,
        StatusCodes.BadCertificateTimeInvalid,
        StatusCodes.BadCertificateRevoked,
        StatusCodes.BadCertificateRevocationUnknown,
        StatusCodes.BadCertificateIssuerRevocationUnknown,
        StatusCodes.BadSecurityPolicyRejected,
    )
)


def _refused_certificate(asset: Asset, exc: BaseException) -> bool:
    if asset.security_mode == "None":
        return False
    if isinstance(exc, UaStatusCodeError):
        return exc.code in _CERTIFICATE_REFUSALS
    # asyncua asserts on the OPN answer of a device that closed the channel instead of answering it, and
    # reports only "connection lost" for the Error message (BadSecurityChecksFailed) node-opcua sends.
    closed = isinstance(exc, AssertionError | ConnectionResetError | asyncio.IncompleteReadError)
    return closed or type(exc) is ConnectionError


def connect_failure(asset: Asset, exc: BaseException) -> str:
    """Why a device session did not open, in words a person can act on: for the audit record, the log and
    /readyz."""
    if isinstance(exc, TimeoutError):
        reason = f"no session within connect_timeout_s ({asset.connect_timeout_s} s)"
        if asset.device_cert:  # a device whose key is not the pinned one cannot read our OPN: silence
            reason += f"; is device_cert ({asset.device_cert}) the device's certificate?"
        return reason
    detail = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
    if _refused_certificate(asset, exc):
        return (
            f"the device rejected the gateway's application certificate ({asset.application_cert}):"
            f" add it to the device's trust list ({detail})"
        )
    if isinstance(exc, ConnectionRefusedError):
        return f"nothing accepts connections at {asset.endpoint_url} ({detail})"
    return detail


class OpcUaPool:
    """An asset's control session, the count of device sessions, and what metrics and readiness see."""

    protocol_name: ClassVar[str] = "opcua"

    def __init__(self, asset: Asset, runtime: Runtime) -> None:
        self.asset = asset
        self.runtime = runtime
        self.control: DeviceSession | None = None
        self.sessions = 0
        self.connect_failures = 0
        self.timeouts = 0
        self.late_replies = 0
        self._task: asyncio.Task[None] | None = None
        self._retired = False
        self.last_error: str | None = None
        self.namespaces: tuple[str, ...] = ()
        self._paths: dict[ua.NodeId, tuple[ua.QualifiedName, ...] | None] = {}
        # The last time (monotonic) the control session showed the device is there: a connection it
        # opened, or a read on it started then; and the event of the next such time.
        self._seen_at = 0.0
        self._seen = asyncio.Event()
        self._look = asyncio.Event()  # a client session asks whether the device is there: look now

    @property
    def max_sessions(self) -> int:
        return self.asset.max_sessions

    def reserve_session(self) -> bool:
        """Take one of the asset's ``max_sessions`` places for a device session about to open; False when
        all are taken. Synchronous: no other session can take the same place meanwhile."""
        if self.sessions >= self.max_sessions:
            return False
        self.sessions += 1
        return True

    def release_session(self) -> None:
        self.sessions -= 1

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._keep_control())

    def retire(self) -> None:
        self._retired = True
        if self._task is not None:
            self._task.cancel()
        if self.control is not None:
            asyncio.get_running_loop().create_task(self.control.close())
            self.control = None

    async def device_back(self, since: float) -> None:
        """Until the control session has shown the device to be there after ``since`` (monotonic): by a
        connection it opened later, or a read on it started later. One look serves every session that
        waits; while the device is away that is the loop's next reconnection, with its back-off."""
        while self._seen_at <= since:
            seen = self._seen
            self._look.set()
            await seen.wait()

    def _saw_device(self, at: float) -> None:
        self._seen_at = at
        seen, self._seen = self._seen, asyncio.Event()
        seen.set()

    async def _device_answers(self, session: DeviceSession) -> bool:
        """Whether the device answers a read of its ServerState on the control session now."""
        try:
            async with asyncio.timeout(self.asset.connect_timeout_s):
                await session.client.get_node(SERVER_STATE).read_value()
        except Exception:  # whatever the failure: the control session is no good
            return False
        return True

    async def _keep_control(self) -> None:
        backoff_s = BACKOFF_INITIAL_S
        while not self._retired:
            session = DeviceSession(self.asset)
            opened = monotonic()
            try:
                await session.open()
            except Exception as exc:  # whatever the failure, retried: a person may fix it meanwhile
                self.connect_failures += 1
                self._event("connect_failed", connect_failure(self.asset, exc))
                await session.close()
                await asyncio.sleep(jittered(backoff_s))
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
                continue
            backoff_s = BACKOFF_INITIAL_S
            self.control, self.namespaces = session, session.namespaces
            self._paths.clear()  # a restarted device may have a new address space
            self._event("connected", None)
            self._saw_device(opened)
            # asyncua's own watchdog reads ServerState and owns the connection-lost hook; the pool looks
            # at the socket every CONTROL_CHECK_S, and reads ServerState when a client session asks.
            while session.alive and not self._retired:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._look.wait(), CONTROL_CHECK_S)
                if not self._look.is_set() or not session.alive:
                    continue
                self._look.clear()  # asked again while reading: read again
                looked = monotonic()
                if not await self._device_answers(session):
                    break
                self._saw_device(looked)
            self.control = None
            if not self._retired:
                self._event("disconnected", "control session lost")
            await session.close()

    async def browse_path(self, node_id: ua.NodeId) -> tuple[ua.QualifiedName, ...] | None:
        """The browse names from below the Root down to ``node_id``, following the first hierarchical
        parent the device reports at each level (asyncua's ``get_parent``), on the control session;
        cached per node. None when the device is not there or the node has no way up to the Root."""
        return await self._path(node_id, MAX_BROWSE_DEPTH)

    async def _path(self, node_id: ua.NodeId, depth: int) -> tuple[ua.QualifiedName, ...] | None:
        if node_id == ROOT:
            return ()
        if node_id in self._paths:
            return self._paths[node_id]
        control = self.control
        if control is None or depth == 0:
            return None
        node = control.client.get_node(node_id)
        try:
            name = await node.read_browse_name()
            parent = await node.get_parent()
        except (UaError, OSError, TimeoutError, ConnectionError):
            return None  # not cached: the next request asks again
        above = None if parent is None else await self._path(parent.nodeid, depth - 1)
        path = None if above is None else (*above, name)
        if len(self._paths) >= MAX_CACHED_PATHS:
            self._paths.clear()
        self._paths[node_id] = path
        return path

    def state(self) -> UpstreamState:
        return UpstreamState(
            asset=self.asset.name,
            protocol="opcua",
            connected=1 if self.control is not None and self.control.alive else 0,
            max_connections=self.max_sessions,
            in_flight=self.sessions,
            queued=0,
            late_replies=self.late_replies,
            timeouts=self.timeouts,
            connect_failures=self.connect_failures,
            last_error=self.last_error,
        )

    def _event(self, kind: str, reason: str | None) -> None:
        if kind == "connect_failed" and reason == self.last_error:
            return  # said once; /readyz goes on saying it
        self.last_error = reason
        if reason is not None:
            log.warning("%s: device %s %s: %s", self.asset.name, self.asset.endpoint_url, kind, reason)
        event: dict[str, Any] = {
            "event": "upstream",
            "asset": self.asset.name,
            "protocol": "opcua",
            "state": kind,
            "upstream": self.asset.endpoint_url,
        }
        if reason is not None:
            event["reason"] = reason
        self.runtime.audit.emit(event)
