"""CIP services as policies name them: by name, by ``"class/service"`` pair, or through a preset.

A service is kept as a :data:`ServiceKey` ``(class, service)``. Common services (codes below 0x4B) are
the same on every class, so a rule naming one by name gets ``(None, code)``: any class, which the
entry's ``class`` field may narrow. Codes from 0x4B up mean different things on different classes
(0x4E is Read-Modify-Write on a tag and Forward Close on the Connection Manager), so they only exist
with their class; that is why a bare service code is refused, whatever its value.

The wrappers (Unconnected Send, Multiple Service Packet) cannot be named: the gateway decides every
request they carry instead of the wrapper, and allowing a wrapper as such would forward requests
nobody decided.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from policies.ranges import IntervalSet
from protocols.enip.spec import (
    CLASS_SERVICE_NAMES,
    COMMON_SERVICE_NAMES,
    FIRST_CLASS_SPECIFIC_SERVICE,
    ClassCode,
    Service,
    service_name,
)

__all__ = [
    "CLASS_BOUNDS",
    "PRESETS",
    "SAFE_READ_CLASSES",
    "ServiceKey",
    "describe_key",
    "describe_keys",
    "hex_ranges",
    "known_pair",
    "parse_service",
    "service_text",
]

ServiceKey = tuple[int | None, int]  # (class or None for every class, service code)

CLASS_BOUNDS = (0, 0xFFFF)  # class ids are 8 or 16 bits on the wire
_SERVICE_BOUNDS = (0, 0x7F)  # bit 7 marks a reply

# Every name a rule may use. The spelling of the codec's table wins; "get_attribute_all" and
# "set_attribute_all" are accepted too because people write the singular as often as the plural.
_NAMES: dict[str, ServiceKey] = {name: (None, code) for code, name in COMMON_SERVICE_NAMES.items()}
_NAMES.update({name: (int(class_id), code) for (class_id, code), name in CLASS_SERVICE_NAMES.items()})
_ALIASES = {"get_attribute_all": "get_attributes_all", "set_attribute_all": "set_attributes_all"}

_SYMBOL = int(ClassCode.SYMBOL)
_TEMPLATE = int(ClassCode.TEMPLATE)
_CONNECTION_MANAGER = int(ClassCode.CONNECTION_MANAGER)


def _wrapper(key: ServiceKey) -> bool:
    class_id, code = key
    return code == Service.MULTIPLE_SERVICE_PACKET or (
        class_id == _CONNECTION_MANAGER and code == Service.UNCONNECTED_SEND
    )


# Classes whose attributes say what a device is and how it is set up, never what it controls:
# Identity, Message Router, Program Name (the controller's name), Symbol and Template (tag and type
# definitions: what pycomm3 reads at start-up), Wall Clock Time.
SAFE_READ_CLASSES: tuple[int, ...] = (
    int(ClassCode.IDENTITY),
    int(ClassCode.MESSAGE_ROUTER),
    int(ClassCode.PROGRAM_NAME),
    _SYMBOL,
    _TEMPLATE,
    int(ClassCode.WALL_CLOCK_TIME),
)
_ATTRIBUTE_READS = (Service.GET_ATTRIBUTES_ALL, Service.GET_ATTRIBUTE_LIST, Service.GET_ATTRIBUTE_SINGLE)
# A class-3 connection only carries explicit messages, each decided on its own; pycomm3 and most HMI
# drivers open one before anything else.
_CONNECTION_SERVICES = (
    (_CONNECTION_MANAGER, Service.FORWARD_OPEN),
    (_CONNECTION_MANAGER, Service.LARGE_FORWARD_OPEN),
    (_CONNECTION_MANAGER, Service.FORWARD_CLOSE),
)
_READ_ONLY: frozenset[ServiceKey] = frozenset(
    (
        (_SYMBOL, Service.READ_TAG),
        (_SYMBOL, Service.READ_TAG_FRAGMENTED),
        (_SYMBOL, Service.GET_INSTANCE_ATTRIBUTE_LIST),
        (_TEMPLATE, Service.READ_TEMPLATE),
        *((class_id, code) for class_id in SAFE_READ_CLASSES for code in _ATTRIBUTE_READS),
        *_CONNECTION_SERVICES,
    )
)
_READ_WRITE = _READ_ONLY | {
    (_SYMBOL, Service.WRITE_TAG),
    (_SYMBOL, Service.WRITE_TAG_FRAGMENTED),
    (_SYMBOL, Service.READ_MODIFY_WRITE_TAG),
}
PRESETS: dict[str, frozenset[ServiceKey]] = {"read-only": _READ_ONLY, "read-write": _READ_WRITE}

_NUMBER = r"(0[xX][0-9A-Fa-f]{1,8}|\d{1,10})"
_PAIR = re.compile(rf"\s*{_NUMBER}\s*/\s*{_NUMBER}\s*", re.ASCII)
_BARE_CODE = re.compile(rf"\s*{_NUMBER}\s*", re.ASCII)
_EXAMPLE = 'name it (service = "read_tag") or give its class as "class/service" ("0x6B/0x4C")'


def _number(text: str) -> int:
    # Not int(text, 0): it refuses decimal numbers with leading zeros ("076").
    return int(text[2:], 16) if text[:2].lower() == "0x" else int(text)


def _bare_code_problem(code: int) -> str:
    if code < FIRST_CLASS_SPECIFIC_SERVICE:
        name = COMMON_SERVICE_NAMES.get(code)
        hint = f'name it: "{name}"' if name else 'give its class as "class/service", e.g. "0x01/0x{code:02X}"'
        return f"a service code alone is refused: {hint}"
    meanings = sorted(
        f"{name} on class 0x{class_id:02X}"
        for (class_id, c), name in CLASS_SERVICE_NAMES.items()
        if c == code
    )
    known = f" (0x{code:02X} is {', '.join(meanings)})" if meanings else ""
    return (
        f"a service code alone is ambiguous: codes from 0x4B up mean different services on different"
        f" classes{known}; {_EXAMPLE}"
    )


def parse_service(value: object) -> tuple[ServiceKey | None, str | None]:
    """One element of a ``service`` field: a name or a ``"class/service"`` pair -> (key, problem)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None, f'expected a service name or a "class/service" pair; {_EXAMPLE}'
    if isinstance(value, int):
        return None, f"{value} (0x{value:02X}): " + _bare_code_problem(value)
    name = _ALIASES.get(value, value)
    key = _NAMES.get(name)
    if key is None:
        pair = _PAIR.fullmatch(value)
        if pair is not None:
            key = (_number(pair[1]), _number(pair[2]))
            if not CLASS_BOUNDS[0] <= key[0] <= CLASS_BOUNDS[1]:
                return None, f"class {pair[1]} is outside 0..0xFFFF"
            if not _SERVICE_BOUNDS[0] <= key[1] <= _SERVICE_BOUNDS[1]:
                return None, f"service {pair[2]} is outside 0..0x7F (0x80 and up are replies)"
        elif _BARE_CODE.fullmatch(value) is not None:
            return None, _bare_code_problem(_number(value.strip()))
        else:
            close = difflib.get_close_matches(value, [*_NAMES, *_ALIASES], n=1)
            hint = f'; did you mean "{close[0]}"?' if close else f"; {_EXAMPLE}"
            return None, f"unknown service name{hint}"
    if _wrapper(key):
        return None, (
            "wrappers are not decided as services: the gateway unwraps Unconnected Send and Multiple"
            " Service Packet and decides every request inside on its own"
        )
    return key, None


