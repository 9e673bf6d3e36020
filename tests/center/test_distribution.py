"""Signed policy distribution: a push reaches every subscribed gateway, which decides by it; forged,
replayed and expired bundles are refused and audited; a gateway restarts from its last good bundle
and never starts without one."""

from __future__ import annotations

import base64

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.bundles import BUNDLE_FILE, CenterUnavailableError
from gateway.center.authority import load_authority
from gateway.center.bundles import key_id, parse_key, sign
from gateway.credentials import Credentials
from gateway.server import Gateway
from tests.center.harness import TD, Site, eventually, modbus_policy, read_rule
from tests.peers.modbus_server import InProcessServer


async def _lab(site: Site, gateways: int) -> tuple[InProcessServer, list[Gateway], list[Credentials]]:
    await site.init()
    await site.start_center()
    device = await site.device()
    await site.push(modbus_policy({"plc-1": (device.port, "closed")}, read_rule(["plc-1"], "0-9")))
    credentials = [
        await site.enroll("gateway", f"spiffe://{TD}/gateway/site1/gw-{i}", f"gw-{i}")
        for i in range(gateways)
    ]
    started = [await site.start_gateway(c, f"gw-{i}") for i, c in enumerate(credentials)]
    return device, started, credentials


async def test_a_push_reaches_both_gateways_which_decide_by_it(site: Site) -> None:
    device, gateways, _ = await _lab(site, 2)
    for gateway in gateways:
        assert gateway.policy.revision == "1"
        assert gateway.runtime.policies.origin == "center"
    clients = [await site.modbus_client(g, "plc-1") for g in gateways]
    for client in clients:
        assert (await client.read_holding_registers(50, count=1, device_id=1)).exception_code == 2
    revision = await site.push(
        modbus_policy({"plc-1": (device.port, "closed")}, read_rule(["plc-1"], "0-99"))
    )
    assert revision == 2
    await eventually(lambda: all(g.policy.revision == "2" for g in gateways), what="revision 2 on both")
    for client in clients:  # the same sessions, decided by the new revision
        assert not (await client.read_holding_registers(50, count=1, device_id=1)).isError()
    for gateway in gateways:
        loaded = site.events(gateway, event="policy_loaded", policy_revision="2")
        assert loaded and loaded[0]["trigger"] == "center" and loaded[0]["previous_revision"] == "1"


async def test_forged_replayed_and_foreign_bundles_are_refused_and_audited(site: Site) -> None:
    device, (gateway,), (credentials,) = await _lab(site, 1)
    link = gateway.link
    assert link is not None
    first = (credentials.directory / BUNDLE_FILE).read_bytes()
    await site.push(modbus_policy({"plc-1": (device.port, "closed")}, read_rule(["plc-1"], "0-99")))
    await eventually(lambda: gateway.policy.revision == "2", what="revision 2")

    # A replayed old revision, correctly signed.
    link.handle(first)
    # A forged one: the signed body with a wider policy put in.
    envelope = orjson.loads(first)
    body = orjson.loads(envelope["body"])
    body["revision"] = 3
    forged = orjson.dumps(
        {"body": orjson.dumps(body, option=orjson.OPT_SORT_KEYS).decode(), "signature": envelope["signature"]}
    )
    link.handle(forged)
    # Signed, but by a key the gateway never trusted (with the real key's id claimed).
    body["key"] = orjson.loads(envelope["body"])["key"]
    stranger = Ed25519PrivateKey.generate()
    text = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    link.handle(
        orjson.dumps({"body": text.decode(), "signature": base64.b64encode(stranger.sign(text)).decode()})
    )
    # Another key's own document: not trusted.
    link.handle(sign(stranger, {**body, "revision": 4}))

    refusals = [e["reason"] for e in site.events(gateway, event="bundle_refused")]
    assert refusals[0] == "revision 1 is older than revision 2 in force"
    assert refusals[1].startswith("bad signature") and refusals[2].startswith("bad signature")
    assert "which this gateway does not trust" in refusals[3]
    assert gateway.policy.revision == "2" and link.refused == 4
    status = await _readyz(gateway)
    assert status["center"]["bundles_refused"] == 4 and status["center"]["revision"] == 2


async def _readyz(gateway: Gateway) -> dict[str, object]:
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{gateway.admin_port}/readyz") as r,
    ):
        return orjson.loads(await r.read())  # type: ignore[no-any-return]


async def test_a_gateway_restarts_from_its_bundle_and_never_without_a_verified_one(site: Site) -> None:
    _, (gateway,), (credentials,) = await _lab(site, 1)
    await gateway.stop()
    site.gateways.remove(gateway)
    for center in site.centers:
        await center.kill()

    again = await site.start_gateway(credentials, "gw-again")  # the center is down: from disk
    assert again.policy.revision == "1"
    assert site.events(again, event="bundle_loaded")[0]["policy_revision"] == "1"
    await again.stop()
    site.gateways.remove(again)

    path = credentials.directory / BUNDLE_FILE
    envelope = orjson.loads(path.read_bytes())
    body = orjson.loads(envelope["body"])
    body["policy"] = body["policy"].replace('address = "0-9"', 'address = "0-65535"')
    envelope["body"] = orjson.dumps(body, option=orjson.OPT_SORT_KEYS).decode()
    path.write_bytes(orjson.dumps(envelope))
    with pytest.raises(CenterUnavailableError, match="no verified policy bundle"):
        await _quick_gateway(credentials)


async def _quick_gateway(credentials: Credentials) -> None:
    from gateway.audit import AuditLog
    from gateway.config import CenterSettings

    settings = CenterSettings(credentials.directory, startup_timeout_s=0.5)
    audit = AuditLog(gateway="gw-tampered", file=credentials.directory / "tampered.jsonl")
    gateway = Gateway(name="gw-tampered", tls=settings.tls, center=settings, audit=audit)
    try:
        await gateway.start()
    finally:
        refused = [
            orjson.loads(line)
            for line in (credentials.directory / "tampered.jsonl").read_bytes().splitlines()
        ]
        assert refused[0]["event"] == "bundle_refused" and "bad signature" in refused[0]["reason"]


async def test_the_signing_key_rotates_without_visiting_the_gateways(site: Site) -> None:
    device, (gateway,), (credentials,) = await _lab(site, 1)
    authority = load_authority(site.dir / "keys", "center")
    old_key = authority.signing_keys()[0]
    assert "made" in authority.rotate_signing_key()
    await site.centers[0].stop()
    site.centers.clear()
    await site.start_center()
    await eventually(lambda: site.events(gateway, event="signing_key_trusted"), what="the next key announced")
    trusted = credentials.center().signing_keys
    assert trusted[0] == old_key and len(trusted) == 2

    assert "is now" in load_authority(site.dir / "keys", "center").rotate_signing_key()
    await site.centers[0].stop()
    site.centers.clear()
    await site.start_center()
    await site.push(modbus_policy({"plc-1": (device.port, "closed")}, read_rule(["plc-1"], "0-99")))
    await eventually(lambda: gateway.policy.revision == "2", what="revision 2 signed with the new key")
    signed_by = orjson.loads(orjson.loads((credentials.directory / BUNDLE_FILE).read_bytes())["body"])["key"]
    assert signed_by == key_id(parse_key(trusted[1]))
    assert site.events(gateway, event="bundle_refused") == []
