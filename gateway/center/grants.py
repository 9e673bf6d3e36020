"""Just-in-time grants: what a vendor asks for, checked against the policy's ``[vendor_access]``, and
the rule an approved grant becomes in the policy the center signs.

A request names its operations in the policy's vocabulary of the asset's protocol (gateway/center/
grant_ops.py): ``read 40001-40100, write 40010 0..1500`` on a Modbus asset, ``read Setpoint, Line1.*,
write Setpoint 0..1500`` on an EtherNet/IP one, ``read nsu=urn:plant1:line1;s=Line1.*, browse,
subscribe`` on an OPC UA one. Each operation must lie inside ``[vendor_access]``'s entries of that
protocol; the assets, the subjects, the longest window and the approvers are checked the same way for
all three.

An approved grant is a ``[[rules]]`` table with the grant's id, the vendor's id as its only subject,
the asset, the period ``when = { from, until }`` and the operations as entries of the protocol
(``modbus = [...]``, ``enip = [...]``, ``opcua = [...]``). The center keeps the policy an admin pushes
apart from the grants: every revision it signs is the admin's text, then :data:`GRANTS_MARKER`, then the
rules of the grants in force (:func:`compose`), so that an admin's push keeps the grants and a grant
keeps the admin's text.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.center.grant_ops import MAX_OPS_CHARS, PROTOCOLS, GrantError, Operation, parse_ops
from gateway.locks import LockError, check_reason
from policies import Policy

__all__ = [
    "GRANTS_MARKER",
    "GRANT_STATES",
    "MAX_OPS_CHARS",
    "PROTOCOLS",
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


def check_grant_reason(reason: str) -> str:
    try:
        return check_reason(reason, needs="a grant request (and a denial)")
    except LockError as exc:
        raise GrantError(str(exc)) from None


def check_request(
    policy: Policy, requester: str, asset: str, protocol: str, ops: str, window_s: float
) -> tuple[int, list[Operation]]:
    """Whether ``[vendor_access]`` of ``policy`` lets ``requester`` ask for ``ops`` on ``asset``; returns
    how many approvers the grant needs, and the operations. Raises :class:`GrantError`: 400 for what
    is malformed or does not exist (checked first), 403 naming what is outside ``[vendor_access]``."""
    found = policy.assets.get(asset)
    if found is None:
        raise GrantError(f"unknown asset {asset!r}")
    if found.protocol != protocol:
        raise GrantError(f"asset {asset} speaks {found.protocol}, not {protocol[:40]}")
    operations = parse_ops(ops, protocol)
    access = policy.vendor_access
    if access is None:
        raise GrantError("the policy has no [vendor_access]: nothing may be asked for", 403)
    if not policy.may_request_grant(requester):
        raise GrantError(f"{requester} is not among the [vendor_access] subjects", 403)
    if "*" not in access.assets and asset not in access.assets:
        allowed = ", ".join(access.assets)
        raise GrantError(f"asset {asset} is not among the [vendor_access] assets ({allowed})", 403)
    if window_s > access.max_window_s:
        longest = access.max_window_s
        raise GrantError(
            f"a window of {window_s:g} s is longer than [vendor_access] allows ({longest:g} s)", 403
        )
    for op in operations:
        outside = op.outside(protocol, access)
        if outside:
            what = ", ".join(outside)
            raise GrantError(
                f"{op.text!r}: {what} there is outside what [vendor_access] lets be asked for", 403
            )
    return access.approvers, operations


def _instant(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def _toml_string(text: str) -> str:
    # A JSON string is a TOML basic string for everything orjson writes (it escapes controls as \\uXXXX).
    return orjson.dumps(text).decode()


def render_rule(grant: dict[str, Any]) -> str:
    """The ``[[rules]]`` table of an approved grant (a row of the center's ``grants`` table)."""
    protocol = grant["protocol"]
    entries = ", ".join(
        "{ " + ", ".join(f"{key} = {_toml_value(value)}" for key, value in op.fields.items()) + " }"
        for op in parse_ops(grant["ops"], protocol)
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
        f"{protocol} = [{entries}]\n"
    )


def _toml_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, int):
        return str(value)
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
