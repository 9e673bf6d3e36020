"""What the agent says when it cannot give a local client a session: the gateway's TLS alert for a
refused certificate (expired, another CA) apart from a refusal after the handshake (unknown asset),
and the cause of a connection that was not made (refused, no answer to TCP, no answer to TLS)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator

import pytest

from gateway.agent import Agent
from gateway.config import AgentConfig, AgentListener
from tests.e2e.harness import GATEWAY, Lab, policy_text

RULES = """
[[rules]]
id = "operators-read"
subjects = ["group:operators"]
assets = ["plc-1"]
modbus = [{ fc = [3], address = "0-99" }]
"""
READ = bytes.fromhex("0001 0000 0006 01 03 0000 0001")


async def _agent_says(
    lab: Lab,
    caplog: pytest.LogCaptureFixture,
    who: str,
    asset: str,
    gateway: tuple[str, int],
    timeout_s: float = 3.0,
) -> str:
    """Run an agent as ``who``, connect a local client, send a read; the agent's warning."""
    caplog.set_level(logging.WARNING, logger="ztgate.agent")
    listener = AgentListener(("127.0.0.1", 0), asset, gateway, "modbus", GATEWAY)
    agent = Agent(
        AgentConfig(lab.dir / "agent.toml", lab.pki.tls(who), (listener,), connect_timeout_s=timeout_s)
    )
    await agent.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", agent.bound[0][1][1])
        writer.write(READ)
        try:
            assert await asyncio.wait_for(reader.read(260), timeout_s + 5) == b""
        except ConnectionResetError:
            pass  # closed with the request unread
        writer.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not (found := [r.getMessage() for r in caplog.records if r.name == "ztgate.agent"]):
            assert loop.time() < deadline, "the agent logged nothing"
            await asyncio.sleep(0.02)
    finally:
        await agent.stop()
    (message,) = found
    return message


@pytest.mark.parametrize(
    ("who", "asset", "said"),
    [
        ("expired", "plc-1", "this agent's certificate has expired: issue a new one"),
        ("other-ca", "plc-1", "this agent's certificate is not from the gateway's CA"),
        ("alice", "plc-9", "the asset is unknown, or this identity has no rule for it"),
    ],
)
async def test_a_refused_certificate_is_told_apart_from_an_unknown_asset(
    lab: Lab, caplog: pytest.LogCaptureFixture, who: str, asset: str, said: str
) -> None:
    port = await lab.start_device()
    gateway = await lab.start_gateway(policy_text(port, RULES))
    message = await _agent_says(lab, caplog, who, asset, ("127.0.0.1", gateway.port))
    assert f"gateway refused the session for asset '{asset}': {said}" in message


@pytest.fixture
async def silent_listener() -> AsyncIterator[tuple[socket.socket, int]]:
    """A listening socket that never accepts."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    try:
        yield sock, sock.getsockname()[1]
    finally:
        sock.close()


async def test_no_answer_to_tcp_is_named(
    lab: Lab, caplog: pytest.LogCaptureFixture, silent_listener: tuple[socket.socket, int]
) -> None:
    # The accept queue is full (listen(0) holds one): the kernel drops further SYNs, as a firewall would.
    _, port = silent_listener
    fillers = []
    for _ in range(2):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    try:
        message = await _agent_says(lab, caplog, "alice", "plc-1", ("127.0.0.1", port), timeout_s=1.0)
    finally:
        for filler in fillers:
            filler.close()
    assert f"no TCP connection to gateway 127.0.0.1:{port} within the connect timeout" in message


async def test_no_answer_to_tls_is_named(lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # accepted, and never a byte back

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        message = await _agent_says(lab, caplog, "alice", "plc-1", ("127.0.0.1", port), timeout_s=1.0)
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
    cause = "accepted the TCP connection but did not finish the TLS handshake within 1 s"
    assert f"gateway 127.0.0.1:{port} {cause}" in message


async def test_a_refused_tcp_connection_is_named(
    lab: Lab, caplog: pytest.LogCaptureFixture, silent_listener: tuple[socket.socket, int]
) -> None:
    sock, port = silent_listener
    sock.close()  # nothing listens there any more
    message = await _agent_says(lab, caplog, "alice", "plc-1", ("127.0.0.1", port))
    assert f"gateway 127.0.0.1:{port} refused the TCP connection: nothing listens there" in message
