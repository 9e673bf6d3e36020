"""Just-in-time grants: what a vendor asks for, checked against the policy's ``[vendor_access]``, and
the rule an approved grant becomes in the policy the center signs.

A request names its operations in the policy's Modbus vocabulary, comma-separated:

- ``read 40001-40100``: function codes 1, 2, 3 and 4 on those addresses;
- ``write 40010 0..1500``: registers, function codes 6 and 16, on those addresses, writing values
  inside the bounds (no bounds: any value);
- ``write-coils 0-15``: coils, function codes 5 and 15 (bounds 0..1 if any);
- ``fc 3 40001-40100``, ``fc 6,16 40010 0..1500``: the function codes named.

Addresses are the policy's wire addresses (``address`` of a rule entry); ranges are written ``A-B`` or
``A..B``. Each operation must lie inside one entry of ``[vendor_access].modbus`` for each of its
function codes: fc, address span and written values.

An approved grant is a ``[[rules]]`` table with the grant's id, the vendor's id as its only subject,
the asset, the period ``when = { from, until }`` and the operations. The center keeps the policy an
admin pushes apart from the grants: every revision it signs is the admin's text, then
:data:`GRANTS_MARKER`, then the rules of the grants in force (:func:`compose`), so that an admin's
push keeps the grants and a grant keeps the admin's text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.locks import LockError, check_reason
from policies import Policy
from policies.model import ModbusEntry

__all__ = [
    "GRANTS_MARKER",
    "GRANT_STATES",
    "MAX_OPS_CHARS",
    "GrantError",
    "Operation",
    "admin_text",
    "check_grant_reason",
    "check_request",
    "compose",
    "parse_ops",
    "render_rule",
]

GRANTS_MARKER = "# ---- just-in-time grants: written by the center on every revision, do not edit ----"
GRANT_STATES = ("pending", "approved", "denied", "refused", "revoked", "expired")
MAX_OPS_CHARS = 1000
MAX_OPS = 32
_VERBS: dict[str, frozenset[int]] = {
    "read": frozenset((1, 2, 3, 4)),
    "write": frozenset((6, 16)),
    "write-coils": frozenset((5, 15)),
}
_WRITES = frozenset((5, 6, 15, 16))
_RANGE = re.compile(r"(\d{1,5})(?:(?:-|\.\.)(\d{1,5}))?")
_CODES = re.compile(r"\d{1,3}(?:,\d{1,3})*")


class GrantError(ValueError):
    """A request that cannot be granted as asked; the message says why. ``status`` 400: malformed or
    naming what does not exist; 403: outside what ``[vendor_access]`` lets be asked for."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def check_grant_reason(reason: str) -> str:
    try:
        return check_reason(reason, needs="a grant request (and a denial)")
    except LockError as exc:
        raise GrantError(str(exc)) from None


@dataclass(frozen=True)
class Operation:
    """One operation asked for: function codes on an address span, and bounds of written values."""

    text: str
    codes: frozenset[int]
    addresses: tuple[int, int]
    values: tuple[int, int] | None

    def entry(self) -> dict[str, Any]:
        low, high = self.addresses
        entry: dict[str, Any] = {"fc": sorted(self.codes), "address": _span(low, high)}
        if self.values is not None:
            entry["value"] = _span(*self.values)
        return entry


def _span(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}-{high}"


def _range(text: str, what: str, high_bound: int, item: str) -> tuple[int, int]:
    match = _RANGE.fullmatch(text)
    if match is None:
        raise GrantError(f"{item!r}: {what} {text!r} is not a number or a range A-B")
    low = int(match[1])
    high = low if match[2] is None else int(match[2])
    if not low <= high <= high_bound:
        raise GrantError(f"{item!r}: {what} {text!r} must be a range inside 0..{high_bound}")
    return low, high


def parse_ops(text: str) -> list[Operation]:
    """``"read 40001-40100, write 40010 0..1500"`` -> operations; raises :class:`GrantError`."""
    if len(text) > MAX_OPS_CHARS:
        raise GrantError(f"ops of {len(text)} characters: at most {MAX_OPS_CHARS}")
    items = [item.strip() for item in text.split(",")]
    # "fc 6,16 ..." has a comma of its own: glue a bare list of codes back onto its item.
    merged: list[str] = []
    for item in items:
        if merged and merged[-1].startswith("fc ") and _CODES.fullmatch(merged[-1][3:].strip()):
            merged[-1] += "," + item
        else:
            merged.append(item)
    operations = [_operation(item) for item in merged if item]
    if not operations:
        raise GrantError('no operations: expected e.g. "read 40001-40100, write 40010 0..1500"')
    if len(operations) > MAX_OPS:
        raise GrantError(f"{len(operations)} operations: at most {MAX_OPS}")
    return operations


