"""The small-site PKI: files and modes, certificate profiles, lifetimes, errors, the ``ztgate ca`` command,
and real TLS 1.3 handshakes that show OpenSSL enforcing what the certificates say."""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import gateway.cli
from gateway import pki
from gateway.identity import SpiffeId, identity_from_certificate

TD = "plant1.example"
SLACK = timedelta(seconds=30)  # between the clock in the test and the one in issue()


@pytest.fixture(autouse=True)
def _umask() -> Iterator[None]:
    # Certificates are created 0644 subject to the umask; fix it so the mode assertions mean something.
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "ca"
    pki.init_ca(directory, TD)
    return directory


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


_T = TypeVar("_T", bound=x509.ExtensionType)


def _ext(cert: x509.Certificate, kind: type[_T]) -> x509.Extension[_T]:
    return cert.extensions.get_extension_for_class(kind)


# ------------------------------------------------------------------------------------------------ init_ca


def test_init_ca_writes_a_name_constrained_p256_ca(tmp_path: Path) -> None:
    files = pki.init_ca(tmp_path / "new" / "ca", TD)
    assert files == pki.IssuedFiles(cert=tmp_path / "new/ca/ca.pem", key=tmp_path / "new/ca/ca.key")
    assert _mode(files.key) == 0o600
    assert _mode(files.cert) == 0o644
    assert _mode(files.cert.parent) == 0o700

    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)

    cert = _cert(files.cert)
    assert cert.public_key() == key.public_key()
    assert cert.subject == cert.issuer
    assert 0 < cert.serial_number < 2**128
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=3650) + pki.CLOCK_SKEW

    constraints = _ext(cert, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    usage = _ext(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature
    assert _ext(cert, x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    ) == ["spiffe://plant1.example"]
    names = _ext(cert, x509.NameConstraints)
    assert names.critical
    assert names.value.permitted_subtrees == [x509.UniformResourceIdentifier(TD)]
    assert names.value.excluded_subtrees is None

    ca = pki.load_ca(tmp_path / "new" / "ca")
    assert ca.trust_domain == TD
    assert ca.certificate == cert


def test_init_ca_refuses_to_replace_without_force(ca_dir: Path) -> None:
    before = (ca_dir / "ca.pem").read_bytes()
    with pytest.raises(pki.PkiError, match=r"a CA already exists in .* \(use --force to replace it\)"):
        pki.init_ca(ca_dir, TD)
    assert (ca_dir / "ca.pem").read_bytes() == before

    pki.init_ca(ca_dir, "plant2.example", force=True, lifetime_days=30)
    assert (ca_dir / "ca.pem").read_bytes() != before
    assert pki.load_ca(ca_dir).trust_domain == "plant2.example"
    assert sorted(p.name for p in ca_dir.iterdir()) == ["ca.key", "ca.pem"]  # no temporary files left


@pytest.mark.parametrize(
    ("trust_domain", "reason"),
    [
        ("Plant1.example", "must be lowercase"),
        ("", "the trust domain is empty"),
        ("plant1.example:443", "a port is not allowed"),
        ("plant 1", 'contains " "'),
    ],
)
def test_init_ca_rejects_bad_trust_domains(tmp_path: Path, trust_domain: str, reason: str) -> None:
    with pytest.raises(pki.PkiError, match="invalid trust domain") as caught:
        pki.init_ca(tmp_path, trust_domain)
    assert reason in str(caught.value)
    assert not list(tmp_path.iterdir())


def test_init_ca_rejects_a_non_positive_lifetime(tmp_path: Path) -> None:
    with pytest.raises(pki.PkiError, match="at least 1 day"):
        pki.init_ca(tmp_path, TD, lifetime_days=0)


def test_load_ca_errors(tmp_path: Path, ca_dir: Path) -> None:
    with pytest.raises(pki.PkiError, match=r"no CA in .*ca\.pem does not exist"):
        pki.load_ca(tmp_path / "missing")
    other = tmp_path / "other"
    pki.init_ca(other, TD)
    (ca_dir / "ca.key").write_bytes((other / "ca.key").read_bytes())
    with pytest.raises(pki.PkiError, match="does not belong to the certificate"):
        pki.load_ca(ca_dir)
    (ca_dir / "ca.key").write_bytes(b"garbage")
    with pytest.raises(pki.PkiError, match="is not an unencrypted PEM private key"):
        pki.load_ca(ca_dir)


# -------------------------------------------------------------------------------------------------- issue

PROFILE_CASES = [
    # id as given, expected id, file stem, default lifetime, EKUs
    ("user/alice", "user/alice", "user-alice", timedelta(hours=12), [ExtendedKeyUsageOID.CLIENT_AUTH]),
    (
        "vendor/acme/bob",
        "vendor/acme/bob",
        "vendor-acme-bob",
        timedelta(hours=12),
        [ExtendedKeyUsageOID.CLIENT_AUTH],
    ),
    (
        "spiffe://plant1.example/agent/site1/hmi-3",
        "agent/site1/hmi-3",
        "agent-site1-hmi-3",
        timedelta(hours=24),
        [ExtendedKeyUsageOID.CLIENT_AUTH],
    ),
    (
        "/gateway/site1/gw-1",
        "gateway/site1/gw-1",
        "gateway-site1-gw-1",
        timedelta(days=7),
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    ),
]


@pytest.mark.parametrize(
    ("given", "path", "stem", "lifetime", "usages"), PROFILE_CASES, ids=[c[2] for c in PROFILE_CASES]
)
def test_issue_profiles(
    ca_dir: Path, given: str, path: str, stem: str, lifetime: timedelta, usages: list[x509.ObjectIdentifier]
) -> None:
    now = datetime.now(UTC)
    files = pki.issue(ca_dir, given)
    assert files == pki.IssuedFiles(cert=ca_dir / f"{stem}.pem", key=ca_dir / f"{stem}.key")
    assert _mode(files.key) == 0o600
    assert _mode(files.cert) == 0o644

    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    cert = _cert(files.cert)
    assert cert.public_key() == key.public_key()
    assert cert.issuer == _cert(ca_dir / "ca.pem").subject
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == path
    assert 0 < cert.serial_number < 2**128

    assert abs(cert.not_valid_before_utc - (now - pki.CLOCK_SKEW)) < SLACK
    assert abs(cert.not_valid_after_utc - (now + lifetime)) < SLACK

    constraints = _ext(cert, x509.BasicConstraints)
    assert constraints.critical
    assert not constraints.value.ca
    usage = _ext(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_cert_sign
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == usages
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(f"spiffe://{TD}/{path}")]

    der = cert.public_bytes(serialization.Encoding.DER)
    assert identity_from_certificate(der, TD) == SpiffeId(TD, path)


def test_serials_are_random(ca_dir: Path) -> None:
    serials = {_cert(pki.issue(ca_dir, f"user/u{i}").cert).serial_number for i in range(5)}
    assert len(serials) == 5


def test_issue_gateway_with_dns_and_ip_names(ca_dir: Path) -> None:
    files = pki.issue(
        ca_dir,
        "gateway/site1/gw-1",
        dns_names=["GW.plant1.example", "localhost"],
        ip_addresses=["127.0.0.1", "::1"],
    )
    san = _ext(_cert(files.cert), x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{TD}/gateway/site1/gw-1"]
    assert san.get_values_for_type(x509.DNSName) == ["gw.plant1.example", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]


@pytest.mark.parametrize(
    ("kind_id", "allowed", "refused"),
    [
        ("user/alice", timedelta(hours=12), timedelta(hours=12, seconds=1)),
        ("vendor/acme/bob", timedelta(hours=12), timedelta(hours=13)),
        ("agent/site1/hmi-3", timedelta(hours=72), timedelta(hours=73)),
        ("gateway/site1/gw-1", timedelta(days=7), timedelta(days=8)),
    ],
)
def test_lifetime_maxima(ca_dir: Path, kind_id: str, allowed: timedelta, refused: timedelta) -> None:
    now = datetime.now(UTC)
    cert = _cert(pki.issue(ca_dir, kind_id, lifetime=allowed).cert)
    assert abs(cert.not_valid_after_utc - (now + allowed)) < SLACK
    kind = kind_id.split("/", maxsplit=1)[0]
    with pytest.raises(pki.PkiError, match=f"above the maximum of .* for {kind} certificates"):
        pki.issue(ca_dir, kind_id, lifetime=refused)


def test_short_lifetime(ca_dir: Path) -> None:
    now = datetime.now(UTC)
    cert = _cert(pki.issue(ca_dir, "agent/site1/hmi-3", lifetime=timedelta(minutes=10)).cert)
    assert abs(cert.not_valid_after_utc - (now + timedelta(minutes=10))) < SLACK


def test_explicit_validity_bypasses_the_maximum(ca_dir: Path) -> None:
    start = datetime(2020, 1, 1, tzinfo=UTC)
    end = datetime.now(UTC) + timedelta(days=3)
    cert = _cert(pki.issue(ca_dir, "user/alice", not_before=start, not_after=end).cert)
    assert cert.not_valid_before_utc == start
    assert cert.not_valid_after_utc == end.replace(microsecond=0)


def test_explicit_not_before_keeps_the_maximum(ca_dir: Path) -> None:
    start = datetime.now(UTC) + timedelta(hours=1)
    cert = _cert(pki.issue(ca_dir, "user/alice", not_before=start).cert)
    assert cert.not_valid_before_utc == start.replace(microsecond=0)
    assert cert.not_valid_after_utc == (start + timedelta(hours=12)).replace(microsecond=0)
    with pytest.raises(pki.PkiError, match="above the maximum"):
        pki.issue(ca_dir, "user/alice", not_before=start, lifetime=timedelta(hours=13))


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"lifetime": timedelta(0)}, "the lifetime must be positive"),
        ({"lifetime": timedelta(hours=-1)}, "the lifetime must be positive"),
        ({"not_after": datetime(2020, 1, 1, tzinfo=UTC)}, "is not after not_before"),
        ({"not_before": datetime(2020, 1, 1)}, "not_before must be timezone-aware"),
        (
            {"lifetime": timedelta(hours=1), "not_after": datetime(2099, 1, 1, tzinfo=UTC)},
            "either a lifetime or not_after",
        ),
        ({"not_after": datetime(2099, 1, 1, tzinfo=UTC)}, "the certificate would outlive the CA"),
    ],
)
def test_validity_errors(ca_dir: Path, options: dict[str, object], reason: str) -> None:
    with pytest.raises(pki.PkiError, match=reason):
        pki.issue(ca_dir, "user/alice", **options)  # type: ignore[arg-type]


