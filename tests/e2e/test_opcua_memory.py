"""Issue 16, point 7: memory held by channels that never finish a message. Authenticated opc.tcp channels
(mutual TLS, a real Hello and OpenSecureChannel) send intermediate chunks and never the final one; the
gateway holds no more than its reassembly budget for all of them, ends the channels that would take it
past the budget with BadTcpNotEnoughResources and the rest after reassembly_timeout_s with BadTimeout, and
a real asyncua client's Reads on another session succeed meanwhile. Also: the per-identity session cap
and the idle timeout of OPC UA sessions."""

from __future__ import annotations

import asyncio
import struct

import pytest
from asyncua import Client, ua
from asyncua.ua.ua_binary import struct_to_binary

from gateway.lab.sim.opcua import OpcUaSim
from gateway.opcua.session import OpcUaSession
from gateway.runtime import SessionLimits
from tests.e2e.harness import ALICE, BOB, Lab, opcua_policy_text
from tests.e2e.test_opcua import PLANT, RULES, RawChannel, plc, raw_channel, tank
from tests.e2e.test_opcua_sessions import wait_until

__all__ = ["plc"]  # the fixture, used by name

S = ua.StatusCodes
BUDGET_BYTES = 1024 * 1024
CHANNELS = 20
CHUNK_BODY_BYTES = 16 * 1024
CHUNKS = 8  # 128 KiB per channel, 2.5 MiB in all: well past the budget
TIMEOUT_S = 2.0


async def ended_with(raw: RawChannel) -> int:
    """The status of the Error message that ended the channel (it must end with one)."""
    kind, data = await raw.message(timeout_s=TIMEOUT_S * 5)
    assert kind == b"ERRF", kind
    try:
        assert await raw.closed()
    except ConnectionResetError:
        pass  # closed with our chunks unread in its socket: the kernel resets (after the Error message)
    status: int = struct.unpack_from("<I", data, 8)[0]
    return status


async def test_channels_that_never_finish_a_message_hold_at_most_the_budget_and_others_are_served(
    lab: Lab, plc: OpcUaSim
) -> None:
    limits = SessionLimits(
        refusal_audit_interval_s=0.0, reassembly_budget_bytes=BUDGET_BYTES, reassembly_timeout_s=TIMEOUT_S
    )
    gateway = await lab.start_gateway(opcua_policy_text(plc.port, RULES), limits=limits)
    budget = gateway.runtime.reassembly
    url = f"opc.tcp://127.0.0.1:{await lab.start_agent('alice', 'opc-1', 'opcua')}/"
    client = Client(url, timeout=5)
    await client.connect()
    try:
        level = client.get_node(tank(await client.get_namespace_index(PLANT), "Level"))
        reads: list[float] = []
        attack_over = asyncio.Event()

        async def keep_reading() -> None:
            while not attack_over.is_set():
                reads.append(await level.read_value())  # a failed Read raises and fails the test

        reader = asyncio.create_task(keep_reading())
        try:
            channels = [await raw_channel(lab) for _ in range(CHANNELS)]
            for raw in channels:
                await raw.handshake()
            for raw in channels:
                for _ in range(CHUNKS):
                    raw.writer.write(raw.msg(b"\x00" * CHUNK_BODY_BYTES, 7, chunk_type=b"C"))
            statuses = await asyncio.gather(*(ended_with(raw) for raw in channels))
        finally:
            attack_over.set()
            await reader
    finally:
        await client.disconnect()
    refused = statuses.count(S.BadTcpNotEnoughResources)
    timed_out = statuses.count(S.BadTimeout)
    assert refused + timed_out == CHANNELS, statuses
    # The budget fits at most this many whole partial messages; every other channel was refused.
    assert refused >= CHANNELS - BUDGET_BYTES // (CHUNKS * CHUNK_BODY_BYTES)
    assert timed_out >= 1  # those within the budget waited for their final chunk, up to the timeout
    assert budget.peak_bytes <= BUDGET_BYTES
    assert budget.peak_bytes > BUDGET_BYTES // 2  # the attack did fill it
    assert budget.refused == refused
    await wait_until(lambda: budget.held_bytes == 0)
    assert reads and all(value == 50.0 for value in reads)
    errors = lab.audit_events(event="protocol_error", side="client")
    assert sum(e.get("code_name") == "BadTcpNotEnoughResources" for e in errors) == refused
    assert sum(e.get("code_name") == "BadTimeout" for e in errors) == timed_out
    assert any("reassembly_timeout_s" in e["reason"] for e in errors)


