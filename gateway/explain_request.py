"""Requests from ``ztgate policy explain``'s options: built, encoded and decoded again with the same
codec the gateway runs, so what is decided is exactly what the gateway would see on the wire (a
request the codec refuses raises the codec's own error). ``policy explain`` and the policy tests
(:mod:`gateway.policy_tests`) both decide requests through :func:`explain`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.ua.ua_binary import struct_to_binary

from policies import UA_NAMESPACE, Explanation, Policy
from policies.enip.services import parse_service
from policies.opcua.services import parse_attribute
from protocols.enip import CipRequest, EPath, LogicalSegment, LogicalType, flatten
from protocols.enip.epath import tag_path
from protocols.enip.logix import ReadTag, WriteTag
from protocols.enip.message_router import MessageRouterRequest
from protocols.enip.spec import ATOMIC_TYPES, ClassCode, DataType, Service
from protocols.modbus import Request, encode_request_pdu, parse_request
from protocols.opcua import SERVICES_BY_NAME, Operation, decode_request

_READS = frozenset((1, 2, 3, 4))


def _values(args: argparse.Namespace, count: int) -> tuple[int, ...]:
    if not args.value:
        return (0,) * count
    if len(args.value) == 1:
        return tuple(args.value) * count
    if len(args.value) != count:
        raise ValueError(f"{len(args.value)} values given for {count} items")
    return tuple(args.value)


def build_request(args: argparse.Namespace) -> Request:
    """A Modbus request from ``explain``'s arguments, as the gateway's codec would decode it."""
    fc, unit, address, count = args.fc, args.unit, args.address, args.count
    fields: dict[str, object] = {}
    if fc in _READS:
        fields = {"read_address": address, "read_count": count}
    elif fc in (5, 6):
        fields = {"write_address": address, "write_count": 1, "values": _values(args, 1)}
    elif fc in (15, 16):
        fields = {"write_address": address, "write_count": count, "values": _values(args, count)}
    elif fc == 22:
        value = _values(args, 1)[0]
        fields = {"write_address": address, "write_count": 1, "values": (value, value)}
    elif fc == 23:
        write_count = args.write_count or count
        fields = {
            "read_address": address,
            "read_count": count,
            "write_address": args.write_address if args.write_address is not None else address,
            "write_count": write_count,
            "values": _values(args, write_count),
        }
    elif fc == 24:
        fields = {"read_address": address, "read_count": 1}
    elif fc in (20, 21):
        record = (args.file_number, address, count)
        fields = {"file_records": (record,), "values": _values(args, count) if fc == 21 else ()}
    template = Request(0, unit, fc, bytes((fc,)), **fields)  # type: ignore[arg-type]
    if fc == 8:
        pdu = bytes((8,)) + (args.sub or 0).to_bytes(2, "big") + b"\x00\x00"
    elif fc == 43:
        pdu = bytes((43, args.sub if args.sub is not None else 14, 1, 0))
    else:
        pdu = encode_request_pdu(template)
    return parse_request(0, unit, pdu)


def build_cip_request(args: argparse.Namespace) -> CipRequest:
    """An EtherNet/IP request from ``explain``'s arguments, through the same codec the gateway runs."""
    key, problem = parse_service(args.service)
    if key is None:
        raise ValueError(f"--service {args.service!r}: {problem}")
    class_id, service = key
    if args.tag is not None:
        path = tag_path(args.tag)
    else:
        klass = args.cip_class if args.cip_class is not None else class_id
        if klass is None:
            raise ValueError("name a --tag, or a --class for an object service")
        segments = [LogicalSegment(LogicalType.CLASS_ID, klass)]
        if args.instance is not None:
            segments.append(LogicalSegment(LogicalType.INSTANCE_ID, args.instance))
        if args.attribute is not None:
            segments.append(LogicalSegment(LogicalType.ATTRIBUTE_ID, args.attribute))
        path = EPath(tuple(segments))
    data = b""
    on_tags = args.tag is not None or class_id == ClassCode.SYMBOL
    if on_tags and service in (Service.READ_TAG, Service.READ_TAG_FRAGMENTED):
        offset = 0 if service == Service.READ_TAG_FRAGMENTED else None
        data = ReadTag(args.count, offset).encode()
    elif on_tags and service in (Service.WRITE_TAG, Service.WRITE_TAG_FRAGMENTED):
        data_type = DataType[args.type.upper()]
        values = [
            float(v) if data_type in (DataType.REAL, DataType.LREAL) else int(v)
            for v in args.cip_value or [0]
        ]
        if len(values) == 1:
            values *= args.count
        packed = b"".join(ATOMIC_TYPES[data_type].unpack.pack(v) for v in values)
        offset = 0 if service == Service.WRITE_TAG_FRAGMENTED else None
        data = WriteTag(data_type, len(values), packed, None, offset).encode()
    (leaf,) = flatten(MessageRouterRequest(service, path, data))
    return leaf


