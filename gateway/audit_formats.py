"""Audit records in the schemas a SIEM already parses: ECS-style JSON, ArcSight CEF and OCSF.

No I/O: a sink calls :func:`format_line` with one record as ``gateway/audit_schema.py`` defines it (after
the writer has set ``time`` and ``gateway``) and writes the line it gets back. The only state is caches
(:func:`ecs_json` compiles one builder per record shape), so a sink's writer thread may call it freely.

- ``ztgate``: the flat record of ``docs/audit.md``, unchanged (the file sink's format so far).
- ``json``: ECS field names, nested as ECS documents are (``source.ip`` is ``{"source": {"ip": ...}}``);
  every flat field lands on exactly one path of :data:`ECS_PATHS` (or :data:`ECS_RANGES`), the rest of
  the detail under ``ztgate.*``, and the protocol's target fields under ``ztgate.modbus.*``,
  ``ztgate.cip.*`` and ``ztgate.opcua.*`` in the vocabulary of Zeek's ICSNPP logs.
- ``cef``: ``CEF:0|ztgate|ztgate|<version>|<signature id>|<name>|<severity>|<extension>``; the header
  holds only our own words (no record text), record text goes to the extension, escaped.
- ``ocsf``: OCSF 1.8.0, one class per kind of record (see :data:`OCSF_CLASSES` and docs/audit.md).

``python -m gateway.audit_formats`` prints the example section of docs/audit.md.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Hashable
from datetime import datetime
from typing import Any, Final

import orjson

from gateway import __version__

FORMATS: Final = ("ztgate", "json", "cef", "ocsf")
ECS_VERSION: Final = "8.17.0"
OCSF_VERSION: Final = "1.8.0"
PRODUCT: Final = "ztgate"

Record = dict[str, Any]

# ------------------------------------------------------------------------------------ severity

# (CEF 0-10, also ECS event.severity; OCSF severity_id) by what happened. CEF bands: 0-3 low, 4-6 medium,
# 7-8 high, 9-10 very high; OCSF: 1 informational, 2 low, 3 medium, 4 high.
_INFO: Final = (1, 1)
SEVERITY: Final[dict[str, tuple[int, int]]] = {
    "decision:allow": _INFO,
    "decision:would-deny": (5, 3),  # forwarded, but enforcing would have refused it
    "decision:deny": (7, 4),
    "protocol_error": (6, 3),
    "session_refused": (5, 3),
    "upstream:connected": _INFO,
    "upstream": (4, 2),  # any other upstream state: the device is out of reach or misbehaves
    "policy_rejected": (6, 3),
    "certificate_load_failed": (6, 3),
    "audit_dropped": (8, 4),  # the trail has a gap
    "audit_error": (6, 3),
}


# The center's records (gateway/center/store.py ``center_record``): each event once, in each schema's
# terms: (ECS event.category, ECS event.type, CEF and OCSF name, OCSF API Activity activity_id or None
# for Application Lifecycle). API Activity: Create 1, Read 2, Update 3, Delete 4, Other 99.
CENTER_EVENTS: Final[dict[str, tuple[str, str, str, int | None]]] = {
    "center_start": ("process", "start", "Center started", None),
    "center_init": ("configuration", "creation", "Center set up", None),
    "credentials_issued": ("iam", "creation", "Credentials issued", 1),
    "token_created": ("iam", "creation", "Enrollment token created", 1),
    "enrolled": ("iam", "creation", "Identity enrolled", 1),
    "enroll_refused": ("authentication", "info", "Enrollment refused", 1),
    "renewed": ("iam", "change", "Certificate renewed", 3),
    "renew_refused": ("authentication", "info", "Renewal refused", 3),
    "role_set": ("iam", "change", "Role set", 3),
    "policy_pushed": ("configuration", "change", "Policy pushed", 1),
    "policy_rollback": ("configuration", "change", "Policy rolled back", 3),
    "lock_created": ("iam", "change", "Lock created", 1),
    "lock_removed": ("iam", "change", "Lock removed", 4),
    "subscribed": ("network", "connection", "Gateway subscribed", 2),
    "api_refused": ("authentication", "info", "API call refused", 99),
    "grant_requested": ("iam", "creation", "Access requested", 1),
    "grant_request_refused": ("iam", "info", "Access request refused", 1),
    "grant_approval": ("iam", "change", "Access approval", 3),
    "grant_approved": ("iam", "change", "Access granted", 3),
    "grant_denied": ("iam", "change", "Access denied", 3),
    "grant_refused": ("iam", "info", "Access grant refused", 3),
    "grant_revoked": ("iam", "deletion", "Access revoked", 4),
    "grant_certificate": ("iam", "creation", "Grant certificate issued", 1),
}
_REFUSED_CENTER: Final = frozenset(e for e in CENTER_EVENTS if e.endswith("_refused"))
SEVERITY.update(dict.fromkeys(sorted(_REFUSED_CENTER), (5, 3)))  # a refusal at the center


def origin(record: Record) -> Any:
    """The process that wrote the record: a gateway, or a center (its own records have no ``gateway``)."""
    return record.get("gateway", record.get("center"))


def signature(record: Record) -> str:
    """The kind of a record: its event, with the decision or upstream state where those matter."""
    event = str(record.get("event"))
    if event == "decision":
        return f"decision:{record.get('decision')}"
    if event == "upstream" and record.get("state") == "connected":
        return "upstream:connected"
    return event


def severity(record: Record) -> tuple[int, int]:
    """(CEF severity, OCSF severity_id) of a record; informational unless :data:`SEVERITY` says more."""
    return SEVERITY.get(signature(record), SEVERITY.get(str(record.get("event")), _INFO))


def _failed(record: Record) -> bool:
    event = record.get("event")
    if event == "decision":
        return record.get("decision") == "deny"
    if event == "upstream":
        return record.get("state") != "connected"
    return event in _FAILURES


_FAILURES: Final = frozenset(
    (
        "protocol_error",
        "session_refused",
        "policy_rejected",
        "certificate_load_failed",
        "audit_dropped",
        "audit_error",
        *_REFUSED_CENTER,
    )
)


# ------------------------------------------------------------------------------------ ECS json

# Flat field -> dotted ECS path. Fields not named here go to ``ztgate.<field>``.
ECS_PATHS: Final[dict[str, str]] = {
    "time": "@timestamp",
    "gateway": "observer.name",
    "event": "event.action",
    "identity": "user.id",
    "peer": "source.address",
    "protocol": "network.protocol",
    "rule": "rule.id",
    "policy_revision": "rule.version",
    "reason": "event.reason",
    "time_last": "event.end",
    "upstream": "destination.address",
    "error": "error.message",
}
# Target fields by protocol, named after ICSNPP's logs (modbus_detailed, cip, opcua_binary): Modbus
# ``tid``, ``unit``, ``func``; CIP ``cip_service``/``cip_service_code``, ``class_id``, ``instance_id``,
# ``attribute_id``; OPC UA service and node ids. Names ICSNPP has no field for are ours, in its style.
ICSNPP_PATHS: Final[dict[str, dict[str, str]]] = {
    "modbus": {
        "tid": "modbus.tid",
        "unit": "modbus.unit",
        "func": "modbus.func",
        "fc": "modbus.func_code",
        "sub_function": "modbus.subfunction_code",
        "values": "modbus.request_values",
        "values_count": "modbus.request_values_count",
        "files": "modbus.file_records",
    },
    "enip": {
        "service": "cip.service",
        "service_code": "cip.service_code",
        "class": "cip.class_id",
        "instance": "cip.instance_id",
        "attribute": "cip.attribute_id",
        "tag": "cip.tag",
        "elements": "cip.elements",
        "route": "cip.route_path",
        "values": "cip.values",
        "values_count": "cip.values_count",
    },
    "opcua": {
        "service": "opcua.service",
        "index": "opcua.operation_index",
        "node": "opcua.node_id",
        "attribute": "opcua.attribute_id",
        "method": "opcua.method_id",
        "values": "opcua.values",
    },
}
# Modbus ``[first, last]`` ranges become ICSNPP's start address and quantity.
ECS_RANGES: Final[dict[str, tuple[str, str]]] = {
    "read": ("modbus.read_start_address", "modbus.read_quantity"),
    "write": ("modbus.write_start_address", "modbus.write_quantity"),
    "address": ("modbus.address", "modbus.quantity"),
}

# event -> (event.category, event.type), from ECS's allowed values.
_ECS_KIND: Final[dict[str, tuple[str, str]]] = {
    "decision:allow": ("network", "allowed"),
    "decision:would-deny": ("network", "allowed"),
    "decision:deny": ("network", "denied"),
    "protocol_error": ("network", "error"),
    "session_start": ("session", "start"),
    "session_end": ("session", "end"),
    "session_refused": ("network", "denied"),
    "upstream:connected": ("network", "connection"),
    "upstream": ("network", "error"),
    "gateway_start": ("process", "start"),
    "gateway_stop": ("process", "end"),
    "policy_loaded": ("configuration", "change"),
    "policy_rejected": ("configuration", "error"),
    "certificate_loaded": ("configuration", "change"),
    "certificate_load_failed": ("configuration", "error"),
    "renewal_proved": ("authentication", "info"),
    "audit_dropped": ("process", "error"),
    "audit_error": ("process", "error"),
    **{event: (category, kind) for event, (category, kind, _, _) in CENTER_EVENTS.items()},
}


def _written_by_center(record: Record) -> bool:
    # ``center`` names the writer only in a center's own records; elsewhere (``ztgate enroll``'s) it is
    # the center a gateway talked to, and ``gateway`` names the writer.
    return "center" in record and "gateway" not in record


def ecs_path(record: Record, field: str) -> str:
    """Where a flat field goes in the ECS document (ranges excepted: :data:`ECS_RANGES`)."""
    if field == "center" and _written_by_center(record):
        return "observer.name"
    target = ICSNPP_PATHS.get(record.get("protocol"), {}).get(field)  # type: ignore[arg-type]
    if target is not None:
        return f"ztgate.{target}"
    return ECS_PATHS.get(field, f"ztgate.{field}")


@functools.lru_cache(maxsize=4096)
def _steps(path: str) -> tuple[tuple[str, ...], str]:
    # Paths repeat from record to record: split each once (a sink formats every record it writes).
    *parents, leaf = path.split(".") if path != "@timestamp" else [path]
    return tuple(parents), leaf


@functools.lru_cache(maxsize=4096)
def _field_steps(protocol: Any, field: str, by_center: bool) -> tuple[tuple[str, ...], str]:
    """:func:`ecs_path` of a field, split; the same for every record of a protocol (and writer)."""
    record: Record = {"protocol": protocol, "center": ""} if by_center else {"protocol": protocol}
    return _steps(ecs_path(record, field))


def _put(document: dict[str, Any], path: str, value: Any) -> None:
    parents, leaf = _steps(path)
    node = document
    for name in parents:
        node = node.setdefault(name, {})
    node[leaf] = value


@functools.lru_cache(maxsize=4096)
def _split_peer(peer: str) -> tuple[str, int | None] | None:
    """``host:port`` (``[v6]:port``) or a bare address (the center's ``peer``); None when neither."""
    try:
        return str(ipaddress.ip_address(peer)), None
    except ValueError:
        pass
    host, _, port = peer.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


# One step of building an ECS document: (parents, leaf, source, argument). The source says where the
# value comes from: a record field, a constant, the record's verdict (category, type, outcome, severity),
# the peer split into ip and port, a Modbus range's first address or quantity, a latency in ns.
_EcsStep = tuple[tuple[str, ...], str, str, Any]
_ECS_TAIL: Final[tuple[_EcsStep, ...]] = (
    (("event",), "kind", "const", "event"),
    (("event",), "category", "verdict_list", 0),
    (("event",), "type", "verdict_list", 1),
    (("event",), "outcome", "verdict", 2),
    (("event",), "severity", "verdict", 3),
    (("observer",), "product", "const", PRODUCT),
    (("observer",), "vendor", "const", PRODUCT),
    (("observer",), "version", "const", __version__),
)


def _ecs_steps(record: Record) -> list[_EcsStep]:
    """How the record's ECS document is built, in order (the order of its keys)."""
    protocol = record.get("protocol")
    by_center = _written_by_center(record)
    steps: list[_EcsStep] = [(("ecs",), "version", "const", ECS_VERSION)]
    for name, value in record.items():
        span = ECS_RANGES.get(name)
        if span is not None and protocol == "modbus" and _is_range(value):
            steps.append((*_steps(f"ztgate.{span[0]}"), "first", name))
            steps.append((*_steps(f"ztgate.{span[1]}"), "quantity", name))
            continue
        steps.append((*_field_steps(protocol, name, by_center), "field", name))
    steps += _ECS_TAIL
    if protocol is not None:
        steps.append((("network",), "transport", "const", "tcp"))
    if isinstance(record.get("asset"), str):
        steps.append((("tls", "client"), "server_name", "field", "asset"))
    peer = _peer_of(record)
    if peer is not None:
        steps.append((("source",), "ip", "peer", 0))
        if peer[1] is not None:
            steps.append((("source",), "port", "peer", 1))
    latency = record.get("latency_us")
    if isinstance(latency, int) and not isinstance(latency, bool):
        steps.append((("event",), "duration", "duration", "latency_us"))  # ECS durations are nanoseconds
    return steps


def _ecs_verdict(record: Record) -> tuple[str, str, str, int]:
    """(event.category, event.type, event.outcome, event.severity) of a record."""
    sig = signature(record)
    category, kind = _ECS_KIND.get(sig, _ECS_KIND.get(str(record.get("event")), ("process", "info")))
    return category, kind, "failure" if _failed(record) else "success", severity(record)[0]


def _peer_of(record: Record) -> tuple[str, int | None] | None:
    peer = record.get("peer")
    return _split_peer(peer) if isinstance(peer, str) else None


def _ecs_value(record: Record, verdict: tuple[Any, ...], peer: Any, source: str, argument: Any) -> Any:
    if source == "field":
        return record[argument]
    if source == "const":
        return argument
    if source == "verdict":
        return verdict[argument]
    if source == "verdict_list":
        return [verdict[argument]]
    if source == "peer":
        return peer[argument]
    if source == "first":
        return record[argument][0]
    if source == "quantity":
        return record[argument][1] - record[argument][0] + 1
    return record[argument] * 1000  # duration


def to_ecs(record: Record) -> dict[str, Any]:
    """The record as an ECS document (nested objects)."""
    verdict, peer = _ecs_verdict(record), _peer_of(record)
    document: dict[str, Any] = {}
    for parents, leaf, source, argument in _ecs_steps(record):
        node = document
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = _ecs_value(record, verdict, peer, source, argument)
    return document


# ------------------------------------------------------------------------------------ ECS json, fast
#
# A sink formats every record it sends, and records of one kind have the same fields in the same order
# (a session's writes, reads, refusals). So the ECS document of each record *shape* (its field names,
# protocol, and what decides the optional steps) is compiled once into a function that checks the shape
# and builds the whole nested document in one dict display, from the record and its verdict: a few
# hundred nanoseconds instead of a setdefault walk per field. The generated code holds only field names
# (as repr() literals) and indexes into the record, the verdict, the peer and a tuple of constants;
# to_ecs stays the reference, and tests hold ecs_json to orjson.dumps(to_ecs(record)) byte for byte.

_EcsBuilder = Callable[[Record, tuple[Any, ...], Any], dict[str, Any] | None]
_ECS_SHAPES_LIMIT: Final = 1024
# (field names, protocol, event, decision, state) -> the shape's builder and the records' verdict.
_ecs_shapes: dict[Hashable, tuple[_EcsBuilder | None, tuple[str, str, str, int]]] = {}


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shape_tests(record: Record) -> list[str]:
    """What else than the field names and the protocol decides the steps (the tests _ecs_steps makes), as
    expressions that hold for this record: a builder checks them and leaves other records to to_ecs."""
    tests = []
    if record.get("protocol") == "modbus":
        tests += [f"{'' if _is_range(record[n]) else 'not '}ok(r[{n!r}])" for n in ECS_RANGES if n in record]
    if "asset" in record:
        tests.append(f"{'' if isinstance(record['asset'], str) else 'not '}isinstance(r['asset'], str)")
    if "latency_us" in record:
        tests.append(f"{'' if _integer(record['latency_us']) else 'not '}integer(r['latency_us'])")
    peer = _peer_of(record)
    tests.append(
        "p is None" if peer is None else f"p is not None and p[1] is {'' if peer[1] is None else 'not '}None"
    )
    return tests


def _expression(source: str, argument: Any, constants: list[Any]) -> str:
    if source == "const":
        constants.append(argument)
        return f"c[{len(constants) - 1}]"
    if source in ("verdict", "peer"):
        return f"{source[0]}[{int(argument)}]"
    if source == "verdict_list":
        return f"[v[{int(argument)}]]"
    field = repr(str(argument))
    return {
        "field": f"r[{field}]",
        "first": f"r[{field}][0]",
        "quantity": f"r[{field}][1] - r[{field}][0] + 1",
        "duration": f"r[{field}] * 1000",
    }[source]


def _compile_ecs(record: Record) -> _EcsBuilder | None:
    """The builder of records with this record's field names, protocol and shape (:func:`_shape_tests`;
    it returns None for another shape), or None when the steps do not make a plain tree (a value and an
    object on one path): to_ecs handles those."""
    if not all(isinstance(name, str) for name in record):  # JSON's are; the generated code indexes by str
        return None
    tree: dict[str, Any] = {}
    constants: list[Any] = []
    for parents, leaf, source, argument in _ecs_steps(record):
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
            if not isinstance(node, dict):
                return None
        if isinstance(node.get(leaf), dict):
            return None
        node[leaf] = _expression(source, argument, constants)

    def render(node: dict[str, Any]) -> str:
        items = (f"{key!r}: {render(v) if isinstance(v, dict) else v}" for key, v in node.items())
        return "{" + ", ".join(items) + "}"

    namespace: dict[str, Any] = {"c": tuple(constants), "ok": _is_range, "integer": _integer}
    test = " and ".join(f"({t})" for t in _shape_tests(record))
    code = f"def build(r, v, p):\n    if not ({test}):\n        return None\n    return {render(tree)}\n"
    exec(code, namespace)  # the code: see above
    builder: _EcsBuilder = namespace["build"]
    return builder


def ecs_json(record: Record) -> bytes:
    """``orjson.dumps(to_ecs(record))``, built by the compiled builder of the record's field names and
    protocol when the record has that builder's shape (to_ecs builds the others)."""
    get = record.get
    try:
        # One key, one lookup: the shape (field names, protocol) and what decides the verdict.
        key = (tuple(record), get("protocol"), get("event"), get("decision"), get("state"))
        found = _ecs_shapes.get(key)
    except TypeError:  # an unhashable protocol, event, decision or state: not a shape we cache
        return orjson.dumps(to_ecs(record))
    if found is None:
        if len(_ecs_shapes) >= _ECS_SHAPES_LIMIT:
            _ecs_shapes.clear()
        found = _ecs_shapes[key] = (_compile_ecs(record), _ecs_verdict(record))
    builder, verdict = found
    document = None if builder is None else builder(record, verdict, _peer_of(record))
    return orjson.dumps(to_ecs(record) if document is None else document)


def _is_range(value: Any) -> bool:
    # Unrolled: a generator over the two bounds cost as much as the rest of a record's shape test.
    return (
        isinstance(value, list)
        and len(value) == 2
        and type(value[0]) is int
        and type(value[1]) is int
        and value[0] <= value[1]
    )


# ------------------------------------------------------------------------------------ CEF

# Flat field -> CEF key from ArcSight's extension dictionary; the rest become ``ztgate<Field>`` keys
# (custom keys: letters and digits only, as the spec asks).
CEF_KEYS: Final[dict[str, str]] = {
    "gateway": "dvchost",
    "event": "cat",
    "identity": "suser",
    "asset": "dhost",
    "protocol": "app",
    "session": "externalId",
    "decision": "outcome",
    "action": "act",
    "reason": "reason",
    "rule": "cs1",
    "policy_revision": "cs2",
    "peer": "cs3",
    "upstream": "cs4",
}
_CEF_LABELS: Final = {"cs1": "rule", "cs2": "policyRevision", "cs3": "peer", "cs4": "upstream"}
_CEF_NAMES: Final[dict[str, str]] = {
    "decision:allow": "Request allowed",
    "decision:would-deny": "Request would be denied (monitor mode)",
    "decision:deny": "Request denied",
    "protocol_error": "Protocol error",
    "session_start": "Session started",
    "session_end": "Session ended",
    "session_refused": "Session refused",
    "upstream:connected": "Device connected",
    "upstream": "Device connection problem",
    "gateway_start": "Gateway started",
    "gateway_stop": "Gateway stopped",
    "policy_loaded": "Policy loaded",
    "policy_rejected": "Policy rejected",
    "certificate_loaded": "Certificate loaded",
    "certificate_load_failed": "Certificate not loaded",
    "renewal_proved": "Renewed certificate proved",
    "audit_dropped": "Audit records dropped",
    "audit_error": "Audit record not encodable",
    **{event: name for event, (_, _, name, _) in CENTER_EVENTS.items()},
}
_HEADER_ESCAPES: Final = str.maketrans({"\\": "\\\\", "|": "\\|"})
_EXTENSION_ESCAPES: Final = str.maketrans({"\\": "\\\\", "=": "\\=", "\n": "\\n", "\r": "\\r"})


def cef_key(field: str, record: Record | None = None) -> str:
    """The extension key of a field (of ``record``: a center's own name goes to ``dvchost`` too)."""
    if field == "center" and record is not None and _written_by_center(record):
        return "dvchost"
    key = CEF_KEYS.get(field)
    if key is not None:
        return key
    return _custom_cef_key(field)


@functools.lru_cache(maxsize=4096)
def _custom_cef_key(field: str) -> str:
    return "ztgate" + "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", field))


