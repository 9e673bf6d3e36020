"""Assets closed by the gateway (a stale policy): every request refused with the reason, access kept."""

from __future__ import annotations

import pytest

from policies import parse_policy
from policies.refusals import RefusingView
from tests.policies.enip_helpers import read_tag
from tests.policies.policy_helpers import ALICE, BOB, decide, head, only_issue, policy, read, write_register

RULES = """
[[rules]]
id = "ops"
subjects = ["group:operators"]
assets = ["plc-1", "plc-2"]
modbus = [{ fc = [3, 6], address = "0-99" }]
"""


def test_on_stale_defaults_to_closed_and_takes_static() -> None:
    p = policy(RULES, asset_extra='on_stale = "static"')
    assert p.assets["plc-1"].on_stale == "static"
    assert p.assets["plc-2"].on_stale == "closed"


def test_on_stale_takes_only_closed_or_static() -> None:
    line, path, message = only_issue(head(asset_extra='on_stale = "open"') + RULES)
    assert path == "assets.plc-1.on_stale"
    assert message == '"open" is not one of: closed, static'
    assert line == 7  # the asset_extra line of the head


def test_a_refused_asset_refuses_every_request_with_the_reason_and_keeps_access() -> None:
    base = policy(RULES)
    closed = base.with_refusals({"plc-1": "policy stale"})
    assert closed.revision == base.revision and closed.rules is base.rules
    assert decide(base, read(3, 10)).allowed
    for request in (read(3, 10), write_register(5, 1), read(1, 0), read(3, 10, unit=9)):
        decision = decide(closed, request)
        assert not decision.allowed
        assert (decision.reason, decision.exception_code, decision.action) == ("policy stale", 1, "exception")
    # The other asset decides as before; the identity still reaches the closed one (no cloaking change).
    assert decide(closed, read(3, 10), asset="plc-2").allowed
    assert isinstance(closed.view(BOB, "plc-1"), RefusingView)
    assert closed.view("spiffe://plant1.example/user/mallory", "plc-1") is None
    # The original is untouched: a refusal is a new policy object.
    assert decide(base, read(3, 10)).allowed
    assert base.view(ALICE, "plc-1") is not closed.view(ALICE, "plc-1")


def test_a_refusing_view_gives_the_modbus_session_no_table_to_decide_with() -> None:
    # The Modbus session decides a known unit and function code with the view's table itself; a
    # refusing view must leave every request to its own decide_modbus.
    base = policy(RULES)
    assert base.view(BOB, "plc-1").modbus_tables()[1]  # the rules' tables: fc 3 and 6
    for closed in (base.with_refusals({"plc-1": "policy stale"}), base.with_refusals({}, {"plc-1": "audit"})):
        view = closed.view(BOB, "plc-1")
        assert isinstance(view, RefusingView) and view.modbus_tables() == (frozenset(), {})


def test_a_refused_asset_in_monitor_mode_still_refuses_with_its_own_code() -> None:
    extra = 'mode = "monitor"\ndeny = { action = "exception", function = 4 }'
    closed = policy(RULES, asset_extra=extra).with_refusals({"plc-1": "policy stale"})
    decision = decide(closed, read(3, 10))
    assert (decision.verdict, decision.exception_code) == ("deny", 4)


def test_refusals_name_known_assets_only() -> None:
    with pytest.raises(ValueError, match="no such assets: plc-9"):
        policy(RULES).with_refusals({"plc-9": "x"})


def test_a_refused_enip_asset_answers_privilege_violation() -> None:
    text = f"""
trust_domain = "plant1.example"
[assets.plc-2]
protocol = "enip"
upstream = "10.0.0.6"
route = "1/0"
[[rules]]
id = "tags"
subjects = ["{ALICE}"]
assets = ["plc-2"]
enip = [{{ preset = "read-only", tag = "*" }}]
"""
    view = parse_policy(text).with_refusals({"plc-2": "policy stale"}).view(ALICE, "plc-2")
    assert view is not None
    decision = view.decide_enip(read_tag("Line1.Speed"), 0.0)
    assert (decision.allowed, decision.exception_code, decision.reason) == (False, 0x0F, "policy stale")


def test_a_center_revision_names_the_policy() -> None:
    assert parse_policy(head() + RULES, revision="7").revision == "7"
    assert len(parse_policy(head() + RULES).revision) == 12
