"""The fields of the audit records, defined once.

Every record is one flat JSON object. The session engines of all three protocols build their records
through :class:`gateway.session.Session` (``record``, ``decision_record``, ``refuse``,
``protocol_error``), so they share one field set; only the target fields (what a request touches) are
the protocol's own. ``docs/audit.md`` shows the tables :func:`render` makes from this module (a test
checks they are the same), and the end-to-end tests hold every record they produce to :func:`problems`.
``python -m gateway.audit_schema`` prints the tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

PROTOCOLS: Final = ("modbus", "enip", "opcua")

_STR: Final = (str,)
_INT: Final = (int,)
_NUMBER: Final = (int, float)
_BOOL: Final = (bool,)
_LIST: Final = (list,)
_TYPE_NAMES: Final = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array",
                      dict: "object", type(None): "null"}  # fmt: skip


@dataclass(frozen=True)
class Field:
    name: str
    types: tuple[type, ...]
    meaning: str

    @property
    def type_text(self) -> str:
        names = dict.fromkeys(_TYPE_NAMES[t] for t in self.types)
        if "integer" in names and "number" in names:
            del names["integer"]
        return " \\| ".join(names)


def _fields(*rows: tuple[str, tuple[type, ...], str]) -> dict[str, Field]:
    return {name: Field(name, types, meaning) for name, types, meaning in rows}


ENVELOPE: Final = _fields(
    (
        "time",
        _STR,
        "RFC 3339 UTC with microseconds (`YYYY-MM-DDTHH:MM:SS.ffffffZ`); of an aggregate, its first",
    ),
    ("gateway", _STR, "name of the gateway that wrote the record"),
    ("event", _STR, "what the record is about (the tables below, by event)"),
)
SESSION: Final = _fields(
    ("session", _STR, "session id, unique per gateway process and sortable by start"),
    ("identity", _STR, "SPIFFE id of the client (from its certificate)"),
    ("asset", _STR, "asset name (the SNI the client asked for)"),
    ("protocol", _STR, "`modbus` \\| `enip` \\| `opcua`"),
    ("policy_revision", _STR, "revision of the compiled policy that decided"),
)
DECISION: Final = _fields(
    ("decision", _STR, "`allow` \\| `deny` \\| `would-deny` (a deny in monitor mode: forwarded)"),
    ("rule", (str, type(None)), "id of the deciding rule; null for the default deny"),
    ("reason", _STR, "why a deny or would-deny (the policy's words)"),
    ("monitor_rule", _STR, "a monitor-mode rule that, enforced, would have decided otherwise"),
    (
        "action",
        _STR,
        "what the gateway did: `forward`, or the deny action `exception` \\| `drop` \\| `close`",
    ),
    (
        "code",
        _INT,
        "the code the gateway itself answered with: the refusal's (sent only for `action` "
        "`exception`; Error message of `close` on OPC UA), or the gateway's answer when the device could not "
        "give one (Modbus 0x0A/0x0B, CIP 0x01/0x02/0x22); absent when the device answered",
    ),
    (
        "code_name",
        _STR,
        "the protocol's name of `code`: Modbus exception (`ILLEGAL_FUNCTION`), CIP general "
        "status (`PRIVILEGE_VIOLATION`), OPC UA StatusCode (`BadUserAccessDenied`); hex when it has none",
    ),
    ("code_hex", _STR, "`code` in hex: `0x01`, `0x0F`, `0x801F0000`"),
    ("would_action", _STR, "of a would-deny: the asset's deny action, had it been enforced"),
    ("would_code", _INT, "of a would-deny: the code the client would have got"),
    ("would_code_name", _STR, "the protocol's name of `would_code`"),
    ("would_code_hex", _STR, "`would_code` in hex"),
    (
        "outcome",
        _STR,
        "`ok`, `refused`, `device exception N`, `device status 0xNN`, or why the device "
        "could not answer (`timeout`, `device unavailable`, ...)",
    ),
    ("latency_us", (int, dict), "request to answer, integer microseconds; of an aggregate `{avg, max}`"),
)
AGGREGATE: Final = _fields(
    ("aggregated", _BOOL, "true: the record stands for `count` requests of one kind in one interval"),
    ("count", _INT, "how many requests the aggregate stands for (exact)"),
    ("interval_s", _NUMBER, "the aggregation interval"),
    ("time_last", _STR, "time of the last request counted"),
    ("span", _LIST, "Modbus allowed reads: `[lo, hi]`, the union of the address spans read"),
)
PROTOCOL_ERROR: Final = _fields(
    ("side", _STR, "`client` (or `upstream`): who broke the protocol"),
)
SESSION_START: Final = _fields(
    ("peer", _STR, "the client's address and port"),
    ("grant", _STR, "the just-in-time grant the session stands on (docs/access.md)"),
)
SESSION_END: Final = _fields(
    ("requests", _INT, "requests the session made"),
    ("denied", _INT, "of them refused"),
    ("duration_s", _NUMBER, "how long the session lasted"),
)
UPSTREAM: Final = _fields(
    ("state", _STR, "`connected` \\| `connect_failed` \\| `disconnected` \\| `malformed_reply` \\| ..."),
    ("upstream", _STR, "the device's address (`host:port`, or the OPC UA endpoint URL)"),
)

# What a request touches, in each protocol's own terms (names in the spirit of Zeek's ICSNPP logs).
_TARGET_ROWS: Final[tuple[tuple[str, tuple[str, ...], tuple[type, ...], str], ...]] = (
    ("unit", ("modbus",), _INT, "unit id the client addressed"),
    ("fc", ("modbus",), _INT, "function code"),
    ("func", ("modbus",), _STR, "function name (`READ_HOLDING_REGISTERS`; hex when unnamed)"),
    ("tid", ("modbus",), _INT, "the client's transaction id"),
    ("sub_function", ("modbus",), _INT, "FC 8 / FC 43 sub-function"),
    ("read", ("modbus",), _LIST, "`[first, last]` addresses read (inclusive)"),
    ("write", ("modbus",), _LIST, "`[first, last]` addresses written (inclusive)"),
    (
        "address",
        ("modbus",),
        _LIST,
        "`[first, last]` of one allowed read written on its own "
        "(aggregation off, or past the aggregation key bound)",
    ),
    ("files", ("modbus",), _LIST, "FC 20/21 file records `[file, record, length]`"),
    (
        "values",
        PROTOCOLS,
        (list, str, int, float, bool, type(None)),
        "values written: the first 32 (Modbus, CIP; `opaque` for CIP data the gateway does not type), "
        "the first 200 characters of the written value (OPC UA)",
    ),
    ("values_count", ("modbus", "enip"), _INT, "how many values were written, when more than recorded"),
    ("service", ("enip", "opcua"), _STR, "service name: CIP (`read_tag`; hex when unnamed), OPC UA (`Read`)"),
    ("service_code", ("enip",), _INT, "CIP service code"),
    ("tag", ("enip",), _STR, "symbolic tag path"),
    ("class", ("enip",), _INT, "CIP class id"),
    ("instance", ("enip",), _INT, "CIP instance id"),
    ("attribute", ("enip", "opcua"), _INT, "CIP attribute id; OPC UA attribute id"),
    ("elements", ("enip",), _INT, "element count of a tag read or write"),
    ("route", ("enip",), _STR, "route path of an Unconnected Send (`port/link/...`)"),
    ("index", ("opcua",), _INT, "the operation's place in its request"),
    ("node", ("opcua",), _STR, "node id (`ns=<i>;s=...`, the device's namespace indices)"),
    ("method", ("opcua",), _STR, "method node id of a Call"),
)
TARGET: Final = {
    protocol: {
        name: Field(name, types, meaning) for name, ps, types, meaning in _TARGET_ROWS if protocol in ps
    }
    for protocol in PROTOCOLS
}
_ALL_TARGET: Final = {name: Field(name, types, meaning) for name, _, types, meaning in _TARGET_ROWS}

# The session records: the events the session engines write, and what each one carries.
SESSION_EVENTS: Final[dict[str, tuple[dict[str, Field], ...]]] = {
    "session_start": (SESSION, SESSION_START),
    "session_end": (SESSION, SESSION_END, _fields(("reason", _STR, "why the session ended"))),
    "decision": (SESSION, DECISION, AGGREGATE),
    "protocol_error": (SESSION, PROTOCOL_ERROR, DECISION),
    "upstream": (SESSION, UPSTREAM, _fields(("reason", (str, type(None)), "what happened"))),
    "session_cut": (
        SESSION,
        _fields(
            ("lock", _STR, "the lock that cut it (docs/access.md)"),
            ("target", _STR, "the lock's target (`identity=...`, `prefix=...`, ...)"),
            (
                "rule",
                _STR,
                'the session deny rule (`scope = "session"`), or the grant whose period ended, that cut it',
            ),
            ("reason", _STR, "the lock's or the rule's reason"),
        ),
    ),
}
_REQUIRED: Final = {
    "session_start": ("session", "identity", "asset", "protocol", "policy_revision", "peer"),
    "session_end": ("session", "identity", "asset", "protocol", "reason", "requests", "denied", "duration_s"),
    "decision": ("session", "identity", "asset", "protocol", "policy_revision", "decision", "rule", "action",
                 "outcome"),
    "protocol_error": ("session", "identity", "asset", "protocol", "policy_revision", "side", "reason"),
    "upstream": ("asset", "protocol", "state"),
    "session_cut": ("session", "identity", "asset", "protocol", "reason"),
}  # fmt: skip
# Which of a group's fields each session event may carry (the rest of the group is not theirs).
_ONLY: Final = {
    "protocol_error": frozenset((*SESSION, "side", "reason", "code", "code_name", "code_hex")),
    "session_end": frozenset((*SESSION, *SESSION_END, "reason")) - {"policy_revision"},
    "upstream": frozenset((*SESSION, *UPSTREAM, "reason")),
}
# Records of the gateway itself (not of a session), held to their fields the same way.
GATEWAY_EVENTS: Final[dict[str, dict[str, Field]]] = {
    "gateway_start": _fields(
        ("listen", _LIST, "addresses the overlay listens on"),
        ("policy_revision", _STR, "revision in force"),
        ("policy_origin", _STR, "where the policy comes from (`file`, `center`, ...)"),
        ("assets", _LIST, "asset names of the policy"),
    ),
    "gateway_stop": {},
    "policy_loaded": _fields(
        ("trigger", _STR, "what loaded it (`start`, `watch`, `SIGHUP`, `request`, `bundle`)"),
        ("file", _STR, "the policy file"),
        ("policy_revision", _STR, "the new revision"),
        ("previous_revision", _STR, "the revision it replaced"),
        ("rules", _INT, "number of rules"),
        ("assets", _LIST, "asset names"),
    ),
    "policy_rejected": _fields(
        ("trigger", _STR, "what tried to load it"),
        ("file", _STR, "the policy file"),
        ("errors", _LIST, "what is wrong, each with file and line"),
        ("policy_revision", _STR, "the revision that stays in force"),
    ),
    "session_refused": _fields(
        ("peer", _STR, "the client's address and port (a full record)"),
        ("source", _STR, "the source the refusals are counted under (address, IPv6 /64, or `*`)"),
        ("category", _STR, "kind of refusal (`handshake`, `capacity`, `no_route`, ...)"),
        ("reason", _STR, "why (of an aggregate: the first counted one's)"),
        ("asset", _STR, "the asset asked for, when known"),
        ("identity", _STR, "the client's SPIFFE id, when known"),
        *((f.name, f.types, f.meaning) for f in AGGREGATE.values() if f.name != "span"),
    ),
    "certificate_loaded": _fields(
        ("trigger", _STR, "what loaded it (`start`, `SIGHUP`, `watch`, ...)"),
        ("cert", _STR, "the certificate file"),
        ("identity", _STR, "the SPIFFE id it carries"),
        ("not_after", (str, type(None)), "when it expires (RFC 3339)"),
    ),
    "certificate_load_failed": _fields(
        ("trigger", _STR, "what tried to load it"),
        ("error", (str, type(None)), "why it did not load (the previous one stays)"),
    ),
    "renewal_proved": _fields(
        ("identity", _STR, "the client that proved a renewed certificate"),
        ("peer", _STR, "where the proof came from"),
        ("serial", (str, int), "the renewed certificate's serial"),
        ("not_after", (str, type(None)), "its end (RFC 3339)"),
        ("sessions", _LIST, "the live sessions it extended"),
    ),
    "locks_loaded": _fields(
        ("locks_revision", _INT, "the revision of the center's set of locks"),
        ("file", _STR, "`locks.json`, when loaded at start"),
        ("added", _LIST, "lock ids new in this set"),
        ("removed", _LIST, "lock ids no longer in it"),
        ("in_force", _INT, "locks in force"),
    ),
    "lock_expired": _fields(
        ("lock", _STR, "the lock whose TTL ran out"),
        ("target", _STR, "its target"),
    ),
    "audit_dropped": _fields(
        ("reason", _STR, "`queue_full` \\| `write_error` \\| `spool_full` \\| `evicted` \\| `oversized`"),
        ("count", _INT, "records lost since the last report"),
    ),
    "audit_error": _fields(
        ("error", _STR, "why the record could not be encoded"),
        ("repr", _STR, "a truncated repr of the record"),
    ),
}

# The center's records (gateway/center/store.py ``center_record``): a row of its audit table, flat.
CENTER_ENVELOPE: Final = _fields(
    ("time", _STR, "when the center recorded it (RFC 3339 UTC with microseconds)"),
    ("center", _STR, "name of the center that wrote the record"),
    ("event", _STR, "what happened (the table below)"),
    ("seq", _INT, "the record's number in the center's store (`ztgate center audit`)"),
    ("identity", _STR, "SPIFFE id of who did it (the API caller; the identity enrolled); absent if unknown"),
)
_LOCK: Final = _fields(
    ("id", _STR, "the lock's id"),
    ("target", _STR, "what it locks (`identity=...`, `asset=...`, ...)"),
    ("kind", _STR, "the target's kind"),
    ("value", _STR, "the target's value"),
    ("reason", _STR, "why (shown in every gateway's record of a cut session)"),
    ("created_by", _STR, "who created it"),
    ("created_at", _NUMBER, "when (epoch seconds)"),
    ("expires_at", (int, float, type(None)), "when its TTL runs out (epoch seconds), or null"),
)
_REVISION: Final = _fields(
    ("revision", _INT, "the new policy revision"),
    ("sha256", _STR, "the policy text's SHA-256"),
    ("rollback_of", (int, type(None)), "of a rollback: the revision brought back"),
)
_ID_ROLE: Final = _fields(("id", _STR, "the SPIFFE id concerned"), ("role", _STR, "its role"))
_PEER: Final = _fields(("peer", (str, type(None)), "the address the request came from"))
_GRANT_ID: Final = _fields(("id", _STR, "the grant's id (also the id of the rule it becomes)"))
CENTER_EVENTS: Final[dict[str, dict[str, Field]]] = {
    "center_start": _fields(("url", _STR, "how gateways, agents and people reach it")),
    "center_init": _fields(
        ("admin", _STR, "the first admin's SPIFFE id"), ("trust_domain", _STR, "the trust domain")
    ),
    "credentials_issued": {**_ID_ROLE, **_fields(("out", _STR, "the folder written"))},
    "token_created": {**_ID_ROLE, **_fields(("ttl_s", _NUMBER, "how long the token may be used"))},
    "enrolled": {**_fields(("role", _STR, "the role enrolled with")), **_PEER},
    "enroll_refused": {
        **_fields(
            ("reason", _STR, "`unknown` \\| `expired` \\| `used` (the token) \\| `csr`"),
            ("step", _STR, "`describe` \\| `enroll`"),
            ("message", _STR, "why the CSR was refused"),
            ("id", _STR, "the token's SPIFFE id, when known"),
        ),
        **_PEER,
    },
    "renewed": _fields(("serial", _STR, "the new certificate's serial (hex)")),
    "renew_refused": _fields(
        ("lock", _STR, "the lock covering the identity"),
        ("reason", _STR, "the lock's reason"),
        ("message", _STR, "why the CSR was refused"),
    ),
    "role_set": _ID_ROLE,
    "policy_pushed": _REVISION,
    "policy_rollback": _REVISION,
    "lock_created": _LOCK,
    "lock_removed": {name: _LOCK[name] for name in ("id", "target")},
    "subscribed": {**_fields(("held", (dict,), "the revisions the gateway already holds, by kind")), **_PEER},
    "api_refused": _fields(
        ("method", _STR, "the HTTP method"),
        ("path", _STR, "the API path"),
        ("role", (str, type(None)), "the caller's role (null: none)"),
    ),
    "grant_requested": {
        **_GRANT_ID,
        **_fields(
            ("asset", _STR, "the asset asked for"),
            ("protocol", _STR, "its protocol"),
            ("ops", _STR, "the operations asked for, in the policy's vocabulary"),
            ("not_before", _NUMBER, "the window's start (epoch seconds)"),
            ("not_after", _NUMBER, "the window's end (epoch seconds)"),
            ("approvers_needed", _INT, "approvals the policy's [vendor_access] asks for"),
            ("reason", _STR, "why the vendor asks"),
        ),
    },
    "grant_request_refused": _fields(
        ("asset", _STR, "the asset asked for"),
        ("ops", _STR, "the operations asked for"),
        ("for_s", _NUMBER, "the window asked for (seconds)"),
        ("reason", _STR, "why [vendor_access] refuses it"),
    ),
    "grant_approval": {
        **_GRANT_ID,
        **_fields(("approvals", _INT, "approvals so far"), ("needed", _INT, "approvals needed")),
    },
    "grant_approved": {**_GRANT_ID, **_fields(("revision", _INT, "the policy revision that carries it"))},
    "grant_denied": {**_GRANT_ID, **_fields(("reason", _STR, "the approver's reason"))},
    "grant_refused": {
        **_GRANT_ID,
        **_fields(
            ("reason", _STR, "why its revision was refused"),
            ("tests", (list,), "the policy tests that failed (name, expect, got, the deciding rule)"),
            ("revision", _INT, "the revision it was composed on"),
        ),
    },
    "grant_revoked": {
        **_GRANT_ID,
        **_fields(("lock", _STR, "the grant lock that revokes it"), ("reason", _STR, "why")),
    },
    "grant_certificate": {
        **_GRANT_ID,
        **_fields(
            ("serial", _STR, "the certificate's serial (hex)"),
            ("not_after", _NUMBER, "the grant's end, which the certificate does not outlive"),
        ),
    },
    "audit_dropped": GATEWAY_EVENTS["audit_dropped"],
    "audit_error": GATEWAY_EVENTS["audit_error"],
}


def is_center_record(record: dict[str, Any]) -> bool:
    """A center's own record: named by ``center``, with no ``gateway``."""
    return "center" in record and "gateway" not in record