def parse_node_id(text: str, namespaces: list[str]) -> ua.NodeId:
    """``ns=2;s=Plant.X``, ``i=2253`` or ``nsu=URI;s=Plant.X`` (the URI is added to ``namespaces`` when
    the array does not have it yet)."""
    if text.startswith("nsu="):
        uri, separator, identifier = text[4:].partition(";")
        if not separator:
            raise ValueError(f"{text!r}: expected nsu=URI;s=... (or i=, g=, b=)")
        if uri not in namespaces:
            namespaces.append(uri)
        text = f"ns={namespaces.index(uri)};{identifier}"
    try:
        return ua.NodeId.from_string(text)
    except Exception as exc:  # asyncua raises UaStringParsingError, ValueError, ... on bad text
        raise ValueError(f"{text!r} is not a node id: {exc}") from None


def _ua_variant(text: str, type_name: str) -> ua.Variant:
    kind = getattr(ua.VariantType, type_name, None)
    if kind is None:
        raise ValueError(
            f"--ua-type {type_name!r}: not an OPC UA built-in type name (Double, Int32, Boolean, ...)"
        )
    if kind is ua.VariantType.Boolean:
        return ua.Variant(text.lower() in ("1", "true"), kind)
    if kind in (ua.VariantType.Float, ua.VariantType.Double):
        return ua.Variant(float(text), kind)
    if kind is ua.VariantType.String:
        return ua.Variant(text, kind)
    return ua.Variant(int(text, 0), kind)


def _read(node: ua.NodeId, attribute: int, _method: ua.NodeId, _values: tuple[ua.Variant, ...]) -> Any:
    item = ua.ReadValueId(NodeId=node, AttributeId=attribute)
    return ua.ReadRequest(Parameters=ua.ReadParameters(NodesToRead=[item]))


def _write(node: ua.NodeId, attribute: int, _method: ua.NodeId, values: tuple[ua.Variant, ...]) -> Any:
    value = ua.DataValue(values[0] if values else ua.Variant())
    item = ua.WriteValue(NodeId=node, AttributeId=attribute, Value=value)
    return ua.WriteRequest(Parameters=ua.WriteParameters(NodesToWrite=[item]))


def _call(node: ua.NodeId, _attribute: int, method: ua.NodeId, values: tuple[ua.Variant, ...]) -> Any:
    item = ua.CallMethodRequest(ObjectId=node, MethodId=method, InputArguments=list(values))
    return ua.CallRequest(Parameters=ua.CallParameters(MethodsToCall=[item]))


def _browse(node: ua.NodeId, _attribute: int, _method: ua.NodeId, _values: tuple[ua.Variant, ...]) -> Any:
    item = ua.BrowseDescription(NodeId=node)
    return ua.BrowseRequest(Parameters=ua.BrowseParameters(NodesToBrowse=[item]))


