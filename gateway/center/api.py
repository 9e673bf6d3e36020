"""The center's JSON API: one table of routes, each with the roles that may call it, and the handlers.

Authentication and the role check happen before a handler runs (:mod:`gateway.center.app`); a handler
gets the caller's identity and role from the request. Two routes take no client certificate: the
center's public description (what ``ztgate enroll`` compares with the fingerprint) and enrollment
itself, which a one-time token authenticates instead. docs/center-openapi.json documents every route
of :data:`ROUTES`; a test keeps the two in step.

Bad input never changes anything: a body is read whole (up to ``max_body_bytes``), parsed, checked
field by field (unknown fields refused) before a handler touches the store.
"""

from __future__ import annotations

import asyncio
import math
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.center.authority import Authority, CsrError
from gateway.center.config import CenterConfig
from gateway.center.grants import (
    GRANT_STATES,
    GrantError,
    check_grant_reason,
    check_request,
    compose,
)
from gateway.center.store import (
    ROLES,
    GrantStateError,
    PolicyRevision,
    Store,
    TokenError,
    unified_diff,
)
from gateway.center.stream import Hub, Publisher, parse_cursors, serve_stream
from gateway.locks import Lock, LockError, check_reason, parse_target
from gateway.policy_tests import TestOutcome, failures_text, run_tests
from policies import Policy, PolicyError, parse_policy
from policies.spiffe import IdentityError, parse_spiffe_id

__all__ = ["PUBLIC", "ROUTES", "SERVICES", "TOKEN", "ApiError", "Caller", "Route", "Services"]

PUBLIC = "public"  # no certificate, no token: the center's public description
TOKEN = "token"  # no certificate: a one-time enrollment token in the body
READERS = frozenset({"admin", "approver", "viewer"})
LOCKERS = frozenset({"admin", "approver"})
MAX_LOCK_TTL_S = 366 * 86400.0
# Who may ask for a just-in-time grant (the policy's [vendor_access] says which ids): never approve
# their own request, whatever their role.
REQUESTERS = frozenset({"vendor", "user", "approver", "admin"})
MAX_GRANT_START_SKEW_S = 300.0  # a window may start this much in the past (clocks disagree)
MAX_GRANT_LEAD_S = 30 * 86400.0  # and at most this far ahead
_COMPOSE_ATTEMPTS = 5
_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{0,252}")
_GRANT_KEYS = (
    "id",
    "state",
    "requester",
    "asset",
    "protocol",
    "ops",
    "reason",
    "not_before",
    "not_after",
    "approvers_needed",
    "approvals",
    "created_at",
    "decided_at",
    "decided_by",
    "decision",
    "lock_id",
)
RENEWERS = frozenset({"gateway", "agent"})  # users and vendors enroll again; their certificates end
TOKEN_PREFIX = "ztg1_"
_TOKEN_REFUSALS = {
    "unknown": "unknown token",
    "used": "the token was already used",
    "expired": "the token has expired",
}


@dataclass(frozen=True)
class Caller:
    """Who is calling, as the certificate proves and the store's role says (None on public and token
    routes)."""

    identity: str
    role: str


