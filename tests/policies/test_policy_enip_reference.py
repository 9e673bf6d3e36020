"""The compiled EtherNet/IP evaluator against the naive reference, on random policies, requests and
instants.

Policies are generated as TOML text over small domains - a few classes, instances 0..5, attributes
1..8, tag names that overlap (``Line1``, ``Recipe``, ``Grid``, ``Program:Main``), indices 0..12, values
around the edges of their bounds - so that entries collide. Requests are :class:`CipRequest` values
built directly, with every combination the codec can produce: tags by name with element counts, tags by
number, object requests with attribute lists, written values with NaN and infinities, unreadable
writes, routes, Forward Opens with a connection path, and requests that did not parse.
"""

from __future__ import annotations

import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import Policy, parse_policy
from policies.enip.tags import parse_request_tag, parse_tag_pattern
from policies.model import EnipEntry
from protocols.enip import CipProtocolError, CipRequest, EPath, LogicalSegment, LogicalType, PortSegment
from protocols.enip.logix import WRITING_SERVICES
from protocols.enip.services import ForwardOpen
from protocols.enip.spec import service_name
from tests.policies.policy_reference import reference_sees_asset, subject_matches
from tests.policies.policy_reference_enip import (
    enip_reference_decide,
    reference_tag_covers,
    reference_tag_touches,
)
from tests.policies.test_policy_reference import (
    GROUPS,
    IDS,
    SUBJECT_LISTS,
    TD,
    instant_near,
    instants,
    pick,
    toml_value,
)

SERVICE_NAMES = [
    "read_tag",
    "read_tag_fragmented",
    "write_tag",
    "write_tag_fragmented",
    "read_modify_write",
    "get_instance_attribute_list",
    "get_attribute_single",
    "get_attributes_all",
    "get_attribute_list",
    "set_attribute_single",
    "set_attributes_all",
    "reset",
    "forward_open",
    "forward_close",
    "read_template",
    "initiate_download",
    "execute_pccc",
    "0x6B/0x4C",
    "0x01/0x05",
    "0x64/0x4B",
    "0x6B/0x4B",
]
CLASSES = [0x01, 0x02, 0x06, 0x37, 0x64, 0x67, 0x6B, 0x6C, 0xF5]
NAMES = ["Line1", "Recipe", "Grid", "Motor", "Program:Main"]
MEMBERS = ["Speed", "Temp", "X"]
PATTERNS = [
    "*",
    "Line1.*",
    "Line1",
    "Line1.Speed",
    "Recipe[0..9]",
    "Recipe[2..4]",
    "Recipe[0..9].Temp",
    "Recipe[3]",
    "Grid[0..3,0..7]",
    "Grid[1,2]",
    "Motor",
    "Program:Main.*",
    "Program:Main.Recipe[0..5]",
    "motor.speed",
]
VALUE_BOUNDS = ["0..10", "-5..5", "-1.5..2.5", 7, "100..200", ["0..1", "5..6"], 2.5]
WRITING_SERVICE_NAMES = ["write_tag", "write_tag_fragmented", "read_modify_write", "set_attribute_single"]


def _range(low: int, high: int) -> st.SearchStrategy[Any]:
    def one(pair: tuple[int, int]) -> Any:
        a, b = sorted(pair)
        return a if a == b else f"{a}-{b}"

    single = st.tuples(st.integers(low, high), st.integers(low, high)).map(one)
    return st.one_of(single, st.lists(single, min_size=1, max_size=2))


INSTANCE_RANGES = _range(0, 5)
ATTRIBUTE_RANGES = _range(1, 8)


def _class_of(name: str) -> int | None:
    """The class of a named class-specific service (None for a common one)."""
    if "/" in name:
        return int(name.split("/", maxsplit=1)[0], 16)
    specific = {
        "read_tag": 0x6B,
        "read_tag_fragmented": 0x6B,
        "write_tag": 0x6B,
        "write_tag_fragmented": 0x6B,
        "read_modify_write": 0x6B,
        "get_instance_attribute_list": 0x6B,
        "forward_open": 0x06,
        "forward_close": 0x06,
        "read_template": 0x6C,
        "initiate_download": 0x37,
        "execute_pccc": 0x67,
    }
    return specific.get(name)


