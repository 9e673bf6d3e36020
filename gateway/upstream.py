"""An asset's connections to its device, shared by every client session, whatever the protocol.

Re-origination: each request goes out under an id of the gateway's own, chosen per connection (a Modbus
transaction id, an EtherNet/IP sender context or sequence count), and the reply is matched back by that
id alone. Replies that match nothing (late after a timeout, or invented) are dropped and counted. A
request that may have reached the device is never sent twice: when a connection dies, what was in
flight on it fails; only requests still queued — never sent — move on to another connection.

Bounds: ``max_connections`` links, ``max_in_flight`` requests on each, ``queue_limit`` requests waiting
beyond that, shared fairly between identities (:class:`FairQueue`), ``queue_timeout_s`` from the moment
a request entered the queue until it must have left it (or it is answered as not sent, never sent
late), and ``response_timeout_s`` for the device to answer once it is sent. A request past its
identity's share is not answered busy: it is held, and its session reads nothing more from its client
until the queue takes it in (back-pressure: the surplus waits in TCP, as in front of a PLC that reads
one request at a time). A session that ends takes what it still has waiting with it: never sent,
since nobody waits for the reply. Writes are batched per turn
of the event loop; replies to each client are flushed once per batch of device bytes.

A device out of step: on a link with one request in flight, a reply under an id that is neither that
request's nor one that recently timed out answers that request at once as failed, and the link is
closed and reopened when the asset says ``on_desync = "reconnect"``. A reply still incomplete when its
request times out leaves the link's framing in doubt: the link is closed.

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

from mypy_extensions import mypyc_attr

from gateway.metrics import UpstreamState
from gateway.runtime import Runtime
from policies import Asset

log = logging.getLogger("ztgate.upstream")

BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 2.0
NOT_IN_FLIGHT = -1  # Pending.key once answered, failed or expired
QUEUED = -2  # Pending.key while it waits in the pool's queue
HELD = -3  # Pending.key while it waits past its identity's share, its session reading nothing meanwhile
RECENTLY_EXPIRED_KEYS = 256  # per link: ids whose reply, if it still comes, is late rather than out of step


class Failure(Enum):
    """Why the device could not answer a request; each protocol turns it into its own error."""

    RECONFIGURED = "asset reconfigured"
    TIMEOUT = "device did not answer in time"
    QUEUE_TIMEOUT = "not sent within queue_timeout_s"
    DESYNC = "reply with another id"
    CONNECTION_LOST = "upstream connection lost"
    UNREACHABLE = "device unreachable"
    MALFORMED_REPLY = "malformed reply"
    CLIENT_GONE = "client gone before it was sent"

    @property
    def overload(self) -> bool:
        """The gateway, not the device, could not take the request (Modbus answers 0x0A for these)."""
        return self is Failure.RECONFIGURED

    @property
    def aggregated(self) -> bool:
        """Answered by the gateway without a word from the device, so a flood can make as many of them
        as it sends: audited per session, kind and interval like refusals (gateway/refusals.py)."""
        return self is Failure.RECONFIGURED or self is Failure.QUEUE_TIMEOUT or self is Failure.CLIENT_GONE


class Client(Protocol):
    """What a pool needs from the session that submitted a request."""

    identity: str  # its SPIFFE id: the queue is shared fairly between identities

    def fail(self, pending: Any, failure: Failure, reason: str, now: float) -> bool: ...

    def flush(self) -> None: ...

    def hold(self) -> None:
        """One of its requests waits past its identity's share: read nothing more from the client."""

    def unhold(self) -> None:
        """Its held requests are in the queue (or answered): read on."""


# Compiled with mypyc (pyproject.toml [tool.ztgate] compiled): the protocols' pools, links and requests
# that are not compiled subclass these in Python, which a compiled class must allow.
@mypyc_attr(allow_interpreted_subclasses=True)
class Pending:
    """A client request on its way to the device and back; protocols add their own fields."""

    __slots__ = ("deadline", "key", "session", "started")

    def __init__(self, session: Client, started: float) -> None:
        self.session = session
        self.started = started  # monotonic() when the request was decoded (the loop clock on Linux)
        self.deadline = 0.0
        self.key = NOT_IN_FLIGHT


