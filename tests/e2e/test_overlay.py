"""The overlay: who gets a session, and how everybody else is refused without learning anything."""

from __future__ import annotations

import asyncio
import logging
import ssl

import pytest

from gateway.tls import client_context
from tests.e2e.harness import ALICE, BOB, Lab, policy_text

RULES = """
[[rules]]
id = "alice-reads"
subjects = ["spiffe://plant1.example/user/alice"]
assets = ["plc-1"]
modbus = [{ fc = [3], address = "0-99" }]
"""


async def _attempt(lab: Lab, who: str, asset: str | None) -> tuple[str, bytes]:
    """Connect as ``who``, send one valid read, and report what the client saw: the exception class,
    and data."""
    files = lab.pki.clients[who]
    return await _attempt_with(lab, client_context(files.cert, files.key, lab.pki.ca), asset)


async def _attempt_with(lab: Lab, context: ssl.SSLContext, asset: str | None) -> tuple[str, bytes]:
    assert lab.gateway is not None
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", lab.gateway.port, ssl=context, server_hostname=asset
        )
    except (ssl.SSLError, OSError) as exc:
        return type(exc).__name__, b""
    writer.write(bytes.fromhex("0001 0000 0006 01 03 0000 0001"))
    try:
        data = await asyncio.wait_for(reader.read(100), 5)
        outcome = "eof" if data == b"" else "data"
    except (ssl.SSLError, OSError) as exc:
        data, outcome = b"", type(exc).__name__
    writer.close()
    return outcome, data


@pytest.mark.parametrize(
    ("who", "asset", "category", "reason"),
    [
        ("other-ca", "plc-1", "certificate", "unable to get local issuer certificate"),
        ("expired", "plc-1", "certificate", "certificate has expired"),
        ("other-td", "plc-1", "certificate", "unable to get local issuer certificate"),
        ("no-spiffe", "plc-1", "identity", "no SPIFFE id"),
        ("alice", "plc-9", "unknown_asset", "unknown asset 'plc-9'"),
        ("bob", "plc-1", "no_access", f"no rule grants {BOB} access to plc-1"),
        ("alice", None, "no_sni", "no SNI"),
    ],
)
async def test_refused_sessions_learn_nothing(
    lab: Lab, who: str, asset: str | None, category: str, reason: str
) -> None:
    port = await lab.start_device()
    await lab.start_gateway(policy_text(port, RULES))
    outcome, data = await _attempt(lab, who, asset)
    assert data == b"", "a refused client must not get a single application byte"
    assert outcome in ("eof", "SSLError", "ConnectionResetError", "SSLCertVerificationError"), outcome
    event = await lab.wait_for_event(event="session_refused", category=category)
    assert reason in event["reason"]
    assert not lab.audit_events(event="session_start")
    # The device never saw anything either.
    assert lab.gateway is not None and lab.gateway.runtime.metrics.request_totals() == {}


async def test_tls_below_1_3_and_clients_without_a_certificate_are_refused(lab: Lab) -> None:
    port = await lab.start_device()
    await lab.start_gateway(policy_text(port, RULES))
    alice = lab.pki.clients["alice"]
    tls12 = client_context(alice.cert, alice.key, lab.pki.ca)
    tls12.minimum_version = tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert await _attempt_with(lab, tls12, "plc-1") in (("SSLError", b""), ("ConnectionResetError", b""))
    anonymous = ssl.create_default_context(cafile=str(lab.pki.ca))
    anonymous.check_hostname = False
    # TLS 1.3 finishes the client's side of the handshake before the server checks its certificate:
    # the refusal arrives as an alert on the first read, never as data.
    outcome, data = await _attempt_with(lab, anonymous, "plc-1")
    assert data == b"" and outcome in ("SSLError", "ConnectionResetError", "eof")
    assert not lab.audit_events(event="session_start")
    # The same gateway still serves a well-formed client.
    outcome, data = await _attempt(lab, "alice", "plc-1")
    assert outcome == "data" and data[:9] == bytes.fromhex("0001 0000 0005 01 03 02")


