"""OPC UA binary (opc.tcp) codec, sans-IO, on asyncua's binary codec: the client-facing side of the
gateway's endpoint (Hello, secure channel, chunks, service requests) and the per-operation helpers a
policy needs (list operations, forward the allowed ones, splice the results back)."""

from protocols.opcua.channel import SecureChannel, SecurityToken
from protocols.opcua.connection import ConnectionState, OpcUaServerConnection
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
    decode_request,
    encode_message,
    patch_request_handle,
    request_handle_offset,
    service_fault,
)
from protocols.opcua.operations import Operation, OperationCodec, Reduction, reduce_request, splice_response
from protocols.opcua.services import (
    SERVICES,
    SERVICES_BY_NAME,
    SERVICES_BY_TYPE_ID,
    Service,
    ServiceSet,
    operations,
    service_of,
)
from protocols.opcua.spec import OpcUaProtocolError, Status, status_name

__all__ = [
    "SERVICES",
    "SERVICES_BY_NAME",
    "SERVICES_BY_TYPE_ID",
    "CloseChannel",
    "ConnectionState",
    "Event",
    "Hello",
    "OpcUaProtocolError",
    "OpcUaServerConnection",
    "OpenChannel",
    "Operation",
    "OperationCodec",
    "Reduction",
    "RejectedRequest",
    "SecureChannel",
    "SecurityToken",
    "Service",
    "ServiceRequest",
    "ServiceSet",
    "Status",
    "TransportLimits",
    "decode_request",
    "encode_message",
    "operations",
    "patch_request_handle",
    "reduce_request",
    "request_handle_offset",
    "service_fault",
    "service_of",
    "splice_response",
    "status_name",
]
