"""The chunk layer of UA Secure Conversation with SecurityPolicy None (Part 6, 6.7.2 - 6.7.3, 7.1.2).

asyncua's ``SecureConnection`` does this job inside asyncua, but it reads the wall clock itself, logs,
raises one status (BadRequestTooLarge) for every limit, mirrors limits instead of negotiating them and
carries the cryptography of every policy. With policy None a chunk is a fixed 24-byte header and a body,
so this module frames chunks itself and leaves everything inside a body to asyncua's binary codec
(``asyncua.ua.ua_binary``): Hello, Acknowledge, Error, the asymmetric security header of OPN.

Three pieces, none of which keeps a clock: :class:`ChunkReader` cuts a byte stream into whole chunks no
bigger than a limit; :class:`MessageAssembler` joins the chunks of one message under size and count
limits; ``encode_*`` produce chunks and the Hello-layer messages.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from asyncua import ua
from asyncua.ua.ua_binary import struct_to_binary

from protocols.opcua.binary import decode
from protocols.opcua.spec import (
    ABORT,
    ACK,
    CLO,
    ERR,
    FINAL,
    INTERMEDIATE,
    KNOWN_MESSAGE_TYPES,
    MAX_REASON_BYTES,
    MESSAGE_HEADER,
    MESSAGE_HEADER_BYTES,
    MSG,
    OPN,
    SECURE_HEADER,
    SECURE_HEADER_BYTES,
    SECURITY_POLICY_NONE,
    SEQUENCE_AFTER_WRAP_BELOW,
    SEQUENCE_HEADER,
    SEQUENCE_WRAP_ABOVE,
    SYMMETRIC_CHUNK_HEADER,
    SYMMETRIC_CHUNK_HEADER_BYTES,
    OpcUaProtocolError,
    Status,
)

_HEADER_UNPACK = MESSAGE_HEADER.unpack_from
_SECURE_UNPACK = SECURE_HEADER.unpack_from
_SYMMETRIC_UNPACK = SYMMETRIC_CHUNK_HEADER.unpack_from
_SYMMETRIC_PACK = SYMMETRIC_CHUNK_HEADER.pack
_SEQUENCE_UNPACK = SEQUENCE_HEADER.unpack_from
_SEQUENCE_PACK = SEQUENCE_HEADER.pack

# The AsymmetricAlgorithmHeader every OPN response carries under policy None: the policy URI and two null
# ByteStrings (no sender certificate, no receiver thumbprint).
_NONE_ASYMMETRIC_HEADER: Final[bytes] = struct_to_binary(
    ua.AsymmetricAlgorithmHeader(SecurityPolicyURI=ua.String(SECURITY_POLICY_NONE))
)
# The chunk types each message type may carry: OPN and CLO are never split (Part 6, 6.7.2.1), HEL/ACK/ERR
# are always 'F' (7.1.2.2).
_CHUNK_TYPES: Final = {MSG: (FINAL, INTERMEDIATE, ABORT), OPN: (FINAL,), CLO: (FINAL,)}


class Chunk(NamedTuple):
    """One whole message chunk as it came off the wire."""

    message_type: bytes  # b"HEL", b"MSG", ...
    chunk_type: bytes  # b"F", b"C" or b"A"
    data: bytes  # the whole chunk, header included


# A Chunk built by tuple's own constructor: a NamedTuple's __new__ is a Python function, once per chunk.
_new_chunk = tuple.__new__


class OpenChunk(NamedTuple):
    """An OPN chunk: the asymmetric security header is decoded, the body is left to the caller."""

    channel_id: int
    security_policy_uri: str
    sequence_number: int
    request_id: int
    body: bytes


class ChunkReader:
    """Cuts a byte stream into whole chunks, checking the 8-byte header before buffering the body.

    A message type outside ``allowed_types`` is refused as soon as its three bytes are in, a chunk larger
    than ``max_chunk_size`` as soon as its header is in: no more than one chunk (plus what a single
    ``receive_data`` delivered) is ever buffered. The connection narrows both as its state advances.

    A chunk that has not fully arrived is waited for only when its announced size is within
    ``max_incomplete_bytes`` (the room its connection has left); otherwise BadTcpNotEnoughResources.
    """

    __slots__ = ("_buffer", "allowed_types", "max_chunk_size", "max_incomplete_bytes")

    def __init__(self, max_chunk_size: int, allowed_types: frozenset[bytes]) -> None:
        # What a read brings while nothing is held is kept as it is: most reads are one whole chunk, which
        # then leaves without a copy. Anything held across reads is gathered in a bytearray.
        self._buffer: bytes | bytearray = b""
        self.max_chunk_size = max_chunk_size
        self.max_incomplete_bytes = max_chunk_size
        self.allowed_types = allowed_types

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def receive_data(self, data: bytes) -> None:
        buffer = self._buffer
        if not buffer:
            self._buffer = data
        elif isinstance(buffer, bytearray):
            buffer += data
        else:
            self._buffer = bytearray(buffer) + data

    def discard(self) -> None:
        self._buffer = b""

    def next_chunk(self) -> Chunk | None:
        buffer = self._buffer
        if len(buffer) < MESSAGE_HEADER_BYTES:
            if len(buffer) >= 3:
                self._check_type(bytes(buffer[:3]))
            return None
        message_type, chunk_type, size = _HEADER_UNPACK(buffer)
        if message_type not in self.allowed_types:
            self._check_type(message_type)
        if size > self.max_chunk_size:
            raise OpcUaProtocolError(
                Status.BAD_TCP_MESSAGE_TOO_LARGE,
                f"{message_type.decode()} chunk of {size} bytes, the limit is {self.max_chunk_size}",
            )
        if size < MESSAGE_HEADER_BYTES:
            raise OpcUaProtocolError(
                Status.BAD_DECODING_ERROR, f"message size {size} is below the header's 8"
            )
        allowed = _CHUNK_TYPES.get(message_type, (FINAL,))
        if chunk_type not in allowed:
            raise OpcUaProtocolError(
                Status.BAD_TCP_MESSAGE_TYPE_INVALID,
                f"chunk type {chunk_type!r} on {message_type.decode()} "
                f"(allowed: {b''.join(allowed).decode()})",
            )
        if len(buffer) < size:
            if size > self.max_incomplete_bytes:
                raise OpcUaProtocolError(
                    Status.BAD_TCP_NOT_ENOUGH_RESOURCES,
                    f"{message_type.decode()} chunk of {size} bytes: only {self.max_incomplete_bytes} "
                    "bytes of reassembly room left to wait for it",
                )
            return None
        if len(buffer) == size:  # the common case: what arrived was one chunk (bytes: no copy)
            data = bytes(buffer)
            self._buffer = b""
        elif isinstance(buffer, bytearray):
            data = bytes(buffer[:size])
            del buffer[:size]  # cheap at the front of a bytearray
        else:  # the rest of a read of several chunks: in a bytearray, not sliced off bytes chunk by chunk
            data = buffer[:size]
            self._buffer = bytearray(memoryview(buffer)[size:])
        return _new_chunk(Chunk, (message_type, chunk_type, data))

    def _check_type(self, message_type: bytes) -> None:
        if message_type not in self.allowed_types:
            known = message_type.decode("ascii", "replace") if message_type in KNOWN_MESSAGE_TYPES else None
            raise OpcUaProtocolError(
                Status.BAD_TCP_MESSAGE_TYPE_INVALID,
                f"{known} is not expected here" if known else f"unknown message type {message_type!r}",
            )


def parse_open_chunk(chunk: Chunk) -> OpenChunk:
    data = chunk.data
    if len(data) < SECURE_HEADER_BYTES:
        raise OpcUaProtocolError(Status.BAD_DECODING_ERROR, "OPN chunk shorter than its 12-byte header")
    channel_id: int = _SECURE_UNPACK(data)[3]
    try:
        header, left = decode(ua.AsymmetricAlgorithmHeader, data, SECURE_HEADER_BYTES)
    except Exception as exc:  # asyncua raises whatever its decoders hit on bad bytes
        raise OpcUaProtocolError(Status.BAD_DECODING_ERROR, f"OPN security header: {exc!r}") from None
    position = len(data) - left
    if left < SEQUENCE_HEADER.size:
        raise OpcUaProtocolError(Status.BAD_DECODING_ERROR, "OPN chunk ends before its sequence header")
    sequence_number, request_id = _SEQUENCE_UNPACK(data, position)
    policy = header.SecurityPolicyURI
    return OpenChunk(
        channel_id,
        policy if isinstance(policy, str) else "",
        sequence_number,
        request_id,
        data[position + SEQUENCE_HEADER.size :],
    )


def next_sequence_number(sequence_number: int) -> int:
    """The sequence number after ``sequence_number``, wrapping as Part 6, 6.7.2.4 allows."""
    return 1 if sequence_number > SEQUENCE_WRAP_ABOVE else sequence_number + 1


def sequence_number_follows(previous: int, received: int) -> bool:
    """Whether a peer's ``received`` may follow its ``previous``: one more, or a wrap to below 1024."""
    if received == previous + 1:
        return True
    return previous > SEQUENCE_WRAP_ABOVE and received < SEQUENCE_AFTER_WRAP_BELOW


