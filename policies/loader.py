"""Policy text -> validated :class:`~policies.model.PolicyModel`, with every problem collected.

The loader never stops at the first mistake: each field is checked on its own and reported under its
path (``rules[2].modbus[1].address``) with the offending value quoted and what was expected. Only a
file without problems produces a model. Unknown keys are errors everywhere, because a misspelt key
that is silently ignored would widen or narrow access without anyone noticing.

Large files repeat themselves (the same entry, range, subject or window in many rules), so valid
results are memoised by their source text: a 10,000-rule file validates each distinct piece once.
"""

from __future__ import annotations

import ipaddress
import re
from types import MappingProxyType
from typing import cast

from policies import toml
from policies.errors import FieldPath, PolicyError, PolicyIssue, format_path, quote, syntax_issue
from policies.fields import FieldChecker, expected
from policies.locator import LineLocator
from policies.model import (
    DENY_ACTIONS,
    EFFECTS,
    MODES,
    PROTOCOLS,
    SUBFUNCTION_CODES,
    Asset,
    DenyAction,
    ModbusEntry,
    PolicyModel,
    Rule,
)
from policies.ranges import IntervalSet
from policies.subjects import GROUP_PREFIX, check_group_name, check_subject, check_trust_domain
from policies.timewindow import TimeWindow, parse_days, parse_hours, parse_time_zone
from protocols.modbus import spec

__all__ = ["PRESETS", "parse_model"]

PRESETS: dict[str, frozenset[int]] = {
    "read-only": frozenset(spec.PRESET_READ_ONLY),
    "read-write": frozenset(spec.PRESET_READ_WRITE),
}

_TOP_KEYS = ("trust_domain", "assets", "groups", "rules")
_ASSET_KEYS = (
    "protocol",
    "upstream",
    "unit_ids",
    "unit_map",
    "mode",
    "deny",
    "max_connections",
    "max_in_flight",
    "queue_limit",
    "connect_timeout_s",
    "response_timeout_s",
)
_DENY_KEYS = ("action", "function", "address", "value")
_RULE_KEYS = ("id", "description", "effect", "mode", "subjects", "assets", "when", "modbus")
_RULE_KEY_SET = frozenset(_RULE_KEYS)
_WHEN_KEYS = ("days", "hours", "tz")
_ENTRY_KEYS = ("fc", "preset", "subfunction", "unit", "address", "file", "value")
_ENTRY_KEY_SET = frozenset(_ENTRY_KEYS)

_DNS_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_ASSET_NAME = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_HOST_NAME = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_RULE_ID = re.compile(r"[!-~]+")  # printable ASCII without spaces: ids end up in audit records and logs

# Field bounds: (low, high) of every number a range field may hold.
_UNIT_BOUNDS = (0, 255)
_ADDRESS_BOUNDS = (0, spec.ADDRESS_SPACE - 1)
_FILE_BOUNDS = (0, 0xFFFF)
_VALUE_BOUNDS = (0, 0xFFFF)
_SUBFUNCTION_BOUNDS = (0, 0xFFFF)
_FC_BOUNDS = (1, 127)  # 128..255 are exception responses, never requests
_RANGE_BOUNDS = {
    "subfunction": _SUBFUNCTION_BOUNDS,
    "unit": _UNIT_BOUNDS,
    "address": _ADDRESS_BOUNDS,
    "file": _FILE_BOUNDS,
    "value": _VALUE_BOUNDS,
}


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


