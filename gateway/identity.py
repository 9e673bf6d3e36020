"""SPIFFE ids and the identity a peer certificate proves.

The overlay listener calls :func:`identity_from_certificate` once per handshake, after OpenSSL has
verified the chain, the validity period and the CA's name constraints. What is left to check here is
what a chain check cannot say: that the certificate names exactly one workload, in our trust domain.
No I/O, no clock: the caller decides what trust domain to expect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography import x509

__all__ = [
    "MAX_SPIFFE_ID_BYTES",
    "MAX_TRUST_DOMAIN_CHARS",
    "IdentityError",
    "SpiffeId",
    "identity_from_certificate",
    "parse_spiffe_id",
    "parse_trust_domain",
]

# SPIFFE-ID spec §2.3: implementations need not accept more, and a bound keeps hostile input cheap.
MAX_SPIFFE_ID_BYTES = 2048
# SPIFFE-ID spec §2.3, after RFC 3986's limit on a URI host.
MAX_TRUST_DOMAIN_CHARS = 255

_SCHEME = "spiffe"
_TRUST_DOMAIN_RE = re.compile(r"[a-z0-9._-]+")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]+")
_TRUST_DOMAIN_CHARS = 'lowercase letters, digits, ".", "-" and "_"'
_SEGMENT_CHARS = 'letters, digits, ".", "-" and "_"'
# One regex accepts every well-formed id, so the per-handshake path costs a single match; the slow,
# explaining parser only runs on ids that are already known to be wrong.
_VALID_RE = re.compile(
    r"spiffe://(?P<td>[a-z0-9._-]+)/(?P<path>(?!\.\.?(?:/|$))[A-Za-z0-9._-]+(?:/(?!\.\.?(?:/|$))[A-Za-z0-9._-]+)*)"
)


class IdentityError(ValueError):
    """A SPIFFE id or a peer certificate does not prove an acceptable identity; the message says why."""


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A validated workload SPIFFE id. Build it with :func:`parse_spiffe_id`, which checks the parts."""

    trust_domain: str
    path: str  # without the leading "/", e.g. "user/alice"

    def __str__(self) -> str:
        return f"{_SCHEME}://{self.trust_domain}/{self.path}"

    @property
    def kind(self) -> str:
        """The first path segment: "user", "vendor", "agent", "gateway", or whatever else it is."""
        return self.path.split("/", 1)[0]


def _quote(text: str, limit: int = 120) -> str:
    # Messages end up in logs and terminals: keep hostile ids short and free of control characters.
    shown = text if len(text) <= limit else text[:limit] + "..."
    if shown.isprintable() and '"' not in shown:
        return f'"{shown}"'
    return repr(shown)


def _allowed_chars_error(what: str, value: str, pattern: re.Pattern[str], allowed: str) -> str:
    bad = next(ch for ch in value if not pattern.fullmatch(ch))
    return f"{what} {_quote(value)} contains {_quote(bad)}; allowed are {allowed}"


def _trust_domain_problem(trust_domain: str) -> str | None:
    if not trust_domain:
        return "the trust domain is empty"
    if len(trust_domain) > MAX_TRUST_DOMAIN_CHARS:
        return f"the trust domain is longer than {MAX_TRUST_DOMAIN_CHARS} characters"
    if "@" in trust_domain:
        return "userinfo (user@) is not allowed in a SPIFFE id"
    host, colon, port = trust_domain.rpartition(":")
    if colon and host and port.isdigit() and "[" not in host:
        return "a port is not allowed in a SPIFFE id"
    if _TRUST_DOMAIN_RE.fullmatch(trust_domain):
        return None
    if trust_domain.isascii() and _TRUST_DOMAIN_RE.fullmatch(trust_domain.lower()):
        return f"the trust domain {_quote(trust_domain)} must be lowercase"
    return _allowed_chars_error("the trust domain", trust_domain, _TRUST_DOMAIN_RE, _TRUST_DOMAIN_CHARS)


def parse_trust_domain(text: str) -> str:
    """Return ``text`` if it is a valid SPIFFE trust domain name (e.g. "plant1.example")."""
    problem = _trust_domain_problem(text)
    if problem is not None:
        raise IdentityError(f"invalid trust domain {_quote(text)}: {problem}")
    return text


def _spiffe_id_problem(text: str) -> str:
    """Say what is wrong with ``text``, which the fast path has already rejected."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SPIFFE_ID_BYTES:
        return f"longer than {MAX_SPIFFE_ID_BYTES} bytes"
    scheme, sep, rest = text.partition("://")
    if not sep:
        return f'not a URI of the form "{_SCHEME}://<trust-domain>/<path>"'
    if scheme != _SCHEME:
        if scheme.lower() == _SCHEME:
            return f'the scheme must be "{_SCHEME}" in lowercase'
        return f'the scheme {_quote(scheme)} is not "{_SCHEME}"'
    # Checked before splitting authority from path, since these characters may appear in either.
    if "#" in rest:
        return "a fragment (#...) is not allowed in a SPIFFE id"
    if "?" in rest:
        return "a query (?...) is not allowed in a SPIFFE id"
    if "%" in rest:
        return "percent-encoding is not allowed in a SPIFFE id"
    trust_domain, slash, path = rest.partition("/")
    problem = _trust_domain_problem(trust_domain)
    if problem is not None:
        return problem
    if not slash or not path:
        return "the path is empty (a workload id needs a path such as /user/alice)"
    for segment in path.split("/"):
        if not segment:
            return 'the path has an empty segment ("//" or a trailing "/")'
        if segment in (".", ".."):
            return f'the path segment "{segment}" is not allowed'
        if not _SEGMENT_RE.fullmatch(segment):
            return _allowed_chars_error("the path segment", segment, _SEGMENT_RE, _SEGMENT_CHARS)
    # The regex and the explaining parser disagree; fail closed rather than accept.
    return "not a valid SPIFFE id"


def parse_spiffe_id(text: str) -> SpiffeId:
    """Parse and validate a workload SPIFFE id such as "spiffe://plant1.example/user/alice".

    Follows the SPIFFE-ID spec strictly (no normalisation): scheme exactly "spiffe"; a trust domain of
    lowercase letters, digits, ".", "-", "_"; a non-empty path of non-empty segments of letters, digits,
    ".", "-", "_" other than "." and ".."; no port, userinfo, query, fragment or percent-encoding; at most
    2048 bytes. Raises :class:`IdentityError` naming the first problem found.
    """
    match = _VALID_RE.fullmatch(text)
    if match is not None and len(text) <= MAX_SPIFFE_ID_BYTES and len(match["td"]) <= MAX_TRUST_DOMAIN_CHARS:
        return SpiffeId(match["td"], match["path"])
    raise IdentityError(f"malformed SPIFFE id {_quote(text)}: {_spiffe_id_problem(text)}")


def identity_from_certificate(der: bytes, trust_domain: str) -> SpiffeId:
    """The SPIFFE id a verified leaf certificate (DER) proves, if it is in ``trust_domain``.

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
    if spiffe_id.trust_domain != trust_domain:
        raise IdentityError(f"trust domain {_quote(spiffe_id.trust_domain)} is not {_quote(trust_domain)}")
    return spiffe_id
