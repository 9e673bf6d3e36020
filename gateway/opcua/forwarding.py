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
import logging
from functools import partial
from time import monotonic
from typing import Any, Final, Protocol

from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError

from gateway.opcua.decisions import Decided, needs_rewrite, rewrite_response
from gateway.opcua.tracking import SessionTracking
from gateway.opcua.upstream import DeviceSession, OpcUaPool, UpstreamUnavailableError, connect_failure
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
MAX_PUBLISH_WAIT_S = 120.0


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
        self, event: ServiceRequest, decided: Decided, answered: bool, started: float, outcome: str = ""
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
        self.tracking = SessionTracking()
        self._generation += 1
        if self.device is not None:
            self.pool.release_session()
            asyncio.get_running_loop().create_task(self.device.close())
            self.device = None

    # ---------------------------------------------------------------------------- the one path

    def forward(self, event: ServiceRequest, decided: Decided) -> None:
        """Send what ``decided`` allows of ``event`` to the device; the client is answered from what
        comes back (or with a Bad status when nothing does), and the allowed operations accounted."""
        started = monotonic()
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
            self._session._account_forwarded(event, decided, False, started, SESSION_CLOSED)
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
                session._account_forwarded(event, decided, False, started, SESSION_CLOSED)
            elif body is None:
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
        if isinstance(error, TimeoutError | asyncio.CancelledError):
            self.pool.timeouts += 1
            self._session._fault(event, BAD_TIMEOUT)
        else:
            self._session._fault(event, BAD_SERVER_NOT_CONNECTED)
        self._session._account_forwarded(event, decided, False, started)

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
        """The live device session, (re)opened when there is none; UpstreamUnavailableError when the
        device gives none within ``connect_timeout_s``."""
        device = self.device
        if device is not None and device.alive:
            return device
        if device is not None:  # lost: forget it; the next request opens a new one
            self.device = None
            self.pool.release_session()
            self.tracking = SessionTracking()  # the device's subscriptions went with its session
            asyncio.get_running_loop().create_task(device.close())
            self._session._audit_upstream("disconnected", "device session lost")
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(self._open_device())
        await asyncio.wait({self._connecting}, timeout=self._session.view.asset.connect_timeout_s)
        if self.device is None or not self.device.alive:
            raise UpstreamUnavailableError("no session on the device")
        return self.device

    async def _open_device(self) -> None:
        """Open a device session under one of the asset's ``max_sessions`` places, taken before the
        device is asked (clients arriving together cannot all pass the count while the first opens) and
        given back whenever no session comes of it."""
        pool = self.pool
        if not pool.reserve_session():
            self._session._audit_upstream("connect_failed", f"max_sessions ({pool.max_sessions}) reached")
            return
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
            if kept:
                self.device = device
            else:
                pool.release_session()
                # Not awaited: a cancelled open (the session ended meanwhile) must still let go.
                asyncio.get_running_loop().create_task(device.close())

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
