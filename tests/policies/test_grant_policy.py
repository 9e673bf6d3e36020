"""What just-in-time grants need from a policy: periods (``when = { from, until }``) and
``[vendor_access]``, each refused with a message naming the line when malformed."""

from __future__ import annotations

import pytest

from policies import PolicyError, parse_policy
from policies.timewindow import Period

HEAD = """trust_domain = "plant1.example"

[assets.plc-1]
protocol = "modbus"
upstream = "127.0.0.1:502"

[groups]
vendors = ["spiffe://plant1.example/vendor/*"]
"""


def _rule(when: str) -> str:
    return (
        HEAD + '\n[[rules]]\nid = "gr-1"\nsubjects = ["group:vendors"]\nassets = ["plc-1"]\n'
        f'when = {when}\nmodbus = [{{ fc = 3, address = "0-9" }}]\n'
    )


def test_a_period_is_open_once_from_its_start_to_its_end() -> None:
    policy = parse_policy(_rule("{ from = 2026-12-07T12:00:00Z, until = 2026-12-07T14:00:00+01:00 }"))
    window = policy.rules[0].window
    assert isinstance(window, Period)
    start = 1796644800.0  # 2026-12-07T12:00:00Z
    assert (window.start, window.end) == (start, start + 3600)
    assert [window.is_open(t) for t in (start - 1, start, start + 3599.9, start + 3600)] == [
        False,
        True,
        True,
        False,
    ]
    as_strings = parse_policy(_rule('{ from = "2026-12-07T12:00:00Z", until = "2026-12-07T13:00:00Z" }'))
    assert str(as_strings.rules[0].window) == "2026-12-07T12:00:00Z until 2026-12-07T13:00:00Z"


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ("{ from = 2026-12-07T12:00:00Z, until = 2026-12-07T12:00:00Z }", '"until" must come after "from"'),
        ("{ from = 2026-12-07T12:00:00, until = 2026-12-07T13:00:00Z }", "needs a UTC offset"),
        ('{ from = "soon", until = 2026-12-07T13:00:00Z }', "expected a date and time"),
        ("{ from = 2026-12-07T12:00:00Z }", 'a period is "from" and "until" together'),
        ('{ from = 2026-12-07T12:00:00Z, until = 2026-12-07T13:00:00Z, days = "mon" }', "together, without"),
    ],
)
def test_a_malformed_period_is_refused_on_its_line(when: str, message: str) -> None:
    with pytest.raises(PolicyError) as refused:
        parse_policy(_rule(when), "policy.toml")
    assert message in str(refused.value) and "policy.toml:14" in str(refused.value)


VENDOR_ACCESS = """
[vendor_access]
subjects = ["group:vendors"]
assets = ["plc-1"]
max_window_s = 7200
approvers = 2
modbus = [{ preset = "read-only", address = "0-99" }]
"""


def test_vendor_access_says_who_may_ask_for_what_and_how_many_approve() -> None:
    policy = parse_policy(HEAD + VENDOR_ACCESS)
    access = policy.vendor_access
    assert access is not None
    assert (access.assets, access.max_window_s, access.approvers) == (("plc-1",), 7200.0, 2)
    assert policy.may_request_grant("spiffe://plant1.example/vendor/acme/jo")
    assert not policy.may_request_grant("spiffe://plant1.example/user/alice")
    assert parse_policy(HEAD).vendor_access is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("approvers = 2", "approvers = 6"), "approvers"),
        (("max_window_s = 7200", "max_window_s = 0"), "max_window_s"),
        (('assets = ["plc-1"]', 'assets = ["plc-9"]'), "no such asset"),
        (('address = "0-99" }', 'address = "0-99", unit = 1 }'), "names fc, preset, address and value only"),
        (("approvers = 2", "approvers = 2\nmaybe = 1"), "maybe"),
    ],
)
def test_a_malformed_vendor_access_is_refused(change: tuple[str, str], message: str) -> None:
    with pytest.raises(PolicyError) as refused:
        parse_policy(HEAD + VENDOR_ACCESS.replace(*change), "policy.toml")
    assert message in str(refused.value) and "vendor_access" in str(refused.value)
