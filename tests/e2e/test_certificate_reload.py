"""The gateway's and the agent's own certificates: reloaded on SIGHUP and when the files change,
without dropping a session; /readyz fails with the reason while the serving certificate is expired or
not yet valid; a ztgate_certificate_expiry_seconds gauge per certificate; a warning in the log from
20% of the lifetime before expiry."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from cryptography import x509
from pymodbus.client import AsyncModbusTlsClient
from pymodbus.exceptions import ModbusException

from gateway import pki as pki_module
from gateway.agent import Agent
from gateway.audit import AuditLog
from gateway.config import AgentConfig, AgentListener, TlsFiles
from gateway.server import Gateway
from gateway.tls import client_context
from tests.center.harness import admin_get, eventually
from tests.e2e.harness import ALICE, GATEWAY, HMI, Lab, policy_text
from tests.processes import GatewayProcess

RULES = """
[[rules]]
id = "operators-read"
subjects = ["group:operators", "spiffe://plant1.example/agent/*"]
assets = ["plc-1"]
modbus = [{ fc = [3], address = "0-99" }]
"""


def _ca_dir(lab: Lab) -> Path:
    return lab.pki.ca.parent


def _issue(lab: Lab, sid: str, out: Path, name: str, **dates: datetime | timedelta) -> TlsFiles:
    """A certificate of the lab's CA for ``sid``, written to out/name.pem and .key (replacing them
    atomically), with the lab's CA bundle copied next to them once."""
    out.mkdir(exist_ok=True)
    issued = pki_module.issue(_ca_dir(lab), sid, out_dir=out, name=name, **dates)  # type: ignore[arg-type]
    ca = out / "ca.pem"
    if not ca.exists():
        shutil.copy(lab.pki.ca, ca)
    return TlsFiles(issued.cert, issued.key, ca)


def _replace(path: Path, data: bytes) -> None:
    temp = path.with_name(path.name + ".new")
    temp.write_bytes(data)
    os.replace(temp, path)


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


async def _served_serial(lab: Lab, port: int) -> int:
    files = lab.pki.clients["alice"]
    context = client_context(files.cert, files.key, lab.pki.ca)
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="plc-1")
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return x509.load_der_x509_certificate(der).serial_number


async def _modbus(lab: Lab, port: int, who: str = "alice") -> AsyncModbusTlsClient:
    files = lab.pki.clients[who]
    client = AsyncModbusTlsClient(
        "127.0.0.1",
        port=port,
        sslctx=client_context(files.cert, files.key, lab.pki.ca, server_name="plc-1"),
        timeout=3,
        retries=0,
        reconnect_delay=0,
    )
    assert await client.connect()
    return client


async def _reads(client: AsyncModbusTlsClient) -> bool:
    return not (await client.read_holding_registers(0, count=1, device_id=1)).isError()


async def _gateway(lab: Lab, tls: TlsFiles, **kwargs: object) -> Gateway:
    lab.policy_path.write_text(policy_text(await lab.start_device(), RULES))
    audit = AuditLog(gateway="gw", file=lab.audit_path, aggregate_reads_s=0, flush_interval_s=0.01)
    gateway = Gateway(name="gw", policy=lab.policy_path, tls=tls, audit=audit, **kwargs)  # type: ignore[arg-type]
    await gateway.start()
    lab.gateway = gateway
    return gateway


async def test_sighup_reloads_the_certificate_without_dropping_a_session(lab: Lab, tmp_path: Path) -> None:
    tls = _issue(lab, GATEWAY, tmp_path / "tls", "gw")
    port = await lab.start_device()
    process = GatewayProcess(lab.pki, tmp_path, policy_text(port, RULES), tls=tls)
    await process.start()
    try:
        client = await _modbus(lab, process.port)
        assert await _reads(client)
        first = await _served_serial(lab, process.port)
        assert first == _serial(tls.cert)
        _issue(lab, GATEWAY, tmp_path / "tls", "gw")
        os.kill(process.pid, signal.SIGHUP)
        second = await eventually(
            lambda: _served_serial_if_changed(lab, process.port, first), what="the new certificate served"
        )
        assert second == _serial(tls.cert)
        assert await _reads(client)  # the session made with the old certificate goes on
        client.close()
    finally:
        await process.stop()
    events = [orjson.loads(line) for line in process.audit_path.read_bytes().splitlines()]
    loaded = [e for e in events if e["event"] == "certificate_loaded"]
    assert [e["trigger"] for e in loaded] == ["SIGHUP"] and loaded[0]["identity"] == GATEWAY
    ends = [e for e in events if e["event"] == "session_end" and e["identity"] == ALICE]
    assert [e["reason"] for e in ends if "certificate" in e["reason"]] == []


async def _served_serial_if_changed(lab: Lab, port: int, old: int) -> int | None:
    serial = await _served_serial(lab, port)
    return serial if serial != old else None


