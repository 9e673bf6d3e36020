"""Modbus TCP towards the device: requests under the gateway's own transaction ids, each reply matched
by id, checked against its request, and mapped back to the client's id and unit. The pool machinery
(queue, bounds, timeouts, reconnection, batching) is :mod:`gateway.upstream`'s."""

from __future__ import annotations

import random
from time import monotonic
from typing import Any, ClassVar, Protocol, cast

from gateway.upstream import NOT_IN_FLIGHT, Client, Failure, Link, Pending, UpstreamPool
from policies import Decision
from protocols.modbus import (
    ClientConnection,
    ModbusProtocolError,
    Request,
    check_response,
    encode_adu,
    is_read_reply,
)
from protocols.modbus.spec import MBAP_HEADER_BYTES


class ModbusClient(Client, Protocol):
    """What the pool calls on the session that submitted a request (``gateway/modbus/session.py``):
    the upstream side knows sessions only by this protocol, so it never imports them."""

    def deliver(self, pending: PendingRequest, frames: bytes | bytearray, start: int, end: int) -> bool:
        """Queue the device's reply, ``frames[start:end]`` (already under the client's id and unit), for
        the client; true when the session has replies to flush at the end of the batch. Those bytes of
        ``frames`` stay as they are: the session may keep ``frames`` until then."""
        ...

    def settle(self, pending: PendingRequest, now: float) -> None:
        """Account ``pending``, answered by :meth:`deliver`, once the batch's replies have left."""
        ...

    def fail(self, pending: PendingRequest, failure: Failure, reason: str, now: float) -> bool:
        """Answer the client with the protocol's error for ``failure``; true as for :meth:`deliver`."""
        ...


class PendingRequest(Pending):
    """A Modbus request on its way to the device and back."""

    __slots__ = ("decision", "device_exception", "device_unit", "reply", "request", "revision")

    def __init__(
        self,
        session: ModbusClient,
        request: Request,
        decision: Decision,
        revision: str,
        device_unit: int,
        started: float,
    ) -> None:
        # Pending's fields set here rather than through Pending.__init__: one call less per request.
        self.session = session
        self.started = started
        self.deadline = 0.0
        self.key = NOT_IN_FLIGHT
        self.request = request
        self.decision = decision
        self.revision = revision  # of the policy that decided: the audit names it, not a later one
        self.device_unit = device_unit
        self.reply: bytes | None = None  # the answer, held while earlier ones are awaited (preserve_order)
        self.device_exception = 0  # the exception code of the device's reply; 0: a normal reply


class ModbusLink(Link[PendingRequest]):
    """One Modbus TCP connection to the device: its transaction ids are the match keys."""

    def partial_reply_bytes(self) -> int:
        return self._codec.buffered_bytes

    def __init__(self, pool: UpstreamPool) -> None:
        super().__init__(pool)
        self._codec = ClientConnection()
        self._next_tid = random.randrange(1, 0x10000)

    def send(self, pending: PendingRequest, now: float) -> None:
        # Link.track and Link.write written out: this runs once per request at full load.
        tid = self._next_tid
        in_flight = self.in_flight
        while tid in in_flight:  # only possible with more than 65535 ids outstanding
            tid = tid % 0xFFFF + 1
        self._next_tid = tid % 0xFFFF + 1
        pending.key = tid
        in_flight[tid] = pending
        # request.pdu is the canonical encoding of the fields the policy decided on (protocols.modbus.pdu).
        data = encode_adu(tid, pending.device_unit, pending.request.pdu)
        out = self._out
        if out:
            out.append(data)
        elif len(in_flight) == 1 and self.transport is not None:
            # Alone on its way to the device: there is no batch to wait for, only latency to lose.
            self.transport.write(data)
        else:
            self.pool.mark_dirty(self)
            out.append(data)
        # The deadline after the write: no reply can be read before this turn of the loop ends.
        pending.deadline = now + self.pool.response_timeout_s
        self._deadlines.append(pending)
        if self._timer is None:
            self._timer = self.pool.loop.call_at(pending.deadline, self._expire)

    def data_received(self, data: bytes) -> None:
        codec = self._codec
        codec.receive_data(data)
        frames = codec.buffer
        # The replies relabelled in place (client's transaction id and unit over the gateway's): a copy
        # of the device's bytes, made at the first such reply of this batch. A session's replies that
        # lie next to each other in it leave as one slice (Session.queue_reply).
        relabelled: bytearray | None = None
        # Requests answered in this batch: accounted (Session.settle) once the replies have left.
        answered: list[PendingRequest] = []
        pool = self.pool
        touched = pool.touched
        in_flight = self.in_flight
        now = self.last_data_at = monotonic()
        while self.abort_reason is None:
            try:
                end = codec.next_frame_end()
            except ModbusProtocolError as exc:
                # Framing is lost: nothing more on this connection can be matched safely.
                pool.upstream_fault(f"malformed reply framing: {exc}")
                self.abort("malformed reply framing")
                break
            if end < 0:
                break
            tid = codec.transaction_id
            unit = codec.unit_id
            start = codec.frame_start
            pending = in_flight.pop(tid, None)  # Link.answered, written out
            if pending is None:
                self.unmatched(tid)  # late, or the device is out of step
                continue
            pending.key = NOT_IN_FLIGHT
            # Pending.session is any Client; a Modbus request's is a ModbusClient (mypyc does not let a
            # subclass narrow an attribute's type, so it is said here).
            session = cast(ModbusClient, pending.session)
            request = pending.request
            if unit != pending.device_unit:
                pool.upstream_fault(f"reply for unit {unit} to a request for unit {pending.device_unit}")
                if session.fail(pending, Failure.MALFORMED_REPLY, "malformed reply", now):
                    touched.append(session)
                continue
            if is_read_reply(request, frames, start, end):
                # The common reply: the device's frame is the one encode_adu would write for the client
                # but for its header's transaction id and unit, which are written over.
                if relabelled is None:
                    relabelled = bytearray(frames)
                client_tid = request.transaction_id
                relabelled[start] = client_tid >> 8
                relabelled[start + 1] = client_tid & 0xFF
                relabelled[start + 6] = request.unit_id
                if session.deliver(pending, relabelled, start, end):
                    touched.append(session)
                answered.append(pending)
                continue
            pdu = frames[start + MBAP_HEADER_BYTES : end]
            try:
                device_exception = check_response(request, pdu)
            except ModbusProtocolError as exc:
                pool.upstream_fault(str(exc))
                if session.fail(pending, Failure.MALFORMED_REPLY, f"malformed reply: {exc}", now):
                    touched.append(session)
                continue
            if request.received_pdu is not request.pdu and pdu == request.pdu:
                pdu = request.received_pdu  # the device echoed our canonical rewrite: echo the client's own
            reply = encode_adu(request.transaction_id, request.unit_id, pdu)
            pending.device_exception = device_exception
            if session.deliver(pending, reply, 0, len(reply)):
                touched.append(session)
            answered.append(pending)
        if answered:
            # The replies leave first: with one request in flight, the client waits for nothing else.
            pool.flush()
            for answer in answered:
                cast(ModbusClient, answer.session).settle(answer, now)
        self.batch_done()


class ModbusUpstreamPool(UpstreamPool):
    protocol_name: ClassVar[str] = "modbus"
    link_class: ClassVar[type[Link[Any]]] = ModbusLink
    id_name: ClassVar[str] = "transaction id"
