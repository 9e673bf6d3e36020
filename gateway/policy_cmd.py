"""``ztgate policy check`` and ``ztgate policy explain``.

``explain`` builds the request from its arguments with :mod:`gateway.explain_request`; ``check``
validates the file and runs its policy tests (:mod:`gateway.policy_tests`).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path

from gateway.explain_request import add_explain_arguments, explain
from gateway.policy_tests import failures_text, run_tests
from policies import PolicyError, load_policy
from protocols.enip import CipProtocolError
from protocols.modbus import ModbusProtocolError
from protocols.opcua import OpcUaProtocolError


def _check(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.file)
    except PolicyError as error:
        print(error, file=sys.stderr)
        print(f"{args.file}: {len(error.issues)} error(s); the file was not accepted", file=sys.stderr)
        return 1
    outcomes = run_tests(policy)
    failed = [outcome for outcome in outcomes if not outcome.passed]
    if failed:
        print(f"{args.file}: {failures_text(outcomes)}", file=sys.stderr)
        print(f"{args.file}: {len(failed)} of {len(outcomes)} policy test(s) failed", file=sys.stderr)
        return 1
    print(
        f"{args.file}: OK, revision {policy.revision}: {len(policy.assets)} asset(s), "
        f"{len(policy.groups)} group(s), {len(policy.rules)} rule(s), trust domain {policy.trust_domain}, "
        f"{len(outcomes)} policy test(s) passed"
    )
    return 0


def _explain(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.file)
    except PolicyError as error:
        print(error, file=sys.stderr)
        return 2
    now = time.time()
    if args.at is not None:
        try:
            moment = datetime.fromisoformat(args.at)
        except ValueError:
            print(f"ztgate policy explain: --at {args.at!r}: expected an ISO 8601 time", file=sys.stderr)
            return 2
        if moment.tzinfo is None:
            print(
                "ztgate policy explain: --at needs a UTC offset, e.g. 2026-11-26T07:30:00+01:00",
                file=sys.stderr,
            )
            return 2
        now = moment.timestamp()
    try:
        explanation = explain(policy, args, now)
    except ModbusProtocolError as exc:
        print(f"the gateway's codec refuses this request before any policy: {exc}")
        print(f"a client would get exception {exc.exception_code}")
        return 1
    except CipProtocolError as exc:
        print(f"the gateway's codec refuses this request before any policy: {exc}")
        print(f"a client would get general status 0x{exc.general_status or 0:02X}")
        return 1
    except OpcUaProtocolError as exc:
        print(f"the gateway's codec refuses this request before any policy: {exc}")
        return 1
    except (ValueError, OverflowError, KeyError) as exc:
        print(f"ztgate policy explain: {exc}", file=sys.stderr)
        return 2
    print(explanation)
    return 0 if explanation.decision.allowed else 1


def configure(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("policy", help="check a policy file, or explain a decision")
    commands = parser.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)

    check = commands.add_parser(
        "check", help="validate a policy file", description="Validate a policy file; list every error."
    )
    check.add_argument("file", type=Path)
    check.set_defaults(func=_check)

    explain = commands.add_parser(
        "explain",
        help="decide one request and say which rule decided",
        description="Decide one Modbus, EtherNet/IP or OPC UA request as the gateway would and explain the "
        "decision. Exit status: 0 allowed, 1 refused, 2 usage or policy error.",
    )
    add_explain_arguments(explain)
    explain.set_defaults(func=_explain)
