"""Per-operation decisions on multi-operation services: list the operations, forward only the allowed ones,
splice the device's results back into the client's positions.

A Read of ten nodes of which two are denied goes upstream as a Read of eight; the eight results come back
in the client's order with ``BadUserAccessDenied`` where the two were (docs/architecture.md, "Rules of
the path"; Part 4 7.38 "the size and order of the results list shall match the size and order of the
request list"). Diagnostic infos are kept only when the device returned one per forwarded operation,
and then padded with empty ones.

``OperationCodec`` says, per service, where the request's operations and the response's results live in
asyncua's objects; :func:`operations`, :func:`reduce_request` and :func:`splice_response` work for any
codec. Requests are never modified in place: a reduction copies the request down to the list it shortens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from asyncua import ua

from protocols.opcua.spec import ATTRIBUTE_VALUE, OpcUaProtocolError, Status

Path = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation of a request, as a policy needs to see it.

    ``node_id`` is the node the operation reaches: the object for a Call, the starting node for a
    TranslateBrowsePathsToNodeIds, the monitored node for CreateMonitoredItems; ``None`` for operations
    that name no node (BrowseNext continues a continuation point, ModifyMonitoredItems an item id: the
    gateway maps those back to the node it decided on). ``item`` is the request's own element, for what
    only some services carry (browse paths, monitoring filters, history details are request-wide).
    """

    service: str
    index: int
    item: Any
    node_id: ua.NodeId | None = None
    attribute_id: int | None = None
    index_range: str | None = None
    value: ua.DataValue | None = None  # Write
    method_id: ua.NodeId | None = None  # Call
    arguments: tuple[ua.Variant, ...] = ()  # Call
    continuation_point: bytes | None = None  # BrowseNext, HistoryRead
    monitored_item_id: int | None = None  # ModifyMonitoredItems


def _get(obj: Any, path: Path) -> Any:
    for name in path:
        obj = getattr(obj, name)
    return obj


def _replaced(obj: Any, path: Path, value: Any) -> Any:
    """A copy of ``obj`` with the attribute at ``path`` set to ``value``, copying each level on the way."""
    head, *rest = path
    new = value if not rest else _replaced(getattr(obj, head), tuple(rest), value)
    return dataclasses.replace(obj, **{head: new})


@dataclass(frozen=True, slots=True)
class OperationCodec:
    """Where one service keeps its operations and results, and what a refused operation's result is."""

    service: str
    response_type: type[Any]
    items: Path  # the request's operation list, e.g. ("Parameters", "NodesToRead")
    results: Path  # the response's result list, e.g. ("Results",)
    diagnostic_infos: Path | None  # None: the response has none (RegisterNodes)
    describe: Callable[[int, Any], Operation]
    refused: Callable[[int, Any], Any]  # (status, the request's element) -> result in its place

    def operations(self, request: Any) -> list[Operation]:
        return [self.describe(index, item) for index, item in enumerate(_get(request, self.items) or ())]


def _status(code: int) -> ua.StatusCode:
    return ua.StatusCode(ua.UInt32(code))


def _range(item: Any) -> str | None:
    index_range = item.IndexRange
    return index_range if isinstance(index_range, str) and index_range else None


def _read(index: int, item: Any) -> Operation:
    return Operation("Read", index, item, item.NodeId, item.AttributeId, _range(item))


def _write(index: int, item: Any) -> Operation:
    return Operation("Write", index, item, item.NodeId, item.AttributeId, _range(item), value=item.Value)


def _call(index: int, item: Any) -> Operation:
    arguments = tuple(item.InputArguments or ())
    return Operation("Call", index, item, item.ObjectId, method_id=item.MethodId, arguments=arguments)


def _browse(index: int, item: Any) -> Operation:
    return Operation("Browse", index, item, item.NodeId)


def _browse_next(index: int, item: Any) -> Operation:
    return Operation("BrowseNext", index, item, continuation_point=item)


def _translate(index: int, item: Any) -> Operation:
    return Operation("TranslateBrowsePathsToNodeIds", index, item, item.StartingNode)


def _create_monitored_item(index: int, item: Any) -> Operation:
    watched = item.ItemToMonitor
    return Operation(
        "CreateMonitoredItems", index, item, watched.NodeId, watched.AttributeId, _range(watched)
    )


