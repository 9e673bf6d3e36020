"""A credentials folder: what ``ztgate enroll`` (or ``ztgate center init`` for the first admin) leaves
on a host, and what gateways, agents and the center's command line read.

```
DIR/key.pem       the private key, made on this host (mode 0600); it never leaves it
DIR/cert.pem      the certificate the center issued for it
DIR/ca.pem        the CA certificates to trust
DIR/center.json   the center: url, trust domain, its id, the fingerprint it was pinned by, the
                  signing keys bundles must be signed with; and this host's id and role
```

Renewal replaces key and certificate together (a new key each time) and rewrites the CA file with
what the center hands out, which is how a CA rotation reaches every host.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway import pki
from gateway.config import TlsFiles

__all__ = ["CenterInfo", "Credentials", "CredentialsError", "make_csr"]

KEY_FILE = "key.pem"
CERT_FILE = "cert.pem"
CA_FILE = "ca.pem"
CENTER_FILE = "center.json"


class CredentialsError(ValueError):
    """A credentials folder that cannot be used; the message says what is missing."""


@dataclass(frozen=True)
class CenterInfo:
    url: str
    trust_domain: str
    center_id: str
    fingerprint: str
    signing_keys: tuple[str, ...]
    id: str  # this host's SPIFFE id
    role: str

    def to_json(self) -> bytes:
        data = asdict(self)
        data["signing_keys"] = list(self.signing_keys)
        return orjson.dumps(data, option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> CenterInfo:
        try:
            data: Any = orjson.loads(raw)
            return cls(**{**data, "signing_keys": tuple(data["signing_keys"])})
        except (orjson.JSONDecodeError, TypeError, KeyError) as exc:
            raise CredentialsError(f"{where} is not a center description: {exc}") from None


@dataclass(frozen=True)
class Credentials:
    directory: Path

    @property
    def tls(self) -> TlsFiles:
        return TlsFiles(self.directory / CERT_FILE, self.directory / KEY_FILE, self.directory / CA_FILE)

    @property
    def center_file(self) -> Path:
        return self.directory / CENTER_FILE

    def center(self) -> CenterInfo:
        path = self.center_file
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise CredentialsError(
                f"no credentials in {self.directory}: {path}: {exc.strerror} (run ztgate enroll first)"
            ) from None
        return CenterInfo.from_json(raw, str(path))

    def save(
        self, key: ec.EllipticCurvePrivateKey, certificate_pem: str, ca_pem: str, info: CenterInfo
    ) -> None:
        """Write all four files, each moved into place only once all are written."""
        self.directory.mkdir(mode=pki.DIR_MODE, parents=True, exist_ok=True)
        pki.write_files(
            [
                (self.directory / KEY_FILE, pki.private_key_pem(key), pki.KEY_MODE),
                (self.directory / CERT_FILE, certificate_pem.encode(), pki.CERT_MODE),
                (self.directory / CA_FILE, ca_pem.encode(), pki.CERT_MODE),
                (self.center_file, info.to_json(), pki.CERT_MODE),
            ]
        )

    def replace_certificate(self, key: ec.EllipticCurvePrivateKey, certificate_pem: str, ca_pem: str) -> None:
        """A renewal's key, certificate and CA bundle."""
        pki.write_files(
            [
                (self.directory / KEY_FILE, pki.private_key_pem(key), pki.KEY_MODE),
                (self.directory / CERT_FILE, certificate_pem.encode(), pki.CERT_MODE),
                (self.directory / CA_FILE, ca_pem.encode(), pki.CERT_MODE),
            ]
        )

    def update_center(self, info: CenterInfo) -> None:
        pki.write_files([(self.center_file, info.to_json(), pki.CERT_MODE)])


def make_csr(spiffe_id: str) -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A new P-256 key and a CSR naming ``spiffe_id`` as its one URI SAN."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spiffe_id.rsplit("/", 1)[-1][:64])]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()
