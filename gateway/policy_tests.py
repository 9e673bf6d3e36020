"""Policy tests: the ``[[tests]]`` of a policy file, promises the site wrote down ("no vendor may ever
write coils 0-99 on plc-1", "operators can always read"), checked against every revision.

A test's ``request`` is a table of ``ztgate policy explain``'s options (``fc``, ``address``,
``value``, ``service``, ``tag``, ``node``, ...; a repeatable option takes an array). It is built and
decided by the same code as ``explain``, so a test decides exactly what the gateway would. ``ztgate
policy check`` runs them; the center refuses a push whose tests fail, naming the test and the rule
that decided.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from datetime import datetime

from gateway.explain_request import add_explain_arguments, explain
from policies import Policy
from policies.model import PolicyTest
from protocols.enip import CipProtocolError
from protocols.modbus import ModbusProtocolError
from protocols.opcua import OpcUaProtocolError

__all__ = ["TestOutcome", "failures_text", "run_tests"]

_PARSER = argparse.ArgumentParser(add_help=False, exit_on_error=False)
add_explain_arguments(_PARSER)
_SET_BY_THE_TEST = frozenset({"subject", "asset", "at", "file"})  # the test's own keys, not request options
_OPTIONS = {
    option[2:]: action
    for action in _PARSER._actions
    for option in action.option_strings
    if option.startswith("--") and option[2:] not in _SET_BY_THE_TEST
}


@dataclass(frozen=True)
class TestOutcome:
    test: PolicyTest
    verdict: str  # "allow" or "deny": whether the request would reach the device
    rule: str | None  # the deciding rule; None for the default deny, or a request the codec refuses
    passed: bool
    note: str = ""  # why nothing decided: a request that cannot be built, the codec's refusal

    def describe(self) -> str:
        decided = f'{self.verdict} by rule "{self.rule}"' if self.rule else f"{self.verdict} by no rule"
        if self.note:
            decided += f" ({self.note})"
        where = f'policy test "{self.test.name}" (tests[{self.test.index}])'
        if self.passed:
            return f"{where}: {decided}: passed"
        wanted = self.test.expect + (f' by rule "{self.test.rule}"' if self.test.rule else "")
        return f"{where} failed: expected {wanted}, got {decided}"


def _arguments(test: PolicyTest) -> argparse.Namespace:
    args = _PARSER.parse_args(["policy.toml", "--subject", test.subject, "--asset", test.asset])
    for key, value in test.request.items():
        action = _OPTIONS.get(key.replace("_", "-"))
        if action is None:
            raise ValueError(f"request: {key!r} is not an option of ztgate policy explain")
        repeated = isinstance(action, argparse._AppendAction)
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list) and not repeated:
            raise ValueError(f"request: {key!r} takes one value, not an array")
        try:
            converted = [action.type(str(item)) if callable(action.type) else str(item) for item in items]
        except (TypeError, ValueError):
            raise ValueError(f"request: {key!r} = {value!r} is not a valid value") from None
        setattr(args, action.dest, converted if repeated else converted[0])
    return args


def _when(test: PolicyTest, now: float) -> float:
    if test.at is None:
        return now
    try:
        moment = datetime.fromisoformat(test.at)
    except ValueError:
        raise ValueError(f"at {test.at!r}: expected an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise ValueError(f"at {test.at!r}: needs a UTC offset, e.g. 2026-11-26T07:30:00+01:00")
    return moment.timestamp()


def _run(policy: Policy, test: PolicyTest, now: float) -> TestOutcome:
    try:
        explanation = explain(policy, _arguments(test), _when(test, now))
    except (ModbusProtocolError, CipProtocolError, OpcUaProtocolError) as exc:
        # The gateway refuses such a request before any policy: the client gets the codec's error.
        return TestOutcome(test, "deny", None, test.expect == "deny" and test.rule is None, f"codec: {exc}")
    except (ValueError, OverflowError, KeyError, argparse.ArgumentError) as exc:
        return TestOutcome(test, "none", None, False, f"no request: {exc}")
    decision = explanation.decision
    verdict = "allow" if decision.allowed else "deny"
    passed = verdict == test.expect and (test.rule is None or decision.rule_id == test.rule)
    return TestOutcome(test, verdict, decision.rule_id, passed)


def run_tests(policy: Policy, now: float | None = None) -> list[TestOutcome]:
    """Every test of ``policy``, decided at its ``at`` or at ``now`` (default: the current time)."""
    moment = time.time() if now is None else now
    return [_run(policy, test, moment) for test in policy.tests]


def failures_text(outcomes: list[TestOutcome]) -> str:
    """One line per failed test: the test's name, what it expected, and what decided instead."""
    return "\n".join(outcome.describe() for outcome in outcomes if not outcome.passed)