async def test_unknown_asset_and_no_access_look_the_same(lab: Lab) -> None:
    """Cloaking: an asset that exists but is not yours is indistinguishable from one that does not."""
    port = await lab.start_device()
    await lab.start_gateway(policy_text(port, RULES))
    assert await _attempt(lab, "bob", "plc-1") == await _attempt(lab, "bob", "no-such-plc")


async def test_allowed_identity_gets_a_session(lab: Lab) -> None:
    port = await lab.start_device()
    await lab.start_gateway(policy_text(port, RULES))
    outcome, data = await _attempt(lab, "alice", "plc-1")
    assert outcome == "data" and data[:9] == bytes.fromhex("0001 0000 0005 01 03 02")
    start = lab.audit_events(event="session_start")[0]
    assert start["identity"] == ALICE and start["asset"] == "plc-1"


async def test_agent_logs_a_clear_reason_when_refused(lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    port = await lab.start_device()
    await lab.start_gateway(policy_text(port, RULES))
    caplog.set_level(logging.WARNING, logger="ztgate.agent")
    local = await lab.start_agent("bob")
    reader, writer = await asyncio.open_connection("127.0.0.1", local)
    writer.write(bytes.fromhex("0001 0000 0006 01 03 0000 0001"))
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the local connection is closed
    writer.close()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3
    while not any("refused the session" in r.getMessage() for r in caplog.records):
        assert loop.time() < deadline, [r.getMessage() for r in caplog.records]
        await asyncio.sleep(0.02)


async def test_policy_change_closes_sessions_that_lost_access(lab: Lab) -> None:
    port = await lab.start_device()
    gateway = await lab.start_gateway(policy_text(port, RULES))
    client = await lab.client("alice")
    assert not (await client.read_holding_registers(0, count=1, device_id=1)).isError()
    lab.policy_path.write_text(policy_text(port, RULES.replace("user/alice", "user/carol")))
    assert await gateway.reload_policy("test")
    end = await lab.wait_for_event(event="session_end", identity=ALICE)
    assert "no longer grants access" in end["reason"]


async def test_session_ends_when_the_client_certificate_expires(lab: Lab) -> None:
    port = await lab.start_device()
    # A clock one second before the certificate's notAfter.
    files = lab.pki.clients["alice"]
    cert = ssl._ssl._test_decode_cert(str(files.cert))  # type: ignore[attr-defined]
    not_after = ssl.cert_time_to_seconds(cert["notAfter"])
    await lab.start_gateway(policy_text(port, RULES), clock=lambda: not_after - 0.2)
    await lab.client("alice")
    end = await lab.wait_for_event(event="session_end", identity=ALICE)
    assert end["reason"] == "client certificate expired"


async def test_idle_sessions_end(lab: Lab) -> None:
    from gateway.runtime import SessionLimits

    port = await lab.start_device()
    await lab.start_gateway(policy_text(port, RULES), limits=SessionLimits(idle_timeout_s=0.1))
    busy = await lab.client("alice")
    reader, _ = await lab.raw_connection("alice")
    idle_closed = asyncio.ensure_future(reader.read())
    reads = 0
    while not idle_closed.done():  # one keeps asking while the other says nothing
        assert not (await busy.read_holding_registers(0, count=1, device_id=1)).isError()
        reads += 1
        assert reads < 100_000, "the idle session was never closed"
    assert idle_closed.result() == b""
    assert not (await busy.read_holding_registers(0, count=1, device_id=1)).isError()
    ends = lab.audit_events(event="session_end")
    assert [e["reason"] for e in ends] == ["idle for 0.1 s"]


async def test_the_gateway_issues_no_session_ticket(lab: Lab) -> None:
    """No resumption: every connection authenticates with a full handshake against the current CA.
    Found by the fuzz campaign: with only OP_NO_TICKET, OpenSSL's TLS 1.3 server still issued stateful
    tickets and cached each session with its client certificate (20,480 of them, 240 MiB)."""
    port = await lab.start_device()
    await lab.start_gateway(policy_text(port, RULES))
    reader, writer = await lab.raw_connection("alice")
    writer.write(bytes.fromhex("0001 0000 0006 01 03 0000 0001"))
    assert (await asyncio.wait_for(reader.readexactly(11), 5))[:2] == b"\x00\x01"  # a ticket would be here
    session = writer.get_extra_info("ssl_object").session
    assert session is None or not session.has_ticket
