"""Policy text -> validated :class:`~policies.model.PolicyModel`, with every problem collected.

The loader never stops at the first mistake: each field is checked on its own and reported under its
path (``rules[2].modbus[1].address``) with the offending value quoted and what was expected. Only a
file without problems produces a model. Unknown keys are errors everywhere, because a misspelt key
that is silently ignored would widen or narrow access without anyone noticing.

Large files repeat themselves (the same entry, range, subject or window in many rules), so valid
results are memoised by their source text: a 10,000-rule file validates each distinct piece once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TypeVar

from policies import toml
from policies.assets import AssetChecks
from policies.enip.entries import EnipEntryChecks
from policies.errors import FieldPath, PolicyError, PolicyIssue, format_path, quote, syntax_issue
from policies.fields import expected
from policies.locator import LineLocator
from policies.modbus.entries import ModbusEntryChecks
from policies.model import (
    EFFECTS,
    MODES,
    SCOPES,
    TEST_EXPECTATIONS,
    EnipEntry,
    ModbusEntry,
    OpcuaEntry,
    PolicyModel,
    PolicyTest,
    Rule,
    VendorAccess,
)
from policies.opcua.entries import OpcuaEntryChecks
from policies.subjects import GROUP_PREFIX, check_group_name, check_subject, check_trust_domain
from policies.timewindow import (
    Period,
    TimeWindow,
    Window,
    parse_days,
    parse_hours,
    parse_instant,
    parse_time_zone,
)

__all__ = ["check_entry", "parse_model"]

T = TypeVar("T")
Entry = ModbusEntry | EnipEntry | OpcuaEntry

_TOP_KEYS = ("trust_domain", "assets", "groups", "rules", "tests", "vendor_access")
_VENDOR_KEYS = ("subjects", "assets", "max_window_s", "approvers", "modbus", "enip", "opcua")
# What a vendor may ask for, per protocol: the fields an operation of a grant names
# (gateway/center/grant_ops.py), which are all a grant is checked against, and an example entry.
_VENDOR_ENTRY_KEYS: dict[str, tuple[tuple[str, ...], str]] = {
    "modbus": (("fc", "preset", "address", "value"), '[{ fc = 3, address = "0-99" }]'),
    "enip": (("service", "preset", "tag", "value"), '[{ preset = "read-only", tag = "Line1.*" }]'),
    "opcua": (
        ("service", "service_set", "preset", "namespace", "node", "value"),
        '[{ service = "Read", node = "nsu=urn:plant1:line1;s=Line1.*" }]',
    ),
}
MAX_APPROVERS = 5
MAX_GRANT_WINDOW_S = 31 * 86400
_TEST_KEYS = ("name", "subject", "asset", "request", "expect", "rule", "at")
_RULE_KEYS = (
    "id",
    "description",
    "effect",
    "scope",
    "mode",
    "subjects",
    "assets",
    "when",
    "modbus",
    "enip",
    "opcua",
)
_RULE_KEY_SET = frozenset(_RULE_KEYS)
_WHEN_KEYS = ("days", "hours", "tz", "from", "until")
_PERIOD_KEYS = frozenset(("from", "until"))

_RULE_ID = re.compile(r"[!-~]+")  # printable ASCII without spaces: ids end up in audit records and logs


def parse_model(text: str, source: str) -> PolicyModel:
    """Parse and validate policy text. Raises :class:`PolicyError` listing every problem."""
    try:
        data = toml.loads(text)
    except toml.TOMLDecodeError as error:
        raise PolicyError([syntax_issue(source, text, error)]) from None
    except ValueError as error:
        # The parser lets int()'s own refusal of numbers with thousands of digits escape as it is.
        raise PolicyError([PolicyIssue(source, None, None, "", f"TOML syntax: {error}")]) from None
    loader = _Loader()
    model = loader.load(data)
    if loader.problems:
        locator = LineLocator(text)
        raise PolicyError(
            PolicyIssue(source, locator.line_of(path), None, format_path(path), message)
            for path, message in loader.problems
        )
    assert model is not None
    return model


def check_entry(protocol: str, table: dict[str, object]) -> tuple[Entry | None, list[str]]:
    """One ``modbus``, ``enip`` or ``opcua`` entry, checked as a rule's entry is: the model's entry, or
    the problems, each ``field: message`` (a just-in-time grant's operations become such entries)."""
    loader = _Loader()
    checks: dict[str, Callable[[object, FieldPath], Entry | None]] = {
        "modbus": loader.modbus_entry,
        "enip": loader.enip_entry,
        "opcua": loader.opcua_entry,
    }
    entry = checks[protocol](table, ())
    problems = [f"{format_path(path)}: {message}" if path else message for path, message in loader.problems]
    return (entry if not problems else None), problems


class _Loader(AssetChecks, ModbusEntryChecks, EnipEntryChecks, OpcuaEntryChecks):
    def __init__(self) -> None:
        super().__init__()
        self._subject_memo: dict[str, str | None] = {}
        self._subjects_ok: set[str] = set()  # ids, patterns and group references already checked
        self._window_memo: dict[str, Window] = {}
        self._protocols: dict[str, str] = {}

    # --------------------------------------------------------------------------------- top level

    def load(self, data: dict[str, object]) -> PolicyModel | None:
        self.keys(data, (), _TOP_KEYS)
        trust_domain: str | None = None
        if "trust_domain" not in data:
            self.error(
                ("trust_domain",), 'missing: the SPIFFE trust domain of every identity, e.g. "plant1.example"'
            )
        else:
            trust_domain = self.string(data["trust_domain"], ("trust_domain",))
            if trust_domain is not None:
                problem = check_trust_domain(trust_domain)
                if problem is not None:
                    self.error(("trust_domain",), problem)
                    trust_domain = None
        declared_assets, assets = self.assets(data.get("assets", {}))
        self._protocols = {name: asset.protocol for name, asset in assets.items()}
        groups = self.groups(data.get("groups", {}), trust_domain)
        rules = self.rules(data.get("rules", []), trust_domain, declared_assets, groups)
        tests = self.tests(data.get("tests", []), trust_domain, declared_assets, {r.id for r in rules})
        vendor_access = (
            self.vendor_access(data["vendor_access"], trust_domain, declared_assets, groups)
            if "vendor_access" in data
            else None
        )
        if self.problems or trust_domain is None:
            return None
        return PolicyModel(
            trust_domain=trust_domain,
            assets=MappingProxyType(assets),
            groups=MappingProxyType(groups),
            rules=tuple(rules),
            tests=tuple(tests),
            vendor_access=vendor_access,
        )

    # ----------------------------------------------------------------------------- vendor access

    def vendor_access(
        self,
        value: object,
        trust_domain: str | None,
        assets: set[str],
        groups: dict[str, tuple[str, ...]],
    ) -> VendorAccess | None:
        """``[vendor_access]``: who may ask for a just-in-time grant, on which assets, for which
        operations, for how long at most, and how many approvers must say yes."""
        path: FieldPath = ("vendor_access",)
        table = self.table(value, path)
        if table is None:
            return None
        before = len(self.problems)
        self.keys(table, path, _VENDOR_KEYS)
        for required in ("subjects", "assets", "max_window_s"):
            if required not in table:
                self.error(path, f'missing required key "{required}"')
        subjects = (
            self.rule_subjects(table["subjects"], path, trust_domain, groups) if "subjects" in table else []
        )
        names = self.rule_assets(table["assets"], path, assets) if "assets" in table else []
        max_window_s = (
            self.integer(table["max_window_s"], (*path, "max_window_s"), 1, MAX_GRANT_WINDOW_S)
            if "max_window_s" in table
            else None
        )
        approvers = self.integer(table.get("approvers", 1), (*path, "approvers"), 1, MAX_APPROVERS)
        modbus = self.vendor_entries(table, "modbus", self.modbus_entry)
        enip = self.vendor_entries(table, "enip", self.enip_entry)
        opcua = self.vendor_entries(table, "opcua", self.opcua_entry)
        if len(self.problems) > before:
            return None
        assert max_window_s is not None and approvers is not None
        return VendorAccess(
            tuple(subjects),
            tuple(names),
            float(max_window_s),
            approvers,
            tuple(modbus),
            tuple(enip),
            tuple(opcua),
        )

    def vendor_entries(
        self, table: dict[str, object], protocol: str, check: Callable[[object, FieldPath], T | None]
    ) -> list[T]:
        """``[vendor_access].<protocol>``: the protocol's own entries, naming only the fields that an
        operation of a grant can name."""
        path: FieldPath = ("vendor_access",)
        keys, example = _VENDOR_ENTRY_KEYS[protocol]
        given = table.get(protocol)
        for index, entry in enumerate(given if isinstance(given, list) else []):
            if isinstance(entry, dict) and not entry.keys() <= frozenset(keys):
                extra = ", ".join(sorted(entry.keys() - frozenset(keys)))
                self.error(
                    (*path, protocol, index),
                    f"{extra}: what a vendor may ask for names {', '.join(keys[:-1])} and {keys[-1]} only",
                )
        return self.entry_list(table, path, protocol, check, example)

    # ------------------------------------------------------------------------------------- tests

    def tests(
        self, value: object, trust_domain: str | None, assets: set[str], rule_ids: set[str]
    ) -> list[PolicyTest]:
        if not isinstance(value, list):
            self.error(("tests",), expected(value, "an array of tables ([[tests]])"))
            return []
        found: list[PolicyTest] = []
        names: set[str] = set()
        for index, body in enumerate(value):
            path: FieldPath = ("tests", index)
            table = self.table(body, path)
            if table is None:
                continue
            before = len(self.problems)
            self.keys(table, path, _TEST_KEYS)
            missing = [key for key in ("name", "subject", "asset", "request", "expect") if key not in table]
            for key in missing:
                self.error(path, f'missing required key "{key}"')
            if missing:
                continue
            name = self.string(table["name"], (*path, "name"))
            if name is not None and name in names:
                self.error((*path, "name"), f"another test is named {quote(name)}")
            names.add(name or "")
            subject = self.string(table["subject"], (*path, "subject"))
            if subject is not None and trust_domain is not None:
                problem = check_subject(subject, trust_domain)
                if problem is None and "*" in subject:
                    problem = "a test's subject is one SPIFFE id, not a pattern"
                if problem is not None:
                    self.error((*path, "subject"), problem)
            asset = self.string(table["asset"], (*path, "asset"))
            if asset is not None and asset not in assets:
                self.error((*path, "asset"), f"{quote(asset)}: no such asset")
            request = self.table(table["request"], (*path, "request"))
            expect = self.choice(table["expect"], (*path, "expect"), TEST_EXPECTATIONS)
            rule = self.string(table["rule"], (*path, "rule")) if "rule" in table else None
            if rule is not None and rule not in rule_ids:
                self.error((*path, "rule"), f"{quote(rule)}: no rule has this id")
            at = self.string(table["at"], (*path, "at")) if "at" in table else None
            if len(self.problems) > before:
                continue
            assert name is not None and subject is not None and asset is not None
            assert request is not None and expect is not None
            found.append(
                PolicyTest(index, name, subject, asset, MappingProxyType(dict(request)), expect, rule, at)
            )
        return found

    # ------------------------------------------------------------------------------------ groups

    def groups(self, value: object, trust_domain: str | None) -> dict[str, tuple[str, ...]]:
        table = self.table(value, ("groups",))
        groups: dict[str, tuple[str, ...]] = {}
        if table is None:
            return groups
        for name, members in table.items():
            path: FieldPath = ("groups", name)
            problem = check_group_name(name)
            if problem is not None:
                self.error(path, problem)
            if not isinstance(members, list):
                self.error(path, expected(members, "an array of SPIFFE ids and patterns"))
                continue
            valid: list[str] = []
            for index, member in enumerate(members):
                if not isinstance(member, str):
                    self.error((*path, index), expected(member, "a SPIFFE id or pattern string"))
                elif member.startswith(GROUP_PREFIX):
                    self.error((*path, index), f"{quote(member)}: a group may not name another group")
                elif self.subject(member, (*path, index), trust_domain):
                    valid.append(member)
            groups[name] = tuple(valid)
        return groups

    def subject(self, text: str, path: FieldPath, trust_domain: str | None) -> bool:
        if trust_domain is None:
            return False  # already reported; every id would be "outside" an unknown domain
        if text in self._subject_memo:
            problem = self._subject_memo[text]
        else:
            problem = self._subject_memo[text] = check_subject(text, trust_domain)
        if problem is not None:
            self.error(path, problem)
            return False
        self._subjects_ok.add(text)
        return True

    # ------------------------------------------------------------------------------------- rules

    def rules(
        self, value: object, trust_domain: str | None, assets: set[str], groups: dict[str, tuple[str, ...]]
    ) -> list[Rule]:
        if not isinstance(value, list):
            self.error(("rules",), expected(value, "an array of tables ([[rules]])"))
            return []
        rules: list[Rule] = []
        first_use: dict[str, int] = {}
        for index, body in enumerate(value):
            rule = self.rule(index, body, trust_domain, assets, groups, first_use)
            if rule is not None:
                rules.append(rule)
        return rules

    def rule(
        self,
        index: int,
        value: object,
        trust_domain: str | None,
        assets: set[str],
        groups: dict[str, tuple[str, ...]],
        first_use: dict[str, int],
    ) -> Rule | None:
        # Written for the common case of a valid rule: plain checks first, and a field's path is only
        # built when there is a problem to report under it.
        path: FieldPath = ("rules", index)
        table = self.table(value, path)
        if table is None:
            return None
        before = len(self.problems)
        if not table.keys() <= _RULE_KEY_SET:
            self.keys(table, path, _RULE_KEYS)
        for required in ("id", "subjects", "assets"):
            if required not in table:
                self.error(path, f'missing required key "{required}"')
        rule_id = self.rule_id(table["id"], (*path, "id"), index, first_use) if "id" in table else None
        description = table.get("description", "")
        if type(description) is not str:
            description = self.string(description, (*path, "description"))
        effect = table.get("effect", "allow")
        if effect != "allow" and effect != "deny":  # noqa: PLR1714 (the value may be unhashable)
            effect = self.choice(effect, (*path, "effect"), EFFECTS)
        mode = table.get("mode", "enforce")
        if mode != "enforce" and mode != "monitor":  # noqa: PLR1714
            mode = self.choice(mode, (*path, "mode"), MODES)
        subjects = (
            self.rule_subjects(table["subjects"], path, trust_domain, groups) if "subjects" in table else []
        )
        asset_names = self.rule_assets(table["assets"], path, assets) if "assets" in table else []
        window = self.when(table["when"], (*path, "when")) if "when" in table else None
        modbus = self.entry_list(table, path, "modbus", self.modbus_entry, '[{ fc = 3, address = "0-99" }]')
        enip = self.entry_list(
            table, path, "enip", self.enip_entry, '[{ service = "read_tag", tag = "Line1.*" }]'
        )
        opcua = self.entry_list(
            table, path, "opcua", self.opcua_entry, '[{ preset = "read-only", node = "Plant.Line1.*" }]'
        )
        self.check_protocols(path, asset_names, {"modbus": modbus, "enip": enip, "opcua": opcua})
        scope = table.get("scope", "request")
        if scope != "request":
            scope = self.session_scope(table, path, scope, effect, mode)
        if len(self.problems) > before:
            return None
        assert rule_id is not None and description is not None and effect is not None and mode is not None
        assert scope is not None
        return Rule(
            index,
            rule_id,
            tuple(subjects),
            tuple(asset_names),
            effect,
            mode,
            description,
            window,
            tuple(modbus),
            tuple(enip),
            tuple(opcua),
            scope,
        )

    def session_scope(
        self, table: dict[str, object], path: FieldPath, scope: object, effect: str | None, mode: str | None
    ) -> str | None:
        """``scope = "session"``: a deny rule for whole sessions, so nothing of a request's to match on."""
        checked = self.choice(scope, (*path, "scope"), SCOPES)
        if checked != "session":
            return checked
        if effect != "deny":
            self.error((*path, "scope"), 'scope = "session" is for deny rules (effect = "deny")')
        if mode == "monitor":
            self.error((*path, "scope"), 'scope = "session" cuts sessions: it cannot be in mode "monitor"')
        for key in ("modbus", "enip", "opcua", "when"):
            if key in table:
                self.error(
                    (*path, key), f'a scope = "session" rule denies whole sessions: it takes no "{key}"'
                )
        return checked

    def entry_list(
        self,
        table: dict[str, object],
        rule_path: FieldPath,
        key: str,
        check: Callable[[object, FieldPath], T | None],
        example: str,
    ) -> list[T]:
        if key not in table:
            return []
        value = table[key]
        if not isinstance(value, list):
            self.error((*rule_path, key), expected(value, f"an array of inline tables such as {example}"))
            return []
        entries: list[T] = []
        for item, entry_value in enumerate(value):
            entry = check(entry_value, (*rule_path, key, item))
            if entry is not None:
                entries.append(entry)
        return entries

    def check_protocols(
        self, rule_path: FieldPath, asset_names: list[str], entries: Mapping[str, Sequence[object]]
    ) -> None:
        """Entries for a protocol none of the rule's assets speaks would never apply: say so."""
        if not asset_names or "*" in asset_names:
            return
        protocols = {self._protocols.get(name) for name in asset_names}
        if None in protocols:
            return  # an asset with errors of its own: its protocol is unknown
        for key, found in entries.items():
            if found and key not in protocols:
                speaks = ", ".join(sorted(f"{name} is {self._protocols[name]}" for name in asset_names))
                self.error((*rule_path, key), f"none of the rule's assets speaks {key} ({speaks})")

    def rule_subjects(
        self,
        value: object,
        rule_path: FieldPath,
        trust_domain: str | None,
        groups: dict[str, tuple[str, ...]],
    ) -> list[str]:
        if (
            type(value) is list
            and value
            and all(type(item) is str and item in self._subjects_ok for item in value)
        ):
            return value
        path = (*rule_path, "subjects")
        subjects: list[str] = []
        for item, text in self.string_list(value, path, "ids, patterns and group: references"):
            if text.startswith(GROUP_PREFIX):
                if text[len(GROUP_PREFIX) :] in groups:
                    subjects.append(text)
                    self._subjects_ok.add(text)
                else:
                    known = ", ".join(sorted(groups)) or "none defined"
                    self.error((*path, item), f"{quote(text)}: no such group (groups: {known})")
            elif self.subject(text, (*path, item), trust_domain):
                subjects.append(text)
        return subjects

    def rule_assets(self, value: object, rule_path: FieldPath, assets: set[str]) -> list[str]:
        if (
            type(value) is list
            and value
            and all(type(name) is str and (name in assets or name == "*") for name in value)
        ):
            return value
        path = (*rule_path, "assets")
        names: list[str] = []
        for item, name in self.string_list(value, path, 'asset names or "*"'):
            if name == "*" or name in assets:
                names.append(name)
            else:
                known = ", ".join(sorted(assets)) or "none defined"
                self.error((*path, item), f'{quote(name)}: no such asset (assets: {known}; "*" means all)')
        return names

    def rule_id(self, value: object, path: FieldPath, index: int, first_use: dict[str, int]) -> str | None:
        text = self.string(value, path)
        if text is None:
            return None
        if _RULE_ID.fullmatch(text) is None:
            self.error(
                path, f"{quote(text)}: a rule id is a non-empty string of printable ASCII without spaces"
            )
            return None
        first = first_use.setdefault(text, index)
        if first != index:
            self.error(path, f"duplicate rule id {quote(text)} (first used by rules[{first}])")
            return None
        return text

    def when(self, value: object, path: FieldPath) -> Window | None:
        table = self.table(value, path)
        if table is None:
            return None
        key = repr(table)
        known = self._window_memo.get(key)
        if known is not None:
            return known
        before = len(self.problems)
        self.keys(table, path, _WHEN_KEYS)
        if table.keys() & _PERIOD_KEYS:
            return self.period(table, path, key)
        days: frozenset[int] | None = frozenset(range(7))
        hours: tuple[int, int] | None = (0, 24 * 60)
        tz: str | None = "UTC"
        if "days" in table:
            days, problem = parse_days(table["days"])
            if problem is not None:
                self.error((*path, "days"), problem)
        if "hours" in table:
            hours, problem = parse_hours(table["hours"])
            if problem is not None:
                self.error((*path, "hours"), problem)
        if "tz" in table:
            tz, problem = parse_time_zone(table["tz"])
            if problem is not None:
                self.error((*path, "tz"), problem)
        if len(self.problems) > before:
            return None
        assert days is not None and hours is not None and tz is not None
        window = self._window_memo[key] = TimeWindow(days, hours[0], hours[1], tz)
        return window

    def period(self, table: dict[str, object], path: FieldPath, key: str) -> Period | None:
        """``when = { from = ..., until = ... }``: open once, between two instants (a grant's rule)."""
        before = len(self.problems)
        if not table.keys() <= _PERIOD_KEYS or len(table) != 2:
            self.error(path, 'a period is "from" and "until" together, without "days", "hours" or "tz"')
            return None
        bounds: list[float] = []
        for name in ("from", "until"):
            instant, problem = parse_instant(table[name])
            if problem is not None:
                self.error((*path, name), problem)
            elif instant is not None:
                bounds.append(instant)
        if len(self.problems) > before:
            return None
        if bounds[1] <= bounds[0]:
            self.error((*path, "until"), '"until" must come after "from"')
            return None
        period = Period(bounds[0], bounds[1])
        self._window_memo[key] = period
        return period