class MessageAssembler:
    """Joins the chunks of one MSG message, within a total body size and a chunk count.

    Chunks of one message arrive one after another (Part 6, 6.7.3: "MessageChunks belonging to the same
    Message shall be sent sequentially"), so one partial message at a time is all there is to hold.

    ``held_bytes`` is what the partial message holds; ``max_held_bytes`` is how much more room its caller
    grants for it (a share of a budget that other connections draw on too): an intermediate chunk that
    would take the partial message past it is refused with BadTcpNotEnoughResources.
    """

    __slots__ = ("_parts", "_request_id", "_size", "max_chunk_count", "max_held_bytes", "max_message_size")

    def __init__(self, max_message_size: int, max_chunk_count: int) -> None:
        self.max_message_size = max_message_size
        self.max_chunk_count = max_chunk_count
        self.max_held_bytes = max_message_size
        self._parts: list[bytes] = []
        self._size = 0
        self._request_id = 0

    @property
    def pending(self) -> bool:
        return bool(self._parts)

    def discard(self) -> None:
        """Forget the partial message (the connection failed or closed)."""
        self._parts.clear()
        self._size = 0

    @property
    def held_bytes(self) -> int:
        """The body bytes of the partial message held until its final chunk (0 between messages)."""
        return self._size

    def add(self, chunk_type: bytes, request_id: int, body: bytes) -> bytes | None:
        """The whole message body after its final chunk; ``None`` while more chunks are due or after an
        abort chunk, which discards the partial message (Part 6, 6.7.3) and leaves the channel open."""
        single = chunk_type == FINAL and not self._parts  # the common case: a message in one chunk
        if single and len(body) <= self.max_message_size and self.max_chunk_count >= 1:
            return body
        if self._parts and request_id != self._request_id:
            raise OpcUaProtocolError(
                Status.BAD_TCP_MESSAGE_TYPE_INVALID,
                f"chunk of request {request_id} inside request {self._request_id}: chunks of one message "
                "must be sent one after another",
            )
        if chunk_type == ABORT:
            self._parts.clear()
            self._size = 0
            return None
        count = len(self._parts) + 1
        size = self._size + len(body)
        if count > self.max_chunk_count or size > self.max_message_size:
            raise OpcUaProtocolError(
                Status.BAD_REQUEST_TOO_LARGE,
                f"request {request_id} reached {count} chunks and {size} bytes; "
                f"the limits are {self.max_chunk_count} chunks and {self.max_message_size} bytes",
            )
        if chunk_type == FINAL:
            if not self._parts:
                return body
            self._parts.append(body)
            message = b"".join(self._parts)
            self._parts.clear()
            self._size = 0
            return message
        if size > self.max_held_bytes:
            raise OpcUaProtocolError(
                Status.BAD_TCP_NOT_ENOUGH_RESOURCES,
                f"request {request_id}: holding {size} bytes of an unfinished message exceeds the "
                f"{self.max_held_bytes} bytes of reassembly room left",
            )
        self._parts.append(body)
        self._size = size
        self._request_id = request_id
        return None


