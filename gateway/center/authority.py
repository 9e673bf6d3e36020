"""The center's keys and what it signs with them: certificates from CSRs, its own TLS certificate,
and the fingerprint that pins it at enrollment.

The keys folder holds the CA (``ca.pem``, ``ca.key``, from :mod:`gateway.pki`), the Ed25519 signing
key of the bundles (``signing.key``), optionally the next signing key (``signing-next.key``, announced
in every document so that gateways trust it before it takes over), the center's TLS key and
certificate (``tls.key``, ``tls.pem``: its id is ``spiffe://<td>/center/<name>``), and optionally
``trust.pem``, further CA certificates handed out with every certificate (a CA rotation).

The **fingerprint** printed with every token is SHA-256 over the center's TLS public key (DER
SubjectPublicKeyInfo) followed by the raw signing public key: ``ztgate enroll`` compares it before it
sends the token anywhere, then keeps the signing key as the one bundles must be signed with.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway import pki
from gateway.center.bundles import encode_key
from gateway.config import TlsFiles
from policies.spiffe import IdentityError, SpiffeId, parse_spiffe_id

__all__ = [
    "Authority",
    "CsrError",
    "create_keys",
    "fingerprint",
    "load_authority",
    "spki_der",
]

SIGNING_KEY = "signing.key"
NEXT_SIGNING_KEY = "signing-next.key"
TLS_KEY = "tls.key"
TLS_CERT = "tls.pem"
EXTRA_TRUST = "trust.pem"
MAX_CSR_BYTES = 16 * 1024


class CsrError(ValueError):
    """A certificate signing request the center will not sign; the message says why, for the caller."""


def spki_der(public_key: ec.EllipticCurvePublicKey | Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def fingerprint(tls_public_key: ec.EllipticCurvePublicKey, signing_key: Ed25519PublicKey) -> str:
    digest = hashlib.sha256(spki_der(tls_public_key) + signing_key.public_bytes_raw()).hexdigest()
    return f"sha256:{digest}"


def _load_ed25519(path: Path) -> Ed25519PrivateKey:
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise pki.PkiError(f"{path}: cannot read the signing key: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise pki.PkiError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise pki.PkiError(f"{path} is not an Ed25519 private key")
    return key


def _ed25519_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class Authority:
    directory: Path
    name: str
    ca: pki.CertificateAuthority
    signing_key: Ed25519PrivateKey
    next_keys: list[str] = field(default_factory=list)

    @property
    def trust_domain(self) -> str:
        return self.ca.trust_domain

    @property
    def center_id(self) -> SpiffeId:
        return parse_spiffe_id(f"spiffe://{self.trust_domain}/center/{self.name}")

    @property
    def tls_files(self) -> TlsFiles:
        return TlsFiles(
            self.directory / TLS_CERT, self.directory / TLS_KEY, self.directory / pki.CA_CERT_FILE
        )

    def tls_public_key(self) -> ec.EllipticCurvePublicKey:
        key = serialization.load_pem_private_key((self.directory / TLS_KEY).read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key.public_key()

    def fingerprint(self) -> str:
        return fingerprint(self.tls_public_key(), self.signing_key.public_key())

    def signing_keys(self) -> list[str]:
        """The public keys gateways are to trust: the current one, then any announced next one."""
        return [encode_key(self.signing_key.public_key()), *self.next_keys]

    @property
    def extra_trust(self) -> Path:
        return self.directory / EXTRA_TRUST

    def trust_bundle(self) -> str:
        """The CA certificates handed out with every certificate (PEM)."""
        text = self.ca.cert_path.read_text()
        extra = self.extra_trust
        if extra.is_file():
            text = text.rstrip("\n") + "\n" + extra.read_text()
        return text

    # ------------------------------------------------------------------------------ issuing

    def check_csr(self, pem: str, expected: str) -> tuple[SpiffeId, ec.EllipticCurvePublicKey]:
        """The id and key of a CSR that asks for exactly ``expected``; raises :class:`CsrError`."""
        if len(pem) > MAX_CSR_BYTES:
            raise CsrError(f"the CSR is larger than {MAX_CSR_BYTES} bytes")
        try:
            csr = x509.load_pem_x509_csr(pem.encode())
        except ValueError:
            raise CsrError("not a PEM certificate signing request") from None
        if not csr.is_signature_valid:
            raise CsrError("the CSR's signature does not verify (not made with its own key)")
        key = csr.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            raise CsrError("the CSR's key must be EC P-256")
        try:
            names = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            raise CsrError(
                "the CSR has no subjectAltName: it must name the SPIFFE id as its one URI"
            ) from None
        uris = [name.value for name in names if isinstance(name, x509.UniformResourceIdentifier)]
        if len(uris) != 1:
            raise CsrError(f"the CSR has {len(uris)} URI subjectAltNames; it must name exactly one SPIFFE id")
        if len(names) != 1:
            raise CsrError(
                "the CSR asks for names besides the SPIFFE id; the center issues the SPIFFE id only"
            )
        if uris[0] != expected:
            raise CsrError(f"the CSR is for {uris[0]!r}, but this enrollment is for {expected!r}")
        try:
            sid = parse_spiffe_id(expected)
        except IdentityError as exc:
            raise CsrError(str(exc)) from None
        return sid, key

    def issue(
        self,
        sid: SpiffeId,
        key: ec.EllipticCurvePublicKey,
        lifetime: timedelta | None,
        *,
        not_after: datetime | None = None,
    ) -> x509.Certificate:
        return pki.issue_for_key(self.ca, sid, key, lifetime, not_after=not_after)

    def ensure_tls_certificate(self, lifetime: timedelta, *, now: float) -> bool:
        """(Re)issue the center's own TLS certificate, same key, when it is missing, names another id or
        is past half its life. Returns whether it did."""
        path = self.directory / TLS_CERT
        if path.is_file():
            current = x509.load_pem_x509_certificate(path.read_bytes())
            start = current.not_valid_before_utc.timestamp() + pki.CLOCK_SKEW.total_seconds()
            end = current.not_valid_after_utc.timestamp()
            names = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = names.get_values_for_type(x509.UniformResourceIdentifier)
            if uris == [str(self.center_id)] and now < start + (end - start) / 2 and self._ours(current):
                return False
        certificate = self.issue(self.center_id, self.tls_public_key(), lifetime)
        pki.write_files([(path, certificate.public_bytes(serialization.Encoding.PEM), pki.CERT_MODE)])
        return True

    def _ours(self, certificate: x509.Certificate) -> bool:
        """Whether the current CA issued it (not after a CA rotation)."""
        try:
            certificate.verify_directly_issued_by(self.ca.certificate)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    def rotate_signing_key(self) -> str:
        """Start a rotation (make ``signing-next.key``) or finish one (it becomes ``signing.key``; the
        old key is kept as ``signing-old.key``). Returns what was done, for the operator."""
        current, following = self.directory / SIGNING_KEY, self.directory / NEXT_SIGNING_KEY
        if not following.is_file():
            new_signing_key(following)
            return f"made {following}: restart the center; gateways learn it from the next bundle"
        current.replace(self.directory / "signing-old.key")
        following.replace(current)
        return f"{following} is now {current} (the old one is signing-old.key): restart the center"


def load_authority(directory: Path, name: str) -> Authority:
    ca = pki.load_ca(directory)
    signing = _load_ed25519(directory / SIGNING_KEY)
    next_path = directory / NEXT_SIGNING_KEY
    next_keys = [encode_key(_load_ed25519(next_path).public_key())] if next_path.is_file() else []
    if not (directory / TLS_KEY).is_file():
        raise pki.PkiError(f"no TLS key in {directory}: {directory / TLS_KEY} does not exist")
    return Authority(directory, name, ca, signing, next_keys)


def create_keys(directory: Path, trust_domain: str) -> None:
    """A new CA, signing key and TLS key in ``directory`` (``ztgate center init``)."""
    pki.init_ca(directory, trust_domain)
    tls_key = ec.generate_private_key(ec.SECP256R1())
    pki.write_files(
        [
            (directory / SIGNING_KEY, _ed25519_pem(Ed25519PrivateKey.generate()), pki.KEY_MODE),
            (directory / TLS_KEY, pki.private_key_pem(tls_key), pki.KEY_MODE),
        ]
    )


def new_signing_key(path: Path) -> None:
    """Write a fresh Ed25519 key (the next signing key, docs/center.md)."""
    pki.write_files([(path, _ed25519_pem(Ed25519PrivateKey.generate()), pki.KEY_MODE)])
