"""The Modbus TCP session engine: one per overlay connection to a Modbus asset.

Pipeline per request: decode (sans-IO codec) → decide (the compiled policy view) → forward on the
asset's shared upstream pool, or refuse in Modbus terms → audit and metrics. Replies gathered while
one batch of client bytes (or of device bytes) is processed leave in one write; a forwarded request is
audited and measured after its reply has left (:meth:`ModbusSession.settle`), off the client's wait.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections import deque
from time import monotonic
from typing import Any, ClassVar

from gateway.modbus.upstream import ModbusUpstreamPool, PendingRequest
from gateway.read_aggregates import ReadAggregates
from gateway.runtime import Runtime
from gateway.session import Session, SessionInfo
from gateway.upstream import NOT_IN_FLIGHT, Failure
from policies import Decision, SubjectView
from protocols.modbus import ModbusProtocolError, Request, ServerConnection, encode_exception
from protocols.modbus.spec import ExceptionCode, exception_name, function_name

GATEWAY_PATH_UNAVAILABLE = ExceptionCode.GATEWAY_PATH_UNAVAILABLE.value
TARGET_FAILED_TO_RESPOND = ExceptionCode.GATEWAY_TARGET_DEVICE_FAILED_TO_RESPOND.value
MAX_AUDITED_VALUES = 32  # a 123-register write is recorded by its first values and its count

_READ_ONLY_FUNCTION_CODES = frozenset((1, 2, 3, 4))
IN_FLIGHT_LIMIT = "in-flight limit"  # why a session stopped reading its client


def _span(address: int, count: int) -> list[int]:
    return [address, address + count - 1]


def request_fields(request: Request) -> dict[str, Any]:
    """The audit fields that say what a Modbus request touches."""
    fields: dict[str, Any] = {
        "unit": request.unit_id,
        "fc": request.function_code,
        "func": function_name(request.function_code),
        "tid": request.transaction_id,
    }
    if request.sub_function >= 0:
        fields["sub_function"] = request.sub_function
    if request.read_address >= 0:
        fields["read"] = _span(request.read_address, request.read_count)
    if request.write_address >= 0:
        fields["write"] = _span(request.write_address, request.write_count)
    if request.file_records:
        fields["files"] = [list(record) for record in request.file_records]
    if request.values:
        values = request.values
        fields["values"] = list(values[:MAX_AUDITED_VALUES])
        if len(values) > MAX_AUDITED_VALUES:
            fields["values_count"] = len(values)
    return fields


class ModbusSession(Session):
    protocol_name: ClassVar[str] = "modbus"
    kind_fields: ClassVar[tuple[str, ...]] = ("unit", "fc", "func")

    def __init__(self, runtime: Runtime, info: SessionInfo, view: SubjectView) -> None:
        super().__init__(runtime, info, view)
        self._codec = ServerConnection()
        self._max_in_flight = runtime.limits.max_in_flight
        self._resume_scheduled = False
        # preserve_order: every answer not yet sent, in the order the requests came (a forwarded request
        # until its reply is in). Fixed for the session's life, so no answer is ever held by a reload.
        self._ordered: deque[PendingRequest | bytes] | None = deque() if view.asset.preserve_order else None
        self._bind_view()

    def _bind_view(self) -> None:
        """Everything derived from the current view, so the per-request path does no look-ups."""
        asset = self.view.asset
        pool = self.runtime.upstreams.pool_for(asset)
        assert isinstance(pool, ModbusUpstreamPool)
        self._pool = pool
        self._decide = self.view.decide_modbus
        self._unit_ids, self._tables = self.view.modbus_tables()
        self._unit_map = asset.unit_map
        self._histogram = self.runtime.metrics.histogram("modbus", asset.name)
        audit = self.runtime.audit
        self._aggregates = audit.aggregates_reads
        self._reads: ReadAggregates = audit.reads
        # The fast path of settle(): the last aggregated read's decision, kind, audit key and fields.
        self._last_decision: Decision | None = None
        self._last_fc = -1
        self._last_unit = -1
        self._last_key: tuple[Any, ...] = ()
        self._last_fields: dict[str, Any] = {}

    def _view_changed(self) -> None:
        self._bind_view()

    def code_name(self, code: int) -> str:
        return exception_name(code)

    def _release(self) -> None:
        super()._release()
        if self._ordered is not None:
            self._ordered.clear()

    def _withdraw(self) -> None:
        self._pool.withdraw(self)

    # ---------------------------------------------------------------------------- client side

    def data_received(self, data: bytes) -> None:
        self._codec.receive_data(data)
        self._process()

    def _process(self) -> None:
        codec = self._codec
        decide = self._decide
        unit_ids = self._unit_ids
        tables = self._tables
        pool = self._pool
        unit_map = self._unit_map
        revision = self.view.policy_revision
        now = self.runtime.clock()
        started = monotonic()
        limit = self._max_in_flight
        # Requests answered here count against the in-flight limit until this batch's write: a client
        # sending only refused requests gets no more answers per turn of the loop than one in flight.
        # Under preserve_order the answers held for order count against it too.
        local = 0
        ordered = self._ordered
        while (
            self._in_flight + local < limit
            and not self.closing
            and not self.paced
            and not self.held
            and (ordered is None or len(ordered) < limit)
        ):
            try:
                request = codec.next_request()
            except ModbusProtocolError as exc:
                if self._malformed(exc):
                    return
                continue
            if request is None:
                break
            self.requests += 1
            table = tables.get(request.function_code) if request.unit_id in unit_ids else None
            decision = decide(request, now) if table is None else table.decide(request, now)
            if decision.allowed:
                self._in_flight += 1
                pending = PendingRequest(
                    self, request, decision, revision, unit_map.get(request.unit_id, request.unit_id), started
                )
                if self._ordered is not None:
                    self._ordered.append(pending)
                # Past its identity's share of the asset's queue, the request is held and the session
                # with it (self.held): the rest waits unread in TCP until the queue takes it in.
                pool.submit(pending)
                if pending.key == NOT_IN_FLIGHT:
                    # Answered at once (the asset reconfigured): read no more until one of this
                    # session's requests is answered (or next turn, with none in flight).
                    local += 1
                    if codec.buffered_bytes and not self.closing:
                        self.pause_requests(IN_FLIGHT_LIMIT)
                        if not self._in_flight:
                            self._maybe_resume()
                    break
            else:
                self._refuse(request, decision)
                local += 1
        else:
            held = ordered is not None and len(ordered) >= limit
            if not self.closing and codec.buffered_bytes and (self._in_flight + local >= limit or held):
                self.pause_requests(IN_FLIGHT_LIMIT)
                if self._in_flight < limit and not held:  # stopped by local answers, written below
                    self._maybe_resume()
        # Requests for the device leave with the pool's end-of-turn flush (UpstreamPool.mark_dirty).
        self.flush()

    def _refuse(self, request: Request, decision: Decision) -> None:
        fc = request.function_code
        if self.refuse(fc, request_fields(request), decision) == "exception":
            self._answer(
                encode_exception(request.transaction_id, request.unit_id, fc, decision.exception_code)
            )

    def _malformed(self, exc: ModbusProtocolError) -> bool:
        """Answer a malformed request (or end the session); True if the session is over."""
        if exc.close:
            self.protocol_error(str(exc), close=f"malformed request framing: {exc}")
            return True
        assert exc.exception_code is not None
        fc = exc.function_code
        self.protocol_error(
            str(exc),
            code=exc.exception_code,
            unit=exc.unit_id,
            fc=fc,
            func=function_name(fc),
            tid=exc.transaction_id,
        )
        self._answer(encode_exception(exc.transaction_id, exc.unit_id, fc, exc.exception_code))
        return False

    def _answer(self, reply: bytes) -> None:
        """A local answer: sent with this batch, or after the earlier replies under preserve_order."""
        ordered = self._ordered
        if ordered:
            ordered.append(reply)
        else:
            self.queue_reply(reply)

    def _answer_in_order(self) -> None:
        """preserve_order: move every answer now complete at the front of the order to the output."""
        ordered = self._ordered
        assert ordered is not None
        while ordered:
            head = ordered[0]
            if isinstance(head, bytes):
                self.queue_reply(head)
            elif head.reply is not None:
                self.queue_reply(head.reply)
            else:
                break
            ordered.popleft()

    # -------------------------------------------------------------------------- upstream side

    def deliver(
        self,
        pending: PendingRequest,
        frames: bytes | bytearray,
        start: int,
        end: int,
    ) -> bool:
        """The device answered with ``frames[start:end]``: queue it for the client. Returns True when this
        session has a batch to flush. What is left to do for the request (latency, counts, audit) waits
        for :meth:`settle`, after the batch's replies have left."""
        if self._ordered is None:
            first = self.queue_reply(frames, start, end)
        else:
            first = not self.has_replies()
            pending.reply = bytes(frames[start:end])
            self._answer_in_order()
        self._in_flight -= 1
        if self._paused_by:
            self._maybe_resume()
        return first and self.has_replies() and not self.closing

    def settle(self, pending: PendingRequest, now: float) -> None:
        """Account a request the device answered (:meth:`deliver`) at ``now``: its latency, counts and
        audit.

        The common case — an allowed read answered normally, audited by aggregation — is written out
        here without calls: it runs once per request at full load."""
        latency_s = now - pending.started
        device_exception = pending.device_exception
        histogram = self._histogram
        histogram.counts[bisect_left(histogram.bounds, latency_s)] += 1
        histogram.total_s += latency_s
        request = pending.request
        decision = pending.decision
        fc = request.function_code
        if device_exception or decision is not self._last_decision:
            self._account(
                pending, latency_s, f"device exception {device_exception}" if device_exception else "ok"
            )
        else:
            counts = self.counts  # the allow key of Session._count, inlined
            counts[fc] = counts.get(fc, 0) + 1
            if fc != self._last_fc or request.unit_id != self._last_unit:
                self._account(pending, latency_s, "ok", counted=True)
            else:
                lo = request.read_address
                self._reads.add(self._last_key, self._last_fields, lo, lo + request.read_count - 1, latency_s)

    def fail(self, pending: PendingRequest, failure: Failure, reason: str, now: float) -> bool:
        """The device cannot answer the request: exception 0x0A when the gateway could not take it
        (asset reconfigured), 0x0B when the device did not (timeout, lost, unreachable,
        malformed reply)."""
        code = GATEWAY_PATH_UNAVAILABLE if failure.overload else TARGET_FAILED_TO_RESPOND
        first = not self.has_replies()
        request = pending.request
        reply = encode_exception(request.transaction_id, request.unit_id, request.function_code, code)
        if self._ordered is None:
            self.queue_reply(reply)
        else:
            pending.reply = reply
            self._answer_in_order()
        self._in_flight -= 1
        if self._paused_by:
            self._maybe_resume()
        latency_s = now - pending.started
        self._histogram.observe(latency_s)
        if failure.aggregated:  # answered here, not by the device: a flood of them is aggregated
            self._count(request.function_code, pending.decision.verdict)
            fields = request_fields(request)
            self.overloaded(
                fields, pending.decision, pending.revision, reason, latency_s, code, failure.value
            )
        else:
            self._account(pending, latency_s, reason, gateway_exception=code)
        return first and self.has_replies() and not self.closing

    def _maybe_resume(self) -> None:
        if IN_FLIGHT_LIMIT in self._paused_by and not self._resume_scheduled:
            # Resume outside the pool's batch: parsing here would re-enter the pool mid-iteration.
            self._resume_scheduled = True
            asyncio.get_running_loop().call_soon(self._resume_after_in_flight)

    def _account(
        self,
        pending: PendingRequest,
        latency_s: float,
        outcome: str,
        *,
        gateway_exception: int = 0,
        counted: bool = False,
    ) -> None:
        """Count and audit a finished request (every case but the fast path in :meth:`settle`)."""
        request = pending.request
        decision = pending.decision
        fc = request.function_code
        if not counted:
            self._count(fc, decision.verdict)
        if (
            outcome == "ok"
            and self._aggregates
            and decision.verdict == "allow"
            and fc in _READ_ONLY_FUNCTION_CODES
        ):
            target = {"unit": request.unit_id, "fc": fc, "func": function_name(fc)}
            fields = self.decision_record(target, decision, pending.revision, "ok")
            key = (self.id, request.unit_id, fc, decision.rule_id, pending.revision)
            # Remember it: the next read of the same kind under the same decision takes the fast path.
            self._last_decision = decision
            self._last_fc = fc
            self._last_unit = request.unit_id
            self._last_key = key
            self._last_fields = fields
            lo = request.read_address
            self._reads.add(key, fields, lo, lo + request.read_count - 1, latency_s)
            return
        self._audit(request, decision, pending.revision, outcome, latency_s, gateway_exception)

    def _read_buffered(self) -> None:
        self._process()

    def _resume_after_in_flight(self) -> None:
        self._resume_scheduled = False
        if self.closing:
            return
        # Parse what is buffered first; _process pauses again if the limit is hit before it is all done.
        self._paused_by.discard(IN_FLIGHT_LIMIT)
        self._process()
        if IN_FLIGHT_LIMIT not in self._paused_by:
            self.resume_requests(IN_FLIGHT_LIMIT)

    # ------------------------------------------------------------------------------------ audit

    def _audit(
        self,
        request: Request,
        decision: Decision,
        revision: str,
        outcome: str,
        latency_s: float | None,
        gateway_exception: int = 0,
    ) -> None:
        """One decision record of a forwarded request; ``gateway_exception`` is 0x0A/0x0B when the
        device could not answer and the gateway did."""
        self.runtime.audit.emit(
            self.decision_record(
                request_fields(request), decision, revision, outcome, latency_s, gateway_exception
            )
        )