@st.composite
def entries(draw: st.DrawFn) -> dict[str, Any]:
    """An entry the loader accepts: generated freely, then repaired where fields exclude each other."""
    entry: dict[str, Any] = {}
    services: list[str] = []
    if draw(st.integers(0, 4)) == 0:
        entry["preset"] = pick(draw, ("read-only", "read-write"))
    if "preset" not in entry or draw(st.booleans()):
        services = draw(st.lists(st.sampled_from(SERVICE_NAMES), min_size=1, max_size=3, unique=True))
    classes: list[int] | None = None
    if draw(st.integers(0, 2)) == 0:
        classes = draw(st.lists(st.sampled_from(CLASSES), min_size=1, max_size=3, unique=True))
    tag = draw(st.integers(0, 1)) == 0
    instance = not tag and draw(st.integers(0, 2)) == 0
    if tag:
        entry["tag"] = draw(st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=2, unique=True))
        if not any(_class_of(s) in (None, 0x6B) for s in services) and "preset" not in entry:
            services.append("read_tag")
        if classes is not None and 0x6B not in classes:
            classes.append(0x6B)
    if draw(st.integers(0, 2)) == 0:
        entry["value"] = pick(draw, VALUE_BOUNDS)
        if not any(s in WRITING_SERVICE_NAMES for s in services) and entry.get("preset") != "read-write":
            services.append(pick(draw, WRITING_SERVICE_NAMES))
    if classes is not None:
        for service in services:
            class_id = _class_of(service)
            if class_id is not None and class_id not in classes:
                classes.append(class_id)
        if "preset" in entry and 0x6B not in classes:
            classes.append(0x6B)  # keeps some of the preset's services
        entry["class"] = classes
    if instance:
        entry["instance"] = draw(INSTANCE_RANGES)
    if draw(st.integers(0, 3)) == 0:
        entry["attribute"] = draw(ATTRIBUTE_RANGES)
    if services:
        entry["service"] = services[0] if len(services) == 1 and draw(st.booleans()) else services
    return {key: entry[key] for key in sorted(entry)}


ENTRY_LISTS = (st.lists(entries(), max_size=3), st.lists(entries(), min_size=1, max_size=3))
ASSET_LISTS = st.sampled_from((("logix-1",), ("logix-2",), ("*",), ("logix-1", "logix-2")))


@st.composite
def policies(draw: st.DrawFn) -> str:
    lines = [f'trust_domain = "{TD}"', ""]
    for name in ("logix-1", "logix-2"):
        lines += [f"[assets.{name}]", 'protocol = "enip"', 'upstream = "127.0.0.1"']
        if draw(st.integers(0, 2)) > 0:
            lines.append('route = "1/0"')
        if draw(st.integers(0, 3)) == 0:
            lines.append('mode = "monitor"')
        if draw(st.integers(0, 3)) == 0:
            action = pick(draw, ("exception", "drop", "close"))
            codes = draw(st.lists(st.integers(1, 255), min_size=4, max_size=4))
            lines.append(
                f'deny = {{ action = "{action}", function = {codes[0]}, address = {codes[1]},'
                f" value = {codes[2]}, unsupported = {codes[3]} }}"
            )
        lines.append("")
    lines.append("[groups]")
    lines += [f"{name} = {toml_value(members)}" for name, members in GROUPS.items()]
    lines.append("")
    for index in range(draw(st.integers(2, 7))):
        lines += ["[[rules]]", f'id = "r{index}"', f"subjects = {toml_value(draw(SUBJECT_LISTS))}"]
        lines.append(f"assets = {toml_value(list(draw(ASSET_LISTS)))}")
        if draw(st.integers(0, 2)) == 0:
            lines.append('effect = "deny"')
        if draw(st.integers(0, 3)) == 0:
            lines.append('mode = "monitor"')
        entries_text = ", ".join(
            "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in entry.items()) + " }"
            for entry in draw(ENTRY_LISTS[index > 0])
        )
        lines.append(f"enip = [{entries_text}]")
        if draw(st.integers(0, 3)) == 0:
            days = pick(draw, ("mon-fri", "sat,sun", "fri-mon"))
            hours = pick(draw, ("06:00-18:00", "22:00-06:00", "01:30-02:30"))
            tz = pick(draw, ("UTC", "Europe/Berlin", "America/New_York"))
            lines.append(f'when = {{ days = "{days}", hours = "{hours}", tz = "{tz}" }}')
        lines.append("")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- requests

