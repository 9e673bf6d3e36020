"""Two center replicas on one PostgreSQL serve the same state: a push through replica A reaches a
gateway subscribed to replica B (LISTEN/NOTIFY), and an enrollment on B uses a token made on A."""

from __future__ import annotations

from gateway.enroll import enroll
from tests.center.harness import TD, Site, eventually, free_port, modbus_policy, read_rule


async def test_a_push_through_one_replica_reaches_a_gateway_of_the_other(site: Site, pg_url: str) -> None:
    await site.init(store=pg_url)
    replica_a = await site.start_center()
    config = (site.dir / "center.toml").read_text()
    port_b = free_port()
    b_config = site.dir / "center-b.toml"
    b_config.write_text(config.replace(f":{site.port}", f":{port_b}"))
    replica_b = await site.start_center(b_config)
    assert (replica_a.port, replica_b.port) == (site.port, port_b)

    device = await site.device()
    policy = modbus_policy({"plc-1": (device.port, "closed")}, read_rule(["plc-1"], "0-9"))
    assert await site.push(policy) == 1  # through A
    token = await site.token("gateway", f"spiffe://{TD}/gateway/site1/gw-b")  # made on A
    credentials = await enroll(
        f"https://127.0.0.1:{port_b}", token["token"], token["fingerprint"], site.root / "gw-b"
    )
    assert credentials.center().url == f"https://127.0.0.1:{port_b}"
    gateway = await site.start_gateway(credentials, "gw-b")  # subscribed to B
    assert gateway.policy.revision == "1"

    assert await site.push(policy.replace('"0-9"', '"0-99"')) == 2  # through A again
    await eventually(lambda: gateway.policy.revision == "2", timeout_s=5, what="revision 2 through replica B")
    assert site.events(gateway, event="policy_loaded", policy_revision="2")[0]["trigger"] == "center"
    # Both replicas number from the same store.
    assert [
        r["revision"] for r in (await site.client().call("GET", "/v1/policy/revisions"))["revisions"]
    ] == [2, 1]