def _modify_monitored_item(index: int, item: Any) -> Operation:
    return Operation("ModifyMonitoredItems", index, item, monitored_item_id=item.MonitoredItemId)


def _register(index: int, item: Any) -> Operation:
    return Operation("RegisterNodes", index, item, item)


def _history_read(index: int, item: Any) -> Operation:
    # HistoryRead returns a variable's value history or an object's events; either way it reads values.
    point = item.ContinuationPoint or None
    return Operation(
        "HistoryRead", index, item, item.NodeId, ATTRIBUTE_VALUE, _range(item), continuation_point=point
    )


def _refused_register(_status_code: int, item: Any) -> Any:
    # RegisterNodes has no per-node status: a refused node is "registered" as itself, which is what a
    # server that keeps no aliases answers anyway. Every later use of the id is decided on its own.
    return item


READ = OperationCodec(
    "Read",
    ua.ReadResponse,
    ("Parameters", "NodesToRead"),
    ("Results",),
    ("DiagnosticInfos",),
    _read,
    lambda status, _item: ua.DataValue(StatusCode=_status(status)),
)
WRITE = OperationCodec(
    "Write",
    ua.WriteResponse,
    ("Parameters", "NodesToWrite"),
    ("Results",),
    ("DiagnosticInfos",),
    _write,
    lambda status, _item: _status(status),
)
CALL = OperationCodec(
    "Call",
    ua.CallResponse,
    ("Parameters", "MethodsToCall"),
    ("Results",),
    ("DiagnosticInfos",),
    _call,
    lambda status, _item: ua.CallMethodResult(StatusCode=_status(status)),
)
BROWSE = OperationCodec(
    "Browse",
    ua.BrowseResponse,
    ("Parameters", "NodesToBrowse"),
    ("Results",),
    ("DiagnosticInfos",),
    _browse,
    lambda status, _item: ua.BrowseResult(StatusCode=_status(status)),
)
BROWSE_NEXT = OperationCodec(
    "BrowseNext",
    ua.BrowseNextResponse,
    ("Parameters", "ContinuationPoints"),
    ("Parameters", "Results"),
    ("Parameters", "DiagnosticInfos"),
    _browse_next,
    lambda status, _item: ua.BrowseResult(StatusCode=_status(status)),
)
TRANSLATE_BROWSE_PATHS_TO_NODE_IDS = OperationCodec(
    "TranslateBrowsePathsToNodeIds",
    ua.TranslateBrowsePathsToNodeIdsResponse,
    ("Parameters", "BrowsePaths"),
    ("Results",),
    ("DiagnosticInfos",),
    _translate,
    lambda status, _item: ua.BrowsePathResult(StatusCode=_status(status)),
)
CREATE_MONITORED_ITEMS = OperationCodec(
    "CreateMonitoredItems",
    ua.CreateMonitoredItemsResponse,
    ("Parameters", "ItemsToCreate"),
    ("Results",),
    ("DiagnosticInfos",),
    _create_monitored_item,
    lambda status, _item: ua.MonitoredItemCreateResult(StatusCode=_status(status)),
)
MODIFY_MONITORED_ITEMS = OperationCodec(
    "ModifyMonitoredItems",
    ua.ModifyMonitoredItemsResponse,
    ("Parameters", "ItemsToModify"),
    ("Results",),
    ("DiagnosticInfos",),
    _modify_monitored_item,
    lambda status, _item: ua.MonitoredItemModifyResult(StatusCode=_status(status)),
)
REGISTER_NODES = OperationCodec(
    "RegisterNodes",
    ua.RegisterNodesResponse,
    ("Parameters", "NodesToRegister"),
    ("Parameters", "RegisteredNodeIds"),
    None,
    _register,
    _refused_register,
)
HISTORY_READ = OperationCodec(
    "HistoryRead",
    ua.HistoryReadResponse,
    ("Parameters", "NodesToRead"),
    ("Results",),
    ("DiagnosticInfos",),
    _history_read,
    lambda status, _item: ua.HistoryReadResult(StatusCode=_status(status)),
)

OPERATION_CODECS: tuple[OperationCodec, ...] = (
    READ,
    WRITE,
    CALL,
    BROWSE,
    BROWSE_NEXT,
    TRANSLATE_BROWSE_PATHS_TO_NODE_IDS,
    CREATE_MONITORED_ITEMS,
    MODIFY_MONITORED_ITEMS,
    REGISTER_NODES,
    HISTORY_READ,
)