# Mostly no route or the asset's; now and then one that leads elsewhere.
ROUTES = [(), (), (), (), (PortSegment(1, b"\x00"),), (PortSegment(1, b"\x00"),), (PortSegment(1, b"\x03"),)]
TAG_SERVICES = [0x4C, 0x52, 0x4D, 0x53, 0x4E, 0x03, 0x0E, 0x55, 0x4B]
OBJECT_SERVICES = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0E, 0x10, 0x4B, 0x4C, 0x4E, 0x54, 0x33]
FLOATS = [0.0, -1.5, 2.5, 2.4999, 7.0, 10.0, 10.5, float("nan"), float("inf"), float("-inf"), -5.0, 5.5]
COUNTED = (0x4C, 0x52, 0x4D, 0x53)


def _writes(class_id: int, service: int) -> bool:
    return (class_id, service) in WRITING_SERVICES or (service < 0x4B and (None, service) in WRITING_SERVICES)


@st.composite
def tag_texts(draw: st.DrawFn) -> str:
    parts = []
    for level in range(draw(st.integers(1, 3))):
        name = pick(draw, NAMES if level == 0 else [*MEMBERS, "Recipe", "Speed"])
        dims = draw(st.integers(0, 3))
        if dims == 1:
            name += f"[{draw(st.integers(0, 12))}]"
        elif dims == 2:
            name += f"[{draw(st.integers(0, 4))},{draw(st.integers(0, 8))}]"
        parts.append(name)
    return ".".join(parts)


@st.composite
def tag_near(draw: st.DrawFn, pattern: str) -> str:
    """A tag around ``pattern``: its indices at or next to their edges, members added or dropped."""

    def index(match: re.Match[str]) -> str:
        dims = []
        for item in match[1].split(","):
            low, _, high = item.partition("..")
            edge = int(pick(draw, (low, high or low)))
            dims.append(str(max(0, edge + pick(draw, (-1, 0, 0, 1)))))
        roll = draw(st.integers(0, 7))
        if roll == 0:
            return ""  # the array named without an index
        if roll == 1:
            dims = dims[:-1] if len(dims) > 1 else [*dims, "0"]  # another number of dimensions
        return "[" + ",".join(dims) + "]"

    text = re.sub(r"\[([^\]]*)\]", index, pattern)
    parts = text.split(".")
    if parts[-1] == "*":
        parts.pop()
        if draw(st.integers(0, 3)) > 0:
            parts.append(pick(draw, MEMBERS))
    if not parts or not parts[0]:
        parts = [pick(draw, NAMES)]
    roll = draw(st.integers(0, 5))
    if roll == 0 and len(parts) > 1:
        parts.pop()
    elif roll == 1:
        parts.append(pick(draw, MEMBERS))
    text = ".".join(parts)
    return text.upper() if draw(st.integers(0, 4)) == 0 else text


