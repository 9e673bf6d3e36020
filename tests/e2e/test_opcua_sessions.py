"""OPC UA sessions over time, end to end (asyncua clients through agent -> gateway -> a device that is
asyncua's server or node-opcua's, two independently written servers): the device-session limit under a
crowd, a session closed and another opened on the same channel, and a channel closed with Publish
requests pending."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.ua.ua_binary import struct_to_binary
from asyncua.ua.uaerrors import UaStatusCodeError

from gateway.admission import HandshakeLimits
from gateway.lab.sim.opcua import OpcUaSim
from gateway.opcua.session import OpcUaSession
from gateway.opcua.upstream import OpcUaPool
from tests.e2e.harness import Lab, opcua_policy_text
from tests.e2e.opcua_devices import KINDS, AsyncuaDevice, Device, running_device
from tests.e2e.test_opcua import PLANT, RULES, TANK, Changes, RawChannel, raw_channel, tank

LIMIT = 8
CROWD = 200


@pytest.fixture(params=KINDS)
async def device(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Device]:
    async with running_device(request.param, tmp_path / "device-pki") as running:
        yield running


def pool_of(lab: Lab) -> OpcUaPool:
    assert lab.gateway is not None
    pool = lab.gateway.runtime.upstreams.pool_for(lab.gateway.policy.assets["opc-1"])
    assert isinstance(pool, OpcUaPool)
    return pool


async def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll ``condition`` (gateway state nothing signals) until it holds, within ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def wait_until_async(condition: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    """:func:`wait_until` for a condition the device answers (node-opcua's runs in its own process)."""
    async with asyncio.timeout(timeout_s):
        while not await condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_max_sessions_holds_exactly_when_200_clients_connect_at_once(lab: Lab, device: Device) -> None:
    # connect_timeout_s far above the test's deadline: a refusal that waited for it would fail the test.
    extra = f"max_sessions = {LIMIT}\nconnect_timeout_s = 60"
    # One agent brings all 200 from one source: the overlay's per-source admission is not under test.
    crowd = HandshakeLimits(max_pending_per_source=4 * CROWD, source_burst=4 * CROWD)
    await lab.start_gateway(opcua_policy_text(device.port, RULES, asset_extra=extra), handshake_limits=crowd)
    port = await lab.start_agent("alice", "opc-1", "opcua")
    await wait_until(lambda: pool_of(lab).control is not None, 30)
    peak = 0
    if isinstance(device, AsyncuaDevice):  # asyncua's server can be watched as each session registers
        server = device.sim._running().iserver
        register = server.register_external_session

        def counting(session: object) -> None:
            nonlocal peak
            register(session)  # type: ignore[arg-type]
            peak = max(peak, len(server._external_sessions))

        server.register_external_session = counting  # type: ignore[method-assign]
    clients = [
        Client(f"opc.tcp://127.0.0.1:{port}/", timeout=30, watchdog_intervall=600) for _ in range(CROWD)
    ]

    async def read_level(client: Client) -> int:
        """Good, or the status the client got."""
        try:
            await client.get_node(ua.NodeId(ua.ObjectIds.Server_NamespaceArray)).read_value()
        except UaStatusCodeError as error:
            return error.code
        return ua.StatusCodes.Good

    try:
        async with asyncio.timeout(50):
            await asyncio.gather(*(client.connect() for client in clients))
            outcomes = await asyncio.gather(*(read_level(client) for client in clients))
        assert outcomes.count(ua.StatusCodes.Good) == LIMIT
        assert outcomes.count(ua.StatusCodes.BadServerNotConnected) == CROWD - LIMIT
        assert pool_of(lab).sessions == LIMIT
        assert await device.sessions() == LIMIT + 1  # and the control session
        if isinstance(device, AsyncuaDevice):
            assert peak == LIMIT + 1  # never more, not even for a moment
        refusals = lab.audit_events(event="upstream", reason=f"max_sessions ({LIMIT}) reached")
        assert len({event["session"] for event in refusals}) == CROWD - LIMIT
    finally:
        async with asyncio.timeout(50):
            await asyncio.gather(*(client.disconnect() for client in clients), return_exceptions=True)
    # Every place is given back as its client leaves.
    await wait_until(lambda: pool_of(lab).sessions == 0)
    async with Client(f"opc.tcp://127.0.0.1:{port}/", timeout=10) as client:
        ns = await client.get_namespace_index(PLANT)
        assert await client.get_node(tank(ns, "Level")).read_value() == 50.0


async def test_a_device_session_that_fails_to_open_gives_its_place_back(lab: Lab) -> None:
    # Nothing listens: every open fails, and none may keep a place under max_sessions.
    with_nobody = OpcUaSim(static=True)  # a port nothing listens on
    await with_nobody.start()
    port = with_nobody.port
    await with_nobody.stop()
    extra = "max_sessions = 2\nconnect_timeout_s = 0.5"
    await lab.start_gateway(opcua_policy_text(port, RULES, asset_extra=extra))
    agent_port = await lab.start_agent("alice", "opc-1", "opcua")
    for _ in range(3):  # more attempts than places
        async with Client(f"opc.tcp://127.0.0.1:{agent_port}/", timeout=10, watchdog_intervall=600) as client:
            with pytest.raises(UaStatusCodeError) as refused:
                await client.get_node(ua.NodeId(ua.ObjectIds.Server_NamespaceArray)).read_value()
            assert refused.value.code == ua.StatusCodes.BadServerNotConnected
    await wait_until(lambda: pool_of(lab).sessions == 0)
    assert not lab.audit_events(event="upstream", reason="max_sessions (2) reached")


# ---------------------------------------------------------------- one channel, one session after another


def _with_token(request: object, token: ua.NodeId) -> bytes:
    request.RequestHeader.AuthenticationToken = token  # type: ignore[attr-defined]
    request.RequestHeader.TimeoutHint = 10_000  # type: ignore[attr-defined]
    return struct_to_binary(request)


async def _subscribe(raw: RawChannel, token: ua.NodeId, node: ua.NodeId, request_id: int) -> int:
    """A subscription watching ``node``: its id as the client knows it."""
    create = ua.CreateSubscriptionRequest()
    create.Parameters = ua.CreateSubscriptionParameters(
        RequestedPublishingInterval=50,
        RequestedLifetimeCount=300,
        RequestedMaxKeepAliveCount=10,
        PublishingEnabled=True,
    )
    created = await raw.request(_with_token(create, token), request_id, ua.CreateSubscriptionResponse)
    subscription_id: int = created.Parameters.SubscriptionId
    items = ua.CreateMonitoredItemsRequest()
    items.Parameters = ua.CreateMonitoredItemsParameters(
        SubscriptionId=subscription_id,
        TimestampsToReturn=ua.TimestampsToReturn.Neither,
        ItemsToCreate=[
            ua.MonitoredItemCreateRequest(
                ItemToMonitor=ua.ReadValueId(NodeId=node, AttributeId=ua.AttributeIds.Value),
                MonitoringMode=ua.MonitoringMode.Reporting,
                RequestedParameters=ua.MonitoringParameters(
                    ClientHandle=7, SamplingInterval=50, QueueSize=10
                ),
            )
        ],
    )
    made = await raw.request(_with_token(items, token), request_id + 1, ua.CreateMonitoredItemsResponse)
    assert made.Results[0].StatusCode.is_good()
    return subscription_id


async def _publish(raw: RawChannel, token: ua.NodeId, request_id: int) -> object:
    return await raw.request(_with_token(ua.PublishRequest(), token), request_id, ua.PublishResponse)


async def _none(count: Awaitable[int]) -> bool:
    return await count == 0


def _status(answer: object) -> int:
    return answer.ResponseHeader.ServiceResult.value  # type: ignore[attr-defined, no-any-return]


@pytest.mark.parametrize("delete_subscriptions", [True, False])
async def test_nothing_of_a_closed_session_reaches_the_next_on_the_same_channel(
    lab: Lab, device: Device, delete_subscriptions: bool
) -> None:
    await lab.start_gateway(opcua_policy_text(device.port, RULES))
    await wait_until(lambda: pool_of(lab).control is not None, 30)
    ns = pool_of(lab).namespaces.index(PLANT)
    raw = await raw_channel(lab)
    await raw.handshake()
    first = await raw.session()
    assert await _subscribe(raw, first, tank(ns, "Level"), 10) == 1
    assert await device.subscriptions() == 1
    published = await _publish(raw, first, 12)  # A's first data change: the Level as it is
    assert _status(published) == ua.StatusCodes.Good and published.Parameters.SubscriptionId == 1  # type: ignore[attr-defined]
    close = ua.CloseSessionRequest()
    close.DeleteSubscriptions = delete_subscriptions
    closed = await raw.request(_with_token(close, first), 13, ua.CloseSessionResponse)
    assert _status(closed) == ua.StatusCodes.Good
    # Deleted on the device either way: no gateway session could ever take them over.
    await wait_until_async(lambda: _none(device.subscriptions()))
    await device.set_value("Level", 77.0)  # a change A's subscription would have reported
    second = await raw.session()  # request ids 2 and 3 again: a new session on the same channel
    assert second != first
    answer = await _publish(raw, second, 14)
    assert _status(answer) == ua.StatusCodes.BadNoSubscription  # as the device itself says directly
    # A's subscription id means nothing to B.
    modify = ua.SetPublishingModeRequest()
    modify.Parameters = ua.SetPublishingModeParameters(PublishingEnabled=False, SubscriptionIds=[1])
    modified = await raw.request(_with_token(modify, second), 15, ua.SetPublishingModeResponse)
    assert [code.value for code in modified.Parameters.Results] == [ua.StatusCodes.BadSubscriptionIdInvalid]
    # B's own subscription starts from the client's first id and reports only to B.
    assert await _subscribe(raw, second, tank(ns, "Level"), 16) == 1
    published = await _publish(raw, second, 18)
    changes = published.Parameters.NotificationMessage.NotificationData[0].MonitoredItems  # type: ignore[attr-defined]
    assert [change.Value.Value.Value for change in changes] == [77.0]
    assert pool_of(lab).sessions == 1


# -------------------------------------------------------------------- a channel closed with Publish pending


@pytest.mark.parametrize("how", ["disconnect", "channel only", "connection dropped"])
async def test_a_channel_closed_with_publish_requests_pending_is_a_clean_close(
    lab: Lab, device: Device, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    caplog.set_level(logging.WARNING)
    await lab.start_gateway(opcua_policy_text(device.port, RULES))
    port = await lab.start_agent("alice", "opc-1", "opcua")
    client = Client(f"opc.tcp://127.0.0.1:{port}/", timeout=5, watchdog_intervall=600)
    await client.connect()
    ns = await client.get_namespace_index(PLANT)
    handler = Changes()
    subscription = await client.create_subscription(50, handler)
    await subscription.subscribe_data_change(client.get_node(tank(ns, "Level")))
    await handler.wait_for(f"{TANK}.Level", 50.0)
    assert lab.gateway is not None
    session = next(iter(lab.gateway.runtime.sessions))
    assert isinstance(session, OpcUaSession)
    # The client keeps Publish requests waiting on the device (nothing changes in the static plant).
    await wait_until(session.busy)
    if how == "disconnect":  # CloseSession, then CloseSecureChannel
        await client.disconnect()
    elif how == "channel only":  # CloseSecureChannel with the session still open
        await client.close_secure_channel()
        client.disconnect_socket()
    else:
        client.disconnect_socket()
    await wait_until(lambda: not lab.gateway.runtime.sessions)  # type: ignore[union-attr]
    await wait_until(lambda: pool_of(lab).sessions == 0)
    await asyncio.sleep(0)  # callbacks the close scheduled have run
    assert lab.gateway.runtime.metrics.protocol_errors.get(("opcua", "upstream"), 0) == 0
    assert lab.gateway.runtime.metrics.protocol_errors.get(("opcua", "client"), 0) == 0
    # The gateway's own log and asyncio's ("Exception in callback"); the client's library may complain
    # of its own channel going away, which is its business.
    gateway_errors = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and (r.name.startswith("ztgate") or r.name == "asyncio")
    ]
    assert gateway_errors == []
    publishes = lab.audit_events(event="decision", service="Publish")
    assert "device unavailable" not in {e["outcome"] for e in publishes}
    assert not [e for e in publishes if e["decision"] != "allow"]
