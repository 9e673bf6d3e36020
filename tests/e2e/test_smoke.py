from __future__ import annotations

from tests.e2e.harness import Lab, policy_text
from tests.peers.modbus_server import expected_register

RULES = """
[[rules]]
id = "operators-read"
subjects = ["group:operators"]
assets = ["plc-1"]
modbus = [{ fc = [3], address = "0-99" }, { fc = 6, address = "40", value = "0-1500" }]
"""


async def test_read_and_refuse(lab: Lab) -> None:
    port = await lab.start_device()
    await lab.start_gateway(policy_text(port, RULES))
    client = await lab.client("alice")
    result = await client.read_holding_registers(0, count=10, device_id=1)
    assert not result.isError()
    assert result.registers == [expected_register(i) for i in range(10)]
    result = await client.read_holding_registers(95, count=10, device_id=1)
    assert result.isError() and result.exception_code == 2
    result = await client.write_register(40, 2000, device_id=1)
    assert result.isError() and result.exception_code == 3
    result = await client.write_register(40, 1200, device_id=1)
    assert not result.isError()
    result = await client.read_holding_registers(40, count=1, device_id=1)
    assert result.registers == [1200]
