"""An asset's Modbus TCP connections to its device, shared by every client session.

Re-origination: each request goes out under a transaction id of the gateway's own, chosen per
connection, and the reply is matched back by that id alone; the client's id and unit are restored
only on the way back. Replies that match nothing (late after a timeout, or invented) are dropped and
counted. A request that may have reached the device is never sent twice: when a connection dies,
what was in flight on it is answered with exception 0x0B; only requests still queued — never sent —
move on to another connection.

Bounds: ``max_connections`` connections, ``max_in_flight`` requests on each, ``queue_limit``
requests waiting beyond that (more get 0x0A at once), ``response_timeout_s`` for the device to
answer once a request is sent, and as long again for a request to leave the queue.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING, cast

from gateway.metrics import UpstreamState
from gateway.runtime import Runtime
from policies import Asset, Decision
from protocols.modbus import ClientConnection, ModbusProtocolError, Request, check_response
from protocols.modbus.pdu import MBAP_HEADER
from protocols.modbus.spec import ExceptionCode

if TYPE_CHECKING:
    from gateway.modbus.session import ModbusSession

log = logging.getLogger("ztgate.modbus.upstream")

GATEWAY_PATH_UNAVAILABLE = ExceptionCode.GATEWAY_PATH_UNAVAILABLE.value
TARGET_FAILED_TO_RESPOND = ExceptionCode.GATEWAY_TARGET_DEVICE_FAILED_TO_RESPOND.value

NOT_IN_FLIGHT = -1  # PendingRequest.upstream_tid while queued, and once answered, failed or expired
_MBAP_PACK = MBAP_HEADER.pack

BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 2.0


class PendingRequest:
    """A client request on its way to the device and back."""

    __slots__ = (
        "deadline",
        "decision",
        "device_unit",
        "request",
        "revision",
        "session",
        "started",
        "upstream_tid",
    )

    def __init__(
        self,
        session: ModbusSession,
        request: Request,
        decision: Decision,
        revision: str,
        device_unit: int,
        started: float,
    ) -> None:
        self.session = session
        self.request = request
        self.decision = decision
        self.revision = revision  # of the policy that decided: the audit names it, not a later one
        self.device_unit = device_unit
        self.started = started  # monotonic() when the request was decoded
        self.deadline = 0.0
        self.upstream_tid = NOT_IN_FLIGHT


class UpstreamConnection(asyncio.Protocol):
    """One TCP connection to the device. Owns the transaction-id space of that connection."""

    def __init__(self, pool: ModbusUpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.in_flight: dict[int, PendingRequest] = {}
        self._deadlines: deque[PendingRequest] = deque()
        self._codec = ClientConnection()
        self._next_tid = random.randrange(1, 0x10000)
        self._out: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False

    # ----------------------------------------------------------------------------- sending

    def send(self, pending: PendingRequest, now: float) -> None:
        tid = self._next_tid
        in_flight = self.in_flight
        while tid in in_flight:  # only possible with more than 65535 ids outstanding
            tid = tid % 0xFFFF + 1
        self._next_tid = tid % 0xFFFF + 1
        pending.upstream_tid = tid
        pending.deadline = now + self.pool.response_timeout_s
        in_flight[tid] = pending
        self._deadlines.append(pending)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_at(pending.deadline, self._expire)
        if not self._out:
            self.pool.mark_dirty(self)
        pdu = pending.request.pdu
        self._out.append(_MBAP_PACK(tid, 0, len(pdu) + 1, pending.device_unit) + pdu)

    def flush(self) -> None:
        if self._out and self.transport is not None:
            self.transport.write(b"".join(self._out) if len(self._out) > 1 else self._out[0])
        self._out.clear()

    # --------------------------------------------------------------------------- receiving

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        codec = self._codec
        codec.receive_data(data)
        in_flight = self.in_flight
        pool = self.pool
        touched = pool.touched
        now = monotonic()
        while True:
            try:
                frame = codec.next_response()
            except ModbusProtocolError as exc:
                # Framing is lost: nothing more on this connection can be matched safely.
                pool.upstream_fault(f"malformed reply framing: {exc}")
                self.abort("malformed reply framing")
                break
            if frame is None:
                break
            tid, unit, pdu = frame
            pending = in_flight.pop(tid, None)
            if pending is None:
                pool.late_replies += 1
                continue
            pending.upstream_tid = NOT_IN_FLIGHT
            session = pending.session
            request = pending.request
            if unit != pending.device_unit:
                pool.upstream_fault(f"reply for unit {unit} to a request for unit {pending.device_unit}")
                if session.fail(pending, TARGET_FAILED_TO_RESPOND, "malformed reply", now):
                    touched.append(session)
                continue
            try:
                device_exception = check_response(request, pdu)
            except ModbusProtocolError as exc:
                pool.upstream_fault(str(exc))
                if session.fail(pending, TARGET_FAILED_TO_RESPOND, f"malformed reply: {exc}", now):
                    touched.append(session)
                continue
            if request.received_pdu is not request.pdu and pdu == request.pdu:
                pdu = request.received_pdu  # the device echoed our canonical rewrite: echo the client's own
            reply = _MBAP_PACK(request.transaction_id, 0, len(pdu) + 1, request.unit_id) + pdu
            if session.deliver(pending, reply, device_exception, now):
                touched.append(session)
        # Drop answered requests from the front of the deadline queue now, not when the timer fires:
        # held for a whole response timeout, they would pile up by the hundred thousand under load.
        deadlines = self._deadlines
        while deadlines and deadlines[0].upstream_tid == NOT_IN_FLIGHT:
            deadlines.popleft()
        pool.refill(self)
        pool.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.pool.connection_lost(self, exc)

    def abort(self, reason: str) -> None:
        if self.transport is not None and not self.closed:
            log.warning("%s: closing upstream connection: %s", self.pool.asset.name, reason)
            self.transport.abort()

    def fail_in_flight(self, reason: str) -> None:
        """The connection is gone: whatever it carried may or may not have reached the device."""
        now = monotonic()
        touched = self.pool.touched
        for pending in self.in_flight.values():
            pending.upstream_tid = NOT_IN_FLIGHT
            if pending.session.fail(pending, TARGET_FAILED_TO_RESPOND, reason, now):
                touched.append(pending.session)
        self.in_flight.clear()
        self._deadlines.clear()

    # ----------------------------------------------------------------------------- timeouts

    def _expire(self) -> None:
        self._timer = None
        now = monotonic()
        deadlines = self._deadlines
        in_flight = self.in_flight
        touched = self.pool.touched
        while deadlines:
            pending = deadlines[0]
            if pending.upstream_tid == NOT_IN_FLIGHT:
                deadlines.popleft()
                continue
            if pending.deadline > now:
                break
            deadlines.popleft()
            del in_flight[pending.upstream_tid]
            pending.upstream_tid = NOT_IN_FLIGHT
            self.pool.timeouts += 1
            if pending.session.fail(pending, TARGET_FAILED_TO_RESPOND, "device did not answer in time", now):
                touched.append(pending.session)
        if deadlines:
            self._timer = asyncio.get_running_loop().call_at(deadlines[0].deadline, self._expire)
        self.pool.refill(self)
        self.pool.flush()


class ModbusUpstreamPool:
    """Connections to one asset's device, the queue in front of them, and their reconnection."""

    def __init__(self, asset: Asset, runtime: Runtime) -> None:
        self.asset = asset
        self.runtime = runtime
        self.response_timeout_s = asset.response_timeout_s
        self.max_in_flight = asset.max_in_flight
        self.connections: list[UpstreamConnection] = []
        self.queue: deque[PendingRequest] = deque()
        # Per batch: connections with unsent output, sessions with unsent replies.
        self.dirty: list[UpstreamConnection] = []
        self._flush_scheduled = False
        self.touched: list[ModbusSession] = []
        self.late_replies = 0
        self.timeouts = 0
        self.connect_failures = 0
        self._connecting = 0
        self._backoff_s = BACKOFF_INITIAL_S
        self._reconnect: asyncio.TimerHandle | None = None
        self._queue_timer: asyncio.TimerHandle | None = None
        self._retired = False
        self.ever_connected = False
        self.last_error: str | None = None

    # ------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect eagerly: readiness reflects the device, and the first request finds a connection."""
        self._open()

    def retire(self) -> None:
        """Stop taking requests; let what is in flight finish, then close."""
        self._retired = True
        if self._reconnect is not None:
            self._reconnect.cancel()
        now = monotonic()
        while self.queue:
            pending = self.queue.popleft()
            if pending.session.fail(pending, GATEWAY_PATH_UNAVAILABLE, "asset reconfigured", now):
                self.touched.append(pending.session)
        self.flush()
        for connection in self.connections:
            if not connection.in_flight and connection.transport is not None:
                connection.transport.close()

    def state(self) -> UpstreamState:
        return UpstreamState(
            asset=self.asset.name,
            protocol="modbus",
            connected=len(self.connections),
            max_connections=self.asset.max_connections,
            in_flight=sum(len(c.in_flight) for c in self.connections),
            queued=len(self.queue),
            late_replies=self.late_replies,
            timeouts=self.timeouts,
            connect_failures=self.connect_failures,
        )

    @property
    def reachable(self) -> bool:
        return bool(self.connections)

    # --------------------------------------------------------------------------------- submit

    def submit(self, pending: PendingRequest) -> None:
        """Send now if a connection has a free slot, else queue (bounded)."""
        max_in_flight = self.max_in_flight
        for connection in self.connections:
            if len(connection.in_flight) < max_in_flight:
                connection.send(pending, pending.started)
                return
        if self._retired:
            self._fail_now(pending, GATEWAY_PATH_UNAVAILABLE, "asset reconfigured")
            return
        if len(self.queue) >= self.asset.queue_limit:
            self._fail_now(pending, GATEWAY_PATH_UNAVAILABLE, "upstream queue full")
            return
        pending.deadline = pending.started + self.response_timeout_s
        self.queue.append(pending)
        if self._queue_timer is None:
            self._queue_timer = asyncio.get_running_loop().call_at(pending.deadline, self._expire_queue)
        if len(self.connections) + self._connecting < self.asset.max_connections and self._reconnect is None:
            self._open()

    def _fail_now(self, pending: PendingRequest, code: int, reason: str) -> None:
        if pending.session.fail(pending, code, reason, monotonic()):
            self.touched.append(pending.session)

    def refill(self, connection: UpstreamConnection) -> None:
        """A slot freed up on ``connection``: move queued requests onto it."""
        queue = self.queue
        if not queue or connection.closed:
            return
        now = monotonic()
        while queue and len(connection.in_flight) < self.max_in_flight:
            connection.send(queue.popleft(), now)

    def mark_dirty(self, connection: UpstreamConnection) -> None:
        """``connection`` has requests to write. They leave at the end of this turn of the event loop,
        so the requests of every client read in the same turn share one write."""
        self.dirty.append(connection)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """End of a batch: one write per connection, one per client session."""
        self._flush_scheduled = False
        dirty = self.dirty
        if dirty:
            for connection in dirty:
                connection.flush()
            dirty.clear()
        touched = self.touched
        if touched:
            for session in touched:
                session.flush()
            touched.clear()

    def _expire_queue(self) -> None:
        self._queue_timer = None
        now = monotonic()
        queue = self.queue
        while queue and queue[0].deadline <= now:
            pending = queue.popleft()
            self.timeouts += 1
            if pending.session.fail(pending, TARGET_FAILED_TO_RESPOND, "no upstream connection in time", now):
                self.touched.append(pending.session)
        if queue:
            self._queue_timer = asyncio.get_running_loop().call_at(queue[0].deadline, self._expire_queue)
        self.flush()

    # ---------------------------------------------------------------------------- connecting

    def _open(self) -> None:
        self._reconnect = None
        if self._retired:
            return
        self._connecting += 1
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        factory: Callable[[], UpstreamConnection] = lambda: UpstreamConnection(self)  # noqa: E731
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(factory, self.asset.upstream_host, self.asset.upstream_port),
                self.asset.connect_timeout_s,
            )
        except (TimeoutError, OSError) as exc:
            self._connecting -= 1
            self.connect_failures += 1
            self._connect_failed(f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__)
            return
        self._connecting -= 1
        if self._retired:
            if connection.transport is not None:
                connection.transport.close()
            return
        self.connections.append(connection)
        self._backoff_s = BACKOFF_INITIAL_S
        if not self.ever_connected or self.last_error is not None:
            self._event("connected", None)
        self.ever_connected = True
        self.last_error = None
        self.refill(connection)
        self.flush()
        # Grow towards the cap only while requests are waiting.
        if self.queue and len(self.connections) + self._connecting < self.asset.max_connections:
            self._open()

    def _connect_failed(self, reason: str) -> None:
        if self.last_error != reason:
            self._event("connect_failed", reason)
        self.last_error = reason
        if not self.connections:
            # Nothing can carry the queue: tell its clients now rather than at their deadline.
            now = monotonic()
            while self.queue:
                pending = self.queue.popleft()
                if pending.session.fail(
                    pending, TARGET_FAILED_TO_RESPOND, f"device unreachable: {reason}", now
                ):
                    self.touched.append(pending.session)
            self.flush()
        self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        if self._retired or self._reconnect is not None or self.connections:
            return
        delay_s = self._backoff_s * (0.5 + random.random() / 2)
        self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)
        self._reconnect = asyncio.get_running_loop().call_later(delay_s, self._open)

    def connection_lost(self, connection: UpstreamConnection, exc: Exception | None) -> None:
        if connection in self.connections:
            self.connections.remove(connection)
        reason = f"upstream connection lost: {exc}" if exc else "upstream connection closed"
        if connection.in_flight:
            connection.fail_in_flight(reason)
        if not self._retired:
            self._event("disconnected", reason)
            self.last_error = reason
            self._schedule_reconnect()
        # Requests that never left keep waiting for the next connection (another one, or a new one).
        for other in self.connections:
            self.refill(other)
        self.flush()

    def upstream_fault(self, reason: str) -> None:
        self.runtime.metrics.count_protocol_error("modbus", "upstream")
        self._event("malformed_reply", reason)

    def _event(self, kind: str, reason: str | None) -> None:
        event = {
            "event": "upstream",
            "asset": self.asset.name,
            "protocol": "modbus",
            "state": kind,
            "upstream": f"{self.asset.upstream_host}:{self.asset.upstream_port}",
        }
        if reason is not None:
            event["reason"] = reason
        self.runtime.audit.emit(event)
