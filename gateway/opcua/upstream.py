"""OPC UA towards the device: the gateway's own secure channel and session per client session.

Subscriptions, monitored items and continuation points live in an OPC UA session, so every client session
gets a device session of its own (:class:`DeviceSession`), opened with asyncua's client stack under the
asset's security settings. Requests go out through one adapter over asyncua's private request call — the
only place that touches asyncua's internals (hence asyncua pinned to 2.1.x) — either as a request object
(re-encoded) or, when the policy forwards a request unchanged, as the client's own bytes with the header
fields that belong to the gateway's session patched in (no decode, no re-encode). Responses come back as
bytes, to be relayed or decoded by the session engine.

The asset's pool (:class:`OpcUaPool`) holds one control session of its own: it keeps readiness honest
(``/readyz``), reads the device's namespace array (which policies need to resolve namespace URIs) and
counts device sessions against ``max_sessions``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Final

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.utils import Buffer
from asyncua.crypto.security_policies import SecurityPolicyNone
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.ua_binary import nodeid_to_binary
from asyncua.ua.uaerrors import UaError
from cryptography import x509

from gateway.metrics import UpstreamState
from gateway.runtime import Runtime
from policies import Asset
from protocols.opcua.chunks import encode_spliced_chunk, encode_symmetric_chunks, next_sequence_number
from protocols.opcua.messages import nodeid_end, type_id_span
from protocols.opcua.spec import MSG, SYMMETRIC_CHUNK_HEADER_BYTES

log = logging.getLogger("ztgate.opcua.upstream")

_U32 = struct.Struct("<I")
_SYMMETRIC_HEADER = struct.Struct("<4sIIIII")  # MSG + chunk type, size, channel, token, sequence, request
_TIMESTAMP_BYTES = 8
BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 5.0
MAX_BROWSE_DEPTH = 32  # hierarchy levels between the Root and a node; deeper is a loop or a trap
MAX_CACHED_PATHS = 10_000
ROOT = ua.NodeId(ua.Int32(ObjectIds.RootFolder), ua.Int16(0))


# libuv's timers count milliseconds: a timer may run up to one early for the float deadline it was set at.
_TIMER_SLACK_S: Final = 0.001


class UpstreamUnavailableError(Exception):
    """The device session is not there (not yet, or no more): answer Bad, do not wait."""


class DeviceSession:
    """One asyncua client session on the device, for one client session of the gateway."""

    def __init__(self, asset: Asset) -> None:
        self.asset = asset
        self.client = Client(asset.endpoint_url, timeout=asset.response_timeout_s)
        self.namespaces: tuple[str, ...] = ()
        self.closed = False
        self._token: ua.NodeId | None = None
        self._token_bytes = b""
        self._loop: asyncio.AbstractEventLoop | None = None  # kept: getting it is a getpid() each time
        self._deadlines: _Deadlines | None = None  # of the relayed requests; made with the loop

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        password = await asyncio.to_thread(read_password, self.asset)
        await configure_security(self.client, self.asset, password)
        async with asyncio.timeout(self.asset.connect_timeout_s):
            await self.client.connect(auto_reconnect=False)
            self.namespaces = tuple(await self.client.get_namespace_array())
        protocol = self.client.uaclient.protocol
        if (
            protocol is not None
            and protocol.transport is not None
            and isinstance(protocol._connection.security_policy, SecurityPolicyNone)
        ):
            protocol.transport.set_protocol(FastReplies(protocol))

    @property
    def alive(self) -> bool:
        protocol = self.client.uaclient.protocol
        return not self.closed and protocol is not None and protocol.transport is not None

    def _protocol(self) -> Any:
        protocol = self.client.uaclient.protocol
        if self.closed or protocol is None or protocol.transport is None:
            raise UpstreamUnavailableError("no session on the device")
        return protocol

    async def send(self, request: Any, timeout_s: float) -> bytes:
        """Forward a request object (asyncua sets our handle, token and timeout in its header)."""
        loop = self._loop or asyncio.get_running_loop()
        future = self._protocol()._send_request(request, timeout_s)
        return await _result(_timed(future, timeout_s, loop), timeout_s)

    async def send_raw(self, body: bytes, timeout_s: float) -> bytes:
        """Forward the client's own request bytes, with our authentication token and request handle."""
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._write_raw(body, future)
        return await _result(_timed(future, timeout_s, loop), timeout_s)

    def relay_raw(
        self,
        body: bytes,
        timeout_s: float,
        reply: ReplyCallback,
        late: Callable[[], None],
        token_span: tuple[int, int] | None = None,
    ) -> None:
        """:meth:`send_raw` without a coroutine or a future: ``reply(body, None)`` runs in the
        ``data_received`` that brings the response, ``reply(None, error)`` when the connection fails or
        (TimeoutError) when ``timeout_s`` passes first; a response after that calls ``late()``. Raises
        what the device's connection raises when it is gone (and then ``reply`` is never called).
        ``token_span``: where the client's AuthenticationToken is in ``body``, when already known."""
        waiter = _Reply(reply, late)
        self._write_raw(body, waiter, token_span)
        deadlines = self._deadlines
        if deadlines is None:
            deadlines = self._deadlines = _Deadlines(self._loop or asyncio.get_running_loop(), self._waiting)
        deadlines.add(waiter, timeout_s)

    def _waiting(self) -> list[Any]:
        """The recipients still in asyncua's callback map: its futures and our _Replies."""
        protocol = self.client.uaclient.protocol
        if protocol is None or self.closed:
            return []
        return list(protocol._callbackmap.values())

    def _write_raw(self, body: bytes, waiter: Any, token_span: tuple[int, int] | None = None) -> None:
        """Frame the client's bytes with our session's token, handle and request id, and register
        ``waiter`` where asyncua's client looks for the response's recipient."""
        protocol = self.client.uaclient.protocol
        if self.closed or protocol is None or protocol.transport is None:
            raise UpstreamUnavailableError("no session on the device")
        protocol._request_handle += 1
        token = protocol.authentication_token
        if token is not self._token:  # encoded once per session
            self._token, self._token_bytes = token, nodeid_to_binary(token)
        request_id = protocol._request_id + 1
        connection = protocol._connection
        if connection.next_security_token.TokenId != 0:  # asyncua's revolve_security_token, in line
            connection.revolve_tokens()
        if token_span is None:
            start = type_id_span(body)[1]
            token_span = start, nodeid_end(body, start)
        message = _frame_request(
            connection, body, self._token_bytes, protocol._request_handle, token_span, request_id
        )
        protocol._request_id = request_id
        protocol._callbackmap[request_id] = waiter
        protocol.transport.write(message)

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