async def test_a_message_completed_in_time_is_served_and_gives_its_bytes_back(
    lab: Lab, plc: OpcUaSim
) -> None:
    limits = SessionLimits(refusal_audit_interval_s=0.0, reassembly_timeout_s=TIMEOUT_S)
    gateway = await lab.start_gateway(opcua_policy_text(plc.port, RULES), limits=limits)
    raw = await raw_channel(lab)
    await raw.handshake()
    token = await raw.session()
    request = ua.ReadRequest()
    request.RequestHeader.AuthenticationToken = token
    request.Parameters.NodesToRead = [ua.ReadValueId(ua.NodeId(ua.ObjectIds.Server_ServerStatus_State), 13)]
    body = struct_to_binary(request)
    raw.writer.write(raw.msg(body[:20], 4, chunk_type=b"C"))
    await wait_until(lambda: gateway.runtime.reassembly.held_bytes == 20)
    raw.writer.write(raw.msg(body[20:], 4))
    kind, _data = await raw.message()
    assert kind == b"MSGF"
    assert gateway.runtime.reassembly.held_bytes == 0
    await asyncio.sleep(0)  # the channel stays: no timeout for a message that completed
    assert not lab.audit_events(event="protocol_error")


async def test_sessions_per_identity_are_capped_and_others_get_in(lab: Lab, plc: OpcUaSim) -> None:
    limits = SessionLimits(refusal_audit_interval_s=0.0, max_sessions_per_identity=2)
    gateway = await lab.start_gateway(opcua_policy_text(plc.port, RULES), limits=limits)
    first, second = await raw_channel(lab), await raw_channel(lab)
    for raw in (first, second):
        await raw.handshake()  # answered: the session is live
    third = await raw_channel(lab)
    third.writer.write(b"")
    assert await third.closed()  # refused as every session refusal is: aborted before any byte
    (refusal,) = lab.audit_events(event="session_refused", category="identity_sessions")
    assert refusal["identity"] == ALICE and "max_sessions_per_identity" in refusal["reason"]
    other = RawChannel(*await lab.raw_connection("bob", "opc-1"))
    await other.handshake()  # another identity is not held back
    first.writer.close()
    await wait_until(lambda: gateway.runtime.sessions.of_identity(ALICE) == 1)
    again = await raw_channel(lab)
    await again.handshake()  # a place freed is a place again
    assert gateway.runtime.sessions.of_identity(BOB) == 1


async def test_client_idle_timeout_applies_to_opcua_sessions(lab: Lab, plc: OpcUaSim) -> None:
    limits = SessionLimits(refusal_audit_interval_s=0.0, idle_timeout_s=0.3)
    await lab.start_gateway(opcua_policy_text(plc.port, RULES), limits=limits)
    raw = await raw_channel(lab)
    await raw.handshake()
    assert await raw.closed()
    await lab.wait_for_event(event="session_end", reason="idle for 0.3 s")


async def test_opcua_sessions_have_an_idle_timeout_by_default(
    lab: Lab, plc: OpcUaSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert SessionLimits().idle_timeout_s == 0  # not configured ...
    assert OpcUaSession.default_idle_timeout_s == 3600.0  # ... OPC UA's default applies: 1 h
    monkeypatch.setattr(OpcUaSession, "default_idle_timeout_s", 0.3)  # shortened to watch it act
    await lab.start_gateway(opcua_policy_text(plc.port, RULES))
    raw = await raw_channel(lab)
    await raw.handshake()
    assert await raw.closed()
    await lab.wait_for_event(event="session_end", reason="idle for 0.3 s")
