"""The validated policy: assets, groups and rules as typed, immutable values.

The loader builds these only from input it has checked, so everything downstream (compiler,
evaluator, explanations, the reference evaluator in the tests) can rely on their invariants: ids are
in the trust domain, group references resolve, rule ids are unique, FC 8/43 entries list their
sub-functions, every range is inside its field's bounds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from policies.ranges import IntervalSet
from policies.timewindow import TimeWindow

__all__ = [
    "DENY_ACTIONS",
    "EFFECTS",
    "MODES",
    "PROTOCOLS",
    "SUBFUNCTION_CODES",
    "Asset",
    "DenyAction",
    "ModbusEntry",
    "PolicyModel",
    "Rule",
]

PROTOCOLS = ("modbus",)
MODES = ("enforce", "monitor")
EFFECTS = ("allow", "deny")
DENY_ACTIONS = ("exception", "drop", "close")
# FC 8 (Diagnostics) and FC 43 (Encapsulated Interface Transport) are decided per sub-function / MEI
# type: their sub-functions range from harmless counters to "force listen-only mode".
SUBFUNCTION_CODES = frozenset((8, 43))


@dataclass(frozen=True, slots=True)
class DenyAction:
    """How a refusal looks on the wire, and the exception codes for each kind of refusal."""

    action: str = "exception"
    function: int = 1
    address: int = 2
    value: int = 3


@dataclass(frozen=True, slots=True)
class Asset:
    """A device behind the gateway. Equal when every setting is; hashed by name (``unit_map`` is a
    read-only mapping, which cannot be hashed)."""

    name: str
    protocol: str
    upstream_host: str
    upstream_port: int
    unit_ids: frozenset[int] = frozenset((1,))
    unit_map: Mapping[int, int] = field(default_factory=lambda: MappingProxyType({}))
    mode: str = "enforce"
    deny: DenyAction = DenyAction()
    max_connections: int = 1
    max_in_flight: int = 1
    queue_limit: int = 64
    connect_timeout_s: float = 3.0
    response_timeout_s: float = 2.0

    def __hash__(self) -> int:
        return hash(self.name)

    def device_unit(self, unit: int) -> int:
        """The unit id to use towards the device for a client's unit id."""
        return self.unit_map.get(unit, unit)


@dataclass(frozen=True, slots=True)
class ModbusEntry:
    """One ``modbus = [...]`` entry. ``None`` means the entry does not name that field."""

    function_codes: frozenset[int]
    subfunctions: IntervalSet | None = None
    units: IntervalSet | None = None
    addresses: IntervalSet | None = None
    files: IntervalSet | None = None
    values: IntervalSet | None = None

    def describe(self) -> str:
        """The entry in policy-like notation, for explanations."""
        parts = ["fc " + ", ".join(str(fc) for fc in sorted(self.function_codes))]
        for name, ranges in (
            ("subfunction", self.subfunctions),
            ("unit", self.units),
            ("address", self.addresses),
            ("file", self.files),
            ("value", self.values),
        ):
            if ranges is not None:
                parts.append(f"{name} {ranges}")
        return "; ".join(parts)


@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    """One ``[[rules]]`` table. ``index`` is its position in the file (0-based)."""

    index: int
    id: str
    subjects: tuple[str, ...]
    assets: tuple[str, ...]  # asset names, or ("*",) for every asset
    effect: str = "allow"
    mode: str = "enforce"
    description: str = ""
    window: TimeWindow | None = None
    modbus: tuple[ModbusEntry, ...] = ()


@dataclass(frozen=True, slots=True, eq=False)
class PolicyModel:
    trust_domain: str
    assets: Mapping[str, Asset]
    groups: Mapping[str, tuple[str, ...]]
    rules: tuple[Rule, ...]
