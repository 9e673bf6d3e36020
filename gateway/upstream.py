"""An asset's connections to its device, shared by every client session, whatever the protocol.

Re-origination: each request goes out under an id of the gateway's own, chosen per connection (a Modbus
transaction id, an EtherNet/IP sender context or sequence count), and the reply is matched back by that
id alone. Replies that match nothing (late after a timeout, or invented) are dropped and counted. A
request that may have reached the device is never sent twice: when a connection dies, what was in
flight on it fails; only requests still queued — never sent — move on to another connection.

Bounds: ``max_connections`` links, ``max_in_flight`` requests on each, ``queue_limit`` requests waiting
beyond that (more fail at once), ``response_timeout_s`` for the device to answer once a request is
sent, and as long again for a request to leave the queue. Writes are batched per turn of the event
loop; replies to each client are flushed once per batch of device bytes.

A protocol supplies a :class:`Link` subclass (how to send a request and match replies, plus any
handshake the device needs before it takes requests) and maps :class:`Failure` to its own error codes.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from enum import Enum
from time import monotonic
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast

from gateway.metrics import UpstreamState
from gateway.runtime import Runtime
from policies import Asset

log = logging.getLogger("ztgate.upstream")

BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 2.0
NOT_IN_FLIGHT = -1  # Pending.key while queued, and once answered, failed or expired


class Failure(Enum):
    """Why the device could not answer a request; each protocol turns it into its own error."""

    QUEUE_FULL = "upstream queue full"
    RECONFIGURED = "asset reconfigured"
    TIMEOUT = "device did not answer in time"
    QUEUE_TIMEOUT = "no upstream connection in time"
    CONNECTION_LOST = "upstream connection lost"
    UNREACHABLE = "device unreachable"
    MALFORMED_REPLY = "malformed reply"

    @property
    def overload(self) -> bool:
        """The gateway, not the device, could not take the request (Modbus answers 0x0A for these)."""
        return self in (Failure.QUEUE_FULL, Failure.RECONFIGURED)


class Client(Protocol):
    """What a pool needs from the session that submitted a request."""

    def fail(self, pending: Any, failure: Failure, reason: str, now: float) -> bool: ...

    def flush(self) -> None: ...


class Pending:
    """A client request on its way to the device and back; protocols add their own fields."""

    __slots__ = ("deadline", "key", "session", "started")

    def __init__(self, session: Client, started: float) -> None:
        self.session = session
        self.started = started  # monotonic() when the request was decoded (the loop clock on Linux)
        self.deadline = 0.0
        self.key = NOT_IN_FLIGHT


P = TypeVar("P", bound=Pending)


class Link(asyncio.Protocol, Generic[P]):
    """One connection to the device. Owns the id space of that connection."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.in_flight: dict[int, P] = {}
        self._deadlines: deque[P] = deque()
        self._out: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.ready = False  # the handshake is done and the pool hands it requests
        # A request timed out and the device has sent nothing since: it accepts TCP but does not answer.
        self.silent = False

    # ---------------------------------------------------------------------- protocol hooks

    async def handshake(self) -> None:
        """What the device needs before it takes requests (EtherNet/IP: RegisterSession...)."""

    def send(self, pending: P, now: float) -> None:
        """Encode ``pending`` under an id of this link's own and :meth:`track` it."""
        raise NotImplementedError

    # -------------------------------------------------------------------------- sending

    def track(self, pending: P, key: int, data: bytes, now: float) -> None:
        pending.key = key
        pending.deadline = now + self.pool.response_timeout_s
        self.in_flight[key] = pending
        self._deadlines.append(pending)
        if self._timer is None:
            self._timer = self.pool.loop.call_at(pending.deadline, self._expire)
        if not self._out and len(self.in_flight) == 1 and self.transport is not None:
            # Alone on its way to the device: there is no batch to wait for, only latency to lose.
            self.transport.write(data)
            return
        self.write(data)

    def write(self, data: bytes) -> None:
        if not self._out:
            self.pool.mark_dirty(self)
        self._out.append(data)

    def flush(self) -> None:
        if self._out and self.transport is not None:
            self.transport.write(b"".join(self._out) if len(self._out) > 1 else self._out[0])
        self._out.clear()

    # ------------------------------------------------------------------------ receiving

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def answered(self, key: int) -> P | None:
        """The request a reply with ``key`` answers, taken off this link; None if nothing waits for it."""
        pending = self.in_flight.pop(key, None)
        if pending is None:
            self.pool.late_replies += 1
            return None
        pending.key = NOT_IN_FLIGHT
        return pending

    def batch_done(self) -> None:
        """End of a batch of replies: forget answered requests, refill free slots, write."""
        # Answered requests leave the front of the deadline queue now, not when the timer fires: held for
        # a whole response timeout, they would pile up by the hundred thousand under load.
        deadlines = self._deadlines
        while deadlines and deadlines[0].key == NOT_IN_FLIGHT:
            deadlines.popleft()
        self.silent = False  # the device spoke
        self.pool.refill(self)
        self.pool.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.pool.connection_lost(self, exc)

    def close_gracefully(self) -> None:
        """Close when the pool retires (protocols that say goodbye to the device override this)."""
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self, reason: str) -> None:
        if self.transport is not None and not self.closed:
            log.warning("%s: closing upstream connection: %s", self.pool.asset.name, reason)
            self.transport.abort()

    def fail_in_flight(self, reason: str) -> None:
        """The connection is gone: whatever it carried may or may not have reached the device."""
        now = monotonic()
        touched = self.pool.touched
        for pending in self.in_flight.values():
            pending.key = NOT_IN_FLIGHT
            if pending.session.fail(pending, Failure.CONNECTION_LOST, reason, now):
                touched.append(pending.session)
        self.in_flight.clear()
        self._deadlines.clear()

    def _expire(self) -> None:
        self._timer = None
        now = monotonic()
        deadlines = self._deadlines
        in_flight = self.in_flight
        touched = self.pool.touched
        while deadlines:
            pending = deadlines[0]
            if pending.key == NOT_IN_FLIGHT:
                deadlines.popleft()
                continue
            if pending.deadline > now:
                break
            deadlines.popleft()
            del in_flight[pending.key]
            pending.key = NOT_IN_FLIGHT
            self.pool.timeouts += 1
            self.silent = True
            if pending.session.fail(pending, Failure.TIMEOUT, Failure.TIMEOUT.value, now):
                touched.append(pending.session)
        if deadlines:
            self._timer = self.pool.loop.call_at(deadlines[0].deadline, self._expire)
        self.pool.refill(self)
        self.pool.flush()