Handler = Callable[[web.Request, Caller | None], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """Answered as ``{"error": {"status", "message", ...}}`` with ``status``; nothing was changed."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


@dataclass
class Services:
    config: CenterConfig
    store: Store
    authority: Authority
    publisher: Publisher
    hub: Hub


SERVICES: web.AppKey[Services] = web.AppKey("services")


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    access: frozenset[str] | str  # roles, or PUBLIC / TOKEN
    handler: Handler


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(body, option=orjson.OPT_INDENT_2), status=status, content_type="application/json"
    )


def _services(request: web.Request) -> Services:
    return request.app[SERVICES]


def _who(caller: Caller | None) -> Caller:
    assert caller is not None, "a route with roles runs with a caller"
    return caller


# ---------------------------------------------------------------------------------------- input


Fields = Mapping[str, tuple[type, ...]]


async def read_body(request: web.Request, fields: Fields, required: tuple[str, ...]) -> dict[str, Any]:
    """The request's JSON object, with exactly the known fields of the right types."""
    if request.content_type != "application/json":
        raise ApiError(
            415, f"expected a JSON body (Content-Type application/json), got {request.content_type}"
        )
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"malformed JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "expected a JSON object")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise ApiError(400, f"unknown fields: {', '.join(unknown)} (known: {', '.join(fields)})")
    missing = [name for name in required if name not in body]
    if missing:
        raise ApiError(400, f"missing fields: {', '.join(missing)}")
    for name, value in body.items():
        types = fields[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ApiError(400, f"field {name!r}: expected {' or '.join(t.__name__ for t in types)}")
    return body


def read_query(request: web.Request, known: tuple[str, ...]) -> dict[str, str]:
    unknown = sorted(set(request.query) - set(known))
    if unknown:
        raise ApiError(400, f"unknown query parameters: {', '.join(unknown)}")
    return {key: request.query[key] for key in known if key in request.query}


def _revision(text: str, what: str) -> int:
    if not text.isdigit() or len(text) > 18:
        raise ApiError(400, f"{what} {text!r}: expected a revision number")
    return int(text)


# ------------------------------------------------------------------------------------ enrollment


async def info(request: web.Request, caller: Caller | None) -> web.Response:
    s = _services(request)
    return json_response(
        {
            "trust_domain": s.authority.trust_domain,
            "center_id": str(s.authority.center_id),
            "url": s.config.url,
            "signing_keys": s.authority.signing_keys(),
            "fingerprint": s.authority.fingerprint(),
            "ca": s.authority.trust_bundle(),
        }
    )


async def _token_refused(s: Services, request: web.Request, error: TokenError, step: str) -> ApiError:
    detail: dict[str, Any] = {"reason": error.reason, "step": step, "peer": request.remote}
    if error.row is not None:
        detail["id"] = error.row["id"]
    await s.store.audit("enroll_refused", None, detail)
    return ApiError(403, _TOKEN_REFUSALS[error.reason])


async def enroll_describe(request: web.Request, caller: Caller | None) -> web.Response:
    """Who a token enrolls, so ``ztgate enroll`` can make the CSR; does not use the token up."""
    s = _services(request)
    body = await read_body(request, {"token": (str,)}, ("token",))
    try:
        row = await s.store.token(body["token"])
    except TokenError as error:
        raise await _token_refused(s, request, error, "describe") from None
    return json_response({"id": row["id"], "role": row["role"], "expires_at": row["expires_at"]})


def _certificate_answer(s: Services, certificate: x509.Certificate, role: str) -> dict[str, Any]:
    return {
        "certificate": certificate.public_bytes(serialization.Encoding.PEM).decode(),
        "ca": s.authority.trust_bundle(),
        "role": role,
        "not_before": certificate.not_valid_before_utc.timestamp(),
        "not_after": certificate.not_valid_after_utc.timestamp(),
        "center_id": str(s.authority.center_id),
        "signing_keys": s.authority.signing_keys(),
    }


async def enroll(request: web.Request, caller: Caller | None) -> web.Response:
    """Use a token: sign the CSR for the token's id. Any attempt with a valid token uses it up, so a
    token cannot be tried against several CSRs."""
    s = _services(request)
    body = await read_body(request, {"token": (str,), "csr": (str,)}, ("token", "csr"))
    refused: CsrError | None = None
    try:
        async with s.store.db.transaction() as tx:
            row = await s.store.use_token(body["token"], str(request.remote), tx)
            identity, role = str(row["id"]), str(row["role"])
            try:
                sid, key = s.authority.check_csr(body["csr"], identity)
            except CsrError as exc:
                refused = exc
                detail = {"reason": "csr", "message": str(exc), "id": identity, "peer": request.remote}
                await s.store.audit("enroll_refused", None, detail, tx)
            else:
                certificate = s.authority.issue(sid, key, s.config.lifetime(sid.kind))
                await s.store.put_identity(identity, role, f"token from {row['created_by']}", tx)
                await _record(s, certificate, identity, "enroll", tx)
                await s.store.audit("enrolled", identity, {"role": role, "peer": request.remote}, tx)
    except TokenError as error:
        raise await _token_refused(s, request, error, "enroll") from None
    if refused is not None:
        raise ApiError(400, f"CSR refused: {refused}")
    return json_response({"id": identity, **_certificate_answer(s, certificate, role)})


async def _record(s: Services, certificate: x509.Certificate, identity: str, reason: str, tx: Any) -> None:
    await s.store.record_certificate(
        certificate.serial_number,
        identity,
        certificate.not_valid_before_utc.timestamp(),
        certificate.not_valid_after_utc.timestamp(),
        reason,
        tx,
    )


async def renew(request: web.Request, caller: Caller | None) -> web.Response:
    """A new certificate for the caller's own id and a new key, over the caller's current certificate."""
    s = _services(request)
    body = await read_body(request, {"csr": (str,)}, ("csr",))
    identity = _who(caller).identity
    for lock in await s.store.locks():
        if lock.covers_identity(identity):
            await s.store.audit("renew_refused", identity, {"lock": lock.id, "reason": lock.reason})
            raise ApiError(403, f"{identity} is locked (lock {lock.id}): {lock.reason}")
    try:
        sid, key = s.authority.check_csr(body["csr"], identity)
    except CsrError as exc:
        await s.store.audit("renew_refused", identity, {"message": str(exc)})
        raise ApiError(400, f"CSR refused: {exc}") from None
    certificate = s.authority.issue(sid, key, s.config.lifetime(sid.kind))
    async with s.store.db.transaction() as tx:
        await _record(s, certificate, identity, "renew", tx)
        await s.store.audit("renewed", identity, {"serial": f"{certificate.serial_number:x}"}, tx)
    return json_response(_certificate_answer(s, certificate, _who(caller).role))


# ------------------------------------------------------------------------------ administration


async def whoami(request: web.Request, caller: Caller | None) -> web.Response:
    return json_response({"id": _who(caller).identity, "role": _who(caller).role})


def _identity_for(s: Services, text: str, role: str) -> str:
    try:
        sid = parse_spiffe_id(text)
    except IdentityError as exc:
        raise ApiError(400, str(exc)) from None
    if sid.trust_domain != s.authority.trust_domain:
        raise ApiError(400, f"{text} is not in trust domain {s.authority.trust_domain}")
    if role not in ROLES:
        raise ApiError(400, f"unknown role {role!r} (roles: {', '.join(ROLES)})")
    if sid.kind != ROLES[role]:
        raise ApiError(
            400, f"role {role} is for {ROLES[role]} ids (spiffe://td/{ROLES[role]}/...), not {text}"
        )
    return str(sid)


async def create_token(request: web.Request, caller: Caller | None) -> web.Response:
    s = _services(request)
    body = await read_body(
        request, {"role": (str,), "id": (str,), "ttl_s": (int, float)}, ("role", "id", "ttl_s")
    )
    identity = _identity_for(s, body["id"], body["role"])
    ttl_s = float(body["ttl_s"])
    if not 0 < ttl_s <= s.config.token_max_ttl_s:
        raise ApiError(400, f"ttl_s must be in (0, {s.config.token_max_ttl_s:g}]")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires_at = await s.store.create_token(token, identity, body["role"], ttl_s, _who(caller).identity)
    await s.store.audit(
        "token_created", _who(caller).identity, {"id": identity, "role": body["role"], "ttl_s": ttl_s}
    )
    return json_response(
        {
            "token": token,
            "id": identity,
            "role": body["role"],
            "expires_at": expires_at,
            "center": s.config.url,
            "fingerprint": s.authority.fingerprint(),
        },
        201,
    )


async def list_identities(request: web.Request, caller: Caller | None) -> web.Response:
    return json_response({"identities": await _services(request).store.identities()})


async def set_identity(request: web.Request, caller: Caller | None) -> web.Response:
    s = _services(request)
    body = await read_body(request, {"id": (str,), "role": (str,)}, ("id", "role"))
    identity = _identity_for(s, body["id"], body["role"])
    await s.store.put_identity(identity, body["role"], _who(caller).identity)
    await s.store.audit("role_set", _who(caller).identity, {"id": identity, "role": body["role"]})
    return json_response({"id": identity, "role": body["role"]})


async def audit_log(request: web.Request, caller: Caller | None) -> web.Response:
    query = read_query(request, ("after", "limit"))
    after = _revision(query.get("after", "0"), "after")
    limit = min(_revision(query.get("limit", "1000"), "limit"), 10_000)
    return json_response({"events": await _services(request).store.audit_log(after, limit)})


# ------------------------------------------------------------------------------------- policy


def _checked(text: str) -> tuple[Policy, list[TestOutcome]]:
    policy = parse_policy(text, "policy.toml")
    return policy, run_tests(policy)


async def _validate(s: Services, text: str) -> None:
    """Exactly what ``ztgate policy check`` does (the policy's own tests too), and the trust domain
    must be the center's."""
    try:
        policy, outcomes = await asyncio.get_running_loop().run_in_executor(None, _checked, text)
    except PolicyError as error:
        issues = [
            {"line": i.line, "column": i.column, "path": i.path, "message": i.message} for i in error.issues
        ]
        raise ApiError(422, f"policy refused:\n{error}", issues=issues) from None
    if policy.trust_domain != s.authority.trust_domain:
        raise ApiError(
            422,
            f"the policy is for trust domain {policy.trust_domain}, "
            f"the center for {s.authority.trust_domain}",
        )
    failed = [outcome for outcome in outcomes if not outcome.passed]
    if failed:
        tests = [
            {
                "name": o.test.name,
                "index": o.test.index,
                "expect": o.test.expect,
                "expect_rule": o.test.rule,
                "got": o.verdict,
                "rule": o.rule,
                "note": o.note,
            }
            for o in failed
        ]
        message = f"policy refused: {len(failed)} of {len(outcomes)} policy test(s) failed:\n"
        raise ApiError(422, message + failures_text(outcomes), tests=tests)


def _pushed(revision: PolicyRevision, previous: int) -> web.Response:
    return json_response({**revision.summary(), "previous": previous, "diff": revision.diff}, 201)


async def _push_composed(
    s: Services, admin: str, author: str, comment: str, rollback_of: int | None = None
) -> PolicyRevision:
    """Push the admin's text with the rules of the grants in force (gateway/center/grants.py), as
    validated; composed again if another revision came first meanwhile."""
    for _ in range(_COMPOSE_ATTEMPTS):
        head = (await s.store.heads())["policy"]
        text = compose(admin, await s.store.grants_in_force())
        await _validate(s, text)
        pushed = await s.store.push_policy(text, author, comment, rollback_of, after=head)
        if pushed is not None:
            return pushed
    raise ApiError(503, "other revisions kept coming first; try again")


async def push_policy(request: web.Request, caller: Caller | None) -> web.Response:
    s = _services(request)
    body = await read_body(request, {"policy": (str,), "comment": (str,)}, ("policy",))
    pushed = await _push_composed(s, body["policy"], _who(caller).identity, body.get("comment", ""))
    return _pushed(pushed, pushed.revision - 1)


async def rollback_policy(request: web.Request, caller: Caller | None) -> web.Response:
    s = _services(request)
    body = await read_body(request, {"revision": (int,), "comment": (str,)}, ("revision",))
    target = await s.store.policy_revision(body["revision"])
    if target is None:
        raise ApiError(404, f"no policy revision {body['revision']}")
    # Validated again (the trust domain may have changed since), with the grants in force now.
    comment = body.get("comment", f"rollback to revision {target.revision}")
    pushed = await _push_composed(s, target.policy, _who(caller).identity, comment, target.revision)
    return _pushed(pushed, pushed.revision - 1)


async def policy_log(request: web.Request, caller: Caller | None) -> web.Response:
    query = read_query(request, ("limit",))
    limit = min(_revision(query.get("limit", "100"), "limit"), 10_000)
    revisions = await _services(request).store.policy_log(limit)
    return json_response({"revisions": [r.summary() for r in revisions]})


async def _existing(s: Services, text: str) -> PolicyRevision:
    found = await s.store.policy_revision(_revision(text, "revision"))
    if found is None:
        raise ApiError(404, f"no policy revision {text}")
    return found


async def show_policy(request: web.Request, caller: Caller | None) -> web.Response:
    found = await _existing(_services(request), request.match_info["revision"])
    return json_response({**found.summary(), "policy": found.policy, "diff": found.diff})


async def diff_policy(request: web.Request, caller: Caller | None) -> web.Response:
    s = _services(request)
    query = read_query(request, ("from", "to"))
    if set(query) != {"from", "to"}:
        raise ApiError(400, "give both from and to revisions")
    before, after = await _existing(s, query["from"]), await _existing(s, query["to"])
    diff = unified_diff(
        before.policy, after.policy, f"revision {before.revision}", f"revision {after.revision}"
    )
    return json_response({"from": before.revision, "to": after.revision, "diff": diff})


# -------------------------------------------------------------------------------------- locks


def _new_lock(s: Services, caller: Caller | None, target: str, reason: str) -> Lock:
    """A lock the caller makes now, with no end yet: its target and reason checked (400 otherwise)."""
    try:
        kind, value = parse_target(target, s.authority.trust_domain)
        reason = check_reason(reason)
    except LockError as exc:
        raise ApiError(400, str(exc)) from None
    return Lock(
        id="lk-" + secrets.token_hex(6),
        kind=kind,
        value=value,
        reason=reason,
        created_by=_who(caller).identity,
        created_at=s.store.clock(),
        expires_at=None,
    )


async def create_lock(request: web.Request, caller: Caller | None) -> web.Response:
    s = _services(request)
    body = await read_body(
        request, {"target": (str,), "reason": (str,), "ttl_s": (int, float)}, ("target", "reason")
    )
    lock = _new_lock(s, caller, body["target"], body["reason"])
    ttl_s = body.get("ttl_s")
    if ttl_s is not None:
        if not 0 < float(ttl_s) <= MAX_LOCK_TTL_S:
            raise ApiError(400, f"ttl_s must be in (0, {MAX_LOCK_TTL_S:g}]")
        lock = replace(lock, expires_at=lock.created_at + float(ttl_s))
    await s.store.create_lock(lock)
    return json_response(lock.to_json(), 201)


async def list_locks(request: web.Request, caller: Caller | None) -> web.Response:
    return json_response({"locks": [lock.to_json() for lock in await _services(request).store.locks()]})


async def remove_lock(request: web.Request, caller: Caller | None) -> web.Response:
    lock_id = request.match_info["lock"]
    removed = await _services(request).store.remove_lock(lock_id, _who(caller).identity)
    if removed is None:
        raise ApiError(404, f"no lock {lock_id[:40]!r} in force")
    return json_response(removed.to_json())


# ------------------------------------------------------------------------ just-in-time grants


def _grant_answer(grant: dict[str, Any]) -> dict[str, Any]:
    return {key: grant.get(key) for key in _GRANT_KEYS}


async def _current_policy(s: Services) -> tuple[int, Policy]:
    head = (await s.store.heads())["policy"]
    found = await s.store.policy_revision(head)
    if found is None:
        raise ApiError(409, "no policy has been pushed yet: nothing may be granted")
    return head, parse_policy(found.policy, f"revision {head}")


async def request_access(request: web.Request, caller: Caller | None) -> web.Response:
    """A vendor asks for a grant; checked against ``[vendor_access]`` of the policy in force."""
    s = _services(request)
    body = await read_body(
        request,
        {
            "asset": (str,),
            "protocol": (str,),
            "ops": (str,),
            "from": (int, float),
            "for_s": (int, float),
            "reason": (str,),
        },
        ("asset", "protocol", "ops", "for_s", "reason"),
    )
    requester = _who(caller).identity
    now = s.store.clock()
    start, window_s = float(body.get("from", now)), float(body["for_s"])
    if not (math.isfinite(start) and math.isfinite(window_s)) or window_s <= 0:
        raise ApiError(400, "malformed window: for_s must be a number of seconds above 0, from a time")
    if start < now - MAX_GRANT_START_SKEW_S:
        raise ApiError(400, f"malformed window: it starts {now - start:.0f} s in the past")
    if start > now + MAX_GRANT_LEAD_S:
        raise ApiError(400, f"malformed window: it starts more than {MAX_GRANT_LEAD_S / 86400:g} days ahead")
    try:
        reason = check_grant_reason(body["reason"])
    except GrantError as exc:
        raise ApiError(400, str(exc)) from None
    if _NAME.fullmatch(body["asset"]) is None:
        raise ApiError(400, f"unknown asset {body['asset'][:80]!r}")
    _, policy = await _current_policy(s)
    try:
        needed, operations = check_request(
            policy, requester, body["asset"], body["protocol"], body["ops"], window_s
        )
    except GrantError as exc:
        if exc.status == 403:
            detail = {"asset": body["asset"], "ops": body["ops"], "for_s": window_s, "reason": str(exc)}
            await s.store.audit("grant_request_refused", requester, detail)
        raise ApiError(exc.status, str(exc)) from None
    # The window ends on a whole second, as the certificate for it does (X.509 times are whole
    # seconds): the gateway's cut at the grant's end and the certificate's end are the same instant.
    not_after = float(math.floor(max(start, now) + window_s))
    if not_after <= max(start, now):
        raise ApiError(400, "malformed window: it ends before its first whole second")
    grant = {
        "id": "gr-" + secrets.token_hex(6),
        "requester": requester,
        "asset": body["asset"],
        "protocol": body["protocol"],
        "ops": ", ".join(op.text for op in operations),
        "reason": reason,
        "not_before": max(start, now),
        "not_after": not_after,
        "approvers_needed": needed,
        "created_at": now,
    }
    await s.store.create_grant(grant)
    found = await s.store.grant(grant["id"])
    assert found is not None
    return json_response(_grant_answer(found), 201)


async def list_access(request: web.Request, caller: Caller | None) -> web.Response:
    """Pending requests by default (``?state=all`` or a state); a vendor sees its own only."""
    query = read_query(request, ("state",))
    state = query.get("state", "pending")
    if state != "all" and state not in GRANT_STATES:
        raise ApiError(400, f"state {state[:40]!r}: one of all, {', '.join(GRANT_STATES)}")
    who = _who(caller)
    mine = who.identity if who.role not in READERS else None
    states = () if state == "all" else (state,)
    grants = await _services(request).store.grants(states, mine)
    return json_response({"grants": [_grant_answer(g) for g in grants]})


async def approve_access(request: web.Request, caller: Caller | None) -> web.Response:
    """One approval; the last one needed makes the grant a rule in the next revision, if that revision
    passes the policy's tests (otherwise the grant is refused, naming the failed test)."""
    s = _services(request)
    await read_body(request, {}, ())
    grant_id, approver = request.match_info["grant"], _who(caller).identity
    try:
        grant = await s.store.approve_grant(grant_id, approver)
    except GrantStateError as exc:
        raise ApiError(exc.status, exc.message) from None
    if len(grant["approvals"]) < grant["approvers_needed"]:
        return json_response(_grant_answer(grant))
    for _ in range(_COMPOSE_ATTEMPTS):
        head = (await s.store.heads())["policy"]
        found = await s.store.policy_revision(head)
        assert found is not None, "a grant is only requested under a policy"
        text = compose(found.policy, [*await s.store.grants_in_force(), {**grant, "state": "approved"}])
        try:
            await _validate(s, text)
        except ApiError as refused:
            detail = {"tests": refused.extra.get("tests", []), "revision": head}
            try:
                await s.store.close_grant(grant_id, "refused", approver, refused.message, detail)
            except GrantStateError:
                pass
            raise ApiError(422, f"grant {grant_id} refused: {refused.message}", **refused.extra) from None
        try:
            pushed = await s.store.activate_grant(grant_id, approver, text, head)
        except GrantStateError as exc:
            raise ApiError(exc.status, exc.message) from None
        if pushed is not None:
            approved = await s.store.grant(grant_id)
            assert approved is not None
            return json_response({**_grant_answer(approved), "revision": pushed.revision})
    raise ApiError(503, "other revisions kept coming first; approve again")


async def deny_access(request: web.Request, caller: Caller | None) -> web.Response:
    s = _services(request)
    body = await read_body(request, {"reason": (str,)}, ())
    try:
        why = check_grant_reason(body.get("reason", "denied"))
        grant = await s.store.close_grant(request.match_info["grant"], "denied", _who(caller).identity, why)
    except GrantError as exc:
        raise ApiError(400, str(exc)) from None
    except GrantStateError as exc:
        raise ApiError(exc.status, exc.message) from None
    return json_response(_grant_answer(grant))


async def revoke_access(request: web.Request, caller: Caller | None) -> web.Response:
    """End a grant early with a lock on it (``grant=ID``): every gateway cuts its sessions at once."""
    s = _services(request)
    body = await read_body(request, {"reason": (str,)}, ("reason",))
    grant_id = request.match_info["grant"]
    lock = _new_lock(s, caller, f"grant={grant_id}", body["reason"])
    found = await s.store.grant(grant_id)
    if found is None:
        raise ApiError(404, f"no grant {grant_id[:40]!r}")
    # Until the grant's rule can no longer let anyone in; then the lock lifts itself.
    lock = replace(lock, expires_at=max(found["not_after"], lock.created_at) + 60.0)
    try:
        revoked = await s.store.revoke_grant(grant_id, lock)
    except GrantStateError as exc:
        raise ApiError(exc.status, exc.message) from None
    return json_response({**_grant_answer(revoked), "lock": lock.to_json()})


async def grant_certificate(request: web.Request, caller: Caller | None) -> web.Response:
    """The requester's certificate for an approved grant: it ends no later than the grant."""
    s = _services(request)
    body = await read_body(request, {"csr": (str,)}, ("csr",))
    who = _who(caller)
    grant = await s.store.grant(request.match_info["grant"])
    if grant is None or grant["requester"] != who.identity:
        raise ApiError(404, f"no grant {request.match_info['grant'][:40]!r} of {who.identity}")
    now = s.store.clock()
    if grant["state"] != "approved" or grant["not_after"] <= now:
        raise ApiError(409, f"grant {grant['id']} is not in force ({grant['state']})")
    for lock in await s.store.locks():
        if lock.covers_identity(who.identity) or lock.matches(who.identity, grant["asset"], (grant["id"],)):
            raise ApiError(403, f"{who.identity} is locked (lock {lock.id}): {lock.reason}")
    try:
        sid, key = s.authority.check_csr(body["csr"], who.identity)
    except CsrError as exc:
        raise ApiError(400, f"CSR refused: {exc}") from None
    # The grant ends on a whole second (request_access) and X.509 keeps whole seconds: the
    # certificate ends with the grant exactly, never after it, unless the kind's lifetime ends sooner.
    lifetime_s = s.config.lifetimes_s[sid.kind]
    if lifetime_s < grant["not_after"] - now:
        certificate = s.authority.issue(sid, key, timedelta(seconds=lifetime_s))
    else:
        grant_end = datetime.fromtimestamp(math.floor(grant["not_after"]), UTC)
        certificate = s.authority.issue(sid, key, None, not_after=grant_end)
    async with s.store.db.transaction() as tx:
        await _record(s, certificate, who.identity, f"grant {grant['id']}", tx)
        detail = {
            "id": grant["id"],
            "serial": f"{certificate.serial_number:x}",
            "not_after": grant["not_after"],
        }
        await s.store.audit("grant_certificate", who.identity, detail, tx)
    return json_response({"grant": grant["id"], **_certificate_answer(s, certificate, who.role)})


async def stream(request: web.Request, caller: Caller | None) -> web.StreamResponse:
    s = _services(request)
    try:
        held = parse_cursors(dict(request.query))
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    ws = web.WebSocketResponse(heartbeat=max(s.config.heartbeat_s * 2, 1.0), max_msg_size=4096)
    await ws.prepare(request)
    await s.store.audit("subscribed", _who(caller).identity, {"held": held, "peer": request.remote})
    try:
        await serve_stream(ws, held, s.store, s.publisher, s.hub, s.config.heartbeat_s)
    finally:
        await ws.close()
    return ws


ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/info", PUBLIC, info),
    Route("POST", "/v1/enroll/describe", TOKEN, enroll_describe),
    Route("POST", "/v1/enroll", TOKEN, enroll),
    Route("POST", "/v1/renew", RENEWERS, renew),
    Route("GET", "/v1/whoami", frozenset(ROLES), whoami),
    Route("POST", "/v1/tokens", frozenset({"admin"}), create_token),
    Route("GET", "/v1/identities", READERS, list_identities),
    Route("POST", "/v1/identities", frozenset({"admin"}), set_identity),
    Route("POST", "/v1/policy", frozenset({"admin"}), push_policy),
    Route("POST", "/v1/policy/rollback", frozenset({"admin"}), rollback_policy),
    Route("GET", "/v1/policy/revisions", READERS, policy_log),
    Route("GET", "/v1/policy/revisions/{revision}", READERS, show_policy),
    Route("GET", "/v1/policy/diff", READERS, diff_policy),
    Route("GET", "/v1/audit", READERS, audit_log),
    Route("POST", "/v1/locks", LOCKERS, create_lock),
    Route("GET", "/v1/locks", READERS, list_locks),
    Route("DELETE", "/v1/locks/{lock}", LOCKERS, remove_lock),
    Route("POST", "/v1/access", REQUESTERS, request_access),
    Route("GET", "/v1/access", REQUESTERS | READERS, list_access),
    Route("POST", "/v1/access/{grant}/approve", LOCKERS, approve_access),
    Route("POST", "/v1/access/{grant}/deny", LOCKERS, deny_access),
    Route("POST", "/v1/access/{grant}/revoke", LOCKERS, revoke_access),
    Route("POST", "/v1/access/{grant}/certificate", REQUESTERS, grant_certificate),
    Route("GET", "/v1/stream", frozenset({"gateway"}), stream),
)
