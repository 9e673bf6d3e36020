"""The one module that knows asyncua's private internals: how the gateway's device sessions send and take
requests beside asyncua's public client API.

asyncua's public ``send_request`` waits in a task of its own and hands back a ``Buffer``; on the gateway's
path every request is a callback instead, and the client's own bytes may go out unchanged. For that the
gateway, on asyncua's ``UASocketProtocol`` of a connected ``Client``:

- sends a request object with ``_send_request`` and puts its own recipient (:class:`Reply`) where asyncua
  put its future, in ``_callbackmap`` under the request id;
- frames the client's bytes itself (:func:`frame_request`), with the session's ``authentication_token``
  and the next ``_request_handle`` and ``_request_id``, on the secure connection (``_connection``) whose
  ``_sequence_number`` moves on as if asyncua had framed them;
- under SecurityPolicy None, swaps :class:`FastReplies` in as the transport's protocol: single-chunk
  responses are taken off the wire by hand (``_peer_sequence_number``, ``_incoming_parts``, ``_limits``)
  and everything else goes on to asyncua's ``_process_received_data``.

:data:`INTERNALS` lists every private name used here, and :func:`missing_internals` names those an
installed asyncua lacks (tests/gateway/test_opcua_asyncua_adapter.py fails with that list): asyncua is pinned
to 2.1.x for them.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from importlib.metadata import version
from typing import Any, Final

from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UASocketProtocol
from asyncua.common.connection import SecureConnection, TransportLimits
from asyncua.common.utils import Buffer
from asyncua.crypto.security_policies import SecurityPolicyNone
from asyncua.ua.ua_binary import nodeid_to_binary

from protocols.opcua.chunks import encode_spliced_chunk, encode_symmetric_chunks, next_sequence_number
from protocols.opcua.messages import nodeid_end, type_id_span
from protocols.opcua.spec import MSG, SYMMETRIC_CHUNK_HEADER_BYTES

log = logging.getLogger("ztgate.opcua.upstream")

_U32 = struct.Struct("<I")
_SYMMETRIC_HEADER = struct.Struct("<4sIIIII")  # MSG + chunk type, size, channel, token, sequence, request
_TIMESTAMP_BYTES = 8

# Every private name of asyncua this module uses, by the class that has it (attributes set in
# ``__init__`` are looked for on an instance).
INTERNALS: Final = {
    UASocketProtocol: (
        "_send_request",
        "_callbackmap",
        "_request_id",
        "_request_handle",
        "_connection",
        "_call_callback",
        "_process_received_data",
        "receive_buffer",
        "authentication_token",
        "disconnect_socket",
    ),
    SecureConnection: (
        "_sequence_number",
        "_peer_sequence_number",
        "_incoming_parts",
        "_limits",
        "security_policy",
        "security_token",
        "next_security_token",
        "revolve_tokens",
        "message_to_binary",
    ),
    TransportLimits: ("max_recv_buffer", "max_send_buffer"),
}


def missing_internals() -> list[str]:
    """What of :data:`INTERNALS` the installed asyncua lacks, one line each naming the attribute and the
    asyncua version; empty when everything is there."""
    protocol = UASocketProtocol(1.0)
    instances: dict[type, Any] = {
        UASocketProtocol: protocol,
        SecureConnection: protocol._connection if hasattr(protocol, "_connection") else None,
        TransportLimits: TransportLimits(65535, 65535, 0, 0),
    }
    problems = []
    for cls, names in INTERNALS.items():
        instance = instances[cls]
        for name in names:
            if not hasattr(cls, name) and (instance is None or not hasattr(instance, name)):
                problems.append(
                    f"asyncua {version('asyncua')}: {cls.__name__} has no attribute {name!r}, which "
                    f"gateway/opcua/asyncua_adapter.py relies on"
                )
    return problems


ReplyCallback = Callable[[bytes | None, BaseException | None], None]


class Reply:
    """The recipient of one response in asyncua's callback map, in place of a future: asyncua hands the
    response over with ``set_result`` (or a failure with ``set_exception``) and the callback runs there
    and then, without a turn of the event loop in between. Answers once: a timeout first makes the
    response late."""

    __slots__ = ("_done", "_late", "_reply", "deadline")

    def __init__(self, reply: ReplyCallback, late: Callable[[], None]) -> None:
        self._reply = reply
        self._late = late
        self._done = False
        self.deadline = 0.0  # loop time; the session's deadlines time it out

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


class AsyncuaLink:
    """A connected asyncua ``Client``'s socket protocol, by the internals the device session uses."""

    __slots__ = ("_client", "_token", "_token_bytes")

    def __init__(self, client: Client) -> None:
        self._client = client
        self._token: ua.NodeId | None = None
        self._token_bytes = b""

    def _protocol(self) -> Any | None:
        protocol = self._client.uaclient.protocol
        return protocol if protocol is not None and protocol.transport is not None else None

    @property
    def connected(self) -> bool:
        return self._protocol() is not None

    def take_fast_replies(self) -> None:
        """Under SecurityPolicy None, put :class:`FastReplies` in front of asyncua's protocol."""
        protocol = self._protocol()
        if protocol is not None and isinstance(protocol._connection.security_policy, SecurityPolicyNone):
            protocol.transport.set_protocol(FastReplies(protocol))

    def send(self, request: Any, timeout_s: float, waiter: Reply) -> bool:
        """Send a request object (asyncua sets the session's handle, token and timeout in its header) with
        ``waiter`` as its recipient; False when the connection is gone (nothing sent)."""
        protocol = self._protocol()
        if protocol is None:
            return False
        protocol._send_request(request, timeout_s)
        protocol._callbackmap[protocol._request_id] = waiter  # in place of asyncua's future, never awaited
        return True

    def send_raw(self, body: bytes, waiter: Reply, token_span: tuple[int, int] | None = None) -> bool:
        """Frame the client's request bytes with the session's token, handle and request id, and register
        ``waiter`` as its recipient; False when the connection is gone (nothing sent).
        ``token_span``: where the client's AuthenticationToken is in ``body``, when already known."""
        protocol: Any = self._client.uaclient.protocol  # _protocol() in line: runs for every relay
        if protocol is None or protocol.transport is None:
            return False
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
        message = frame_request(
            connection, body, self._token_bytes, protocol._request_handle, token_span, request_id
        )
        protocol._request_id = request_id
        protocol._callbackmap[request_id] = waiter
        protocol.transport.write(message)
        return True

    def waiting(self) -> list[Any]:
        """The recipients still in asyncua's callback map: its futures and our :class:`Reply` objects."""
        protocol = self._client.uaclient.protocol
        return [] if protocol is None else list(protocol._callbackmap.values())


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
                if type(waiter) is Reply:  # ours: the bytes as they are, without asyncua's Buffer
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


def frame_request(
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
