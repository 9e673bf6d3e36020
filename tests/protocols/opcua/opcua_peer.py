"""A hand-driven client for framing tests: builds chunks with consecutive sequence numbers, feeds them to an
:class:`OpcUaServerConnection`, and decodes what the connection sends back with asyncua's codec."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import nodeid_from_binary, struct_from_binary, struct_to_binary

from protocols.opcua import Event, OpcUaServerConnection
from tests.protocols.opcua.opcua_canned_server import hello, open_request, opn, read_request, symmetric

CHANNEL = 0x5A5A0001
NOW = 1_800_000_000.0  # seconds since the epoch, 2027-01-15


def drain(conn: OpcUaServerConnection, now: float = NOW) -> list[Event]:
    events = []
    while (event := conn.next_event(now)) is not None:
        events.append(event)
    return events


def feed(conn: OpcUaServerConnection, data: bytes, now: float = NOW) -> list[Event]:
    conn.receive_data(data)
    return drain(conn, now)


@dataclass
class ReceivedChunk:
    message_type: bytes
    chunk_type: bytes
    channel_id: int
    token_id: int
    sequence_number: int
    request_id: int
    body: bytes


def split_chunks(data: bytes) -> list[ReceivedChunk]:
    """MSG chunks from the server, split and parsed."""
    chunks, offset = [], 0
    while offset < len(data):
        kind, final, size = struct.unpack_from("<3scI", data, offset)
        assert kind == b"MSG", kind
        channel, token, sequence, request = struct.unpack_from("<IIII", data, offset + 8)
        chunks.append(
            ReceivedChunk(kind, final, channel, token, sequence, request, data[offset + 24 : offset + size])
        )
        offset += size
    assert offset == len(data)
    return chunks


def decode_response(data: bytes) -> Any:
    """The response object in the MSG chunks ``data`` (one message)."""
    body = b"".join(chunk.body for chunk in split_chunks(data))
    buffer = Buffer(body)
    type_id = nodeid_from_binary(buffer)
    cls = ua.extension_objects_by_typeid[type_id]
    return struct_from_binary(cls, Buffer(body))


def decode_error(data: bytes) -> tuple[int, str]:
    assert data[:4] == b"ERRF"
    assert struct.unpack_from("<I", data, 4)[0] == len(data)
    message = struct_from_binary(ua.ErrorMessage, Buffer(data, 8))
    return message.Error.value, message.Reason


@dataclass
class Peer:
    """The client side of one connection, by hand."""

    conn: OpcUaServerConnection = field(default_factory=lambda: OpcUaServerConnection(CHANNEL))
    sequence: int = 0
    token_id: int = 1
    handle: int = 100

    def next_sequence(self) -> int:
        self.sequence += 1
        return self.sequence

    def hello_bytes(self, **kwargs: Any) -> bytes:
        return hello(**kwargs)

    def open_bytes(self, *, renew: bool = False, request_id: int = 1, **kwargs: Any) -> bytes:
        channel = CHANNEL if renew else 0
        return opn(
            open_request(renew=renew, **kwargs),
            channel_id=channel,
            sequence=self.next_sequence(),
            request_id=request_id,
        )

    def handshake_bytes(self, **open_kwargs: Any) -> bytes:
        return self.hello_bytes() + self.open_bytes(**open_kwargs)

    def handshake(self, now: float = NOW, **open_kwargs: Any) -> list[Event]:
        return feed(self.conn, self.handshake_bytes(**open_kwargs), now)

    def msg_bytes(
        self,
        body: bytes,
        request_id: int,
        *,
        chunk_type: bytes = b"F",
        message_type: bytes = b"MSG",
        token_id: int | None = None,
        channel_id: int = CHANNEL,
        sequence: int | None = None,
    ) -> bytes:
        return symmetric(
            body,
            message_type=message_type,
            chunk_type=chunk_type,
            channel_id=channel_id,
            token_id=self.token_id if token_id is None else token_id,
            sequence=self.next_sequence() if sequence is None else sequence,
            request_id=request_id,
        )

    def request_bytes(self, request: Any, request_id: int, *, chunk_size: int | None = None) -> bytes:
        """``request`` encoded and split into MSG chunks of at most ``chunk_size`` bytes."""
        body = struct_to_binary(request)
        room = (chunk_size or 1 << 30) - 24
        parts = [body[start : start + room] for start in range(0, len(body), room)] or [b""]
        return b"".join(
            self.msg_bytes(part, request_id, chunk_type=b"F" if last else b"C")
            for last, part in ((i == len(parts) - 1, part) for i, part in enumerate(parts))
        )

    def read_bytes(self, nodes: list[ua.NodeId], request_id: int, handle: int = 7) -> bytes:
        return self.request_bytes(read_request(nodes, handle), request_id)

    def close_bytes(self, request_id: int = 99) -> bytes:
        request = ua.CloseSecureChannelRequest()
        return self.msg_bytes(struct_to_binary(request), request_id, message_type=b"CLO")
