"""OPC UA services and attributes as policies name them: service names, service sets, presets, and what
no set or preset ever opens (docs/policy.md, "OPC UA entries").

Names are the codec's (:mod:`protocols.opcua.services`, spelt as Part 4 spells them). Services fall in
three groups the policy treats differently:

- the gateway's own (discovery, secure channel, session): it answers them itself, so rules never name them;
- *operation* services, whose requests carry a list of operations decided one by one (Read, Write, Call,
  Browse, ...): the node, attribute, method and value fields of an entry apply to them;
- *request* services, decided as a whole (CreateSubscription, Publish, AddNodes, HistoryUpdate, ...).

A few services change the server or reach around node rules (NodeManagement, HistoryUpdate, Query,
RegisterServer, TransferSubscriptions): they are opened only by an entry that names them one by one.
"""

from __future__ import annotations

import difflib

from protocols.opcua.operations import OPERATION_CODECS
from protocols.opcua.services import SERVICES, SERVICES_BY_NAME, ServiceSet

__all__ = [
    "ATTRIBUTE_EVENT_NOTIFIER",
    "ATTRIBUTE_IDS",
    "ATTRIBUTE_NAMES",
    "ATTRIBUTE_SERVICES",
    "ATTRIBUTE_VALUE",
    "COUPLED_SERVICES",
    "EVERY_SERVICE",
    "EXPLICIT_ONLY",
    "GATEWAY_SERVICES",
    "NAMEABLE_SERVICES",
    "NODE_SERVICES",
    "OPERATION_SERVICES",
    "PRESETS",
    "SERVICE_SETS",
    "attribute_text",
    "parse_attribute",
    "parse_service_name",
    "parse_service_set",
]

# Answered by the gateway itself: its own endpoint (the device stays cloaked), its own secure channels and
# sessions, with the identity taken from the overlay certificate.
GATEWAY_SERVICES = frozenset(
    service.name
    for service in SERVICES
    if service.service_set in (ServiceSet.SECURE_CHANNEL, ServiceSet.SESSION)
    or service.name in ("FindServers", "FindServersOnNetwork", "GetEndpoints")
)
# service = "*": every service a rule can name (the gateway's own excepted), EXPLICIT_ONLY included.
EVERY_SERVICE = "*"
NAMEABLE_SERVICES = frozenset(service.name for service in SERVICES if service.name not in GATEWAY_SERVICES)
# Change the server's address space or history, query it past node rules, register servers, or move
# subscriptions between sessions (and so between identities): only an entry naming them opens them.
EXPLICIT_ONLY = frozenset(
    (
        "AddNodes",
        "AddReferences",
        "DeleteNodes",
        "DeleteReferences",
        "HistoryUpdate",
        "QueryFirst",
        "QueryNext",
        "RegisterServer",
        "RegisterServer2",
        "TransferSubscriptions",
    )
)
# Services whose requests carry operations the gateway decides one by one.
OPERATION_SERVICES = frozenset(codec.service for codec in OPERATION_CODECS)
# Operations that reach a node (every operation service; BrowseNext and ModifyMonitoredItems through
# the node the gateway maps their continuation point or item id back to).
NODE_SERVICES = OPERATION_SERVICES
# Operations that name an attribute.
ATTRIBUTE_SERVICES = frozenset(
    ("Read", "Write", "HistoryRead", "CreateMonitoredItems", "ModifyMonitoredItems")
)
# Deliver what a Read of the same node and attribute would: decided as that Read too.
COUPLED_SERVICES = frozenset(("CreateMonitoredItems", "ModifyMonitoredItems", "HistoryRead"))

_NAMEABLE_SETS = (
    ServiceSet.VIEW,
    ServiceSet.ATTRIBUTE,
    ServiceSet.METHOD,
    ServiceSet.MONITORED_ITEM,
    ServiceSet.SUBSCRIPTION,
)
SERVICE_SETS: dict[str, frozenset[str]] = {
    str(service_set): frozenset(
        s.name for s in SERVICES if s.service_set is service_set and s.name not in EXPLICIT_ONLY
    )
    for service_set in _NAMEABLE_SETS
}

_READ_ONLY = frozenset(
    (
        "Browse",
        "BrowseNext",
        "TranslateBrowsePathsToNodeIds",
        "RegisterNodes",
        "UnregisterNodes",
        "Read",
        "HistoryRead",
        *SERVICE_SETS["Subscription"],
        *SERVICE_SETS["MonitoredItem"],
    )
)
PRESETS: dict[str, frozenset[str]] = {
    "read-only": _READ_ONLY,
    "read-write": _READ_ONLY | {"Write", "Call"},
}