class _Loader(FieldChecker):
    def __init__(self) -> None:
        super().__init__()
        self._subject_memo: dict[str, str | None] = {}
        self._subjects_ok: set[str] = set()  # ids, patterns and group references already checked
        self._entry_memo: dict[str, ModbusEntry] = {}
        self._window_memo: dict[str, TimeWindow] = {}

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
        groups = self.groups(data.get("groups", {}), trust_domain)
        rules = self.rules(data.get("rules", []), trust_domain, declared_assets, groups)
        if self.problems or trust_domain is None:
            return None
        return PolicyModel(
            trust_domain=trust_domain,
            assets=MappingProxyType(assets),
            groups=MappingProxyType(groups),
            rules=tuple(rules),
        )

    # ------------------------------------------------------------------------------------ assets

    def assets(self, value: object) -> tuple[set[str], dict[str, Asset]]:
        table = self.table(value, ("assets",))
        assets: dict[str, Asset] = {}
        if table is None:
            return set(), assets
        for name, body in table.items():
            asset = self.asset(name, body)
            if asset is not None:
                assets[name] = asset
        return set(table), assets

    def asset(self, name: str, value: object) -> Asset | None:
        path: FieldPath = ("assets", name)
        before = len(self.problems)
        if _ASSET_NAME.fullmatch(name) is None or len(name) > 253:
            self.error(
                path,
                f"asset name {quote(name)}: expected DNS labels of lower-case letters, digits and"
                f' "-" joined by "." (e.g. "plc-1", "line1.press-3")',
            )
        table = self.table(value, path)
        if table is None:
            return None
        self.keys(table, path, _ASSET_KEYS)
        for required in ("protocol", "upstream"):
            if required not in table:
                self.error(path, f'missing required key "{required}"')
        protocol = (
            self.choice(table["protocol"], (*path, "protocol"), PROTOCOLS) if "protocol" in table else None
        )
        upstream = self.upstream(table["upstream"], (*path, "upstream")) if "upstream" in table else None
        unit_set = (
            self.ranges(table["unit_ids"], path, "unit_ids", _UNIT_BOUNDS)
            if "unit_ids" in table
            else IntervalSet([(1, 1)])
        )
        unit_ids = (
            frozenset(u for low, high in unit_set.ranges for u in range(low, high + 1))
            if unit_set
            else frozenset()
        )
        unit_map = (
            self.unit_map(table["unit_map"], (*path, "unit_map"), unit_ids) if "unit_map" in table else {}
        )
        mode = self.optional(table, "mode", path, lambda v, p: self.choice(v, p, MODES), "enforce")
        deny = self.optional(table, "deny", path, self.deny_action, DenyAction())

        def count(key: str, low: int, high: int, default: int) -> int | None:
            return self.optional(table, key, path, lambda v, p: self.integer(v, p, low, high), default)

        def seconds(key: str, default: float) -> float | None:
            return self.optional(table, key, path, lambda v, p: self.seconds(v, p, 3600.0), default)

        max_connections = count("max_connections", 1, 1000, 1)
        max_in_flight = count("max_in_flight", 1, 1000, 1)
        queue_limit = count("queue_limit", 0, 100_000, 64)
        connect_timeout = seconds("connect_timeout_s", 3.0)
        response_timeout = seconds("response_timeout_s", 2.0)
        if len(self.problems) > before:
            return None
        assert protocol is not None and upstream is not None and unit_map is not None and mode is not None
        assert deny is not None and max_connections is not None and max_in_flight is not None
        assert queue_limit is not None and connect_timeout is not None and response_timeout is not None
        return Asset(
            name=name,
            protocol=protocol,
            upstream_host=upstream[0],
            upstream_port=upstream[1],
            unit_ids=unit_ids,
            unit_map=MappingProxyType(unit_map),
            mode=mode,
            deny=deny,
            max_connections=max_connections,
            max_in_flight=max_in_flight,
            queue_limit=queue_limit,
            connect_timeout_s=connect_timeout,
            response_timeout_s=response_timeout,
        )

    def upstream(self, value: object, path: FieldPath) -> tuple[str, int] | None:
        text = self.string(value, path)
        if text is None:
            return None
        expected = 'expected "host:port" (or "[v6addr]:port" for IPv6)'
        if text.startswith("["):
            host, sep, port = text[1:].partition("]:")
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                self.error(path, f"{quote(text)}: {quote(host)} is not an IPv6 address; {expected}")
                return None
        else:
            host, sep, port = text.rpartition(":")
            if ":" in host:
                self.error(path, f'{quote(text)}: write an IPv6 address in brackets, as "[{host}]:{port}"')
                return None
            if not sep or _HOST_NAME.fullmatch(host) is None:
                self.error(path, f"{quote(text)}: {expected}")
                return None
            if host.replace(".", "").isdigit():
                try:
                    ipaddress.IPv4Address(host)
                except ValueError:
                    self.error(path, f"{quote(text)}: {quote(host)} is not an IPv4 address")
                    return None
        # isascii: str.isdigit (and int) also accept other scripts' digits, which no one means here.
        if (
            not sep
            or not (port.isascii() and port.isdigit() and len(port) <= 5)
            or not 1 <= int(port) <= 65535
        ):
            self.error(path, f"{quote(text)}: the port must be a number in 1..65535; {expected}")
            return None
        return host, int(port)

    def unit_map(self, value: object, path: FieldPath, unit_ids: frozenset[int]) -> dict[int, int] | None:
        table = self.table(value, path)
        if table is None:
            return None
        out: dict[int, int] = {}
        for key, device in table.items():
            key_path = (*path, key)
            if not (key.isascii() and key.isdigit() and len(key) <= 3) or not 0 <= int(key) <= 255:
                self.error(
                    key_path, f'{quote(key)}: expected a client unit id in 0..255, as in {{ "1" = 17 }}'
                )
                continue
            if unit_ids and int(key) not in unit_ids:
                self.error(
                    key_path,
                    f"client unit {int(key)} is not in unit_ids ({', '.join(map(str, sorted(unit_ids)))})",
                )
                continue
            mapped = self.integer(device, key_path, *_UNIT_BOUNDS)
            if mapped is not None:
                out[int(key)] = mapped
        return out

    def deny_action(self, value: object, path: FieldPath) -> DenyAction | None:
        table = self.table(value, path)
        if table is None:
            return None
        before = len(self.problems)
        self.keys(table, path, _DENY_KEYS)
        action = self.optional(
            table, "action", path, lambda v, p: self.choice(v, p, DENY_ACTIONS), "exception"
        )

        def code(key: str, default: int) -> int | None:
            return self.optional(table, key, path, lambda v, p: self.integer(v, p, 1, 255), default)

        function, address, value_code = code("function", 1), code("address", 2), code("value", 3)
        if len(self.problems) > before:
            return None
        assert action is not None and function is not None and address is not None and value_code is not None
        return DenyAction(action, function, address, value_code)

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
        entries: list[ModbusEntry] = []
        if "modbus" in table:
            entries_value = table["modbus"]
            if isinstance(entries_value, list):
                for item, entry_value in enumerate(entries_value):
                    entry = self.entry(entry_value, (*path, "modbus", item))
                    if entry is not None:
                        entries.append(entry)
            else:
                self.error(
                    (*path, "modbus"),
                    expected(
                        entries_value, 'an array of inline tables such as [{ fc = 3, address = "0-99" }]'
                    ),
                )
        if len(self.problems) > before:
            return None
        assert rule_id is not None and description is not None and effect is not None and mode is not None
        return Rule(
            index,
            rule_id,
            tuple(subjects),
            tuple(asset_names),
            effect,
            mode,
            description,
            window,
            tuple(entries),
        )

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

    def when(self, value: object, path: FieldPath) -> TimeWindow | None:
        table = self.table(value, path)
        if table is None:
            return None
        key = repr(table)
        known = self._window_memo.get(key)
        if known is not None:
            return known
        before = len(self.problems)
        self.keys(table, path, _WHEN_KEYS)
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

    # --------------------------------------------------------------------------- modbus entries

    def entry(self, value: object, path: FieldPath) -> ModbusEntry | None:
        table = self.table(value, path)
        if table is None:
            return None
        key = repr(table)
        known = self._entry_memo.get(key)
        if known is not None:
            return known
        before = len(self.problems)
        if not table.keys() <= _ENTRY_KEY_SET:
            self.keys(table, path, _ENTRY_KEYS)
        codes: frozenset[int] = frozenset()
        if "fc" in table:
            codes = frozenset(self.function_codes(table["fc"], path))
        if "preset" in table:
            given = table["preset"]
            preset = (
                given
                if isinstance(given, str) and given in PRESETS
                else self.choice(given, (*path, "preset"), PRESETS)
            )
            if preset is not None:
                codes = codes | PRESETS[preset] if codes else PRESETS[preset]
        elif "fc" not in table:
            self.error(
                path,
                'names no function code: give "fc" (e.g. fc = [3, 6])'
                ' or "preset" ("read-only", "read-write")',
            )
        fields: dict[str, IntervalSet | None] = {}
        for name, field_value in table.items():
            bounds = _RANGE_BOUNDS.get(name)
            if bounds is not None:
                fields[name] = self.ranges(field_value, path, name, bounds)
        per_subfunction = codes & SUBFUNCTION_CODES
        if per_subfunction and "subfunction" not in table:
            named = " and ".join(f"FC {fc}" for fc in sorted(per_subfunction))
            self.error(path, f"{named} is decided per sub-function: list them, e.g. subfunction = [0, 11]")
        if "subfunction" in table and codes and not per_subfunction:
            self.error(
                (*path, "subfunction"), "applies only to FC 8 and FC 43, which this entry does not name"
            )
        if len(self.problems) > before:
            return None
        get = fields.get
        entry = ModbusEntry(codes, get("subfunction"), get("unit"), get("address"), get("file"), get("value"))
        self._entry_memo[key] = entry
        return entry

    def function_codes(self, value: object, entry_path: FieldPath) -> list[int]:
        if type(value) is int and 1 <= value <= 127:
            return [value]
        items = value if isinstance(value, list) else [value]
        # Nearly every file spells codes correctly: check that in one pass before the careful one
        # (``type(...) is int`` keeps booleans out, which ``isinstance`` would let in).
        if items and all(type(item) is int and 1 <= item <= 127 for item in items):
            return cast(list[int], items)
        path = (*entry_path, "fc")
        if isinstance(value, list) and not value:
            self.error(path, "the array is empty: name at least one function code")
        codes: list[int] = []
        for index, item in enumerate(items):
            item_path = (*path, index) if isinstance(value, list) else path
            code = self.integer(item, item_path, *_FC_BOUNDS)
            if code is not None:
                codes.append(code)
        return codes
