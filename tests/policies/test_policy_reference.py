"""The compiled evaluator against the naive reference, on random policies, requests and instants.

Policies are generated as TOML text (so the loader is exercised too) over small domains - a few
subjects, units 0..3, addresses 0..40, values 0..20 - so that rules overlap, deny and allow entries
collide and windows open and close around daylight-saving changes. Requests are built by the codec
from generated PDUs, so they look exactly like what the gateway decides on.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import Policy, parse_policy
from policies.model import ModbusEntry
from policies.timewindow import TimeWindow
from protocols.modbus.pdu import Request, parse_request
from tests.policies.policy_reference import reference_decide, reference_sees_asset, subject_matches

TD = "plant1.example"
IDS = [
    f"spiffe://{TD}/user/alice",
    f"spiffe://{TD}/user/bob",
    f"spiffe://{TD}/user/anna",
    f"spiffe://{TD}/vendor/acme/eve",
    f"spiffe://{TD}/vendor/acme/field/ivan",
    f"spiffe://{TD}/agent/site1/hmi-3",
]
PATTERNS = [
    f"spiffe://{TD}/vendor/acme/*",
    f"spiffe://{TD}/user/*",
    f"spiffe://{TD}/*",
    f"spiffe://{TD}/user/a*",
]
GROUPS = {
    "operators": [IDS[0], IDS[1]],
    "vendors": [f"spiffe://{TD}/vendor/*"],
    "mixed": [IDS[2], f"spiffe://{TD}/agent/*"],
}
FUNCTION_CODES = [1, 2, 3, 4, 5, 6, 7, 8, 11, 15, 16, 17, 20, 21, 22, 23, 24, 43, 90]
COMMON_CODES = [3, 6, 16]
TIME_ZONES = ["UTC", "Europe/Berlin", "America/New_York"]
# Windows around the 2026 daylight-saving changes in Europe and the US, plus an ordinary week.
INSTANT_RANGES = [
    (datetime(2026, 3, 6, tzinfo=UTC), datetime(2026, 3, 10, tzinfo=UTC)),
    (datetime(2026, 3, 27, tzinfo=UTC), datetime(2026, 3, 31, tzinfo=UTC)),
    (datetime(2026, 10, 23, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC)),
    (datetime(2026, 6, 1, tzinfo=UTC), datetime(2026, 6, 8, tzinfo=UTC)),
]


def toml_value(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {toml_value(v)}' for k, v in value.items()) + " }"
    return str(value)


def ranges(low: int, high: int) -> st.SearchStrategy[Any]:
    def one(pair: tuple[int, int]) -> Any:
        a, b = sorted(pair)
        return a if a == b else f"{a}-{b}"

    single = st.tuples(st.integers(low, high), st.integers(low, high)).map(one)
    return st.one_of(single, st.lists(single, min_size=1, max_size=3))


# Strategies are built once: hypothesis validates every new strategy object on its first draw.
# Half the codes come from a small common set, so that several rules name the same code.
FC_LISTS = st.lists(
    st.one_of(st.sampled_from(COMMON_CODES), st.sampled_from(FUNCTION_CODES)),
    min_size=1,
    max_size=3,
    unique=True,
)
SUBFUNCTIONS = ranges(0, 15)
RANGE_FIELDS = [
    ("unit", ranges(0, 3)),
    ("address", ranges(0, 30)),
    ("file", ranges(1, 4)),
    ("value", ranges(0, 20)),
]


@st.composite
def entries(draw: st.DrawFn) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    use_preset = draw(st.integers(0, 5)) == 0
    codes: set[int] = set()
    if use_preset:
        entry["preset"] = draw(st.sampled_from(("read-only", "read-write")))
    if not use_preset or draw(st.booleans()):
        fcs = draw(FC_LISTS)
        entry["fc"] = fcs[0] if len(fcs) == 1 and draw(st.booleans()) else fcs
        codes.update(fcs)
    if codes & {8, 43}:
        entry["subfunction"] = draw(SUBFUNCTIONS)
    for key, strategy in RANGE_FIELDS:
        if draw(st.integers(0, 2)) == 0:
            entry[key] = draw(strategy)
    return entry


ENTRY_LISTS = (st.lists(entries(), max_size=3), st.lists(entries(), min_size=1, max_size=3))
SUBJECT_LISTS = st.lists(
    st.sampled_from(IDS + PATTERNS + [f"group:{name}" for name in GROUPS]),
    min_size=1,
    max_size=3,
    unique=True,
)
ASSET_LISTS = st.sampled_from((("plc-1",), ("plc-2",), ("*",), ("plc-1", "plc-2")))


@st.composite
def policies(draw: st.DrawFn) -> str:
    lines = [f'trust_domain = "{TD}"', ""]
    for name in ("plc-1", "plc-2"):
        units = sorted(draw(st.sets(st.integers(0, 3), min_size=3, max_size=4)))
        lines += [
            f"[assets.{name}]",
            'protocol = "modbus"',
            'upstream = "127.0.0.1:5020"',
            f"unit_ids = {units}",
        ]
        if draw(st.integers(0, 3)) == 0:
            lines.append('mode = "monitor"')
        if draw(st.integers(0, 3)) == 0:
            action = pick(draw, ("exception", "drop", "close"))
            codes = draw(st.lists(st.integers(1, 255), min_size=3, max_size=3))
            lines.append(
                f'deny = {{ action = "{action}", function = {codes[0]}, address = {codes[1]},'
                f" value = {codes[2]} }}"
            )
        lines.append("")
    lines.append("[groups]")
    lines += [f"{name} = {toml_value(members)}" for name, members in GROUPS.items()]
    lines.append("")
    for index in range(draw(st.integers(2, 8))):
        rule = {
            "id": f"r{index}",
            "subjects": draw(SUBJECT_LISTS),
            "assets": list(draw(ASSET_LISTS)),
        }
        if draw(st.integers(0, 2)) == 0:
            rule["effect"] = "deny"
        if draw(st.integers(0, 3)) == 0:
            rule["mode"] = "monitor"
        lines += ["[[rules]]"] + [f"{k} = {toml_value(v)}" for k, v in rule.items()]
        lines.append(f"modbus = {toml_value(draw(ENTRY_LISTS[index > 0]))}")
        if draw(st.integers(0, 2)) == 0:
            days = pick(draw, ("mon-fri", "sat,sun", "fri-mon", "sun", "mon,wed-fri", "mon-sun"))
            hours = pick(draw, ("06:00-18:00", "22:00-06:00", "00:00-24:00", "01:30-02:30", "02:00-03:00"))
            tz = pick(draw, TIME_ZONES)
            lines.append(f'when = {{ days = "{days}", hours = "{hours}", tz = "{tz}" }}')
        lines.append("")
    return "\n".join(lines)


Ranges = tuple[tuple[int, int], ...] | None


T = TypeVar("T")


def pick(draw: st.DrawFn, options: Sequence[T]) -> T:
    """``draw(st.sampled_from(options))`` without building a new strategy for every draw."""
    return options[draw(st.integers(0, len(options) - 1))]


def near(draw: st.DrawFn, ranges: Ranges, low: int, high: int) -> int:
    """A number in low..high, usually on or next to an edge of one of ``ranges`` (off-by-one bait)."""
    if not ranges or draw(st.integers(0, 3)) == 0:
        return draw(st.integers(low, high))
    a, b = pick(draw, ranges)
    return min(high, max(low, pick(draw, (a - 1, a, a + 1, b - 1, b, b + 1))))


def span_length(draw: st.DrawFn, start: int, ranges: Ranges, longest: int) -> int:
    """A span length from ``start``, often ending exactly on, or just past, the end of its range."""
    choices = [draw(st.integers(1, longest))]
    for a, b in ranges or ():
        if a <= start <= b:
            choices += [b - start + 1, b - start + 2]
    return min(longest, max(1, pick(draw, choices)))


def ranges_of(entry: ModbusEntry | None, name: str) -> Ranges:
    field = None if entry is None else getattr(entry, name)
    return None if field is None else field.ranges


@st.composite
def requests(draw: st.DrawFn, named: tuple[int, ...] = (), hint: ModbusEntry | None = None) -> Request:
    """A parsed request; with ``hint``, one aimed at the edges of that entry's fields."""
    if hint is not None:
        fc = pick(draw, sorted(hint.function_codes))
    else:
        # Mostly function codes the policy names, so that requests reach the interesting steps.
        pick_named = named and draw(st.integers(0, 4)) > 0
        fc = pick(draw, named if pick_named else FUNCTION_CODES)
    addresses, values = ranges_of(hint, "addresses"), ranges_of(hint, "values")
    address = near(draw, addresses, 0, 45)

    def value() -> int:
        return near(draw, values, 0, 25)

    pdu: bytes
    if fc in (1, 2, 3, 4):
        pdu = struct.pack(">BHH", fc, address, span_length(draw, address, addresses, 6))
    elif fc == 5:
        pdu = struct.pack(">BHH", 5, address, pick(draw, (0, 0xFF00)))
    elif fc == 6:
        pdu = struct.pack(">BHH", 6, address, value())
    elif fc == 15:
        count = span_length(draw, address, addresses, 10)
        bits = draw(st.lists(st.integers(0, 1), min_size=count, max_size=count))
        packed = bytearray((count + 7) // 8)
        for i, bit in enumerate(bits):
            packed[i // 8] |= bit << (i % 8)
        pdu = struct.pack(">BHHB", 15, address, count, len(packed)) + bytes(packed)
    elif fc == 16:
        written = [value() for _ in range(span_length(draw, address, addresses, 5))]
        pdu = struct.pack(f">BHHB{len(written)}H", 16, address, len(written), 2 * len(written), *written)
    elif fc == 22:
        # Result lies in [or & ~and, (or & ~and) | and]: aim the lowest at a value edge.
        and_mask = draw(st.integers(0, 31))
        pdu = struct.pack(">BHHH", 22, address, and_mask, value() & ~and_mask)
    elif fc == 23:
        read = near(draw, addresses, 0, 45)
        written = [value() for _ in range(span_length(draw, address, addresses, 4))]
        pdu = struct.pack(
            ">BHHHHB",
            23,
            read,
            span_length(draw, read, addresses, 5),
            address,
            len(written),
            2 * len(written),
        )
        pdu += struct.pack(f">{len(written)}H", *written)
    elif fc == 24:
        pdu = struct.pack(">BH", 24, address)
    elif fc in (20, 21):
        body = b""
        for _ in range(draw(st.integers(1, 3))):
            record = near(draw, addresses, 0, 42)
            length = span_length(draw, record, addresses, 3)
            body += struct.pack(">BHHH", 6, near(draw, ranges_of(hint, "files"), 1, 5), record, length)
            if fc == 21:
                body += struct.pack(f">{length}H", *(value() for _ in range(length)))
        pdu = bytes((fc, len(body))) + body
    elif fc == 8:
        pdu = struct.pack(">BHH", 8, near(draw, ranges_of(hint, "subfunctions"), 0, 17), 0)
    elif fc == 43:
        mei = pick(draw, (13, 14))
        pdu = bytes((43, mei, draw(st.integers(1, 4)), 0)) if mei == 14 else bytes((43, 13, 1, 2))
    else:
        pdu = bytes((fc,)) + (b"\x00\x01" if fc == 90 else b"")
    return parse_request(1, near(draw, ranges_of(hint, "units"), 0, 3), pdu)


def named_codes(policy: Policy) -> tuple[int, ...]:
    return tuple(
        sorted({fc for rule in policy.rules for entry in rule.modbus for fc in entry.function_codes})
    )


instants = st.sampled_from(INSTANT_RANGES).flatmap(
    lambda span: st.tuples(
        st.integers(int(span[0].timestamp()), int(span[1].timestamp())), st.integers(0, 7)
    ).map(lambda pair: pair[0] + pair[1] / 8)
)
subjects = st.one_of(
    st.sampled_from(IDS), st.sampled_from([f"spiffe://{TD}/user/zed", "spiffe://other.example/user/alice"])
)
assets = st.sampled_from(["plc-1", "plc-1", "plc-2", "plc-9"])


@st.composite
def instant_near(draw: st.DrawFn, window: TimeWindow | None) -> float:
    """An instant, often within a minute of one of the window's edges (on a DST-change day, too)."""
    if window is None or draw(st.integers(0, 2)) == 0:
        return draw(instants)
    first, last = pick(draw, INSTANT_RANGES)
    day = first + timedelta(days=draw(st.integers(0, (last - first).days)))
    minute = pick(draw, (window.start, window.end % 1440))
    local = datetime(day.year, day.month, day.day, minute // 60, minute % 60, tzinfo=ZoneInfo(window.tz_name))
    return local.timestamp() + pick(draw, (-61, -1, 0, 1, 60)) + draw(st.integers(0, 7)) / 8


@st.composite
def aimed_query(draw: st.DrawFn, policy: Policy) -> tuple[str, str, Request, float]:
    """A query from a subject a rule is for, aimed at the edges of one of the rule's entries."""
    pairs = [(rule, entry) for rule in policy.rules for entry in rule.modbus]
    if not pairs or draw(st.integers(0, 4)) == 0:
        return draw(st.tuples(subjects, assets, requests(named_codes(policy)), instants))
    rule, entry = pick(draw, pairs)
    matching = [i for i in IDS if subject_matches(policy, rule, i)]
    subject = pick(draw, matching) if matching else draw(subjects)
    asset = pick(draw, [name for name in rule.assets if name != "*"] or ["plc-1", "plc-2"])
    return subject, asset, draw(requests(hint=entry)), draw(instant_near(rule.window))


def queries(policy: Policy) -> st.SearchStrategy[list[tuple[str, str, Request, float]]]:
    return st.lists(aimed_query(policy), min_size=1, max_size=12)


def check(policy: Policy, subject: str, asset: str, request: Request, now: float) -> None:
    expected = reference_decide(policy, subject, asset, request, now)
    view = policy.view(subject, asset)
    assert (view is None) == (expected is None), (subject, asset)
    assert reference_sees_asset(policy, subject, asset) == (view is not None)
    if view is None or expected is None:
        return
    got = view.decide_modbus(request, now)
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
    assert policy.explain_modbus(subject, asset, request, now).decision == got


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=policies(), data=st.data())
def test_compiled_evaluator_agrees_with_reference(text: str, data: st.DataObject) -> None:
    policy = parse_policy(text)
    for subject, asset, request, now in data.draw(queries(policy)):
        check(policy, subject, asset, request, now)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=policies(), data=st.data(), start=instants, steps=st.lists(st.integers(-7200, 7200), max_size=20))
def test_agreement_holds_as_time_moves_both_ways(
    text: str, data: st.DataObject, start: float, steps: list[int]
) -> None:
    # The windows cache their state between transitions; moving back and forth must not fool them.
    policy = parse_policy(text)
    subject, asset, request, _ = data.draw(aimed_query(policy))
    now = start
    for step in steps:
        now += step
        check(policy, subject, asset, request, now)
