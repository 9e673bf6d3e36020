"""Per-operation helpers: list operations, reduce a request to its allowed operations, splice the device's
results back. Every step goes through asyncua's encoder and decoder, as it would on the wire."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import struct_from_binary, struct_to_binary

from protocols.opcua import (
    SERVICES_BY_NAME,
    OpcUaProtocolError,
    Operation,
    OperationCodec,
    operations,
    reduce_request,
    splice_response,
)
from protocols.opcua.operations import OPERATION_CODECS

DENIED = ua.StatusCodes.BadUserAccessDenied


def wire(message: Any) -> Any:
    """``message`` encoded and decoded again by asyncua."""
    return struct_from_binary(type(message), Buffer(struct_to_binary(message)))


def path_set(obj: Any, path: tuple[str, ...], value: Any) -> None:
    for name in path[:-1]:
        obj = getattr(obj, name)
    setattr(obj, path[-1], value)


def path_get(obj: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        obj = getattr(obj, name)
    return obj


@dataclass(frozen=True)
class Case:
    """How to make operation ``i`` of a service, the device's result for it, and read a result back."""

    service: str
    item: Callable[[int], Any]
    result: Callable[[int], Any]  # the device's answer to operation i
    marker: Callable[[Any], Any]  # what identifies operation i in a result (equals i)
    status: Callable[[Any], int | None]  # a result's status code


def node(i: int) -> ua.NodeId:
    return ua.NodeId(i, 2)


CASES = [
    Case(
        "Read",
        lambda i: ua.ReadValueId(NodeId=node(i), AttributeId=ua.AttributeIds.Value),
        lambda i: ua.DataValue(ua.Variant(i, ua.VariantType.Int32)),
        lambda result: result.Value.Value,
        lambda result: result.StatusCode.value,
    ),
    Case(
        "Write",
        lambda i: ua.WriteValue(
            NodeId=node(i), AttributeId=ua.AttributeIds.Value, Value=ua.DataValue(ua.Variant(float(i)))
        ),
        ua.StatusCode,  # Good with the operation's number in the low bits
        lambda result: result.value,
        lambda result: result.value,
    ),
    Case(
        "Call",
        lambda i: ua.CallMethodRequest(
            ObjectId=node(i), MethodId=node(100 + i), InputArguments=[ua.Variant(i)]
        ),
        lambda i: ua.CallMethodResult(OutputArguments=[ua.Variant(i, ua.VariantType.Int64)]),
        lambda result: result.OutputArguments[0].Value,
        lambda result: result.StatusCode.value,
    ),
    Case(
        "Browse",
        lambda i: ua.BrowseDescription(NodeId=node(i)),
        lambda i: ua.BrowseResult(References=[ua.ReferenceDescription(NodeId=ua.ExpandedNodeId(i, 2))]),
        lambda result: result.References[0].NodeId.Identifier,
        lambda result: result.StatusCode.value,
    ),
    Case(
        "BrowseNext",
        lambda i: bytes([i]),
        lambda i: ua.BrowseResult(ContinuationPoint=bytes([i])),
        lambda result: result.ContinuationPoint[0],
        lambda result: result.StatusCode.value,
    ),
    Case(
        "TranslateBrowsePathsToNodeIds",
        lambda i: ua.BrowsePath(StartingNode=node(i)),
        lambda i: ua.BrowsePathResult(Targets=[ua.BrowsePathTarget(TargetId=ua.ExpandedNodeId(i, 2))]),
        lambda result: result.Targets[0].TargetId.Identifier,
        lambda result: result.StatusCode.value,
    ),
    Case(
        "CreateMonitoredItems",
        lambda i: ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=node(i), AttributeId=ua.AttributeIds.Value)
        ),
        lambda i: ua.MonitoredItemCreateResult(MonitoredItemId=i),
        lambda result: result.MonitoredItemId,
        lambda result: result.StatusCode.value,
    ),
    Case(
        "ModifyMonitoredItems",
        lambda i: ua.MonitoredItemModifyRequest(MonitoredItemId=i),
        lambda i: ua.MonitoredItemModifyResult(RevisedQueueSize=i),
        lambda result: result.RevisedQueueSize,
        lambda result: result.StatusCode.value,
    ),
    Case(
        "HistoryRead",
        lambda i: ua.HistoryReadValueId(NodeId=node(i)),
        lambda i: ua.HistoryReadResult(ContinuationPoint=bytes([i])),
        lambda result: result.ContinuationPoint[0],
        lambda result: result.StatusCode.value,
    ),
    Case(
        "RegisterNodes",
        node,
        lambda i: ua.NodeId(i, 3),  # the device's alias keeps the number, moves the namespace
        lambda result: result.Identifier,
        lambda result: None,  # RegisterNodes has no status per node
    ),
]


