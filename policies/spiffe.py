"""SPIFFE ids: the one parser of the workload ids that the gateway's handshake accepts and a policy names.

The handshake (:mod:`gateway.identity`) parses the id a client certificate carries with
:func:`parse_spiffe_id`; the policy loader (:mod:`policies.subjects`) checks every id and pattern with
the same functions, so a policy can never name an id that the handshake refuses. Pure: stdlib only, no
I/O, no clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "CLIENT_KINDS",
    "MAX_SPIFFE_ID_BYTES",
    "MAX_TRUST_DOMAIN_CHARS",
    "SCHEME_PREFIX",
    "SERVER_KINDS",
    "IdentityError",
    "SpiffeId",
    "parse_spiffe_id",
    "parse_trust_domain",
    "quote",
    "spiffe_id_problem",
    "trust_domain_problem",
]

# The kinds of ids (first path segment) that open overlay sessions, and those that only serve. A
# server identity never opens a session, and no policy pattern matches one.
CLIENT_KINDS = frozenset({"user", "vendor", "agent"})
SERVER_KINDS = frozenset({"gateway", "center"})

# SPIFFE-ID spec §2.3: implementations need not accept more, and a bound keeps hostile input cheap.
MAX_SPIFFE_ID_BYTES = 2048
# SPIFFE-ID spec §2.3, after RFC 3986's limit on a URI host.
MAX_TRUST_DOMAIN_CHARS = 255

_SCHEME = "spiffe"
SCHEME_PREFIX = f"{_SCHEME}://"
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
    """A SPIFFE id, a trust domain or a peer certificate does not prove an acceptable identity; the
    message says why."""


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


def quote(text: str, limit: int = 120) -> str:
    """``text`` for a message: logs and terminals get hostile ids short and free of control characters."""
    shown = text if len(text) <= limit else text[:limit] + "..."
    if shown.isprintable() and '"' not in shown:
        return f'"{shown}"'
    return repr(shown)


def _allowed_chars_error(what: str, value: str, pattern: re.Pattern[str], allowed: str) -> str:
    bad = next(ch for ch in value if not pattern.fullmatch(ch))
    return f"{what} {quote(value)} contains {quote(bad)}; allowed are {allowed}"


def trust_domain_problem(trust_domain: str) -> str | None:
    """What is wrong with ``trust_domain`` as a SPIFFE trust domain name, or None."""
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
        return f"the trust domain {quote(trust_domain)} must be lowercase"
    return _allowed_chars_error("the trust domain", trust_domain, _TRUST_DOMAIN_RE, _TRUST_DOMAIN_CHARS)


def parse_trust_domain(text: str) -> str:
    """Return ``text`` if it is a valid SPIFFE trust domain name (e.g. "plant1.example")."""
    problem = trust_domain_problem(text)
    if problem is not None:
        raise IdentityError(f"invalid trust domain {quote(text)}: {problem}")
    return text


def _explain(text: str) -> str:
    """Say what is wrong with ``text``, which the fast path has already rejected."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SPIFFE_ID_BYTES:
        return f"longer than {MAX_SPIFFE_ID_BYTES} bytes"
    scheme, sep, rest = text.partition("://")
    if not sep:
        return f'not a URI of the form "{_SCHEME}://<trust-domain>/<path>"'
    if scheme != _SCHEME:
        if scheme.lower() == _SCHEME:
            return f'the scheme must be "{_SCHEME}" in lowercase'
        return f'the scheme {quote(scheme)} is not "{_SCHEME}"'
    # Checked before splitting authority from path, since these characters may appear in either.
    if "#" in rest:
        return "a fragment (#...) is not allowed in a SPIFFE id"
    if "?" in rest:
        return "a query (?...) is not allowed in a SPIFFE id"
    if "%" in rest:
        return "percent-encoding is not allowed in a SPIFFE id"
    trust_domain, slash, path = rest.partition("/")
    problem = trust_domain_problem(trust_domain)
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
    raise IdentityError(f"malformed SPIFFE id {quote(text)}: {_explain(text)}")


def spiffe_id_problem(text: str) -> str | None:
    """What is wrong with ``text`` as a workload SPIFFE id (see :func:`parse_spiffe_id`), or None."""
    match = _VALID_RE.fullmatch(text)
    if match is not None and len(text) <= MAX_SPIFFE_ID_BYTES and len(match["td"]) <= MAX_TRUST_DOMAIN_CHARS:
        return None
    return _explain(text)
