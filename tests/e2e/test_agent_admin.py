"""The agent's admin endpoints (``[agent] admin``), on a real ``ztgate agent`` process: /readyz follows
the agent's own certificate (not ready, with the reason, while it is expired or not yet valid or while
files put in its place do not load; ready again after good files and SIGHUP), /metrics carries the
``ztgate_certificate_expiry_seconds`` gauge and the agent's relay counters (those with a gateway on
an agent in the test's process)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway import pki as pki_module
from gateway.agent import Agent
from gateway.config import AgentConfig, AgentListener, TlsFiles
from tests.center.harness import eventually
from tests.e2e.harness import GATEWAY, HMI, Lab, Pki, policy_text
from tests.processes import AgentProcess

RULES = """
[[rules]]
id = "agents-read"
subjects = ["spiffe://plant1.example/agent/*"]
assets = ["plc-1"]
modbus = [{ fc = [3], address = "0-99" }]
"""


def _issue(pki: Pki, out: Path, **dates: datetime) -> TlsFiles:
    """An agent certificate of the test CA for HMI in out/agent.pem and .key (replaced atomically),
    with the CA bundle next to them."""
    out.mkdir(exist_ok=True)
    issued = pki_module.issue(pki.ca.parent, HMI, out_dir=out, name="agent", **dates)  # type: ignore[arg-type]
    ca = out / "ca.pem"
    if not ca.exists():
        shutil.copy(pki.ca, ca)
    return TlsFiles(issued.cert, issued.key, ca)


async def _get(agent: AgentProcess | Agent, path: str) -> tuple[int, bytes]:
    url = f"http://127.0.0.1:{agent.admin_port}{path}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.read()


async def _readyz(agent: AgentProcess) -> tuple[int, dict[str, Any]]:
    status, body = await _get(agent, "/readyz")
    return status, orjson.loads(body)


async def _ready_again(agent: AgentProcess) -> bool:
    status, body = await _readyz(agent)
    return status == 200 and body["certificate"]["ready"] is True


def _samples(metrics: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of every sample of ``name`` in Prometheus text."""
    found = {}
    for line in metrics.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) :].rsplit(" ", 1)
            found[labels] = float(value)
    return found


@pytest.mark.parametrize(
    ("dates", "reason"),
    [
        ({"not_before": -2, "not_after": -1}, "expired at"),
        ({"not_before": 1, "not_after": 2}, "is not valid before"),
    ],
    ids=["expired", "not-yet-valid"],
)
async def test_readyz_fails_with_the_reason_until_good_files_and_sighup(
    pki: Pki, tmp_path: Path, dates: dict[str, int], reason: str
) -> None:
    now = datetime.now(UTC)
    tls = _issue(pki, tmp_path / "tls", **{key: now + timedelta(days=days) for key, days in dates.items()})
    agent = AgentProcess(tmp_path, tls)
    await agent.start()
    try:
        status, body = await _get(agent, "/healthz")
        assert status == 200 and orjson.loads(body) == {"status": "ok", "agent": HMI}
        status, ready = await _readyz(agent)
        certificate = ready["certificate"]
        assert status == 503 and ready["ready"] is False and certificate["ready"] is False
        assert certificate["reason"].startswith(f"the certificate {tls.cert} {reason}")
        assert certificate["identity"] == HMI and certificate["reloads"] == 0
        assert f"{reason}" in agent.log_text()  # said in the log at start too

        # Good files, then SIGHUP: ready again, without a restart.
        good = _issue(pki, tmp_path / "tls")
        os.kill(agent.pid, signal.SIGHUP)
        await eventually(lambda: _ready_again(agent), what="the agent ready with its new certificate")
        certificate = (await _readyz(agent))[1]["certificate"]
        assert certificate["reloads"] == 1 and "reason" not in certificate
        assert certificate["cert"] == str(good.cert)
    finally:
        assert await agent.stop() == 0
    assert "Traceback" not in agent.log_text()


