"""Admin HTTP: health, readiness, Prometheus metrics and live sessions, read with aiohttp's client."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.e2e.harness import ALICE, Lab, policy_text

RULES = """
[[rules]]
id = "read"
subjects = ["group:operators"]
assets = ["plc-1"]
modbus = [{ fc = [3], address = "0-99" }]
"""


async def test_health_readiness_metrics_sessions(lab: Lab) -> None:
    port = await lab.start_device()
    gateway = await lab.start_gateway(policy_text(port, RULES))
    base = f"http://127.0.0.1:{gateway.admin_port}"
    client = await lab.client("alice")
    assert not (await client.read_holding_registers(0, count=2, device_id=1)).isError()
    assert (await client.write_register(1, 1, device_id=1)).isError()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 200 and (await response.json())["status"] == "ok"
        async with http.get(f"{base}/readyz") as response:
            body = await response.json()
            assert response.status == 200 and body["ready"] is True
            assert body["policy_revision"] == gateway.policy.revision
            assert body["upstreams"] == [{"asset": "plc-1", "protocol": "modbus", "connected": 1}]
        async with http.get(f"{base}/sessions") as response:
            sessions = (await response.json())["sessions"]
            assert [s["identity"] for s in sessions] == [ALICE]
            assert sessions[0]["requests"] == 2 and sessions[0]["denied"] == 1
        async with http.get(f"{base}/metrics") as response:
            text = await response.text()
            assert response.headers["Content-Type"].startswith("text/plain")
        lines = set(text.splitlines())
        assert (
            'ztgate_requests_total{asset="plc-1",decision="allow",operation="3",protocol="modbus"} 1.0'
            in lines
        )
        assert (
            'ztgate_requests_total{asset="plc-1",decision="deny",operation="6",protocol="modbus"} 1.0'
            in lines
        )
        assert 'ztgate_upstream_connections{asset="plc-1",protocol="modbus"} 1.0' in lines
        assert "ztgate_sessions_live 1.0" in lines
        assert "ztgate_audit_dropped_total 0.0" in lines
        assert any(line.startswith("ztgate_request_latency_seconds_bucket{") for line in lines)

        assert lab.device is not None
        await lab.device.stop()
        # Readiness follows the device: not ready once the gateway has lost its connection.
        for _ in range(200):
            async with http.get(f"{base}/readyz") as response:
                if response.status == 503:
                    body = await response.json()
                    assert body["unreachable"] == ["plc-1"]
                    break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("readiness never reported the lost device")
