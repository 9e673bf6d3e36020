"""``ztgate access request|ls|approve|deny|revoke|cert``: just-in-time vendor access through the
center's API (docs/access.md), with the caller's credentials (``--creds DIR`` or
``$ZTGATE_CREDENTIALS``): a vendor asks and fetches its certificate for the grant; approvers list,
approve, deny and revoke. Exit status: 0 done, 1 refused or unreachable, 2 bad usage."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.center.cli import CREDENTIALS_ENV, parse_duration, when, with_api
from gateway.center.client import CenterClient
from gateway.center.grant_ops import PROTOCOLS, VOCABULARIES, usage
from gateway.credentials import Credentials, make_csr

__all__ = ["configure", "parse_start"]


def parse_start(text: str) -> float:
    """``now``, ``+30m`` (from now) or an ISO 8601 time with its UTC offset -> epoch seconds."""
    text = text.strip()
    if text == "now":
        return time.time()
    if text.startswith("+"):
        return time.time() + parse_duration(text[1:])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected now, +DURATION (+30m) or a time such as 2026-12-07T14:00:00Z"
        ) from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give the UTC offset, e.g. 2026-12-07T14:00:00+01:00")
    return moment.timestamp()


def describe(grant: dict[str, Any]) -> str:
    approvals = f"{len(grant['approvals'])}/{grant['approvers_needed']} approvals"
    head = (
        f"{grant['id']}  {grant['state']:8} {grant['requester']} on {grant['asset']} ({grant['protocol']}): "
        f"{grant['ops']}  {when(grant['not_before'])} .. {when(grant['not_after'])}  {approvals}"
    )
    tail = f"  reason: {grant['reason']}"
    if grant.get("decision"):
        tail += f"  ({grant['state']} by {grant['decided_by']}: {grant['decision']})"
    return head + tail


def _work(args: argparse.Namespace) -> Callable[[CenterClient], Awaitable[int]]:
    async def work(client: CenterClient) -> int:
        action = args.access_action
        if action == "request":
            body: dict[str, Any] = {
                "asset": args.asset,
                "protocol": args.protocol,
                "ops": args.ops,
                "for_s": args.duration,
                "reason": args.reason,
            }
            if args.start is not None:
                body["from"] = args.start
            print(describe(await client.call("POST", "/v1/access", body)))
        elif action == "ls":
            answer = await client.call("GET", "/v1/access", params={"state": args.state})
            for grant in answer["grants"]:
                print(describe(grant))
        elif action in ("approve", "deny", "revoke"):
            body = {} if args.reason is None else {"reason": args.reason}
            answer = await client.call("POST", f"/v1/access/{args.id}/{action}", body)
            revision = f"  (policy revision {answer['revision']})" if "revision" in answer else ""
            print(describe(answer) + revision)
        else:
            await _certificate(client, args)
        return 0

    return work


async def _certificate(client: CenterClient, args: argparse.Namespace) -> None:
    own = Credentials(args.creds or Path(os.environ.get(CREDENTIALS_ENV, ".")))
    info = own.center()
    key, csr = make_csr(info.id)
    answer = await client.call("POST", f"/v1/access/{args.id}/certificate", {"csr": csr})
    Credentials(args.out).save(key, answer["certificate"], answer["ca"], info)
    print(f"credentials for grant {answer['grant']} in {args.out}, valid until {when(answer['not_after'])}")


def _ops_help() -> str:
    """The operations of each protocol, from the vocabularies themselves (gateway/center/grant_ops.py)."""
    protocols = "; ".join(
        f'{protocol}: {", ".join(usage(vocabulary))} (e.g. "{vocabulary.example}")'
        for protocol, vocabulary in VOCABULARIES.items()
    )
    return (
        "the operations, comma-separated, in the policy's words for the asset's protocol: VERB TARGET"
        f" [LOW..HIGH]; targets without a verb join the operation before them. {protocols}"
        " (docs/access.md)"
    )


def configure(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    access = subparsers.add_parser(
        "access",
        help="just-in-time vendor access: request, approve, deny, revoke a grant",
        description="A vendor asks for a window of access to one asset; approvers grant it; the gateways "
        "enforce it and cut it at its end (docs/access.md).",
    )
    actions = access.add_subparsers(dest="access_action", metavar="ACTION", required=True)
    request = actions.add_parser("request", help="ask for a grant (as the vendor)")
    request.add_argument("--asset", required=True)
    request.add_argument("--protocol", required=True, choices=PROTOCOLS, help="the asset's protocol")
    request.add_argument("--ops", required=True, help=_ops_help())
    request.add_argument(
        "--from", dest="start", type=parse_start, help="when it starts: now (default), +30m, or an ISO time"
    )
    request.add_argument("--for", dest="duration", required=True, type=parse_duration, help="how long (2h)")
    request.add_argument("--reason", required=True, help="why (in the center's audit and the grant's rule)")
    with_api(request, _work)
    listing = actions.add_parser("ls", help="grants: pending ones unless --state says otherwise")
    listing.add_argument(
        "--state",
        default="pending",
        choices=("all", "pending", "approved", "denied", "refused", "revoked", "expired"),
    )
    with_api(listing, _work)
    for name, text, reason in (
        ("approve", "approve a pending request (the last approval needed grants it)", False),
        ("deny", "deny a pending request", False),
        ("revoke", "end an approved grant now: a lock on it cuts its sessions everywhere", True),
    ):
        parser = actions.add_parser(name, help=text)
        parser.add_argument("id", help="the grant's id (gr-...)")
        if name != "approve":
            parser.add_argument("--reason", required=reason, help="why (audited)")
        else:
            parser.set_defaults(reason=None)
        with_api(parser, _work)
    cert = actions.add_parser("cert", help="the vendor's certificate for an approved grant (ends with it)")
    cert.add_argument("id", help="the grant's id (gr-...)")
    cert.add_argument("--out", required=True, type=Path, help="credentials folder to write")
    with_api(cert, _work)
