"""``ztgate lock create|ls|rm``: locks through the center's API (docs/access.md), with an admin's or
an approver's credentials (``--creds DIR`` or ``$ZTGATE_CREDENTIALS``). Exit status: 0 done, 1 refused
or unreachable, 2 bad usage."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.center.cli import parse_duration, when, with_api
from gateway.center.client import CenterClient

__all__ = ["configure"]


def _describe(lock: dict[str, Any]) -> str:
    until = "until removed" if lock["expires_at"] is None else f"until {when(lock['expires_at'])}"
    return f"{lock['id']}  {lock['target']}  {until}  by {lock['created_by']}: {lock['reason']}"


def _lock(args: argparse.Namespace) -> Callable[[CenterClient], Awaitable[int]]:
    async def work(client: CenterClient) -> int:
        if args.lock_action == "create":
            body: dict[str, Any] = {"target": args.target, "reason": args.reason}
            if args.ttl is not None:
                body["ttl_s"] = args.ttl
            print(_describe(await client.call("POST", "/v1/locks", body)))
        elif args.lock_action == "rm":
            removed = await client.call("DELETE", f"/v1/locks/{args.id}")
            print(f"removed {_describe(removed)}")
        else:
            for lock in (await client.call("GET", "/v1/locks"))["locks"]:
                print(_describe(lock))
        return 0

    return work


def configure(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lock = subparsers.add_parser(
        "lock",
        help="locks: cut and refuse the sessions of an identity, a vendor, an agent, an asset or a grant",
        description="Locks through the center: every gateway cuts the live sessions a lock matches and "
        "refuses new ones; a locked identity's certificate is not renewed (docs/access.md).",
    )
    actions = lock.add_subparsers(dest="lock_action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="lock a target")
    create.add_argument(
        "--target",
        required=True,
        metavar="KIND=VALUE",
        help="identity=SPIFFE_ID, prefix=spiffe://TD/vendor/acme/*, agent=SPIFFE_ID, asset=NAME, grant=ID",
    )
    create.add_argument(
        "--ttl", type=parse_duration, help="lift the lock after this long (2h); default never"
    )
    create.add_argument("--reason", required=True, help="why (in every gateway's audit of a cut session)")
    with_api(create, _lock)
    with_api(actions.add_parser("ls", help="the locks in force"), _lock)
    remove = actions.add_parser("rm", help="remove a lock")
    remove.add_argument("id", help="the lock's id (lk-...)")
    with_api(remove, _lock)
