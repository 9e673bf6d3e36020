"""Proof of renewal: a handshake with a renewed certificate and the reserved ALPN value moves the end
of that identity's live sessions, and only that identity's."""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

import orjson
from cryptography import x509

from gateway.renewal_proof import prove_renewal
from gateway.tls import RENEWAL_ALPN, client_context
from tests.e2e.harness import ALICE, BOB, Lab, policy_text

RULES = """
[[rules]]
id = "operators-read"
subjects = ["group:operators"]
assets = ["plc-1"]
modbus = [{ fc = [3], address = "0-99" }]
"""


def _not_after(lab: Lab, who: str) -> float:
    pem = lab.pki.clients[who].cert.read_bytes()
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


async def _prove(lab: Lab, who: str, source: str = "127.0.0.1") -> dict[str, Any]:
    assert lab.gateway is not None
    files = lab.pki.clients[who]
    context = client_context(files.cert, files.key, lab.pki.ca, alpn=RENEWAL_ALPN)
    if source == "127.0.0.1":
        return await prove_renewal("127.0.0.1", lab.gateway.port, context, 5.0)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", lab.gateway.port, ssl=context, local_addr=(source, 0)
    )
    answer = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    return orjson.loads(answer)  # type: ignore[no-any-return]


def _ends(lab: Lab) -> dict[str, str]:
    assert lab.gateway is not None
    return {s["identity"]: s["certificate_not_after"] for s in lab.gateway.runtime.sessions.describe()}


async def test_a_proof_extends_its_identity_sessions_and_no_others(lab: Lab) -> None:
    port = await lab.start_device()
    short_end = _not_after(lab, "alice-short")
    # The gateway's clock: alice's session has a minute left when it starts.
    await lab.start_gateway(policy_text(port, RULES), clock=lambda: short_end - 60)
    alice = await lab.client("alice-short")
    bob = await lab.client("bob")
    before = _ends(lab)
    assert before[ALICE] == _utc(short_end)

    # Bob's renewal is no proof for alice: nothing of hers moves, and his own session already ends
    # with the certificate he proves.
    answer = await _prove(lab, "bob")
    assert answer["extended"] == 0 and _ends(lab) == before
    # Alice's renewed certificate, proved from another host, is no proof for her sessions from this one.
    answer = await _prove(lab, "alice", source="127.0.0.2")
    assert answer["extended"] == 0 and _ends(lab) == before
    # Alice's renewed certificate moves her session's end to its notAfter.
    answer = await _prove(lab, "alice")
    assert answer == {"identity": ALICE, "extended": 1, "not_after": _utc(_not_after(lab, "alice"))}
    assert _ends(lab) == {**before, ALICE: _utc(_not_after(lab, "alice"))}
    # A proof of the older certificate does not shorten it.
    assert (await _prove(lab, "alice-short"))["extended"] == 0
    assert _ends(lab)[ALICE] == _utc(_not_after(lab, "alice"))

    for client in (alice, bob):
        assert not (await client.read_holding_registers(0, count=1, device_id=1)).isError()
    proofs = lab.audit_events(event="renewal_proved")
    assert [(p["identity"], len(p["sessions"])) for p in proofs] == [
        (BOB, 0),
        (ALICE, 0),
        (ALICE, 1),
        (ALICE, 0),
    ]
    (start,) = lab.audit_events(event="session_start", identity=ALICE)
    assert proofs[2]["sessions"] == [start["session"]] and proofs[2]["peer"].startswith("127.0.0.1:")
    assert proofs[2]["not_after"] == _utc(_not_after(lab, "alice"))
    # A proof is no session.
    assert len(lab.audit_events(event="session_start")) == 2


async def test_a_session_that_starts_after_a_proof_ends_with_the_proven_certificate(lab: Lab) -> None:
    port = await lab.start_device()
    await lab.start_gateway(policy_text(port, RULES))
    await _prove(lab, "alice")
    await lab.client("alice-short")  # a handshake made with the old certificate, under way during the proof
    assert _ends(lab)[ALICE] == _utc(_not_after(lab, "alice"))


async def test_a_proof_needs_a_verified_client_certificate(lab: Lab) -> None:
    port = await lab.start_device()
    await lab.start_gateway(policy_text(port, RULES))
    for who in ("expired", "other-ca", "gateway"):  # not verified; or no client's identity
        files = lab.pki.clients[who]
        context = client_context(files.cert, files.key, lab.pki.ca, alpn=RENEWAL_ALPN)
        try:
            await prove_renewal("127.0.0.1", lab.gateway.port, context, 5.0)  # type: ignore[union-attr]
        except (ssl.SSLError, OSError, ValueError):
            pass
        else:
            raise AssertionError(f"a proof with the {who} certificate was answered")
    assert lab.audit_events(event="renewal_proved") == []
