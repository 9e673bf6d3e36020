"""What the gateway answers itself is paced and audited in aggregate (issue 16.2): one identity floods
refused requests at full speed on two sessions through a real client; the audit holds one full record
per kind and session, then one count per kind and interval (exact, the last at session end), and the
number of answers stays within the identity's budget, while another identity's requests all succeed."""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from time import monotonic
from typing import Any

from gateway.runtime import SessionLimits
from tests.e2e.harness import ALICE, VENDOR, Lab, policy_text
from tests.e2e.test_modbus_decisions import RULES
from tests.peers.modbus_server import expected_register

FLOOD_S = 1.5
PIPELINE = 32  # requests the flooding client keeps outstanding on each session
LIMITS = SessionLimits(
    local_answers_per_s=300.0, identity_local_answers_per_s=400.0, refusal_audit_interval_s=0.25
)


async def test_a_flood_of_refused_requests_is_paced_and_audited_in_aggregate(lab: Lab) -> None:
    port = await lab.start_device()
    await lab.start_gateway(policy_text(port, RULES), limits=LIMITS)
    floods = [await lab.client("vendor", timeout_s=10.0) for _ in range(2)]
    other = await lab.client("alice")
    refused = 0
    started = monotonic()

    async def flood(client: Any) -> None:
        nonlocal refused
        while monotonic() - started < FLOOD_S:
            # vendor-read-only allows FC 1-4 on 0-49: every write is refused (exception 1).
            results = await asyncio.gather(
                *(client.write_register(5, 1, device_id=1) for _ in range(PIPELINE))
            )
            assert all(r.isError() and r.exception_code == 1 for r in results)
            refused += len(results)

    async def probe() -> int:
        reads = 0
        while monotonic() - started < FLOOD_S:
            result = await other.read_holding_registers(3, count=1, device_id=1)
            assert not result.isError() and result.registers == [expected_register(3)]
            reads += 1
        return reads

    *_, reads = await asyncio.gather(*(flood(c) for c in floods), probe())
    elapsed_s = monotonic() - started
    assert reads > 0
    for client in floods:
        client.close()
    for _ in range(2):
        await lab.wait_for_event(event="session_end", identity=VENDOR, timeout_s=10.0)
    await lab.wait_for_event(event="session_end", identity=VENDOR, timeout_s=10.0)

    records = lab.audit_events(event="decision", identity=VENDOR)
    by_session: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_session[record["session"]].append(record)
    assert len(by_session) == 2
    # Exact: every refused request is in one full record or in the count of one aggregate.
    assert sum(r.get("count", 1) for r in records) == refused
    ends = {e["session"]: e["denied"] for e in lab.audit_events(event="session_end", identity=VENDOR)}
    for session, own in by_session.items():
        assert sum(r.get("count", 1) for r in own) == ends[session]
        full = [r for r in own if not r.get("aggregated")]
        # One kind (FC 6 refused by the default deny): one full record, then at most one aggregate per
        # interval and one more at the session's end: the stated bound of 1 + 1 / interval_s records per
        # second and session, whatever the flood's rate.
        assert len(full) == 1 and full[0]["code_name"] == "ILLEGAL_FUNCTION"
        assert len(own) <= 2 + math.ceil(elapsed_s / LIMITS.refusal_audit_interval_s) + 1
        assert all(r["fc"] == 6 and r["decision"] == "deny" for r in own)
    # Paced: the identity's two sessions together got no more answers than its budget (a second's
    # worth to start with, then its rate), give or take one pipeline per session already read.
    budget = LIMITS.identity_local_answers_per_s * (1 + elapsed_s) + 2 * PIPELINE
    assert refused <= budget
    # And the other identity was never refused.
    assert not [r for r in lab.audit_events(event="decision", identity=ALICE) if r["decision"] != "allow"]
