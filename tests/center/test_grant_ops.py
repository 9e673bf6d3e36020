"""A grant's operations in each protocol's policy words: the rule the center composes from them is the
rule an admin would write by hand, and one grammar serves the three protocols."""

from __future__ import annotations

import pytest

from gateway.center.grant_ops import VOCABULARIES, GrantError, parse_ops
from gateway.center.grants import compose
from policies import parse_policy
from tests.policies.test_grant_policy import HEAD

ADMIN = HEAD  # a Modbus, an EtherNet/IP and an OPC UA asset
VENDOR = "spiffe://plant1.example/vendor/acme/jo"
U = "nsu=urn:plant1:line1;s=Line1"

CASES = [
    (
        "plc-1",
        "modbus",
        "read 40001-40100, 40200..40210, write 40010 0..1500, fc 6,16 7 1..2",
        '[{ fc = [1, 2, 3, 4], address = ["40001-40100", "40200-40210"] },'
        ' { fc = [6, 16], address = "40010", value = "0-1500" },'
        ' { fc = [6, 16], address = 7, value = "1-2" }]',
    ),
    (
        "logix-1",
        "enip",
        "read Setpoint, Line1.*, Recipe[0..9], write Setpoint -10..1500.5, service read_modify_write Mode",
        '[{ preset = "read-only", tag = ["Setpoint", "Line1.*", "Recipe[0..9]"] },'
        ' { service = ["write_tag", "write_tag_fragmented"], tag = "Setpoint", value = "-10..1500.5" },'
        ' { service = "read_modify_write", tag = "Mode" }]',
    ),
    (
        "opc-1",
        "opcua",
        f"read {U}.*, write {U}.Setpoint 0..100, browse, subscribe {U}.*, service Read,HistoryRead {U}.Trend",
        f'[{{ service = "Read", node = "{U}.*" }},'
        f' {{ service = "Write", node = "{U}.Setpoint", value = "0..100" }},'
        ' { service_set = "View" },'
        f' {{ service_set = ["MonitoredItem", "Subscription"], node = "{U}.*" }},'
        f' {{ service = ["Read", "HistoryRead"], node = "{U}.Trend" }}]',
    ),
]


@pytest.mark.parametrize(("asset", "protocol", "ops", "by_hand"), CASES)
def test_a_grants_rule_is_the_rule_an_admin_would_write(
    asset: str, protocol: str, ops: str, by_hand: str
) -> None:
    grant = {
        "id": "gr-1",
        "requester": VENDOR,
        "asset": asset,
        "protocol": protocol,
        "ops": ops,
        "reason": "r",
        "not_before": 1796644800.0,
        "not_after": 1796648400.0,
    }
    composed = parse_policy(compose(ADMIN, [grant]))
    rule_text = f'id = "by-hand"\nsubjects = ["{VENDOR}"]\nassets = ["{asset}"]\n{protocol} = {by_hand}\n'
    written = parse_policy(ADMIN + "\n[[rules]]\n" + rule_text)
    rule = composed.rules[0]
    assert (rule.id, rule.subjects, rule.assets) == ("gr-1", (VENDOR,), (asset,))
    assert str(rule.window) == "2026-12-07T12:00:00Z until 2026-12-07T13:00:00Z"
    described = [entry.describe() for entry in getattr(rule, protocol)]
    assert described == [entry.describe() for entry in getattr(written.rules[0], protocol)]
    assert len(described) == len(parse_ops(ops, protocol))


def test_one_grammar_serves_every_protocol() -> None:
    for protocol, vocabulary in VOCABULARIES.items():
        assert parse_ops(vocabulary.example, protocol)
        with pytest.raises(GrantError) as refused:
            parse_ops("read A 1..2 3", protocol)
        assert str(refused.value) == "'read A 1..2 3': 'A 1..2 3' is more than a target and its bounds"
        with pytest.raises(GrantError) as empty:
            parse_ops(" , ", protocol)
        assert str(empty.value).startswith("no operations: expected one of: read ")
    with pytest.raises(GrantError) as unknown:
        parse_ops("read 1", "profinet")
    assert str(unknown.value) == "protocol 'profinet': one of modbus, enip, opcua"
