"""A device restart under a live subscription, end to end: an asyncua client through agent -> gateway -> a
device that is killed and started again on the same port, the device being asyncua's server or node-opcua's
(two independently written servers). The client's subscription goes on, told of the gap by a
StatusChangeNotification; what the device no longer has is reported in the spec's terms; and while the
device is away nothing floods: Publish requests wait, reconnection follows the asset's back-off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from asyncua.common.subscription import DataChangeNotif
from asyncua.ua.ua_binary import struct_to_binary

from gateway.opcua.forwarding import Forwarding
from gateway.opcua.session import OpcUaSession
from gateway.opcua.upstream import BACKOFF_MAX_S, CONTROL_CHECK_S, DeviceSession, OpcUaPool
from tests.e2e.harness import Lab, opcua_policy_text
from tests.e2e.opcua_devices import KINDS, Device, running_device
from tests.e2e.test_opcua import PLANT, RULES, TANK, raw_channel, tank
from tests.e2e.test_opcua_sessions import _subscribe, _with_token

PUBLISHING_INTERVAL_MS = 50
CONNECT_TIMEOUT_S = 3.0
# How long the data may take to come back once the device listens again: the asset's longest back-off,
# the control session's check, a device session opened, and one publishing interval; doubled for a
# shared machine. A bound on waiting, not a timed assertion: without the restore it never comes.
RESUME_DEADLINE_S = 2 * (BACKOFF_MAX_S + CONTROL_CHECK_S + CONNECT_TIMEOUT_S + PUBLISHING_INTERVAL_MS / 1000)
HELD_HINT_MS = 2_500  # a Publish request's TimeoutHint, above response_timeout_s (2 s)
OUTAGE_RECONNECT_ATTEMPTS = 3  # the asset's reconnect loop tries (and fails) this often while it is away


@pytest.fixture(params=KINDS)
async def device(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Device]:
    async with running_device(request.param, tmp_path / "device-pki") as running:
        yield running


class Notes:
    """A subscription handler: every data change (value and status) and status change, awaitable."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, Any, int]] = []
        self.status_changes: list[int] = []
        self._arrived = asyncio.Event()

    def datachange_notification(self, node: Any, value: Any, data: DataChangeNotif) -> None:
        status = data.monitored_item.Value.StatusCode
        self.changes.append((node.nodeid.Identifier, value, status.value if status is not None else 0))
        self._arrived.set()

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        self.status_changes.append(status.Status.value)
        self._arrived.set()

    async def wait(self, condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not condition():
                self._arrived.clear()
                await self._arrived.wait()

    def saw(self, node: str, value: Any) -> bool:
        return any(name == node and seen == value for name, seen, _ in self.changes)


class PublishCounter:
    """Publish requests the gateway sent to any device session (its device side), counted by wrapping
    DeviceSession.send for the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent = 0
        send = DeviceSession.send

        def counting(session: DeviceSession, request: Any, *args: Any, **kwargs: Any) -> None:
            if isinstance(request, ua.PublishRequest):
                self.sent += 1
            send(session, request, *args, **kwargs)

        monkeypatch.setattr(DeviceSession, "send", counting)


def pool_of(lab: Lab) -> OpcUaPool:
    assert lab.gateway is not None
    pool = lab.gateway.runtime.upstreams.pool_for(lab.gateway.policy.assets["opc-1"])
    assert isinstance(pool, OpcUaPool)
    return pool


def forwarding_of(lab: Lab) -> Forwarding:
    assert lab.gateway is not None
    (session,) = lab.gateway.runtime.sessions
    assert isinstance(session, OpcUaSession)
    return session._forwarding


async def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll ``condition`` (gateway state nothing signals) until it holds, within ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def client_publishes(lab: Lab) -> int:
    """Publish requests the gateway answered its client (decided and accounted)."""
    assert lab.gateway is not None
    (session,) = lab.gateway.runtime.sessions
    return int(session.counts.get("Publish", 0))


async def _subscribed(lab: Lab, device: Device) -> tuple[Client, Notes, Any]:
    extra = f"connect_timeout_s = {CONNECT_TIMEOUT_S}"
    await lab.start_gateway(opcua_policy_text(device.port, RULES, asset_extra=extra))
    port = await lab.start_agent("alice", "opc-1", "opcua")
    await wait_until(lambda: pool_of(lab).control is not None, 30)
    # asyncua's client closes itself when its once-a-second ServerState probe fails: a slower probe lets
    # the test watch one session through the outage.
    client = Client(f"opc.tcp://127.0.0.1:{port}/", timeout=10, watchdog_intervall=600)
    await client.connect()
    notes = Notes()
    subscription = await client.create_subscription(PUBLISHING_INTERVAL_MS, notes)
    return client, notes, subscription


async def _outage(lab: Lab, device: Device, counter: PublishCounter) -> tuple[int, int]:
    """Kill the device and keep it away while the asset's reconnect loop fails a few times; the Publish
    requests (device side, client side) counted during that time."""
    pool = pool_of(lab)
    failures = pool.connect_failures
    await device.stop()
    await wait_until(lambda: pool.control is None)
    await wait_until(lambda: bool(forwarding_of(lab)._held))  # the client's pending Publish, held
    sent, answered = counter.sent, client_publishes(lab)
    await wait_until(lambda: pool.connect_failures >= failures + OUTAGE_RECONNECT_ATTEMPTS, 60)
    return counter.sent - sent, client_publishes(lab) - answered


async def test_a_subscription_goes_on_on_the_same_client_subscription_after_a_device_restart(
    lab: Lab, device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = PublishCounter(monkeypatch)
    client, notes, subscription = await _subscribed(lab, device)
    try:
        ns = await client.get_namespace_index(PLANT)
        await subscription.subscribe_data_change(client.get_node(tank(ns, "Level")))
        await notes.wait(lambda: notes.saw(f"{TANK}.Level", 50.0))
        client_subscription_id = subscription.subscription_id
        device_side, client_side = await _outage(lab, device, counter)
        # Nothing went to the device while it was away, and the client's Publish request waited: no loop.
        assert device_side == 0
        assert client_side == 0
        await device.restart()
        await device.set_value("Level", 61.0)
        await notes.wait(lambda: notes.saw(f"{TANK}.Level", 61.0), RESUME_DEADLINE_S)
        # The same subscription of the client's, told of the gap once.
        assert subscription.subscription_id == client_subscription_id
        assert notes.status_changes == [ua.StatusCodes.GoodSubscriptionTransferred]
        # And it goes on: a later change arrives too.
        await device.set_value("Level", 62.5)
        await notes.wait(lambda: notes.saw(f"{TANK}.Level", 62.5))
        # One device session for the client and the control session, no more.
        assert await device.sessions() == 2
        assert await device.subscriptions() == 1
    finally:
        await client.disconnect()
    states = [(e["state"], e.get("reason")) for e in lab.audit_events(event="upstream", session=None)]
    assert ("disconnected", "control session lost") in states
    session_states = [
        (e["state"], e.get("reason")) for e in lab.audit_events(event="upstream") if "session" in e
    ]
    assert ("disconnected", "device session lost") in session_states
    assert ("connected", "1 subscription(s) re-created") in session_states
    # The client's session tried the device only once the asset's control session was back: the
    # reconnect loop is the asset's, not one per session or request.
    assert [state for state, _ in session_states].count("connect_failed") <= 1, session_states


async def test_a_monitored_item_whose_node_is_gone_after_the_restart_is_reported_with_the_devices_status(
    lab: Lab, device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = PublishCounter(monkeypatch)
    client, notes, subscription = await _subscribed(lab, device)
    try:
        ns = await client.get_namespace_index(PLANT)
        await subscription.subscribe_data_change(
            [client.get_node(tank(ns, "Level")), client.get_node(tank(ns, "Setpoint"))]
        )
        await notes.wait(lambda: notes.saw(f"{TANK}.Level", 50.0) and notes.saw(f"{TANK}.Setpoint", 1000.0))
        await _outage(lab, device, counter)
        await device.restart(without=["Level"])
        # The item on the vanished node: a data change carrying the device's status, once.
        await notes.wait(lambda: bool(notes.status_changes), RESUME_DEADLINE_S)
        gone = [(value, status) for name, value, status in notes.changes if name == f"{TANK}.Level"]
        assert gone[-1] == (None, ua.StatusCodes.BadNodeIdUnknown)
        assert notes.status_changes == [ua.StatusCodes.GoodSubscriptionTransferred]
        # Its neighbour goes on.
        await client.get_node(tank(ns, "Setpoint")).write_value(ua.Variant(1200.0, ua.VariantType.Double))
        await notes.wait(lambda: notes.saw(f"{TANK}.Setpoint", 1200.0))
        # The gone item is gone for the client too: deleting it gets the spec's answer.
        level_handle = next(iter(subscription._monitored_items))
        item = subscription._monitored_items[level_handle]
        params = ua.DeleteMonitoredItemsParameters(
            SubscriptionId=subscription.subscription_id, MonitoredItemIds=[item.server_handle]
        )
        results = await client.uaclient.delete_monitored_items(params)
        assert [r.value for r in results] == [ua.StatusCodes.BadMonitoredItemIdInvalid]
    finally:
        await client.disconnect()


async def test_a_publish_request_held_while_the_device_is_away_gets_bad_timeout_at_its_hint(
    lab: Lab, device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = PublishCounter(monkeypatch)
    extra = f"connect_timeout_s = {CONNECT_TIMEOUT_S}"
    await lab.start_gateway(opcua_policy_text(device.port, RULES, asset_extra=extra))
    await wait_until(lambda: pool_of(lab).control is not None, 30)
    ns = pool_of(lab).namespaces.index(PLANT)
    raw = await raw_channel(lab)
    await raw.handshake()
    token = await raw.session()
    assert await _subscribe(raw, token, tank(ns, "Level"), 10) == 1
    first = await raw.request(_with_token(ua.PublishRequest(), token), 12, ua.PublishResponse)
    assert first.Parameters.SubscriptionId == 1  # the Level as it is
    await device.stop()
    await wait_until(lambda: pool_of(lab).control is None)
    sent = counter.sent
    for request_id in (13, 14):
        publish = ua.PublishRequest()
        publish.RequestHeader.AuthenticationToken = token
        publish.RequestHeader.TimeoutHint = HELD_HINT_MS
        answer = await raw.request(struct_to_binary(publish), request_id, ua.PublishResponse, timeout_s=30)
        assert answer.ResponseHeader.ServiceResult.value == ua.StatusCodes.BadTimeout
    assert counter.sent == sent  # the device heard nothing of them
    raw.writer.close()
    await wait_until(lambda: not lab.gateway.runtime.sessions)  # type: ignore[union-attr]
    # Audited as the device's outcome, aggregated: the first in full, the rest counted.
    unanswered = lab.audit_events(event="decision", service="Publish", outcome="device unavailable")
    assert unanswered[0]["code_name"] == "BadTimeout" and "aggregated" not in unanswered[0]
    assert sum(e.get("count", 1) for e in unanswered) == 2
