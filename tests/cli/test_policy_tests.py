"""Policy tests (``[[tests]]``): ``ztgate policy check`` runs them with explain's own request building,
passes a file that keeps its promises, fails one that breaks them naming the test and the deciding
rule, and refuses malformed tests with the file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.policy_tests import run_tests
from policies import parse_policy
from tests.policies.policy_helpers import issues

ALICE = "spiffe://plant1.example/user/alice"
EVE = "spiffe://plant1.example/vendor/acme/eve"
POLICY = f"""
trust_domain = "plant1.example"

[assets.plc-1]
protocol = "modbus"
upstream = "127.0.0.1:5020"

[assets.plc-2]
protocol = "enip"
upstream = "127.0.0.1:44818"
route = "1/0"

[groups]
vendors = ["spiffe://plant1.example/vendor/*"]

[[rules]]
id = "setpoint"
subjects = ["{ALICE}"]
assets = ["plc-1"]
modbus = [{{ fc = 6, address = "40", value = "0-1500" }}, {{ fc = [3], address = "0-99" }}]

[[rules]]
id = "vendor-look"
subjects = ["group:vendors"]
assets = ["plc-1", "plc-2"]
modbus = [{{ preset = "read-only", address = "0-99" }}]
enip = [{{ preset = "read-only" }}]

[[tests]]
name = "alice can always read"
subject = "{ALICE}"
asset = "plc-1"
request = {{ fc = 3, address = 0, count = 10 }}
expect = "allow"
rule = "setpoint"

[[tests]]
name = "no vendor writes the setpoint"
subject = "{EVE}"
asset = "plc-1"
request = {{ fc = 6, address = 40, value = [1200] }}
expect = "deny"

[[tests]]
name = "no vendor writes a tag"
subject = "{EVE}"
asset = "plc-2"
request = {{ service = "write_tag", tag = "Setpoint", type = "DINT", tag_value = ["5"] }}
expect = "deny"
"""
# The vendor's rule widened by mistake: a write of the setpoint gets through.
BROKEN = POLICY.replace('modbus = [{ preset = "read-only", address = "0-99" }]', "modbus = [{ fc = [3, 6] }]")


def test_a_policy_that_keeps_its_promises_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    assert main(["policy", "check", str(path)]) == 0
    assert "3 policy test(s) passed" in capsys.readouterr().out
    outcomes = run_tests(parse_policy(POLICY))
    assert [(o.verdict, o.rule) for o in outcomes] == [("allow", "setpoint"), ("deny", None), ("deny", None)]


def test_a_broken_promise_fails_the_check_naming_the_test_and_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(BROKEN)
    assert main(["policy", "check", str(path)]) == 1
    err = capsys.readouterr().err
    assert (
        'policy test "no vendor writes the setpoint" (tests[1]) failed: '
        'expected deny, got allow by rule "vendor-look"'
    ) in err
    assert "1 of 3 policy test(s) failed" in err
    wrong_rule = POLICY.replace('rule = "setpoint"', 'rule = "vendor-look"')
    outcome = run_tests(parse_policy(wrong_rule))[0]
    assert not outcome.passed
    assert outcome.describe().endswith('expected allow by rule "vendor-look", got allow by rule "setpoint"')


@pytest.mark.parametrize(
    ("request_text", "message"),
    [
        ("{ fc = 3, colour = 1 }", "'colour' is not an option of ztgate policy explain"),
        ("{ fc = [3, 4] }", "'fc' takes one value, not an array"),
        ('{ fc = "three" }', "'fc' = 'three' is not a valid value"),
        ("{ address = 3 }", "name a --fc"),
    ],
)
def test_a_test_whose_request_cannot_be_built_fails(request_text: str, message: str) -> None:
    text = POLICY.replace("request = { fc = 3, address = 0, count = 10 }", f"request = {request_text}")
    outcome = run_tests(parse_policy(text))[0]
    assert not outcome.passed and message in outcome.note


def test_a_codec_refusal_is_a_deny_by_no_rule() -> None:
    text = POLICY.replace(
        "request = { fc = 3, address = 0, count = 10 }", "request = { fc = 3, count = 126 }"
    )
    text = text.replace('expect = "allow"\nrule = "setpoint"', 'expect = "deny"')
    outcome = run_tests(parse_policy(text))[0]
    assert outcome.passed and outcome.verdict == "deny" and outcome.note.startswith("codec:")


def test_malformed_tests_are_refused_with_their_line() -> None:
    text = POLICY + (
        '\n[[tests]]\nname = "alice can always read"\nsubject = "spiffe://plant1.example/user/*"\n'
        'asset = "plc-9"\nrequest = 3\nexpect = "maybe"\nrule = "nope"\ncolour = 1\n'
        '\n[[tests]]\nname = "short"\n'
    )
    first = POLICY.count("\n") + 2  # the line of the new [[tests]]
    assert sorted(issues(text)) == sorted(
        [
            (first + 1, "tests[3].name", 'another test is named "alice can always read"'),
            (first + 2, "tests[3].subject", "a test's subject is one SPIFFE id, not a pattern"),
            (first + 3, "tests[3].asset", '"plc-9": no such asset'),
            (first + 4, "tests[3].request", "3: expected a table, got an integer"),
            (first + 5, "tests[3].expect", '"maybe" is not one of: allow, deny'),
            (first + 6, "tests[3].rule", '"nope": no rule has this id'),
            (
                first + 7,
                "tests[3].colour",
                'unknown key "colour" (expected one of: name, subject, asset, request, expect, rule, at)',
            ),
        ]
        + [
            (first + 9, "tests[4]", f'missing required key "{key}"')
            for key in ("subject", "asset", "request", "expect")
        ]
    )