def allowed_fields(record: dict[str, Any]) -> dict[str, Field] | None:
    """The fields a record of this event (and protocol) may carry; None for an unknown event."""
    event = record.get("event")
    if is_center_record(record):
        found = CENTER_EVENTS.get(event)  # type: ignore[arg-type]
        return None if found is None else {**CENTER_ENVELOPE, **found}
    fields = dict(ENVELOPE)
    if event in GATEWAY_EVENTS:
        fields.update(GATEWAY_EVENTS[event])
        return fields
    groups = SESSION_EVENTS.get(event)  # type: ignore[arg-type]
    if groups is None:
        return None
    only = _ONLY.get(event)  # type: ignore[arg-type]
    for group in groups:
        fields.update({name: f for name, f in group.items() if only is None or name in only})
    if event in ("decision", "protocol_error"):
        fields.update(TARGET.get(record.get("protocol"), {}))  # type: ignore[arg-type]
    return fields


def problems(record: dict[str, Any]) -> list[str]:
    """What is wrong with one record against the schema; empty when nothing is."""
    fields = allowed_fields(record)
    if fields is None:
        return [f"unknown event {record.get('event')!r}"]
    found = []
    for name, value in record.items():
        field = fields.get(name)
        if field is None:
            found.append(f"{record.get('event')}: field {name!r} is not in the schema")
        elif not isinstance(value, field.types) or (isinstance(value, bool) and bool not in field.types):
            found.append(f"{record.get('event')}: {name} = {value!r} is not {field.type_text}")
    event = record["event"]
    envelope = ("time", "center") if is_center_record(record) else ("time", "gateway")
    for name in (*envelope, *_REQUIRED.get(event, ())):
        if name not in record:
            found.append(f"{event}: {name!r} missing")
    if record.get("protocol") not in (None, *PROTOCOLS):
        found.append(f"{event}: unknown protocol {record.get('protocol')!r}")
    if event == "decision":
        verdict = record.get("decision")
        needed: tuple[str, ...] = ()
        if verdict == "deny":
            # An aggregate stands for a kind; each request's reason names its own addresses or values.
            needed = (
                ("code", "code_name", "code_hex")
                if record.get("aggregated")
                else ("reason", "code", "code_name", "code_hex")
            )
        elif verdict == "would-deny":
            needed = ("reason", "would_action", "would_code", "would_code_name", "would_code_hex")
        elif verdict != "allow":
            found.append(f"decision: unknown decision {verdict!r}")
        if record.get("aggregated"):
            needed = (*needed, "count", "interval_s", "time_last")
        found += [f"decision {verdict}: {name!r} missing" for name in needed if name not in record]
    digits = 8 if record.get("protocol") == "opcua" else 2
    for prefix in ("", "would_"):
        code = record.get(f"{prefix}code")
        if isinstance(code, int) and record.get(f"{prefix}code_hex") != f"0x{code:0{digits}X}":
            found.append(f"{event}: {prefix}code_hex {record.get(f'{prefix}code_hex')!r} is not {code}")
    return found


