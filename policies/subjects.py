"""Who a rule is for: SPIFFE ids, ``prefix*`` patterns and ``group:name`` references.

Every id and pattern in a file must lie inside the file's trust domain; a pattern's fixed part must
include ``spiffe://<trust-domain>/`` so it can never reach into another domain (``spiffe://plant1*``
would match ``spiffe://plant1.example.evil/...``). :class:`SubjectIndex` finds the rules for an
identity with a few dictionary look-ups, however many rules and patterns the file holds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from policies.errors import quote
from policies.spiffe import SCHEME_PREFIX, SERVER_KINDS, spiffe_id_problem, trust_domain_problem

__all__ = ["GROUP_PREFIX", "SubjectIndex", "check_group_name", "check_subject", "check_trust_domain"]

GROUP_PREFIX = "group:"
_GROUP_NAME = re.compile(r"[A-Za-z0-9._-]+")


def check_trust_domain(text: str) -> str | None:
    """A problem with a SPIFFE trust domain name, or None (the handshake's own check)."""
    problem = trust_domain_problem(text)
    if problem is not None and text.startswith(SCHEME_PREFIX):
        return f'{quote(text)}: give the bare trust domain (such as "plant1.example"), not a SPIFFE id'
    return problem


def check_group_name(name: str) -> str | None:
    if _GROUP_NAME.fullmatch(name) is None:
        return f'group name {quote(name)} may hold only letters, digits, ".", "-" and "_"'
    return None


def check_subject(text: str, trust_domain: str) -> str | None:
    """A problem with an id or ``prefix*`` pattern of ``trust_domain`` (not a group reference), or None.

    An id must be one the handshake accepts (:func:`policies.spiffe.parse_spiffe_id`) in the file's
    trust domain. A pattern is checked as the id its fixed part names, completed with a letter where
    the fixed part stops at a "/" or inside a "." or ".." segment (``.../vendor/acme/*`` as
    ``.../vendor/acme/x``): valid exactly when some id the handshake accepts starts with that part."""
    if not text.startswith(SCHEME_PREFIX):
        if text.lower().startswith(SCHEME_PREFIX):
            return f'{quote(text)}: the scheme must be "spiffe" in lowercase'
        return (
            f'{quote(text)}: expected a SPIFFE id such as "spiffe://{trust_domain}/user/alice",'
            ' a pattern ending in "*" or "group:<name>"'
        )
    pattern = text.endswith("*")
    fixed = text[:-1] if pattern else text
    if "*" in fixed:
        return f'{quote(text)}: "*" is allowed only at the end of a pattern'
    domain, slash, _ = fixed[len(SCHEME_PREFIX) :].partition("/")
    if pattern:
        if not slash:
            return f'{quote(text)}: a pattern must include "{SCHEME_PREFIX}{trust_domain}/" before the "*"'
        if fixed.rpartition("/")[2] in ("", ".", ".."):
            fixed += "x"
    problem = spiffe_id_problem(fixed)
    if problem is not None:
        return f"{quote(text)}: {problem}"
    if domain != trust_domain:
        return f"{quote(text)}: belongs to trust domain {quote(domain)}, not {quote(trust_domain)}"
    return None


class SubjectIndex:
    """Rule indices by subject id and by pattern prefix."""

    __slots__ = ("_exact", "_prefix_lengths", "_prefixes")

    def __init__(self) -> None:
        self._exact: dict[str, list[int]] = {}
        self._prefixes: dict[str, list[int]] = {}
        self._prefix_lengths: list[int] = []

    def add(self, subject: str, rule_index: int) -> None:
        """Index a validated id or pattern; add a rule's subjects in file order."""
        if subject.endswith("*"):
            prefix = subject[:-1]
            rules = self._prefixes.setdefault(prefix, [])
            if len(prefix) not in self._prefix_lengths:
                self._prefix_lengths.append(len(prefix))
                self._prefix_lengths.sort()
        else:
            rules = self._exact.setdefault(subject, [])
        if not rules or rules[-1] != rule_index:
            rules.append(rule_index)

    def rules_for(self, subject: str) -> set[int]:
        """Indices of every rule with a subject entry matching ``subject``. Patterns never match a
        server's id (``/gateway/``, ``/center/``): ``spiffe://td/*`` means every client, not them."""
        found: set[int] = set(self._exact.get(subject, ()))
        if _kind(subject) in SERVER_KINDS:
            return found
        for length in self._prefix_lengths:
            if length > len(subject):
                break
            rules = self._prefixes.get(subject[:length])
            if rules is not None:
                found.update(rules)
        return found


def _kind(subject: str) -> str:
    """The first path segment of a SPIFFE id ("spiffe://td/KIND/...")."""
    return subject[len(SCHEME_PREFIX) :].split("/", 2)[1] if subject.count("/") >= 3 else ""


def expand(subjects: Iterable[str], groups: dict[str, tuple[str, ...]]) -> list[str]:
    """A rule's subjects with every ``group:`` reference replaced by the group's members."""
    out: list[str] = []
    for subject in subjects:
        if subject.startswith(GROUP_PREFIX):
            out.extend(groups.get(subject[len(GROUP_PREFIX) :], ()))
        else:
            out.append(subject)
    return out