def encode_symmetric_chunks(
    message_type: bytes,
    channel_id: int,
    token_id: int,
    request_id: int,
    body: bytes,
    sequence_number: int,
    max_chunk_size: int,
) -> tuple[bytes, int]:
    """Frame ``body`` as MSG (or CLO) chunks of at most ``max_chunk_size`` bytes each.

    ``sequence_number`` is the number of the first chunk; returns the bytes and the number for the next
    chunk. The caller has checked the body against the peer's message size and chunk count.
    """
    room = max_chunk_size - SYMMETRIC_CHUNK_HEADER_BYTES
    if len(body) <= room:
        header = _SYMMETRIC_PACK(
            message_type,
            FINAL,
            SYMMETRIC_CHUNK_HEADER_BYTES + len(body),
            channel_id,
            token_id,
            sequence_number,
            request_id,
        )
        # next_sequence_number in line: this runs for every message.
        return header + body, (1 if sequence_number > SEQUENCE_WRAP_ABOVE else sequence_number + 1)
    parts: list[bytes] = []
    for start in range(0, len(body), room):
        part = body[start : start + room]
        chunk_type = FINAL if start + room >= len(body) else INTERMEDIATE
        parts.append(
            _SYMMETRIC_PACK(
                message_type,
                chunk_type,
                SYMMETRIC_CHUNK_HEADER_BYTES + len(part),
                channel_id,
                token_id,
                sequence_number,
                request_id,
            )
        )
        parts.append(part)
        sequence_number = next_sequence_number(sequence_number)
    return b"".join(parts), sequence_number


