"""An OPC UA operation as the policy sees it: the nodes it reaches, resolved to namespace URIs, the numbers
it writes, and the words that describe it in reasons, audit records and explanations.

The codec's :class:`~protocols.opcua.operations.Operation` carries asyncua objects (``ua.NodeId``,
``ua.DataValue``, ``ua.Variant``); nothing here changes them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from asyncua import ua

from policies.errors import quote
from policies.opcua.nodes import node_text, resolve
from policies.opcua.services import ATTRIBUTE_NAMES
from protocols.opcua.operations import Operation

__all__ = [
    "NUMERIC_VARIANTS",
    "Number",
    "Written",
    "method_key",
    "node_key",
    "operation_text",
    "variant_numbers",
    "written",
]

Number = int | float
# What an operation writes: None for nothing (a Read; a Call without input arguments), NON_NUMERIC for
# something the policy cannot read as numbers, else the numbers.
Written = tuple[Number, ...] | None

# Built-in types whose values are numbers (Part 6, 5.1.2); Boolean counts as 0 or 1, as a coil or a BOOL.
NUMERIC_VARIANTS = frozenset(
    (
        ua.VariantType.Boolean,
        ua.VariantType.SByte,
        ua.VariantType.Byte,
        ua.VariantType.Int16,
        ua.VariantType.UInt16,
        ua.VariantType.Int32,
        ua.VariantType.UInt32,
        ua.VariantType.Int64,
        ua.VariantType.UInt64,
        ua.VariantType.Float,
        ua.VariantType.Double,
    )
)
_SHOWN = 8


def node_key(operation: Operation, namespaces: Sequence[str]) -> tuple[str | None, object] | None:
    """(namespace URI or None if the array lacks the index, identifier) of the node the operation
    reaches; None when it names none."""
    node = operation.node_id
    if node is None:
        return None
    return resolve(node.NamespaceIndex, namespaces), node.Identifier


def method_key(operation: Operation, namespaces: Sequence[str]) -> tuple[str | None, object] | None:
    method = operation.method_id
    if method is None:
        return None
    return resolve(method.NamespaceIndex, namespaces), method.Identifier


def variant_numbers(variant: Any) -> tuple[Number, ...] | None:
    """Every number a Variant holds - a scalar, or each element of an array of any dimensions - or None
    when it holds anything else, or no number at all (a null or empty array)."""
    if not isinstance(variant, ua.Variant) or variant.VariantType not in NUMERIC_VARIANTS:
        return None
    value = variant.Value
    if type(value) in (int, float, bool):
        return (value,)
    if not isinstance(value, list):
        return None
    numbers: list[Number] = []
    pending: list[Any] = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, list):
            pending.extend(reversed(item))
        elif type(item) in (int, float, bool):
            numbers.append(item)
        else:
            return None
    return tuple(numbers) or None


def written(operation: Operation) -> tuple[bool, Written]:
    """``(writes, numbers)``: whether the operation writes (a Write; a Call with input arguments), and
    the numbers it writes, or None when something it writes is not a number."""
    service = operation.service
    if service == "Write":
        value = operation.value
        if value is None:
            return True, None
        variant = value.Value
        # The common bounded write, a numeric scalar, without the general walk.
        if type(variant) is ua.Variant and variant.VariantType in NUMERIC_VARIANTS:
            scalar = variant.Value
            if type(scalar) in (int, float, bool):
                return True, (scalar,)
        return True, variant_numbers(variant)
    if service == "Call" and operation.arguments:
        numbers: list[Number] = []
        for argument in operation.arguments:
            found = variant_numbers(argument)
            if found is None:
                return True, None
            numbers.extend(found)
        return True, tuple(numbers)
    return False, None


def _number_text(value: Number) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return repr(value) if isinstance(value, float) else str(value)


def _node(node: Any, namespaces: Sequence[str]) -> str:
    return node_text(resolve(node.NamespaceIndex, namespaces), node.NamespaceIndex, node.Identifier)


def operation_text(
    operation: Operation, namespaces: Sequence[str], browse_path: Sequence[str] | None = None
) -> str:
    """The operation in words: service, node, attribute, method, what it writes, browse path."""
    parts = [operation.service]
    if operation.service == "Call":
        if operation.node_id is not None:
            parts.append("object " + _node(operation.node_id, namespaces))
        if operation.method_id is not None:
            parts.append("method " + _node(operation.method_id, namespaces))
    elif operation.node_id is not None:
        parts.append("node " + _node(operation.node_id, namespaces))
    else:
        parts.append("no node")
    if operation.attribute_id is not None:
        name = ATTRIBUTE_NAMES.get(operation.attribute_id, str(operation.attribute_id))
        parts.append(f"attribute {name}")
    if operation.index_range:
        parts.append(f"index range {operation.index_range[:40]}")
    writes, numbers = written(operation)
    if writes:
        if numbers is None:
            parts.append("writes data that is not numbers")
        else:
            shown = ", ".join(_number_text(v) for v in numbers[:_SHOWN])
            more = f", ... ({len(numbers)} values)" if len(numbers) > _SHOWN else ""
            parts.append(f"values {shown}{more}")
    if browse_path is not None:
        parts.append("path " + quote("/" + "/".join(browse_path), 200)[1:-1])
    return ", ".join(parts)