def test_refuses_to_issue_from_an_expired_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pki.init_ca(tmp_path, TD, lifetime_days=1)

    class _TwoDaysLater(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> _TwoDaysLater:
            moment = datetime.now(tz) + timedelta(days=2)
            return cls.fromtimestamp(moment.timestamp(), tz)

    monkeypatch.setattr(pki, "datetime", _TwoDaysLater)
    with pytest.raises(pki.PkiError, match=r"the CA in .* expired at "):
        pki.issue(tmp_path, "user/alice")


def test_wrong_trust_domain_names_both(ca_dir: Path) -> None:
    with pytest.raises(pki.PkiError) as caught:
        pki.issue(ca_dir, "spiffe://other.example/user/alice")
    assert str(caught.value) == (
        f'SPIFFE id "spiffe://other.example/user/alice" is in trust domain "other.example", '
        f'but the CA in {ca_dir} is for trust domain "plant1.example"'
    )
    assert not (ca_dir / "user-alice.pem").exists()


@pytest.mark.parametrize(
    ("spiffe_id", "reason"),
    [
        ("robot/r2", 'of kind "robot"; allowed kinds are gateway, user, vendor, agent'),
        ("user", "names no user: expected user/<name>"),
        (
            "user/al ice",
            'malformed SPIFFE id "spiffe://plant1.example/user/al ice": the path segment "al ice"',
        ),
        ("spiffe://plant1.example/user/../root", 'the path segment ".." is not allowed'),
        ("https://plant1.example/user/alice", 'the scheme "https" is not "spiffe"'),
        ("user//alice", "empty segment"),
    ],
)
def test_bad_ids(ca_dir: Path, spiffe_id: str, reason: str) -> None:
    with pytest.raises(pki.PkiError) as caught:
        pki.issue(ca_dir, spiffe_id)
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    ("spiffe_id", "options", "reason"),
    [
        ("user/alice", {"dns_names": ["alice.example"]}, "only for gateway certificates, not for user"),
        ("agent/s/h", {"ip_addresses": ["10.0.0.1"]}, "only for gateway certificates, not for agent"),
        ("gateway/s/g", {"dns_names": ["bad name"]}, "'bad name' is not a valid DNS name"),
        ("gateway/s/g", {"dns_names": ["-x.example"]}, "is not a valid DNS name"),
        ("gateway/s/g", {"ip_addresses": ["10.0.0.256"]}, "'10.0.0.256' is not a valid IP address"),
    ],
)
def test_name_errors(ca_dir: Path, spiffe_id: str, options: dict[str, list[str]], reason: str) -> None:
    with pytest.raises(pki.PkiError, match=reason):
        pki.issue(ca_dir, spiffe_id, **options)  # type: ignore[arg-type]