def request_for(case: Case, count: int) -> Any:
    service = SERVICES_BY_NAME[case.service]
    codec = service.operations
    assert codec is not None
    request = service.request_type()
    request.RequestHeader.RequestHandle = 4711
    path_set(request, codec.items, [case.item(i) for i in range(1, count + 1)])
    return request


def device(case: Case, codec: OperationCodec, request: Any, *, diagnostics: bool) -> Any:
    """What the upstream answers: one result per operation it was sent, identified by the operation."""
    items = path_get(request, codec.items)
    numbers = [operation_number(case, item) for item in items]
    response = codec.response_type()
    path_set(response, codec.results, [case.result(i) for i in numbers])
    if diagnostics and codec.diagnostic_infos is not None:
        infos = [ua.DiagnosticInfo(SymbolicId=i) for i in numbers]
        path_set(response, codec.diagnostic_infos, infos)
    return response


def operation_number(case: Case, item: Any) -> int:
    return next(i for i in range(1, 100) if wire_equal(case.item(i), item))


def wire_equal(left: Any, right: Any) -> bool:
    if isinstance(left, bytes | ua.NodeId):
        return bool(left == right)
    return struct_to_binary(left) == struct_to_binary(right)


@pytest.mark.parametrize("diagnostics", [True, False])
@pytest.mark.parametrize("case", CASES, ids=[case.service for case in CASES])
def test_ten_operations_two_denied_round_trip(case: Case, diagnostics: bool) -> None:
    original = wire(request_for(case, 10))
    codec = SERVICES_BY_NAME[case.service].operations
    assert codec is not None
    allowed = [i not in (3, 8) for i in range(1, 11)]  # operations 3 and 8 (positions 2 and 7) denied
    reduction = reduce_request(codec, original, allowed)
    upstream = wire(reduction.request)
    assert [operation_number(case, item) for item in path_get(upstream, codec.items)] == [
        1,
        2,
        4,
        5,
        6,
        7,
        9,
        10,
    ]
    assert upstream.RequestHeader.RequestHandle == 4711
    answer = wire(device(case, codec, upstream, diagnostics=diagnostics))
    spliced = wire(splice_response(reduction, answer))
    results = path_get(spliced, codec.results)
    assert len(results) == 10
    for position, result in enumerate(results):
        number = position + 1
        if number in (3, 8):
            if case.service == "RegisterNodes":
                assert result == node(number)  # refused nodes are "registered" as themselves
            else:
                assert case.status(result) == DENIED, (position, result)
        else:
            assert case.marker(result) == number
            assert case.status(result) in (None, 0, number if case.service == "Write" else 0)
    if codec.diagnostic_infos is not None:
        infos = path_get(spliced, codec.diagnostic_infos)
        if diagnostics:
            assert [info.SymbolicId for info in infos] == [1, 2, None, 4, 5, 6, 7, None, 9, 10]
        else:
            assert infos == []
    # The original request was not touched.
    assert len(path_get(original, codec.items)) == 10


@pytest.mark.parametrize("case", CASES, ids=[case.service for case in CASES])
def test_all_denied_goes_nowhere_and_is_answered_locally(case: Case) -> None:
    codec = SERVICES_BY_NAME[case.service].operations
    assert codec is not None
    reduction = reduce_request(codec, request_for(case, 3), [False] * 3)
    assert reduction.request is None and reduction.allowed_count == 0
    response = wire(splice_response(reduction, None))
    assert isinstance(response, codec.response_type)
    results = path_get(response, codec.results)
    assert len(results) == 3
    if case.service != "RegisterNodes":
        assert {case.status(result) for result in results} == {DENIED}


