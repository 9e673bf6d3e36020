"""PKI for small sites and tests: one CA per trust domain, short-lived SPIFFE certificates.

The center issues certificates in a full deployment; this module is for a site without one, the demo
lab and the tests. The CA is name-constrained to its trust domain, so OpenSSL itself refuses a
certificate this CA signed for any other trust domain, whatever the code that issued it did.

Command line: ``ztgate ca init --dir DIR --trust-domain TD`` and ``ztgate ca issue --dir DIR ID``.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
import secrets
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from policies.spiffe import IdentityError, SpiffeId, parse_spiffe_id, parse_trust_domain

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CERT_MODE",
    "CLOCK_SKEW",
    "DIR_MODE",
    "KEY_MODE",
    "PROFILES",
    "CertificateAuthority",
    "IssuedFiles",
    "PkiError",
    "Profile",
    "configure",
    "init_ca",
    "issue",
    "issue_for_key",
    "load_ca",
    "private_key_pem",
    "sign_leaf",
    "write_files",
]

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
# Certificates start a little in the past so that a peer whose clock is slightly behind accepts them.
CLOCK_SKEW = timedelta(minutes=5)

KEY_MODE = 0o600
CERT_MODE = 0o644
DIR_MODE = 0o700
_CN_MAX = 64  # ub-common-name (RFC 5280); cryptography refuses longer values
_DNS_NAME_RE = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_FILE_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


class PkiError(ValueError):
    """A CA or certificate request that cannot be honoured; the message says why, for a human."""


@dataclass(frozen=True)
class Profile:
    """What a certificate for one kind of identity (the first SPIFFE path segment) looks like."""

    server: bool  # gateway certificates also authenticate the gateway to agents
    default_lifetime: timedelta
    max_lifetime: timedelta


# Short lifetimes stand in for revocation on small sites (docs/architecture.md, "Identity and
# certificates"): a lost laptop's certificate is useless by the end of the shift.
PROFILES: Mapping[str, Profile] = MappingProxyType(
    {
        "gateway": Profile(server=True, default_lifetime=timedelta(days=7), max_lifetime=timedelta(days=7)),
        "user": Profile(server=False, default_lifetime=timedelta(hours=12), max_lifetime=timedelta(hours=12)),
        "vendor": Profile(
            server=False, default_lifetime=timedelta(hours=12), max_lifetime=timedelta(hours=12)
        ),
        "agent": Profile(
            server=False, default_lifetime=timedelta(hours=24), max_lifetime=timedelta(hours=72)
        ),
        # The center's own TLS certificate; the center renews it itself at half-life.
        "center": Profile(server=True, default_lifetime=timedelta(days=30), max_lifetime=timedelta(days=90)),
    }
)


@dataclass(frozen=True)
class IssuedFiles:
    cert: Path
    key: Path


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA loaded from its directory, with the trust domain read back from its certificate."""

    directory: Path
    trust_domain: str
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_path(self) -> Path:
        return self.directory / CA_CERT_FILE

    @property
    def key_path(self) -> Path:
        return self.directory / CA_KEY_FILE


# ---------------------------------------------------------------------------------------------- helpers


def _serial_number() -> int:
    # 128 random bits (CA/B Forum asks for at least 64); never 0, which RFC 5280 forbids.
    return secrets.randbits(128) or 1


def _common_name(text: str) -> x509.Name:
    # The CN is informational only (identity comes from the URI SAN), so truncating a long one is harmless.
    value = text if len(text) <= _CN_MAX else text[: _CN_MAX - 3] + "..."
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, value)])


def _format_delta(delta: timedelta) -> str:
    # In hours, the unit of --hours, with whole days alongside where that reads better.
    text = f"{delta.total_seconds() / 3600:g} h"
    if delta >= timedelta(days=2) and delta % timedelta(days=1) == timedelta(0):
        text += f" ({delta.days} d)"
    return text