@dataclass(frozen=True, slots=True)
class Reduction:
    """A request cut down to its allowed operations, and what it takes to answer the original.

    ``request`` is what to send upstream, a copy with a header of its own: all the operations when
    everything is allowed, only the allowed ones otherwise, and ``None`` when nothing is allowed (nothing
    goes upstream).
    """

    codec: OperationCodec
    original: Any
    allowed: tuple[bool, ...]
    request: Any

    @property
    def all_allowed(self) -> bool:
        return all(self.allowed)

    @property
    def allowed_count(self) -> int:
        return sum(self.allowed)


def reduce_request(codec: OperationCodec, request: Any, allowed: Sequence[bool]) -> Reduction:
    """Keep the operations whose ``allowed`` flag is true (one flag per operation, in request order)."""
    items = list(_get(request, codec.items) or ())
    flags = tuple(bool(flag) for flag in allowed)
    if len(flags) != len(items):
        raise ValueError(f"{codec.service}: {len(flags)} decisions for {len(items)} operations")
    if not any(flags):
        return Reduction(codec, request, flags, None)
    # What is sent is a copy with its own header: asyncua's client rewrites the header of what it sends
    # in place, and the request may be a repeat's shared object (protocols.opcua.messages.RepeatCache).
    if all(flags):
        reduced = dataclasses.replace(request)
    else:
        reduced = _replaced(
            request, codec.items, [item for item, keep in zip(items, flags, strict=True) if keep]
        )
    reduced.RequestHeader = dataclasses.replace(request.RequestHeader)
    return Reduction(codec, request, flags, reduced)


def splice_response(
    reduction: Reduction, response: Any | None, status: int = Status.BAD_USER_ACCESS_DENIED
) -> Any:
    """The response to the original request: ``response`` (the device's answer to ``reduction.request``,
    or ``None`` when nothing was sent) with ``status`` results in the refused positions.

    A device answer with a result count other than the number of forwarded operations cannot be put back
    in order: that raises :class:`OpcUaProtocolError` (BadUnknownResponse, ``close=False``) so the client
    gets a ServiceFault instead of results that belong to other operations.
    """
    codec = reduction.codec
    if reduction.all_allowed and response is not None:
        return response
    items = list(_get(reduction.original, codec.items) or ())
    if response is None:
        if reduction.request is not None:
            raise ValueError(f"{codec.service}: operations were forwarded but no response was given")
        response = codec.response_type()
        forwarded: list[Any] = []
        diagnostics: list[Any] = []
    else:
        forwarded = list(_get(response, codec.results) or ())
        diagnostics = list(_get(response, codec.diagnostic_infos) or ()) if codec.diagnostic_infos else []
    allowed_count = reduction.allowed_count
    if len(forwarded) != allowed_count:
        raise OpcUaProtocolError(
            Status.BAD_UNKNOWN_RESPONSE,
            f"{codec.service}: the device returned {len(forwarded)} results for {allowed_count} operations",
            close=False,
        )
    keep_diagnostics = bool(diagnostics) and len(diagnostics) == allowed_count
    results: list[Any] = []
    padded: list[Any] = []
    next_forwarded = iter(range(allowed_count))
    for item, allowed in zip(items, reduction.allowed, strict=True):
        if allowed:
            position = next(next_forwarded)
            results.append(forwarded[position])
            if keep_diagnostics:
                padded.append(diagnostics[position])
        else:
            results.append(codec.refused(status, item))
            if keep_diagnostics:
                padded.append(ua.DiagnosticInfo())
    spliced = _replaced(response, codec.results, results)
    if codec.diagnostic_infos is not None:
        spliced = _replaced(spliced, codec.diagnostic_infos, padded)
    return spliced


__all__ = [
    "BROWSE",
    "BROWSE_NEXT",
    "CALL",
    "CREATE_MONITORED_ITEMS",
    "HISTORY_READ",
    "MODIFY_MONITORED_ITEMS",
    "OPERATION_CODECS",
    "READ",
    "REGISTER_NODES",
    "TRANSLATE_BROWSE_PATHS_TO_NODE_IDS",
    "WRITE",
    "Operation",
    "OperationCodec",
    "Reduction",
    "reduce_request",
    "splice_response",
]