def test_out_dir_and_name(ca_dir: Path, tmp_path: Path) -> None:
    files = pki.issue(ca_dir, "user/alice", out_dir=tmp_path / "alice" / "certs", name="client")
    assert files == pki.IssuedFiles(
        cert=tmp_path / "alice/certs/client.pem", key=tmp_path / "alice/certs/client.key"
    )
    assert _mode(files.key) == 0o600
    for bad in ("../escape", "a/b", ".hidden", ""):
        with pytest.raises(pki.PkiError, match="is not a plain file name"):
            pki.issue(ca_dir, "user/alice", name=bad)


def test_never_overwrites_the_ca(ca_dir: Path) -> None:
    before = (ca_dir / "ca.key").read_bytes()
    with pytest.raises(pki.PkiError, match="refusing to overwrite the CA's own files"):
        pki.issue(ca_dir, "user/alice", name="ca")
    assert (ca_dir / "ca.key").read_bytes() == before


def test_reissue_replaces_files_and_keys_are_created_private(ca_dir: Path) -> None:
    # A stale, world-readable key file must not lend its mode to the new key: it is replaced, not reused.
    stale = ca_dir / "user-alice.key"
    stale.write_bytes(b"old")
    stale.chmod(0o644)
    os.umask(0)
    files = pki.issue(ca_dir, "user/alice")
    assert files.key == stale
    assert _mode(files.key) == 0o600
    assert files.key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert not [p for p in ca_dir.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------------ command line


@pytest.fixture
def ztgate(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Only this sub-command: the others live in modules owned and changed by other people, and a problem in
    # one of them should fail its own tests, not these.
    monkeypatch.setattr(gateway.cli, "COMMANDS", ("gateway.pki",))
    yield


def _err_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


@pytest.mark.usefixtures("ztgate")
def test_cli_init_and_issue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = tmp_path / "ca"
    assert gateway.cli.main(["ca", "init", "--dir", str(ca), "--trust-domain", TD, "--days", "30"]) == 0
    out = capsys.readouterr().out
    assert f"created a CA for trust domain {TD}" in out
    assert str(ca / "ca.pem") in out
    assert str(ca / "ca.key") in out
    assert "spiffe://plant1.example" in out
    cert = _cert(ca / "ca.pem")
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=30) + pki.CLOCK_SKEW

    argv = [
        "ca",
        "issue",
        "--dir",
        str(ca),
        "gateway/site1/gw-1",
        "--dns",
        "gw.plant1.example",
        "--ip",
        "127.0.0.1",
    ]
    assert gateway.cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "spiffe://plant1.example/gateway/site1/gw-1" in out
    assert str(ca / "gateway-site1-gw-1.pem") in out
    assert "gw.plant1.example 127.0.0.1" in out

    out_dir = tmp_path / "alice"
    argv = [
        "ca",
        "issue",
        "--dir",
        str(ca),
        "user/alice",
        "--out-dir",
        str(out_dir),
        "--name",
        "me",
        "--hours",
        "1.5",
    ]
    assert gateway.cli.main(argv) == 0
    assert str(out_dir / "me.pem") in capsys.readouterr().out
    cert = _cert(out_dir / "me.pem")
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(hours=1.5) + pki.CLOCK_SKEW


@pytest.mark.usefixtures("ztgate")
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["ca", "init", "--dir", "{ca}", "--trust-domain", TD],
            "a CA already exists in {ca} (use --force to replace it)",
        ),
        (
            ["ca", "init", "--dir", "{tmp}/x", "--trust-domain", "Plant.example"],
            'the trust domain "Plant.example" must be',
        ),
        (["ca", "init", "--dir", "{tmp}/x", "--trust-domain", TD, "--days", "0"], "at least 1 day"),
        (["ca", "issue", "--dir", "{tmp}/none", "user/alice"], "no CA in {tmp}/none"),
        (
            ["ca", "issue", "--dir", "{ca}", "spiffe://other.example/user/a"],
            'CA in {ca} is for trust domain "plant1.example"',
        ),
        (["ca", "issue", "--dir", "{ca}", "user/a?b"], "a query (?...) is not allowed"),
        (
            ["ca", "issue", "--dir", "{ca}", "user/alice", "--hours", "13"],
            "above the maximum of 12 h for user",
        ),
        (
            ["ca", "issue", "--dir", "{ca}", "agent/s/h", "--hours", "73"],
            "above the maximum of 72 h (3 d) for agent",
        ),
        (
            ["ca", "issue", "--dir", "{ca}", "user/alice", "--hours", "-1"],
            "--hours must be a positive number",
        ),
        (
            ["ca", "issue", "--dir", "{ca}", "user/alice", "--hours", "nan"],
            "--hours must be a positive number",
        ),
        (
            ["ca", "issue", "--dir", "{ca}", "user/alice", "--dns", "a.example"],
            "only for gateway certificates",
        ),
        (["ca", "issue", "--dir", "{ca}", "plc/x"], "allowed kinds are gateway, user, vendor, agent"),
    ],
)
def test_cli_errors(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    def fill(text: str) -> str:
        return text.replace("{ca}", str(ca_dir)).replace("{tmp}", str(tmp_path))

    assert gateway.cli.main([fill(a) for a in argv]) == 2
    line = _err_line(capsys)
    assert line.startswith("ztgate ca: error: ")
    assert fill(message) in line


@pytest.mark.usefixtures("ztgate")
def test_cli_reports_os_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert gateway.cli.main(["ca", "init", "--dir", str(blocker / "ca"), "--trust-domain", TD]) == 2
    line = _err_line(capsys)
    assert line.startswith("ztgate ca: error: Not a directory")


@pytest.mark.usefixtures("ztgate")
def test_cli_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["ca"], ["ca", "issue", "--dir", "x"], ["ca", "init", "--dir", "x"]):
        with pytest.raises(SystemExit) as caught:
            gateway.cli.main(argv)
        assert caught.value.code == 2
    assert "the following arguments are required" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ TLS 1.3 handshakes


