"""A just-in-time grant's operations, in each protocol's policy vocabulary: parsed from what the
vendor typed, turned into the rule entries they stand for, and checked against ``[vendor_access]``.

One grammar serves the three protocols; a table per protocol (:data:`VOCABULARIES`) says what its words
mean. ``--ops`` is a comma-separated list of operations, each ``VERB [ARGUMENT] TARGET [LOW..HIGH]``:

- the verb (``read``, ``write``, ...) stands for fixed fields of the entry (``fc = [6, 16]``,
  ``preset = "read-only"``, ``service = "Write"``); a verb with an argument names them itself
  (``fc 6,16``, ``service write_tag``, ``service Read,HistoryRead``);
- the target goes into the protocol's target field (Modbus ``address``, EtherNet/IP ``tag``, OPC UA
  ``node``); items that follow without a verb add targets to the operation before them (``read
  Setpoint, Line1.*``);
- bounds, last, go into ``value``, for verbs that write.

The entry is then checked by the policy loader's own check of a rule's entry (:func:`check_entry`), so
a grant's rule is an ordinary rule of its protocol, and a word the policy would refuse is refused with
the policy's reason. An operation may be asked for when, for each of its services (function codes),
one ``[vendor_access]`` entry of the protocol names that service and holds every target and the bounds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from policies.enip.entries import writes
from policies.enip.services import ServiceKey, describe_key
from policies.loader import Entry, check_entry
from policies.model import EnipEntry, ModbusEntry, OpcuaEntry, VendorAccess
from policies.ranges import IntervalSet

__all__ = [
    "MAX_OPS",
    "MAX_OPS_CHARS",
    "PROTOCOLS",
    "VOCABULARIES",
    "GrantError",
    "Operation",
    "parse_ops",
    "usage",
]

MAX_OPS_CHARS = 1000
MAX_OPS = 32
MAX_TARGETS = 64  # targets of one operation
_WRITING_FCS = frozenset((5, 6, 15, 16))
_OPCUA_WRITES = frozenset(("Write", "Call"))
_ARGUMENT_WORD = re.compile(r"[A-Za-z0-9_/]+", re.ASCII)  # a function code, a service or class/service


class GrantError(ValueError):
    """A request that cannot be granted as asked; the message says why. ``status`` 400: malformed or
    naming what does not exist; 403: outside what ``[vendor_access]`` lets be asked for."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Verb:
    """What one verb stands for: the entry's fixed ``fields``, or (``argument``) the name of the field
    its argument fills; whether it needs targets (``targets``: "required", "optional")."""

    fields: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    argument: str | None = None
    placeholder: str = ""  # the argument in usage messages
    targets: str = "required"


@dataclass(frozen=True)
class Vocabulary:
    """One protocol's words: its verbs, the entry field targets fill, how a target and a pair of bounds
    are written into the entry, and which of the entry's services an allowed entry must cover."""

    protocol: str
    verbs: Mapping[str, Verb]
    target: str
    example: str
    covers: Callable[[Any, Any], list[str]]  # (allowed entries, asked entry) -> services not covered
    writes: Callable[[Any], bool]  # whether an entry names a service that writes values
    spell: Callable[[str], object] = str  # a target or bounds word as the entry's field holds it


def _argument_list(word: str) -> list[object]:
    return [int(item) if item.isdigit() else item for item in word.split(",")]


def _modbus_span(word: str) -> str:
    # The policy writes Modbus ranges "A-B"; grants have always taken "A..B" too.
    return word.replace("..", "-")


def _modbus_covers(allowed: tuple[ModbusEntry, ...], asked: ModbusEntry) -> list[str]:
    def holds(entry: ModbusEntry, code: int) -> bool:
        if code not in entry.function_codes or not _within(entry.addresses, asked.addresses):
            return False
        if code not in _WRITING_FCS or entry.values is None:
            return True
        return asked.values is not None and _within(entry.values, asked.values)

    codes = sorted(asked.function_codes)
    return [f"FC {code}" for code in codes if not any(holds(entry, code) for entry in allowed)]


def _within(allowed: IntervalSet | None, asked: IntervalSet | None) -> bool:
    if allowed is None:
        return True
    return asked is not None and all(allowed.contains_span(low, high) for low, high in asked.ranges)


