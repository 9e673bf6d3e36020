"""The service table against asyncua's type registry and Part 4's list of services, and the body helpers
(decode a request by type id, patch a response's RequestHandle)."""

from __future__ import annotations

import struct

import pytest
from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import struct_from_binary, struct_to_binary

from protocols.opcua import (
    SERVICES,
    SERVICES_BY_NAME,
    SERVICES_BY_TYPE_ID,
    OpcUaProtocolError,
    ServiceSet,
    decode_request,
    patch_request_handle,
    request_handle_offset,
    service_of,
)
from protocols.opcua.messages import RequestDecodeError, check_response_type, type_id_span

# OPC 10000-4, clause 5: every service by service set.
PART_4 = {
    "Discovery": {"FindServers", "FindServersOnNetwork", "GetEndpoints", "RegisterServer", "RegisterServer2"},
    "SecureChannel": {"OpenSecureChannel", "CloseSecureChannel"},
    "Session": {"CreateSession", "ActivateSession", "CloseSession", "Cancel"},
    "NodeManagement": {"AddNodes", "AddReferences", "DeleteNodes", "DeleteReferences"},
    "View": {"Browse", "BrowseNext", "TranslateBrowsePathsToNodeIds", "RegisterNodes", "UnregisterNodes"},
    "Query": {"QueryFirst", "QueryNext"},
    "Attribute": {"Read", "HistoryRead", "Write", "HistoryUpdate"},
    "Method": {"Call"},
    "MonitoredItem": {
        "CreateMonitoredItems",
        "ModifyMonitoredItems",
        "SetMonitoringMode",
        "SetTriggering",
        "DeleteMonitoredItems",
    },
    "Subscription": {
        "CreateSubscription",
        "ModifySubscription",
        "SetPublishingMode",
        "Publish",
        "Republish",
        "TransferSubscriptions",
        "DeleteSubscriptions",
    },
}


def test_the_table_is_part_4() -> None:
    by_set: dict[str, set[str]] = {}
    for service in SERVICES:
        by_set.setdefault(service.service_set.value, set()).add(service.name)
    assert by_set == PART_4
    assert {member.value for member in ServiceSet} == set(PART_4)
    assert len(SERVICES_BY_TYPE_ID) == len(SERVICES_BY_NAME) == len(SERVICES)


@pytest.mark.parametrize("service", SERVICES, ids=[service.name for service in SERVICES])
def test_type_ids_match_asyncuas_registry(service: object) -> None:
    from protocols.opcua import Service

    assert isinstance(service, Service)
    request_id = ua.FourByteNodeId(service.request_type_id)
    assert ua.extension_objects_by_typeid[request_id] is service.request_type
    assert (
        ua.extension_objects_by_typeid[ua.FourByteNodeId(service.response_type_id)] is service.response_type
    )
    assert service.request_type().TypeId == request_id
    assert service_of(service.request_type()) is service


@pytest.mark.parametrize("service", SERVICES, ids=[service.name for service in SERVICES])
def test_every_request_decodes_by_its_type_id(service: object) -> None:
    from protocols.opcua import Service

    assert isinstance(service, Service)
    request = service.request_type()
    request.RequestHeader.RequestHandle = 99
    body = struct_to_binary(request)
    if not service.in_secure_message:
        with pytest.raises(RequestDecodeError) as caught:
            decode_request(body)
        assert caught.value.status == ua.StatusCodes.BadServiceUnsupported
        assert caught.value.request_handle == 99
        return
    decoded_service, decoded = decode_request(body)
    assert decoded_service is service
    assert struct_to_binary(decoded) == body


def test_type_id_encodings() -> None:
    assert type_id_span(b"\x00\x2a") == (42, 2)
    assert type_id_span(b"\x01\x00" + struct.pack("<H", 631)) == (631, 4)
    assert type_id_span(b"\x01\x03" + struct.pack("<H", 631)) == (None, 4)  # ns 3
    assert type_id_span(b"\x02" + struct.pack("<HI", 0, 631)) == (631, 7)
    assert type_id_span(b"\x02" + struct.pack("<HI", 1, 631)) == (None, 7)
    assert type_id_span(b"\x03\x00\x00\x02\x00\x00\x00ab") == (None, 9)
    with pytest.raises(OpcUaProtocolError):
        type_id_span(b"\x09")
    # A Numeric encoding of a ns-0 id is still that service.
    body = struct_to_binary(ua.ReadRequest())
    long_form = b"\x02" + struct.pack("<HI", 0, 631) + body[4:]
    service, _request = decode_request(long_form)
    assert service.name == "Read"


def read_response(handle: int) -> ua.ReadResponse:
    response = ua.ReadResponse(Results=[ua.DataValue(ua.Variant(1.5))])
    response.ResponseHeader.RequestHandle = handle
    return response


def test_patching_the_request_handle_equals_re_encoding() -> None:
    response = read_response(1)
    upstream = struct_to_binary(response)
    assert request_handle_offset(upstream) == 12
    patched = patch_request_handle(upstream, 0xDEADBEEF)
    response.ResponseHeader.RequestHandle = 0xDEADBEEF
    assert patched == struct_to_binary(response)
    decoded = struct_from_binary(ua.ReadResponse, Buffer(patched))
    assert decoded.ResponseHeader.RequestHandle == 0xDEADBEEF
    assert decoded == response
    # A ServiceFault is patched the same way.
    fault = struct_to_binary(ua.ServiceFault())
    assert (
        struct_from_binary(
            ua.ServiceFault, Buffer(patch_request_handle(fault, 5))
        ).ResponseHeader.RequestHandle
        == 5
    )
    with pytest.raises(OpcUaProtocolError) as caught:
        patch_request_handle(upstream[:14], 1)
    assert caught.value.status == ua.StatusCodes.BadUnknownResponse and not caught.value.close


def test_relayed_bodies_must_answer_the_request() -> None:
    read = SERVICES_BY_NAME["Read"]
    check_response_type(struct_to_binary(read_response(1)), read)
    check_response_type(struct_to_binary(ua.ServiceFault()), read)
    with pytest.raises(OpcUaProtocolError) as caught:
        check_response_type(struct_to_binary(ua.WriteResponse()), read)
    assert caught.value.status == ua.StatusCodes.BadUnknownResponse


def test_the_relay_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.protocols.opcua.bench_opcua_relay import main

    main(["--seconds", "0.002"])
    assert "patch RequestHandle + relay bytes" in capsys.readouterr().out