def test_all_allowed_forwards_a_copy_with_a_header_of_its_own() -> None:
    codec = SERVICES_BY_NAME["Read"].operations
    assert codec is not None
    request = request_for(CASES[0], 4)
    reduction = reduce_request(codec, request, [True] * 4)
    assert reduction.all_allowed and reduction.request == request
    # asyncua's client rewrites the header of what it sends; the original may be a shared repeat.
    assert reduction.request is not request and reduction.request.RequestHeader is not request.RequestHeader
    answer = device(CASES[0], codec, request, diagnostics=False)
    assert splice_response(reduction, answer) is answer


def test_reduction_copies_down_to_the_list_and_the_header() -> None:
    codec = SERVICES_BY_NAME["Write"].operations
    assert codec is not None
    request = request_for(CASES[1], 3)
    reduction = reduce_request(codec, request, [True, False, True])
    reduced = reduction.request
    assert reduced is not request and reduced.Parameters is not request.Parameters
    assert reduced.RequestHeader is not request.RequestHeader
    reduced.RequestHeader.RequestHandle = 1  # what asyncua's client does to what it sends
    assert request.RequestHeader.RequestHandle == 4711
    assert len(request.Parameters.NodesToWrite) == 3
    with pytest.raises(ValueError, match="2 decisions for 3 operations"):
        reduce_request(codec, request, [True, False])


def test_a_device_answer_of_the_wrong_length_cannot_be_spliced() -> None:
    codec = SERVICES_BY_NAME["Read"].operations
    assert codec is not None
    reduction = reduce_request(codec, request_for(CASES[0], 4), [True, False, True, True])
    short = ua.ReadResponse(Results=[ua.DataValue(ua.Variant(1))] * 2)
    with pytest.raises(OpcUaProtocolError) as caught:
        splice_response(reduction, short)
    assert caught.value.status == ua.StatusCodes.BadUnknownResponse and not caught.value.close
    # Diagnostic infos of the wrong length are dropped rather than misplaced.
    answer = ua.ReadResponse(
        Results=[ua.DataValue(ua.Variant(1))] * 3, DiagnosticInfos=[ua.DiagnosticInfo(SymbolicId=1)]
    )
    assert splice_response(reduction, answer).DiagnosticInfos == []
    with pytest.raises(ValueError):
        splice_response(reduction, None)


def test_operations_name_what_a_policy_decides_on() -> None:
    read = wire(request_for(CASES[0], 2))
    read.Parameters.NodesToRead[1].IndexRange = "0:3"
    assert [
        (op.service, op.index, op.node_id, op.attribute_id, op.index_range) for op in operations(read)
    ] == [
        ("Read", 0, node(1), 13, None),
        ("Read", 1, node(2), 13, "0:3"),
    ]
    write = wire(request_for(CASES[1], 1))
    (op,) = operations(write)
    assert op.value is not None and op.value.Value.Value == 1.0 and op.attribute_id == 13
    call = wire(request_for(CASES[2], 1))
    (op,) = operations(call)
    assert (op.node_id, op.method_id, [argument.Value for argument in op.arguments]) == (
        node(1),
        node(101),
        [1],
    )
    (op,) = operations(wire(request_for(CASES[4], 1)))
    assert op.node_id is None and op.continuation_point == b"\x01"
    (op,) = operations(wire(request_for(CASES[5], 1)))
    assert op.node_id == node(1) and isinstance(op.item, ua.BrowsePath)
    (op,) = operations(wire(request_for(CASES[6], 1)))
    assert (op.node_id, op.attribute_id) == (node(1), 13)
    (op,) = operations(wire(request_for(CASES[7], 1)))
    assert op.node_id is None and op.monitored_item_id == 1
    (op,) = operations(wire(request_for(CASES[8], 1)))
    assert (op.node_id, op.attribute_id, op.continuation_point) == (node(1), 13, None)
    (op,) = operations(wire(request_for(CASES[9], 1)))
    assert op.node_id == node(1)
    assert operations(ua.CreateSubscriptionRequest()) == []
    assert operations(ua.ReadRequest()) == []  # a Read of nothing
    assert isinstance(operations(read)[0], Operation)


def test_every_codec_is_in_the_service_table() -> None:
    with_codecs = {
        service.name: service.operations for service in SERVICES_BY_NAME.values() if service.operations
    }
    assert set(with_codecs) == {codec.service for codec in OPERATION_CODECS}
    for name, codec in with_codecs.items():
        assert codec is not None and codec.service == name
        assert codec.response_type is SERVICES_BY_NAME[name].response_type
