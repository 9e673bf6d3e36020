"""The client-facing side of an opc.tcp endpoint, sans-IO: bytes in, events out; responses in, bytes out.

    conn = OpcUaServerConnection(channel_id)
    conn.receive_data(data)
    while (event := conn.next_event(time.time())) is not None:
        ...  # Hello / OpenChannel / RejectedRequest: write event.reply; ServiceRequest: decide, then
             # write conn.send_response(event.request_id, response, request_handle=event.request_handle);
             # CloseChannel: close the connection
    # OpcUaProtocolError e: write conn.send_error(e.status, e.reason), then close

A caller that expects a request to come again (a polling client's Read, by its RepeatCache entry) may first
offer each read to ``conn.take_repeat(data, now, repeat)``: it returns the ServiceRequest when the read is
exactly that repeat, and otherwise leaves everything to ``receive_data``.

The order HEL -> ACK -> OPN -> MSG* -> CLO is enforced (asyncua's server takes a MSG with no Hello or
channel); every violation and every exceeded limit raises :class:`OpcUaProtocolError` with the status for
the Error message, after which the connection only raises that error again:

    before Hello: anything but HEL, or more than a Hello's 4128 bytes    BadTcpMessageTypeInvalid /
                                                                          BadTcpMessageTooLarge
    ACK, ERR, RHE from a client; a second HEL; unknown message types      BadTcpMessageTypeInvalid
    Hello buffer sizes below 8192                                         BadConnectionRejected
    MSG or CLO before the channel is open                                 BadTcpSecureChannelUnknown
    another channel's id; Issue with a channel id other than 0            BadSecureChannelIdInvalid /
                                                                          BadTcpSecureChannelUnknown
    unknown or expired token                                              BadSecureChannelTokenUnknown
    sequence number not one more than the last (or a wrap below 1024)     BadSequenceNumberInvalid
    a chunk above the negotiated receive buffer size                      BadTcpMessageTooLarge
    a message above max_message_size or max_chunk_count                   BadRequestTooLarge
    a partial message, or a chunk waited for, beyond reassembly_room      BadTcpNotEnoughResources
    chunks of two messages interleaved; OPN/CLO not single chunks         BadTcpMessageTypeInvalid
    policy other than None / mode other than None                         BadSecurityPolicyRejected /
                                                                          BadSecurityModeRejected
    Issue on an open channel, Renew before Issue                          BadRequestTypeInvalid
    undecodable Hello or OPN; malformed chunk headers                     BadDecodingError

A well-framed MSG whose body is no request this endpoint takes is not a protocol error: it becomes a
:class:`RejectedRequest` with a ServiceFault (BadServiceUnsupported, BadDecodingError) and the connection
carries on. Time is an argument (seconds since the epoch): it stamps and expires tokens.
"""

from __future__ import annotations

import struct
from enum import Enum
from typing import Any, Final

from protocols.opcua.channel import RENEW, SecureChannel, decode_open_request
from protocols.opcua.chunks import (
    Chunk,
    ChunkReader,
    MessageAssembler,
    chunk_count,
    decode_hello,
    encode_acknowledge,
    encode_error,
    encode_open_chunk,
    encode_spliced_chunk,
    encode_symmetric_chunks,
    next_sequence_number,
    parse_open_chunk,
    sequence_number_follows,
)
from protocols.opcua.events import (
    CloseChannel,
    Event,
    Hello,
    OpenChannel,
    RejectedRequest,
    ServiceRequest,
    TransportLimits,
)
from protocols.opcua.messages import (
    Repeat,
    RepeatCache,
    RequestDecodeError,
    decode_request_through,
    encode_message,
    patch_request_handle,
    service_fault,
)
from protocols.opcua.services import Service
from protocols.opcua.spec import (
    CLO,
    FINAL,
    HEL,
    MAX_ENDPOINT_URL_BYTES,
    MAX_HELLO_BYTES,
    MIN_BUFFER_SIZE,
    MSG,
    OPN,
    SEQUENCE_WRAP_ABOVE,
    SYMMETRIC_CHUNK_HEADER,
    SYMMETRIC_CHUNK_HEADER_BYTES,
    OpcUaProtocolError,
    Status,
)

