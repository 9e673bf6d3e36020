"""Enrollment end to end against a center process: the key stays on the host, the certificate is for
the token's id, and every way it must fail fails with a clear message and an audit record."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.center.client import CenterError, PinnedCenter
from gateway.credentials import make_csr
from gateway.enroll import AUDIT_FILE, EnrollError, enroll
from gateway.identity import identity_from_certificate
from tests.center.harness import TD, Site
from tests.peers.modbus_server import REPO_ROOT

HMI = f"spiffe://{TD}/agent/site1/hmi-3"


def _csr(uris: list[str]) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


async def _enroll_raw(site: Site, token: dict[str, object], csr: str) -> CenterError:
    center = PinnedCenter(site.url)
    try:
        await center.verify(str(token["fingerprint"]))
        with pytest.raises(CenterError) as refused:
            await center.client.call("POST", "/v1/enroll", {"token": token["token"], "csr": csr})
    finally:
        await center.close()
    return refused.value


async def test_enrollment_issues_a_certificate_for_the_key_made_here(site: Site) -> None:
    await site.init()
    await site.start_center()
    token = await site.token("agent", HMI, ttl_s=60)
    assert token["token"].startswith("ztg1_") and token["fingerprint"].startswith("sha256:")
    # The command line, as an operator runs it.
    folder = site.root / "hmi"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "enroll", "--center", site.url, "--token", token["token"],
        "--fingerprint", token["fingerprint"], "--dir", str(folder),
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    out, _ = await process.communicate()
    assert process.returncode == 0, out
    assert f"enrolled {HMI} (role agent)" in out.decode()
    certificate = x509.load_pem_x509_certificate((folder / "cert.pem").read_bytes())
    key = serialization.load_pem_private_key((folder / "key.pem").read_bytes(), None)
    assert certificate.public_key() == key.public_key()  # type: ignore[union-attr]
    assert stat.S_IMODE((folder / "key.pem").stat().st_mode) == 0o600
    assert str(identity_from_certificate(certificate.public_bytes(serialization.Encoding.DER), TD)) == HMI
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert lifetime.total_seconds() <= 24 * 3600 + 300  # an agent's default, plus clock skew
    info = orjson.loads((folder / "center.json").read_bytes())
    assert (info["id"], info["role"], info["fingerprint"]) == (HMI, "agent", token["fingerprint"])
    identities = {
        row["id"]: row["role"] for row in (await site.client().call("GET", "/v1/identities"))["identities"]
    }
    assert identities[HMI] == "agent"
    enrolled = await site.audit("enrolled")
    assert [(e["actor"], e["detail"]["role"]) for e in enrolled] == [(HMI, "agent")]
    assert orjson.loads((folder / AUDIT_FILE).read_bytes().splitlines()[-1])["event"] == "enrolled"


async def test_enrollment_refusals_are_clear_and_audited(site: Site) -> None:
    await site.init()
    await site.start_center()

    # A token used twice.
    token = await site.token("agent", HMI)
    await enroll(site.url, token["token"], token["fingerprint"], site.root / "first")
    with pytest.raises(EnrollError, match="the token was already used"):
        await enroll(site.url, token["token"], token["fingerprint"], site.root / "second")

    # An expired token.
    short = await site.token("agent", f"spiffe://{TD}/agent/site1/late", ttl_s=0.2)
    await asyncio.sleep(0.3)
    with pytest.raises(EnrollError, match="the token has expired"):
        await enroll(site.url, short["token"], short["fingerprint"], site.root / "late")

    # A CSR for another id than the token's; a CSR with two URI SANs. Either uses the token up.
    other = await site.token("agent", f"spiffe://{TD}/agent/site1/hmi-4")
    refused = await _enroll_raw(site, other, make_csr(f"spiffe://{TD}/gateway/site1/gw-9")[1])
    assert refused.status == 400
    assert f"the CSR is for 'spiffe://{TD}/gateway/site1/gw-9', but this enrollment is for" in refused.message
    two = await site.token("agent", f"spiffe://{TD}/agent/site1/hmi-5")
    refused = await _enroll_raw(
        site, two, _csr([f"spiffe://{TD}/agent/site1/hmi-5", f"spiffe://{TD}/user/x"])
    )
    assert "the CSR has 2 URI subjectAltNames; it must name exactly one SPIFFE id" in refused.message
    with pytest.raises(EnrollError, match="already used"):
        await enroll(site.url, two["token"], two["fingerprint"], site.root / "two")

    reasons = [(e["detail"]["reason"], e["detail"].get("id")) for e in await site.audit("enroll_refused")]
    assert reasons == [
        ("used", HMI),
        ("expired", f"spiffe://{TD}/agent/site1/late"),
        ("csr", f"spiffe://{TD}/agent/site1/hmi-4"),
        ("csr", f"spiffe://{TD}/agent/site1/hmi-5"),
        ("used", f"spiffe://{TD}/agent/site1/hmi-5"),
    ]


async def test_a_center_whose_fingerprint_does_not_match_never_sees_the_token(
    site: Site, tmp_path: Path
) -> None:
    await site.init()
    await site.start_center()
    token = await site.token("agent", HMI)
    wrong = "sha256:" + "0" * 64
    folder = tmp_path / "hmi"
    with pytest.raises(EnrollError, match=f"fingerprint mismatch: the center at {site.url} has sha256:"):
        await enroll(site.url, token["token"], wrong, folder)
    assert not (folder / "key.pem").exists()
    record = orjson.loads((folder / AUDIT_FILE).read_bytes().splitlines()[-1])
    assert (record["event"], record["step"]) == ("enroll_refused", "fingerprint")
    assert "fingerprint mismatch" in record["reason"]
    # The token never left: it still enrolls with the right fingerprint.
    assert await site.audit("enroll_refused") == []
    await enroll(site.url, token["token"], token["fingerprint"], folder)
    assert (folder / "cert.pem").exists()
