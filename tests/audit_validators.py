"""Checkers for the SIEM formats of gateway/audit_formats.py, written from the specifications rather than
from our formatter, so that a test holding a line to them can fail:

- CEF: ArcSight's "Implementing ArcSight Common Event Format (CEF)" rules: ``CEF:Version|Device Vendor|
  Device Product|Device Version|Signature ID|Name|Severity|Extension``; in the header a backslash and a
  pipe are escaped with a backslash; in the extension a backslash, an equals sign and line breaks
  (``\\n``, ``\\r``) are, pipes are not; keys are letters and digits; severity 0-10 (or Low, Medium,
  High, Very-High); no raw line break anywhere.
- OCSF: tests/schemas/ocsf-1.8.0-subset.schema.json (ours, written from the published 1.8.0 schema; the
  file says which parts) plus type_uid = class_uid * 100 + activity_id.
- ECS: every field of the flat record can be found again where gateway/audit_formats.py says it goes.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import jsonschema

from gateway import audit_formats

_KEY = re.compile(r"[A-Za-z0-9]+")
_SEVERITY_WORDS = ("Low", "Medium", "High", "Very-High")
_EXTENSION_ESCAPES = {"\\": "\\", "=": "=", "n": "\n", "r": "\r"}


class CefError(ValueError):
    pass


def parse_cef(line: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The 7 header fields (version first) and the extension's (key, value) pairs, unescaped."""
    if "\n" in line or "\r" in line:
        raise CefError("raw line break")
    if not line.startswith("CEF:"):
        raise CefError("no CEF: prefix")
    header: list[str] = []
    field: list[str] = []
    i = 4
    while len(header) < 7:
        if i >= len(line):
            raise CefError(f"header ends after {len(header)} fields")
        char = line[i]
        if char == "\\":
            if i + 1 >= len(line) or line[i + 1] not in "\\|":
                raise CefError(f"bad header escape at {i}")
            field.append(line[i + 1])
            i += 2
            continue
        if char == "|":
            header.append("".join(field))
            field = []
        else:
            field.append(char)
        i += 1
    if not header[0].isdigit():
        raise CefError(f"version {header[0]!r}")
    sev = header[6]
    if not ((sev.isdigit() and 0 <= int(sev) <= 10) or sev in _SEVERITY_WORDS):
        raise CefError(f"severity {sev!r}")
    return header, _parse_extension(line[i:])


def _parse_extension(text: str) -> list[tuple[str, str]]:
    # Unescape while remembering where the unescaped '=' are: each one ends a key, which is the run of
    # key characters before it, preceded by a space (or the start); the value before runs up to that space.
    chars: list[str] = []
    escaped: set[int] = set()  # indexes of chars that came from an escape: never part of a key
    equals: list[int] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            if i + 1 >= len(text) or text[i + 1] not in _EXTENSION_ESCAPES:
                raise CefError(f"bad extension escape at {i}: {text[i : i + 2]!r}")
            escaped.add(len(chars))
            chars.append(_EXTENSION_ESCAPES[text[i + 1]])
            i += 2
            continue
        if char == "=":
            equals.append(len(chars))
        chars.append(char)
        i += 1
    pairs: list[tuple[str, str]] = []
    starts: list[tuple[int, int, str]] = []  # (key start, '=' index, key)
    for eq in equals:
        start = eq
        while start > 0 and start - 1 not in escaped and _KEY.fullmatch(chars[start - 1]):
            start -= 1
        key = "".join(chars[start:eq])
        if not key or (start > 0 and (chars[start - 1] != " " or start - 1 in escaped)):
            raise CefError(f"unescaped '=' not after a key: {''.join(chars[max(0, eq - 20) : eq + 1])!r}")
        starts.append((start, eq, key))
    if text and not starts:
        raise CefError("extension without a key")
    if starts and starts[0][0] != 0:
        raise CefError("extension does not start with a key")
    for n, (_, eq, key) in enumerate(starts):
        end = starts[n + 1][0] - 1 if n + 1 < len(starts) else len(chars)
        pairs.append((key, "".join(chars[eq + 1 : end])))
    return pairs


@functools.cache
def _ocsf_validator() -> jsonschema.Draft202012Validator:
    path = Path(__file__).parent / "schemas" / "ocsf-1.8.0-subset.schema.json"
    schema = json.loads(path.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def ocsf_problems(event: dict[str, Any]) -> list[str]:
    found = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _ocsf_validator().iter_errors(event)
    ]
    if event.get("type_uid") != event.get("class_uid", 0) * 100 + event.get("activity_id", 0):
        found.append(f"type_uid {event.get('type_uid')} is not class_uid * 100 + activity_id")
    return found


def _flatten(document: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in document.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and key != "latency_us" and not path.endswith(".latency_us"):
            flat.update(_flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def ecs_problems(record: dict[str, Any], document: dict[str, Any]) -> list[str]:
    """What of the flat record cannot be found in its ECS document, and ECS basics missing."""
    flat = _flatten(document)
    found = []
    for name, value in record.items():
        span = audit_formats.ECS_RANGES.get(name)
        if (
            span is not None
            and record.get("protocol") == "modbus"
            and isinstance(value, list)
            and len(value) == 2
        ):
            start, quantity = flat.get(f"ztgate.{span[0]}"), flat.get(f"ztgate.{span[1]}")
            if [start, None if start is None or quantity is None else start + quantity - 1] != value:
                found.append(f"{name} {value} is not start {start} quantity {quantity}")
            continue
        path = audit_formats.ecs_path(record, name)
        if isinstance(value, dict) and name != "latency_us":  # an object: its leaves, under the path
            wanted = _flatten(value, f"{path}.")
            if any(flat.get(leaf, flat) != leaf_value for leaf, leaf_value in wanted.items()):
                found.append(f"{name} {value!r} not under {path}")
            continue
        if path not in flat or flat[path] != value:
            found.append(f"{name} {value!r} not at {path} (there: {flat.get(path, '<absent>')!r})")
    for path in ("@timestamp", "ecs.version", "event.action", "event.kind", "event.outcome", "observer.name"):
        if path not in flat:
            found.append(f"{path} missing")
    if flat.get("event.outcome") not in ("success", "failure"):
        found.append(f"event.outcome {flat.get('event.outcome')!r}")
    return found