def _enip_covers(allowed: tuple[EnipEntry, ...], asked: EnipEntry) -> list[str]:
    def holds(entry: EnipEntry, key: ServiceKey) -> bool:
        if key not in entry.services:
            return False
        if entry.tags is not None and (
            asked.tags is None or not all(any(p.includes(t) for p in entry.tags) for t in asked.tags)
        ):
            return False
        if not writes(key) or entry.values is None:
            return True
        return asked.values is not None and entry.values.includes(asked.values)

    keys = sorted(asked.services, key=lambda key: (key[0] or 0, key[1]))
    return [describe_key(key) for key in keys if not any(holds(entry, key) for entry in allowed)]


def _opcua_covers(allowed: tuple[OpcuaEntry, ...], asked: OpcuaEntry) -> list[str]:
    def holds(entry: OpcuaEntry, service: str) -> bool:
        if service not in entry.services:
            return False
        if entry.nodes is not None and (
            asked.nodes is None or not all(any(p.includes(n) for p in entry.nodes) for n in asked.nodes)
        ):
            return False
        if service not in _OPCUA_WRITES or entry.values is None:
            return True
        return asked.values is not None and entry.values.includes(asked.values)

    return [name for name in sorted(asked.services) if not any(holds(entry, name) for entry in allowed)]


def _fixed(**fields: object) -> Mapping[str, object]:
    return MappingProxyType(fields)


# The verbs stand for the fields a standing rule of the protocol writes (docs/policy.md): Modbus function
# codes, EtherNet/IP's read-only preset (tag reads, and the connection and identity services a client
# needs to reach them) and tag writes, OPC UA services and service sets.
VOCABULARIES: Mapping[str, Vocabulary] = MappingProxyType(
    {
        "modbus": Vocabulary(
            "modbus",
            {
                "read": Verb(_fixed(fc=[1, 2, 3, 4])),
                "write": Verb(_fixed(fc=[6, 16])),
                "write-coils": Verb(_fixed(fc=[5, 15])),
                "fc": Verb(argument="fc", placeholder="CODES"),
            },
            "address",
            "read 40001-40100, write 40010 0..1500",
            _modbus_covers,
            lambda entry: bool(entry.function_codes & _WRITING_FCS),
            _modbus_span,
        ),
        "enip": Vocabulary(
            "enip",
            {
                "read": Verb(_fixed(preset="read-only")),
                "write": Verb(_fixed(service=["write_tag", "write_tag_fragmented"])),
                "service": Verb(argument="service", placeholder="NAMES"),
            },
            "tag",
            "read Setpoint, Line1.*, write Setpoint 0..1500",
            _enip_covers,
            lambda entry: any(writes(key) for key in entry.services),
        ),
        "opcua": Vocabulary(
            "opcua",
            {
                "read": Verb(_fixed(service=["Read"])),
                "write": Verb(_fixed(service=["Write"])),
                "browse": Verb(_fixed(service_set=["View"]), targets="optional"),
                "subscribe": Verb(_fixed(service_set=["MonitoredItem", "Subscription"]), targets="optional"),
                "service": Verb(argument="service", placeholder="NAMES", targets="optional"),
            },
            "node",
            "read nsu=urn:plant1:line1;s=Line1.*, write nsu=urn:plant1:line1;s=Line1.Setpoint 0..100",
            _opcua_covers,
            lambda entry: bool(entry.services & _OPCUA_WRITES),
        ),
    }
)
PROTOCOLS = tuple(VOCABULARIES)


@dataclass(frozen=True)
class Operation:
    """One operation asked for: its text, and the rule entry it stands for (as the policy file writes
    it, and as the loader checked it)."""

    text: str
    fields: Mapping[str, object]
    entry: Entry

    def outside(self, protocol: str, access: VendorAccess) -> list[str]:
        """The operation's services (function codes) that no ``[vendor_access]`` entry holds."""
        allowed: tuple[Entry, ...] = getattr(access, protocol)
        return VOCABULARIES[protocol].covers(allowed, self.entry)


