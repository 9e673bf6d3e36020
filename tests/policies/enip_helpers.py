"""Builders shared by the EtherNet/IP policy tests: a policy head with an enip asset, and requests made
the way the gateway sees them - encoded as message router requests and flattened by the codec."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from policies import Decision, Policy, parse_policy
from protocols.enip import (
    CipRequest,
    EPath,
    ForwardClose,
    ForwardOpen,
    LogicalSegment,
    LogicalType,
    MessageRouterRequest,
    PortSegment,
    Segment,
    SymbolicSegment,
    UnconnectedSend,
    flatten,
    join_requests,
)
from protocols.enip.spec import DataType
from tests.policies.policy_helpers import ALICE, BOB, NOON, TD

__all__ = [
    "ALICE",
    "BOB",
    "NOON",
    "TD",
    "attribute_request",
    "by_instance",
    "decide",
    "enip_head",
    "enip_policy",
    "forward_close",
    "forward_open",
    "leaf",
    "multiple",
    "object_path",
    "outcome",
    "read_modify_write",
    "read_tag",
    "read_tag_message",
    "routed",
    "rule",
    "tag_path",
    "write_structure",
    "write_tag",
]

_FORMATS = {
    DataType.BOOL: "B",
    DataType.SINT: "b",
    DataType.INT: "h",
    DataType.DINT: "i",
    DataType.LINT: "q",
    DataType.UINT: "H",
    DataType.UDINT: "I",
    DataType.REAL: "f",
    DataType.LREAL: "d",
}


def enip_head(*, asset_extra: str = "", route: str | None = "1/0") -> str:
    return (
        f'trust_domain = "{TD}"\n\n'
        "[assets.logix-1]\n"
        'protocol = "enip"\n'
        'upstream = "10.0.0.7"\n' + ("" if route is None else f'route = "{route}"\n') + f"{asset_extra}\n"
        "[groups]\n"
        f'operators = ["{ALICE}", "{BOB}"]\n\n'
    )


def rule(
    entries: str, rule_id: str = "r", subject: str = ALICE, *, effect: str = "allow", extra: str = ""
) -> str:
    return (
        f'[[rules]]\nid = "{rule_id}"\neffect = "{effect}"\nsubjects = ["{subject}"]\n'
        f'assets = ["logix-1"]\n{extra}enip = [{entries}]\n\n'
    )


def enip_policy(rules: str, *, asset_extra: str = "", route: str | None = "1/0") -> Policy:
    return parse_policy(enip_head(asset_extra=asset_extra, route=route) + rules, "policy.toml")


def decide(p: Policy, request: CipRequest, *, subject: str = ALICE, now: float = NOON) -> Decision:
    view = p.view(subject, "logix-1")
    assert view is not None, f"logix-1 is cloaked for {subject}"
    return view.decide_enip(request, now)


def outcome(decision: Decision) -> tuple[str, str | None, int]:
    return decision.verdict, decision.rule_id, decision.exception_code


# ------------------------------------------------------------------------------------- requests


def tag_path(text: str) -> EPath:
    """``A.B[1,2].C`` as symbolic segments and member ids."""
    segments: list[Segment] = []
    for part in text.split("."):
        name, _, index = part.partition("[")
        segments.append(SymbolicSegment(name))
        if index:
            segments += [LogicalSegment(LogicalType.MEMBER_ID, int(i)) for i in index.rstrip("]").split(",")]
    return EPath(tuple(segments))


def object_path(class_id: int, instance: int | None = None, attribute: int | None = None) -> EPath:
    segments: list[Segment] = [LogicalSegment(LogicalType.CLASS_ID, class_id)]
    if instance is not None:
        segments.append(LogicalSegment(LogicalType.INSTANCE_ID, instance))
    if attribute is not None:
        segments.append(LogicalSegment(LogicalType.ATTRIBUTE_ID, attribute))
    return EPath(tuple(segments))


def leaf(request: MessageRouterRequest) -> CipRequest:
    """The one request a message carries, as the gateway decides it."""
    (only,) = flatten(request)
    return only


def read_tag(tag: str, count: int = 1, *, fragmented: bool = False) -> CipRequest:
    if fragmented:
        return leaf(MessageRouterRequest(0x52, tag_path(tag), struct.pack("<HI", count, 0)))
    return leaf(MessageRouterRequest(0x4C, tag_path(tag), struct.pack("<H", count)))


def write_tag(tag: str, values: Sequence[float], data_type: int = DataType.DINT) -> CipRequest:
    fmt = _FORMATS[DataType(data_type)]
    data = struct.pack(f"<HH{len(values)}{fmt}", data_type, len(values), *values)
    return leaf(MessageRouterRequest(0x4D, tag_path(tag), data))


def write_structure(tag: str, handle: int = 0x1234, data: bytes = b"\x00" * 8) -> CipRequest:
    return leaf(MessageRouterRequest(0x4D, tag_path(tag), struct.pack("<HHH", 0x02A0, handle, 1) + data))


def read_modify_write(tag: str, or_mask: int = 1, and_mask: int = 0xFFFFFFFF) -> CipRequest:
    data = struct.pack("<HII", 4, or_mask, and_mask)
    return leaf(MessageRouterRequest(0x4E, tag_path(tag), data))


def attribute_request(
    service: int,
    class_id: int,
    instance: int | None = 1,
    attribute: int | None = None,
    data: bytes = b"",
) -> CipRequest:
    return leaf(MessageRouterRequest(service, object_path(class_id, instance, attribute), data))


def by_instance(service: int, instance: int, data: bytes = b"\x01\x00") -> CipRequest:
    return leaf(MessageRouterRequest(service, object_path(0x6B, instance), data))


CONNECTION_MANAGER = object_path(6, 1)


def forward_open(route: Sequence[PortSegment] = (PortSegment(1, b"\x00"),)) -> CipRequest:
    path = EPath((*route, *object_path(2, 1).segments))
    request = ForwardOpen(
        False, 10, 5, 0, 0x1234, 1, 0x4321, 0x11, 1, 2_000_000, 0x43F4, 2_000_000, 0x43F4, 0xA3, path
    )
    return leaf(MessageRouterRequest(0x54, CONNECTION_MANAGER, request.encode()))


def forward_close(route: Sequence[PortSegment] = (PortSegment(1, b"\x00"),)) -> CipRequest:
    path = EPath((*route, *object_path(2, 1).segments))
    request = ForwardClose(10, 5, 0x1234, 1, 0x4321, path)
    return leaf(MessageRouterRequest(0x4E, CONNECTION_MANAGER, request.encode()))


def routed(request: MessageRouterRequest, route: Sequence[PortSegment]) -> list[CipRequest]:
    send = UnconnectedSend(request, EPath(tuple(route)), 10, 5)
    return flatten(MessageRouterRequest(0x52, CONNECTION_MANAGER, send.encode()))


def multiple(*requests: MessageRouterRequest) -> list[CipRequest]:
    return flatten(MessageRouterRequest(0x0A, object_path(2, 1), join_requests(list(requests))))


def read_tag_message(tag: str, count: int = 1) -> MessageRouterRequest:
    return MessageRouterRequest(0x4C, tag_path(tag), struct.pack("<H", count))