DEFAULT_BUFFER_SIZE: Final = 64 * 1024
DEFAULT_MAX_MESSAGE_SIZE: Final = 16 * 1024 * 1024
DEFAULT_MAX_CHUNK_COUNT: Final = 256
DEFAULT_MIN_TOKEN_LIFETIME_MS: Final = 10_000
DEFAULT_MAX_TOKEN_LIFETIME_MS: Final = 3_600_000

_SYMMETRIC_UNPACK = SYMMETRIC_CHUNK_HEADER.unpack_from
_HANDLE = struct.Struct("<I")
# After a response's type id: the ResponseHeader's Timestamp, then its RequestHandle (Part 4, 7.33).
_HANDLE_AFTER_TYPE_ID: Final = 8
# In a RequestHeader, after the AuthenticationToken: Timestamp (8 bytes), RequestHandle (4) (Part 4, 7.32).
_TIMESTAMP_AND_HANDLE_BYTES: Final = 12
_HELLO_ONLY: Final = frozenset((HEL,))
_SECURE_ONLY: Final = frozenset((OPN, MSG, CLO))


class ConnectionState(Enum):
    AWAIT_HELLO = "await-hello"
    AWAIT_OPEN = "await-open"  # Acknowledged; the next message must open the channel
    OPEN = "open"
    CLOSED = "closed"  # CloseSecureChannel received or an Error sent
    FAILED = "failed"  # a protocol error was raised


# A tuple, not a set: membership is by identity first, where a set would hash (Enum.__hash__ is Python).
_RECEIVING: Final = (ConnectionState.OPEN, ConnectionState.AWAIT_HELLO, ConnectionState.AWAIT_OPEN)


def _limit(value: int) -> int:
    """0 means 'no limit' in Hello and Acknowledge."""
    return value if value > 0 else 0xFFFFFFFF


