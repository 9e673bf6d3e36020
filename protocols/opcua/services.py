"""The services of OPC 10000-4 ("Part 4"), keyed by the binary encoding id of their request.

A MSG body starts with the NodeId of the request's DefaultBinary encoding (ns 0, numeric); this table maps
that id to the service's name as the specification spells it, its service set (Part 4, clause 5), asyncua's
request and response classes, and, for services that carry a list of operations, the codec that lists,
reduces and splices them (:mod:`protocols.opcua.operations`). Policies name services and service sets by
these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from asyncua import ua
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.ua_binary import nodeid_to_binary

from protocols.opcua import operations as ops
from protocols.opcua.operations import OperationCodec


class ServiceSet(StrEnum):
    """Part 4, clause 5: the service sets, named as the specification names them."""

    DISCOVERY = "Discovery"
    SECURE_CHANNEL = "SecureChannel"
    SESSION = "Session"
    NODE_MANAGEMENT = "NodeManagement"
    VIEW = "View"
    QUERY = "Query"
    ATTRIBUTE = "Attribute"
    METHOD = "Method"
    MONITORED_ITEM = "MonitoredItem"
    SUBSCRIPTION = "Subscription"


@dataclass(frozen=True, slots=True)
class Service:
    name: str  # "Read", "TranslateBrowsePathsToNodeIds", ... (Part 4)
    service_set: ServiceSet
    request_type: type[Any]  # asyncua's class, e.g. ua.ReadRequest
    response_type: type[Any]
    request_type_id: int  # ns 0 numeric id of the request's DefaultBinary encoding (631 for Read)
    response_type_id: int
    operations: OperationCodec | None = None  # for services with per-operation results
    # The response's type id in its smallest encoding, the one servers send: a body starting with these
    # bytes is this service's response, with its ResponseHeader right after them.
    response_prefix: bytes = b""

    @property
    def in_secure_message(self) -> bool:
        """OpenSecureChannel and CloseSecureChannel travel as OPN and CLO, never inside a MSG."""
        return self.service_set is not ServiceSet.SECURE_CHANNEL


def _service(name: str, service_set: ServiceSet, codec: OperationCodec | None = None) -> Service:
    request_type = getattr(ua, f"{name}Request")
    response_type = getattr(ua, f"{name}Response")
    response_type_id = getattr(ObjectIds, f"{name}Response_Encoding_DefaultBinary")
    return Service(
        name,
        service_set,
        request_type,
        response_type,
        getattr(ObjectIds, f"{name}Request_Encoding_DefaultBinary"),
        response_type_id,
        codec,
        nodeid_to_binary(ua.NodeId(response_type_id, ua.Int16(0))),
    )


_D, _SC, _S = ServiceSet.DISCOVERY, ServiceSet.SECURE_CHANNEL, ServiceSet.SESSION
_NM, _V, _Q = ServiceSet.NODE_MANAGEMENT, ServiceSet.VIEW, ServiceSet.QUERY
_A, _M, _MI, _SUB = (
    ServiceSet.ATTRIBUTE,
    ServiceSet.METHOD,
    ServiceSet.MONITORED_ITEM,
    ServiceSet.SUBSCRIPTION,
)

SERVICES: tuple[Service, ...] = (
    _service("FindServers", _D),
    _service("FindServersOnNetwork", _D),
    _service("GetEndpoints", _D),
    _service("RegisterServer", _D),
    _service("RegisterServer2", _D),
    _service("OpenSecureChannel", _SC),
    _service("CloseSecureChannel", _SC),
    _service("CreateSession", _S),
    _service("ActivateSession", _S),
    _service("CloseSession", _S),
    _service("Cancel", _S),
    _service("AddNodes", _NM),
    _service("AddReferences", _NM),
    _service("DeleteNodes", _NM),
    _service("DeleteReferences", _NM),
    _service("Browse", _V, ops.BROWSE),
    _service("BrowseNext", _V, ops.BROWSE_NEXT),
    _service("TranslateBrowsePathsToNodeIds", _V, ops.TRANSLATE_BROWSE_PATHS_TO_NODE_IDS),
    _service("RegisterNodes", _V, ops.REGISTER_NODES),
    _service("UnregisterNodes", _V),
    _service("QueryFirst", _Q),
    _service("QueryNext", _Q),
    _service("Read", _A, ops.READ),
    _service("HistoryRead", _A, ops.HISTORY_READ),
    _service("Write", _A, ops.WRITE),
    _service("HistoryUpdate", _A),
    _service("Call", _M, ops.CALL),
    _service("CreateMonitoredItems", _MI, ops.CREATE_MONITORED_ITEMS),
    _service("ModifyMonitoredItems", _MI, ops.MODIFY_MONITORED_ITEMS),
    _service("SetMonitoringMode", _MI),
    _service("SetTriggering", _MI),
    _service("DeleteMonitoredItems", _MI),
    _service("CreateSubscription", _SUB),
    _service("ModifySubscription", _SUB),
    _service("SetPublishingMode", _SUB),
    _service("Publish", _SUB),
    _service("Republish", _SUB),
    _service("TransferSubscriptions", _SUB),
    _service("DeleteSubscriptions", _SUB),
)

SERVICES_BY_TYPE_ID: dict[int, Service] = {service.request_type_id: service for service in SERVICES}
SERVICES_BY_NAME: dict[str, Service] = {service.name: service for service in SERVICES}
SERVICES_BY_REQUEST_TYPE: dict[type[Any], Service] = {service.request_type: service for service in SERVICES}


def service_of(request: Any) -> Service:
    """The service of an asyncua request object (KeyError for anything that is not a service request)."""
    return SERVICES_BY_REQUEST_TYPE[type(request)]


def operations(request: Any) -> list[ops.Operation]:
    """The operations of ``request`` in order; empty for services without an operation list."""
    codec = service_of(request).operations
    return codec.operations(request) if codec is not None else []


__all__ = [
    "SERVICES",
    "SERVICES_BY_NAME",
    "SERVICES_BY_REQUEST_TYPE",
    "SERVICES_BY_TYPE_ID",
    "Service",
    "ServiceSet",
    "operations",
    "service_of",
]