@st.composite
def written(draw: st.DrawFn, count: int, bounds: Any = None) -> tuple[tuple[int | float, ...], bool]:
    """(values, opaque): values at or next to the edges of ``bounds``, or data the gateway cannot read."""
    if draw(st.integers(0, 7)) == 0:
        return (), True
    edges: list[int | float] = list(FLOATS)
    for low, high in bounds.ranges if bounds is not None else ():
        edges += [low, high, low - 1, high + 1, low + 0.5, high - 0.5, high + 0.25]
    values = [pick(draw, edges) for _ in range(count)]
    if draw(st.booleans()):
        values = [int(v) if isinstance(v, float) and v == v and abs(v) != float("inf") else v for v in values]
    return tuple(values), False


def _near(draw: st.DrawFn, ranges: Any, low: int, high: int) -> int:
    if ranges is None or draw(st.integers(0, 3)) == 0:
        return draw(st.integers(low, high))
    a, b = pick(draw, ranges.ranges)
    return max(low, min(high, pick(draw, (a - 1, a, b, b + 1))))


@st.composite
def requests(draw: st.DrawFn, hint: EnipEntry | None = None) -> CipRequest:
    """A request as :func:`protocols.enip.flatten` yields it; with ``hint``, one aimed at that entry."""
    route = pick(draw, ROUTES)
    if draw(st.integers(0, 30)) == 0:
        return CipRequest(0x4C, route=route, error=CipProtocolError("bad", general_status=0x13))
    fields: dict[str, Any] = {"route": route}
    if hint is not None:
        class_id, service = pick(draw, sorted(hint.services, key=lambda k: (k[1], k[0] or -1)))
        if class_id is None:
            class_id = _near(draw, hint.classes, 0, 0xFF) if hint.classes else pick(draw, CLASSES)
        kind = "tag" if class_id == 0x6B and service != 0x55 and draw(st.integers(0, 4)) > 0 else "object"
    else:
        roll = draw(st.integers(0, 9))
        kind = "tag" if roll <= 5 else "object" if roll <= 7 else "list" if roll == 8 else "open"
        class_id, service = 0x6B, pick(draw, TAG_SERVICES)
        if kind == "object":
            class_id, service = pick(draw, [*CLASSES, 0xF6]), pick(draw, OBJECT_SERVICES)
    if kind == "tag":
        patterns = [p.text for p in hint.tags] if hint is not None and hint.tags else []
        fields["tag"] = draw(tag_near(pick(draw, patterns))) if patterns else draw(tag_texts())
        fields["element_count"] = pick(draw, (1, 1, 2, 3, 5, 6, 10, 11)) if service in COUNTED else 1
    elif kind == "open" or (class_id, service) in ((0x06, 0x54), (0x06, 0x4E)):
        class_id, service = 0x06, 0x54
        fields["instance_id"] = 1
        path = EPath(
            (
                *pick(draw, ROUTES),
                LogicalSegment(LogicalType.CLASS_ID, 2),
                LogicalSegment(LogicalType.INSTANCE_ID, 1),
            )
        )
        fields["payload"] = ForwardOpen(
            False, 10, 5, 0, 1, 1, 1, 1, 1, 1000, 0x43F4, 1000, 0x43F4, 0xA3, path
        )
    else:
        if kind == "list":
            class_id, service = 0x6B, 0x55
        if draw(st.integers(0, 5)) > 0:
            fields["instance_id"] = _near(draw, hint.instances if hint else None, 0, 6)
    if service in (0x03, 0x55):
        fields["attribute_ids"] = tuple(
            _near(draw, hint.attributes if hint else None, 0, 9) for _ in range(draw(st.integers(1, 3)))
        )
    elif "tag" not in fields and draw(st.booleans()):
        fields["attribute_id"] = _near(draw, hint.attributes if hint else None, 0, 9)
    writes = _writes(class_id, service)
    if writes:
        if service in (0x4D, 0x53) and class_id == 0x6B:
            count = fields.get("element_count", 1)
            values, fields["opaque_values"] = draw(written(count, hint.values if hint else None))
            fields["values"] = values
        else:
            fields["opaque_values"] = True
    return CipRequest(
        service, name=service_name(class_id, service), class_id=class_id, writes=writes, **fields
    )