class UpstreamPool:
    """Links to one asset's device, the queue in front of them, and their reconnection."""

    protocol_name: ClassVar[str]
    link_class: ClassVar[type[Link[Any]]]

    def __init__(self, asset: Asset, runtime: Runtime) -> None:
        self.asset = asset
        self.runtime = runtime
        self.response_timeout_s = asset.response_timeout_s
        self.max_in_flight = asset.max_in_flight
        self.max_connections = asset.max_connections
        self.connections: list[Link[Any]] = []
        self.queue: deque[Pending] = deque()
        # Per batch: links with unsent output, sessions with unsent replies.
        self.dirty: list[Link[Any]] = []
        self.touched: list[Client] = []
        self._flush_scheduled = False
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
        self.link_ready = asyncio.Event()  # set while at least one link takes requests
        # Pools are made inside the running loop; asking for it per call costs a getpid() system call.
        self.loop = asyncio.get_running_loop()

    # ------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect eagerly: readiness reflects the device, and the first request finds a link."""
        self._open()

    def retire(self) -> None:
        """Stop taking requests; let what is in flight finish, then close."""
        self._retired = True
        if self._reconnect is not None:
            self._reconnect.cancel()
        now = monotonic()
        while self.queue:
            self._fail(self.queue.popleft(), Failure.RECONFIGURED, Failure.RECONFIGURED.value, now)
        self.flush()
        for link in list(self.connections):
            if not link.in_flight:
                link.close_gracefully()

    def state(self) -> UpstreamState:
        silent = sum(link.silent for link in self.connections)
        return UpstreamState(
            asset=self.asset.name,
            protocol=self.protocol_name,
            connected=len(self.connections) - silent,
            not_answering=silent,
            last_error=self.last_error,
            max_connections=self.max_connections,
            in_flight=sum(len(link.in_flight) for link in self.connections),
            queued=len(self.queue),
            late_replies=self.late_replies,
            timeouts=self.timeouts,
            connect_failures=self.connect_failures,
        )

    # --------------------------------------------------------------------------------- submit

    def submit(self, pending: Pending) -> None:
        """Send now if a link has a free slot, else queue (bounded)."""
        max_in_flight = self.max_in_flight
        for link in self.connections:
            if len(link.in_flight) < max_in_flight:
                link.send(pending, pending.started)
                return
        now = pending.started
        if self._retired:
            self._fail(pending, Failure.RECONFIGURED, Failure.RECONFIGURED.value, now)
            return
        if len(self.queue) >= self.asset.queue_limit:
            self._fail(pending, Failure.QUEUE_FULL, Failure.QUEUE_FULL.value, now)
            return
        pending.deadline = now + self.response_timeout_s
        self.queue.append(pending)
        if self._queue_timer is None:
            self._queue_timer = self.loop.call_at(pending.deadline, self._expire_queue)
        if len(self.connections) + self._connecting < self.max_connections and self._reconnect is None:
            self._open()

    def _fail(self, pending: Pending, failure: Failure, reason: str, now: float) -> None:
        if pending.session.fail(pending, failure, reason, now):
            self.touched.append(pending.session)

    def refill(self, link: Link[Any]) -> None:
        """A slot freed up on ``link``: move queued requests onto it."""
        queue = self.queue
        if not queue or link.closed or not link.ready:
            return
        now = monotonic()
        while queue and len(link.in_flight) < self.max_in_flight:
            link.send(queue.popleft(), now)

    def mark_dirty(self, link: Link[Any]) -> None:
        """``link`` has requests to write. They leave at the end of this turn of the event loop, so the
        requests of every client read in the same turn share one write."""
        self.dirty.append(link)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """End of a batch: one write per link, one per client session."""
        self._flush_scheduled = False
        dirty = self.dirty
        if dirty:
            for link in dirty:
                link.flush()
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
            self.timeouts += 1
            self._fail(queue.popleft(), Failure.QUEUE_TIMEOUT, Failure.QUEUE_TIMEOUT.value, now)
        if queue:
            self._queue_timer = self.loop.call_at(queue[0].deadline, self._expire_queue)
        self.flush()

    # ---------------------------------------------------------------------------- connecting

    def _open(self) -> None:
        self._reconnect = None
        if self._retired:
            return
        self._connecting += 1
        self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        link: Link[Any] | None = None
        try:
            async with asyncio.timeout(self.asset.connect_timeout_s):
                _, link = await loop.create_connection(
                    lambda: self.link_class(self), self.asset.upstream_host, self.asset.upstream_port
                )
                await link.handshake()
        except (TimeoutError, OSError, ConnectionError) as exc:
            if link is not None:
                link.abort("handshake failed")
            self._connecting -= 1
            self.connect_failures += 1
            self._connect_failed(f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__)
            return
        self._connecting -= 1
        if self._retired or link.closed:
            if link.transport is not None:
                link.transport.close()
            if not self._retired:
                self._connect_failed("connection closed during the handshake")
            return
        link.ready = True
        self.connections.append(link)
        self.link_ready.set()
        self._backoff_s = BACKOFF_INITIAL_S
        if not self.ever_connected or self.last_error is not None:
            self._event("connected", None)
        self.ever_connected = True
        self.last_error = None
        self.refill(link)
        self.flush()
        # Grow towards the cap only while requests are waiting.
        if self.queue and len(self.connections) + self._connecting < self.max_connections:
            self._open()

    def _connect_failed(self, reason: str) -> None:
        if self.last_error != reason:
            self._event("connect_failed", reason)
        self.last_error = reason
        if not self.connections:
            # Nothing can carry the queue: tell its clients now rather than at their deadline.
            now = monotonic()
            while self.queue:
                self._fail(self.queue.popleft(), Failure.UNREACHABLE, f"device unreachable: {reason}", now)
            self.flush()
        self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        if self._retired or self._reconnect is not None or self.connections:
            return
        delay_s = self._backoff_s * (0.5 + random.random() / 2)
        self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)
        self._reconnect = self.loop.call_later(delay_s, self._open)

    def connection_lost(self, link: Link[Any], exc: Exception | None) -> None:
        if link in self.connections:
            self.connections.remove(link)
            if not self.connections:
                self.link_ready.clear()
        reason = f"upstream connection lost: {exc}" if exc else "upstream connection closed"
        if link.in_flight:
            link.fail_in_flight(reason)
        if not self._retired:
            self._event("disconnected", reason)
            self.last_error = reason
            self._schedule_reconnect()
        # Requests that never left keep waiting for the next link (another one, or a new one).
        for other in self.connections:
            self.refill(other)
        self.flush()

    def upstream_fault(self, reason: str) -> None:
        self.runtime.metrics.count_protocol_error(self.protocol_name, "upstream")
        self._event("malformed_reply", reason)

    def _event(self, kind: str, reason: str | None) -> None:
        event = {
            "event": "upstream",
            "asset": self.asset.name,
            "protocol": self.protocol_name,
            "state": kind,
            "upstream": f"{self.asset.upstream_host}:{self.asset.upstream_port}",
        }
        if reason is not None:
            event["reason"] = reason
        self.runtime.audit.emit(event)