ReplyCallback = Callable[[bytes | None, BaseException | None], None]


class _Reply:
    """The recipient of one response in asyncua's callback map, in place of a future: asyncua hands the
    response over with ``set_result`` (or a failure with ``set_exception``) and the callback runs there
    and then, without a turn of the event loop in between. Answers once: a timeout first makes the
    response late."""

    __slots__ = ("_done", "_late", "_reply", "deadline")

    def __init__(self, reply: ReplyCallback, late: Callable[[], None]) -> None:
        self._reply = reply
        self._late = late
        self._done = False
        self.deadline = 0.0  # loop time; DeviceSession._expire_due times it out

    def done(self) -> bool:
        return self._done

    def set_result(self, body: Any) -> None:
        if self._done:
            self._late()
            return
        self._done = True
        self._reply(bytes(body), None)

    def set_exception(self, error: BaseException) -> None:
        if not self._done:
            self._done = True
            self._reply(None, error)

    def expire(self) -> None:
        if not self._done:
            self._done = True
            self._reply(None, TimeoutError("no response in time"))


class _Deadlines:
    """The deadlines of many relayed requests on one timer: it wakes at the earliest, times out what is
    due and sleeps until the next (a timer per request costs more than the rest of the relay's
    bookkeeping). ``waiting()`` lists the recipients still waiting; answered ones drop out of it."""

    __slots__ = ("_at", "_loop", "_timer", "_waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, waiting: Callable[[], list[Any]]) -> None:
        self._loop = loop
        self._waiting = waiting
        self._timer: asyncio.TimerHandle | None = None
        self._at = 0.0

    def add(self, waiter: _Reply, timeout_s: float) -> None:
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
            if type(waiter) is not _Reply or waiter.done():
                continue
            if waiter.deadline <= now:
                waiter.expire()
            elif following is None or waiter.deadline < following:
                following = waiter.deadline
        if following is not None:
            self._arm(following)


class FastReplies(asyncio.Protocol):
    """asyncua's client protocol, with single-chunk MSG responses under SecurityPolicy None taken off the
    wire by hand: header checks, sequence number, and the body handed to the waiting request, as asyncua
    would (its chunk objects cost tens of microseconds per response). Everything else — intermediate
    chunks, other tokens, OPN, ERR, partial data — goes to asyncua's own parser, which keeps its state
    (the peer's sequence number is updated here for the chunks taken)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def data_received(self, data: bytes) -> None:
        inner = self.inner
        if inner.receive_buffer:
            data = inner.receive_buffer + data
            inner.receive_buffer = None
        connection = inner._connection
        token = connection.security_token
        offset, end = 0, len(data)
        while end - offset >= _SYMMETRIC_HEADER.size and not connection._incoming_parts:
            kind, size, channel, token_id, sequence, request_id = _SYMMETRIC_HEADER.unpack_from(data, offset)
            expected = connection._peer_sequence_number
            if (
                kind != b"MSGF"
                or size < _SYMMETRIC_HEADER.size
                or offset + size > end
                or size > connection._limits.max_recv_buffer
                or channel != token.ChannelId
                or token_id != token.TokenId
                or (expected is not None and sequence != expected + 1)
            ):
                break
            connection._peer_sequence_number = sequence
            body = data[offset + _SYMMETRIC_HEADER.size : offset + size]
            offset += size
            try:
                waiter = inner._callbackmap.get(request_id)
                if type(waiter) is _Reply:  # ours: the bytes as they are, without asyncua's Buffer
                    del inner._callbackmap[request_id]
                    waiter.set_result(body)
                else:
                    inner._call_callback(request_id, Buffer(body))
            except Exception:  # what asyncua does with a response it cannot place: log, hang up
                log.exception("device response for unknown request id %d", request_id)
                inner.disconnect_socket()
                return
        if offset < end:
            inner._process_received_data(data[offset:] if offset else data)


def _frame_request(
    connection: Any,
    body: bytes,
    token: bytes,
    request_handle: int,
    token_span: tuple[int, int],
    request_id: int,
) -> bytes:
    """The client's request ``body`` (type id, RequestHeader, parameters) as MSG chunks on asyncua's
    secure connection, with the AuthenticationToken (``token``, encoded) and RequestHandle of the
    gateway's device session in its header. Part 4, 7.32: the header starts AuthenticationToken
    (NodeId, at ``token_span`` in the body), Timestamp, RequestHandle.

    Under SecurityPolicy None there is nothing to sign or encrypt, and the codec's framer does in a few
    microseconds what asyncua's chunk objects take tens for: a request that fits one chunk is patched and
    framed in one join. asyncua's sequence number moves on as if it had framed the chunks itself."""
    start, after_token = token_span
    handle_at = after_token + _TIMESTAMP_BYTES
    insert = b"".join((token, body[after_token:handle_at], _U32.pack(request_handle)))
    if not isinstance(connection.security_policy, SecurityPolicyNone):
        message: bytes = connection.message_to_binary(
            body[:start] + insert + body[handle_at + 4 :],
            message_type=ua.MessageType.SecureMessage,
            request_id=request_id,
        )
        return message
    security_token = connection.security_token
    channel_id, token_id = security_token.ChannelId, security_token.TokenId
    first = connection._sequence_number + 1
    if first >= 1 << 32:
        first = 1
    size = len(body) - (handle_at + 4 - start) + len(insert)
    if size <= connection._limits.max_send_buffer - SYMMETRIC_CHUNK_HEADER_BYTES:
        message = encode_spliced_chunk(
            channel_id, token_id, first, request_id, body, start, handle_at + 4, insert
        )
        following = next_sequence_number(first)
    else:
        message, following = encode_symmetric_chunks(
            MSG,
            channel_id,
            token_id,
            request_id,
            body[:start] + insert + body[handle_at + 4 :],
            first,
            connection._limits.max_send_buffer,
        )
    connection._sequence_number = following - 1
    return message


def _timed(
    future: asyncio.Future[Any], timeout_s: float, loop: asyncio.AbstractEventLoop
) -> asyncio.Future[Any]:
    """``future``, cancelled if it is not done within ``timeout_s`` (a timer on the future: no task,
    no waiter, unlike ``asyncio.wait_for``)."""
    timer = loop.call_later(timeout_s, future.cancel)
    future.add_done_callback(lambda _done: timer.cancel())
    return future


async def _result(future: asyncio.Future[Any], timeout_s: float) -> bytes:
    """The bytes of a :func:`_timed` future, or TimeoutError when its timer cancelled it."""
    try:
        return bytes(await future)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():  # cancelled from outside, not by the timer
            raise
        raise TimeoutError(f"no response within {timeout_s} s") from None


def read_password(asset: Asset) -> str | None:
    """The device password from the asset's ``password_file``, read for every new device session so a
    changed file takes effect without a restart."""
    password_file = asset.user.password_file
    return Path(password_file).read_text().strip() if password_file else None


def application_uri(certificate: Path) -> str | None:
    """The URI in a certificate's subjectAltName (PEM or DER), if it has one."""
    data = certificate.read_bytes()
    cert = (
        x509.load_pem_x509_certificate(data)
        if b"-----BEGIN" in data
        else x509.load_der_x509_certificate(data)
    )
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


async def configure_security(client: Client, asset: Asset, password: str | None) -> None:
    """The asset's security policy, mode and user token on an asyncua client."""
    if asset.application_cert is not None:
        # The ApplicationUri the gateway states must be the one in its certificate (Part 4, 5.6.2).
        uri = await asyncio.to_thread(application_uri, Path(asset.application_cert))
        if uri is not None:
            client.application_uri = uri
    if asset.security_mode != "None":
        if asset.application_cert is None or asset.application_key is None:
            raise ValueError(
                f"{asset.name}: {asset.security_policy} {asset.security_mode} needs application_cert"
                " and application_key"
            )
        # Without device_cert asyncua takes the certificate the device's endpoint offers, unchecked.
        pinned = f",{asset.device_cert}" if asset.device_cert else ""
        await client.set_security_string(
            f"{asset.security_policy},{asset.security_mode},{asset.application_cert},{asset.application_key}"
            + pinned
        )
    user = asset.user
    if user.kind == "username" and user.username:
        client.set_user(user.username)
        if password is not None:
            client.set_password(password)
    elif user.kind == "certificate" and asset.application_cert and asset.application_key:
        await client.load_client_certificate(asset.application_cert)
        await client.load_private_key(Path(asset.application_key))


def connect_failure(asset: Asset, exc: BaseException) -> str:
    """Why a device session did not open, for the audit record and /readyz."""
    if isinstance(exc, TimeoutError):
        reason = f"no session within connect_timeout_s ({asset.connect_timeout_s} s)"
        if asset.device_cert:  # a device whose key is not the pinned one cannot read our OPN: silence
            reason += f"; is device_cert ({asset.device_cert}) the device's certificate?"
        return reason
    return f"{exc.__class__.__name__}: {exc}"


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

    @property
    def max_sessions(self) -> int:
        return self.asset.max_sessions

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._keep_control())

    def retire(self) -> None:
        self._retired = True
        if self._task is not None:
            self._task.cancel()
        if self.control is not None:
            asyncio.get_running_loop().create_task(self.control.close())
            self.control = None

    async def _keep_control(self) -> None:
        backoff_s = BACKOFF_INITIAL_S
        while not self._retired:
            session = DeviceSession(self.asset)
            try:
                await session.open()
            except (OSError, TimeoutError, ConnectionError, UaError) as exc:
                self.connect_failures += 1
                self._event("connect_failed", connect_failure(self.asset, exc))
                await session.close()
                await asyncio.sleep(backoff_s * (0.5 + random.random() / 2))
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
                continue
            backoff_s = BACKOFF_INITIAL_S
            self.control, self.namespaces = session, session.namespaces
            self._paths.clear()  # a restarted device may have a new address space
            self._event("connected", None)
            # asyncua's own watchdog reads ServerState and owns the connection-lost hook; the pool
            # only looks at the socket once a second.
            while session.alive and not self._retired:  # noqa: ASYNC110
                await asyncio.sleep(1.0)
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
        )

    def _event(self, kind: str, reason: str | None) -> None:
        if kind == "connect_failed" and reason == self.last_error:
            return
        self.last_error = reason
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
