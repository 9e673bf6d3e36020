"""Checking ``modbus = [...]`` entries: function codes and presets, sub-functions, unit, address, file
and value ranges (docs/policy.md, "Modbus entries")."""

from __future__ import annotations

from typing import cast

from policies.assets import UNIT_BOUNDS
from policies.errors import FieldPath
from policies.fields import FieldChecker
from policies.model import EVERY_FUNCTION_CODE, SUBFUNCTION_CODES, ModbusEntry
from policies.ranges import IntervalSet
from protocols.modbus import spec

__all__ = ["EVERY_FC", "PRESETS", "ModbusEntryChecks"]

PRESETS: dict[str, frozenset[int]] = {
    "read-only": frozenset(spec.PRESET_READ_ONLY),
    "read-write": frozenset(spec.PRESET_READ_WRITE),
}

_KEYS = ("fc", "preset", "subfunction", "unit", "address", "file", "value")
_KEY_SET = frozenset(_KEYS)

# Field bounds: (low, high) of every number a range field may hold.
_ADDRESS_BOUNDS = (0, spec.ADDRESS_SPACE - 1)
_FILE_BOUNDS = (0, 0xFFFF)
_VALUE_BOUNDS = (0, 0xFFFF)
_SUBFUNCTION_BOUNDS = (0, 0xFFFF)
_FC_BOUNDS = (1, 127)  # 128..255 are exception responses, never requests
EVERY_FC = "*"  # fc = "*": every function code, 1..127, and every sub-function of FC 8 and 43
_RANGE_BOUNDS = {
    "subfunction": _SUBFUNCTION_BOUNDS,
    "unit": UNIT_BOUNDS,
    "address": _ADDRESS_BOUNDS,
    "file": _FILE_BOUNDS,
    "value": _VALUE_BOUNDS,
}


class ModbusEntryChecks(FieldChecker):
    def __init__(self) -> None:
        super().__init__()
        # Large files repeat entries: each distinct one is checked once.
        self._modbus_memo: dict[str, ModbusEntry] = {}

    def modbus_entry(self, value: object, path: FieldPath) -> ModbusEntry | None:
        table = self.table(value, path)
        if table is None:
            return None
        key = repr(table)
        known = self._modbus_memo.get(key)
        if known is not None:
            return known
        before = len(self.problems)
        if not table.keys() <= _KEY_SET:
            self.keys(table, path, _KEYS)
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
        every = table.get("fc") == EVERY_FC
        if every and "subfunction" not in table:
            fields["subfunction"] = IntervalSet.single(*_SUBFUNCTION_BOUNDS)
        per_subfunction = codes & SUBFUNCTION_CODES
        if per_subfunction and "subfunction" not in fields:
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
        self._modbus_memo[key] = entry
        return entry

    def function_codes(self, value: object, entry_path: FieldPath) -> list[int]:
        if type(value) is int and 1 <= value <= 127:
            return [value]
        if value == EVERY_FC:
            return sorted(EVERY_FUNCTION_CODE)
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
            if isinstance(item, str):
                self.error(
                    item_path, f'{item!r}: a function code is a number (1..127); fc = "*" names every one'
                )
                continue
            code = self.integer(item, item_path, *_FC_BOUNDS)
            if code is not None:
                codes.append(code)
        return codes
