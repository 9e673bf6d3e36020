"""OPC UA towards the device for one client session: what the policy allows goes out on the gateway's own
device session for this client, and the answer comes back to the client.

One path for every allowed request (:meth:`Forwarding.forward`):

- **what goes out**: the client's own bytes when the decision says nothing in the request or its response
  is the gateway's business (a Read of plain values: the common polling request); otherwise a request
  object, with the client's subscription ids mapped to the device's and cut down to the allowed
  operations (nothing goes out when none is allowed: the client gets BadUserAccessDenied in every place);
- **when**: at once on a live device session, the answer arriving by callback in the ``data_received``
  that brings it; otherwise after (re)opening the device session, in a task;
- **what comes back**: the device's bytes re-labelled for the client, or its response decoded, with the
  subscription ids mapped back, the refused results spliced in and the policy's view of the answer
  (:func:`~gateway.opcua.decisions.rewrite_response`).

The session on the client's side answers, audits and counts (:class:`ClientSide`).
"""

from __future__ import annotations

import asyncio
import copy
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from time import monotonic
from typing import Any, Final, Protocol

from asyncua import ua
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError

from gateway.opcua.decisions import Decided, needs_rewrite, rewrite_response
from gateway.opcua.tracking import Item, Recreated, SessionTracking
from gateway.opcua.upstream import (
    BACKOFF_INITIAL_S,
    BACKOFF_MAX_S,
    DeviceSession,
    OpcUaPool,
    UpstreamUnavailableError,
    connect_failure,
    jittered,
)
from gateway.runtime import Runtime
from policies import SubjectView
from protocols.opcua.binary import decode
from protocols.opcua.events import ServiceRequest
from protocols.opcua.messages import SERVICE_FAULT_TYPE_ID, type_id_span
from protocols.opcua.operations import Reduction, reduce_request, splice_response
from protocols.opcua.spec import OpcUaProtocolError, Status

log = logging.getLogger("ztgate.opcua")

BAD_SERVER_NOT_CONNECTED: Final = StatusCodes.BadServerNotConnected
BAD_TIMEOUT: Final = StatusCodes.BadTimeout
BAD_INTERNAL_ERROR: Final = StatusCodes.BadInternalError
BAD_SESSION_CLOSED: Final = StatusCodes.BadSessionClosed
SESSION_CLOSED: Final = "session closed"  # the outcome of a request whose client session ended first
DEVICE_UNAVAILABLE: Final = "device unavailable"
MAX_PUBLISH_WAIT_S = 120.0
# The status of the gateway's own StatusChangeNotification after a device restart: the subscription was
# moved to the gateway's new device session and goes on (clients take it so: node-opcua keeps the
# subscription); and for one the device would not create again, the status by which a server tells a
# client its subscription is gone (Part 4, 5.13.1.1: its lifetime ran out).
SUBSCRIPTION_CARRIED: Final = StatusCodes.GoodSubscriptionTransferred
SUBSCRIPTION_LOST: Final = StatusCodes.BadTimeout


@dataclass(eq=False)  # held requests are told apart by identity
class _Held:
    """A Publish request held while the device is away: answered when it comes back, or at its timeout."""

    event: ServiceRequest
    decided: Decided
    started: float
    timer: asyncio.TimerHandle | None = None


class ClientSide(Protocol):
    """What forwarding needs of the session it forwards for (the session's own methods)."""

    runtime: Runtime
    view: SubjectView
    closing: bool
    id: str

    def _relay(self, event: ServiceRequest, body: bytes) -> None: ...

    def _respond(self, event: ServiceRequest, response: Any) -> None: ...

    def _fault(self, event: ServiceRequest, status: int) -> None: ...

    def _account_forwarded(
        self,
        event: ServiceRequest,
        decided: Decided,
        answered: bool,
        started: float,
        outcome: str = "",
        code: int = BAD_SERVER_NOT_CONNECTED,
    ) -> None: ...

    def _audit_upstream(self, state: str, reason: str | None) -> None: ...

    def _room_in_flight(self) -> None: ...


