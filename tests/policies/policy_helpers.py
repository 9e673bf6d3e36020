"""Small builders shared by the policy tests: a policy head, requests by function code, instants."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from policies import Decision, Policy, PolicyError, parse_policy
from protocols.modbus.pdu import Request, parse_request

TD = "plant1.example"
ALICE = f"spiffe://{TD}/user/alice"
BOB = f"spiffe://{TD}/user/bob"
ANNA = f"spiffe://{TD}/user/anna"
EVE = f"spiffe://{TD}/vendor/acme/eve"


def issues(text: str) -> list[tuple[int | None, str, str]]:
    """Every problem a broken policy text is refused with: (line, field path, message)."""
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "policy.toml")
    return [(issue.line, issue.path, issue.message) for issue in caught.value.issues]


def only_issue(text: str) -> tuple[int | None, str, str]:
    found = issues(text)
    assert len(found) == 1, found
    return found[0]


def head(*, units: str = "[1, 2]", asset_extra: str = "", groups: str = "") -> str:
    return (
        f'trust_domain = "{TD}"\n\n'
        "[assets.plc-1]\n"
        'protocol = "modbus"\n'
        'upstream = "10.0.0.5:502"\n'
        f"unit_ids = {units}\n"
        f"{asset_extra}\n"
        "[assets.plc-2]\n"
        'protocol = "modbus"\n'
        'upstream = "10.0.0.6:502"\n\n'
        "[groups]\n"
        f'operators = ["{ALICE}", "{BOB}"]\n'
        f'vendor-acme = ["spiffe://{TD}/vendor/acme/*"]\n'
        f"{groups}\n"
    )


def policy(rules: str, **kwargs: str) -> Policy:
    return parse_policy(head(**kwargs) + rules, "policy.toml")


def at(text: str, tz: str = "UTC") -> float:
    """Epoch seconds of a local ISO time, e.g. at("2026-11-26T07:30", "Europe/Berlin")."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


NOON = at("2026-11-26T12:00")  # a Thursday


def decide(
    p: Policy, request: Request, *, subject: str = ALICE, asset: str = "plc-1", now: float = NOON
) -> Decision:
    view = p.view(subject, asset)
    assert view is not None, f"{asset} is cloaked for {subject}"
    return view.decide_modbus(request, now)


def outcome(decision: Decision) -> tuple[str, str | None, int]:
    return decision.verdict, decision.rule_id, decision.exception_code


def pdu_request(pdu: bytes, unit: int = 1) -> Request:
    return parse_request(7, unit, pdu)


def read(fc: int, address: int, count: int = 1, unit: int = 1) -> Request:
    return pdu_request(struct.pack(">BHH", fc, address, count), unit)


def write_coil(address: int, on: bool, unit: int = 1) -> Request:
    return pdu_request(struct.pack(">BHH", 5, address, 0xFF00 if on else 0), unit)


def write_register(address: int, value: int, unit: int = 1) -> Request:
    return pdu_request(struct.pack(">BHH", 6, address, value), unit)


def write_registers(address: int, values: Sequence[int], unit: int = 1) -> Request:
    n = len(values)
    return pdu_request(struct.pack(f">BHHB{n}H", 16, address, n, 2 * n, *values), unit)


def mask_write(address: int, and_mask: int, or_mask: int, unit: int = 1) -> Request:
    return pdu_request(struct.pack(">BHHH", 22, address, and_mask, or_mask), unit)


def read_write(read_address: int, read_count: int, write_address: int, values: Sequence[int]) -> Request:
    n = len(values)
    pdu = struct.pack(">BHHHHB", 23, read_address, read_count, write_address, n, 2 * n)
    return pdu_request(pdu + struct.pack(f">{n}H", *values))


def read_files(*records: tuple[int, int, int]) -> Request:
    body = b"".join(struct.pack(">BHHH", 6, f, r, n) for f, r, n in records)
    return pdu_request(bytes((20, len(body))) + body)


def write_files(*records: tuple[int, int, Sequence[int]]) -> Request:
    body = b"".join(struct.pack(f">BHHH{len(data)}H", 6, f, r, len(data), *data) for f, r, data in records)
    return pdu_request(bytes((21, len(body))) + body)


def diagnostics(sub_function: int) -> Request:
    return pdu_request(struct.pack(">BHH", 8, sub_function, 0))


def device_id(mei_type: int = 14) -> Request:
    return pdu_request(bytes((43, mei_type, 1, 0)) if mei_type == 14 else bytes((43, mei_type, 0)))


def no_data(fc: int) -> Request:
    """FC 7, 11, 12, 17: the function code alone."""
    return pdu_request(bytes((fc,)))


def opaque(fc: int) -> Request:
    return pdu_request(bytes((fc, 0, 1)))