def _translate(node: ua.NodeId, _attribute: int, _method: ua.NodeId, _values: tuple[ua.Variant, ...]) -> Any:
    parameters = ua.TranslateBrowsePathsToNodeIdsParameters(BrowsePaths=[ua.BrowsePath(StartingNode=node)])
    return ua.TranslateBrowsePathsToNodeIdsRequest(Parameters=parameters)


def _register(node: ua.NodeId, _attribute: int, _method: ua.NodeId, _values: tuple[ua.Variant, ...]) -> Any:
    return ua.RegisterNodesRequest(Parameters=ua.RegisterNodesParameters(NodesToRegister=[node]))


def _monitor(node: ua.NodeId, attribute: int, _method: ua.NodeId, _values: tuple[ua.Variant, ...]) -> Any:
    item = ua.MonitoredItemCreateRequest(ItemToMonitor=ua.ReadValueId(NodeId=node, AttributeId=attribute))
    return ua.CreateMonitoredItemsRequest(Parameters=ua.CreateMonitoredItemsParameters(ItemsToCreate=[item]))


def _history(node: ua.NodeId, _attribute: int, _method: ua.NodeId, _values: tuple[ua.Variant, ...]) -> Any:
    item = ua.HistoryReadValueId(NodeId=node)
    return ua.HistoryReadRequest(Parameters=ua.HistoryReadParameters(NodesToRead=[item]))


# A request holding the one operation explain describes, per service.
_UA_REQUESTS: dict[str, Callable[[ua.NodeId, int, ua.NodeId, tuple[ua.Variant, ...]], Any]] = {
    "Read": _read,
    "Write": _write,
    "Call": _call,
    "Browse": _browse,
    "TranslateBrowsePathsToNodeIds": _translate,
    "RegisterNodes": _register,
    "CreateMonitoredItems": _monitor,
    "HistoryRead": _history,
}


def build_opcua_operation(args: argparse.Namespace) -> tuple[str, Operation | None, tuple[str, ...]]:
    """(service, its one operation or None for a request decided as a whole, the namespace array) from
    ``explain``'s arguments, encoded and decoded by the codec the gateway runs."""
    service = SERVICES_BY_NAME.get(args.service or "")
    if service is None:
        raise ValueError(f"--service {args.service!r}: not an OPC UA service name (Read, Write, Call, ...)")
    namespaces = [UA_NAMESPACE, *(args.namespace or ())]
    build = _UA_REQUESTS.get(service.name)
    if build is None:
        if service.operations is not None:
            raise ValueError(f"explain describes {service.name} operations only through the gateway's tables")
        return service.name, None, tuple(namespaces)
    if args.node is None:
        raise ValueError(f"{service.name} reaches a node: name it with --node (ns=2;s=..., nsu=URI;s=...)")
    node = parse_node_id(args.node, namespaces)
    method = parse_node_id(args.method, namespaces) if args.method else ua.NodeId()
    attribute, problem = parse_attribute(args.ua_attribute)
    if attribute is None:
        raise ValueError(f"--ua-attribute {args.ua_attribute!r}: {problem}")
    values = tuple(_ua_variant(text, args.ua_type) for text in args.ua_value or ())
    decoded_service, request = decode_request(struct_to_binary(build(node, attribute, method, values)))
    codec = decoded_service.operations
    assert codec is not None
    (operation,) = codec.operations(request)
    return service.name, operation, tuple(namespaces)


def split_browse_path(text: str) -> tuple[str, ...]:
    """``/Objects/{urn:x}Plant/Line1`` -> ("Objects", "{urn:x}Plant", "Line1"): slashes inside a
    ``{URI}`` belong to the URI."""
    parts: list[str] = []
    current, depth = "", 0
    for char in text:
        if char == "/" and depth == 0:
            if current:
                parts.append(current)
            current = ""
            continue
        depth += {"{": 1, "}": -1}.get(char, 0)
        current += char
    if current:
        parts.append(current)
    return tuple(parts)


