"""``effect = "deny", scope = "session"``: a rule that refuses an identity any session to its assets,
over every allow rule; what it may not carry; and how ``policy explain`` shows it."""

from __future__ import annotations

from tests.policies.policy_helpers import ALICE, BOB, EVE, NOON, head, issues, policy, read

RULES = """
[[rules]]
id = "read"
subjects = ["group:operators", "group:vendor-acme"]
assets = ["*"]
modbus = [{ fc = 3, address = "0-99" }]

[[rules]]
id = "acme-out"
effect = "deny"
scope = "session"
description = "acme's contract is suspended"
subjects = ["group:vendor-acme"]
assets = ["plc-1"]

[[rules]]
id = "bob-nowhere"
effect = "deny"
scope = "session"
subjects = ["spiffe://plant1.example/user/bob"]
assets = ["*"]
"""


def test_a_session_deny_rule_names_whom_it_refuses_where() -> None:
    p = policy(RULES)
    denial = p.session_denial(EVE, "plc-1")
    assert denial is not None and denial.id == "acme-out" and denial.scope == "session"
    assert p.session_denial(EVE, "plc-2") is None
    assert [p.session_denial(BOB, a).id for a in ("plc-1", "plc-2")] == ["bob-nowhere"] * 2  # type: ignore[union-attr]
    assert p.session_denial(ALICE, "plc-1") is None
    # It decides no request: the views of those it spares are the allow rules' alone.
    view = p.view(EVE, "plc-2")
    assert view is not None and [r.id for r in view.rules] == ["read"]
    assert (
        p.view(ALICE, "plc-1") is not None and p.rules[1].scope == "session" and p.rules[0].scope == "request"
    )


def test_explain_names_the_session_rule() -> None:
    p = policy(RULES)
    refused = p.explain_modbus(EVE, "plc-1", read(3, 1), NOON)
    assert refused.decision.verdict == "deny" and refused.decision.rule_id == "acme-out"
    text = str(refused)
    assert "rule: acme-out (effect deny, scope session)" in text
    assert "acme's contract is suspended" in text and "refused at the handshake" in text
    assert p.explain_modbus(EVE, "plc-2", read(3, 1), NOON).decision.verdict == "allow"
    # Where no allow rule names the asset, the asset stays cloaked, as at the gateway.
    assert "cloaked" in str(
        policy(RULES.replace('assets = ["*"]\nmodbus', 'assets = ["plc-2"]\nmodbus', 1)).explain_modbus(
            EVE, "plc-1", read(3, 1), NOON
        )
    )


def test_what_a_session_rule_may_not_be() -> None:
    base = head() + '\n[[rules]]\nid = "x"\nsubjects = ["group:operators"]\nassets = ["plc-1"]\n'
    assert [(path, message) for _, path, message in issues(base + 'scope = "session"\n')] == [
        ("rules[0].scope", 'scope = "session" is for deny rules (effect = "deny")')
    ]
    found = issues(
        base + 'effect = "deny"\nscope = "session"\nmode = "monitor"\nmodbus = [{ fc = 3 }]\n'
        'when = { hours = "06:00-18:00" }\n'
    )
    messages = sorted(message for _, _, message in found)
    assert messages == sorted(
        [
            'scope = "session" cuts sessions: it cannot be in mode "monitor"',
            'a scope = "session" rule denies whole sessions: it takes no "modbus"',
            'a scope = "session" rule denies whole sessions: it takes no "when"',
        ]
    )
    assert (
        issues(base + 'effect = "deny"\nscope = "connection"\n')[0][2]
        == '"connection" is not one of: request, session'
    )
