"""Just-in-time vendor access on a center process and a gateway, with pymodbus on loopback: a vendor
asks (checked against ``[vendor_access]``), approvers approve (never the requester, once each, two
when the policy says so), the grant becomes a rule with its period in the next signed revision (if
the policy's tests still pass), the vendor's certificate for it ends with it, writes outside it are
refused, the gateway cuts the session itself at the window's end, and a revocation cuts it as a
lock. Every step is in the center's audit; bad input changes nothing."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from pymodbus.client import AsyncModbusTlsClient

from gateway.audit_schema import problems
from gateway.center.client import CenterClient, CenterError
from gateway.center.store import center_record
from gateway.credentials import Credentials, make_csr
from gateway.server import Gateway
from gateway.tls import client_context
from tests.center.harness import ALICE, TD, Site, eventually, modbus_policy, read_rule

ACME = f"spiffe://{TD}/vendor/acme/jo"
BOB = f"spiffe://{TD}/user/bob"
CAROL = f"spiffe://{TD}/user/carol"
DAVE = f"spiffe://{TD}/user/dave"
READ_WRITE = "read 0-99, write 10 0..1500"


@pytest.fixture(autouse=True)
async def _grant_records_follow_the_schema(site: Site) -> AsyncIterator[None]:
    """Whatever a test did, each grant record the center wrote is what docs/audit.md says it is."""
    yield
    for row in await site.audit():
        if row["event"].startswith("grant_"):
            record = center_record(row["seq"], row["at"], row["event"], row["actor"], row["detail"])
            # The sinks' writer adds the center's name and formats the time (gateway/audit.py).
            record.update(center="center", time="2026-12-07T00:00:00.000000Z")
            assert problems(record) == [], record


def _policy(device_port: int, approvers: int = 1, extra: str = "") -> str:
    return (
        modbus_policy(
            {"plc-1": (device_port, "closed"), "plc-2": (device_port, "closed")}, read_rule(["plc-1"])
        )
        + f"""
[vendor_access]
subjects = ["spiffe://{TD}/vendor/*", "{CAROL}"]
assets = ["plc-1"]
max_window_s = 7200
approvers = {approvers}
modbus = [
  {{ preset = "read-only", address = "0-199" }},
  {{ fc = [6, 16], address = "0-20", value = "0-1500" }},
]