class OpcUaServerConnection:
    """One client connection, from Hello to CloseSecureChannel. See the module docstring."""

    def __init__(
        self,
        channel_id: int,
        *,
        receive_buffer_size: int = DEFAULT_BUFFER_SIZE,
        send_buffer_size: int = DEFAULT_BUFFER_SIZE,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_chunk_count: int = DEFAULT_MAX_CHUNK_COUNT,
        min_token_lifetime_ms: int = DEFAULT_MIN_TOKEN_LIFETIME_MS,
        max_token_lifetime_ms: int = DEFAULT_MAX_TOKEN_LIFETIME_MS,
    ) -> None:
        for name, value in (
            ("receive_buffer_size", receive_buffer_size),
            ("send_buffer_size", send_buffer_size),
        ):
            if not MIN_BUFFER_SIZE <= value <= 0x7FFFFFFF:
                raise ValueError(f"{name} {value} is outside {MIN_BUFFER_SIZE}..2147483647")
        if not 1 <= max_message_size <= 0x7FFFFFFF or not 1 <= max_chunk_count <= 0xFFFFFFFF:
            raise ValueError(
                "max_message_size and max_chunk_count must be positive: this side always sets limits"
            )
        self.receive_buffer_size = receive_buffer_size
        self.send_buffer_size = send_buffer_size
        self.max_message_size = max_message_size
        self.max_chunk_count = max_chunk_count
        self.channel = SecureChannel(
            channel_id,
            min_token_lifetime_ms=min_token_lifetime_ms,
            max_token_lifetime_ms=max_token_lifetime_ms,
        )
        self.state = ConnectionState.AWAIT_HELLO
        self.client_limits: TransportLimits | None = None
        self.acknowledged: TransportLimits | None = None
        # What responses may be: the client's chunk size, and the smaller of its limits and ours. Ours
        # too, because asyncua's and python-opcua's clients check responses against the limits in our
        # Acknowledge (which describe what we receive) rather than their own Hello.
        self.send_chunk_size = DEFAULT_BUFFER_SIZE
        self.max_response_size = max_message_size
        self.max_response_chunks = max_chunk_count
        self._one_chunk_body_bytes = self._single_chunk_limit()
        self.responses_too_large = 0  # answered with BadResponseTooLarge instead
        self._reader = ChunkReader(MAX_HELLO_BYTES, _HELLO_ONLY)
        self._assembler = MessageAssembler(max_message_size, max_chunk_count)
        self._partial_since = 0.0
        self._waiting_since: float | None = None
        self._peer_sequence_number: int | None = None
        self._sequence_number = 1
        self._now = 0.0
        self._error: OpcUaProtocolError | None = None
        self.repeats = RepeatCache()

    # ------------------------------------------------------------------------------------------ input

    @property
    def buffered_bytes(self) -> int:
        return self._reader.buffered_bytes

    @property
    def partial_bytes(self) -> int:
        """Bytes held beyond what was handed out: the body of a message whose final chunk has not come
        yet, and what the reader buffers (a chunk not fully arrived). 0 between messages."""
        return self._assembler.held_bytes + self._reader.buffered_bytes

    @property
    def partial_since(self) -> float | None:
        """When (the ``now`` of ``next_event``) the first chunk of the partial message came, or else the
        first bytes of a chunk not fully arrived; None when nothing is held. A caller times reassembly
        out with it."""
        if self._assembler.pending:
            return self._partial_since
        return self._waiting_since if self._reader.buffered_bytes else None

    @property
    def reassembly_room(self) -> int:
        """How many bytes a partial message may hold; an intermediate chunk beyond it raises
        BadTcpNotEnoughResources. A caller sharing a budget between connections sets it before
        ``next_event``: what is left of the budget plus what this connection already holds."""
        return self._assembler.max_held_bytes

    @reassembly_room.setter
    def reassembly_room(self, value: int) -> None:
        self._assembler.max_held_bytes = value
        self._reader.max_incomplete_bytes = value - self._assembler.held_bytes

    @property
    def channel_expires_at(self) -> float | None:
        """When the channel dies unless the client renews it (seconds since the epoch), for a timer."""
        return self.channel.expires_at

    def receive_data(self, data: bytes) -> None:
        if self.state in _RECEIVING:
            self._reader.receive_data(data)

    def next_event(self, now: float) -> Event | None:
        """The next event, or ``None`` when more data is needed (or the channel was closed)."""
        if self._error is not None:
            raise self._error
        if self.state is ConnectionState.CLOSED:
            return None
        self._now = now
        try:
            while (chunk := self._reader.next_chunk()) is not None:
                self._waiting_since = None  # whatever the reader holds next is a chunk of its own
                event = self._handle(chunk, now)
                if event is not None:
                    return event
            if self._waiting_since is None and self._reader.buffered_bytes:
                self._waiting_since = now
        except OpcUaProtocolError as error:
            self._error = error
            self.state = ConnectionState.FAILED
            self._reader.discard()
            self._assembler.discard()
            raise
        return None

    def _handle(self, chunk: Chunk, now: float) -> Event | None:
        if chunk.message_type == HEL:
            return self._hello(chunk)
        if chunk.message_type == OPN:
            return self._open(chunk, now)
        if self.state is not ConnectionState.OPEN:
            raise OpcUaProtocolError(
                Status.BAD_TCP_SECURE_CHANNEL_UNKNOWN,
                f"{chunk.message_type.decode()} before the secure channel was opened",
            )
        data = chunk.data
        if len(data) < SYMMETRIC_CHUNK_HEADER_BYTES:
            raise OpcUaProtocolError(
                Status.BAD_DECODING_ERROR,
                f"{chunk.message_type.decode()} chunk of {len(data)} bytes: shorter than its 24-byte header",
            )
        # Part 6, 6.7.2.2 - 6.7.2.4: message header, TokenId, SequenceNumber, RequestId, then the body.
        _type, chunk_type, _size, channel_id, token_id, sequence_number, request_id = _SYMMETRIC_UNPACK(data)
        if self._in_step(channel_id, token_id, sequence_number, now):
            self._peer_sequence_number = sequence_number
        else:  # renewals, wraps and refusals (with their reasons)
            self.channel.check_token(channel_id, token_id, now)
            self._check_sequence_number(sequence_number)
        if chunk.message_type == CLO:
            self.state = ConnectionState.CLOSED
            self._reader.discard()
            self._assembler.discard()
            return CloseChannel(request_id)
        assembler = self._assembler
        was_pending = assembler.pending
        message = assembler.add(chunk_type, request_id, data[SYMMETRIC_CHUNK_HEADER_BYTES:])
        if message is None:
            if not was_pending:
                self._partial_since = now
            # A next chunk waited for must fit beside what the partial message holds now.
            self._reader.max_incomplete_bytes = assembler.max_held_bytes - assembler.held_bytes
            return None
        if was_pending:
            self._reader.max_incomplete_bytes = assembler.max_held_bytes
        return self._service_request(request_id, message)

    def take_repeat(self, data: bytes, now: float, repeat: Repeat) -> ServiceRequest | None:
        """What one read brought, ``data``, as a repeat of ``repeat`` when it is exactly that: a single
        final MSG chunk with nothing buffered before it, on this channel's current token, with the next
        sequence number, carrying ``repeat``'s bytes but for the RequestHeader's Timestamp and
        RequestHandle. Then the chunk is consumed and the request returned, as ``receive_data`` and
        ``next_event`` would have returned it; anything else (None) is left untouched for them.

        A client polling one Read sends such chunks over and over: this takes them without the general
        chunk machinery and without a cache lookup."""
        if (
            len(data) < SYMMETRIC_CHUNK_HEADER_BYTES
            or self.state is not ConnectionState.OPEN
            or self._reader.buffered_bytes
            or self._assembler.pending
        ):
            return None
        message_type, chunk_type, size, channel_id, token_id, sequence_number, request_id = _SYMMETRIC_UNPACK(
            data
        )
        if (
            message_type != MSG
            or chunk_type != FINAL
            or size != len(data)
            or size > self._reader.max_chunk_size
            or not self._in_step(channel_id, token_id, sequence_number, now)
        ):
            return None
        timestamp_at = repeat.token_span[1]
        handle_end = timestamp_at + _TIMESTAMP_AND_HANDLE_BYTES
        body = data[SYMMETRIC_CHUNK_HEADER_BYTES:]
        if body[:timestamp_at] + body[handle_end:] != repeat.key:
            return None
        self._peer_sequence_number = sequence_number
        self._now = now
        self.repeats.hits += 1
        handle: int = _HANDLE.unpack_from(body, handle_end - 4)[0]
        return ServiceRequest(request_id, handle, repeat.service, repeat.request, body, repeat)

    def _in_step(self, channel_id: int, token_id: int, sequence_number: int, now: float) -> bool:
        """Whether a MSG or CLO chunk's security header is the one expected: this channel, its current
        token still alive, the sequence number one past the last. Every chunk but a few is; the rest go
        through the full checks, which renew, wrap or refuse."""
        token = self.channel.current
        previous = self._peer_sequence_number
        return (
            token is not None
            and token_id == token.token_id
            and now < token.expires_at
            and channel_id == self.channel.channel_id
            and previous is not None
            and sequence_number == previous + 1
        )

    def _hello(self, chunk: Chunk) -> Hello:
        hello = decode_hello(chunk)
        url = hello.EndpointUrl if isinstance(hello.EndpointUrl, str) else ""
        # asyncua decodes strings with surrogateescape: count the bytes the same way.
        if len(url.encode("utf-8", "surrogateescape")) > MAX_ENDPOINT_URL_BYTES:
            raise OpcUaProtocolError(
                Status.BAD_TCP_ENDPOINT_URL_INVALID, "EndpointUrl longer than 4096 bytes"
            )
        client = TransportLimits(
            hello.ReceiveBufferSize, hello.SendBufferSize, hello.MaxMessageSize, hello.MaxChunkCount
        )
        if client.receive_buffer_size < MIN_BUFFER_SIZE or client.send_buffer_size < MIN_BUFFER_SIZE:
            raise OpcUaProtocolError(
                Status.BAD_CONNECTION_REJECTED,
                f"Hello buffer sizes {client.receive_buffer_size}/{client.send_buffer_size}: "
                f"at least {MIN_BUFFER_SIZE} each (Part 6, 7.1.2.3)",
            )
        # Part 6, 7.1.2.4: what we receive is at most what the client sends, what we send at most what it
        # receives. Sending no more than we receive as well keeps asyncua's and python-opcua's clients
        # working: both chunk their requests by our SendBufferSize instead of our ReceiveBufferSize, and
        # asyncua's checks our responses against our ReceiveBufferSize.
        receive = min(self.receive_buffer_size, client.send_buffer_size)
        send = min(self.send_buffer_size, client.receive_buffer_size, receive)
        acknowledged = TransportLimits(receive, send, self.max_message_size, self.max_chunk_count)
        self.client_limits, self.acknowledged = client, acknowledged
        self.send_chunk_size = send
        self.max_response_size = min(_limit(client.max_message_size), self.max_message_size)
        self.max_response_chunks = min(_limit(client.max_chunk_count), self.max_chunk_count)
        self._one_chunk_body_bytes = self._single_chunk_limit()
        self._reader.max_chunk_size = receive
        self._reader.allowed_types = _SECURE_ONLY
        self.state = ConnectionState.AWAIT_OPEN
        reply = encode_acknowledge(receive, send, self.max_message_size, self.max_chunk_count)
        return Hello(url, hello.ProtocolVersion, client, acknowledged, reply)

    def _open(self, chunk: Chunk, now: float) -> OpenChannel:
        opened = parse_open_chunk(chunk)
        self._check_sequence_number(opened.sequence_number)
        request = decode_open_request(opened.body)
        token = self.channel.open(opened.channel_id, opened.security_policy_uri, request, now)
        self.state = ConnectionState.OPEN
        response = self.channel.response(request, token, now)
        reply = encode_open_chunk(
            self.channel.channel_id, opened.request_id, encode_message(response), self._take()
        )
        parameters = request.Parameters
        return OpenChannel(
            request_id=opened.request_id,
            request_handle=request.RequestHeader.RequestHandle,
            renew=parameters.RequestType == RENEW,
            channel_id=self.channel.channel_id,
            token_id=token.token_id,
            requested_lifetime_ms=parameters.RequestedLifetime,
            revised_lifetime_ms=token.lifetime_ms,
            reply=reply,
        )

    def _service_request(self, request_id: int, body: bytes) -> ServiceRequest | RejectedRequest:
        found = self.repeats.find(body)
        if found is not None:  # a repeated Read: nothing to read but its RequestHandle
            repeat, handle = found
            return ServiceRequest(request_id, handle, repeat.service, repeat.request, body, repeat)
        try:
            decoded = decode_request_through(body, self.repeats)
        except RequestDecodeError as refused:
            fault = service_fault(refused.request_handle, refused.status, self._now)
            too_large = self.responses_too_large
            reply = self._send_body(request_id, encode_message(fault), refused.request_handle)
            status, reason = refused.status, refused.reason
            if self.responses_too_large != too_large:  # the client's limits leave no room for the fault
                status = Status.BAD_RESPONSE_TOO_LARGE
                reason = f"{reason}; the ServiceFault exceeds the client's limits"
            return RejectedRequest(request_id, refused.request_handle, refused.type_id, status, reason, reply)
        return ServiceRequest(
            request_id, decoded.request_handle, decoded.service, decoded.request, body, decoded.repeat
        )

    def _check_sequence_number(self, received: int) -> None:
        previous = self._peer_sequence_number
        if previous is not None and not sequence_number_follows(previous, received):
            raise OpcUaProtocolError(
                Status.BAD_SEQUENCE_NUMBER_INVALID, f"sequence number {received} after {previous}"
            )
        self._peer_sequence_number = received

    # ----------------------------------------------------------------------------------------- output

    def send_response(self, request_id: int, response: Any, *, request_handle: int | None = None) -> bytes:
        """The chunks carrying ``response`` (an asyncua response object) to request ``request_id``.

        With ``request_handle`` the response header gets the client's handle first. A response beyond
        the client's MaxMessageSize or MaxChunkCount (or our own limits) goes out as a ServiceFault with
        BadResponseTooLarge instead (Part 4, 5.3). Raises ``OpcUaProtocolError`` with ``close=False``
        (BadEncodingError) when asyncua cannot encode the object.
        """
        self._require_open()
        header = response.ResponseHeader
        if request_handle is not None:
            header.RequestHandle = request_handle
        return self._send_body(request_id, encode_message(response), header.RequestHandle)

    def send_service_fault(self, request_id: int, request_handle: int, status: int) -> bytes:
        """A ServiceFault with ``status`` for request ``request_id`` (a denied service, a failed upstream)."""
        self._require_open()
        return self._send_body(
            request_id, encode_message(service_fault(request_handle, status, self._now)), request_handle
        )

    def relay_response(
        self, request_id: int, body: bytes, request_handle: int, *, service: Service | None = None
    ) -> bytes:
        """Relay a response body as the device encoded it, re-labelled with the client's request handle.

        For responses the policy left unchanged: no decode, no re-encode. With ``service`` the body must be
        that service's response or a ServiceFault (``OpcUaProtocolError`` BadUnknownResponse, close=False).
        """
        self._require_open()
        if service is not None and body.startswith(service.response_prefix):
            # The common case, framed in one step: the service's own response with the type id as servers
            # encode it, so the RequestHandle sits at a known place, and a body that fits one chunk.
            handle_at = len(service.response_prefix) + _HANDLE_AFTER_TYPE_ID
            if len(body) <= self._one_chunk_body_bytes and len(body) >= handle_at + 4:
                token = self.channel.current
                assert token is not None  # an open channel has one
                number = self._sequence_number
                self._sequence_number = 1 if number > SEQUENCE_WRAP_ABOVE else number + 1
                return encode_spliced_chunk(
                    self.channel.channel_id,
                    token.token_id,
                    number,
                    request_id,
                    body,
                    handle_at,
                    handle_at + 4,
                    _HANDLE.pack(request_handle),
                )
        relabelled = patch_request_handle(body, request_handle, service)
        return self._send_body(request_id, relabelled, request_handle)

    def send_error(self, status: int, reason: str) -> bytes:
        """An Error message (Part 6, 7.1.2.5); afterwards the connection is closed."""
        self.state = ConnectionState.CLOSED if self._error is None else ConnectionState.FAILED
        self._reader.discard()
        self._assembler.discard()
        return encode_error(status, reason)

    def _send_body(self, request_id: int, body: bytes, request_handle: int) -> bytes:
        one_chunk = len(body) <= self.send_chunk_size - SYMMETRIC_CHUNK_HEADER_BYTES
        chunks = 1 if one_chunk else chunk_count(len(body), self.send_chunk_size)
        if len(body) > self.max_response_size or chunks > self.max_response_chunks:
            self.responses_too_large += 1
            fault = service_fault(request_handle, Status.BAD_RESPONSE_TOO_LARGE, self._now)
            body = encode_message(fault)
        token = self.channel.current
        assert token is not None  # _require_open or an open channel before every call
        data, self._sequence_number = encode_symmetric_chunks(
            MSG,
            self.channel.channel_id,
            token.token_id,
            request_id,
            body,
            self._sequence_number,
            self.send_chunk_size,
        )
        return data

    def _single_chunk_limit(self) -> int:
        """The largest response body that goes out as one chunk within every limit (max_response_chunks
        is at least 1: ours is)."""
        return min(self.send_chunk_size - SYMMETRIC_CHUNK_HEADER_BYTES, self.max_response_size)

    def _take(self) -> int:
        """The next outgoing sequence number, for a single-chunk message."""
        number = self._sequence_number
        self._sequence_number = next_sequence_number(number)
        return number

    def _require_open(self) -> None:
        if self.state is not ConnectionState.OPEN:
            raise OpcUaProtocolError(
                Status.BAD_SECURE_CHANNEL_CLOSED, f"no open secure channel to send on ({self.state.value})"
            )


__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_MAX_CHUNK_COUNT",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "ConnectionState",
    "OpcUaServerConnection",
]