@dataclass
class Handshake:
    server_error: ssl.SSLError | None = None
    peer_der: bytes | None = None
    client_error: ssl.SSLError | None = None


def _server_context(ca_dir: Path, cert: pki.IssuedFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    # Strict RFC 5280 checks, as Python 3.13's default contexts do, so these certificates keep working there.
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.load_verify_locations(cafile=ca_dir / "ca.pem")
    context.load_cert_chain(cert.cert, cert.key)
    return context


def _client_context(ca_dir: Path, cert: pki.IssuedFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.load_verify_locations(cafile=ca_dir / "ca.pem")
    context.load_cert_chain(cert.cert, cert.key)
    return context


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str) -> Handshake:
    result = Handshake()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)

        def serve() -> None:
            conn, _ = listener.accept()
            conn.settimeout(5)
            try:
                with server.wrap_socket(conn, server_side=True) as tls:
                    result.peer_der = tls.getpeercert(binary_form=True)
                    tls.sendall(b"ok")
            except ssl.SSLError as exc:
                result.server_error = exc
            finally:
                conn.close()

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with (
                socket.create_connection(listener.getsockname(), timeout=5) as raw,
                client.wrap_socket(raw, server_hostname=server_hostname) as tls,
            ):
                assert tls.version() == "TLSv1.3"
                # In TLS 1.3 the server judges the client certificate after the client's handshake is done;
                # a refusal arrives as an alert on the first read.
                assert tls.recv(2) == b"ok"
        except ssl.SSLError as exc:
            result.client_error = exc
        finally:
            thread.join(5)
    assert not thread.is_alive()
    return result