async def test_files_replaced_on_disk_are_reloaded_ca_bundle_included(lab: Lab, tmp_path: Path) -> None:
    tls = _issue(lab, GATEWAY, tmp_path / "tls", "gw")
    gateway = await _gateway(lab, tls, watch_tls_s=0.05)
    alice = await _modbus(lab, gateway.port)
    stranger = lab.pki.clients["other-ca"]  # alice, but from another CA: not trusted yet
    with pytest.raises((ssl.SSLError, OSError, AssertionError, ModbusException)):
        assert await _reads(await _modbus(lab, gateway.port, "other-ca"))

    # The CA bundle gains the other CA: new handshakes trust it.
    other_ca = (stranger.cert.parent / "ca.pem").read_bytes()
    _replace(tls.ca, lab.pki.ca.read_bytes() + other_ca)
    await eventually(lambda: gateway.tls.reloads == 1, what="the CA bundle reloaded")
    assert await _reads(await _modbus(lab, gateway.port, "other-ca"))
    # A new certificate: new handshakes get it.
    old = await _served_serial(lab, gateway.port)
    _issue(lab, GATEWAY, tmp_path / "tls", "gw")
    await eventually(lambda: gateway.tls.reloads == 2, what="the certificate reloaded")
    assert await _served_serial(lab, gateway.port) == _serial(tls.cert) != old
    # A broken set is refused: the last good one stays, and says why.
    tls.key.write_text("not a key")
    await eventually(lambda: gateway.tls.reload_error is not None, what="the broken key noticed")
    assert gateway.tls.reloads == 2 and await _served_serial(lab, gateway.port) == _serial(tls.cert)
    assert await _reads(alice)  # the first session went through all of it
    first = lab.audit_events(event="session_start")[0]["session"]
    assert lab.audit_events(event="session_end", session=first) == []
    triggers = [e["trigger"] for e in lab.audit_events(event="certificate_loaded")]
    assert triggers == ["files changed", "files changed"]


@pytest.mark.parametrize(
    ("dates", "reason"),
    [
        ({"not_before": -2, "not_after": -1}, "expired at"),
        ({"not_before": 1, "not_after": 2}, "is not valid before"),
    ],
    ids=["expired", "not-yet-valid"],
)
async def test_readyz_fails_while_the_serving_certificate_cannot_serve(
    lab: Lab, tmp_path: Path, caplog: pytest.LogCaptureFixture, dates: dict[str, int], reason: str
) -> None:
    caplog.set_level(logging.ERROR, logger="ztgate.tls")
    now = datetime.now(UTC)
    when = {key: now + timedelta(days=days) for key, days in dates.items()}
    tls = _issue(lab, GATEWAY, tmp_path / "tls", "gw", **when)
    gateway = await _gateway(lab, tls)
    status, body = await admin_get(gateway, "/readyz")
    certificate = orjson.loads(body)["certificate"]
    assert status == 503 and certificate["ready"] is False
    assert certificate["reason"].startswith(f"the certificate {tls.cert} {reason}")
    await eventually(
        lambda: any(reason in r.getMessage() for r in caplog.records), what="the error in the log at start"
    )
    # Good files again: ready, without a restart.
    _issue(lab, GATEWAY, tmp_path / "tls", "gw")
    assert gateway.reload_tls("test")
    status, body = await admin_get(gateway, "/readyz")
    assert status == 200 and orjson.loads(body)["certificate"]["ready"] is True


async def test_an_expiry_gauge_per_certificate(lab: Lab, tmp_path: Path) -> None:
    tls = _issue(lab, GATEWAY, tmp_path / "tls", "gw")
    gateway = await _gateway(lab, tls)
    metrics = (await admin_get(gateway, "/metrics"))[1].decode()
    lines = [line for line in metrics.splitlines() if line.startswith("ztgate_certificate_expiry_seconds{")]
    leaf = f'ztgate_certificate_expiry_seconds{{certificate="leaf",file="{tls.cert}",subject="{GATEWAY}"}} '
    (served,) = [line for line in lines if line.startswith(leaf)]
    left_s = float(served.rsplit(" ", 1)[1])
    assert timedelta(days=6) < timedelta(seconds=left_s) <= timedelta(days=7)  # a gateway's 7 days
    (ca,) = [line for line in lines if 'certificate="ca"' in line]
    assert f'file="{tls.ca}"' in ca and float(ca.rsplit(" ", 1)[1]) > left_s


async def test_the_agent_reloads_its_certificate_and_proves_it(
    lab: Lab, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ztgate.tls")
    gateway = await _gateway(lab, TlsFiles(lab.pki.gateway.cert, lab.pki.gateway.key, lab.pki.ca))
    # The agent's certificate: 9 of its 10 hours gone, so in the last 20% of its life.
    now = datetime.now(UTC)
    tls = _issue(
        lab,
        HMI,
        tmp_path / "hmi",
        "hmi",
        not_before=now - timedelta(hours=9),
        not_after=now + timedelta(hours=1),
    )
    listener = AgentListener(("127.0.0.1", 0), "plc-1", ("127.0.0.1", gateway.port), "modbus", GATEWAY)
    agent = Agent(
        AgentConfig(tmp_path / "agent.toml", tls, (listener,), connect_timeout_s=3.0), watch_tls_s=0.05
    )
    await agent.start()
    try:
        await eventually(
            lambda: any(
                "expires at" in r.getMessage() and str(tls.cert) in r.getMessage() for r in caplog.records
            ),
            what="the warning",
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", agent.bound[0][1][1])
        read = bytes.fromhex("0001 0000 0006 01 03 0000 0001")
        writer.write(read)
        assert (await asyncio.wait_for(reader.read(260), 5))[:9] == bytes.fromhex("0001 0000 0005 01 03 02")
        _issue(lab, HMI, tmp_path / "hmi", "hmi")  # a fresh 24 h certificate, put there by hand
        await eventually(lambda: agent.proofs_sent == 1, what="the new certificate proved to the gateway")
        assert agent.tls is not None and agent.tls.reloads == 1 and agent.tls.last_trigger == "files changed"
        (proof,) = lab.audit_events(event="renewal_proved")
        assert proof["identity"] == HMI and len(proof["sessions"]) == 1
        writer.write(read)
        assert (await asyncio.wait_for(reader.read(260), 5))[:9] == bytes.fromhex("0001 0000 0005 01 03 02")
        writer.close()
    finally:
        await agent.stop()
    assert lab.audit_events(event="session_end") == []