def _operation(item: str) -> Operation:
    words = item.split()
    if words[0] == "fc" and len(words) >= 3:
        codes = frozenset(int(code) for code in words[1].split(",") if code.isdigit())
        if not words[1].replace(",", "").isdigit() or not all(1 <= code <= 127 for code in codes):
            raise GrantError(f"{item!r}: expected function codes 1..127 after fc, e.g. fc 6,16")
        rest = words[2:]
    elif words[0] in _VERBS:
        codes, rest = _VERBS[words[0]], words[1:]
    else:
        raise GrantError(
            f"{item!r}: expected read, write or write-coils ADDRESSES [LOW..HIGH], or fc CODES ADDRESSES"
        )
    if not rest or len(rest) > 2:
        raise GrantError(f"{item!r}: expected the addresses, then (for writes) the bounds of written values")
    addresses = _range(rest[0], "address", 65535, item)
    values = None
    if len(rest) == 2:
        if not codes & _WRITES:
            raise GrantError(f"{item!r}: value bounds go with writes only")
        values = _range(rest[1], "values", 65535, item)
    return Operation(item, codes, addresses, values)


def _covers(entry: ModbusEntry, code: int, op: Operation) -> bool:
    if code not in entry.function_codes:
        return False
    if entry.addresses is not None and not entry.addresses.contains_span(*op.addresses):
        return False
    if entry.values is None or code not in _WRITES:
        return True
    return op.values is not None and entry.values.contains_span(*op.values)


def check_request(
    policy: Policy, requester: str, asset: str, protocol: str, operations: list[Operation], window_s: float
) -> int:
    """Whether ``[vendor_access]`` of ``policy`` lets ``requester`` ask for this; returns how many
    approvers the grant needs. Raises :class:`GrantError` naming what is outside it."""
    found = policy.assets.get(asset)
    if found is None:
        raise GrantError(f"unknown asset {asset!r}")
    if found.protocol != protocol:
        raise GrantError(f"asset {asset} speaks {found.protocol}, not {protocol}")
    access = policy.vendor_access
    if access is None:
        raise GrantError("the policy has no [vendor_access]: nothing may be asked for", 403)
    if not policy.may_request_grant(requester):
        raise GrantError(f"{requester} is not among the [vendor_access] subjects", 403)
    if "*" not in access.assets and asset not in access.assets:
        allowed = ", ".join(access.assets)
        raise GrantError(f"asset {asset} is not among the [vendor_access] assets ({allowed})", 403)
    if protocol != "modbus":
        raise GrantError(f"grants name Modbus operations only; asset {asset} speaks {protocol}", 400)
    if window_s > access.max_window_s:
        longest = access.max_window_s
        raise GrantError(
            f"a window of {window_s:g} s is longer than [vendor_access] allows ({longest:g} s)", 403
        )
    for op in operations:
        for code in sorted(op.codes):
            if not any(_covers(entry, code, op) for entry in access.modbus):
                outside = f"{op.text!r}: FC {code} there is outside what [vendor_access] lets be asked for"
                raise GrantError(outside, 403)
    return access.approvers


def _instant(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def _toml_string(text: str) -> str:
    # A JSON string is a TOML basic string for everything orjson writes (it escapes controls as \\uXXXX).
    return orjson.dumps(text).decode()


def render_rule(grant: dict[str, Any]) -> str:
    """The ``[[rules]]`` table of an approved grant (a row of the center's ``grants`` table)."""
    entries = ", ".join(
        "{ " + ", ".join(f"{key} = {_toml_value(value)}" for key, value in op.entry().items()) + " }"
        for op in parse_ops(grant["ops"])
    )
    description = f"grant {grant['id']} to {grant['requester']}: {grant['reason']}"
    start, end = _instant(float(grant["not_before"])), _instant(float(grant["not_after"]))
    return (
        "\n[[rules]]\n"
        f"id = {_toml_string(grant['id'])}\n"
        f"description = {_toml_string(description)}\n"
        f"subjects = [{_toml_string(grant['requester'])}]\n"
        f"assets = [{_toml_string(grant['asset'])}]\n"
        f"when = {{ from = {start}, until = {end} }}\n"
        f"modbus = [{entries}]\n"
    )


def _toml_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(str(item) for item in value) + "]"
    return _toml_string(str(value))


def admin_text(text: str) -> str:
    """The part of a revision an admin wrote: everything before :data:`GRANTS_MARKER`."""
    head, marker, _ = text.partition(GRANTS_MARKER)
    return head.rstrip("\n") + "\n" if marker else head


def compose(admin: str, grants: list[dict[str, Any]]) -> str:
    """The policy text the center signs: the admin's text and the rules of ``grants``."""
    text = admin_text(admin)
    if not grants:
        return text
    rules = "".join(render_rule(grant) for grant in grants)
    return text.rstrip("\n") + "\n\n" + GRANTS_MARKER + "\n" + rules