class Forwarding:
    """One client session's device session, and its requests on their way there."""

    def __init__(self, session: ClientSide, pool: OpcUaPool) -> None:
        self._session = session
        self.pool = pool
        self.device: DeviceSession | None = None
        self._connecting: asyncio.Task[None] | None = None
        # Re-creating the client's subscriptions on a new device session, after the last one was lost;
        # meanwhile Publish requests are held (_held) and other requests wait for it.
        self._restoring: asyncio.Task[None] | None = None
        self._held: list[_Held] = []
        self._gap_messages: list[ua.PublishResponse] = []  # the gateway's own, for the next Publish requests
        # After a failed open or a lost device session, the next attempt waits for the asset's control
        # session (the one reconnect loop per asset) and this session's own back-off.
        self._retry_at: float | None = None
        self._failed_at = 0.0
        self._backoff_s = BACKOFF_INITIAL_S
        self.tracking = SessionTracking()
        # Which client session a request was sent for: one ended (CloseSession, the channel closed)
        # makes the answers still on their way to it answers to nobody's request.
        self._generation = 0
        self.in_flight = 0  # requests on their way to the device, and tasks of this session's
        self._tasks: set[asyncio.Task[None]] = set()
        # Kept: asyncio.get_running_loop() is a getpid() system call per call in CPython 3.11.
        self._loop: asyncio.AbstractEventLoop | None = None

    def namespaces(self) -> tuple[str, ...]:
        if self.device is not None and self.device.namespaces:
            return self.device.namespaces
        return self.pool.namespaces

    def release(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.end_device_session()

    def end_device_session(self) -> None:
        """Let the device session go with everything it held (closing it deletes its subscriptions on
        the device), and forget what was tracked of it: the client's session that used it is over.
        Requests still waiting on it are answered as the connection closes."""
        if self._connecting is not None:
            self._connecting.cancel()  # its place under max_sessions is given back as it ends
            self._connecting = None
        if self._restoring is not None:
            self._restoring.cancel()
            self._restoring = None
        self.tracking = SessionTracking()
        self._gap_messages.clear()
        self._generation += 1
        held, self._held = self._held, []
        for waiting in held:
            self.in_flight -= 1
            self._answer_held(waiting, BAD_SESSION_CLOSED, SESSION_CLOSED)
        if self.device is not None:
            self.pool.release_session()
            asyncio.get_running_loop().create_task(self.device.close())
            self.device = None

    # ---------------------------------------------------------------------------- the one path

    def forward(self, event: ServiceRequest, decided: Decided) -> None:
        """Send what ``decided`` allows of ``event`` to the device; the client is answered from what
        comes back (or with a Bad status when nothing does), and the allowed operations accounted."""
        started = monotonic()
        if event.name == "Publish" and self._publish_held(event, decided, started):
            return
        if self._restoring is not None and not decided.relay:
            # Its subscription or monitored item ids are mapped once the new device session has them.
            self.spawn(event, self._forward_restored(event, decided, started))
            return
        request: Any = None  # None: the client's own bytes
        reduction: Reduction | None = None
        if not decided.relay:
            self.tracking.request_to_device(event.name, event.request)
            request = event.request
            codec = event.service.operations
            if decided.whole is None:
                assert codec is not None
                allowed = [decision.allowed for decision in decided.decisions]
                reduction = reduce_request(codec, event.request, allowed)
                if reduction.request is None:  # nothing allowed: the device hears nothing of it
                    self._session._respond(event, splice_response(reduction, None))
                    return
                request = reduction.request
        device = self.device
        if device is None or not self._send(device, event, decided, request, reduction, started):
            self.spawn(event, self._connect_then_send(event, decided, request, reduction, started))

    def _send(
        self,
        device: DeviceSession,
        event: ServiceRequest,
        decided: Decided,
        request: Any,
        reduction: Reduction | None,
        started: float,
    ) -> bool:
        """Send on ``device`` now, the answer to come to :meth:`_answered`; False when the session there
        is gone (nothing sent, nothing counted)."""
        reply = partial(self._answered, event, decided, reduction, started, self._generation)
        self.in_flight += 1
        try:
            if request is None:  # never a Publish or Republish: those carry subscription ids
                token_span = event.repeat.token_span if event.repeat is not None else None
                timeout_s = self._session.view.asset.response_timeout_s
                device.send_raw(event.body, timeout_s, reply, self._late_reply, token_span)
            else:
                device.send(request, self._timeout_s(event), reply, self._late_reply)
        except UpstreamUnavailableError:
            self.in_flight -= 1
            return False
        except (ConnectionError, OSError, UaError) as error:
            reply(None, error)
        except Exception:  # a bug of ours must not leave the client waiting, nor let anything through
            self.in_flight -= 1
            log.exception("%s: %s request failed in the gateway", self._session.id, event.name)
            self._session._fault(event, BAD_INTERNAL_ERROR)
            self._session._room_in_flight()
        return True

    async def _connect_then_send(
        self,
        event: ServiceRequest,
        decided: Decided,
        request: Any,
        reduction: Reduction | None,
        started: float,
    ) -> None:
        generation = self._generation
        try:
            device = await self.device_session()
        except UpstreamUnavailableError as error:
            self._unanswered(event, decided, started, error)
            return
        if generation != self._generation:  # the client's session ended while this one waited
            self._session._fault(event, BAD_SESSION_CLOSED)
            self._session._account_forwarded(
                event, decided, False, started, SESSION_CLOSED, BAD_SESSION_CLOSED
            )
            return
        if not self._send(device, event, decided, request, reduction, started):
            self._unanswered(event, decided, started, UpstreamUnavailableError("no session on the device"))

    def _answered(
        self,
        event: ServiceRequest,
        decided: Decided,
        reduction: Reduction | None,
        started: float,
        generation: int,
        body: bytes | None,
        error: BaseException | None,
    ) -> None:
        self.in_flight -= 1
        session = self._session
        try:
            if generation != self._generation:
                # Its session ended meanwhile: BadSessionClosed (Part 4, 5.6.4) where a channel is left to
                # hear it, and nothing the device or the gateway did wrong.
                session._fault(event, BAD_SESSION_CLOSED)
                session._account_forwarded(event, decided, False, started, SESSION_CLOSED, BAD_SESSION_CLOSED)
            elif body is None:
                if not self._held_after_loss(event, decided, started, error):
                    self._unanswered(event, decided, started, error or ConnectionError("no response"))
            else:
                if decided.relay:
                    session._relay(event, body)
                else:
                    self._answer_decoded(event, decided, reduction, body)
                session._account_forwarded(event, decided, True, started)
        except Exception:  # a bug of ours must not leave the client waiting: Bad, logged (as _done)
            log.exception("%s: %s request failed in the gateway", session.id, event.name)
            session._fault(event, BAD_INTERNAL_ERROR)
        session._room_in_flight()

    def _answer_decoded(
        self, event: ServiceRequest, decided: Decided, reduction: Reduction | None, body: bytes
    ) -> None:
        """The device's response decoded, its subscription ids mapped back, the refused results spliced
        in, and what the policy changes in it, to the client."""
        response = self._decoded(event, body)
        if response is None:
            return
        session = self._session
        if reduction is not None:
            try:
                response = splice_response(reduction, response)
            except OpcUaProtocolError as error:
                session.runtime.metrics.count_protocol_error("opcua", "upstream")
                session._fault(event, error.status)
                return
        name = event.name
        self.tracking.response_to_client(name, event.request, response)
        if decided.whole is None and needs_rewrite(name, decided.operations):
            now = session.runtime.clock()
            rewrite_response(session.view, name, decided.operations, response, self.namespaces(), now)
        session._respond(event, response)

    def _decoded(self, event: ServiceRequest, body: bytes) -> Any | None:
        """The device's response as an object; None after relaying its ServiceFault or answering a
        response that does not decode with BadUnknownResponse."""
        type_id, _ = type_id_span(body)
        if type_id == SERVICE_FAULT_TYPE_ID:
            self._session._relay(event, body)
            return None
        try:
            response, _left = decode(event.service.response_type, body)
        except Exception:  # asyncua raises whatever its decoders hit on bytes it cannot read
            self._session.runtime.metrics.count_protocol_error("opcua", "upstream")
            self._session._fault(event, Status.BAD_UNKNOWN_RESPONSE)
            return None
        return response

    def _unanswered(
        self, event: ServiceRequest, decided: Decided, started: float, error: BaseException
    ) -> None:
        """Answer a request the device did not: BadTimeout (``error`` a TimeoutError, or the cancelled
        future of a request whose time ran out), else BadServerNotConnected."""
        code = BAD_SERVER_NOT_CONNECTED
        if isinstance(error, TimeoutError | asyncio.CancelledError):
            self.pool.timeouts += 1
            code = BAD_TIMEOUT
        self._session._fault(event, code)
        self._session._account_forwarded(event, decided, False, started, DEVICE_UNAVAILABLE, code)

    def _late_reply(self) -> None:
        self.pool.late_replies += 1

    def _timeout_s(self, event: ServiceRequest) -> float:
        timeout_s = self._session.view.asset.response_timeout_s
        if event.service.name in ("Publish", "Republish"):
            hint = event.header.TimeoutHint / 1000 if event.header.TimeoutHint else MAX_PUBLISH_WAIT_S
            return min(max(hint, timeout_s), MAX_PUBLISH_WAIT_S)
        return timeout_s

    # ------------------------------------------------------------------------------ the device

    async def device_session(self) -> DeviceSession:
        """The live device session, (re)opened when there is none; UpstreamUnavailableError when none is
        there within ``connect_timeout_s``. While the client's subscriptions are being re-created on a new
        one, that is what is waited for."""
        device = self.device
        if device is not None and device.alive:
            return device
        if device is not None:
            self._device_lost()
        waited = self._restoring
        if waited is None:
            if self._connecting is None or self._connecting.done():
                self._connecting = asyncio.get_running_loop().create_task(self._connect_once())
            waited = self._connecting
        await asyncio.wait({waited}, timeout=self._session.view.asset.connect_timeout_s)
        device = self.device
        if device is None or not device.alive:
            raise UpstreamUnavailableError("no session on the device")
        return device

    def _device_lost(self) -> None:
        """The device session is gone (the device restarted, or its connection broke): let it go, and
        re-create the client's subscriptions on a new one when the device is back."""
        device, self.device = self.device, None
        if device is None:
            return
        self.pool.release_session()
        asyncio.get_running_loop().create_task(device.close())
        self._session._audit_upstream("disconnected", "device session lost")
        self._retry_at = self._failed_at = monotonic()  # at the pace of the asset's reconnection now
        if self.tracking.subscriptions and self._restoring is None:
            self._restoring = asyncio.get_running_loop().create_task(self._restore())

    async def _connect_once(self) -> None:
        device = await self._connect()
        if device is not None:
            self.device = device

    async def _connect(self) -> DeviceSession | None:
        """One attempt at a device session: at once the first time; after a failure or a lost session only
        once this session's own back-off has passed and the asset's control session has shown the device
        to be there since (the pool reconnects with back-off and jitter, one loop for every session of
        the asset). A refusal under ``max_sessions`` asks nothing of the device, and backs nothing off."""
        if self._retry_at is not None:
            wait_s = self._retry_at - monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            await self.pool.device_back(self._failed_at)
        pool = self.pool
        if not pool.reserve_session():
            self._session._audit_upstream("connect_failed", f"max_sessions ({pool.max_sessions}) reached")
            return None
        device = await self._open_device()
        if device is None:
            self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S) if self._retry_at else BACKOFF_INITIAL_S
            self._failed_at = monotonic()
            self._retry_at = self._failed_at + jittered(self._backoff_s)
        else:
            self._retry_at, self._backoff_s = None, BACKOFF_INITIAL_S
        return device

    async def _open_device(self) -> DeviceSession | None:
        """Open a device session under the place under ``max_sessions`` taken for it before the device is
        asked (clients arriving together cannot all pass the count while the first opens), given back
        whenever no session comes of it."""
        pool = self.pool
        asset = self._session.view.asset
        device = DeviceSession(asset)
        kept = False
        try:
            await device.open()
            kept = not self._session.closing
        except Exception as exc:  # whatever asyncua raises on the way: the device is not there
            pool.connect_failures += 1
            self._session._audit_upstream("connect_failed", connect_failure(asset, exc))
        finally:
            if not kept:
                pool.release_session()
                # Not awaited: a cancelled open (the session ended meanwhile) must still let go.
                asyncio.get_running_loop().create_task(device.close())
        return device if kept else None

    # ----------------------------------------------------------------------- a device restarted

    async def _restore(self) -> None:
        """Open a new device session once the device is back, re-create the client's subscriptions and
        monitored items on it, and answer the held Publish requests: first with the gateway's own message
        about the gap, then from the device."""
        device: DeviceSession | None = None
        try:
            while device is None:
                device = await self._connect()
                if device is None and self._retry_at is None:  # refused a place: ask again, backed off
                    self._failed_at = monotonic()
                    self._retry_at = self._failed_at + jittered(self._backoff_s)
            recreated = await self._recreate(device)
        except BaseException:
            if device is not None:
                self.pool.release_session()
                asyncio.get_running_loop().create_task(device.close())
            raise
        finally:
            if self._restoring is asyncio.current_task():  # not a later one's, after end_device_session
                self._restoring = None
        self.device = device
        if not device.alive:  # lost again while re-creating: start over
            self._device_lost()
            return
        self._session._audit_upstream("connected", f"{len(recreated)} subscription(s) re-created")
        now = datetime.now(UTC)
        self._gap_messages.extend(_gap_message(gap, now) for gap in recreated)
        held, self._held = self._held, []
        for waiting in held:
            if waiting.timer is not None:
                waiting.timer.cancel()
            self.in_flight -= 1
            self.forward(waiting.event, waiting.decided)
        self._session._room_in_flight()

    async def _recreate(self, device: DeviceSession) -> list[Recreated]:
        """Every tracked subscription created again on ``device``, with its monitored items as the client
        last asked for them (one CreateMonitoredItems per TimestampsToReturn)."""
        done = []
        for client_id, subscription in self.tracking.tracked():
            create = ua.CreateSubscriptionRequest()
            create.Parameters = copy.deepcopy(subscription.parameters)
            created = await self._ask(device, create, ua.CreateSubscriptionResponse)
            items = list(subscription.items.items())
            results: list[ua.MonitoredItemCreateResult | None] = [None] * len(items)
            failure = ua.StatusCode(ua.UInt32(BAD_SERVER_NOT_CONNECTED))
            if created is not None and created.ResponseHeader.ServiceResult.is_good():
                for timestamps in dict.fromkeys(item.timestamps for _, item in items):
                    chosen = [i for i, (_, item) in enumerate(items) if item.timestamps == timestamps]
                    answer = await self._create_items(
                        device, created, [items[i][1] for i in chosen], timestamps
                    )
                    if answer is None:
                        continue
                    if not answer.ResponseHeader.ServiceResult.is_good():
                        failure = answer.ResponseHeader.ServiceResult
                    for index, result in zip(chosen, answer.Results or (), strict=False):
                        results[index] = result
            done.append(self.tracking.recreate(client_id, created, items, results, failure))
        return done

    async def _create_items(
        self,
        device: DeviceSession,
        created: ua.CreateSubscriptionResponse,
        items: list[Item],
        timestamps: ua.TimestampsToReturn,
    ) -> ua.CreateMonitoredItemsResponse | None:
        request = ua.CreateMonitoredItemsRequest()
        request.Parameters = ua.CreateMonitoredItemsParameters(
            SubscriptionId=created.Parameters.SubscriptionId,
            TimestampsToReturn=timestamps,
            ItemsToCreate=[copy.deepcopy(item.request) for item in items],
        )
        answer: ua.CreateMonitoredItemsResponse | None = await self._ask(
            device, request, ua.CreateMonitoredItemsResponse
        )
        return answer

    async def _ask(self, device: DeviceSession, request: Any, response_type: type[Any]) -> Any | None:
        """A request of the gateway's own on ``device``: its response, a ServiceFault as a response of
        ``response_type`` with the fault's ServiceResult, or None when none came."""
        answered: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()

        def reply(body: bytes | None, _error: BaseException | None) -> None:
            if not answered.done():
                answered.set_result(body)

        try:
            device.send(request, self._session.view.asset.response_timeout_s, reply, self._late_reply)
        except (UpstreamUnavailableError, ConnectionError, OSError, UaError):
            return None
        body = await answered
        if body is None:
            return None
        try:
            type_id, _ = type_id_span(body)
            if type_id == SERVICE_FAULT_TYPE_ID:
                fault, _left = decode(ua.ServiceFault, body)
                response = response_type()
                response.ResponseHeader = fault.ResponseHeader
                return response
            return decode(response_type, body)[0]
        except Exception:  # asyncua raises whatever its decoders hit on bytes it cannot read
            self._session.runtime.metrics.count_protocol_error("opcua", "upstream")
            return None

    async def _forward_restored(self, event: ServiceRequest, decided: Decided, started: float) -> None:
        restoring = self._restoring
        if restoring is not None:
            await asyncio.wait({restoring}, timeout=self._session.view.asset.connect_timeout_s)
        if self._restoring is not None:
            self._unanswered(event, decided, started, UpstreamUnavailableError("no session on the device"))
            return
        self.forward(event, decided)

    # ------------------------------------------------------------------- Publish while it is away

    def _publish_held(self, event: ServiceRequest, decided: Decided, started: float) -> bool:
        """A Publish request while the device is away is held (True); one that comes when the gateway
        has a message of its own about a gap gets that message (True)."""
        if self._gap_messages:
            message = self._gap_messages.pop(0)
            self._session._respond(event, message)
            self._session._account_forwarded(event, decided, True, started)
            return True
        device = self.device
        if device is not None and not device.alive:
            self._device_lost()
        if self._restoring is None:
            return False
        self._hold(event, decided, started)
        return True

    def _held_after_loss(
        self, event: ServiceRequest, decided: Decided, started: float, error: BaseException | None
    ) -> bool:
        """A Publish request waiting on the device when its session was lost is held for the new one
        (True); its acknowledgements were for the lost session's messages, and go with it."""
        if event.name != "Publish" or isinstance(error, TimeoutError | asyncio.CancelledError):
            return False
        device = self.device
        if device is not None and device.alive:
            return False
        if device is not None:
            self._device_lost()
        if self._restoring is None:
            return False
        event.request.Parameters.SubscriptionAcknowledgements = []
        self._hold(event, decided, started)
        return True

    def _hold(self, event: ServiceRequest, decided: Decided, started: float) -> None:
        waiting = _Held(event, decided, started)
        waiting.timer = asyncio.get_running_loop().call_later(
            self._timeout_s(event), self._held_expired, waiting
        )
        self.in_flight += 1
        self._held.append(waiting)

    def _held_expired(self, waiting: _Held) -> None:
        """The held request's own timeout passed first: BadTimeout, as a device with nothing to send."""
        waiting.timer = None
        if waiting in self._held:
            self._held.remove(waiting)
            self.in_flight -= 1
            self._answer_held(waiting, BAD_TIMEOUT, DEVICE_UNAVAILABLE)
            self._session._room_in_flight()

    def _answer_held(self, waiting: _Held, status: int, outcome: str) -> None:
        if waiting.timer is not None:
            waiting.timer.cancel()
            waiting.timer = None
        self._session._fault(waiting.event, status)
        session = self._session
        session._account_forwarded(waiting.event, waiting.decided, False, waiting.started, outcome, status)

    # ------------------------------------------------------------------------------- tasks

    def spawn(self, event: ServiceRequest, coroutine: Any) -> None:
        """Run ``coroutine`` for ``event`` as a task counted in flight; a failure of ours in it answers
        the client BadInternalError."""
        self.in_flight += 1
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        task = loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._done(event, done))

    def _done(self, event: ServiceRequest, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.in_flight -= 1
        if not task.cancelled() and (error := task.exception()) is not None:
            # A bug of ours must not leave the client waiting, nor let anything through: Bad, logged.
            log.error("%s: %s request failed in the gateway", self._session.id, event.name, exc_info=error)
            self._session._fault(event, BAD_INTERNAL_ERROR)
        self._session._room_in_flight()


def _gap_message(gap: Recreated, now: datetime) -> ua.PublishResponse:
    """The gateway's own NotificationMessage about a device restart for one subscription: the monitored
    items the device would not create again, each with the device's status as its value's, and a
    StatusChangeNotification (the subscription goes on, or is gone)."""
    notifications: list[Any] = []
    if gap.failed_items:
        changes = [
            ua.MonitoredItemNotification(ClientHandle=handle, Value=ua.DataValue(StatusCode=status))
            for handle, status in gap.failed_items
        ]
        notifications.append(ua.DataChangeNotification(MonitoredItems=changes))
    status = SUBSCRIPTION_LOST if gap.subscription is None else SUBSCRIPTION_CARRIED
    notifications.append(ua.StatusChangeNotification(Status=ua.StatusCode(ua.UInt32(status))))
    response = ua.PublishResponse()
    response.Parameters = ua.PublishResult(
        SubscriptionId=gap.client_id,
        AvailableSequenceNumbers=[],
        MoreNotifications=False,
        NotificationMessage=ua.NotificationMessage(
            SequenceNumber=gap.sequence_number, PublishTime=now, NotificationData=notifications
        ),
    )
    return response