def usage(vocabulary: Vocabulary) -> list[str]:
    """The verbs as a person writes them, with the target: ``read ADDRESS``, ``fc CODES ADDRESS``."""
    out = []
    for name, verb in vocabulary.verbs.items():
        words = [name, verb.placeholder] if verb.argument else [name]
        target = vocabulary.target.upper()
        words.append(target if verb.targets == "required" else f"[{target}]")
        out.append(" ".join(words))
    return out


def _usage(vocabulary: Vocabulary) -> str:
    return f"expected one of: {', '.join(usage(vocabulary))}; e.g. {vocabulary.example!r}"


def parse_ops(text: str, protocol: str) -> list[Operation]:
    """``"read 40001-40100, write 40010 0..1500"`` -> operations of ``protocol``; raises
    :class:`GrantError` naming the part that is wrong."""
    vocabulary = VOCABULARIES.get(protocol)
    if vocabulary is None:
        raise GrantError(f"protocol {protocol[:40]!r}: one of {', '.join(PROTOCOLS)}")
    if len(text) > MAX_OPS_CHARS:
        raise GrantError(f"ops of {len(text)} characters: at most {MAX_OPS_CHARS}")
    groups: list[list[str]] = []  # an operation's items: its own, then targets added by items after it
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        head = item.split()[0]
        last = groups[-1] if groups else None
        if head in vocabulary.verbs:
            groups.append([item])
        elif last is not None and len(last) == 1 and _open_argument(last[0], vocabulary, head):
            last[0] += "," + item  # "fc 6,16 40010" split at its own comma
        elif last is not None:
            last.append(item)
        else:
            raise GrantError(f"{item!r}: {head!r} is no operation on {protocol} assets; {_usage(vocabulary)}")
    if not groups:
        raise GrantError(f"no operations: {_usage(vocabulary)}")
    if len(groups) > MAX_OPS:
        raise GrantError(f"{len(groups)} operations: at most {MAX_OPS}")
    return [_operation(group, vocabulary) for group in groups]


def _open_argument(item: str, vocabulary: Vocabulary, following: str) -> bool:
    """Whether ``item`` is a verb and its argument alone, a list that a comma cut short before
    ``following`` (a function code or a service name, not a target such as a node id)."""
    words = item.split()
    argument = len(words) == 2 and vocabulary.verbs[words[0]].argument is not None
    return argument and _ARGUMENT_WORD.fullmatch(following) is not None


def _operation(items: list[str], vocabulary: Vocabulary) -> Operation:
    text = ", ".join(items)
    words = items[0].split()
    verb = vocabulary.verbs[words[0]]
    fields: dict[str, object] = dict(verb.fields)
    rest = words[1:]
    if verb.argument is not None:
        if not rest:
            raise GrantError(f"{text!r}: {words[0]} needs its {verb.argument}, e.g. {vocabulary.example!r}")
        fields[verb.argument] = _argument_list(rest.pop(0))
    targets: list[str] = []
    bounds: str | None = None
    for item_words in [rest, *(item.split() for item in items[1:])]:
        if bounds is not None:
            raise GrantError(f"{text!r}: the bounds of written values come last, after every target")
        if len(item_words) > 2:
            raise GrantError(f"{text!r}: {' '.join(item_words)!r} is more than a target and its bounds")
        if len(item_words) == 2:
            bounds = item_words.pop()
        targets.extend(item_words)
    if not targets and verb.targets == "required":
        raise GrantError(
            f"{text!r}: expected the {vocabulary.target} it acts on, e.g. {vocabulary.example!r}"
        )
    if len(targets) > MAX_TARGETS:
        raise GrantError(f"{text!r}: {len(targets)} targets: at most {MAX_TARGETS}")
    if targets:
        spelled = [vocabulary.spell(target) for target in targets]
        fields[vocabulary.target] = spelled[0] if len(spelled) == 1 else spelled
    if bounds is not None:
        fields["value"] = vocabulary.spell(bounds)
    entry, problems = check_entry(vocabulary.protocol, fields)
    if entry is None:
        raise GrantError(f"{text!r}: {problems[0]}")
    if bounds is not None and not vocabulary.writes(entry):
        raise GrantError(f"{text!r}: value bounds go with writes only")
    return Operation(text, MappingProxyType(fields), entry)
