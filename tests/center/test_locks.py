"""Locks: ``ztgate lock create`` on a center process cuts the matching live sessions on every gateway
(audited with the lock's id and reason) while the others go on; matching handshakes are refused;
locks outlive a gateway restart and a center restart, stop renewal, and lift themselves after their
TTL; bad input changes nothing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import aiohttp
import orjson
import pytest
from pymodbus.client import AsyncModbusTlsClient

from gateway.bundles import LOCKS_FILE
from gateway.center.client import CenterClient, CenterError
from gateway.credentials import Credentials
from gateway.identity import PeerPin
from gateway.renewal import make_csr
from gateway.server import Gateway
from gateway.tls import client_context
from tests.center.harness import ALICE, TD, Site, eventually, modbus_policy, read_rule
from tests.peers.modbus_server import REPO_ROOT

BOB = f"spiffe://{TD}/user/bob"
ACME = f"spiffe://{TD}/vendor/acme/jo"


async def _client(site: Site, credentials: Credentials, gateway: Gateway, asset: str) -> AsyncModbusTlsClient:
    tls = credentials.tls
    client = AsyncModbusTlsClient(
        "127.0.0.1",
        port=gateway.port,
        sslctx=client_context(tls.cert, tls.key, tls.ca, server_name=asset),
        timeout=3,
        retries=0,
        reconnect_delay=0,
    )

    async def close() -> None:
        client.close()

    site.closers.append(close)
    assert await client.connect()
    return client


async def _reads(client: AsyncModbusTlsClient) -> bool:
    """Whether a read through the gateway succeeds on this client."""
    try:
        return not (await client.read_holding_registers(1, count=1, device_id=1)).isError()
    except Exception:  # pymodbus raises on a closed connection
        return False


async def _lab(
    site: Site, gateways: int = 1
) -> tuple[list[Gateway], list[Credentials], dict[str, Credentials]]:
    await site.init()
    await site.start_center()
    device = await site.device()
    policy = modbus_policy(
        {"plc-1": (device.port, "closed"), "plc-2": (device.port, "closed")},
        read_rule(["plc-1", "plc-2"]),
    ).replace("operators = [", f'operators = ["{BOB}", "{ACME}", ')
    await site.push(policy)
    credentials = [
        await site.enroll("gateway", f"spiffe://{TD}/gateway/site1/gw-{i}", f"gw-{i}")
        for i in range(gateways)
    ]
    started = [await site.start_gateway(c, f"gw-{i}") for i, c in enumerate(credentials)]
    people = {
        "alice": await site.enroll("user", ALICE, "alice"),
        "bob": await site.enroll("user", BOB, "bob"),
        "acme": await site.enroll("vendor", ACME, "acme"),
    }
    return started, credentials, people


async def _lock(site: Site, target: str, reason: str = "incident 42", **extra: Any) -> dict[str, Any]:
    return await site.client().call("POST", "/v1/locks", {"target": target, "reason": reason, **extra})


async def test_a_lock_cuts_matching_sessions_on_both_gateways_and_refuses_new_ones(site: Site) -> None:
    gateways, _, people = await _lab(site, 2)
    alice = [await _client(site, people["alice"], g, "plc-1") for g in gateways]
    bob = [await _client(site, people["bob"], g, "plc-1") for g in gateways]
    for client in (*alice, *bob):
        assert await _reads(client)

    lock = await _lock(site, f"identity={ALICE}", "badge lost")
    for gateway in gateways:
        cut = await eventually(
            lambda g=gateway: site.events(g, event="session_cut"), what=f"alice cut on {gateway.name}"
        )
        assert [(e["identity"], e["lock"], e["reason"]) for e in cut] == [(ALICE, lock["id"], "badge lost")]
        ended = site.events(gateway, event="session_end", identity=ALICE)
        assert ended and ended[0]["reason"] == f"lock {lock['id']}: badge lost"
        assert {s.info.identity for s in gateway.runtime.sessions} == {BOB}
    for client in alice:
        assert not await _reads(client)
    for client in bob:  # the sessions the lock does not match go on
        assert await _reads(client)

    # A new handshake is refused like any other refusal: the connection ends before a byte.
    again = await _client(site, people["alice"], gateways[0], "plc-2")
    assert not await _reads(again)
    refused = await eventually(
        lambda: site.events(gateways[0], event="session_refused", category="locked"), what="refusal audited"
    )
    assert refused[0]["identity"] == ALICE and lock["id"] in refused[0]["reason"]

    # Removed: alice gets in again.
    await site.client().call("DELETE", f"/v1/locks/{lock['id']}")
    await eventually(lambda: len(gateways[0].runtime.locks) == 0, what="the lock lifted on the gateway")
    assert await _reads(await _client(site, people["alice"], gateways[0], "plc-1"))
    assert [e["event"] for e in await site.audit() if e["event"].startswith("lock_")] == [
        "lock_created",
        "lock_removed",
    ]


async def test_prefix_and_asset_locks_match_only_their_sessions(site: Site) -> None:
    (gateway,), _, people = await _lab(site)
    acme = await _client(site, people["acme"], gateway, "plc-1")
    alice_1 = await _client(site, people["alice"], gateway, "plc-1")
    alice_2 = await _client(site, people["alice"], gateway, "plc-2")
    await _lock(site, f"prefix=spiffe://{TD}/vendor/acme/*", "acme contract ended")
    await eventually(
        lambda: not any(s.info.identity == ACME for s in gateway.runtime.sessions), what="acme cut"
    )
    assert not await _reads(acme) and await _reads(alice_1) and await _reads(alice_2)
    await _lock(site, "asset=plc-2", "maintenance")
    await eventually(lambda: len(gateway.runtime.sessions) == 1, what="plc-2 sessions cut")
    assert await _reads(alice_1) and not await _reads(alice_2)
    assert {e["target"] for e in site.events(gateway, event="session_cut")} == {
        f"prefix=spiffe://{TD}/vendor/acme/*",
        "asset=plc-2",
    }


async def test_locks_travel_ahead_of_the_policy(site: Site) -> None:
    _, credentials, _ = await _lab(site)
    await _lock(site, f"identity={BOB}")
    await site.push(modbus_policy({"plc-1": (1, "closed")}, read_rule(["plc-1"])))
    tls = credentials[0].tls
    context = client_context(tls.cert, tls.key, tls.ca, peer=PeerPin(TD, "center"))
    kinds = []
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{site.url}/v1/stream", params={"policy": "1", "locks": "0"}, ssl=context) as ws,
    ):
        for _ in range(2):
            message = await ws.receive(timeout=10)
            kinds.append(orjson.loads(orjson.loads(message.data)["body"])["kind"])
    assert kinds == ["locks", "policy"]


async def test_a_lock_outlives_gateway_and_center_restarts_and_stops_renewal(site: Site) -> None:
    (gateway,), (gw_credentials,), people = await _lab(site)
    lock = await _lock(site, f"identity={ALICE}", "left the company")
    await eventually(lambda: len(gateway.runtime.locks) == 1, what="the lock on the gateway")
    assert (gw_credentials.directory / LOCKS_FILE).is_file()

    # The gateway restarts while the center is down: the lock comes from its disk.
    await gateway.stop()
    site.gateways.remove(gateway)
    await site.centers[0].kill()
    site.centers.clear()
    again = await site.start_gateway(gw_credentials, "gw-again")
    assert again.runtime.locks.match(ALICE, "plc-1") is not None
    assert not await _reads(await _client(site, people["alice"], again, "plc-1"))
    assert await _reads(await _client(site, people["bob"], again, "plc-1"))

    # The center restarts: the lock is in its store, listed and still enforced on renewal.
    await site.start_center()
    listed = (await site.client().call("GET", "/v1/locks"))["locks"]
    assert [item["id"] for item in listed] == [lock["id"]]
    await _lock(site, f"agent=spiffe://{TD}/agent/site1/hmi-9", "stolen laptop")
    agent = await site.enroll("agent", f"spiffe://{TD}/agent/site1/hmi-9", "hmi-9")
    _, csr = make_csr(f"spiffe://{TD}/agent/site1/hmi-9")
    async with CenterClient.for_credentials(agent) as client:
        with pytest.raises(CenterError) as refused:
            await client.call("POST", "/v1/renew", {"csr": csr})
    assert refused.value.status == 403 and "stolen laptop" in refused.value.message
    assert (await site.audit("renew_refused"))[0]["detail"]["reason"] == "stolen laptop"
    await eventually(lambda: len(again.runtime.locks) == 2, what="the new lock reaches the gateway")


async def test_a_lock_with_a_ttl_lifts_itself(site: Site) -> None:
    (gateway,), _, people = await _lab(site)
    lock = await _lock(site, f"identity={ALICE}", "cool-off", ttl_s=1.5)
    await eventually(lambda: len(gateway.runtime.locks) == 1, what="the lock on the gateway")
    assert not await _reads(await _client(site, people["alice"], gateway, "plc-1"))
    expired = await eventually(lambda: site.events(gateway, event="lock_expired"), what="lock_expired")
    assert expired[0]["lock"] == lock["id"]
    assert await _reads(await _client(site, people["alice"], gateway, "plc-1"))
    assert (await site.client().call("GET", "/v1/locks"))["locks"] == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"target": "badge=42", "reason": "x"}, "expected KIND=VALUE"),
        ({"target": f"identity={ALICE}", "reason": "x" * 501}, "at most 500"),
        ({"target": f"identity={ALICE}", "reason": "  "}, "needs a reason"),
        ({"target": "identity=spiffe://other.example/user/a", "reason": "x"}, "not in trust domain"),
        ({"target": f"prefix=spiffe://{TD}/vendor/acme", "reason": "x"}, "ending in /*"),
        ({"target": f"agent={ALICE}", "reason": "x"}, "agent/..."),
        ({"target": f"identity={ALICE}", "reason": "x", "ttl_s": 0}, "ttl_s"),
        ({"target": f"identity={ALICE}", "reason": "x", "scope": "all"}, "unknown fields"),
    ],
)
async def test_bad_lock_requests_are_refused_and_change_nothing(
    site: Site, body: dict[str, Any], message: str
) -> None:
    await site.init()
    await site.start_center()
    client = site.client()
    with pytest.raises(CenterError) as refused:
        await client.call("POST", "/v1/locks", body)
    assert refused.value.status == 400 and message in refused.value.message
    assert (await client.call("GET", "/v1/locks"))["locks"] == []
    assert await site.audit("lock_created") == []
    with pytest.raises(CenterError) as missing:
        await client.call("DELETE", "/v1/locks/lk-nothing")
    assert missing.value.status == 404


async def test_the_lock_command(site: Site) -> None:
    await site.init()
    await site.start_center()
    assert site.admin is not None
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "ZTGATE_CREDENTIALS": str(site.admin.directory)}

    def ztgate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "lock", *args],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    created = await asyncio.to_thread(
        ztgate,
        "create",
        "--target",
        f"prefix=spiffe://{TD}/vendor/acme/*",
        "--ttl",
        "2h",
        "--reason",
        "audit",
    )
    assert created.returncode == 0, created.stderr
    lock_id = created.stdout.split()[0]
    assert lock_id.startswith("lk-") and "until" in created.stdout
    listed = await asyncio.to_thread(ztgate, "ls")
    assert lock_id in listed.stdout and "audit" in listed.stdout
    bad = await asyncio.to_thread(ztgate, "create", "--target", "site=1", "--reason", "x")
    assert bad.returncode == 1 and "expected KIND=VALUE" in bad.stderr
    removed = await asyncio.to_thread(ztgate, "rm", lock_id)
    assert removed.returncode == 0 and removed.stdout.startswith("removed")
    assert (await asyncio.to_thread(ztgate, "ls")).stdout == ""
