"""``ztgate center``: set up and run a center, and administer it over its API.

Local (on the center's host, reading its files): ``init``, ``serve`` (also ``ztgate center --config
FILE``), ``credentials``. Over the API, with an admin's credentials folder (``--creds DIR`` or
``$ZTGATE_CREDENTIALS``): ``token create``, ``identity list|set``, ``policy push|log|show|diff|rollback``,
``audit``. Exit status: 0 done, 1 refused or unreachable, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway.center.client import CenterClient, CenterError
from gateway.cli import log_to_stderr
from gateway.config import ConfigError
from gateway.credentials import Credentials, CredentialsError

__all__ = ["configure", "parse_duration", "when", "with_api"]

CREDENTIALS_ENV = "ZTGATE_CREDENTIALS"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90``, ``45s``, ``30m``, ``1h``, ``2d`` -> seconds."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a duration such as 90s, 30m, 1h, 2d")
    return float(match[1]) * _UNITS[match[2]]


def when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch))


def _fail(message: str, status: int = 1) -> int:
    print(f"ztgate center: {message}", file=sys.stderr)
    return status


# ------------------------------------------------------------------------------------------ local


def _cmd_init(args: argparse.Namespace) -> int:
    from gateway.center.setup import SetupError, init_center

    try:
        config, admin = asyncio.run(
            init_center(
                args.dir,
                args.trust_domain,
                name=args.name,
                listen=args.listen,
                url=args.url,
                store=args.store,
                admin=args.admin,
            )
        )
    except (SetupError, CredentialsError, OSError) as error:
        return _fail(str(error), 2)
    info = admin.center()
    print(f"created a center for trust domain {info.trust_domain} in {args.dir}")
    print(f"config       {config.source}")
    print(f"center id    {info.center_id}")
    print(f"fingerprint  {info.fingerprint}")
    print(f"admin        {info.id}: credentials in {admin.directory} (valid 12 h)")
    print(f"run it:      ztgate center serve --config {config.source}")
    print(f"then:        ztgate center token create --creds {admin.directory} --role agent --id ... --ttl 1h")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from gateway.center.config import load_center_config
    from gateway.center.service import Center
    from gateway.pki import PkiError

    log_to_stderr(args.log_level)
    try:
        config = load_center_config(args.config)
        center = Center(config)
    except ConfigError as error:
        return _fail(f"configuration refused:\n{error}", 2)
    except PkiError as error:
        return _fail(f"keys refused: {error}", 2)
    except (OSError, ValueError, ssl.SSLError) as error:  # an [audit] sink that cannot be made
        return _fail(f"cannot start the audit trail: {error}", 1)

    async def serve() -> int:
        try:
            await center.start()
        except Exception as error:  # the store, the port: say so and stop
            print(f"ztgate center: cannot start: {error}", file=sys.stderr)
            await center.store.close()
            return 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        if center.audit is not None:  # logrotate's postrotate: reopen the audit files
            loop.add_signal_handler(signal.SIGHUP, center.audit.reopen)
        print(f"center {center.authority.center_id} listening on port {center.port}", flush=True)
        await stop.wait()
        await center.stop()
        return 0

    return asyncio.run(serve())


def _cmd_credentials(args: argparse.Namespace) -> int:
    from gateway.center.config import load_center_config
    from gateway.center.db import open_database
    from gateway.center.setup import SetupError, issue_credentials
    from gateway.center.store import Store

    try:
        config = load_center_config(args.config)
    except ConfigError as error:
        return _fail(f"configuration refused:\n{error}", 2)

    async def issue() -> Credentials:
        store = Store(open_database(config.store, config.base))
        await store.open()
        try:
            return await issue_credentials(config, store, args.id, args.out)
        finally:
            await store.close()

    try:
        credentials = asyncio.run(issue())
    except SetupError as error:
        return _fail(str(error))
    print(f"credentials for {args.id} in {credentials.directory}")
    return 0


def _cmd_rotate(args: argparse.Namespace) -> int:
    from gateway.center.authority import load_authority
    from gateway.center.config import load_center_config
    from gateway.pki import PkiError

    try:
        config = load_center_config(args.config)
        print(load_authority(config.keys, config.name).rotate_signing_key())
    except ConfigError as error:
        return _fail(f"configuration refused:\n{error}", 2)
    except (PkiError, OSError) as error:
        return _fail(str(error))
    return 0


# ------------------------------------------------------------------------------------------ API


def _api(work: Callable[[CenterClient], Awaitable[int]]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        folder = args.creds or os.environ.get(CREDENTIALS_ENV)
        if not folder:
            return _fail(f"give an admin's credentials folder with --creds DIR or ${CREDENTIALS_ENV}", 2)

        async def call() -> int:
            async with CenterClient.for_credentials(Credentials(Path(folder)), url=args.center) as client:
                return await work(client)

        try:
            return asyncio.run(call())
        except CredentialsError as error:
            return _fail(str(error), 2)
        except CenterError as error:
            return _fail(str(error))

    return run


def _token_create(args: argparse.Namespace) -> Callable[[CenterClient], Awaitable[int]]:
    async def work(client: CenterClient) -> int:
        body = {"role": args.role, "id": args.id, "ttl_s": args.ttl}
        answer = await client.call("POST", "/v1/tokens", body)
        print(f"token        {answer['token']}")
        print(f"id           {answer['id']} (role {answer['role']})")
        print(f"expires      {when(answer['expires_at'])} (single use)")
        print(f"fingerprint  {answer['fingerprint']}")
        print("enroll with:")
        print(
            f"  ztgate enroll --center {answer['center']} --token {answer['token']} "
            f"--fingerprint {answer['fingerprint']} --dir DIR"
        )
        return 0

    return work


def _print_revisions(revisions: list[dict[str, Any]]) -> None:
    print(f"{'rev':>5}  {'when':20}  {'author':40}  comment")
    for r in revisions:
        note = r["comment"] + (f" (rollback to {r['rollback_of']})" if r.get("rollback_of") else "")
        print(f"{r['revision']:>5}  {when(r['created_at']):20}  {r['author']:40}  {note}")


def _policy(args: argparse.Namespace) -> Callable[[CenterClient], Awaitable[int]]:
    async def work(client: CenterClient) -> int:
        action = args.policy_action
        if action == "push":
            try:
                text = args.file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as error:
                print(f"ztgate center: cannot read {args.file}: {error}", file=sys.stderr)
                return 2
            try:
                answer = await client.call("POST", "/v1/policy", {"policy": text, "comment": args.comment})
            except CenterError as error:
                if error.status == 422:
                    print(str(error.message).replace("policy.toml", str(args.file)), file=sys.stderr)
                    return 1
                raise
            print(f"revision {answer['revision']} (was {answer['previous']}), sha256 {answer['sha256'][:16]}")
            sys.stdout.write(answer["diff"])
        elif action == "rollback":
            answer = await client.call("POST", "/v1/policy/rollback", {"revision": args.revision})
            print(f"revision {answer['revision']}: the policy of revision {args.revision} again")
            sys.stdout.write(answer["diff"])
        elif action == "log":
            answer = await client.call("GET", "/v1/policy/revisions", params={"limit": str(args.limit)})
            _print_revisions(answer["revisions"])
        elif action == "show":
            answer = await client.call("GET", f"/v1/policy/revisions/{args.revision}")
            if args.diff:
                sys.stdout.write(answer["diff"])
            else:
                sys.stdout.write(answer["policy"])
        else:
            answer = await client.call(
                "GET", "/v1/policy/diff", params={"from": str(args.a), "to": str(args.b)}
            )
            sys.stdout.write(answer["diff"])
        return 0

    return work


def _identity(args: argparse.Namespace) -> Callable[[CenterClient], Awaitable[int]]:
    async def work(client: CenterClient) -> int:
        if args.identity_action == "set":
            answer = await client.call("POST", "/v1/identities", {"id": args.id, "role": args.role})
            print(f"{answer['id']}: role {answer['role']}")
            return 0
        for row in (await client.call("GET", "/v1/identities"))["identities"]:
            print(f"{row['role']:9} {row['id']}")
        return 0

    return work


def _audit(args: argparse.Namespace) -> Callable[[CenterClient], Awaitable[int]]:
    async def work(client: CenterClient) -> int:
        answer = await client.call("GET", "/v1/audit", params={"after": str(args.after)})
        for event in answer["events"]:
            actor = event["actor"] or "-"
            print(f"{event['seq']:>6} {when(event['at'])} {event['event']:18} {actor} {event['detail']}")
        return 0

    return work


def with_api(parser: argparse.ArgumentParser, make: Callable[[argparse.Namespace], Any]) -> None:
    parser.add_argument(
        "--creds", type=Path, metavar="DIR", help=f"an admin's credentials (${CREDENTIALS_ENV})"
    )
    parser.add_argument("--center", metavar="URL", help="the center (default: the one the credentials name)")
    parser.set_defaults(func=lambda args: _api(make(args))(args))


def configure(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    center = subparsers.add_parser(
        "center",
        help="the center: enrollment, certificates, signed policy for the gateways",
        description="Set up, run and administer a center (docs/center.md).",
    )
    center.add_argument("--config", type=Path, help="run the center of this center.toml (= serve)")
    center.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    center.set_defaults(func=lambda args: _cmd_serve(args) if args.config else _fail("give an action", 2))
    actions = center.add_subparsers(dest="center_action", metavar="ACTION")

    init = actions.add_parser("init", help="create a center: CA, signing key, store, first admin")
    init.add_argument("--dir", required=True, type=Path, help="folder for center.toml, keys, store, admin/")
    init.add_argument("--trust-domain", required=True, metavar="TD")
    init.add_argument("--name", default="center", help="its id is spiffe://TD/center/NAME")
    init.add_argument("--listen", default="127.0.0.1:8600", metavar="HOST:PORT")
    init.add_argument("--url", help="how others reach it (default https://LISTEN)")
    init.add_argument("--store", default="sqlite:center.db", help="sqlite:FILE or postgresql://...")
    init.add_argument("--admin", help="the first admin's id (default spiffe://TD/user/admin)")
    init.set_defaults(func=_cmd_init)

    serve = actions.add_parser("serve", help="run the center")
    serve.add_argument("--config", required=True, type=Path)
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    serve.set_defaults(func=_cmd_serve)

    creds = actions.add_parser("credentials", help="issue credentials locally (with the CA key)")
    creds.add_argument("--config", required=True, type=Path)
    creds.add_argument("--id", required=True, help="an identity the store knows")
    creds.add_argument("--out", required=True, type=Path, help="credentials folder to write")
    creds.set_defaults(func=_cmd_credentials)

    rotate = actions.add_parser(
        "rotate-signing-key",
        help="start a signing key rotation (a next key, announced to gateways), or finish it",
        description="First run: make keys/signing-next.key, which every bundle then announces. Second run, "
        "once every gateway trusts it: it becomes keys/signing.key. Restart the center after each.",
    )
    rotate.add_argument("--config", required=True, type=Path)
    rotate.set_defaults(func=_cmd_rotate)

    token = actions.add_parser("token", help="one-time enrollment tokens")
    token_actions = token.add_subparsers(dest="token_action", metavar="ACTION", required=True)
    create = token_actions.add_parser("create", help="make a token for one id and role")
    create.add_argument("--role", required=True, help="admin, approver, viewer, gateway, agent, user, vendor")
    create.add_argument("--id", required=True, metavar="SPIFFE_ID")
    create.add_argument("--ttl", type=parse_duration, default=3600.0, help="how long it may be used (1h)")
    with_api(create, _token_create)

    identity = actions.add_parser("identity", help="identities and their roles")
    identity_actions = identity.add_subparsers(dest="identity_action", metavar="ACTION", required=True)
    with_api(identity_actions.add_parser("list", help="every identity and its role"), _identity)
    set_role = identity_actions.add_parser("set", help="give an identity a role")
    set_role.add_argument("--id", required=True, metavar="SPIFFE_ID")
    set_role.add_argument("--role", required=True)
    with_api(set_role, _identity)

    policy = actions.add_parser("policy", help="policy revisions")
    policy_actions = policy.add_subparsers(dest="policy_action", metavar="ACTION", required=True)
    push = policy_actions.add_parser("push", help="check a policy file and make it the next revision")
    push.add_argument("file", type=Path)
    push.add_argument("--comment", default="", help="why")
    with_api(push, _policy)
    log = policy_actions.add_parser("log", help="the revisions, newest first")
    log.add_argument("--limit", type=int, default=20)
    with_api(log, _policy)
    show = policy_actions.add_parser("show", help="a revision's policy text (or its diff)")
    show.add_argument("revision", type=int)
    show.add_argument("--diff", action="store_true", help="the diff against the revision before it")
    with_api(show, _policy)
    diff = policy_actions.add_parser("diff", help="the diff between two revisions")
    diff.add_argument("a", type=int)
    diff.add_argument("b", type=int)
    with_api(diff, _policy)
    rollback = policy_actions.add_parser("rollback", help="make an old revision's policy the next revision")
    rollback.add_argument("revision", type=int)
    with_api(rollback, _policy)

    audit = actions.add_parser("audit", help="the center's audit trail")
    audit.add_argument("--after", type=int, default=0, metavar="SEQ")
    with_api(audit, _audit)