[[tests]]
name = "no vendor may ever write register 5 on plc-1"
subject = "{ACME}"
asset = "plc-1"
request = {{ fc = 6, address = 5, value = 1 }}
expect = "deny"
"""
        + extra
    )


class Lab:
    def __init__(self, site: Site, gateway: Gateway, people: dict[str, Credentials]) -> None:
        self.site = site
        self.gateway = gateway
        self.people = people

    def client(self, who: str) -> CenterClient:
        client = CenterClient.for_credentials(self.people[who])
        self.site.closers.append(client.close)
        return client

    async def request(self, who: str = "acme", **fields: Any) -> dict[str, Any]:
        body = {
            "asset": "plc-1",
            "protocol": "modbus",
            "ops": READ_WRITE,
            "for_s": 3600,
            "reason": "firmware",
        }
        return await self.client(who).call("POST", "/v1/access", {**body, **fields})

    async def act(self, who: str, grant_id: str, action: str, **body: Any) -> dict[str, Any]:
        return await self.client(who).call("POST", f"/v1/access/{grant_id}/{action}", body)

    async def certificate(self, grant_id: str) -> Credentials:
        key, csr = make_csr(ACME)
        answer = await self.client("acme").call("POST", f"/v1/access/{grant_id}/certificate", {"csr": csr})
        out = Credentials(self.site.root / f"acme-{grant_id}")
        out.save(key, answer["certificate"], answer["ca"], self.people["acme"].center())
        return out

    async def modbus(self, credentials: Credentials) -> AsyncModbusTlsClient:
        tls = credentials.tls
        client = AsyncModbusTlsClient(
            "127.0.0.1",
            port=self.gateway.port,
            sslctx=client_context(tls.cert, tls.key, tls.ca, server_name="plc-1"),
            timeout=3,
            retries=0,
            reconnect_delay=0,
        )

        async def close() -> None:
            client.close()

        self.site.closers.append(close)
        assert await client.connect()
        return client


async def _lab(site: Site, approvers: int = 1) -> Lab:
    await site.init()
    await site.start_center()
    device = await site.device()
    await site.push(_policy(device.port, approvers))
    gateway = await site.start_gateway(
        await site.enroll("gateway", f"spiffe://{TD}/gateway/site1/gw-1", "gw-1"), "gw-1"
    )
    people = {
        "acme": await site.enroll("vendor", ACME, "acme"),
        "bob": await site.enroll("approver", BOB, "bob"),
        "carol": await site.enroll("approver", CAROL, "carol"),
        "dave": await site.enroll("approver", DAVE, "dave"),
        "alice": await site.enroll("user", ALICE, "alice"),
    }
    return Lab(site, gateway, people)


async def _reads(client: AsyncModbusTlsClient) -> bool:
    try:
        return not (await client.read_holding_registers(1, count=1, device_id=1)).isError()
    except Exception:  # pymodbus raises on a closed connection
        return False


async def _write(client: AsyncModbusTlsClient, address: int, value: int) -> int:
    """0 when the write went through, else the Modbus exception code."""
    answer = await client.write_register(address, value, device_id=1)
    return int(answer.exception_code) if answer.isError() else 0


async def test_a_grant_lets_the_vendor_in_for_its_window_and_the_gateway_cuts_it_at_the_end(
    site: Site,
) -> None:
    lab = await _lab(site)
    window_s = 8.0
    grant = await lab.request(for_s=window_s, reason="replace the pressure sensor")
    assert (grant["state"], grant["requester"], grant["approvers_needed"]) == ("pending", ACME, 1)
    pending = (await lab.client("bob").call("GET", "/v1/access"))["grants"]
    assert [g["id"] for g in pending] == [grant["id"]]

    approved = await lab.act("bob", grant["id"], "approve")
    assert approved["state"] == "approved" and approved["revision"] == 2
    await eventually(lambda: lab.gateway.policy.revision == "2", what="the grant's revision on the gateway")
    rule = next(r for r in lab.gateway.policy.rules if r.id == grant["id"])
    assert rule.subjects == (ACME,) and rule.window is not None

    credentials = await lab.certificate(grant["id"])
    certificate = x509.load_pem_x509_certificate(credentials.tls.cert.read_bytes())
    # The window ends on a whole second, and the certificate with it: X.509 keeps whole seconds.
    assert grant["not_after"] == int(grant["not_after"])
    assert certificate.not_valid_after_utc.timestamp() == grant["not_after"]

    vendor = await lab.modbus(credentials)
    assert await _reads(vendor)
    assert await _write(vendor, 10, 1000) == 0
    assert await _write(vendor, 10, 2000) == 3  # a value outside the grant: illegal data value
    assert await _write(vendor, 11, 5) == 2  # an address outside it: illegal data address
    started = site.events(lab.gateway, event="session_start", identity=ACME)
    assert [e.get("grant") for e in started] == [grant["id"]]

    # The window ends: the gateway cuts the session itself (the center says nothing).
    cut = await eventually(
        lambda: site.events(lab.gateway, event="session_cut", identity=ACME),
        timeout_s=window_s + 15,
        what="the session cut at the window's end",
    )
    assert cut[0]["rule"] == grant["id"] and "ended" in cut[0]["reason"]
    # At the grant's end, not before it (the certificate's end is the same instant, not a second early).
    assert time.time() >= grant["not_after"]
    assert not await _reads(vendor)
    # A new session that only the ended grant would let in is refused at the handshake (with the
    # vendor's enrolled certificate: the grant's own has ended with it).
    await eventually(lambda: time.time() >= grant["not_after"], what="the grant's end")
    assert not await _reads(await lab.modbus(lab.people["acme"]))
    refused = await eventually(
        lambda: site.events(lab.gateway, event="session_refused", identity=ACME), what="refusal audited"
    )
    assert grant["id"] in refused[0]["reason"]

    events = [(e["event"], e["actor"]) for e in await site.audit() if e["event"].startswith("grant")]
    assert events == [
        ("grant_requested", ACME),
        ("grant_approval", BOB),
        ("grant_approved", BOB),
        ("grant_certificate", ACME),
    ]
    requested = (await site.audit("grant_requested"))[0]["detail"]
    assert (requested["ops"], requested["reason"]) == (READ_WRITE, "replace the pressure sensor")


async def test_requests_outside_vendor_access_are_refused_with_the_reason(site: Site) -> None:
    lab = await _lab(site)
    for who, fields, reason in (
        ("acme", {"asset": "plc-2"}, "asset plc-2 is not among the [vendor_access] assets"),
        ("acme", {"ops": "write 30 0..10"}, "'write 30 0..10': FC 6, FC 16 there is outside"),
        ("acme", {"ops": "write 10 0..2000"}, "'write 10 0..2000': FC 6, FC 16 there is outside"),
        ("acme", {"ops": "write-coils 0-9"}, "'write-coils 0-9': FC 5, FC 15 there is outside"),
        ("acme", {"for_s": 7201}, "a window of 7201 s is longer than [vendor_access] allows (7200 s)"),
        ("alice", {}, f"{ALICE} is not among the [vendor_access] subjects"),
    ):
        with pytest.raises(CenterError) as refused:
            await lab.request(who, **fields)
        assert refused.value.status == 403 and reason in refused.value.message, refused.value.message
    refusals = await site.audit("grant_request_refused")
    assert len(refusals) == 6 and refusals[-1]["actor"] == ALICE
    assert (await lab.client("bob").call("GET", "/v1/access", params={"state": "all"}))["grants"] == []


async def test_bad_input_gets_a_4xx_and_changes_nothing(site: Site) -> None:
    lab = await _lab(site)
    before = await site.audit()
    for fields, status, message in (
        ({"asset": "plc-9"}, 400, "unknown asset 'plc-9'"),
        ({"asset": "../x"}, 400, "unknown asset"),
        ({"for_s": 0}, 400, "malformed window"),
        ({"for_s": -5}, 400, "malformed window"),
        ({"for_s": "2h"}, 400, "field 'for_s'"),
        ({"from": time.time() - 86400}, 400, "malformed window: it starts"),
        ({"from": time.time() + 400 * 86400}, 400, "malformed window: it starts more than"),
        ({"reason": "x" * 501}, 400, "reason of 501 characters: at most 500"),
        ({"reason": "  "}, 400, "needs a reason"),
        ({"ops": "format the disk"}, 400, "'format' is no operation on modbus assets; expected one of"),
        ({"ops": "read 10-5"}, 400, "'read 10-5': address: \"10-5\": range start 10 is above its end 5"),
        ({"ops": "fc 6,x 10"}, 400, "'fc 6,x 10': fc[1]: 'x': a function code is a number"),
        ({"ops": "write 10 0..1500 7"}, 400, "is more than a target and its bounds"),
        ({"protocol": "profinet"}, 400, "speaks modbus, not profinet"),
        ({"ops": "read 0-99 0..5"}, 400, "value bounds go with writes only"),
        ({"protocol": "enip"}, 400, "speaks modbus, not enip"),
        ({"extra": 1}, 400, "unknown fields: extra"),
    ):
        with pytest.raises(CenterError) as refused:
            await lab.request(**fields)
        assert refused.value.status == status and message in refused.value.message, refused.value.message
    with pytest.raises(CenterError) as unknown:
        await lab.act("bob", "gr-000000000000", "approve")
    assert unknown.value.status == 404
    with pytest.raises(CenterError) as state:
        await lab.client("bob").call("GET", "/v1/access", params={"state": "maybe"})
    assert state.value.status == 400
    assert await site.audit() == before
    assert (await lab.client("bob").call("GET", "/v1/access", params={"state": "all"}))["grants"] == []
    assert (await site.client().call("GET", "/v1/policy/revisions"))["revisions"][0]["revision"] == 1


async def test_the_two_person_rule_and_no_approval_of_ones_own_request(site: Site) -> None:
    lab = await _lab(site, approvers=2)
    grant = await lab.request()
    assert grant["approvers_needed"] == 2
    with pytest.raises(CenterError) as vendor:  # a vendor approves nothing, its own request least
        await lab.act("acme", grant["id"], "approve")
    assert vendor.value.status == 403

    once = await lab.act("bob", grant["id"], "approve")
    assert once["state"] == "pending" and [a["approver"] for a in once["approvals"]] == [BOB]
    assert "revision" not in once
    assert (await site.client().call("GET", "/v1/policy/revisions"))["revisions"][0]["revision"] == 1
    with pytest.raises(CenterError) as twice:
        await lab.act("bob", grant["id"], "approve")
    assert twice.value.status == 409 and "already approved" in twice.value.message
    with pytest.raises(CenterError) as no_certificate:  # nothing granted yet
        await lab.certificate(grant["id"])
    assert no_certificate.value.status == 409

    # An approver who asks for access is a requester like any: someone else must approve.
    own = await lab.request("carol")
    with pytest.raises(CenterError) as refused:
        await lab.act("carol", own["id"], "approve")
    assert refused.value.status == 403 and "never approves its own request" in refused.value.message

    done = await lab.act("dave", grant["id"], "approve")
    assert done["state"] == "approved" and done["revision"] == 2
    approvals = await site.audit("grant_approval")
    assert [(e["actor"], e["detail"]["approvals"]) for e in approvals] == [(BOB, 1), (DAVE, 2)]


async def test_a_grant_whose_revision_fails_a_policy_test_is_refused_naming_it(site: Site) -> None:
    lab = await _lab(site)
    grant = await lab.request(ops="write 0-9 0..100")
    with pytest.raises(CenterError) as refused:
        await lab.act("bob", grant["id"], "approve")
    assert refused.value.status == 422
    assert (
        'policy test "no vendor may ever write register 5 on plc-1" (tests[0]) failed'
        in refused.value.message
    )
    assert refused.value.body["tests"][0]["rule"] == grant["id"]
    assert (await site.client().call("GET", "/v1/policy/revisions"))["revisions"][0]["revision"] == 1
    assert lab.gateway.policy.revision == "1"
    listed = (await lab.client("bob").call("GET", "/v1/access", params={"state": "refused"}))["grants"]
    assert [g["id"] for g in listed] == [grant["id"]]
    assert (await site.audit("grant_refused"))[0]["detail"]["tests"][0]["name"].startswith("no vendor")


async def test_revoking_a_grant_cuts_its_sessions_as_a_lock(site: Site) -> None:
    lab = await _lab(site)
    grant = await lab.request()
    await lab.act("bob", grant["id"], "approve")
    await eventually(lambda: lab.gateway.policy.revision == "2", what="the grant's revision on the gateway")
    vendor = await lab.modbus(await lab.certificate(grant["id"]))
    operator_credentials = lab.people["alice"]
    operator = await lab.modbus(operator_credentials)
    assert await _reads(vendor) and await _reads(operator)

    revoked = await lab.act("bob", grant["id"], "revoke", reason="work done early")
    assert revoked["state"] == "revoked" and revoked["lock"]["target"] == f"grant={grant['id']}"
    cut = await eventually(
        lambda: site.events(lab.gateway, event="session_cut", identity=ACME), what="the vendor cut"
    )
    assert (cut[0]["lock"], cut[0]["reason"]) == (revoked["lock"]["id"], "work done early")
    assert not await _reads(vendor)
    assert await _reads(operator)  # the others go on
    with pytest.raises(CenterError) as again:
        await lab.act("bob", grant["id"], "revoke", reason="twice")
    assert again.value.status == 409
    revocation = (await site.audit("grant_revoked"))[0]
    assert (revocation["actor"], revocation["detail"]["reason"]) == (BOB, "work done early")


async def test_an_admin_push_keeps_the_grants_in_force(site: Site, tmp_path: Path) -> None:
    lab = await _lab(site)
    grant = await lab.request()
    await lab.act("bob", grant["id"], "approve")
    current = await site.client().call("GET", "/v1/policy/revisions/2")
    assert grant["id"] in current["policy"]
    # The admin pushes the text it had (or the revision with the grants: the center strips them).
    pushed = await site.client().call(
        "POST",
        "/v1/policy",
        {"policy": current["policy"].replace("max_window_s = 7200", "max_window_s = 3600")},
    )
    again = await site.client().call("GET", f"/v1/policy/revisions/{pushed['revision']}")
    assert again["policy"].count(f'id = "{grant["id"]}"') == 1
    assert "max_window_s = 3600" in again["policy"]
