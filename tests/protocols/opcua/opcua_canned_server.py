"""A tiny opc.tcp server for tests: an asyncio protocol that feeds :class:`OpcUaServerConnection` and
answers from canned data, so real clients (asyncua, python-opcua) do a whole handshake against our codec.

It answers CreateSession, ActivateSession, CloseSession, GetEndpoints, Read (from ``values``) and Write
(recorded); every other service gets a ServiceFault BadServiceUnsupported. Every event and every error is
recorded per connection for assertions. Also: byte builders for hand-made chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from asyncua import ua
from asyncua.ua.ua_binary import struct_to_binary

from protocols.opcua import (
    CloseChannel,
    Event,
    Hello,
    OpcUaProtocolError,
    OpcUaServerConnection,
    OpenChannel,
    RejectedRequest,
    ServiceRequest,
)

NONE_POLICY = "http://opcfoundation.org/UA/SecurityPolicy#None"
NAMESPACE = 2
SERVER_STATE = ua.NodeId(2259, 0)  # Server_ServerStatus_State: asyncua's client probes it every second
# Ten variables to read: ns=2;i=1..10 hold 100.5, 101.5, ...
VALUE_NODES = [ua.NodeId(i, NAMESPACE) for i in range(1, 11)]
BIG_NODE = ua.NodeId("big", NAMESPACE)  # a string long enough to need many chunks
SESSION_TOKEN = ua.NodeId(b"session-token-1", 0, ua.NodeIdType.ByteString)


def default_values() -> dict[ua.NodeId, ua.Variant]:
    values = {node: ua.Variant(100.5 + i, ua.VariantType.Double) for i, node in enumerate(VALUE_NODES)}
    values[SERVER_STATE] = ua.Variant(0, ua.VariantType.Int32)
    values[BIG_NODE] = ua.Variant("x" * 100_000, ua.VariantType.String)
    return values


@dataclass
class ConnectionLog:
    events: list[Event] = field(default_factory=list)
    errors: list[OpcUaProtocolError] = field(default_factory=list)
    written: list[ua.WriteValue] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def services(self) -> list[str]:
        return [event.name for event in self.events if isinstance(event, ServiceRequest)]


class CannedServerProtocol(asyncio.Protocol):
    def __init__(self, log: ConnectionLog, values: dict[ua.NodeId, ua.Variant], **limits: int) -> None:
        self.log = log
        self.values = values
        self.conn = OpcUaServerConnection(0x5A5A0001, **limits)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.log.closed.set()

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        try:
            while (event := self.conn.next_event(time.time())) is not None:
                self.log.events.append(event)
                if isinstance(event, Hello | OpenChannel | RejectedRequest):
                    self._write(event.reply)
                elif isinstance(event, ServiceRequest):
                    self._write(self.answer(event))
                elif isinstance(event, CloseChannel):
                    self._close()
                    return
        except OpcUaProtocolError as error:
            self.log.errors.append(error)
            self._write(self.conn.send_error(error.status, error.reason))
            self._close()

    def answer(self, event: ServiceRequest) -> bytes:
        handler: Callable[[Any], Any] | None = getattr(self, f"_{event.name}", None)
        if handler is None:
            return self.conn.send_service_fault(
                event.request_id, event.request_handle, ua.StatusCodes.BadServiceUnsupported
            )
        return self.conn.send_response(
            event.request_id, handler(event.request), request_handle=event.request_handle
        )

    def _endpoints(self) -> list[ua.EndpointDescription]:
        return [
            ua.EndpointDescription(
                EndpointUrl="opc.tcp://127.0.0.1:4840",
                Server=ua.ApplicationDescription(ApplicationUri="urn:ztgate:test:canned"),
                SecurityMode=ua.MessageSecurityMode.None_,
                SecurityPolicyUri=NONE_POLICY,
                UserIdentityTokens=[
                    ua.UserTokenPolicy(PolicyId="anonymous", TokenType=ua.UserTokenType.Anonymous)
                ],
                TransportProfileUri="http://opcfoundation.org/UA-Profile/Transport/uatcp-uasc-uabinary",
            )
        ]

    def _CreateSession(self, request: ua.CreateSessionRequest) -> ua.CreateSessionResponse:
        response = ua.CreateSessionResponse()
        response.Parameters = ua.CreateSessionResult(
            SessionId=ua.NodeId(1, 1),
            AuthenticationToken=SESSION_TOKEN,
            RevisedSessionTimeout=request.Parameters.RequestedSessionTimeout,
            ServerNonce=b"\x01" * 32,
            ServerEndpoints=self._endpoints(),
            ServerSignature=ua.SignatureData(),
            MaxRequestMessageSize=0,
        )
        return response

    def _ActivateSession(self, _request: ua.ActivateSessionRequest) -> ua.ActivateSessionResponse:
        response = ua.ActivateSessionResponse()
        response.Parameters = ua.ActivateSessionResult(ServerNonce=b"\x02" * 32)
        return response

    def _CloseSession(self, _request: ua.CloseSessionRequest) -> ua.CloseSessionResponse:
        return ua.CloseSessionResponse()

    def _GetEndpoints(self, _request: ua.GetEndpointsRequest) -> ua.GetEndpointsResponse:
        return ua.GetEndpointsResponse(Endpoints=self._endpoints())

    def _Read(self, request: ua.ReadRequest) -> ua.ReadResponse:
        results = []
        for item in request.Parameters.NodesToRead:
            value = self.values.get(item.NodeId)
            if value is None:
                results.append(ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown)))
            elif item.AttributeId != ua.AttributeIds.Value:
                results.append(ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadAttributeIdInvalid)))
            else:
                results.append(ua.DataValue(value))
        return ua.ReadResponse(Results=results)

    def _Write(self, request: ua.WriteRequest) -> ua.WriteResponse:
        self.log.written.extend(request.Parameters.NodesToWrite)
        return ua.WriteResponse(Results=[ua.StatusCode() for _ in request.Parameters.NodesToWrite])

    def _write(self, data: bytes) -> None:
        self.log.sent.append(data)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@dataclass
class CannedServer:
    port: int
    logs: list[ConnectionLog]

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}"

    @property
    def log(self) -> ConnectionLog:
        assert self.logs, "no client has connected"
        return self.logs[-1]


@contextlib.asynccontextmanager
async def canned_server(
    values: dict[ua.NodeId, ua.Variant] | None = None, **limits: int
) -> AsyncIterator[CannedServer]:
    logs: list[ConnectionLog] = []
    table = default_values() if values is None else values

    def factory() -> CannedServerProtocol:
        logs.append(ConnectionLog())
        return CannedServerProtocol(logs[-1], table, **limits)

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    try:
        yield CannedServer(server.sockets[0].getsockname()[1], logs)
    finally:
        server.close()
        await server.wait_closed()


# ------------------------------------------------------------------------------------ hand-made bytes


def hello(
    receive: int = 65536,
    send: int = 65536,
    max_message: int = 0,
    max_chunks: int = 0,
    url: str = "opc.tcp://x",
) -> bytes:
    body = struct_to_binary(
        ua.Hello(
            ProtocolVersion=0,
            ReceiveBufferSize=receive,
            SendBufferSize=send,
            MaxMessageSize=max_message,
            MaxChunkCount=max_chunks,
            EndpointUrl=url,
        )
    )
    return b"HELF" + struct.pack("<I", 8 + len(body)) + body


def open_request(
    *,
    renew: bool = False,
    lifetime_ms: int = 600_000,
    mode: ua.MessageSecurityMode = ua.MessageSecurityMode.None_,
    handle: int = 1,
) -> bytes:
    request = ua.OpenSecureChannelRequest()
    request.RequestHeader.RequestHandle = handle
    request.Parameters = ua.OpenSecureChannelParameters(
        ClientProtocolVersion=0,
        RequestType=ua.SecurityTokenRequestType.Renew if renew else ua.SecurityTokenRequestType.Issue,
        SecurityMode=mode,
        ClientNonce=b"",
        RequestedLifetime=lifetime_ms,
    )
    return struct_to_binary(request)


def opn(
    body: bytes,
    *,
    channel_id: int = 0,
    sequence: int = 1,
    request_id: int = 1,
    policy: str = NONE_POLICY,
    chunk_type: bytes = b"F",
) -> bytes:
    rest = (
        struct_to_binary(ua.AsymmetricAlgorithmHeader(SecurityPolicyURI=policy))
        + struct.pack("<II", sequence, request_id)
        + body
    )
    return b"OPN" + chunk_type + struct.pack("<II", 12 + len(rest), channel_id) + rest


def symmetric(
    body: bytes,
    *,
    message_type: bytes = b"MSG",
    chunk_type: bytes = b"F",
    channel_id: int,
    token_id: int,
    sequence: int,
    request_id: int,
) -> bytes:
    return (
        message_type
        + chunk_type
        + struct.pack("<IIIII", 24 + len(body), channel_id, token_id, sequence, request_id)
        + body
    )


def read_request(nodes: list[ua.NodeId], handle: int = 7) -> ua.ReadRequest:
    request = ua.ReadRequest()
    request.RequestHeader.RequestHandle = handle
    request.RequestHeader.AuthenticationToken = SESSION_TOKEN
    request.RequestHeader.TimeoutHint = 4000
    request.Parameters.NodesToRead = [
        ua.ReadValueId(NodeId=node, AttributeId=ua.AttributeIds.Value) for node in nodes
    ]
    return request
