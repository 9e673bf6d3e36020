"""What :class:`protocols.opcua.connection.OpcUaServerConnection` hands its caller.

Events that need an answer the codec can give by itself (Acknowledge, OpenSecureChannel response,
ServiceFault for a request it cannot decode) carry that answer as ``reply``: bytes to write before anything
produced later, because every outgoing chunk takes the next sequence number (Part 6, 6.7.2.4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from asyncua import ua

from protocols.opcua.messages import Repeat
from protocols.opcua.services import Service


@dataclass(frozen=True, slots=True)
class TransportLimits:
    """The four numbers Hello and Acknowledge exchange (Part 6, 7.1.2.3 - 7.1.2.4); 0 means no limit for
    the message size and chunk count."""

    receive_buffer_size: int
    send_buffer_size: int
    max_message_size: int
    max_chunk_count: int


@dataclass(frozen=True, slots=True)
class Hello:
    """The client said Hello; ``reply`` is the Acknowledge."""

    endpoint_url: str
    protocol_version: int
    client_limits: TransportLimits  # as the Hello declared them
    acknowledged: TransportLimits  # as the Acknowledge declares ours
    reply: bytes


@dataclass(frozen=True, slots=True)
class OpenChannel:
    """An OpenSecureChannel request was granted (Issue or Renew); ``reply`` is the OPN response."""

    request_id: int
    request_handle: int
    renew: bool
    channel_id: int
    token_id: int
    requested_lifetime_ms: int
    revised_lifetime_ms: int
    reply: bytes


@dataclass(slots=True)  # not frozen: one per request, and a frozen dataclass costs more to build
class ServiceRequest:
    """A decoded service request for the caller to decide and answer with ``send_response``."""

    request_id: int  # the chunk layer's RequestId: the response goes out under it
    request_handle: int  # the client's RequestHandle: the one in ``request`` may be another's (a repeat's)
    service: Service
    # asyncua's request object, e.g. ua.ReadRequest. For a repeat it is shared and must not be changed:
    # its header's RequestHandle and Timestamp are the first request's (see DecodedRequest).
    request: Any
    body: bytes = b""  # the request as the client encoded it (type id first): relayed when unchanged
    # A request the codec has seen before (a repeated Read): its cache entry, with its operations.
    repeat: Repeat | None = None

    @property
    def header(self) -> ua.RequestHeader:
        """RequestHandle, AuthenticationToken, TimeoutHint, ... as the client sent them."""
        header: ua.RequestHeader = self.request.RequestHeader
        return header

    @property
    def name(self) -> str:
        return self.service.name


@dataclass(frozen=True, slots=True)
class RejectedRequest:
    """A well-framed request the codec refused itself (an unknown service, a body that does not decode);
    ``reply`` is the ServiceFault. The connection stays up."""

    request_id: int
    request_handle: int
    type_id: int | None
    status: int
    reason: str
    reply: bytes


@dataclass(frozen=True, slots=True)
class CloseChannel:
    """CloseSecureChannel: the client is done; close the connection without an answer (Part 6, 6.7.5)."""

    request_id: int


Event = Hello | OpenChannel | ServiceRequest | RejectedRequest | CloseChannel

__all__ = [
    "CloseChannel",
    "Event",
    "Hello",
    "OpenChannel",
    "RejectedRequest",
    "ServiceRequest",
    "TransportLimits",
]