ATTRIBUTE_VALUE = 13
ATTRIBUTE_EVENT_NOTIFIER = 12
# Part 3, 5.9 (asyncua's ua.AttributeIds): the names rules use.
ATTRIBUTE_IDS: dict[str, int] = {
    "NodeId": 1,
    "NodeClass": 2,
    "BrowseName": 3,
    "DisplayName": 4,
    "Description": 5,
    "WriteMask": 6,
    "UserWriteMask": 7,
    "IsAbstract": 8,
    "Symmetric": 9,
    "InverseName": 10,
    "ContainsNoLoops": 11,
    "EventNotifier": ATTRIBUTE_EVENT_NOTIFIER,
    "Value": ATTRIBUTE_VALUE,
    "DataType": 14,
    "ValueRank": 15,
    "ArrayDimensions": 16,
    "AccessLevel": 17,
    "UserAccessLevel": 18,
    "MinimumSamplingInterval": 19,
    "Historizing": 20,
    "Executable": 21,
    "UserExecutable": 22,
    "DataTypeDefinition": 23,
    "RolePermissions": 24,
    "UserRolePermissions": 25,
    "AccessRestrictions": 26,
    "AccessLevelEx": 27,
}
ATTRIBUTE_NAMES: dict[int, str] = {code: name for name, code in ATTRIBUTE_IDS.items()}
_BY_LOWER = {name.lower(): name for name in ATTRIBUTE_IDS}


def attribute_text(attribute_id: int) -> str:
    """``Value`` for 13; the number for an attribute id Part 3 does not define."""
    return ATTRIBUTE_NAMES.get(attribute_id, f"attribute {attribute_id}")


def _suggest(text: str, names: list[str]) -> str:
    close = difflib.get_close_matches(text, names, n=1)
    return f'; did you mean "{close[0]}"?' if close else ""


def parse_service_name(text: str) -> tuple[str | None, str | None]:
    """``(name, None)`` for a service a rule may name, else ``(None, problem)``."""
    if text in SERVICES_BY_NAME:
        if text in GATEWAY_SERVICES:
            return None, (
                "is answered by the gateway itself (discovery, secure channel and session services):"
                " rules never name it"
            )
        return text, None
    if text in SERVICE_SETS:
        return None, f'is a service set: write service_set = "{text}"'
    lowered = {name.lower(): name for name in SERVICES_BY_NAME}
    if text.lower() in lowered:
        spelt = lowered[text.lower()]
        return None, f'unknown service name; services are spelt as Part 4 spells them: "{spelt}"'
    return None, "unknown service name" + _suggest(text, sorted(SERVICES_BY_NAME))


def parse_service_set(text: str) -> tuple[frozenset[str] | None, str | None]:
    """``(services, None)`` for a service set a rule may name, else ``(None, problem)``."""
    known = SERVICE_SETS.get(text)
    if known is not None:
        return known, None
    if text in ("Discovery", "SecureChannel", "Session"):
        return None, (
            "is answered by the gateway itself; rules never name it (RegisterServer and RegisterServer2"
            " are named one by one with service)"
        )
    if text in ("NodeManagement", "Query"):
        members = sorted(s.name for s in SERVICES if s.service_set == text)
        listed = ", ".join(f'"{name}"' for name in members)
        return None, f"is never opened as a set: name its services one by one with service ({listed})"
    expected = ", ".join(SERVICE_SETS)
    return None, f"unknown service set; expected one of: {expected}" + _suggest(text, list(SERVICE_SETS))


_ATTRIBUTE_HELP = 'expected an attribute name such as "Value" or an id in 1..27'


def parse_attribute(item: object) -> tuple[int | None, str | None]:
    """``(id, None)`` for an attribute named by name (``"Value"``) or number (1..27), else
    ``(None, problem)``."""
    if isinstance(item, bool) or not isinstance(item, int | str):
        return None, _ATTRIBUTE_HELP
    if isinstance(item, int):
        if item in ATTRIBUTE_NAMES:
            return item, None
        return None, "attribute ids are 1..27 (Part 3, 5.9)"
    if item in ATTRIBUTE_IDS:
        return ATTRIBUTE_IDS[item], None
    if item.lower() in _BY_LOWER:
        return None, f'unknown attribute; attribute names are spelt "{_BY_LOWER[item.lower()]}"'
    return None, "unknown attribute" + _suggest(item, list(ATTRIBUTE_IDS))
