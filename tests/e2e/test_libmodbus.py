"""libmodbus's own random-test-client through agent -> gateway -> pymodbus server."""

from __future__ import annotations

from tests.e2e.harness import Lab, policy_text
from tests.peers.libmodbus import run_random_test_client

# What random-test-client does (tests/peers/libmodbus.py): unit 17, coils and holding registers 0-98,
# FC 1, 3, 5, 6, 15, 16 and 23, every write read back and compared.
RULES = """
[[rules]]
id = "hmi-random-test"
subjects = ["spiffe://plant1.example/agent/site1/hmi-3"]
assets = ["plc-1"]
modbus = [{ fc = [1, 3, 5, 6, 15, 16, 23], unit = 17, address = "0-99" }]
"""


async def test_random_test_client_passes_through_agent_and_gateway(lab: Lab) -> None:
    port = await lab.start_device(units=(17,))
    policy = policy_text(port, RULES).replace("unit_ids = [1]", "unit_ids = [17]")
    await lab.start_gateway(policy)
    local = await lab.start_agent("hmi")
    result = await run_random_test_client("127.0.0.1", local, unit=17, loops=1)
    assert result.passed, result.summary()
    decisions = lab.audit_events(event="decision")
    assert decisions and all(e["decision"] == "allow" and e["rule"] == "hmi-random-test" for e in decisions)
    assert {e["fc"] for e in decisions} == {1, 3, 5, 6, 15, 16, 23}


async def test_random_test_client_fails_visibly_when_the_policy_forbids_writes(lab: Lab) -> None:
    port = await lab.start_device(units=(17,))
    read_only = RULES.replace("fc = [1, 3, 5, 6, 15, 16, 23]", "fc = [1, 3]")
    await lab.start_gateway(policy_text(port, read_only).replace("unit_ids = [1]", "unit_ids = [17]"))
    local = await lab.start_agent("hmi")
    result = await run_random_test_client("127.0.0.1", local, unit=17, loops=1)
    assert not result.passed
    refused = lab.audit_events(event="decision", decision="deny")
    assert refused and {e["code"] for e in refused} == {1}