# ------------------------------------------------------------------------------------ the docs


def _table(header: str, rows: Sequence[tuple[str, ...]]) -> str:
    lines = [header, "|" + "---|" * header.count("|", 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render() -> str:
    """The field tables of docs/audit.md, as Markdown."""
    parts = ["### Fields of every session record", ""]
    session_rows = [
        (f"`{f.name}`", f.type_text, f.meaning)
        for group in (
            ENVELOPE,
            SESSION,
            DECISION,
            AGGREGATE,
            PROTOCOL_ERROR,
            SESSION_START,
            SESSION_END,
            UPSTREAM,
        )
        for f in group.values()
    ]
    parts += [_table("| field | type | meaning |", session_rows), ""]
    parts += ["### Which event carries which", ""]
    event_rows = []
    for event, groups in SESSION_EVENTS.items():
        only = _ONLY.get(event)
        names = [name for group in groups for name in group if only is None or name in only]
        if event in ("decision", "protocol_error"):
            names.append("target fields")
        required = ", ".join(f"`{n}`" for n in _REQUIRED[event])
        event_rows.append((f"`{event}`", ", ".join(f"`{n}`" if " " not in n else n for n in names), required))
    parts += [
        _table("| event | fields (besides `time`, `gateway`, `event`) | always present |", event_rows),
        "",
    ]
    parts += ["### Target fields, by protocol", ""]
    target_rows = [
        (f"`{name}`", *("✓" if protocol in ps else "" for protocol in PROTOCOLS), _ALL_TARGET[name].type_text,
         meaning)
        for name, ps, _types, meaning in _TARGET_ROWS
    ]  # fmt: skip
    parts += [_table("| field | modbus | enip | opcua | type | meaning |", target_rows), ""]
    parts += ["### Records of the gateway itself", ""]
    gateway_rows = [
        (f"`{event}`", ", ".join(f"`{name}`" for name in fields) or "—")
        for event, fields in GATEWAY_EVENTS.items()
    ]
    parts += [_table("| event | fields (besides `time`, `gateway`, `event`) |", gateway_rows), ""]
    parts += ["### Records of the center", ""]
    parts += [
        _table(
            "| field | type | meaning |",
            [(f"`{f.name}`", f.type_text, f.meaning) for f in CENTER_ENVELOPE.values()],
        ),
        "",
    ]
    center_rows = [
        (f"`{event}`", ", ".join(f"`{name}`" for name in fields) or "—")
        for event, fields in CENTER_EVENTS.items()
    ]
    parts += [
        _table("| event | fields (besides `time`, `center`, `event`, `seq`, `identity`) |", center_rows)
    ]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(render(), end="")
