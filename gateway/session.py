"""What every overlay session does whatever its protocol: bookkeeping, audit of its start and end,
the decision record and the refusal path (count, audit, then answer, drop or close), protocol errors,
the batched write to the client, continuous validation against the current policy and the client
certificate's expiry, and the backpressure switches between the client's transport and its requests.

The record fields are documented once, in ``docs/audit.md``, and held to it by ``gateway/audit_schema.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from time import monotonic
from typing import Any, ClassVar, cast

from mypy_extensions import mypyc_attr

from gateway.locks import Lock, LockSet
from gateway.pacing import TokenBucket
from gateway.refusals import SessionRefusals
from gateway.runtime import Runtime
from policies import Decision, Policy, SubjectView
from policies.model import Rule
from policies.timewindow import Period

_CERTIFICATE_ROUNDING_S = 1.0  # X.509 times are whole seconds
PACED = "local answers budget"  # why a session stopped reading, while it pays for its local answers
QUEUE_SHARE = "queue share"  # why it stopped reading, while a request waits past its identity's share
# The fields of a refusal record that are the same for every request of its kind: what an aggregate of
# refusals carries, with the protocol's kind fields (Session.kind_fields).
_KIND_SUMMARY = ("event", "session", "identity", "asset", "protocol", "policy_revision", "decision", "rule",
                 "action", "code", "code_name", "code_hex", "outcome")  # fmt: skip


def session_denial_reason(rule: Rule) -> str:
    return rule.description or "the policy denies this session"


def grants_of(rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
    """The rules of just-in-time grants among ``rules``: allow rules with a period (``when = { from,
    until }``). A session that one of them carries is cut when its period ends."""
    return tuple(
        rule
        for rule in rules
        if rule.effect == "allow" and rule.scope == "request" and isinstance(rule.window, Period)
    )


def only_grants(rules: tuple[Rule, ...]) -> bool:
    """Whether grants are all that let anyone near the asset: no standing allow rule among ``rules``."""
    allows = [rule for rule in rules if rule.effect == "allow" and rule.scope == "request"]
    return bool(allows) and all(isinstance(rule.window, Period) for rule in allows)


def open_grant(grants: tuple[Rule, ...], now: float) -> Rule | None:
    """Of ``grants``, the open one that ends first (None when none is open)."""
    open_now = [rule for rule in grants if rule.window is not None and rule.window.is_open(now)]
    return min(open_now, key=lambda rule: cast(Period, rule.window).end, default=None)


@dataclass(frozen=True)
class SessionInfo:
    """Who is on the other end, as the overlay established it."""

    id: str
    identity: str
    asset: str
    peer: str
    alpn: str | None
    started: float  # wall clock
    certificate_not_after: float | None
    source: str = ""  # the peer's address as admission counts it (IPv4, or an IPv6 /64)


# Compiled with mypyc (pyproject.toml [tool.ztgate] compiled); the EtherNet/IP and OPC UA sessions
# subclass it in Python.
@mypyc_attr(allow_interpreted_subclasses=True)
class Session(asyncio.Protocol):
    """Base of the protocol session engines. Subclasses implement ``data_received`` and
    ``_view_changed``; they call :meth:`pause_requests` / :meth:`resume_requests` for in-flight caps.

    Replies a subclass gathers in ``_out`` leave in one write at :meth:`flush`; ``_in_flight`` counts the
    requests on their way to the device (what :meth:`busy` and the status page report)."""

    protocol_name: ClassVar[str]
    code_hex_digits: ClassVar[int] = 2  # of a refusal or failure code in hex
    # The target fields that make a request's kind, for the aggregates of refusals and overload answers.
    kind_fields: ClassVar[tuple[str, ...]] = ()
    # The idle timeout when client_idle_timeout_s is 0 (not set); 0: none.
    default_idle_timeout_s: ClassVar[float] = 0.0

    def __init__(self, runtime: Runtime, info: SessionInfo, view: SubjectView) -> None:
        self.runtime = runtime
        self.info = info
        self.id = info.id
        self.identity = info.identity  # the lane of the upstream pools' fair queue
        self.view = view
        self.transport: asyncio.Transport | None = None
        self.closing = False
        self.close_reason = "client closed the connection"
        self.requests = 0
        self.denied = 0
        # Requests by operation and decision, for the metrics: an allowed one under its bare operation
        # (the hot path's key: no tuple to build), others under (operation, verdict).
        self.counts: dict[int | str | tuple[int | str, str], int] = {}
        self._paused_by: set[str] = set()
        # Times this session stopped reading, by reason: a pause can last a single turn, too short for
        # a status poll to see, and the count says that back-pressure acted at all.
        self.pauses: dict[str, int] = {}
        self._expiry: asyncio.TimerHandle | None = None
        self._grant_end: asyncio.TimerHandle | None = None  # the end of the grant it stands on, if any
        # Moves later when the identity proves a renewed certificate (gateway/renewal_proof.py).
        self.certificate_not_after = info.certificate_not_after
        self._idle_check: asyncio.TimerHandle | None = None
        self._idle_s = 0.0
        self._requests_at_idle_check = 0
        self._out: list[bytes | bytearray] = []
        # The reply being gathered, _span[_span_start:_span_end]: replies queued one after the other that
        # lie next to each other in one buffer (a batch of the device's bytes) leave as one slice of it.
        self._span: bytes | bytearray | None = None
        self._span_start = 0
        self._span_end = 0
        self._in_flight = 0
        self._close_after_flush: str | None = None
        limits = runtime.limits
        self._refusals = SessionRefusals(runtime.audit, limits.refusal_audit_interval_s, clock=runtime.clock)
        self._summary_keys = (*_KIND_SUMMARY, *self.kind_fields)
        self._budget = TokenBucket(limits.local_answers_per_s)
        self._identity_budget: TokenBucket | None = None
        self.paced = False  # stopped reading until its local answers are paid for (gateway/pacing.py)
        self.held = False  # stopped reading while a request waits past its identity's share (FairQueue)

    # ------------------------------------------------------------------------------- lifecycle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.runtime.sessions.add(self)
        self._identity_budget = self.runtime.identity_buckets.acquire(
            self.info.identity, self.runtime.limits.identity_local_answers_per_s
        )
        start = {
            "event": "session_start",
            "session": self.id,
            "identity": self.info.identity,
            "asset": self.info.asset,
            "protocol": self.protocol_name,
            "peer": self.info.peer,
            "policy_revision": self.view.policy_revision,
        }
        grant = open_grant(grants_of(self.view.rules), self.runtime.clock())
        if grant is not None:
            start["grant"] = grant.id  # the grant's use, in the gateway's audit (docs/access.md)
        self.runtime.audit.emit(start)
        loop = asyncio.get_running_loop()
        self._schedule_expiry()
        self._schedule_grant_end()
        idle_s = self._idle_s = self.runtime.limits.idle_timeout_s or self.default_idle_timeout_s
        if idle_s > 0:
            self._idle_check = loop.call_later(idle_s, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self.closing:
            self.close_reason = f"connection lost: {exc}"
        self.closing = True
        for timer in (self._expiry, self._idle_check, self._grant_end):
            if timer is not None:
                timer.cancel()
        self.runtime.sessions.remove(self)
        if self._identity_budget is not None:
            self.runtime.identity_buckets.release(self.info.identity)
            self._identity_budget = None
        self._withdraw()  # before the last counts: what it had waiting is audited with them
        self._refusals.close()  # the last counts, exact, before the session's end
        self.runtime.metrics.add_requests(self.request_counts())
        self.counts.clear()
        self._out.clear()
        self._span = None
        self._release()
        self.runtime.audit.emit(
            {
                "event": "session_end",
                "session": self.id,
                "identity": self.info.identity,
                "asset": self.info.asset,
                "protocol": self.protocol_name,
                "reason": self.close_reason,
                "requests": self.requests,
                "denied": self.denied,
                "duration_s": round(self.runtime.clock() - self.info.started, 3),
            }
        )

    def close(self, reason: str) -> None:
        """End the session at once; what was in flight for it is answered to nobody."""
        if self.closing or self.transport is None:
            return
        self.closing = True
        self.close_reason = reason
        self.transport.abort()

    def _schedule_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        not_after = self.certificate_not_after
        if not_after is not None:
            delay_s = max(0.0, not_after - self.runtime.clock())
            loop = asyncio.get_running_loop()
            self._expiry = loop.call_later(delay_s, self._certificate_expired)

    def _certificate_expired(self) -> None:
        # A grant's certificate ends with the grant, or up to a second before it (X.509 keeps whole
        # seconds): the session ends at the grant's end, by the grant's timer, audited as the grant's.
        now = self.runtime.clock()
        grants = grants_of(self.view.rules)
        grant = open_grant(grants, now)
        if grant is not None and cast(Period, grant.window).end - now <= _CERTIFICATE_ROUNDING_S:
            return
        for rule in grants:
            if 0.0 <= now - cast(Period, rule.window).end <= _CERTIFICATE_ROUNDING_S:
                self._end_of_grant(rule)  # both ended at once, and this timer came first
                return
        self.close("client certificate expired")

    def _schedule_grant_end(self) -> None:
        """A session a grant carries is cut by the gateway itself when the grant's period ends: a timer
        from the rule's ``until``, no word from the center needed. A session that only grants let in
        and none of them is open any more is cut now (a revision may bring such a view)."""
        if self._grant_end is not None:
            self._grant_end.cancel()
            self._grant_end = None
        grants = grants_of(self.view.rules)
        if not grants:
            return
        now = self.runtime.clock()
        grant = open_grant(grants, now)
        if grant is not None:
            delay_s = cast(Period, grant.window).end - now
            self._grant_end = asyncio.get_running_loop().call_later(delay_s, self._grant_ended, grant)
        elif only_grants(self.view.rules):
            self._end_of_grant(max(grants, key=lambda rule: cast(Period, rule.window).end))

    def _grant_ended(self, grant: Rule) -> None:
        # The loop's timer and the wall clock may disagree by a hair (uvloop's timers keep whole
        # milliseconds): cut only once the period is over, and until then wait again for this grant,
        # on the same reading of the clock. Choosing again (_schedule_grant_end) would read the clock a
        # second time: a reading past the end would find no open grant and, for a session that a
        # standing rule also lets in, set no timer at all, leaving it uncut.
        now = self.runtime.clock()
        window = grant.window
        if window is not None and window.is_open(now):
            delay_s = cast(Period, window).end - now
            self._grant_end = asyncio.get_running_loop().call_later(delay_s, self._grant_ended, grant)
            return
        self._end_of_grant(grant)

    def _end_of_grant(self, rule: Rule) -> None:
        reason = f"grant {rule.id} ended (its period: {rule.window})"
        self.cut(f"rule {rule.id}", reason, {"rule": rule.id})

    def extend_certificate(self, identity: str, source: str, not_after: float, policy: Policy) -> bool:
        """``identity`` proved, from ``source``, a certificate valid until ``not_after``: if this is
        its session from that source, the policy in force still lets it near the asset, and that is
        later than the session's end, the session now ends then. A session the policy no longer
        grants is left to revalidation."""
        if self.closing or identity != self.info.identity or source != self.info.source:
            return False
        current = self.certificate_not_after
        if current is None or not_after <= current or policy.view(identity, self.info.asset) is None:
            return False
        self.certificate_not_after = not_after
        self._schedule_expiry()
        return True

    def locked_by(self, locks: LockSet) -> Lock | None:
        """The lock in force that stops this session, if any."""
        return locks.match(self.info.identity, self.info.asset, [rule.id for rule in self.view.rules])

    def cut(self, by: str, reason: str, detail: Mapping[str, str]) -> None:
        """End the session because of a lock or a session deny rule (``by``, "lock lk-..." or "rule
        ID"; ``detail`` names it in the audit record), then close it the way every session closes: the
        TCP connection goes, and with it an OPC UA secure channel and session."""
        if self.closing:
            return
        self.runtime.audit.emit(
            {
                "event": "session_cut",
                "session": self.id,
                "identity": self.info.identity,
                "asset": self.info.asset,
                "protocol": self.protocol_name,
                "policy_revision": self.view.policy_revision,
                **detail,
                "reason": reason,
            }
        )
        self.close(f"{by}: {reason}")

    def _release(self) -> None:
        """Drop references to shared resources; subclasses extend."""

    def _withdraw(self) -> None:
        """The session ended: take what it still has waiting for the device out of the asset's queue
        (:meth:`UpstreamPool.withdraw`); protocols with a shared queue say which."""

    def _check_idle(self) -> None:
        # Compare request counts between checks instead of stamping a clock on every read: the data
        # path pays nothing, and a session idle for at least idle_timeout_s (at most twice that) ends.
        if self.requests == self._requests_at_idle_check and not self.busy():
            self.close(f"idle for {self._idle_s:g} s")
            return
        self._requests_at_idle_check = self.requests
        self._idle_check = asyncio.get_running_loop().call_later(self._idle_s, self._check_idle)

    def busy(self) -> bool:
        """Whether requests of this session are still on their way to the device."""
        return self._in_flight > 0

    def queue_reply(self, data: bytes | bytearray, start: int = 0, end: int = -1) -> bool:
        """Queue ``data[start:end]`` (all of ``data`` by default) for the next :meth:`flush`, after what
        is queued already; true when nothing was. The caller leaves those bytes of ``data`` as they are
        until then."""
        if end < 0:
            end = len(data)
        span = self._span
        if span is data and start == self._span_end:
            self._span_end = end
            return False
        first = span is None and not self._out
        if span is not None:
            self._close_span()
        self._span = data
        self._span_start = start
        self._span_end = end
        return first

    def has_replies(self) -> bool:
        """Whether replies are queued for the next :meth:`flush`."""
        return self._span is not None or bool(self._out)

    def _close_span(self) -> None:
        span = self._span
        if span is None:
            return
        self._span = None
        start, end = self._span_start, self._span_end
        self._out.append(span if start == 0 and end == len(span) else span[start:end])

    def flush(self) -> None:
        """Write the replies gathered in ``_out`` in one write; then end the session if a refusal with
        ``action = "close"`` asked for it (the replies before it still go out)."""
        if self._span is not None:
            self._close_span()
        out = self._out
        if out:
            if self.transport is not None and not self.closing:
                self.transport.write(b"".join(out) if len(out) > 1 else out[0])
            out.clear()
        if self._close_after_flush is not None and not self.closing and self.transport is not None:
            self.closing = True
            self.close_reason = self._close_after_flush
            self.transport.close()

    # ------------------------------------------------------------------- continuous validation

    def revalidate(self, policy: Policy) -> None:
        """Called after every policy swap: keep going under the new view or end the session."""
        view = policy.view(self.info.identity, self.info.asset)
        if view is None:
            self.close(f"policy {policy.revision} no longer grants access to {self.info.asset}")
            return
        denial = policy.session_denial(self.info.identity, self.info.asset)
        if denial is not None:
            detail = {"rule": denial.id, "policy_revision": policy.revision}
            self.cut(f"rule {denial.id}", session_denial_reason(denial), detail)
            return
        if view.asset.protocol != self.protocol_name:
            self.close(f"asset {self.info.asset} is now {view.asset.protocol}")
            return
        self.view = view
        lock = self.locked_by(self.runtime.locks)  # a grant lock names a rule this revision may add
        if lock is not None:
            self.cut(f"lock {lock.id}", lock.reason, lock.audit_fields())
            return
        self._schedule_grant_end()
        if self.closing:
            return
        self._view_changed()

    def _view_changed(self) -> None:
        """The policy changed under a live session; subclasses refresh what they derived from the view."""

    # ----------------------------------------------------------------------- audit, refusals

    def record(self, event: str, revision: str | None = None) -> dict[str, Any]:
        """The fields every record of this session starts with."""
        return {
            "event": event,
            "session": self.id,
            "identity": self.info.identity,
            "asset": self.info.asset,
            "protocol": self.protocol_name,
            "policy_revision": revision or self.view.policy_revision,
        }

    def code_name(self, code: int) -> str:
        """The protocol's own name for a refusal or failure code (Modbus exception, CIP general
        status, OPC UA StatusCode); subclasses say."""
        raise NotImplementedError

    def code_fields(self, code: int, prefix: str = "") -> dict[str, Any]:
        """A refusal or failure code as number, the protocol's name for it and hex."""
        return {
            f"{prefix}code": code,
            f"{prefix}code_name": self.code_name(code),
            f"{prefix}code_hex": f"0x{code:0{self.code_hex_digits}X}",
        }

    def decision_record(
        self,
        target: dict[str, Any],
        decision: Decision,
        revision: str,
        outcome: str,
        latency_s: float | None = None,
        code: int = 0,
    ) -> dict[str, Any]:
        """The one decision record of every protocol: the session's fields, what the request touches
        (``target``, the protocol's own fields), the decision and what came of it.

        ``action`` is what the gateway did (``forward``, or the deny action: ``exception``, ``drop``,
        ``close``); ``code`` is what the client got from the gateway itself: the refusal's code, or the
        code of the gateway's answer when the device could not answer (``code`` 0: none). A would-deny
        carries what enforcing it would have done as ``would_action`` and ``would_code``."""
        record = self.record("decision", revision)
        record.update(target)
        record["decision"] = decision.verdict
        record["rule"] = decision.rule_id
        record["action"] = decision.action
        if decision.verdict != "allow":
            record["reason"] = decision.reason
            if decision.allowed:
                record["would_action"] = self.view.asset.deny.action
                record.update(self.code_fields(decision.exception_code, "would_"))
            else:
                code = code or decision.exception_code
        if code:
            record.update(self.code_fields(code))
        if decision.monitor_rule_id is not None:
            record["monitor_rule"] = decision.monitor_rule_id
        record["outcome"] = outcome
        if latency_s is not None:
            record["latency_us"] = int(latency_s * 1e6)
        return record

    def refuse(self, operation: int | str, target: dict[str, Any], decision: Decision) -> str:
        """The refusal path of every protocol: count, audit, and for ``close`` write the replies gathered
        before it and end the session (nothing after it is read or forwarded). Returns the action; for
        ``exception`` the caller answers with the decision's code in its protocol's terms, for ``drop``
        it answers nothing."""
        self.denied += 1
        self._count(operation, "deny")
        revision = self.view.policy_revision
        action = decision.action
        key = (*[target.get(name) for name in self.kind_fields], decision.rule_id, decision.exception_code)
        record = self.decision_record(target, decision, revision, "refused")
        self._refusals.note((*key, action, revision), record, self._summary_keys)
        self.local_answer()
        if action == "close":
            reason = f"refused by rule {decision.rule_id}"
            last = self._last_words(decision.exception_code, reason)
            if last is not None:
                self.queue_reply(last)
            self._close_after_flush = reason
            self.flush()
        return action

    def overloaded(
        self,
        target: dict[str, Any],
        decision: Decision,
        revision: str,
        outcome: str,
        latency_s: float,
        code: int,
        kind: str | None = None,
    ) -> None:
        """Audit an allowed request the gateway answered itself because it could not take it (the asset's
        queue full, the asset reconfigured, not sent within the queue timeout, its client gone):
        aggregated and paced like a refusal. ``kind`` stands for ``outcome`` in the aggregate's kind when
        the outcome says more than the kind (what held a queue timeout up)."""
        key = (
            *[target.get(name) for name in self.kind_fields],
            decision.rule_id,
            code,
            kind or outcome,
            revision,
        )
        record = self.decision_record(target, decision, revision, outcome, latency_s, code)
        self._refusals.note(("overload", *key), record, self._summary_keys)
        self.local_answer()

    def local_answer(self) -> None:
        """One request answered by the gateway itself: take it from the session's and the identity's
        budget; when either is in debt, stop reading the client until it is paid."""
        now = monotonic()
        wait_s = self._budget.take(now)
        if self._identity_budget is not None:
            wait_s = max(wait_s, self._identity_budget.take(now))
        if wait_s > 0 and not self.paced and not self.closing:
            self.paced = True
            self.pause_requests(PACED)
            asyncio.get_running_loop().call_later(wait_s, self._paid)

    def _paid(self) -> None:
        self.paced = False
        if self.closing:
            return
        # What the client sent before the pause is still in the codec: answer it first (and maybe pause
        # again); only then let the transport deliver more.
        self._paused_by.discard(PACED)
        self._read_buffered()
        if not self.paced:
            self.resume_requests(PACED)

    def hold(self) -> None:
        """A request of this session waits past its identity's share of the asset's queue: read nothing
        more from the client until the queue takes it in (back-pressure, not a busy answer)."""
        if not self.held and not self.closing:
            self.held = True
            self.pause_requests(QUEUE_SHARE)

    def unhold(self) -> None:
        """The queue took this session's held requests in: read on, what the codec holds first."""
        if not self.held:
            return
        self.held = False
        if self.closing:
            return
        self._paused_by.discard(QUEUE_SHARE)
        self._read_buffered()
        if not self.held:
            self.resume_requests(QUEUE_SHARE)

    def _read_buffered(self) -> None:
        """Process the requests the codec already holds; subclasses say how."""

    def _last_words(self, code: int, reason: str) -> bytes | None:
        """What the protocol sends before it closes a session for a refusal (OPC UA: an Error message
        with the code); nothing by default."""
        return None

    def protocol_error(
        self, reason: str, *, side: str = "client", close: str | None = None, code: int = 0, **target: Any
    ) -> None:
        """Count and audit a message that breaks the protocol; with ``close``, end the session for it."""
        self.runtime.metrics.count_protocol_error(self.protocol_name, side)
        record = self.record("protocol_error")
        record.update(target)
        record["side"] = side
        record["reason"] = reason
        if code:
            record.update(self.code_fields(code))
        self.runtime.audit.emit(record)
        if close is not None:
            self.close(close)

    # ------------------------------------------------------------------------------- metrics

    def _count(self, operation: int | str, verdict: str) -> None:
        key: int | str | tuple[int | str, str] = operation if verdict == "allow" else (operation, verdict)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1

    def request_counts(self) -> list[tuple[tuple[str, str, int | str, str], int]]:
        """This session's counts under the metrics' (protocol, asset, operation, decision) labels."""
        protocol, asset = self.protocol_name, self.info.asset
        return [
            ((protocol, asset, *key) if isinstance(key, tuple) else (protocol, asset, key, "allow"), count)
            for key, count in list(self.counts.items())
        ]

    # ------------------------------------------------------------------------- backpressure

    def pause_requests(self, why: str) -> None:
        if not self._paused_by and self.transport is not None:
            self.transport.pause_reading()
        if why not in self._paused_by:
            self._paused_by.add(why)
            self.pauses[why] = self.pauses.get(why, 0) + 1

    def resume_requests(self, why: str) -> None:
        self._paused_by.discard(why)
        if not self._paused_by and self.transport is not None and not self.closing:
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        # A client that does not read its replies may not send more requests either.
        self.pause_requests("client not reading")

    def resume_writing(self) -> None:
        self.resume_requests("client not reading")

    # ---------------------------------------------------------------------------------- status

    def describe(self) -> dict[str, Any]:
        return {
            "session": self.id,
            "identity": self.info.identity,
            "asset": self.info.asset,
            "protocol": self.protocol_name,
            "peer": self.info.peer,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.info.started)),
            "requests": self.requests,
            "denied": self.denied,
            "policy_revision": self.view.policy_revision,
            "paused": sorted(self._paused_by),
            "pauses": dict(self.pauses),
            "certificate_not_after": None
            if self.certificate_not_after is None
            else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.certificate_not_after)),
            "in_flight": self._in_flight,
        }
