"""Who is who on the overlay: the agent talks only to the gateway it is pinned to, a gateway's
certificate never opens a session, certificates of users, vendors and agents cannot serve, and every
process refuses to start with a certificate of the wrong role."""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

import pytest

from gateway.agent import Agent
from gateway.config import AgentConfig, AgentListener, TlsFiles
from gateway.server import Gateway
from gateway.tls import CertificateRoleError, client_context, server_context
from policies import parse_policy
from tests.e2e.harness import ALICE, GATEWAY, HMI, ROGUE, Lab, policy_text

RULES = """
[[rules]]
id = "everyone-reads"
subjects = ["spiffe://plant1.example/*"]
assets = ["plc-1"]
modbus = [{ fc = [3], address = "0-99" }]
"""
READ = bytes.fromhex("0001 0000 0006 01 03 0000 0001")
FORGED = bytes.fromhex("0001 0000 0005 01 03 02 ffff")


class RogueGateway:
    """A TLS server with a gateway certificate from the site's CA: it records what reaches it and
    answers every read with a forged value."""

    def __init__(self, lab: Lab, who: str) -> None:
        files = lab.pki.clients[who]
        self.context = server_context(files.cert, files.key, lab.pki.ca)
        self.received = b""
        self.handshakes = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.handshakes += 1
            try:
                while data := await reader.read(260):
                    self.received += data
                    writer.write(FORGED)
            except (ssl.SSLError, OSError):
                pass
            writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=self.context)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def _through_agent(lab: Lab, listener: AgentListener, who: str = "hmi") -> tuple[bytes, Agent]:
    agent = Agent(AgentConfig(lab.dir / "agent.toml", lab.pki.tls(who), (listener,), connect_timeout_s=3.0))
    await agent.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", agent.bound[0][1][1])
        writer.write(READ)
        try:
            data = await asyncio.wait_for(reader.read(260), 5)
        except ConnectionResetError:  # closed with the request unread: the kernel resets
            data = b""
        writer.close()
    finally:
        await agent.stop()
    return data, agent


@pytest.mark.parametrize(
    ("host", "gateway_id"),
    [("127.0.0.1", GATEWAY), ("localhost", None)],  # pinned by id; pinned by the name gw-1 derived from...
    ids=["gateway_id", "derived"],
)
async def test_the_agent_does_not_talk_to_a_rogue_gateway_from_the_same_ca(
    lab: Lab, caplog: pytest.LogCaptureFixture, host: str, gateway_id: str | None
) -> None:
    rogue = RogueGateway(lab, "rogue")
    port = await rogue.start()
    caplog.set_level(logging.WARNING, logger="ztgate.agent")
    try:
        # ... "localhost": the agent expects spiffe://plant1.example/gateway/*/localhost there.
        listener = AgentListener(("127.0.0.1", 0), "plc-1", (host, port), "modbus", gateway_id)
        data, _ = await _through_agent(lab, listener)
    finally:
        await rogue.stop()
    assert data == b""  # the HMI got no forged reply: its connection was closed
    assert rogue.received == b""  # and not one byte of the HMI's request left the agent
    pinned = GATEWAY if gateway_id else "spiffe://plant1.example/gateway/*/localhost"
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        f"is not the gateway this agent is pinned to: the server is {ROGUE}, not the pinned {pinned}" in m
        for m in messages
    ), messages


async def test_the_pinned_gateway_serves(lab: Lab) -> None:
    port = await lab.start_device()
    gateway = await lab.start_gateway(policy_text(port, RULES))
    listener = AgentListener(("127.0.0.1", 0), "plc-1", ("127.0.0.1", gateway.port), "modbus", GATEWAY)
    data, _ = await _through_agent(lab, listener)
    assert data[:9] == bytes.fromhex("0001 0000 0005 01 03 02")


async def test_a_gateway_identity_never_opens_a_session(lab: Lab) -> None:
    port = await lab.start_device()
    gateway = await lab.start_gateway(policy_text(port, RULES))
    # The policy's wildcard covers every id of the trust domain, and still not a gateway's ...
    assert gateway.policy.view(ALICE, "plc-1") is not None
    assert gateway.policy.view(ROGUE, "plc-1") is None and gateway.policy.view(GATEWAY, "plc-1") is None
    # ... and the overlay refuses one before the policy is asked.
    for who in ("gateway", "rogue"):
        files = lab.pki.clients[who]
        context = client_context(files.cert, files.key, lab.pki.ca, server_name="plc-1")
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port, ssl=context)
        writer.write(READ)
        try:
            assert await asyncio.wait_for(reader.read(), 5) == b""
        except (ssl.SSLError, OSError):
            pass
        writer.close()
    # Both refused (counted); the first of the kind from this source is audited in full.
    assert gateway.runtime.metrics.refused_sessions == {"identity": 2}
    first = next(e for e in lab.audit_events(event="session_refused") if e["category"] == "identity")
    assert first["identity"] == GATEWAY and "a gateway identity opens no session" in first["reason"]
    assert lab.audit_events(event="session_start") == []


