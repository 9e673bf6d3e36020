"""The SecureChannel of one connection (Part 4, 5.5; Part 6, 6.7.4 - 6.7.6) under SecurityPolicy None.

Only policy None with mode None is offered: the gateway runs OPC UA inside its mutual-TLS overlay, which
already authenticates and encrypts. What is left to the channel is its identity and its tokens: the
channel id is the gateway's, token ids count up per channel, and every token's lifetime is revised into
bounds the gateway sets and expires by the time the caller passes in (seconds since the epoch: the same
clock a token's CreatedAt reports to the client). asyncua's server takes the client's requested lifetime
as it stands and never expires a token; this class does both.

Renewal follows Part 4, 5.5.2: the new token is "next" until the client first uses it; until then the
current one stays valid (within its own lifetime) and outgoing chunks keep using it.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from asyncua import ua
from asyncua.ua.object_ids import ObjectIds

from protocols.opcua.binary import decode
from protocols.opcua.spec import SECURITY_POLICY_NONE, OpcUaProtocolError, Status

ISSUE = ua.SecurityTokenRequestType.Issue
RENEW = ua.SecurityTokenRequestType.Renew
_OPEN_SECURE_CHANNEL_REQUEST = ObjectIds.OpenSecureChannelRequest_Encoding_DefaultBinary


def utc_datetime(now: float) -> datetime.datetime:
    """``now`` (seconds since the epoch) as the aware UTC datetime asyncua encodes as a UtcTime."""
    return datetime.datetime.fromtimestamp(now, datetime.UTC)


@dataclass(frozen=True, slots=True)
class SecurityToken:
    token_id: int
    created_at: float  # seconds since the epoch
    lifetime_ms: int
    expires_at: float = field(init=False)  # seconds since the epoch; checked for every chunk

    def __post_init__(self) -> None:
        object.__setattr__(self, "expires_at", self.created_at + self.lifetime_ms / 1000)

    def to_ua(self, channel_id: int) -> ua.ChannelSecurityToken:
        return ua.ChannelSecurityToken(
            ChannelId=channel_id,
            TokenId=self.token_id,
            CreatedAt=utc_datetime(self.created_at),
            RevisedLifetime=self.lifetime_ms,
        )


def decode_open_request(body: bytes) -> ua.OpenSecureChannelRequest:
    """The OpenSecureChannelRequest in an OPN body, checked to be exactly that and nothing more."""
    try:
        request, left = decode(ua.OpenSecureChannelRequest, body)
    except Exception as exc:  # asyncua raises whatever its decoders hit on bad bytes
        raise OpcUaProtocolError(Status.BAD_DECODING_ERROR, f"OpenSecureChannel request: {exc!r}") from None
    type_id = request.TypeId
    if type_id.NamespaceIndex != 0 or type_id.Identifier != _OPEN_SECURE_CHANNEL_REQUEST:
        raise OpcUaProtocolError(
            Status.BAD_DECODING_ERROR, f"OPN carries {request.TypeId}, not OpenSecureChannel"
        )
    if left:
        raise OpcUaProtocolError(
            Status.BAD_DECODING_ERROR, f"OpenSecureChannel request has {left} extra bytes"
        )
    return request


class SecureChannel:
    """Channel id and tokens; ``open`` handles an OpenSecureChannel request, ``check_token`` a MSG/CLO."""

    __slots__ = ("_issued", "channel_id", "current", "max_token_lifetime_ms", "min_token_lifetime_ms", "next")

    def __init__(self, channel_id: int, *, min_token_lifetime_ms: int, max_token_lifetime_ms: int) -> None:
        if not 1 <= channel_id <= 0xFFFFFFFF:
            raise ValueError(f"channel id {channel_id} is outside 1..4294967295 (0 means 'no channel')")
        if not 1 <= min_token_lifetime_ms <= max_token_lifetime_ms <= 0xFFFFFFFF:
            raise ValueError("token lifetimes: 1 <= min_token_lifetime_ms <= max_token_lifetime_ms")
        self.channel_id = channel_id
        self.min_token_lifetime_ms = min_token_lifetime_ms
        self.max_token_lifetime_ms = max_token_lifetime_ms
        self.current: SecurityToken | None = None
        self.next: SecurityToken | None = None
        self._issued = 0

    @property
    def is_open(self) -> bool:
        return self.current is not None

    @property
    def expires_at(self) -> float | None:
        """When the newest token runs out (seconds since the epoch): with no renewal by then the channel
        is dead and the connection should be closed. ``None`` before the channel is open."""
        newest = self.next or self.current
        return None if newest is None else newest.expires_at

    def revise_lifetime(self, requested_ms: int) -> int:
        # Zero asks for no particular lifetime: it gets the longest one allowed.
        if requested_ms <= 0:
            return self.max_token_lifetime_ms
        return min(max(requested_ms, self.min_token_lifetime_ms), self.max_token_lifetime_ms)

    def open(
        self,
        header_channel_id: int,
        security_policy_uri: str,
        request: ua.OpenSecureChannelRequest,
        now: float,
    ) -> SecurityToken:
        """Issue or renew a token for ``request``; anything but policy None and mode None is refused."""
        parameters = request.Parameters
        if security_policy_uri != SECURITY_POLICY_NONE:
            raise OpcUaProtocolError(
                Status.BAD_SECURITY_POLICY_REJECTED,
                f"security policy {security_policy_uri!r}: this endpoint offers only None "
                "(inside the overlay)",
            )
        if parameters.SecurityMode != ua.MessageSecurityMode.None_:
            raise OpcUaProtocolError(
                Status.BAD_SECURITY_MODE_REJECTED,
                f"security mode {parameters.SecurityMode!r}: this endpoint offers only None",
            )
        request_type = parameters.RequestType
        if request_type == ISSUE:
            if self.current is not None:
                raise OpcUaProtocolError(
                    Status.BAD_REQUEST_TYPE_INVALID, "Issue on a connection whose channel is already open"
                )
            if header_channel_id != 0:
                raise OpcUaProtocolError(
                    Status.BAD_TCP_SECURE_CHANNEL_UNKNOWN,
                    f"Issue for channel {header_channel_id}: a new channel is requested with id 0",
                )
            self.current = self._new_token(parameters.RequestedLifetime, now)
            return self.current
        if request_type == RENEW:
            if self.current is None:
                raise OpcUaProtocolError(
                    Status.BAD_REQUEST_TYPE_INVALID, "Renew before the channel was issued"
                )
            self._check_channel_id(header_channel_id)
            if now >= self.current.expires_at and (self.next is None or now >= self.next.expires_at):
                raise OpcUaProtocolError(
                    Status.BAD_SECURE_CHANNEL_TOKEN_UNKNOWN, "Renew after the channel's last token expired"
                )
            self.next = self._new_token(parameters.RequestedLifetime, now)
            return self.next
        raise OpcUaProtocolError(Status.BAD_REQUEST_TYPE_INVALID, f"request type {request_type!r}")

    def check_token(self, header_channel_id: int, token_id: int, now: float) -> None:
        """A MSG or CLO chunk must name this channel and a live token; the first use of a renewed token
        retires the previous one."""
        self._check_channel_id(header_channel_id)
        current, renewed = self.current, self.next
        if renewed is not None and token_id == renewed.token_id:
            self.current, self.next = renewed, None
            current = renewed
        elif current is None or token_id != current.token_id:
            raise OpcUaProtocolError(
                Status.BAD_SECURE_CHANNEL_TOKEN_UNKNOWN, f"token {token_id} is not a token of this channel"
            )
        if now >= current.expires_at:
            raise OpcUaProtocolError(
                Status.BAD_SECURE_CHANNEL_TOKEN_UNKNOWN,
                f"token {token_id} expired {now - current.expires_at:.3f} s ago "
                f"(lifetime {current.lifetime_ms} ms)",
            )

    def response(
        self, request: ua.OpenSecureChannelRequest, token: SecurityToken, now: float
    ) -> ua.OpenSecureChannelResponse:
        response = ua.OpenSecureChannelResponse()
        response.ResponseHeader.Timestamp = utc_datetime(now)
        response.ResponseHeader.RequestHandle = request.RequestHeader.RequestHandle
        response.Parameters = ua.OpenSecureChannelResult(
            ServerProtocolVersion=0,
            SecurityToken=token.to_ua(self.channel_id),
            ServerNonce=b"",  # policy None: no keys to derive, so no nonce
        )
        return response

    def _check_channel_id(self, header_channel_id: int) -> None:
        if header_channel_id != self.channel_id:
            raise OpcUaProtocolError(
                Status.BAD_SECURE_CHANNEL_ID_INVALID,
                f"channel {header_channel_id}: this connection's channel is {self.channel_id}",
            )

    def _new_token(self, requested_ms: int, now: float) -> SecurityToken:
        self._issued += 1
        return SecurityToken(self._issued, now, self.revise_lifetime(requested_ms))


__all__ = ["ISSUE", "RENEW", "SecureChannel", "SecurityToken", "decode_open_request", "utc_datetime"]
