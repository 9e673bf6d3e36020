"""Whether an audit event is plain JSON: what its serialised line parses back to, value for value and type
for type (compiled with mypyc: a sink's writer asks it once per record).

A sink that formats a record (ECS json, CEF, OCSF) starts from what the audit file says. When the event
the audit log serialised is plain, the line parses back to an equal event with the same types, so the
sink formats the event itself and saves the parse. Anything else is not plain and the sink parses the
line: bytes (the line has them as hex), a tuple or a set (a JSON array), a subclass of a JSON type or an
enum (orjson writes its value), a float that is not finite (``null``), a key that is not a string
(orjson's ``OPT_NON_STR_KEYS`` makes it one).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["json_plain"]


def json_plain(event: Mapping[Any, Any]) -> bool:
    """True when every key of ``event`` is a ``str`` and every value is plain JSON: exactly a ``str``,
    ``int``, ``bool``, ``None``, a finite ``float``, or a ``list`` or ``dict`` of such values (the
    mapping itself may be a dict subclass: a sink reads its items, never its type)."""
    return all(type(key) is str and _plain(value) for key, value in event.items())


def _plain(value: Any) -> bool:
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is list:
        return all(_plain(item) for item in value)
    if kind is dict:
        return json_plain(value)
    return False