@pytest.fixture
def gateway_cert(ca_dir: Path) -> pki.IssuedFiles:
    return pki.issue(
        ca_dir, "gateway/site1/gw-1", dns_names=["gw.plant1.example"], ip_addresses=["127.0.0.1"]
    )


@pytest.mark.parametrize("server_hostname", ["gw.plant1.example", "127.0.0.1"])
def test_tls_accepts_a_client_certificate(
    ca_dir: Path, gateway_cert: pki.IssuedFiles, server_hostname: str
) -> None:
    # Also shows that the URI-only name constraint leaves the gateway's DNS and IP names usable.
    alice = pki.issue(ca_dir, "user/alice")
    result = _handshake(
        _server_context(ca_dir, gateway_cert), _client_context(ca_dir, alice), server_hostname
    )
    assert result.server_error is None
    assert result.client_error is None
    assert result.peer_der is not None
    assert identity_from_certificate(result.peer_der, TD) == SpiffeId(TD, "user/alice")


def test_tls_client_refuses_a_gateway_with_the_wrong_name(
    ca_dir: Path, gateway_cert: pki.IssuedFiles
) -> None:
    alice = pki.issue(ca_dir, "user/alice")
    result = _handshake(
        _server_context(ca_dir, gateway_cert), _client_context(ca_dir, alice), "gw.other.example"
    )
    assert isinstance(result.client_error, ssl.SSLCertVerificationError)
    assert "Hostname mismatch" in result.client_error.verify_message


