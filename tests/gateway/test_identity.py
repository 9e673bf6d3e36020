"""SPIFFE id parsing and identity_from_certificate: every accepted form and every distinct refusal; and
the policy loader's subject check agreeing with the handshake on every id."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import pki
from gateway.identity import identity_from_certificate
from policies.spiffe import IdentityError, SpiffeId, parse_spiffe_id
from policies.subjects import check_subject

TD = "plant1.example"

# ------------------------------------------------------------------------------------------ parse_spiffe_id

VALID = [
    ("spiffe://plant1.example/user/alice", "plant1.example", "user/alice", "user"),
    ("spiffe://plant1.example/vendor/acme/bob", "plant1.example", "vendor/acme/bob", "vendor"),
    ("spiffe://plant1.example/agent/site1/hmi-3", "plant1.example", "agent/site1/hmi-3", "agent"),
    ("spiffe://plant1.example/gateway/site1/gw-1", "plant1.example", "gateway/site1/gw-1", "gateway"),
    ("spiffe://a-b_c.0/Robot/X_y.Z", "a-b_c.0", "Robot/X_y.Z", "Robot"),
    ("spiffe://td/single", "td", "single", "single"),
    # Only "." and ".." are special: other dotted segments are ordinary names.
    ("spiffe://td/.hidden/.../a..b", "td", ".hidden/.../a..b", ".hidden"),
    (
        "spiffe://td/" + "a" * (2048 - len("spiffe://td/")),
        "td",
        "a" * (2048 - len("spiffe://td/")),
        "a" * 2036,
    ),
    ("spiffe://" + "t" * 255 + "/x", "t" * 255, "x", "x"),
]


@pytest.mark.parametrize(("text", "trust_domain", "path", "kind"), VALID, ids=[v[0][:60] for v in VALID])
def test_parse_valid(text: str, trust_domain: str, path: str, kind: str) -> None:
    sid = parse_spiffe_id(text)
    assert sid == SpiffeId(trust_domain, path)
    assert sid.kind == kind
    assert str(sid) == text


INVALID = [
    ("", "not a URI of the form"),
    ("plant1.example/user/alice", "not a URI of the form"),
    ("spiffe:plant1.example/user/alice", "not a URI of the form"),
    ("https://plant1.example/user/alice", 'the scheme "https" is not "spiffe"'),
    ("SPIFFE://plant1.example/user/alice", 'the scheme must be "spiffe" in lowercase'),
    ("spiffe:///user/alice", "the trust domain is empty"),
    ("spiffe://Plant1.example/user/alice", 'the trust domain "Plant1.example" must be lowercase'),
    ("spiffe://pl ant.example/user/alice", 'the trust domain "pl ant.example" contains " "'),
    ("spiffe://[::1]/user/alice", 'contains "["'),
    ("spiffe://plant1.example:8443/user/alice", "a port is not allowed"),
    ("spiffe://bob@plant1.example/user/alice", "userinfo (user@) is not allowed"),
    ("spiffe://plant1.example/user/alice?x=1", "a query (?...) is not allowed"),
    ("spiffe://plant1.example/user/alice#frag", "a fragment (#...) is not allowed"),
    ("spiffe://plant1.example/user/al%69ce", "percent-encoding is not allowed"),
    ("spiffe://plant1.example", "the path is empty"),
    ("spiffe://plant1.example/", "the path is empty"),
    ("spiffe://plant1.example/user//alice", "the path has an empty segment"),
    ("spiffe://plant1.example/user/alice/", "the path has an empty segment"),
    ("spiffe://plant1.example/user/./alice", 'the path segment "." is not allowed'),
    ("spiffe://plant1.example/user/../alice", 'the path segment ".." is not allowed'),
    ("spiffe://plant1.example/user/..", 'the path segment ".." is not allowed'),
    ("spiffe://plant1.example/user/al ice", 'the path segment "al ice" contains " "'),
    ("spiffe://plant1.example/user/élise", 'contains "é"'),
    ("spiffe://plant1.example/user/alice\n", r"contains '\n'"),
    ("spiffe://plant1.example/user/" + "a" * 2048, "longer than 2048 bytes"),
    ("spiffe://" + "t" * 256 + "/x", "the trust domain is longer than 255 characters"),
]


@pytest.mark.parametrize(("text", "reason"), INVALID, ids=[repr(v[0][:50]) for v in INVALID])
def test_parse_invalid(text: str, reason: str) -> None:
    with pytest.raises(IdentityError) as caught:
        parse_spiffe_id(text)
    message = str(caught.value)
    assert message.startswith("malformed SPIFFE id ")
    assert reason in message
    assert len(message) < 400  # hostile input is quoted, not echoed in full


def test_identity_error_is_a_value_error() -> None:
    assert issubclass(IdentityError, ValueError)


def test_spiffe_id_is_immutable() -> None:
    sid = parse_spiffe_id("spiffe://plant1.example/user/alice")
    with pytest.raises(dataclasses.FrozenInstanceError):
        sid.path = "user/mallory"  # type: ignore[misc]
    assert {sid, parse_spiffe_id(str(sid))} == {sid}


_URI_ALPHABET = "spifeSPIFE:/@?#%.-_aZ09 \n[]é"


@given(
    st.text(alphabet=_URI_ALPHABET, max_size=40) | st.from_regex(r"spiffe://[a-z.]{0,4}(/[a-z.]{0,3}){0,3}")
)
def test_parse_accepts_exactly_its_own_output_or_explains(text: str) -> None:
    try:
        sid = parse_spiffe_id(text)
    except IdentityError as exc:
        assert str(exc).startswith("malformed SPIFFE id ")
        assert "not a valid SPIFFE id" not in str(exc)  # the explaining parser found a concrete reason
    else:
        assert str(sid) == text


# ---------------------------------------------------------------------------------- identity_from_certificate


@pytest.fixture(scope="module")
def leaf_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _der(
    key: ec.EllipticCurvePrivateKey,
    names: list[x509.GeneralName] | None,
    *,
    ca: bool = False,
    key_cert_sign: bool = False,
) -> bytes:
    """A self-signed certificate: identity_from_certificate never looks at the signature."""
    now = datetime.now(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if key_cert_sign:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _uri(text: str) -> x509.GeneralName:
    return x509.UniformResourceIdentifier(text)


def test_identity_from_certificate_accepts_an_issued_client_certificate(tmp_path: Path) -> None:
    pki.init_ca(tmp_path, TD)
    files = pki.issue(tmp_path, "vendor/acme/bob")
    der = x509.load_pem_x509_certificate(files.cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    sid = identity_from_certificate(der, TD)
    assert sid == SpiffeId(TD, "vendor/acme/bob")
    assert sid.kind == "vendor"


def test_identity_from_certificate_accepts_dns_and_ip_names_beside_the_uri(
    leaf_key: ec.EllipticCurvePrivateKey,
) -> None:
    import ipaddress

    der = _der(
        leaf_key,
        [
            x509.DNSName("gw.plant1.example"),
            _uri("spiffe://plant1.example/gateway/site1/gw-1"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ],
    )
    assert identity_from_certificate(der, TD) == SpiffeId(TD, "gateway/site1/gw-1")


REFUSALS: list[tuple[str, list[x509.GeneralName] | None, dict[str, bool], str]] = [
    ("no SAN extension", None, {}, "no SPIFFE id: the certificate has no subjectAltName extension"),
    ("DNS SAN only", [x509.DNSName("alice.plant1.example")], {}, "no SPIFFE id: the certificate has no URI"),
    (
        "two URI SANs",
        [_uri("spiffe://plant1.example/user/alice"), _uri("spiffe://plant1.example/user/bob")],
        {},
        "the certificate has 2 URI subjectAltNames",
    ),
    ("malformed id", [_uri("https://plant1.example/user/alice")], {}, 'malformed SPIFFE id "https://'),
    ("trust domain id", [_uri("spiffe://plant1.example")], {}, "the path is empty"),
    (
        "other trust domain",
        [_uri("spiffe://other.example/user/alice")],
        {},
        'trust domain "other.example" is not "plant1.example"',
    ),
    (
        "CA as leaf",
        [_uri("spiffe://plant1.example/user/alice")],
        {"ca": True},
        "a CA certificate was presented as a leaf (basicConstraints CA:true)",
    ),
    (
        "keyCertSign leaf",
        [_uri("spiffe://plant1.example/user/alice")],
        {"key_cert_sign": True},
        "a CA certificate was presented as a leaf (keyUsage keyCertSign)",
    ),
]


@pytest.mark.parametrize(
    ("names", "options", "reason"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_identity_from_certificate_refusals(
    leaf_key: ec.EllipticCurvePrivateKey,
    names: list[x509.GeneralName] | None,
    options: dict[str, bool],
    reason: str,
) -> None:
    der = _der(leaf_key, names, **options)
    with pytest.raises(IdentityError) as caught:
        identity_from_certificate(der, TD)
    assert reason in str(caught.value)


def test_identity_from_certificate_reasons_are_distinct(leaf_key: ec.EllipticCurvePrivateKey) -> None:
    messages = set()
    for _, names, options, _ in REFUSALS:
        with pytest.raises(IdentityError) as caught:
            identity_from_certificate(_der(leaf_key, names, **options), TD)
        messages.add(str(caught.value))
    assert len(messages) == len(REFUSALS)


@pytest.mark.parametrize("der", [b"", b"not a certificate", b"\x30\x03\x02\x01\x01"])
def test_identity_from_certificate_rejects_garbage(der: bytes) -> None:
    with pytest.raises(IdentityError, match="not a valid DER certificate"):
        identity_from_certificate(der, TD)


def _der_of(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(serialization.Encoding.DER)


def test_identity_from_certificate_refuses_the_real_ca_certificate(tmp_path: Path) -> None:
    files = pki.init_ca(tmp_path, TD)
    with pytest.raises(IdentityError, match="CA certificate was presented as a leaf"):
        identity_from_certificate(_der_of(files.cert), TD)


def test_identity_from_certificate_refuses_another_ca_in_another_trust_domain(tmp_path: Path) -> None:
    pki.init_ca(tmp_path, "other.example")
    files = pki.issue(tmp_path, "user/alice")
    with pytest.raises(
        IdentityError, match=re.escape('trust domain "other.example" is not "plant1.example"')
    ):
        identity_from_certificate(_der_of(files.cert), TD)


def test_identity_from_certificate_leaves_the_chain_to_tls(tmp_path: Path) -> None:
    # Another CA for the same trust domain: the name is fine, so only the TLS chain check can refuse it
    # (test_pki.py's handshake tests show that it does).
    pki.init_ca(tmp_path, TD)
    files = pki.issue(tmp_path, "user/alice")
    assert identity_from_certificate(_der_of(files.cert), TD) == SpiffeId(TD, "user/alice")


# ------------------------------------------------------------------ the policy and the handshake agree
# A policy names identities that the handshake must be able to prove: policies/subjects.py checks ids
# with the handshake's own parser (policies/spiffe.py), so the two can never disagree on an id.

AGREEMENT = (
    [text for text, *_ in VALID]
    + [text for text, _ in INVALID]
    + [
        "spiffe://other.example/user/alice",  # well formed, another trust domain
        "spiffe://plant1.example.evil/user/alice",
        "spiffe://plant1.example/user/alice:1",
        "spiffe://plant1.example/user/alice.",
        "spiffe://plant1.example/user/-_.",
        "spiffe://plant1.example/User/ALICE",
        "spiffe://plant1.example/" + "a" * (2048 - len("spiffe://plant1.example/")),
        "spiffe://plant1.example/" + "a" * (2049 - len("spiffe://plant1.example/")),
        "spiffe://plant1.example/user/a\\b",
        "spiffe://plant1.example/user/a\tb",
    ]
)


def _handshake_accepts(key: ec.EllipticCurvePrivateKey, text: str) -> bool:
    try:
        der = _der(key, [_uri(text)])
    except ValueError:
        return False  # a certificate cannot even carry it (a non-ASCII URI)
    try:
        identity_from_certificate(der, TD)
    except IdentityError:
        return False
    return True


@pytest.mark.parametrize("text", AGREEMENT, ids=[repr(text[:50]) for text in AGREEMENT])
def test_a_policy_accepts_exactly_the_ids_the_handshake_accepts(
    leaf_key: ec.EllipticCurvePrivateKey, text: str
) -> None:
    policy_problem = check_subject(text, TD)
    assert (policy_problem is None) == _handshake_accepts(leaf_key, text), policy_problem


def test_the_agreement_list_holds_both_verdicts(leaf_key: ec.EllipticCurvePrivateKey) -> None:
    verdicts = [_handshake_accepts(leaf_key, text) for text in AGREEMENT]
    assert verdicts.count(True) >= 5 and verdicts.count(False) >= 20


_ID_TAILS = st.text(alphabet=[*"ab.-_/", "A", "0", " ", "%", "é", ":", "@", "?", "#", "\n"], max_size=16)
_ID_HEADS = st.sampled_from(
    [
        f"spiffe://{TD}/",
        f"spiffe://{TD}",
        "spiffe://other.example/",
        "spiffe://",
        "SPIFFE://x/",
        "spiffe:/",
        "",
    ]
)


def _parser_accepts(text: str) -> bool:
    """The handshake's last step (identity_from_certificate) on the URI a certificate carries."""
    try:
        return parse_spiffe_id(text).trust_domain == TD
    except IdentityError:
        return False


