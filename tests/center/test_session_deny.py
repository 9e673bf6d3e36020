"""A ``scope = "session"`` deny rule pushed to the gateways cuts the live sessions it names (audited
with the rule) and refuses their new handshakes, on the same path as a lock; others go on."""

from __future__ import annotations

from tests.center.harness import ALICE, TD, Site, eventually, modbus_policy, read_rule
from tests.center.test_locks import ACME, BOB, _client, _lab, _reads

SUSPEND_ACME = f"""
[[rules]]
id = "acme-suspended"
effect = "deny"
scope = "session"
description = "acme's contract is suspended"
subjects = ["spiffe://{TD}/vendor/acme/*"]
assets = ["*"]
"""


async def test_a_session_deny_rule_cuts_and_refuses_its_sessions(site: Site) -> None:
    (gateway,), _, people = await _lab(site)
    acme = await _client(site, people["acme"], gateway, "plc-1")
    alice = await _client(site, people["alice"], gateway, "plc-1")
    assert await _reads(acme) and await _reads(alice)
    device_port = gateway.policy.assets["plc-1"].upstream_port
    policy = modbus_policy(
        {"plc-1": (device_port, "closed"), "plc-2": (device_port, "closed")}, read_rule(["plc-1", "plc-2"])
    ).replace("operators = [", f'operators = ["{BOB}", "{ACME}", ')
    await site.push(policy + SUSPEND_ACME)
    cut = await eventually(lambda: site.events(gateway, event="session_cut"), what="acme's session cut")
    assert [(e["identity"], e["rule"], e["reason"], e["policy_revision"]) for e in cut] == [
        (ACME, "acme-suspended", "acme's contract is suspended", "2")
    ]
    ended = site.events(gateway, event="session_end", identity=ACME)
    assert ended[0]["reason"] == "rule acme-suspended: acme's contract is suspended"
    assert not await _reads(acme) and await _reads(alice)
    assert not await _reads(await _client(site, people["acme"], gateway, "plc-2"))
    refused = await eventually(
        lambda: site.events(gateway, event="session_refused", category="denied"), what="refusal audited"
    )
    assert refused[0]["identity"] == ACME and "acme-suspended" in refused[0]["reason"]
    assert {s.info.identity for s in gateway.runtime.sessions} == {ALICE}