def _assert_refused(result: Handshake, verify_message: str) -> None:
    assert result.peer_der is None
    assert isinstance(result.server_error, ssl.SSLCertVerificationError), result.server_error
    assert result.server_error.verify_message == verify_message
    assert result.client_error is not None  # the client learns only that it was refused


def test_tls_refuses_a_certificate_from_another_ca(
    ca_dir: Path, gateway_cert: pki.IssuedFiles, tmp_path: Path
) -> None:
    # Same trust domain, same CA subject name: only the signature tells them apart.
    other_ca = tmp_path / "other-ca"
    pki.init_ca(other_ca, TD)
    mallory = pki.issue(other_ca, "user/alice")
    client = _client_context(ca_dir, mallory)
    result = _handshake(_server_context(ca_dir, gateway_cert), client, "gw.plant1.example")
    assert result.peer_der is None
    assert isinstance(result.server_error, ssl.SSLCertVerificationError), result.server_error
    assert result.server_error.verify_message in {
        "unable to get local issuer certificate",
        "certificate signature failure",
    }


def test_tls_refuses_an_expired_certificate(ca_dir: Path, gateway_cert: pki.IssuedFiles) -> None:
    now = datetime.now(UTC)
    expired = pki.issue(
        ca_dir, "user/alice", not_before=now - timedelta(days=2), not_after=now - timedelta(days=1)
    )
    result = _handshake(
        _server_context(ca_dir, gateway_cert), _client_context(ca_dir, expired), "gw.plant1.example"
    )
    _assert_refused(result, "certificate has expired")


def _mis_issue(ca_dir: Path, uri: str, out: Path) -> pki.IssuedFiles:
    """Sign a client certificate with the CA's key, bypassing issue()'s trust-domain check."""
    ca = pki.load_ca(ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    ca_ski = _ext(ca.certificate, x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mallory")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    files = pki.IssuedFiles(cert=out.with_suffix(".pem"), key=out.with_suffix(".key"))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return files


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://other.example/user/mallory",
        # A suffix or prefix of the trust domain is another trust domain, and must not slip through.
        "spiffe://evil.plant1.example/user/mallory",
        "spiffe://plant1.example.evil/user/mallory",
    ],
)
def test_tls_name_constraints_refuse_another_trust_domain(
    ca_dir: Path, gateway_cert: pki.IssuedFiles, tmp_path: Path, uri: str
) -> None:
    mallory = _mis_issue(ca_dir, uri, tmp_path / "mallory")
    result = _handshake(
        _server_context(ca_dir, gateway_cert), _client_context(ca_dir, mallory), "gw.plant1.example"
    )
    _assert_refused(result, "permitted subtree violation")


def test_tls_name_constraints_allow_the_trust_domain(
    ca_dir: Path, gateway_cert: pki.IssuedFiles, tmp_path: Path
) -> None:
    # The control for the test above: the same hand-made certificate, in the right trust domain, passes.
    bob = _mis_issue(ca_dir, "spiffe://plant1.example/user/bob", tmp_path / "bob")
    result = _handshake(
        _server_context(ca_dir, gateway_cert), _client_context(ca_dir, bob), "gw.plant1.example"
    )
    assert result.server_error is None
    assert result.peer_der is not None
    assert identity_from_certificate(result.peer_der, TD) == SpiffeId(TD, "user/bob")
