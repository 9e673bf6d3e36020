"""Admin HTTP: health, readiness, Prometheus metrics and live sessions, read with aiohttp's client."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.center.harness import eventually
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
            assert body["assets"] == {
                "plc-1": {
                    "protocol": "modbus",
                    "ready": True,
                    "state": "up",
                    "connections": 1,
                    "not_answering": 0,
                    "reason": None,
                }
            }
            assert body["assets_down"] == []
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
        # The one forwarded read is counted in the latency histogram, and its latency summed.
        latency = {
            line.split("{")[0]: float(line.rsplit(" ", 1)[1])
            for line in lines
            if line.startswith("ztgate_request_latency_seconds_")
            and 'asset="plc-1"' in line
            and "_bucket" not in line
        }
        assert latency["ztgate_request_latency_seconds_count"] == 1.0
        assert latency["ztgate_request_latency_seconds_sum"] > 0.0

        assert lab.device is not None
        await lab.device.stop()
        # Readiness follows the device: with its only asset gone, the gateway serves nothing.
        for _ in range(200):
            async with http.get(f"{base}/readyz") as response:
                if response.status == 503:
                    body = await response.json()
                    assert body["assets_down"] == ["plc-1"]
                    assert body["assets"]["plc-1"]["state"] == "unreachable"
                    break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("readiness never reported the lost device")


class SilentDevice:
    """A device that accepts TCP connections, reads what it is sent, and never answers; until told to
    (``answers = True``): then a Modbus device in trouble, answering every request with exception 0x04
    (server device failure)."""

    def __init__(self) -> None:
        self.connections = 0
        self.received = 0
        self.answers = False
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        while header := await reader.read(7):  # MBAP: tid, protocol, length, unit
            self.received += len(header)
            if len(header) < 7:
                header += await reader.readexactly(7 - len(header))
            pdu = await reader.readexactly(int.from_bytes(header[4:6]) - 1)
            self.received += len(pdu)
            if self.answers:
                writer.write(header[:4] + (3).to_bytes(2) + header[6:7] + bytes((pdu[0] | 0x80, 0x04)))

    async def stop(self) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()


async def test_readiness_is_per_asset_and_a_silent_device_is_not_connected(lab: Lab) -> None:
    port = await lab.start_device()
    silent = [SilentDevice() for _ in range(3)]
    modbus_port, enip_port, opcua_port = [await device.start() for device in silent]
    timeouts = "connect_timeout_s = 0.3\nresponse_timeout_s = 0.3"
    assets = f"""
[assets.plc-silent]
protocol = "modbus"
upstream = "127.0.0.1:{modbus_port}"
{timeouts}

[assets.logix-silent]
protocol = "enip"
upstream = "127.0.0.1:{enip_port}"
{timeouts}

[assets.opc-silent]
protocol = "opcua"
upstream = "opc.tcp://127.0.0.1:{opcua_port}"
{timeouts}
"""
    rules = RULES.replace('assets = ["plc-1"]', 'assets = ["plc-1", "plc-silent"]')
    gateway = await lab.start_gateway(
        policy_text(port, rules, asset_extra="").replace("[groups]", assets + "[groups]")
    )
    base = f"http://127.0.0.1:{gateway.admin_port}"

    async def get(path: str) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as http, http.get(f"{base}{path}") as response:
            return response.status, await response.json()

    async def states() -> dict[str, str]:
        _, body = await get("/readyz")
        return {name: asset["state"] for name, asset in body["assets"].items()}

    try:
        # EtherNet/IP and OPC UA ask the device something before they take requests (RegisterSession,
        # Hello): a device that never answers is never connected.
        await eventually(
            lambda: silent[1].connections >= 2 and silent[2].connections >= 2,
            what="the gateway tried the silent EtherNet/IP and OPC UA devices more than once",
        )
        found = await states()
        assert found["logix-silent"] == found["opc-silent"] == "unreachable"
        # Modbus has no handshake: the TCP connection is up, and nothing tells yet that the device is
        # silent. A client's request that times out does.
        client = await lab.client("alice", "plc-silent")
        result = await client.read_holding_registers(0, count=1, device_id=1)
        assert result.isError() and result.exception_code == 0x0B
        assert silent[0].received  # the request did reach the silent device
        status, body = await get("/readyz")
        assert body["assets"]["plc-silent"] == {
            "protocol": "modbus",
            "ready": False,
            "state": "not_answering",
            "connections": 0,
            "not_answering": 1,
            "reason": "a request timed out and the device has sent nothing since",
        }
        # Three of four devices are dead: the gateway still serves plc-1, and says which are down.
        assert status == 200 and body["ready"] is True
        assert body["assets_down"] == ["logix-silent", "opc-silent", "plc-silent"]
        assert body["assets"]["plc-1"]["state"] == "up"
        assert (await get("/readyz/plc-1"))[0] == 200
        for name in ("plc-silent", "logix-silent", "opc-silent"):
            status, body = await get(f"/readyz/{name}")
            assert status == 503 and body["ready"] is False and body["asset"] == name
        assert (await get("/readyz/no-such-plc"))[0] == 404
        _, metrics = await get_text(f"{base}/metrics")
        assert 'ztgate_upstream_not_answering{asset="plc-silent",protocol="modbus"} 1.0' in metrics
        assert 'ztgate_upstream_connections{asset="plc-silent",protocol="modbus"} 0.0' in metrics
    finally:
        for device in silent:
            await device.stop()


async def get_text(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.text()


async def test_a_silent_modbus_device_that_speaks_again_is_up_again(lab: Lab) -> None:
    device = SilentDevice()
    silent_port = await device.start()
    policy = policy_text(silent_port, RULES, asset_extra="response_timeout_s = 0.3")
    gateway = await lab.start_gateway(policy)
    url = f"http://127.0.0.1:{gateway.admin_port}/readyz/plc-1"
    try:
        client = await lab.client("alice")
        assert (await client.read_holding_registers(0, count=1, device_id=1)).exception_code == 0x0B
        status, text = await get_text(url)
        assert status == 503 and '"state": "not_answering"' in text
        device.answers = True
        assert (await client.read_holding_registers(0, count=1, device_id=1)).exception_code == 0x04
        status, text = await get_text(url)
        assert status == 200 and '"state": "up"' in text
    finally:
        await device.stop()
