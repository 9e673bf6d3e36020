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

__all__ = ["GROUP_PREFIX", "SubjectIndex", "check_group_name", "check_subject", "check_trust_domain"]

GROUP_PREFIX = "group:"
_SCHEME = "spiffe://"
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_PARTIAL_SEGMENT = re.compile(r"[A-Za-z0-9._-]*")
_GROUP_NAME = re.compile(r"[A-Za-z0-9._-]+")
_MAX_TRUST_DOMAIN = 255
_MAX_ID_BYTES = 2048


def check_trust_domain(text: str) -> str | None:
    """A problem with a SPIFFE trust domain name, or None."""
    if not text:
        return "the trust domain is empty"
    if len(text) > _MAX_TRUST_DOMAIN:
        return f"the trust domain is longer than {_MAX_TRUST_DOMAIN} characters"
    if _TRUST_DOMAIN.fullmatch(text) is None:
        if text.startswith(_SCHEME):
            return f'{quote(text)}: give the bare trust domain (such as "plant1.example"), not a SPIFFE id'
        return f'{quote(text)}: a trust domain holds only lowercase letters, digits, ".", "-" and "_"'
    return None


def check_group_name(name: str) -> str | None:
    if _GROUP_NAME.fullmatch(name) is None:
        return f'group name {quote(name)} may hold only letters, digits, ".", "-" and "_"'
    return None


def _segment_problem(text: str, segment: str) -> str | None:
    if not segment:
        return f'{quote(text)}: empty path segment ("//" or a trailing "/")'
    if segment in (".", ".."):
        return f'{quote(text)}: "." and ".." path segments are not allowed'
    if _SEGMENT.fullmatch(segment) is None:
        return f'{quote(text)}: path segment {quote(segment)} may hold only letters, digits, ".", "-" and "_"'
    return None


_VALID: dict[str, re.Pattern[str]] = {}
_WHOLE_SEGMENT = r"(?!\.\.?(?:/|$))[A-Za-z0-9._-]+"


def _valid_re(trust_domain: str) -> re.Pattern[str]:
    """One regex that accepts every valid id and pattern of the domain: the common case costs a match."""
    known = _VALID.get(trust_domain)
    if known is None:
        head = f"spiffe://{re.escape(trust_domain)}/"
        inner = r"(?!\.\.?/)[A-Za-z0-9._-]+/"
        known = _VALID[trust_domain] = re.compile(
            rf"{head}(?:{_WHOLE_SEGMENT}(?:/{_WHOLE_SEGMENT})*|(?:{inner})*[A-Za-z0-9._-]*\*)"
        )
    return known


def check_subject(text: str, trust_domain: str) -> str | None:
    """A problem with an id or ``prefix*`` pattern of ``trust_domain`` (not a group reference), or None."""
    if len(text) <= _MAX_ID_BYTES // 4 and _valid_re(trust_domain).fullmatch(text) is not None:
        return None
    return subject_problem(text, trust_domain)


def subject_problem(text: str, trust_domain: str) -> str | None:
    """The slow, explaining check behind :func:`check_subject`'s one-regex fast path."""
    if len(text.encode("utf-8", "surrogatepass")) > _MAX_ID_BYTES:
        return f"{quote(text)}: longer than {_MAX_ID_BYTES} bytes"
    if not text.startswith(_SCHEME):
        if text.lower().startswith(_SCHEME):
            return f'{quote(text)}: the scheme must be "spiffe" in lowercase'
        return (
            f'{quote(text)}: expected a SPIFFE id such as "spiffe://{trust_domain}/user/alice",'
            ' a pattern ending in "*" or "group:<name>"'
        )
    rest = text[len(_SCHEME) :]
    domain, slash, path = rest.partition("/")
    if domain != trust_domain:
        if domain.endswith("*") and not slash:
            return f'{quote(text)}: a pattern must include "{_SCHEME}{trust_domain}/" before the "*"'
        return f"{quote(text)}: belongs to trust domain {quote(domain)}, not {quote(trust_domain)}"
    if not slash or not path:
        return f'{quote(text)}: the path is empty (expected "{_SCHEME}{trust_domain}/<path>")'
    pattern = path.endswith("*")
    if pattern:
        path = path[:-1]
    if "*" in path:
        return f'{quote(text)}: "*" is allowed only at the end of a pattern'
    segments = path.split("/")
    if pattern:
        # The text before "*" may end inside a segment ("user/op*") or right after a "/".
        *whole, partial = segments
        if _PARTIAL_SEGMENT.fullmatch(partial) is None:
            return _segment_problem(text, partial)
    else:
        whole = segments
    for segment in whole:
        problem = _segment_problem(text, segment)
        if problem is not None:
            return problem
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
        """Indices of every rule with a subject entry matching ``subject``."""
        found: set[int] = set(self._exact.get(subject, ()))
        for length in self._prefix_lengths:
            if length > len(subject):
                break
            rules = self._prefixes.get(subject[:length])
            if rules is not None:
                found.update(rules)
        return found


def expand(subjects: Iterable[str], groups: dict[str, tuple[str, ...]]) -> list[str]:
    """A rule's subjects with every ``group:`` reference replaced by the group's members."""
    out: list[str] = []
    for subject in subjects:
        if subject.startswith(GROUP_PREFIX):
            out.extend(groups.get(subject[len(GROUP_PREFIX) :], ()))
        else:
            out.append(subject)
    return out
