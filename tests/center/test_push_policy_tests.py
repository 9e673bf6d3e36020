"""A push whose policy tests fail is refused by the center, naming the test and the rule that decided;
the previous revision stays in force on the center and on the gateways."""

from __future__ import annotations

import pytest

from gateway.center.client import CenterError
from tests.center.harness import ALICE, TD, Site, eventually, modbus_policy, read_rule

VENDOR = f"spiffe://{TD}/vendor/acme/eve"
PROMISE = f"""
[[tests]]
name = "no vendor may ever write coils 0-99 on plc-1"
subject = "{VENDOR}"
asset = "plc-1"
request = {{ fc = 15, address = 0, count = 100, value = [1] }}
expect = "deny"

[[tests]]
name = "operators can always read"
subject = "{ALICE}"
asset = "plc-1"
request = {{ fc = 3, address = 0, count = 10 }}
expect = "allow"
rule = "read"
"""
VENDOR_COILS = f"""
[[rules]]
id = "vendor-maintenance"
subjects = ["spiffe://{TD}/vendor/*"]
assets = ["plc-1"]
modbus = [{{ fc = [1, 15], address = "0-199" }}]
"""


async def test_a_push_breaking_a_promise_is_refused_and_the_previous_revision_stays(site: Site) -> None:
    await site.init()
    await site.start_center()
    device = await site.device()
    good = modbus_policy({"plc-1": (device.port, "closed")}, read_rule(["plc-1"])) + PROMISE
    assert await site.push(good, "with its promises") == 1
    gateway = await site.start_gateway(
        await site.enroll("gateway", f"spiffe://{TD}/gateway/site1/gw-1", "gw-1"), "gw-1"
    )
    with pytest.raises(CenterError) as refused:
        await site.push(good + VENDOR_COILS, "vendor maintenance")
    message = refused.value.message
    assert refused.value.status == 422
    assert (
        'policy test "no vendor may ever write coils 0-99 on plc-1" (tests[0]) failed: '
        'expected deny, got allow by rule "vendor-maintenance"'
    ) in message
    assert "1 of 2 policy test(s) failed" in message
    assert refused.value.body["tests"] == [
        {
            "name": "no vendor may ever write coils 0-99 on plc-1",
            "index": 0,
            "expect": "deny",
            "expect_rule": None,
            "got": "allow",
            "rule": "vendor-maintenance",
            "note": "",
        }
    ]
    log = (await site.client().call("GET", "/v1/policy/revisions"))["revisions"]
    assert [r["revision"] for r in log] == [1]
    assert await site.audit("policy_pushed") and len(await site.audit("policy_pushed")) == 1
    assert gateway.policy.revision == "1"

    # The same change with the vendor's coils kept out of 0-99 keeps the promise and goes through.
    assert await site.push(good + VENDOR_COILS.replace('"0-199"', '"100-199"')) == 2
    await eventually(lambda: gateway.policy.revision == "2", what="revision 2 on the gateway")