def _format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Unencrypted, like most service keys: the file mode is the protection. A site that needs the CA key
    # encrypted at rest should run the center, not this.
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_files(files: Sequence[tuple[Path, bytes, int]]) -> None:
    """Write each file with its mode from the start, then move them all into place.

    Creating a temporary file with the final mode (rather than chmod after writing) means a key is never
    readable by others, not even briefly; os.replace makes re-issuing over an old pair safe for readers.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data, mode in files:
            temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
            staged.append((temp, path))
            with os.fdopen(fd, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
        for temp, path in staged:
            os.replace(temp, path)
    finally:
        for temp, _ in staged:
            temp.unlink(missing_ok=True)


def _require_aware(name: str, moment: datetime | None) -> None:
    if moment is not None and moment.utcoffset() is None:
        raise PkiError(f"{name} must be timezone-aware (e.g. datetime.now(UTC)), got {moment.isoformat()}")


# ------------------------------------------------------------------------------------------------- CA


def init_ca(
    directory: Path, trust_domain: str, *, lifetime_days: int = 3650, force: bool = False
) -> IssuedFiles:
    """Create a CA for ``trust_domain`` in ``directory`` (ca.pem, ca.key)."""
    directory = Path(directory)
    try:
        parse_trust_domain(trust_domain)
    except IdentityError as exc:
        raise PkiError(str(exc)) from None
    if lifetime_days < 1:
        raise PkiError(f"the CA lifetime must be at least 1 day, got {lifetime_days}")
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    if not force and (cert_path.exists() or key_path.exists()):
        raise PkiError(f"a CA already exists in {directory} (use --force to replace it)")

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    name = _common_name(f"ztgate CA {trust_domain}")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=lifetime_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]), False
        )
        # Only URI subtrees are listed, so DNS names and IP addresses on gateway certificates stay
        # unconstrained (RFC 5280 §4.2.1.10 applies constraints per name type). For URIs, OpenSSL
        # compares the host, which for a SPIFFE id is exactly the trust domain.
        .add_extension(
            x509.NameConstraints(
                permitted_subtrees=[x509.UniformResourceIdentifier(trust_domain)], excluded_subtrees=None
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )

    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    write_files(
        [
            (key_path, private_key_pem(key), KEY_MODE),
            (cert_path, certificate.public_bytes(serialization.Encoding.PEM), CERT_MODE),
        ]
    )
    return IssuedFiles(cert=cert_path, key=key_path)


def load_ca(ca_dir: Path) -> CertificateAuthority:
    """Load the CA in ``ca_dir``, checking that its key matches and reading its trust domain."""
    ca_dir = Path(ca_dir)
    cert_path, key_path = ca_dir / CA_CERT_FILE, ca_dir / CA_KEY_FILE
    for path in (cert_path, key_path):
        if not path.is_file():
            raise PkiError(f"no CA in {ca_dir}: {path} does not exist (create one with 'ztgate ca init')")
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError as exc:
        raise PkiError(f"{cert_path} is not a PEM certificate: {exc}") from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        # TypeError: the key is encrypted; init_ca never writes one like that.
        raise PkiError(f"{key_path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise PkiError(f"{key_path} is not an EC P-256 private key")
    if key.public_key() != certificate.public_key():
        raise PkiError(f"{key_path} does not belong to the certificate {cert_path}")
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise PkiError(
            f"{cert_path} is not a ztgate CA certificate (basicConstraints or SAN missing)"
        ) from None
    if not constraints.ca:
        raise PkiError(f"{cert_path} is not a CA certificate")
    domains = [
        uri.removeprefix("spiffe://")
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.startswith("spiffe://") and "/" not in uri.removeprefix("spiffe://")
    ]
    if len(domains) != 1:
        raise PkiError(f"{cert_path} does not name exactly one trust domain (a spiffe://<trust-domain> URI)")
    try:
        trust_domain = parse_trust_domain(domains[0])
    except IdentityError as exc:
        raise PkiError(f"{cert_path}: {exc}") from None
    return CertificateAuthority(directory=ca_dir, trust_domain=trust_domain, certificate=certificate, key=key)


# ---------------------------------------------------------------------------------------------- leaves


def _resolve_id(text: str, trust_domain: str, ca_dir: Path) -> SpiffeId:
    # A bare path ("user/alice") is the convenient form for people; it always lands in the CA's domain.
    candidate = text if "://" in text else f"spiffe://{trust_domain}/{text.removeprefix('/')}"
    try:
        spiffe_id = parse_spiffe_id(candidate)
    except IdentityError as exc:
        raise PkiError(str(exc)) from None
    if spiffe_id.trust_domain != trust_domain:
        raise PkiError(
            f'SPIFFE id "{spiffe_id}" is in trust domain "{spiffe_id.trust_domain}", but the CA in {ca_dir} '
            f'is for trust domain "{trust_domain}"'
        )
    profile_kinds = ", ".join(PROFILES)
    if spiffe_id.kind not in PROFILES:
        raise PkiError(
            f'SPIFFE id "{spiffe_id}" is of kind "{spiffe_id.kind}"; allowed kinds are {profile_kinds}'
        )
    if "/" not in spiffe_id.path:
        raise PkiError(f'SPIFFE id "{spiffe_id}" names no {spiffe_id.kind}: expected {spiffe_id.kind}/<name>')
    return spiffe_id


def _validity(
    profile: Profile,
    kind: str,
    lifetime: timedelta | None,
    not_before: datetime | None,
    not_after: datetime | None,
    now: datetime,
) -> tuple[datetime, datetime]:
    _require_aware("not_before", not_before)
    _require_aware("not_after", not_after)
    if lifetime is not None and not_after is not None:
        raise PkiError("give either a lifetime or not_after, not both")
    if not_after is None:
        if lifetime is not None and lifetime <= timedelta(0):
            raise PkiError(f"the lifetime must be positive, got {lifetime}")
        span = profile.default_lifetime if lifetime is None else lifetime
        if span > profile.max_lifetime:
            raise PkiError(
                f"a lifetime of {_format_delta(span)} is above the maximum of "
                f"{_format_delta(profile.max_lifetime)} for {kind} certificates"
            )
        not_after = (now if not_before is None else not_before) + span
    # An explicit not_before is taken literally: tests use it for certificates that are not yet valid.
    if not_before is None:
        not_before = now - CLOCK_SKEW
    if not_after <= not_before:
        raise PkiError(
            f"not_after ({_format_time(not_after)}) is not after not_before ({_format_time(not_before)})"
        )
    return not_before, not_after


def _subject_alt_names(
    spiffe_id: SpiffeId, profile: Profile, dns_names: Sequence[str], ip_addresses: Sequence[str]
) -> list[x509.GeneralName]:
    if (dns_names or ip_addresses) and not profile.server:
        raise PkiError(
            "DNS names and IP addresses are only for gateway certificates, "
            f"not for {spiffe_id.kind} certificates"
        )
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(spiffe_id))]
    for dns_name in dns_names:
        if not _DNS_NAME_RE.fullmatch(dns_name):
            raise PkiError(f"{dns_name!r} is not a valid DNS name")
        names.append(x509.DNSName(dns_name.lower()))
    for address in ip_addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            raise PkiError(f"{address!r} is not a valid IP address") from None
    return names


def _file_stem(spiffe_id: SpiffeId, name: str | None) -> str:
    if name is None:
        return spiffe_id.path.replace("/", "-")
    if not _FILE_NAME_RE.fullmatch(name):
        raise PkiError(
            f"{name!r} is not a plain file name (letters, digits, '.', '-', '_', not starting with '.')"
        )
    return name


def sign_leaf(
    ca: CertificateAuthority,
    sid: SpiffeId,
    public_key: ec.EllipticCurvePublicKey,
    valid_from: datetime,
    valid_until: datetime,
    alt_names: Sequence[x509.GeneralName] | None = None,
) -> x509.Certificate:
    """A leaf certificate for ``sid`` and ``public_key``, signed by ``ca``, with the profile of the id's
    kind (a server certificate for gateways and centers). ``alt_names`` defaults to the SPIFFE id alone.
    The caller has checked the id and the validity (see :func:`issue`)."""
    profile = PROFILES[sid.kind]
    if alt_names is None:
        alt_names = [x509.UniformResourceIdentifier(str(sid))]
    usages = (
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        if profile.server
        else [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(_common_name(sid.path))
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca.key, hashes.SHA256())
    )


def issue_for_key(
    ca: CertificateAuthority,
    sid: SpiffeId,
    public_key: ec.EllipticCurvePublicKey,
    lifetime: timedelta | None,
    *,
    not_after: datetime | None = None,
) -> x509.Certificate:
    """A certificate for a key made elsewhere (a CSR's): ``lifetime`` from now, at most the profile's
    maximum, or until ``not_after`` (a whole second, as X.509 keeps it); never past the CA's own
    expiry."""
    profile = PROFILES.get(sid.kind)
    if profile is None:
        raise PkiError(f'SPIFFE id "{sid}" is of kind "{sid.kind}"; allowed kinds are {", ".join(PROFILES)}')
    now = datetime.now(UTC)
    valid_from, valid_until = _validity(profile, sid.kind, lifetime, None, not_after, now)
    ca_expiry = ca.certificate.not_valid_after_utc
    if valid_until > ca_expiry:
        raise PkiError(f"the certificate would outlive the CA, which expires {_format_time(ca_expiry)}")
    return sign_leaf(ca, sid, public_key, valid_from, valid_until)


def issue(
    ca_dir: Path,
    spiffe_id: str,
    *,
    out_dir: Path | None = None,
    name: str | None = None,
    lifetime: timedelta | None = None,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> IssuedFiles:
    """Issue a key and certificate for ``spiffe_id`` (``spiffe://td/user/alice`` or ``user/alice``).

    The first path segment picks the profile (see :data:`PROFILES`): ``gateway`` gets a server
    certificate, ``user``, ``vendor`` and ``agent`` get client certificates. ``lifetime`` defaults to the
    profile's and may not exceed its maximum; explicit ``not_before``/``not_after`` are taken as given
    (with ``not_after`` the maximum does not apply). Writes ``<name>.pem`` and ``<name>.key`` into
    ``out_dir`` (default: the CA directory), ``name`` defaulting to the path with "/" replaced by "-".
    """
    ca = load_ca(ca_dir)
    sid = _resolve_id(spiffe_id, ca.trust_domain, ca.directory)
    profile = PROFILES[sid.kind]
    now = datetime.now(UTC)
    valid_from, valid_until = _validity(profile, sid.kind, lifetime, not_before, not_after, now)
    ca_expiry = ca.certificate.not_valid_after_utc
    if ca_expiry <= now:
        raise PkiError(f"the CA in {ca.directory} expired at {_format_time(ca_expiry)}")
    if valid_until > ca_expiry:
        raise PkiError(f"the certificate would outlive the CA, which expires {_format_time(ca_expiry)}")
    alt_names = _subject_alt_names(sid, profile, dns_names, ip_addresses)

    target_dir = ca.directory if out_dir is None else Path(out_dir)
    stem = _file_stem(sid, name)
    cert_path, key_path = target_dir / f"{stem}.pem", target_dir / f"{stem}.key"
    target_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    ca_files = {ca.cert_path.resolve(), ca.key_path.resolve()}
    if cert_path.resolve() in ca_files or key_path.resolve() in ca_files:
        raise PkiError(f"refusing to overwrite the CA's own files with {cert_path} and {key_path}")

    key = ec.generate_private_key(ec.SECP256R1())
    certificate = sign_leaf(ca, sid, key.public_key(), valid_from, valid_until, alt_names)
    write_files(
        [
            (key_path, private_key_pem(key), KEY_MODE),
            (cert_path, certificate.public_bytes(serialization.Encoding.PEM), CERT_MODE),
        ]
    )
    return IssuedFiles(cert=cert_path, key=key_path)


# ------------------------------------------------------------------------------------------ command line


def _describe(files: IssuedFiles) -> str:
    certificate = x509.load_pem_x509_certificate(files.cert.read_bytes())
    uris = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    lines = [
        f"id     {' '.join(uris.get_values_for_type(x509.UniformResourceIdentifier))}",
        f"cert   {files.cert}",
        f"key    {files.key} (mode 0600)",
        f"valid  {_format_time(certificate.not_valid_before_utc)} .. "
        f"{_format_time(certificate.not_valid_after_utc)}",
    ]
    other = [str(n) for n in uris.get_values_for_type(x509.DNSName)]
    other += [str(a) for a in uris.get_values_for_type(x509.IPAddress)]
    if other:
        lines.append(f"names  {' '.join(other)}")
    return "\n".join(lines)


def _fail(message: str) -> int:
    print(f"ztgate ca: error: {message}", file=sys.stderr)
    return 2


def _run(headline: str, work: Callable[[], IssuedFiles]) -> int:
    try:
        files = work()
    except PkiError as exc:
        return _fail(str(exc))
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}")
    print(headline)
    print(_describe(files))
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    return _run(
        f"created a CA for trust domain {args.trust_domain}",
        lambda: init_ca(args.dir, args.trust_domain, lifetime_days=args.days, force=args.force),
    )


def _cmd_issue(args: argparse.Namespace) -> int:
    lifetime = None
    if args.hours is not None:
        if not math.isfinite(args.hours) or args.hours <= 0:
            return _fail(f"--hours must be a positive number, got {args.hours}")
        lifetime = timedelta(hours=args.hours)
    return _run(
        "issued a certificate",
        lambda: issue(
            args.dir,
            args.id,
            out_dir=args.out_dir,
            name=args.name,
            lifetime=lifetime,
            dns_names=args.dns,
            ip_addresses=args.ip,
        ),
    )


def configure(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``ztgate ca init`` and ``ztgate ca issue``."""
    kinds = "; ".join(
        f"{kind} default {_format_delta(p.default_lifetime)}, max {_format_delta(p.max_lifetime)}"
        for kind, p in PROFILES.items()
    )
    ca = subparsers.add_parser(
        "ca",
        help="small-site PKI: create a CA, issue SPIFFE certificates",
        description="A certificate authority for one SPIFFE trust domain: for small sites, the demo, tests.",
    )
    actions = ca.add_subparsers(dest="ca_action", metavar="ACTION", required=True)

    init = actions.add_parser(
        "init",
        help="create a CA (ca.pem, ca.key)",
        description="Create an EC P-256 CA, name-constrained to its trust domain.",
    )
    init.add_argument("--dir", required=True, type=Path, help="directory for ca.pem and ca.key")
    init.add_argument("--trust-domain", required=True, metavar="TD", help="e.g. plant1.example")
    init.add_argument(
        "--days", type=int, default=3650, metavar="N", help="CA lifetime in days (default: 3650)"
    )
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(func=_cmd_init)

    issue_parser = actions.add_parser(
        "issue",
        help="issue a key and certificate for a SPIFFE id",
        description=f"Issue an EC P-256 key and certificate. Lifetimes by kind: {kinds}.",
    )
    issue_parser.add_argument("--dir", required=True, type=Path, help="the CA directory")
    issue_parser.add_argument("id", metavar="ID", help="spiffe://TD/user/alice, or just user/alice")
    issue_parser.add_argument(
        "--out-dir", type=Path, metavar="D", help="where to write (default: the CA directory)"
    )
    issue_parser.add_argument("--name", metavar="N", help="file name stem (default: the id path, '/' -> '-')")
    issue_parser.add_argument(
        "--hours", type=float, metavar="H", help="lifetime in hours (default: per kind)"
    )
    issue_parser.add_argument(
        "--dns", action="append", default=[], metavar="NAME", help="DNS name (gateway certificates only)"
    )
    issue_parser.add_argument(
        "--ip", action="append", default=[], metavar="ADDR", help="IP address (gateway certificates only)"
    )
    issue_parser.set_defaults(func=_cmd_issue)
