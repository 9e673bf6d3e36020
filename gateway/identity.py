"""The identity a peer certificate proves.

The overlay listener calls :func:`identity_from_certificate` once per handshake, after OpenSSL has
verified the chain, the validity period and the CA's name constraints. What is left to check here is
what a chain check cannot say: that the certificate names exactly one workload, in our trust domain.
The id itself is parsed by :mod:`policies.spiffe`, the parser the policy loader uses too. No I/O, no
clock: the caller decides what trust domain to expect.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from policies.spiffe import IdentityError, SpiffeId, parse_spiffe_id, quote

__all__ = ["PeerPin", "identity_from_certificate"]


def identity_from_certificate(der: bytes, trust_domain: str | None) -> SpiffeId:
    """The SPIFFE id a verified leaf certificate (DER) proves, if it is in ``trust_domain`` (None:
    any; for a process reading its own certificate).

    The chain, validity period and revocation are the TLS stack's job and are not checked here. This
    requires: not a CA certificate, exactly one URI subjectAltName, a valid SPIFFE id, the expected trust
    domain. Anything else raises :class:`IdentityError` with a distinct reason.
    """
    try:
        cert = x509.load_der_x509_certificate(der)
        extensions = cert.extensions
    except ValueError as exc:
        raise IdentityError(f"not a valid DER certificate: {exc}") from None

    # X.509-SVID §4: a leaf must not be able to sign certificates, whichever way it claims to.
    try:
        if extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise IdentityError("a CA certificate was presented as a leaf (basicConstraints CA:true)")
    except x509.ExtensionNotFound:
        pass
    try:
        if extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign:
            raise IdentityError("a CA certificate was presented as a leaf (keyUsage keyCertSign)")
    except x509.ExtensionNotFound:
        pass

    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise IdentityError("no SPIFFE id: the certificate has no subjectAltName extension") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if not uris:
        raise IdentityError("no SPIFFE id: the certificate has no URI subjectAltName")
    if len(uris) > 1:
        raise IdentityError(
            f"the certificate has {len(uris)} URI subjectAltNames; a SPIFFE id must be the only one"
        )

    spiffe_id = parse_spiffe_id(uris[0])
    if trust_domain is not None and spiffe_id.trust_domain != trust_domain:
        raise IdentityError(f"trust domain {quote(spiffe_id.trust_domain)} is not {quote(trust_domain)}")
    return spiffe_id


@dataclass(frozen=True)
class PeerPin:
    """The server identity a client accepts: one SPIFFE id (``exact``), or any id of ``kind`` in
    ``trust_domain`` whose last path segment is ``name`` (any name when None)."""

    trust_domain: str
    kind: str
    name: str | None = None
    exact: str | None = None

    def __str__(self) -> str:
        if self.exact is not None:
            return self.exact
        if self.name is None:
            return f"any {self.kind} of {self.trust_domain}"
        return f"spiffe://{self.trust_domain}/{self.kind}/*/{self.name}"

    def problem(self, found: SpiffeId) -> str | None:
        """Why ``found`` is not the pinned server, or None."""
        if self.exact is not None:
            return None if str(found) == self.exact else f"the server is {found}, not the pinned {self.exact}"
        if found.trust_domain != self.trust_domain:
            domain, pinned = quote(found.trust_domain), quote(self.trust_domain)
            return f"the server is {found}: trust domain {domain} is not {pinned}"
        if found.kind != self.kind:
            return f"the server is {found}, not a {self.kind}"
        if self.name is not None and found.path.rsplit("/", 1)[-1] != self.name:
            return f"the server is {found}, not the pinned {self}"
        return None
