"""Renewal under traffic: a Modbus client polls through agent -> gateway while both renew their
certificates (lifetimes of a few seconds); not one request fails and no session drops, also long
after the certificates the session was opened with have expired (the agent proves each renewal to
the gateway). A renewal that fails shows in /readyz, the metrics and the audit, and is retried until
it succeeds."""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

import orjson
import pytest
from cryptography import x509
from pymodbus.client import AsyncModbusTcpClient

from gateway.agent import Agent
from gateway.config import AgentConfig, AgentListener, CenterSettings
from gateway.credentials import Credentials
from gateway.server import Gateway
from gateway.tls import client_context
from tests.center.harness import TD, Site, admin_get, eventually, modbus_policy, read_rule

HMI = f"spiffe://{TD}/agent/site1/hmi-3"
LIFETIME_S = 8.0  # renewed at 3.2-4 s; the test is over well before the first certificates expire


def _serial(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


async def _served_serial(port: int, site: Site) -> int:
    """The serial of the certificate the gateway presents to a new handshake."""
    assert site.alice is not None
    tls = site.alice.tls
    context = client_context(tls.cert, tls.key, tls.ca)
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="plc-1")
    ssl_object = writer.get_extra_info("ssl_object")
    assert isinstance(ssl_object, ssl.SSLObject)
    der = ssl_object.getpeercert(binary_form=True)
    writer.close()
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def _renewing_site(site: Site, lifetime_s: float) -> tuple[Gateway, Agent, Credentials, Credentials]:
    """A center issuing gateway and agent certificates of ``lifetime_s``, a gateway and an agent
    enrolled with it, both renewing."""
    await site.init(lifetimes={"gateway": lifetime_s, "agent": lifetime_s})
    await site.start_center()
    device = await site.device()
    await site.push(modbus_policy({"plc-1": (device.port, "closed")}, read_rule(["plc-1"])))
    gw_credentials = await site.enroll("gateway", f"spiffe://{TD}/gateway/site1/gw-1", "gw-1")
    hmi_credentials = await site.enroll("agent", HMI, "hmi")
    gateway = await site.start_gateway(gw_credentials, "gw-1")
    agent = Agent(
        AgentConfig(
            source=site.root / "agent.toml",
            tls=hmi_credentials.tls,
            listeners=(
                AgentListener(
                    ("127.0.0.1", 0),
                    "plc-1",
                    ("127.0.0.1", gateway.port),
                    "modbus",
                    f"spiffe://{TD}/gateway/site1/gw-1",
                ),
            ),
            connect_timeout_s=5.0,
            center=CenterSettings(hmi_credentials.directory),
        )
    )
    await agent.start()
    site.closers.append(agent.stop)
    return gateway, agent, gw_credentials, hmi_credentials


class _Poller:
    """A pymodbus client reading holding register 7 through the agent, as fast as it is answered."""

    def __init__(self, client: AsyncModbusTcpClient) -> None:
        self.client = client
        self.results: list[int] = []
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._poll())

    @classmethod
    async def start(cls, site: Site, agent: Agent) -> _Poller:
        client = AsyncModbusTcpClient(
            "127.0.0.1", port=agent.bound[0][1][1], timeout=3, retries=0, reconnect_delay=0
        )
        assert await client.connect()

        async def close() -> None:
            client.close()

        site.closers.append(close)
        return cls(client)

    async def _poll(self) -> None:
        while not self._stop.is_set():
            result = await self.client.read_holding_registers(7, count=1, device_id=1)
            self.results.append(-1 if result.isError() else result.registers[0])

    async def stop(self) -> list[int]:
        self._stop.set()
        await self._task
        return self.results


def _not_after(pem: bytes) -> float:
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()


@pytest.mark.both_loops
async def test_polling_through_agent_and_gateway_while_both_renew(site: Site) -> None:
    gateway, agent, gw_credentials, hmi_credentials = await _renewing_site(site, LIFETIME_S)
    first = {
        "gateway": _serial(gw_credentials.tls.cert.read_bytes()),
        "agent": _serial(hmi_credentials.tls.cert.read_bytes()),
    }
    site.alice = await site.enroll("user", f"spiffe://{TD}/user/alice", "alice")
    poller = await _Poller.start(site, agent)
    results = poller.results
    assert gateway.renewer is not None and agent.renewer is not None
    await eventually(
        lambda: gateway.renewer.renewals >= 1 and agent.renewer.renewals >= 1,  # type: ignore[union-attr]
        timeout_s=LIFETIME_S * 0.5 + 2,
        what="both renewed",
    )
    count = len(results)
    await eventually(lambda: len(results) > count + 10, what="traffic after the renewals")
    await poller.stop()

    assert results and set(results) == {(7 * 7 + 3) & 0xFFFF}  # not one request failed
    assert site.events(gateway, event="session_end") == []  # no session dropped
    assert len(site.events(gateway, event="session_start")) == 1
    # New handshakes get the new certificates; the files hold them.
    now = {
        "gateway": _serial(gw_credentials.tls.cert.read_bytes()),
        "agent": _serial(hmi_credentials.tls.cert.read_bytes()),
    }
    assert now["gateway"] != first["gateway"] and now["agent"] != first["agent"]
    assert await _served_serial(gateway.port, site) == now["gateway"]
    renewed = site.events(gateway, event="certificate_renewed")
    assert renewed and renewed[0]["serial"] == f"{now['gateway']:x}"
    identities = {e["actor"] for e in await site.audit("renewed")}
    assert identities == {f"spiffe://{TD}/gateway/site1/gw-1", HMI}


