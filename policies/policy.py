"""A loaded policy: its revision, assets and rules, and the per-identity views the gateway asks for.

Subject and asset indexes are built when the file is loaded (cheap, linear in the rules); views are
compiled when first asked for and kept in a bounded LRU cache, so a file with many identities loads
fast and memory stays bounded however many identities connect.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

from policies.compiler import compile_view
from policies.enip.explain import describe_enip_request, explain_enip_view
from policies.errors import PolicyError, PolicyIssue
from policies.explain import Explanation, cloaked_explanation, session_denied_explanation
from policies.loader import parse_model
from policies.modbus.explain import describe_request, explain_view
from policies.model import Asset, PolicyModel, PolicyTest, Rule, VendorAccess
from policies.opcua.explain import describe_opcua_request, explain_opcua_view
from policies.refusals import RefusingView
from policies.subjects import SubjectIndex, expand
from policies.view import SubjectView
from protocols.enip.requests import CipRequest
from protocols.modbus.pdu import Request
from protocols.opcua.operations import Operation

__all__ = ["VIEW_CACHE_SIZE", "Policy", "load_policy", "parse_policy"]

VIEW_CACHE_SIZE = 4096


class Policy:
    """A validated, indexed policy. Its rules never change once built, so a reload swaps in a new
    object; the view cache is its only mutable state, so use a policy from one thread at a time (the
    gateway's event loop)."""

    def __init__(self, model: PolicyModel, revision: str, source: str) -> None:
        self.revision = revision
        self.source = source
        self.trust_domain = model.trust_domain
        self.assets: Mapping[str, Asset] = model.assets
        self.groups: Mapping[str, tuple[str, ...]] = model.groups
        self.rules: tuple[Rule, ...] = model.rules
        self.tests: tuple[PolicyTest, ...] = model.tests
        self.vendor_access: VendorAccess | None = model.vendor_access
        self._requesters = SubjectIndex()  # who may ask for a grant ([vendor_access] subjects)
        if model.vendor_access is not None:
            for subject in expand(model.vendor_access.subjects, dict(model.groups)):
                self._requesters.add(subject, 0)
        self._subjects = SubjectIndex()
        self._by_asset: dict[str, set[int]] = {name: set() for name in model.assets}
        self._every_asset: set[int] = set()  # rules with assets = ["*"], kept apart: no assets x rules
        # Session deny rules decide whether a session may exist at all, never a request: kept out of the
        # views, in an index of their own.
        self._session_subjects = SubjectIndex()
        groups = dict(model.groups)
        for rule in model.rules:
            if rule.scope == "session":
                for subject in expand(rule.subjects, groups):
                    self._session_subjects.add(subject, rule.index)
                continue
            for subject in expand(rule.subjects, groups):
                self._subjects.add(subject, rule.index)
            if "*" in rule.assets:
                self._every_asset.add(rule.index)
            else:
                for name in rule.assets:
                    self._by_asset[name].add(rule.index)
        self._views: OrderedDict[tuple[str, str], SubjectView | None] = OrderedDict()
        self.refusals: Mapping[str, str] = MappingProxyType({})  # asset -> why it refuses everything
        self.reads_only: Mapping[str, str] = MappingProxyType({})  # asset -> why it refuses all but reads

    def with_refusals(
        self, refusals: Mapping[str, str], reads_only: Mapping[str, str] | None = None
    ) -> Policy:
        """This policy, with every request on the assets in ``refusals`` (asset name -> reason) refused
        for that reason, and every request but reads on the assets in ``reads_only``. Same revision, rules
        and indexes; only the views of those assets change."""
        unknown = (set(refusals) | set(reads_only or {})) - set(self.assets)
        if unknown:
            raise ValueError(f"no such assets: {', '.join(sorted(unknown))}")
        refusing = copy.copy(self)
        refusing._views = OrderedDict()
        refusing.refusals = MappingProxyType(dict(refusals))
        refusing.reads_only = MappingProxyType(dict(reads_only or {}))
        return refusing

    def view(self, subject: str, asset: str) -> SubjectView | None:
        """The compiled view of ``asset`` for ``subject``, or None when the asset must stay cloaked:
        it is unknown, or no rule (of any effect or mode, in or out of its window) names it for them."""
        key = (subject, asset)
        views = self._views
        if key in views:
            views.move_to_end(key)
            return views[key]
        view = self._compile(subject, asset)
        views[key] = view
        if len(views) > VIEW_CACHE_SIZE:
            views.popitem(last=False)
        return view

    def _compile(self, subject: str, asset: str) -> SubjectView | None:
        on_asset = self._by_asset.get(asset)
        if on_asset is None:
            return None
        for_subject = self._subjects.rules_for(subject)
        indices = sorted((for_subject & on_asset) | (for_subject & self._every_asset))
        if not indices:
            return None
        view = compile_view(subject, self.assets[asset], [self.rules[i] for i in indices], self.revision)
        reason = self.refusals.get(asset)
        if reason is not None:
            return RefusingView(view, reason)
        reason = self.reads_only.get(asset)
        return view if reason is None else RefusingView(view, reason, reads=True)

    def may_request_grant(self, subject: str) -> bool:
        """Whether ``subject`` is among those ``[vendor_access]`` lets ask for a grant."""
        return bool(self._requesters.rules_for(subject))

    def session_denial(self, subject: str, asset: str) -> Rule | None:
        """The first ``scope = "session"`` deny rule that refuses ``subject`` any session to ``asset``;
        it wins over every allow rule."""
        for index in sorted(self._session_subjects.rules_for(subject)):
            rule = self.rules[index]
            if "*" in rule.assets or asset in rule.assets:
                return rule
        return None

    def explain_modbus(self, subject: str, asset: str, request: Request, now: float) -> Explanation:
        """Decide ``request`` as the gateway would and say why, for ``ztgate policy explain``."""
        refused = self._refused(subject, asset, lambda: describe_request(request), now)
        if refused is not None:
            return refused
        view = self.view(subject, asset)
        assert view is not None
        return explain_view(view, request, now, self.source)

    def explain_enip(self, subject: str, asset: str, request: CipRequest, now: float) -> Explanation:
        """Decide one EtherNet/IP request (as :func:`protocols.enip.flatten` yields it) as the gateway
        would and say why, for ``ztgate policy explain``."""
        refused = self._refused(subject, asset, lambda: describe_enip_request(request), now)
        if refused is not None:
            return refused
        view = self.view(subject, asset)
        assert view is not None
        return explain_enip_view(view, request, now, self.source)

    def explain_opcua(
        self,
        subject: str,
        asset: str,
        service: str,
        operation: Operation | None,
        namespaces: Sequence[str],
        now: float,
        browse_path: Sequence[str] | None = None,
    ) -> Explanation:
        """Decide one OPC UA operation (or, with ``operation`` None, a request of ``service`` as a whole)
        as the gateway would and say why, for ``ztgate policy explain``. ``namespaces`` is the device's
        namespace array; ``browse_path`` the node's path, as the gateway would pass it."""
        if operation is not None and operation.service != service:
            raise ValueError(f"the operation is a {operation.service} operation, not {service}")
        refused = self._refused(
            subject, asset, lambda: describe_opcua_request(service, operation, namespaces, browse_path), now
        )
        if refused is not None:
            return refused
        view = self.view(subject, asset)
        assert view is not None
        return explain_opcua_view(view, service, operation, namespaces, now, self.source, browse_path)

    def _refused(
        self, subject: str, asset: str, describe: Callable[[], str], now: float
    ) -> Explanation | None:
        """Why no session of ``subject`` to ``asset`` would exist (in the gateway's order: the asset
        cloaked, then a session deny rule), or None when one would."""
        if self.view(subject, asset) is None:
            known = asset in self.assets
            return cloaked_explanation(subject, asset, known, describe(), now, self.source, self.revision)
        rule = self.session_denial(subject, asset)
        if rule is not None:
            return session_denied_explanation(rule, subject, describe(), now, self.source, self.revision)
        return None

    def __repr__(self) -> str:
        return f"Policy({self.source!r}, revision={self.revision}, rules={len(self.rules)})"


def _revision(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def parse_policy(text: str, source: str = "<policy>", *, revision: str | None = None) -> Policy:
    """Load a policy from text. Raises :class:`PolicyError` listing every problem.

    ``revision`` names it (a center's revision number); by default it is a hash of the text."""
    model = parse_model(text, source)
    if revision is None:
        revision = _revision(text.encode("utf-8", "surrogatepass"))
    return Policy(model, revision, source)


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Load a policy file. Raises :class:`PolicyError` listing every problem (or why it cannot be read)."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as file:
            data = file.read()
    except OSError as error:
        raise PolicyError(
            [PolicyIssue(source, None, None, "", f"cannot read the file: {error.strerror}")]
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise PolicyError(
            [PolicyIssue(source, line, None, "", "not UTF-8 text (TOML files are UTF-8)")]
        ) from None
    return Policy(parse_model(text, source), _revision(data), source)