subjects = st.one_of(st.sampled_from(IDS), st.sampled_from([f"spiffe://{TD}/user/zed"]))
assets = st.sampled_from(["logix-1", "logix-1", "logix-2", "logix-9"])


@st.composite
def aimed_query(draw: st.DrawFn, policy: Policy) -> tuple[str, str, CipRequest, float]:
    """A query from a subject a rule is for, aimed at the edges of one of the rule's entries."""
    pairs: list[tuple[Any, EnipEntry]] = [(rule, entry) for rule in policy.rules for entry in rule.enip]
    if not pairs or draw(st.integers(0, 4)) == 0:
        return draw(st.tuples(subjects, assets, requests(), instants))
    rule, entry = pick(draw, pairs)
    matching = [i for i in IDS if subject_matches(policy, rule, i)]
    subject = pick(draw, matching) if matching else draw(subjects)
    asset = pick(draw, [name for name in rule.assets if name != "*"] or ["logix-1", "logix-2"])
    return subject, asset, draw(requests(entry)), draw(instant_near(rule.window))


def check(policy: Policy, subject: str, asset: str, request: CipRequest, now: float) -> None:
    expected = enip_reference_decide(policy, subject, asset, request, now)
    view = policy.view(subject, asset)
    assert (view is None) == (expected is None), (subject, asset)
    assert reference_sees_asset(policy, subject, asset) == (view is not None)
    if view is None or expected is None:
        return
    got = view.decide_enip(request, now)
    actual = (got.verdict, got.allowed, got.rule_id, got.exception_code, got.action, got.monitor_rule_id)
    wanted = (
        expected.verdict,
        expected.allowed,
        expected.rule_id,
        expected.exception_code,
        expected.action,
        expected.monitor_rule_id,
    )
    assert actual == wanted, f"{request!r} at {now}: compiled {got!r}\nreference {expected!r}"
    assert got.reason
    assert policy.explain_enip(subject, asset, request, now).decision == got


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=policies(), data=st.data())
def test_compiled_enip_evaluator_agrees_with_reference(text: str, data: st.DataObject) -> None:
    policy = parse_policy(text)
    for subject, asset, request, now in data.draw(st.lists(aimed_query(policy), min_size=1, max_size=12)):
        check(policy, subject, asset, request, now)


@st.composite
def patterns(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 9)) == 0:
        return "*"
    parts = []
    for level in range(draw(st.integers(1, 3))):
        name = pick(draw, NAMES if level == 0 else [*MEMBERS, "Recipe"])
        dims = []
        for _ in range(pick(draw, (0, 0, 1, 1, 2))):
            low = draw(st.integers(0, 6))
            high = low + pick(draw, (0, 0, 1, 3, 9))
            dims.append(str(low) if low == high else f"{low}..{high}")
        parts.append(name + (f"[{','.join(dims)}]" if dims else ""))
    if draw(st.booleans()):
        parts.append("*")
    return ".".join(parts)


@settings(max_examples=800, deadline=None)
@given(data=st.data(), pattern=patterns(), count=st.sampled_from((1, 1, 2, 3, 4, 7, 10, 11)))
def test_tag_patterns_agree_with_reference(data: st.DataObject, pattern: str, count: int) -> None:
    tag = data.draw(st.one_of(tag_near(pattern), tag_texts()))
    request = CipRequest(0x4C, name="read_tag", class_id=0x6B, tag=tag, element_count=count)
    compiled, problem = parse_tag_pattern(pattern)
    assert compiled is not None, problem
    parsed = parse_request_tag(tag)
    assert compiled.covers(parsed, count) == reference_tag_covers(pattern, request), (pattern, tag, count)
    assert compiled.touches(parsed, count) == reference_tag_touches(pattern, request), (pattern, tag, count)
    if compiled.covers(parsed, count):
        assert compiled.touches(parsed, count)