def test_policy_patterns_never_match_server_ids() -> None:
    policy = parse_policy(
        policy_text(502, RULES.replace('"spiffe://plant1.example/*"', '"spiffe://plant1.example/g*"'))
    )
    assert policy.view("spiffe://plant1.example/gateway/site1/gw-1", "plc-1") is None
    assert policy.view("spiffe://plant1.example/gadget/x", "plc-1") is not None  # the same pattern, a client
    exact = parse_policy(policy_text(502, RULES.replace('"spiffe://plant1.example/*"', f'"{GATEWAY}"')))
    assert exact.view(GATEWAY, "plc-1") is not None  # only an exact entry names one (the overlay refuses it)


@pytest.mark.parametrize("who", ["alice", "vendor", "hmi"])
async def test_client_certificates_cannot_serve(lab: Lab, who: str) -> None:
    """A user's, vendor's or agent's certificate has no serverAuth usage: TLS clients refuse it as a
    server, whatever its SPIFFE id."""
    files = lab.pki.clients[who]
    server = await asyncio.start_server(
        lambda r, w: w.close(), "127.0.0.1", 0, ssl=server_context(files.cert, files.key, lab.pki.ca)
    )
    port = server.sockets[0].getsockname()[1]
    bob = lab.pki.clients["bob"]
    try:
        with pytest.raises(ssl.SSLCertVerificationError, match="unsuitable certificate purpose"):
            await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context(bob.cert, bob.key, lab.pki.ca), server_hostname="x"
            )
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(("who", "kind"), [("alice", "user"), ("hmi", "agent"), ("vendor", "vendor")])
async def test_the_gateway_refuses_to_start_with_a_client_certificate(lab: Lab, who: str, kind: str) -> None:
    lab.policy_path.write_text(policy_text(502, RULES))
    files = lab.pki.clients[who]
    gateway = Gateway(
        name="gw", policy=lab.policy_path, tls=TlsFiles(files.cert, files.key, lab.pki.ca), admin_listen=None
    )
    with pytest.raises(CertificateRoleError) as caught:
        await gateway.start()
    await gateway.stop()
    assert str(caught.value).startswith(f"{files.cert} holds a {kind} certificate")
    assert str(caught.value).endswith("the gateway takes only gateway certificates")


async def test_the_agent_refuses_to_start_with_a_gateway_certificate(lab: Lab) -> None:
    listener = AgentListener(("127.0.0.1", 0), "plc-1", ("127.0.0.1", 1), "modbus", GATEWAY)
    agent = Agent(
        AgentConfig(lab.dir / "agent.toml", lab.pki.tls("gateway"), (listener,), connect_timeout_s=3.0)
    )
    with pytest.raises(CertificateRoleError) as caught:
        await agent.start()
    assert str(caught.value) == (
        f"{lab.pki.clients['gateway'].cert} holds a gateway certificate ({GATEWAY}); "
        "the agent takes only agent, user or vendor certificates"
    )


def test_the_agent_needs_a_gateway_id_for_an_address(tmp_path: Path) -> None:
    from gateway.config import ConfigError, load_agent_config

    path = tmp_path / "agent.toml"
    path.write_text(
        '[agent]\ngateway = "10.0.0.1:8443"\n[tls]\ncert = "c"\nkey = "k"\nca = "a"\n'
        '[[listeners]]\nlisten = "127.0.0.1:502"\nasset = "plc-1"\n'
        '[[listeners]]\nlisten = "127.0.0.1:503"\nasset = "plc-2"\ngateway_id = "spiffe://plant1.example/user/x"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_agent_config(path)
    text = str(caught.value)
    assert "listeners[0].gateway_id: required: the gateway 10.0.0.1 is an address" in text
    assert "spiffe://plant1.example/user/x is a user id, not a gateway's" in text
    assert HMI  # the harness's agent id is a client's