def _cef_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return orjson.dumps(value).decode()  # numbers, booleans, lists, objects: as JSON text


def _epoch_ms(time_text: Any) -> int | None:
    if not isinstance(time_text, str):
        return None
    try:
        moment = datetime.fromisoformat(time_text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return int(moment.timestamp() * 1000)


def to_cef(record: Record) -> tuple[tuple[str, ...], list[tuple[str, str]]]:
    """The CEF header fields and extension pairs of a record, unescaped."""
    # Only our own words in the header: a decision or state we do not know falls back to the event's.
    sig = signature(record)
    if sig not in _CEF_NAMES:
        sig = str(record.get("event")) if record.get("event") in _CEF_NAMES else "unknown"
    name = _CEF_NAMES.get(sig, "Audit record")
    header = ("0", PRODUCT, PRODUCT, __version__, sig, name, str(severity(record)[0]))
    pairs: list[tuple[str, str]] = []
    rt = _epoch_ms(record.get("time"))
    if rt is not None:
        pairs.append(("rt", str(rt)))
    for field, value in record.items():
        key = cef_key(field, record)
        pairs.append((key, _cef_value(value)))
        if key in _CEF_LABELS:
            pairs.append((f"{key}Label", _CEF_LABELS[key]))
    return header, pairs


def cef_line(header: tuple[str, ...], pairs: list[tuple[str, str]]) -> str:
    version, *rest = header
    head = "|".join([f"CEF:{version}", *(part.translate(_HEADER_ESCAPES) for part in rest)])
    extension = " ".join(f"{key}={value.translate(_EXTENSION_ESCAPES)}" for key, value in pairs)
    return f"{head}|{extension}"


# ------------------------------------------------------------------------------------ OCSF

# Which OCSF class each record takes, and why (docs/audit.md says the same):
# - a decision (and a protocol error, a request that could not be decided) is one operation on the
#   device's API by an authenticated actor: API Activity (6003), with the Security Control profile's
#   action_id/disposition_id for allowed/denied. Authorize Session (3003) describes privileges granted to
#   a logon session, not one request, and Network Activity has no actor or operation.
# - the connection lifecycle (session start/end/refusal, the device connection): Network Activity (4001).
# - the gateway's own records: Application Lifecycle (6002).
OCSF_CLASSES: Final[dict[str, tuple[int, int, str]]] = {
    # event: (category_uid, class_uid, class name)
    "decision": (6, 6003, "API Activity"),
    "protocol_error": (6, 6003, "API Activity"),
    "session_start": (4, 4001, "Network Activity"),
    "session_end": (4, 4001, "Network Activity"),
    "session_refused": (4, 4001, "Network Activity"),
    "upstream": (4, 4001, "Network Activity"),
    "gateway_start": (6, 6002, "Application Lifecycle"),
    "gateway_stop": (6, 6002, "Application Lifecycle"),
    "policy_loaded": (6, 6002, "Application Lifecycle"),
    "policy_rejected": (6, 6002, "Application Lifecycle"),
    "certificate_loaded": (6, 6002, "Application Lifecycle"),
    "certificate_load_failed": (6, 6002, "Application Lifecycle"),
    "renewal_proved": (6, 6002, "Application Lifecycle"),
    "audit_dropped": (6, 6002, "Application Lifecycle"),
    "audit_error": (6, 6002, "Application Lifecycle"),
    # The center's records: calls on its API by an authenticated actor (API Activity), or its own.
    **{
        event: (6, 6002, "Application Lifecycle") if activity is None else (6, 6003, "API Activity")
        for event, (_, _, _, activity) in CENTER_EVENTS.items()
    },
}
_OTHER: Final = 99
# Network Activity: Open 1, Close 2, Fail 4, Refuse 5; Application Lifecycle: Start 3, Stop 4, Update 8.
_OCSF_ACTIVITY: Final[dict[str, int]] = {
    "session_start": 1,
    "session_end": 2,
    "session_refused": 5,
    "gateway_start": 3,
    "gateway_stop": 4,
    "policy_loaded": 8,
    "certificate_loaded": 8,
    "center_start": 3,
    **{event: activity for event, (_, _, _, activity) in CENTER_EVENTS.items() if activity is not None},
}
_UPSTREAM_ACTIVITY: Final = {"disconnected": 2, "connect_failed": 4}
# API Activity: Read 2, Update 3, by the words of the operation's name (Modbus, CIP and OPC UA names).
_API_WORDS: Final = (("write", 3), ("set", 3), ("read", 2), ("get", 2), ("browse", 2), ("translate", 2))
# Security Control profile: action_id 1 Allowed, 2 Denied; disposition_id 1 Allowed, 2 Blocked,
# 6 Dropped, 15 Detected (monitor mode: seen, let through).
_DISPOSITION: Final = {"exception": 2, "close": 2, "drop": 6}
# Fields every OCSF event holds elsewhere than in ``unmapped`` (time, metadata, status_detail).
_OCSF_PLACED: Final = frozenset(("time", "gateway", "event", "session", "reason"))


def _operation(record: Record) -> str:
    return str(record.get("func") or record.get("service") or record.get("event"))


def _api_activity(record: Record) -> int:
    if "write" in record or "values" in record:
        return 3
    words = re.split(r"[^a-z]+", _operation(record).lower())
    for word, activity in _API_WORDS:
        if word in words:
            return activity
    return _OTHER


def _ocsf_activity(record: Record) -> int:
    event = str(record.get("event"))
    if OCSF_CLASSES.get(event, (0, 0, ""))[1] == 6003 and event not in CENTER_EVENTS:
        return _api_activity(record)
    if event == "upstream":
        state = str(record.get("state"))
        return 1 if state == "connected" else _UPSTREAM_ACTIVITY.get(state, _OTHER)
    return _OCSF_ACTIVITY.get(event, _OTHER)


def to_ocsf(record: Record) -> dict[str, Any]:
    """The record as an OCSF event of the class :data:`OCSF_CLASSES` names for it."""
    event = str(record.get("event"))
    category_uid, class_uid, _ = OCSF_CLASSES.get(event, (6, 6002, "Application Lifecycle"))
    activity = _ocsf_activity(record)
    product = {"name": PRODUCT, "vendor_name": PRODUCT, "version": __version__}
    metadata: dict[str, Any] = {"version": OCSF_VERSION, "product": product, "log_name": event}
    if isinstance(record.get("session"), str):
        metadata["correlation_uid"] = record["session"]
    out: dict[str, Any] = {
        "category_uid": category_uid,
        "class_uid": class_uid,
        "activity_id": activity,
        "type_uid": class_uid * 100 + activity,
        "time": _epoch_ms(record.get("time")) or 0,
        "severity_id": severity(record)[1],
        "metadata": metadata,
        "message": _CEF_NAMES.get(signature(record), event),
    }
    if record.get("reason") is not None:
        out["status_detail"] = record["reason"]
    placed = set(_OCSF_PLACED) | ({"center"} if _written_by_center(record) else set())
    if record.get("aggregated"):
        placed.update(("count", "time_last"))
        out["count"] = record.get("count")
        out["start_time"] = out["time"]
        out["end_time"] = _epoch_ms(record.get("time_last")) or out["time"]
    if event == "decision":
        verdict = record.get("decision")
        out["action_id"] = 2 if verdict == "deny" else 1
        out["disposition_id"] = (
            _DISPOSITION.get(str(record.get("action")), 2)
            if verdict == "deny"
            else 15
            if verdict == "would-deny"
            else 1
        )
        metadata["profiles"] = ["security_control"]
    if class_uid == 6003:
        # A decision's outcome is the device's answer; a record without one failed if it is a refusal.
        if "outcome" in record:
            out["status_id"] = 1 if record.get("outcome") == "ok" else 2
        else:
            out["status_id"] = 2 if _failed(record) else 1
        if record.get("outcome") is not None:
            out["status"] = record["outcome"]
        if record.get("code_name") is not None:
            out["status_code"] = record["code_name"]
    session = record.get("session")
    if class_uid in (6003, 4001):
        if isinstance(record.get("identity"), str):
            out["actor"] = {"user": {"uid": record["identity"]}}
            placed.add("identity")
        source: dict[str, Any] = {}
        peer = _split_peer(record["peer"]) if isinstance(record.get("peer"), str) else None
        if peer is not None:
            source["ip"] = peer[0]
            if peer[1] is not None:
                source["port"] = peer[1]
        # A decision record has no address; its session id joins it to the session_start's endpoint.
        if isinstance(session, str):
            source["uid"] = session
        if source:
            out["src_endpoint"] = source
        if isinstance(record.get("asset"), str):
            out["dst_endpoint"] = {"name": record["asset"]}
    if class_uid == 6003:
        out["api"] = {"operation": _operation(record)}
        if "actor" not in out:  # the schema requires an actor; a record without identity names the process
            out["actor"] = {"app_name": str(origin(record))}
        # Required too: a decision's session, else (a center's record without a peer) the process.
        out.setdefault(
            "src_endpoint", {"uid": str(session)} if session is not None else {"name": str(origin(record))}
        )
        if isinstance(record.get("asset"), str):
            out["resources"] = [{"name": record["asset"], "type": "asset"}]
    if class_uid == 6002:
        out["app"] = {**product, "uid": str(origin(record))}
    unmapped = {k: v for k, v in record.items() if k not in placed}
    out["unmapped"] = _ztgate_detail(record, unmapped)
    return out


def _ztgate_detail(record: Record, fields: Record) -> dict[str, Any]:
    """The record's own fields, the target fields under their ICSNPP names (as in the ECS ``ztgate.*``)."""
    detail: dict[str, Any] = {}
    for name, value in fields.items():
        path = ecs_path(record, name)
        _put(detail, path.removeprefix("ztgate.") if path.startswith("ztgate.") else name, value)
    return detail


# ------------------------------------------------------------------------------------ entry point


_FORMATTERS: Final[dict[str, Callable[[Record], bytes]]] = {
    "ztgate": orjson.dumps,
    "json": ecs_json,
    "cef": lambda record: cef_line(*to_cef(record)).encode(),
    "ocsf": lambda record: orjson.dumps(to_ocsf(record)),
}


def formatter(fmt: str) -> Callable[[Record], bytes]:
    """What :func:`format_line` calls for ``fmt`` (a sink looks it up once, not once per record)."""
    found = _FORMATTERS.get(fmt)
    if found is None:
        raise ValueError(f"unknown audit format {fmt!r}; one of {', '.join(FORMATS)}")
    return found


def format_line(record: Record, fmt: str) -> bytes:
    """One record as one line (UTF-8, no newline) in ``fmt``; ValueError names the formats for an unknown
    one.

    Text from the record never ends a line: JSON escapes control characters, CEF escapes CR and LF.
    """
    return formatter(fmt)(record)


def format_record(record: Record, fmt: str) -> str:
    """:func:`format_line` as text."""
    return format_line(record, fmt).decode()


# ------------------------------------------------------------------------------------ the docs

_ENVELOPE: Final = {"time": "2026-12-07T12:00:00.000000Z", "gateway": "gw-1"}
_ALICE: Final = {
    "session": "d40926-000005",
    "identity": "spiffe://plant1.example/user/alice",
    "asset": "plc-1",
    "protocol": "modbus",
}
# One record of each event, as the gateway writes them (tests hold them to gateway/audit_schema.py).
EXAMPLES: Final[tuple[Record, ...]] = (
    {**_ENVELOPE, "event": "session_start", **_ALICE, "policy_revision": "c3635534002a",
     "peer": "127.0.0.1:50312"},
    {**_ENVELOPE, "event": "decision", **_ALICE, "policy_revision": "c3635534002a", "unit": 1, "fc": 6,
     "func": "WRITE_SINGLE_REGISTER", "tid": 7, "write": [40, 40], "values": [1501], "decision": "deny",
     "rule": "operators-setpoint", "action": "exception", "reason": "value 1501 above 1500", "code": 3,
     "code_name": "ILLEGAL_DATA_VALUE", "code_hex": "0x03", "outcome": "refused"},
    {**_ENVELOPE, "event": "protocol_error", **_ALICE, "policy_revision": "c3635534002a", "side": "client",
     "reason": "MBAP length 300 above 254"},
    {**_ENVELOPE, "event": "upstream", **_ALICE, "policy_revision": "c3635534002a", "state": "connect_failed",
     "upstream": "127.0.0.1:5020", "reason": "connection refused"},
    {**_ENVELOPE, "event": "session_end", **_ALICE, "requests": 42, "denied": 1, "duration_s": 12.5,
     "reason": "client closed"},
    {**_ENVELOPE, "event": "session_cut", **_ALICE, "policy_revision": "c3635534002a", "lock": "lk-7f3a",
     "target": "identity=spiffe://plant1.example/user/alice", "reason": "stolen laptop"},
    {**_ENVELOPE, "event": "gateway_start", "listen": ["127.0.0.1:8443"], "policy_revision": "c3635534002a",
     "policy_origin": "file", "assets": ["plc-1", "plc-2", "opc-1"]},
    {**_ENVELOPE, "event": "gateway_stop"},
    {**_ENVELOPE, "event": "policy_loaded", "trigger": "SIGHUP", "file": "/etc/ztgate/policy.toml",
     "policy_revision": "d1e2f3a4b5c6", "previous_revision": "c3635534002a", "rules": 12,
     "assets": ["plc-1", "plc-2", "opc-1"]},
    {**_ENVELOPE, "event": "policy_rejected", "trigger": "watch", "file": "/etc/ztgate/policy.toml",
     "errors": ["/etc/ztgate/policy.toml:14: unknown function code 99"], "policy_revision": "c3635534002a"},
    {**_ENVELOPE, "event": "session_refused", "peer": "127.0.0.1:50400", "source": "127.0.0.1",
     "category": "handshake", "reason": "certificate signed by an unknown CA"},
    {**_ENVELOPE, "event": "certificate_loaded", "trigger": "SIGHUP", "cert": "/etc/ztgate/gateway.crt",
     "identity": "spiffe://plant1.example/gateway/gw-1", "not_after": "2027-03-07T12:00:00Z"},
    {**_ENVELOPE, "event": "certificate_load_failed", "trigger": "watch",
     "error": "/etc/ztgate/gateway.key: the key does not match the certificate"},
    {**_ENVELOPE, "event": "renewal_proved", "identity": "spiffe://plant1.example/user/alice",
     "peer": "127.0.0.1:50312", "serial": "4f1a9c", "not_after": "2027-01-07T12:00:00Z",
     "sessions": ["d40926-000005"]},
    {**_ENVELOPE, "event": "locks_loaded", "locks_revision": 4, "added": ["lk-7f3a"], "removed": [],
     "in_force": 1},
    {**_ENVELOPE, "event": "lock_expired", "lock": "lk-7f3a", "target": "identity=spiffe://plant1.example/user/alice"},
    {**_ENVELOPE, "event": "audit_dropped", "reason": "queue_full", "count": 17},
    {**_ENVELOPE, "event": "audit_error", "error": "Integer exceeds 64-bit range", "repr": "{'event': ...}"},
)  # fmt: skip
_CENTER: Final = {"time": "2026-12-07T12:00:00.000000Z", "center": "center-1"}
_ADMIN: Final = "spiffe://plant1.example/user/admin"
_GW: Final = "spiffe://plant1.example/gateway/site1/gw-1"
_LOCK_EXAMPLE: Final = {"id": "lk-7f3a", "target": "identity=spiffe://plant1.example/user/alice"}
_VENDOR: Final = "spiffe://plant1.example/vendor/acme/eve"
_GRANT_EXAMPLE: Final = {"id": "gr-3a9c51e07b2d"}
# One record of each of the center's events, as gateway/center/store.py center_record makes them.
CENTER_EXAMPLES: Final[tuple[Record, ...]] = (
    {**_CENTER, "event": "center_init", "seq": 1, "admin": _ADMIN, "trust_domain": "plant1.example"},
    {**_CENTER, "event": "credentials_issued", "seq": 2, "id": _ADMIN, "role": "admin", "out": "admin"},
    {**_CENTER, "event": "center_start", "seq": 3, "identity": "spiffe://plant1.example/center/center-1",
     "url": "https://center.plant1.example:8600"},
    {**_CENTER, "event": "token_created", "seq": 4, "identity": _ADMIN, "id": _GW, "role": "gateway",
     "ttl_s": 600.0},
    {**_CENTER, "event": "enroll_refused", "seq": 5, "reason": "expired", "step": "enroll", "id": _GW,
     "peer": "10.0.4.7"},
    {**_CENTER, "event": "enrolled", "seq": 6, "identity": _GW, "role": "gateway", "peer": "10.0.4.7"},
    {**_CENTER, "event": "renewed", "seq": 7, "identity": _GW, "serial": "5d1e0c77a9"},
    {**_CENTER, "event": "renew_refused", "seq": 8, "identity": "spiffe://plant1.example/user/alice",
     "lock": "lk-7f3a", "reason": "stolen laptop"},
    {**_CENTER, "event": "role_set", "seq": 9, "identity": _ADMIN, "id": "spiffe://plant1.example/user/bob",
     "role": "approver"},
    {**_CENTER, "event": "policy_pushed", "seq": 10, "identity": _ADMIN, "revision": 12,
     "sha256": "9f2c4e0b7d1a", "rollback_of": None},
    {**_CENTER, "event": "policy_rollback", "seq": 11, "identity": _ADMIN, "revision": 13,
     "sha256": "3b8d5a61c0fe", "rollback_of": 11},
    {**_CENTER, "event": "lock_created", "seq": 12, "identity": _ADMIN, **_LOCK_EXAMPLE, "kind": "identity",
     "value": "spiffe://plant1.example/user/alice", "reason": "stolen laptop", "created_by": _ADMIN,
     "created_at": 1796644800.0, "expires_at": None},
    {**_CENTER, "event": "lock_removed", "seq": 13, "identity": _ADMIN, **_LOCK_EXAMPLE},
    {**_CENTER, "event": "subscribed", "seq": 14, "identity": _GW, "held": {"policy": 12, "locks": 4},
     "peer": "10.0.4.7"},
    {**_CENTER, "event": "api_refused", "seq": 15, "identity": "spiffe://plant1.example/user/alice",
     "method": "POST", "path": "/v1/policy", "role": "user"},
    {**_CENTER, "event": "grant_requested", "seq": 16, "identity": _VENDOR, **_GRANT_EXAMPLE,
     "asset": "plc-1", "protocol": "modbus", "ops": "read 40001-40100, write 40010 0..1500",
     "not_before": 1796644800.0, "not_after": 1796652000.0, "approvers_needed": 2,
     "reason": "pump 3 commissioning"},
    {**_CENTER, "event": "grant_request_refused", "seq": 17, "identity": _VENDOR, "asset": "plc-1",
     "ops": "write 0-99", "for_s": 7200.0,
     "reason": "write 0-99 is not among the operations vendors may ask for"},
    {**_CENTER, "event": "grant_approval", "seq": 18, "identity": "spiffe://plant1.example/user/bob",
     **_GRANT_EXAMPLE, "approvals": 1, "needed": 2},
    {**_CENTER, "event": "grant_approved", "seq": 19, "identity": "spiffe://plant1.example/user/carol",
     **_GRANT_EXAMPLE, "revision": 14},
    {**_CENTER, "event": "grant_denied", "seq": 20, "identity": "spiffe://plant1.example/user/bob",
     **_GRANT_EXAMPLE, "reason": "not during the shutdown"},
    {**_CENTER, "event": "grant_refused", "seq": 21, "identity": "spiffe://plant1.example/user/carol",
     **_GRANT_EXAMPLE, "reason": "policy test 'no vendor writes coils 0-99' failed",
     "tests": [{"name": "no vendor writes coils 0-99", "index": 1, "expect": "deny", "expect_rule": None,
                "got": "allow", "rule": "gr-3a9c51e07b2d", "note": ""}], "revision": 14},
    {**_CENTER, "event": "grant_revoked", "seq": 22, "identity": "spiffe://plant1.example/user/bob",
     **_GRANT_EXAMPLE, "lock": "lk-9c41", "reason": "work finished early"},
    {**_CENTER, "event": "grant_certificate", "seq": 23, "identity": _VENDOR, **_GRANT_EXAMPLE,
     "serial": "5e1f0c22a9", "not_after": 1796652000.0},
    {**_CENTER, "event": "audit_dropped", "reason": "spool_full", "count": 3},
    {**_CENTER, "event": "audit_error", "error": "Integer exceeds 64-bit range", "repr": "{'event': ...}"},
)  # fmt: skip


def render_examples() -> str:
    """The example section of docs/audit.md: each example record in every format."""
    parts = [
        "#### Severity by record\n",
        "| record | CEF severity, ECS `event.severity` | OCSF `severity_id` |",
    ]
    parts.append("|---|---|---|")
    parts += [f"| `{sig}` | {cef} | {ocsf} |" for sig, (cef, ocsf) in SEVERITY.items()]
    parts += [f"| any other | {_INFO[0]} | {_INFO[1]} |", ""]
    for record in (*EXAMPLES, *CENTER_EXAMPLES):
        where = " (center)" if "center" in record else ""
        parts.append(f"#### `{record['event']}`{where}\n")
        for fmt in FORMATS:
            parts.append(f"{fmt}:\n\n```\n{format_record(record, fmt)}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    print(render_examples(), end="")