P = TypeVar("P", bound=Pending)


@mypyc_attr(allow_interpreted_subclasses=True)
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
        self.abort_reason: str | None = None  # why the gateway closed it, for the audit
        self.last_data_at = 0.0  # monotonic() of the last bytes from the device
        # Ids of requests that timed out (or were given up) recently: a reply under one is late, not a
        # sign that the device is out of step. Insertion-ordered, bounded.
        self._given_up: dict[int, None] = {}

    # ---------------------------------------------------------------------- protocol hooks

    async def handshake(self) -> None:
        """What the device needs before it takes requests (EtherNet/IP: RegisterSession...)."""

    def send(self, pending: P, now: float) -> None:
        """Encode ``pending`` under an id of this link's own and :meth:`track` it."""
        raise NotImplementedError

    def partial_reply_bytes(self) -> int:
        """Bytes of a reply received but not yet complete (a protocol's framer knows)."""
        return 0

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
            self.unmatched(key)
            return None
        pending.key = NOT_IN_FLIGHT
        return pending

    def unmatched(self, key: int) -> None:
        """A reply under ``key`` matches no request in flight. Late (its request was given up) or
        unattributable (several in flight) it is dropped and counted. With exactly one request in
        flight it can only be meant for that one: the device is out of step. That request is answered
        at once rather than at its deadline, and the link is reopened if the asset says so."""
        pool = self.pool
        pool.late_replies += 1
        if key in self._given_up or len(self.in_flight) != 1:
            return
        ((waiting_key, pending),) = self.in_flight.items()
        reason = f"reply with {pool.id_name} {key} to request {waiting_key}"
        self._give_up(pending)
        pool.desyncs += 1
        if pending.session.fail(pending, Failure.DESYNC, reason, monotonic()):
            pool.touched.append(pending.session)
        reconnect = pool.asset.on_desync == "reconnect"
        pool.event("desync", f"{reason}: {'reconnecting' if reconnect else 'waiting'} (on_desync)")
        if reconnect:
            self.abort(f"device out of step: {reason}")

    def _give_up(self, pending: P) -> None:
        del self.in_flight[pending.key]
        given_up = self._given_up
        given_up[pending.key] = None
        if len(given_up) > RECENTLY_EXPIRED_KEYS:
            del given_up[next(iter(given_up))]
        pending.key = NOT_IN_FLIGHT

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
        if self.transport is not None and not self.closed and self.abort_reason is None:
            log.warning("%s: closing upstream connection: %s", self.pool.asset.name, reason)
            self.abort_reason = reason
            self.ready = False
            self.pool.detach(self)  # no new request may go out on it before connection_lost runs
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
        touched = self.pool.touched
        partial = self.partial_reply_bytes()
        reason = Failure.TIMEOUT.value
        if partial:
            # Bytes still arriving one by one, or a reply cut short: say which, from when the last came.
            reason = (
                f"{reason}: {partial} bytes of a reply had arrived,"
                f" the last {(now - self.last_data_at) * 1000:.0f} ms before"
            )
        expired = False
        while deadlines:
            pending = deadlines[0]
            if pending.key == NOT_IN_FLIGHT:
                deadlines.popleft()
                continue
            if pending.deadline > now:
                break
            deadlines.popleft()
            self._give_up(pending)
            expired = True
            self.pool.timeouts += 1
            self.silent = True
            if pending.session.fail(pending, Failure.TIMEOUT, reason, now):
                touched.append(pending.session)
        if expired and partial:
            # The rest of that reply may never come, or come glued to the next one: the framing of this
            # connection can no longer be trusted.
            self.abort(f"incomplete reply at a response deadline ({partial} bytes)")
        if deadlines and not self.closed:
            self._timer = self.pool.loop.call_at(deadlines[0].deadline, self._expire)
        self.pool.refill(self)
        self.pool.flush()