async def test_metrics_and_a_reload_that_fails(pki: Pki, tmp_path: Path) -> None:
    tls = _issue(pki, tmp_path / "tls")  # the agent profile's 24 hours
    agent = AgentProcess(tmp_path, tls)
    await agent.start()
    try:
        status, ready = await _readyz(agent)
        assert status == 200 and ready["ready"] is True
        assert ready["certificate"]["identity"] == HMI and ready["certificate"]["reload_error"] is None

        metrics = (await _get(agent, "/metrics"))[1].decode()
        expiry = _samples(metrics, "ztgate_certificate_expiry_seconds")
        leaf = expiry[f'{{certificate="leaf",file="{tls.cert}",subject="{HMI}"}}']
        assert timedelta(hours=23) < timedelta(seconds=leaf) <= timedelta(hours=24)
        (ca,) = [value for labels, value in expiry.items() if 'certificate="ca"' in labels]
        assert ca > leaf
        # Nothing listens on the configured gateway (localhost:1): a local client costs one failure.
        assert _samples(metrics, "ztgate_agent_connect_failures_total") == {}
        _, writer = await asyncio.open_connection("127.0.0.1", agent.listen_port)
        failures = await eventually(
            lambda: _failures(agent), what="the failed overlay connection counted in /metrics"
        )
        assert failures == {'{asset="plc-1"}': 1.0}
        writer.close()

        # Files put in place that do not load: not ready, saying why; the old certificate stays.
        tls.key.write_text("not a key")
        os.kill(agent.pid, signal.SIGHUP)
        status, ready = await eventually(lambda: _not_ready(agent), what="the failed reload in /readyz")
        assert status == 503 and "do not load" in ready["certificate"]["reason"]
        assert str(tls.key) in ready["certificate"]["reload_error"]
        _issue(pki, tmp_path / "tls")
        os.kill(agent.pid, signal.SIGHUP)
        await eventually(lambda: _ready_again(agent), what="ready after good files")
    finally:
        assert await agent.stop() == 0
    assert "Traceback" not in agent.log_text()


async def _failures(agent: AgentProcess) -> dict[str, float]:
    metrics = (await _get(agent, "/metrics"))[1].decode()
    return _samples(metrics, "ztgate_agent_connect_failures_total")


async def _not_ready(agent: AgentProcess) -> tuple[int, dict[str, Any]] | None:
    status, body = await _readyz(agent)
    return (status, body) if status == 503 else None


async def test_relays_refusals_and_failures_are_counted_by_asset(lab: Lab) -> None:
    gateway = await lab.start_gateway(policy_text(await lab.start_device(), RULES))
    at = ("127.0.0.1", gateway.port)
    listeners = (
        AgentListener(("127.0.0.1", 0), "plc-1", at, "modbus", GATEWAY),
        AgentListener(("127.0.0.1", 0), "plc-9", at, "modbus", GATEWAY),  # no rule: refused
        AgentListener(("127.0.0.1", 0), "plc-2", ("127.0.0.1", 1), "modbus", GATEWAY),  # nothing there
    )
    config = AgentConfig(
        lab.dir / "agent.toml", lab.pki.tls("hmi"), listeners, 5.0, admin_listen=("127.0.0.1", 0)
    )
    agent = Agent(config)
    await agent.start()
    try:
        ports = [port for _, (_, port) in agent.bound]
        client = await lab.plain_client(ports[0])
        assert not (await client.read_holding_registers(0, count=1, device_id=1)).isError()
        for port in ports[1:]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(bytes.fromhex("0001 0000 0006 01 03 0000 0001"))
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(260), 10) == b""  # closed, no answer
            writer.close()

        async def counted() -> dict[str, dict[str, float]] | None:
            text = (await _get(agent, "/metrics"))[1].decode()
            found = {
                name: _samples(text, f"ztgate_agent_{name}_total")
                for name in ("connections_relayed", "sessions_refused", "connect_failures")
            }
            return found if all(found.values()) else None

        assert await eventually(counted, what="all three counted") == {
            "connections_relayed": {'{asset="plc-1"}': 1.0, '{asset="plc-9"}': 1.0},
            "sessions_refused": {'{asset="plc-9"}': 1.0},
            "connect_failures": {'{asset="plc-2"}': 1.0},
        }
        text = (await _get(agent, "/metrics"))[1].decode()
        assert "\nztgate_agent_connections_open 1.0\n" in text  # the pymodbus client's, still open
    finally:
        await agent.stop()
