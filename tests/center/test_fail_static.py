"""The center killed under traffic: nothing dropped, the last bundle decides, staleness is visible;
past max_staleness_s closed assets refuse in protocol terms and static ones serve; the center back,
the gateway catches up with what it missed and reopens."""

from __future__ import annotations

import asyncio

import orjson

from gateway.center.config import load_center_config
from gateway.center.db import open_database
from gateway.center.store import Store
from tests.center.harness import TD, Site, admin_get, eventually, modbus_policy, read_rule

STALE_S = 1.0


async def test_center_killed_fail_static_then_closed_then_caught_up(site: Site) -> None:
    await site.init()
    center = await site.start_center()
    device = await site.device()
    assets = {"plc-closed": (device.port, "closed"), "plc-static": (device.port, "static")}
    policy = modbus_policy(assets, read_rule(list(assets)))
    await site.push(policy)
    credentials = await site.enroll("gateway", f"spiffe://{TD}/gateway/site1/gw-1", "gw-1")
    gateway = await site.start_gateway(credentials, "gw-1", max_staleness_s=STALE_S)
    link = gateway.link
    assert link is not None
    closed = await site.modbus_client(gateway, "plc-closed")
    static = await site.modbus_client(gateway, "plc-static")
    outcomes: dict[str, list[int]] = {"plc-closed": [], "plc-static": []}
    stop = asyncio.Event()

    async def poll(name: str, client: object) -> None:
        while not stop.is_set():
            result = await client.read_holding_registers(5, count=1, device_id=1)  # type: ignore[attr-defined]
            outcomes[name].append(result.exception_code if result.isError() else 0)
            await asyncio.sleep(0.005)

    pollers = [
        asyncio.create_task(poll("plc-closed", closed)),
        asyncio.create_task(poll("plc-static", static)),
    ]
    await eventually(lambda: all(outcomes.values()), what="traffic on both assets")

    await center.kill()
    await eventually(lambda: not link.connected, what="the gateway notices the center is gone")
    # Within max_staleness_s, the last bundle decides: reads keep being allowed on both assets.
    during = {name: len(found) for name, found in outcomes.items()}
    await eventually(lambda: all(len(outcomes[n]) > during[n] + 5 for n in outcomes), what="traffic goes on")
    assert all(code == 0 for found in outcomes.values() for code in found)
    status, body = await admin_get(gateway, "/readyz")
    ready = orjson.loads(body)
    assert status == 200 and ready["center"]["connected"] is False and ready["center"]["stale"] is False
    assert ready["center"]["stale_s"] is not None
    assert site.events(gateway, event="center_unreachable")

    # Past the limit: the closed asset refuses (exception 1, in protocol terms), the static one serves.
    await eventually(lambda: link.stale, timeout_s=STALE_S + 5, what="stale")
    before = {name: len(found) for name, found in outcomes.items()}
    await eventually(
        lambda: (
            outcomes["plc-closed"][before["plc-closed"] :].count(1) >= 3
            and len(outcomes["plc-static"]) > before["plc-static"] + 3
        ),
        what="refusals on the closed asset, answers on the static one",
    )
    assert set(outcomes["plc-static"]) == {0}
    status, body = await admin_get(gateway, "/readyz")
    assert status == 503 and orjson.loads(body)["center"]["closed_assets"] == ["plc-closed"]
    _, metrics = await admin_get(gateway, "/metrics")
    assert b"ztgate_policy_stale 1.0" in metrics and b"ztgate_policy_staleness_seconds" in metrics
    stale = site.events(gateway, event="policy_stale")
    assert stale and stale[0]["closed"] == ["plc-closed"] and stale[0]["static"] == ["plc-static"]
    assert site.events(gateway, event="policy_stale_static")[0]["assets"] == ["plc-static"]
    refused = site.events(gateway, event="decision", asset="plc-closed", decision="deny")
    assert refused and refused[0]["reason"].startswith(
        "policy stale: the center has not confirmed revision 1"
    )

    # Revisions pushed while the gateway could not hear (through the store, as another replica would).
    store = Store(open_database(load_center_config(site.dir / "center.toml").store, site.dir))
    await store.open()
    await store.push_policy(
        policy.replace('address = "0-99"', 'address = "0-49"'), "spiffe://plant1.example/user/admin"
    )
    await store.push_policy(
        policy.replace('address = "0-99"', 'address = "0-9"'), "spiffe://plant1.example/user/admin"
    )
    await store.close()
    center = await site.start_center()
    await eventually(
        lambda: gateway.policy.revision == "3" and not link.stale, what="caught up with revision 3"
    )
    loaded = site.events(gateway, event="policy_loaded", policy_revision="3")
    assert loaded[0]["previous_revision"] == "1"
    assert site.events(gateway, event="policy_fresh")
    after = len(outcomes["plc-closed"])
    await eventually(lambda: len(outcomes["plc-closed"]) > after + 3, what="traffic after the catch-up")
    # Revision 3 allows 0-9: register 5 is served again on the reopened asset.
    assert outcomes["plc-closed"][-1] == 0
    stop.set()
    await asyncio.gather(*pollers)
    # Not one session dropped through all of it.
    assert site.events(gateway, event="session_end") == []
    assert len(site.events(gateway, event="session_start")) == 2