@settings(max_examples=400, deadline=None)
@given(head=_ID_HEADS, tail=_ID_TAILS)
def test_policy_and_handshake_agree_on_any_id(head: str, tail: str) -> None:
    text = head + tail
    assert (check_subject(text, TD) is None) == _parser_accepts(text), text


@settings(max_examples=400, deadline=None)
@given(head=_ID_HEADS, tail=_ID_TAILS)
def test_a_pattern_is_accepted_exactly_when_an_id_the_handshake_accepts_can_match_it(
    head: str, tail: str
) -> None:
    fixed = head + tail
    # Every id the pattern could match starts with ``fixed``; the shortest witnesses are the fixed part
    # itself and the fixed part with one more letter (after a "/", or after a "." or ".." segment start).
    matchable = fixed.startswith(f"spiffe://{TD}/") and any(
        _parser_accepts(fixed + more) for more in ("", "x")
    )
    assert (check_subject(fixed + "*", TD) is None) == matchable, fixed


GROUP_WILDCARDS = [
    (f"spiffe://{TD}/vendor/acme/*", None),
    (f"spiffe://{TD}/*", None),
    (f"spiffe://{TD}/user/op*", None),
    (f"spiffe://{TD}/user/.*", None),
    (f"spiffe://{TD}*", f'a pattern must include "spiffe://{TD}/" before the "*"'),
    ("spiffe://plant1*", f'a pattern must include "spiffe://{TD}/" before the "*"'),
    ("spiffe://other.example/vendor/*", 'belongs to trust domain "other.example", not "plant1.example"'),
    (f"spiffe://{TD}/vendor//*", "the path has an empty segment"),
    (f"spiffe://{TD}/vendor/../*", 'the path segment ".." is not allowed'),
    (f"spiffe://{TD}/ven dor/*", 'the path segment "ven dor" contains " "'),
    (f"spiffe://{TD}/vendor/*/x", '"*" is allowed only at the end of a pattern'),
    (f"spiffe://{TD}:443/vendor/*", "a port is not allowed in a SPIFFE id"),
]


@pytest.mark.parametrize(("pattern", "problem"), GROUP_WILDCARDS, ids=[p for p, _ in GROUP_WILDCARDS])
def test_group_wildcards_are_checked_with_the_handshake_parser(pattern: str, problem: str | None) -> None:
    found = check_subject(pattern, TD)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found, found