def known_pair(class_id: int | None, service: int) -> bool:
    """Whether the (class, service) pair has a name (so a refusal is a privilege violation rather
    than "service not supported")."""
    return service_name(class_id, service) is not None


def service_text(class_id: int | None, service: int, name: str | None = None) -> str:
    """A request's service in words: ``read_tag (0x6B/0x4C)``, ``service 0x4B on class 0x37``."""
    name = name or service_name(class_id, service)
    if class_id is None:
        return f"{name} (0x{service:02X})" if name else f"service 0x{service:02X}"
    if name is None:
        return f"service 0x{service:02X} on class 0x{class_id:02X}"
    return f"{name} (0x{class_id:02X}/0x{service:02X})"


def describe_key(key: ServiceKey) -> str:
    """A service key in policy notation: its name, or ``"0x37/0x4C"`` when it has none."""
    class_id, code = key
    name = service_name(class_id, code)
    if class_id is None:
        return name or f"0x{code:02X}"
    if name is not None and code >= FIRST_CLASS_SPECIFIC_SERVICE:
        return name
    return f"{name} on class 0x{class_id:02X}" if name else f"0x{class_id:02X}/0x{code:02X}"


def describe_keys(keys: Iterable[ServiceKey]) -> str:
    return ", ".join(describe_key(key) for key in sorted(keys, key=lambda k: (k[1], k[0] or -1)))


def hex_ranges(ranges: IntervalSet) -> str:
    """Class ids as people write them: ``0x01, 0xF5-0xF6``."""
    return ", ".join(
        f"0x{low:02X}" if low == high else f"0x{low:02X}-0x{high:02X}" for low, high in ranges.ranges
    )