def encode_spliced_chunk(
    channel_id: int,
    token_id: int,
    sequence_number: int,
    request_id: int,
    body: bytes,
    start: int,
    end: int,
    insert: bytes,
) -> bytes:
    """One final MSG chunk carrying ``body`` with ``body[start:end]`` replaced by ``insert``: a relayed
    message re-labelled (a handle, a token) and framed in one join. The caller has checked that it fits
    one chunk and the peer's limits, and moves its sequence number on."""
    size = SYMMETRIC_CHUNK_HEADER_BYTES + len(body) - (end - start) + len(insert)
    header = _SYMMETRIC_PACK(MSG, FINAL, size, channel_id, token_id, sequence_number, request_id)
    return b"".join((header, body[:start], insert, body[end:]))


def chunk_count(body_size: int, max_chunk_size: int) -> int:
    """How many MSG chunks ``encode_symmetric_chunks`` makes of a body of ``body_size`` bytes."""
    room = max_chunk_size - SYMMETRIC_CHUNK_HEADER_BYTES
    return max(1, -(-body_size // room))


def encode_open_chunk(channel_id: int, request_id: int, body: bytes, sequence_number: int) -> bytes:
    """An OPN response: always a single chunk with policy None's asymmetric header."""
    rest = _NONE_ASYMMETRIC_HEADER + _SEQUENCE_PACK(sequence_number, request_id) + body
    return SECURE_HEADER.pack(OPN, FINAL, SECURE_HEADER_BYTES + len(rest), channel_id) + rest


def encode_acknowledge(
    receive_buffer_size: int, send_buffer_size: int, max_message_size: int, max_chunk_count: int
) -> bytes:
    body: bytes = struct_to_binary(
        ua.Acknowledge(
            ProtocolVersion=ua.UInt32(0),
            ReceiveBufferSize=ua.UInt32(receive_buffer_size),
            SendBufferSize=ua.UInt32(send_buffer_size),
            MaxMessageSize=ua.UInt32(max_message_size),
            MaxChunkCount=ua.UInt32(max_chunk_count),
        )
    )
    return MESSAGE_HEADER.pack(ACK, FINAL, MESSAGE_HEADER_BYTES + len(body)) + body


def encode_error(status: int, reason: str) -> bytes:
    """An Error message (Part 6, 7.1.2.5); the reason is cut to the 4096 bytes a client reads."""
    # surrogateescape both ways, as asyncua encodes: peer strings may hold bytes that are not UTF-8.
    text = reason.encode("utf-8", "surrogateescape")[:MAX_REASON_BYTES].decode("utf-8", "surrogateescape")
    body: bytes = struct_to_binary(
        ua.ErrorMessage(Error=ua.StatusCode(ua.UInt32(status)), Reason=ua.String(text))
    )
    return MESSAGE_HEADER.pack(ERR, FINAL, MESSAGE_HEADER_BYTES + len(body)) + body


def decode_hello(chunk: Chunk) -> ua.Hello:
    try:
        hello, left = decode(ua.Hello, chunk.data, MESSAGE_HEADER_BYTES)
    except Exception as exc:  # asyncua raises whatever its decoders hit on bad bytes
        raise OpcUaProtocolError(Status.BAD_DECODING_ERROR, f"Hello: {exc!r}") from None
    if left:
        raise OpcUaProtocolError(Status.BAD_DECODING_ERROR, f"Hello has {left} bytes after its fields")
    return hello


__all__ = [
    "Chunk",
    "ChunkReader",
    "MessageAssembler",
    "OpenChunk",
    "chunk_count",
    "decode_hello",
    "encode_acknowledge",
    "encode_error",
    "encode_open_chunk",
    "encode_spliced_chunk",
    "encode_symmetric_chunks",
    "next_sequence_number",
    "parse_open_chunk",
    "sequence_number_follows",
]
