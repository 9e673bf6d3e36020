"""``ztgate enroll``: make a key on this host, trade a one-time token and a CSR for a certificate.

Steps, each failing with a message that says what to do: reach the center and compare its fingerprint
(TLS key and signing key) with the one printed with the token — before the token is sent anywhere;
ask the center whom the token enrolls; make a P-256 key here (it never leaves the host) and a CSR for
that id; send token and CSR; check that the certificate is for this key and id; write the credentials
folder (gateway/credentials.py). Every outcome is appended to ``DIR/enroll-audit.jsonl``; the center
audits its side too.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from pathlib import Path

from cryptography import x509

from gateway.audit import AuditLog
from gateway.center.client import CenterError, PinnedCenter
from gateway.credentials import CenterInfo, Credentials, make_csr

__all__ = ["EnrollError", "enroll"]

AUDIT_FILE = "enroll-audit.jsonl"


class EnrollError(RuntimeError):
    """Enrollment failed; the message is for the person running it."""


def _audit_log(directory: Path) -> AuditLog:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    audit = AuditLog(gateway=socket.gethostname(), file=directory / AUDIT_FILE, stdout=False)
    audit.start()
    return audit


async def enroll(url: str, token: str, fingerprint: str, directory: Path) -> Credentials:
    audit = _audit_log(directory)
    center = PinnedCenter(url)
    step = "fingerprint"
    try:
        info = await center.verify(fingerprint)
        step = "describe"
        who = await center.client.call("POST", "/v1/enroll/describe", {"token": token})
        identity = str(who["id"])
        key, csr = make_csr(identity)
        step = "enroll"
        answer = await center.client.call("POST", "/v1/enroll", {"token": token, "csr": csr})
        certificate = x509.load_pem_x509_certificate(str(answer["certificate"]).encode())
        if certificate.public_key() != key.public_key():
            raise CenterError(0, "the center returned a certificate for another key")
        credentials = Credentials(directory)
        credentials.save(
            key,
            str(answer["certificate"]),
            str(answer["ca"]),
            CenterInfo(
                url=url.rstrip("/"),
                trust_domain=str(info["trust_domain"]),
                center_id=str(info["center_id"]),
                fingerprint=fingerprint.strip().lower(),
                signing_keys=tuple(str(k) for k in answer["signing_keys"]),
                id=identity,
                role=str(answer["role"]),
            ),
        )
        audit.emit(
            {
                "event": "enrolled",
                "center": url,
                "identity": identity,
                "role": answer["role"],
                "not_after": answer["not_after"],
            }
        )
    except CenterError as error:
        audit.emit({"event": "enroll_refused", "center": url, "step": step, "reason": str(error)})
        raise EnrollError(f"enrollment failed ({step}): {error}") from None
    except (KeyError, TypeError, ValueError) as error:
        audit.emit({"event": "enroll_refused", "center": url, "step": step, "reason": f"bad answer: {error}"})
        raise EnrollError(f"enrollment failed ({step}): the center's answer is malformed: {error}") from None
    finally:
        await center.close()
        audit.close()
    return credentials


def configure(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "enroll",
        help="enroll this host with a center: key made here, certificate from a one-time token",
        description="Make a key on this host and trade a one-time token (ztgate center token create) for a "
        "certificate. The fingerprint printed with the token pins the center.",
    )
    parser.add_argument("--center", required=True, metavar="URL", help="the center, e.g. https://center:8600")
    parser.add_argument("--token", required=True, metavar="T", help="the one-time token")
    parser.add_argument("--fingerprint", required=True, metavar="F", help="sha256:... printed with the token")
    parser.add_argument("--dir", required=True, type=Path, help="credentials folder to write")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        credentials = asyncio.run(enroll(args.center, args.token, args.fingerprint, args.dir))
    except EnrollError as error:
        print(f"ztgate enroll: {error}", file=sys.stderr)
        return 1
    info = credentials.center()
    print(f"enrolled {info.id} (role {info.role}) with {info.center_id}")
    print(f"credentials in {credentials.directory}: key.pem (made here), cert.pem, ca.pem, center.json")
    return 0