# Renewed at 1.6-2 s, again 1.6-2 s later, and so on: the test runs past the first certificates' end.
SHORT_LIFETIME_S = 4.0


@pytest.mark.both_loops
async def test_a_session_outlives_the_certificates_it_was_opened_with(site: Site) -> None:
    gateway, agent, gw_credentials, hmi_credentials = await _renewing_site(site, SHORT_LIFETIME_S)
    first_end = max(
        _not_after(gw_credentials.tls.cert.read_bytes()), _not_after(hmi_credentials.tls.cert.read_bytes())
    )
    poller = await _Poller.start(site, agent)
    # Well past the end of both certificates the session was opened with (wall clock: certificates).
    await eventually(
        lambda: time.time() > first_end + SHORT_LIFETIME_S / 2, timeout_s=SHORT_LIFETIME_S * 3, what="time"
    )
    count = len(poller.results)
    await eventually(lambda: len(poller.results) > count + 10, what="traffic after the first end")
    results = await poller.stop()

    assert results and set(results) == {(7 * 7 + 3) & 0xFFFF}  # not one request failed
    assert site.events(gateway, event="session_end") == []  # no session dropped
    (start,) = site.events(gateway, event="session_start")
    assert agent.renewer is not None and agent.renewer.renewals >= 2

    async def settled() -> list[dict[str, Any]] | None:
        # The agent goes on renewing every 1.6-2 s: a proof can land between reading the audit and the
        # session, so both are read again until they agree (they do between two renewals).
        proofs = site.events(gateway, event="renewal_proved", identity=HMI)
        (live,) = (await admin_get_json(gateway, "/sessions"))["sessions"]
        last_proved = proofs[-1]["not_after"] if proofs else None
        agreed = agent.proofs_sent == len(proofs) and live["certificate_not_after"] == last_proved
        return proofs if agreed else None

    proofs = await eventually(settled, what="the live session's certificate is the last one it proved")
    assert len(proofs) >= 2 and all(p["sessions"] == [start["session"]] for p in proofs)


async def admin_get_json(gateway: Gateway, path: str) -> Any:
    status, body = await admin_get(gateway, path)
    assert status == 200
    return orjson.loads(body)


async def test_a_failed_renewal_shows_and_is_retried(site: Site) -> None:
    await site.init()
    center = await site.start_center()
    device = await site.device()
    await site.push(modbus_policy({"plc-1": (device.port, "closed")}, read_rule(["plc-1"])))
    credentials = await site.enroll("gateway", f"spiffe://{TD}/gateway/site1/gw-1", "gw-1")
    gateway = await site.start_gateway(credentials, "gw-1")
    renewer = gateway.renewer
    assert renewer is not None

    async def readyz() -> tuple[int, dict[str, object]]:
        status, body = await admin_get(gateway, "/readyz")
        return status, orjson.loads(body)

    status, body = await readyz()
    assert status == 200 and body["certificate"]["overdue"] is False  # type: ignore[index]
    await center.kill()
    renewer.due_now()
    await eventually(lambda: renewer.failures >= 1, what="a failed renewal")
    status, body = await readyz()
    certificate = body["certificate"]
    assert (
        status == 503
        and certificate["overdue"] is True
        and "cannot reach the center" in certificate["last_error"]
    )  # type: ignore[index]
    assert certificate["expires_in_s"] > 6 * 86400  # type: ignore[index]  # well before expiry
    metrics = (await admin_get(gateway, "/metrics"))[1].decode()
    assert "ztgate_certificate_renewal_overdue 1.0" in metrics
    assert "ztgate_certificate_renewal_failures_total 1.0" in metrics
    failed = site.events(gateway, event="certificate_renewal_failed")
    assert failed and failed[0]["failures"] == 1
    await site.start_center()
    await eventually(lambda: renewer.renewals == 1, timeout_s=10, what="the retry succeeds")
    status, body = await readyz()
    assert status == 200 and body["certificate"]["overdue"] is False  # type: ignore[index]