def explain(policy: Policy, args: argparse.Namespace, now: float) -> Explanation:
    """Decide the request ``explain``'s options describe, as the gateway would. The codecs' own errors
    (:class:`ModbusProtocolError`, :class:`CipProtocolError`, :class:`OpcUaProtocolError`) and
    ValueError for options that make no request escape."""
    asset = policy.assets.get(args.asset)
    if asset is not None and asset.protocol == "opcua":
        service, operation, namespaces = build_opcua_operation(args)
        path = split_browse_path(args.browse_path) if args.browse_path else None
        return policy.explain_opcua(args.subject, args.asset, service, operation, namespaces, now, path)
    if asset is not None and asset.protocol == "enip":
        if args.service is None:
            raise ValueError(f"{args.asset} is an EtherNet/IP asset: name a --service")
        return policy.explain_enip(args.subject, args.asset, build_cip_request(args), now)
    if args.fc is None:
        raise ValueError("name a --fc (function code) for a Modbus asset")
    return policy.explain_modbus(args.subject, args.asset, build_request(args), now)


def add_explain_arguments(explain: argparse.ArgumentParser) -> None:
    """``explain``'s options: also the vocabulary of a policy test's ``request`` (gateway.policy_tests)."""
    explain.add_argument("file", type=Path)
    explain.add_argument("--subject", required=True, help="SPIFFE id of the client")
    explain.add_argument("--asset", required=True)
    explain.add_argument("--at", help="decide at this time (ISO 8601 with offset); default now")
    modbus = explain.add_argument_group("Modbus")
    modbus.add_argument("--fc", type=int, help="function code")
    modbus.add_argument("--unit", type=int, default=1, help="unit id (default 1)")
    modbus.add_argument("--address", type=int, default=0, help="first wire address (0-based)")
    modbus.add_argument("--count", type=int, default=1, help="registers, coils or tag elements (default 1)")
    modbus.add_argument("--value", type=int, action="append", help="written value(s); repeat for several")
    modbus.add_argument("--sub", type=int, help="FC 8 sub-function or FC 43 MEI type")
    modbus.add_argument("--file", dest="file_number", type=int, default=1, help="FC 20/21 file number")
    modbus.add_argument("--write-address", type=int, help="FC 23 write address (default: --address)")
    modbus.add_argument("--write-count", type=int, help="FC 23 write count (default: --count)")
    enip = explain.add_argument_group("EtherNet/IP")
    enip.add_argument(
        "--service",
        help='EtherNet/IP: service name ("write_tag") or "class/service" pair ("0x01/0x05");'
        ' OPC UA: the service as Part 4 names it ("Read", "Write", "Call", "CreateSubscription")',
    )
    enip.add_argument("--tag", help="tag, as Logix writes it: Recipe[3], Program:Main.Step")
    enip.add_argument("--class", dest="cip_class", type=lambda t: int(t, 0), help="class id, e.g. 0xF5")
    enip.add_argument("--instance", type=lambda t: int(t, 0))
    enip.add_argument("--attribute", type=lambda t: int(t, 0))
    enip.add_argument("--type", default="DINT", help="data type of written values (default DINT)")
    enip.add_argument("--tag-value", dest="cip_value", action="append", help="written tag value(s)")
    opcua = explain.add_argument_group("OPC UA (with --service)")
    opcua.add_argument("--node", help="node id: ns=2;s=Plant.Line1.Tank1.Level, nsu=URI;s=..., i=2253")
    opcua.add_argument("--namespace", action="append", help="the device's namespace URIs from index 1 on")
    opcua.add_argument("--ua-attribute", default="Value", help='attribute name or id (default "Value")')
    opcua.add_argument("--method", help="Call: the method's node id (--node is the object)")
    opcua.add_argument("--ua-value", action="append", help="written value or input argument; repeat")
    opcua.add_argument("--ua-type", default="Double", help="built-in type of the values (default Double)")
    opcua.add_argument("--browse-path", help="the node's browse path, e.g. /Objects/Plant/Line1")