class FairQueue:
    """The requests waiting for a link, shared fairly between identities.

    Each identity has a lane; links take from the lanes in turn, one request each (deficit round-robin
    in which every request costs the same quantum). Of ``limit`` places an identity may hold its share,
    ``limit`` divided by the identities waiting (rounded up). A request beyond that is *held*, not
    refused: it waits outside the queue, in its lane's order, and its session reads nothing more from
    its client (:meth:`Client.hold`) until the request is taken in, when one of its identity's requests
    leaves the queue (or the queue has room again under its share). Its queue timeout runs from then.
    When the queue is full, an identity still under its share takes the place of the newest request of
    the identity holding the most, which is held in turn (first in its lane's order: it was read
    first), its session stopped as well. So a greedy identity fills only its own share, the others
    never wait behind more than one of its requests per turn, and what it sends past its share waits in
    its own TCP connections, unread, costing the gateway nothing.

    A new lane (an identity with nothing waiting) is served before the turn goes on, once, as FQ-CoDel
    serves its new flows first: a client that sends one request at a time (a poller, an HMI) then waits
    only for what is already on its way to the device, not for a greedy identity's next request as well.
    Also as in FQ-CoDel, a new lane emptied that way keeps its place in the turn until the turn reaches
    it: its identity's next request, if it comes before that, waits its turn like any other. So however
    many identities send one request at a time, an identity with a full lane is still served once per
    turn. An identity that keeps its lane full is never new.

    Every request's deadline follows from when it entered the queue, so the oldest waiting request is
    the first to expire: ``arrivals`` keeps that order for the pool's single queue timer (sent and
    refused entries are skipped when they reach its front).

    Sessions whose held requests have all been taken in (or drained) are listed in ``released``: the
    pool lets them read on once its batch is done. A session that ends has what it still has waiting,
    queued or held, taken out (:meth:`withdraw`): nobody waits for those replies, and nothing may go to
    the device for a client that is gone.
    """

    __slots__ = ("_active", "_fresh", "_held", "_held_by", "_lanes", "arrivals", "limit", "released",
                 "size", "timeout_s")  # fmt: skip

    def __init__(self, limit: int, timeout_s: float = 0.0) -> None:
        self.limit = limit
        self.timeout_s = timeout_s  # a request taken in from its hold waits at most this long in the queue
        self.size = 0
        # In turn order, the next lane to serve first; a new lane served and emptied stays, empty,
        # until the turn reaches it.
        self._lanes: dict[str, deque[Pending]] = {}
        self._fresh: dict[str, None] = {}  # new lanes not yet served, in arrival order
        self._active = 0  # lanes holding requests: the identities waiting
        self.arrivals: deque[Pending] = deque()
        # Requests past their identity's share, per lane in the order they were read, and how many
        # each session has there (it reads on when none is left).
        self._held: dict[str, deque[Pending]] = {}
        self._held_by: dict[Any, int] = {}
        self.released: list[Client] = []

    def __len__(self) -> int:
        return self.size

    @property
    def held(self) -> int:
        """Requests held past their identity's share."""
        return sum(len(waiting) for waiting in self._held.values())

    def share(self, lane: str) -> int:
        """How many places ``lane`` may hold now."""
        waiting = self._active + (not self._lanes.get(lane))
        return -(-self.limit // waiting)

    def offer(self, pending: Pending, lane: str) -> tuple[bool, Pending | None]:
        """Queue ``pending`` in ``lane``: (accepted, the request pushed out to make room, if any). Not
        accepted, it is held (``key`` HELD) until :meth:`pop` or :meth:`expire` takes it in."""
        lanes = self._lanes
        queued = lanes.get(lane)
        if self._held.get(lane) or len(queued or ()) >= self.share(lane):
            self._hold(pending, lane, first=False)
            return False, None
        pushed_out = None
        if self.size >= self.limit:
            fullest = max(lanes.values(), key=len)
            if fullest is queued or len(fullest) < 2:
                # Nobody to give way (only when there are more identities than places): wait in turn.
                self._hold(pending, lane, first=False)
                return False, None
            pushed_out = fullest.pop()
            self.size -= 1
            self.arrivals.remove(pushed_out)  # near the back; it gets a new deadline when taken in again
            self._hold(pushed_out, pushed_out.session.identity, first=True)
        self._enqueue(pending, lane)
        return True, pushed_out

    def pop(self, now: float = 0.0) -> Pending | None:
        """The next request in turn, or None. Held requests it makes room for are taken in at ``now``."""
        if not self.size:
            return None
        lanes = self._lanes
        fresh = self._fresh
        if fresh:
            lane = next(iter(fresh))
            del fresh[lane]
            queued = lanes[lane]
            pending = queued.popleft()
        else:
            while True:
                lane = next(iter(lanes))
                queued = lanes.pop(lane)
                if queued:
                    break  # else a new lane served and emptied: the turn reached it, it goes
            pending = queued.popleft()
            if queued:
                lanes[lane] = queued  # to the back of the turn
        if not queued:
            self._active -= 1
        self.size -= 1
        if not self.size:
            lanes.clear()  # only emptied lanes were left
        pending.key = NOT_IN_FLIGHT
        if self._held:
            self._take_in(now)
        return pending

    def expire(self, now: float) -> list[Pending]:
        """Take out every request whose deadline is ``now`` or earlier (they are at their lanes' fronts)."""
        arrivals = self.arrivals
        expired: list[Pending] = []
        while arrivals:
            pending = arrivals[0]
            if pending.key != QUEUED:
                arrivals.popleft()
                continue
            if pending.deadline > now:
                break
            arrivals.popleft()
            lane = pending.session.identity
            queued = self._lanes[lane]
            queued.remove(pending)  # at or near the front: every lane is in arrival order
            if not queued:
                self._active -= 1
                self._remove(lane)
            pending.key = NOT_IN_FLIGHT
            self.size -= 1
            expired.append(pending)
        if not self.size:
            self._lanes.clear()  # only emptied lanes were left
        if expired and self._held:
            self._take_in(now)
        return expired

    def withdraw(self, session: Client, now: float) -> list[Pending]:
        """Take out every request of ``session``, queued or held; its places go to the requests held
        behind it (taken in at ``now``)."""
        lane = session.identity
        out: list[Pending] = []
        waiting = self._held.get(lane)
        if waiting is not None and self._held_by.pop(session, 0):
            out.extend(pending for pending in waiting if pending.session is session)
            kept = deque(pending for pending in waiting if pending.session is not session)
            if kept:
                self._held[lane] = kept
            else:
                del self._held[lane]
        queued = self._lanes.get(lane)
        if queued:
            mine = [pending for pending in queued if pending.session is session]
            if mine:
                out.extend(mine)
                kept = deque(pending for pending in queued if pending.session is not session)
                self.size -= len(mine)
                if kept:
                    self._lanes[lane] = kept  # keeps its place in the turn
                else:
                    self._active -= 1
                    self._remove(lane)
                if not self.size:
                    self._lanes.clear()  # only emptied lanes were left
        for pending in out:
            pending.key = NOT_IN_FLIGHT  # ``arrivals`` skips it
        if out and self._held:
            self._take_in(now)
        return out

    def next_deadline(self) -> float | None:
        arrivals = self.arrivals
        while arrivals and arrivals[0].key != QUEUED:
            arrivals.popleft()
        return arrivals[0].deadline if arrivals else None

    def drain(self) -> list[Pending]:
        """Everything waiting, held or queued, emptied out (their sessions are released)."""
        out = [p for waiting in self._held.values() for p in waiting]
        out.extend(p for queued in self._lanes.values() for p in queued)
        for pending in out:
            pending.key = NOT_IN_FLIGHT
        self.released.extend(self._held_by)
        self._held.clear()
        self._held_by.clear()
        self._lanes.clear()
        self._fresh.clear()
        self._active = 0
        self.arrivals.clear()
        self.size = 0
        return out

    def _enqueue(self, pending: Pending, lane: str) -> None:
        lanes = self._lanes
        queued = lanes.get(lane)
        if queued is None:
            queued = lanes[lane] = deque()
            self._fresh[lane] = None
        if not queued:
            self._active += 1
        pending.key = QUEUED
        queued.append(pending)
        self.arrivals.append(pending)
        self.size += 1

    def _hold(self, pending: Pending, lane: str, first: bool) -> None:
        pending.key = HELD
        waiting = self._held.get(lane)
        if waiting is None:
            waiting = self._held[lane] = deque()
        if first:
            waiting.appendleft(pending)
        else:
            waiting.append(pending)
        held_by = self._held_by
        held_by[pending.session] = held_by.get(pending.session, 0) + 1

    def _take_in(self, now: float) -> None:
        """Move held requests into the queue while their lanes are under their share and there is room,
        lane by lane in the order they were first held."""
        held = self._held
        emptied: list[str] = []
        for lane, waiting in held.items():
            if self.size >= self.limit:
                break
            while waiting and self.size < self.limit and len(self._lanes.get(lane) or ()) < self.share(lane):
                pending = waiting.popleft()
                pending.deadline = now + self.timeout_s
                self._enqueue(pending, lane)
                session = pending.session
                left = self._held_by[session] - 1
                if left:
                    self._held_by[session] = left
                else:
                    del self._held_by[session]
                    self.released.append(session)
            if not waiting:
                emptied.append(lane)
        for lane in emptied:
            del held[lane]

    def _remove(self, lane: str) -> None:
        """``lane`` is empty: out of the turn."""
        del self._lanes[lane]
        self._fresh.pop(lane, None)


@mypyc_attr(allow_interpreted_subclasses=True)
class UpstreamPool:
    """Links to one asset's device, the queue in front of them, and their reconnection."""

    protocol_name: ClassVar[str]
    link_class: ClassVar[type[Link[Any]]]
    id_name: ClassVar[str] = "id"  # what the protocol calls a link's match key, for the audit

    def __init__(self, asset: Asset, runtime: Runtime) -> None:
        self.asset = asset
        self.runtime = runtime
        self.response_timeout_s = asset.response_timeout_s
        self.queue_timeout_s = asset.queue_timeout_s
        self.max_in_flight = asset.max_in_flight
        self.max_connections = asset.max_connections
        self.connections: list[Link[Any]] = []
        self.queue = FairQueue(asset.queue_limit, asset.queue_timeout_s)
        # Per batch: links with unsent output, sessions with unsent replies.
        self.dirty: list[Link[Any]] = []
        self.touched: list[Client] = []
        self._flush_scheduled = False
        self.late_replies = 0
        self.timeouts = 0
        self.desyncs = 0
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
        for pending in self.queue.drain():
            self._fail(pending, Failure.RECONFIGURED, Failure.RECONFIGURED.value, now)
        self._release_held()
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
            held=self.queue.held,
            late_replies=self.late_replies,
            timeouts=self.timeouts,
            connect_failures=self.connect_failures,
        )

    # --------------------------------------------------------------------------------- submit

    def submit(self, pending: Pending) -> None:
        """Send now if a link has a free slot and nothing waits, else queue (bounded, fair)."""
        max_in_flight = self.max_in_flight
        if not self.queue.size:
            for link in self.connections:
                if len(link.in_flight) < max_in_flight:
                    link.send(pending, pending.started)
                    return
        now = pending.started
        if self._retired:
            self._fail(pending, Failure.RECONFIGURED, Failure.RECONFIGURED.value, now)
            return
        # The deadline runs from the moment the gateway read the request, not from when it is sent.
        pending.deadline = now + self.queue_timeout_s
        accepted, pushed_out = self.queue.offer(pending, pending.session.identity)
        if not accepted:
            pending.session.hold()  # held past its identity's share: its session stops reading
            return
        if pushed_out is not None:
            pushed_out.session.hold()  # another identity took its place: that session stops reading too
        if self._queue_timer is None:
            self._queue_timer = self.loop.call_at(pending.deadline, self._expire_queue)
        if len(self.connections) + self._connecting < self.max_connections and self._reconnect is None:
            self._open()

    def withdraw(self, session: Client) -> None:
        """``session`` ended: what it still has waiting, queued or held, is never sent, and answered
        (to nobody: the session is closed) as :attr:`Failure.CLIENT_GONE`, so its audit says so."""
        now = monotonic()
        withdrawn = self.queue.withdraw(session, now)
        for pending in withdrawn:
            self._fail(pending, Failure.CLIENT_GONE, Failure.CLIENT_GONE.value, now)
        if self.queue.released:
            self._release_held()

    def _fail(self, pending: Pending, failure: Failure, reason: str, now: float) -> None:
        if pending.session.fail(pending, failure, reason, now):
            self.touched.append(pending.session)

    def refill(self, link: Link[Any]) -> None:
        """A slot freed up on ``link``: move queued requests onto it, in turn between identities. One
        whose deadline has passed is answered instead, never sent late (a timer may fire late)."""
        queue = self.queue
        if not queue.size or link.closed or not link.ready:
            return
        now = monotonic()
        while queue.size and len(link.in_flight) < self.max_in_flight:
            pending = queue.pop(now)
            assert pending is not None
            if pending.deadline <= now:
                self._queue_timed_out(pending, now)
            else:
                link.send(pending, now)
        if queue.released:
            self._release_held()

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
        for pending in self.queue.expire(now):
            self._queue_timed_out(pending, now)
        if self.queue.released:
            self._release_held()
        deadline = self.queue.next_deadline()
        if deadline is not None:
            self._queue_timer = self.loop.call_at(deadline, self._expire_queue)
        self.flush()

    def _release_held(self) -> None:
        """Sessions whose held requests are all in the queue (or answered) read on, after this batch:
        reading now would re-enter the pool in the middle of it."""
        released = self.queue.released
        call_soon = self.loop.call_soon
        for session in released:
            call_soon(session.unhold)
        released.clear()

    def _queue_timed_out(self, pending: Pending, now: float) -> None:
        """Never sent: say what held it up."""
        self.timeouts += 1
        waited = f"{Failure.QUEUE_TIMEOUT.value} ({self.queue_timeout_s:g} s)"
        if self.connections:
            in_flight = sum(len(link.in_flight) for link in self.connections)
            reason = f"{waited}: the device was busy with {in_flight} earlier requests"
        else:
            reason = f"{waited}: no upstream connection" + (
                f" ({self.last_error})" if self.last_error else ""
            )
        self._fail(pending, Failure.QUEUE_TIMEOUT, reason, now)

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
            self.event("connected", None)
        self.ever_connected = True
        self.last_error = None
        self.refill(link)
        self.flush()
        # Grow towards the cap only while requests are waiting.
        if self.queue and len(self.connections) + self._connecting < self.max_connections:
            self._open()

    def _connect_failed(self, reason: str) -> None:
        if self.last_error != reason:
            self.event("connect_failed", reason)
        self.last_error = reason
        if not self.connections:
            # Nothing can carry the queue: tell its clients now rather than at their deadline.
            now = monotonic()
            for pending in self.queue.drain():
                self._fail(pending, Failure.UNREACHABLE, f"device unreachable: {reason}", now)
            self._release_held()
            self.flush()
        self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        if self._retired or self._reconnect is not None or self.connections:
            return
        delay_s = self._backoff_s * (0.5 + random.random() / 2)
        self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)
        self._reconnect = self.loop.call_later(delay_s, self._open)

    def detach(self, link: Link[Any]) -> None:
        """``link`` takes no more requests."""
        if link in self.connections:
            self.connections.remove(link)
            if not self.connections:
                self.link_ready.clear()

    def connection_lost(self, link: Link[Any], exc: Exception | None) -> None:
        self.detach(link)
        if link.abort_reason is not None:
            reason = f"upstream connection closed by the gateway: {link.abort_reason}"
        else:
            reason = f"upstream connection lost: {exc}" if exc else "upstream connection closed"
        if link.in_flight:
            link.fail_in_flight(reason)
        if not self._retired:
            self.event("disconnected", reason)
            self.last_error = reason
            self._schedule_reconnect()
        # Requests that never left keep waiting for the next link (another one, or a new one).
        for other in self.connections:
            self.refill(other)
        self.flush()

    def upstream_fault(self, reason: str) -> None:
        self.runtime.metrics.count_protocol_error(self.protocol_name, "upstream")
        self.event("malformed_reply", reason)

    def event(self, kind: str, reason: str | None) -> None:
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
